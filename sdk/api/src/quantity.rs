//! Resource quantities (`500m`, `2`, `128Mi`, `1G`, `1e3`), stored exactly in nano-units.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use schemars::{JsonSchema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

const NANO: i128 = 1_000_000_000;
/// Largest magnitude accepted: `i64::MAX` whole units.
const MAX_NANOS: i128 = i64::MAX as i128 * NANO;

/// How a quantity was written, so it is printed back the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum QuantityFormat {
    /// Powers of 1024: `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`.
    BinarySI,
    /// Powers of 1000: `n`, `u`, `m`, ``, `k`, `M`, `G`, `T`, `P`, `E`.
    #[default]
    DecimalSI,
    /// `e<exp>` suffixes: `1e3`.
    DecimalExponent,
}

/// A resource amount. Equality and ordering compare the value only, not the format.
/// Precision below one nano-unit is rounded up (away from zero).
#[derive(Clone, Copy, Debug, Default)]
pub struct Quantity {
    nanos: i128,
    format: QuantityFormat,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("invalid quantity: empty string")]
    Empty,
    #[error("invalid quantity {input:?}: expected a number optionally followed by a suffix")]
    InvalidNumber { input: String },
    #[error(
        "invalid quantity {input:?}: unknown suffix {suffix:?} (expected one of n, u, m, k, M, G, T, P, E, \
         Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
    )]
    InvalidSuffix { input: String, suffix: String },
    #[error("invalid quantity {input:?}: too large")]
    TooLarge { input: String },
}

const DECIMAL_SUFFIXES: [(&str, i32); 9] = [
    ("n", -9),
    ("u", -6),
    ("m", -3),
    ("k", 3),
    ("M", 6),
    ("G", 9),
    ("T", 12),
    ("P", 15),
    ("E", 18),
];
const BINARY_SUFFIXES: [(&str, u32); 6] = [
    ("Ki", 10),
    ("Mi", 20),
    ("Gi", 30),
    ("Ti", 40),
    ("Pi", 50),
    ("Ei", 60),
];

fn pow10(e: u32) -> Option<i128> {
    10i128.checked_pow(e)
}

/// `ceil(a / b)` for `a >= 0`, `b > 0`.
fn div_ceil_pos(a: i128, b: i128) -> i128 {
    a / b + i128::from(a % b != 0)
}

/// `ceil(a / b)` for any sign of `a`, `b > 0`, saturated to `i64`.
fn div_ceil_i64(a: i128, b: i128) -> i64 {
    let q = if a >= 0 { div_ceil_pos(a, b) } else { -((-a) / b) };
    i64::try_from(q).unwrap_or(if q > 0 { i64::MAX } else { i64::MIN })
}

impl Quantity {
    /// Milli-units (CPU): `500m` → 500, `2` → 2000. Rounded up; saturates at `i64` bounds.
    pub fn millis(&self) -> i64 {
        div_ceil_i64(self.nanos, 1_000_000)
    }

    /// Whole units (bytes): `1Ki` → 1024, `0.5` → 1. Rounded up; saturates at `i64` bounds.
    pub fn value(&self) -> i64 {
        div_ceil_i64(self.nanos, NANO)
    }

    /// The exact value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// A decimal quantity of `millis` milli-units (`250m`).
    pub fn from_millis(millis: i64) -> Self {
        Self {
            nanos: i128::from(millis) * 1_000_000,
            format: QuantityFormat::DecimalSI,
        }
    }

    /// A whole number of units in the given format (`from_units(1 << 20, BinarySI)` → `1Mi`).
    /// `i64::MIN` is clamped to `-i64::MAX` so that every quantity prints and parses back.
    pub fn from_units(units: i64, format: QuantityFormat) -> Self {
        Self {
            nanos: (i128::from(units) * NANO).max(-MAX_NANOS),
            format,
        }
    }

    /// Sum, clamped to the accepted range; keeps `self`'s format.
    pub fn saturating_add(&self, other: &Quantity) -> Self {
        let nanos = self
            .nanos
            .saturating_add(other.nanos)
            .clamp(-MAX_NANOS, MAX_NANOS);
        Self {
            nanos,
            format: self.format,
        }
    }

    /// Parses `<sign>?<digits>[.<digits>]<suffix>?`.
    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        if input.is_empty() {
            return Err(QuantityError::Empty);
        }
        let invalid = || QuantityError::InvalidNumber {
            input: input.to_owned(),
        };
        let too_large = || QuantityError::TooLarge {
            input: input.to_owned(),
        };
        let (negative, rest) = match input.as_bytes()[0] {
            b'-' => (true, &input[1..]),
            b'+' => (false, &input[1..]),
            _ => (false, input),
        };
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = rest.split_at(int_len);
        let (frac_part, suffix) = match rest.strip_prefix('.') {
            Some(r) => r.split_at(r.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        // Mantissa without insignificant zeros.
        let frac_part = frac_part.trim_end_matches('0');
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(too_large());
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| invalid())?
        };
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| invalid())?;

        let (format, exp10, pow2) = parse_suffix(suffix).ok_or_else(|| QuantityError::InvalidSuffix {
            input: input.to_owned(),
            suffix: suffix.to_owned(),
        })?;
        let scaled = mantissa.checked_mul(1i128 << pow2).ok_or_else(too_large)?;
        let total_exp = 9 + exp10 - frac_len;
        let nanos = if scaled == 0 {
            0
        } else if total_exp >= 0 {
            pow10(total_exp.unsigned_abs())
                .and_then(|p| scaled.checked_mul(p))
                .ok_or_else(too_large)?
        } else {
            match pow10(total_exp.unsigned_abs()) {
                Some(p) => div_ceil_pos(scaled, p),
                None => 1,
            }
        };
        if nanos > MAX_NANOS {
            return Err(too_large());
        }
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
            format,
        })
    }
}

/// `(format, decimal exponent, binary exponent)` of a suffix.
fn parse_suffix(suffix: &str) -> Option<(QuantityFormat, i32, u32)> {
    if suffix.is_empty() {
        return Some((QuantityFormat::DecimalSI, 0, 0));
    }
    if let Some((_, p)) = BINARY_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Some((QuantityFormat::BinarySI, 0, *p));
    }
    if let Some((_, e)) = DECIMAL_SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        return Some((QuantityFormat::DecimalSI, *e, 0));
    }
    let exp = suffix.strip_prefix(['e', 'E'])?;
    let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((QuantityFormat::DecimalExponent, exp.parse().ok()?, 0))
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        let sign = if self.nanos < 0 { "-" } else { "" };
        let mag = self.nanos.unsigned_abs();
        let nano = NANO.unsigned_abs();
        if self.format == QuantityFormat::BinarySI && mag.is_multiple_of(nano) {
            let units = mag / nano;
            for (suffix, p) in BINARY_SUFFIXES.iter().rev() {
                let m = 1u128 << p;
                if units.is_multiple_of(m) {
                    return write!(f, "{sign}{}{suffix}", units / m);
                }
            }
        }
        // Largest power of 1000 (down to nano) that divides the value exactly.
        for e in (-3i32..=6).rev() {
            let exp10 = e * 3;
            let Some(div) = 10u128.checked_pow((9 + exp10).unsigned_abs()) else {
                continue;
            };
            if !mag.is_multiple_of(div) {
                continue;
            }
            let n = mag / div;
            return match self.format {
                QuantityFormat::DecimalExponent if exp10 != 0 => write!(f, "{sign}{n}e{exp10}"),
                QuantityFormat::DecimalExponent => write!(f, "{sign}{n}"),
                _ => {
                    let suffix = DECIMAL_SUFFIXES
                        .iter()
                        .find(|(_, x)| *x == exp10)
                        .map_or("", |(s, _)| *s);
                    write!(f, "{sign}{n}{suffix}")
                }
            };
        }
        write!(f, "{sign}{mag}n")
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}
impl Eq for Quantity {}
impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}
impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quantity such as \"500m\", \"2\" or \"128Mi\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Ok(Quantity::from_units(v, QuantityFormat::DecimalSI))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                let v =
                    i64::try_from(v).map_err(|_| E::custom(format!("invalid quantity {v}: too large")))?;
                Ok(Quantity::from_units(v, QuantityFormat::DecimalSI))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                if !v.is_finite() {
                    return Err(E::custom("invalid quantity: not a finite number"));
                }
                Quantity::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> schemars::Schema {
        json_schema!({
            "type": "string",
            "description": "A resource quantity: a number with an optional suffix (500m, 2, 0.5, 128Mi, 1Gi, 1G, 1e3).",
            "pattern": r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(q("500m").millis(), 500);
        assert_eq!(q("2").millis(), 2000);
        assert_eq!(q("0.5").millis(), 500);
        assert_eq!(q(".5").millis(), 500);
        assert_eq!(q("128Mi").value(), 128 << 20);
        assert_eq!(q("1Gi").value(), 1 << 30);
        assert_eq!(q("1G").value(), 1_000_000_000);
        assert_eq!(q("100k").value(), 100_000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1E").value(), 1_000_000_000_000_000_000);
        assert_eq!(q("1.5Gi").value(), 3 << 29);
        assert_eq!(q("0.1m").millis(), 1, "rounds up");
        assert_eq!(q("1n").value(), 1, "rounds up");
        assert_eq!(q("-2").value(), -2);
        // Regression: i64::MIN units printed as "-8Ei", which is out of range.
        let min = Quantity::from_units(i64::MIN, QuantityFormat::BinarySI);
        assert_eq!(Quantity::parse(&min.to_string()), Ok(min));
    }

    #[test]
    fn canonical_display() {
        for (input, want) in [
            ("500m", "500m"),
            ("0.5", "500m"),
            ("2000", "2k"),
            ("1500", "1500"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1e3"),
            ("1000m", "1"),
            ("0Mi", "0"),
            ("-1Ki", "-1Ki"),
            ("0.0000000001", "1n"),
        ] {
            assert_eq!(q(input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn errors_say_what_was_wrong() {
        assert_eq!(Quantity::parse(""), Err(QuantityError::Empty));
        let e = Quantity::parse("5x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown suffix \"x\""), "{e}");
        assert!(matches!(
            Quantity::parse("abc"),
            Err(QuantityError::InvalidNumber { .. })
        ));
        assert!(matches!(
            Quantity::parse("."),
            Err(QuantityError::InvalidNumber { .. })
        ));
        assert!(matches!(
            Quantity::parse("1 Gi"),
            Err(QuantityError::InvalidSuffix { .. })
        ));
        assert!(matches!(
            Quantity::parse("1e9999"),
            Err(QuantityError::InvalidSuffix { .. })
        ));
        assert!(matches!(
            Quantity::parse("1e999"),
            Err(QuantityError::TooLarge { .. })
        ));
        assert!(matches!(
            Quantity::parse("100E"),
            Err(QuantityError::TooLarge { .. })
        ));
        assert!(matches!(
            Quantity::parse("1e30"),
            Err(QuantityError::TooLarge { .. })
        ));
    }

    #[test]
    fn serde_accepts_strings_and_numbers() {
        let v: Vec<Quantity> = serde_json::from_str(r#"["1Gi", 2, 0.25]"#).unwrap_or_default();
        assert_eq!(v, vec![q("1Gi"), q("2"), q("250m")]);
        assert_eq!(
            serde_json::to_string(&v).ok().as_deref(),
            Some(r#"["1Gi","2","250m"]"#)
        );
        assert!(serde_json::from_str::<Quantity>(r#""5x""#).is_err());
    }

    fn any_quantity() -> impl Strategy<Value = Quantity> {
        let fmt = prop_oneof![
            Just(QuantityFormat::BinarySI),
            Just(QuantityFormat::DecimalSI),
            Just(QuantityFormat::DecimalExponent)
        ];
        let nanos = prop_oneof![
            any::<i64>().prop_map(i128::from),
            any::<i64>().prop_map(|m| i128::from(m) * 1_000_000),
            any::<i64>().prop_map(|u| Quantity::from_units(u, QuantityFormat::BinarySI).nanos()),
            (any::<i16>(), 0u32..=4).prop_map(|(u, k)| i128::from(u) * (1i128 << (10 * k)) * NANO),
            (-MAX_NANOS..=MAX_NANOS),
        ];
        (nanos, fmt).prop_map(|(nanos, format)| Quantity { nanos, format })
    }

    proptest! {
        #[test]
        fn format_then_parse_preserves_value(x in any_quantity()) {
            let s = x.to_string();
            let back = Quantity::parse(&s);
            prop_assert_eq!(back.map(|b| b.nanos()), Ok(x.nanos()), "{}", s);
        }

        #[test]
        fn parse_format_parse_is_stable(
            s in r"[+-]?[0-9]{0,14}(\.[0-9]{0,12})?(Ki|Mi|Gi|Ti|n|u|m|k|M|G|T|e[0-9]|e-[0-9])?"
        ) {
            if let Ok(a) = Quantity::parse(&s) {
                let formatted = a.to_string();
                let b = Quantity::parse(&formatted);
                prop_assert_eq!(&b, &Ok(a), "{} -> {}", s, formatted);
                prop_assert_eq!(b.map(|b| b.to_string()), Ok(formatted));
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,24}") {
            let _ = Quantity::parse(&s);
        }
    }
}
