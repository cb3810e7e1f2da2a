//! The node's egress policy: which addresses a tenant's code — a Wasm guest's outbound HTTP,
//! and every backend the ingress sends a request to — may connect to. Checked on the resolved
//! IP address, never on a name: a name that resolves to a loopback or metadata address is
//! refused like the address itself.
//!
//! Refused unless the cluster admin allows a range on the node (`--allow-egress CIDR`):
//! loopback, link-local (`169.254.0.0/16`: cloud metadata), private ranges (RFC 1918, RFC 4193
//! unique-local, carrier-grade NAT), unspecified, multicast and broadcast addresses, and the
//! IPv4 addresses IPv6 embeds (`::ffff:127.0.0.1`). The node's own listeners (its API server,
//! agent, ingress and Service gateway) are refused even inside an allowed range.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// An IP range (`10.0.0.0/8`, `fd00::/8`; a bare address is its own range).
pub type Cidr = ipnet::IpNet;

/// A CIDR that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{input:?} is not a CIDR range like 10.0.0.0/8 or fd00::/8")]
pub struct CidrError {
    input: String,
    #[source]
    source: ipnet::AddrParseError,
}

/// Parses `10.0.0.0/8`, `fd00::/8` or a bare address (`127.0.0.1` = `127.0.0.1/32`).
pub fn parse_cidr(s: &str) -> Result<Cidr, CidrError> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Cidr::from(ip));
    }
    s.parse().map_err(|source| CidrError {
        input: s.to_owned(),
        source,
    })
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    #[error("{addr} is one of this node's own listeners")]
    NodeListener { addr: SocketAddr },
    #[error(
        "{ip} is a {class} address; the node's egress policy allows it only in a range the admin allows (--allow-egress)"
    )]
    Restricted { ip: IpAddr, class: &'static str },
}

/// Where tenant code and ingress backends may connect. Cheap to clone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Ranges the admin allows although they are restricted (`--allow-egress`).
    pub allow: Vec<Cidr>,
    /// The node's own listeners: never allowed. An unspecified IP (`0.0.0.0:8080`) stands for
    /// that port on every address.
    pub listeners: Vec<SocketAddr>,
}

/// The IPv4 address an IPv6 address carries (`::ffff:a.b.c.d`, `::a.b.c.d`), so the v4
/// rules apply to it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                    IpAddr::V4(Ipv4Addr::from(
                        u32::try_from(u128::from(v6) & 0xffff_ffff).unwrap_or(0),
                    ))
                } else {
                    ip
                }
            }
        },
        v4 => v4,
    }
}

/// The restricted class of `ip`, if it has one.
pub fn restricted_class(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() {
                Some("private")
            } else if a == 100 && (64..128).contains(&b) {
                Some("carrier-grade NAT")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else if v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
                // AWS's IPv6 metadata address lies in fd00::/8 already; named for the record.
                Some("link-local")
            } else {
                None
            }
        }
    }
}

impl EgressPolicy {
    /// Refuse restricted addresses except in `allow`; never the node's `listeners`.
    pub fn new(allow: Vec<Cidr>, listeners: Vec<SocketAddr>) -> Self {
        Self { allow, listeners }
    }

    /// Whether `addr` is one of the node's own listeners. The unspecified address (`0.0.0.0`,
    /// `::`) is this host to a connecting socket, so it reaches a listener of any address.
    pub fn is_listener(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.listeners.iter().any(|l| {
            l.port() == addr.port()
                && (ip.is_unspecified() || l.ip().is_unspecified() || canonical(l.ip()) == ip)
        })
    }

    /// May tenant code (or the ingress, for a backend) connect to `addr`?
    pub fn check(&self, addr: SocketAddr) -> Result<(), EgressDenied> {
        if self.is_listener(addr) {
            return Err(EgressDenied::NodeListener { addr });
        }
        let ip = canonical(addr.ip());
        match restricted_class(ip) {
            Some(class) if !self.allow.iter().any(|c| c.contains(&ip)) => {
                Err(EgressDenied::Restricted { ip, class })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn restricted_ranges_are_refused_and_public_ones_allowed() {
        let p = EgressPolicy::default();
        for denied in [
            "127.0.0.1:80",
            "127.8.9.10:7700",
            "[::1]:80",
            "169.254.169.254:80",
            "[fe80::1]:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "172.31.255.255:80",
            "192.168.1.1:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "[fd00::1]:80",
            // IPv4 smuggled in IPv6.
            "[::ffff:127.0.0.1]:80",
            "[::ffff:169.254.169.254]:80",
            "[::127.0.0.1]:80",
        ] {
            assert!(p.check(sa(denied)).is_err(), "{denied} must be refused");
        }
        for allowed in [
            "93.184.216.34:443",
            "[2606:2800:220:1::1]:80",
            "172.32.0.1:80",
            "100.128.0.1:80",
        ] {
            assert_eq!(p.check(sa(allowed)), Ok(()), "{allowed} is public");
        }
    }

    #[test]
    fn the_admin_may_allow_a_range_but_never_the_node_listeners() {
        let p = EgressPolicy::new(
            vec![
                parse_cidr("127.0.0.0/8").expect("cidr"),
                parse_cidr("10.0.0.0/24").expect("cidr"),
            ],
            vec![sa("127.0.0.1:7700"), sa("0.0.0.0:8080")],
        );
        assert_eq!(p.check(sa("127.0.0.1:9000")), Ok(()));
        assert_eq!(p.check(sa("10.0.0.7:80")), Ok(()));
        assert!(p.check(sa("10.0.1.7:80")).is_err(), "outside the allowed /24");
        assert_eq!(
            p.check(sa("127.0.0.1:7700")),
            Err(EgressDenied::NodeListener {
                addr: sa("127.0.0.1:7700")
            })
        );
        assert!(
            p.check(sa("[::ffff:127.0.0.1]:7700")).is_err(),
            "the listener through IPv6"
        );
        assert!(
            p.check(sa("10.0.0.7:8080")).is_err(),
            "a listener on every address"
        );
        assert!(
            p.check(sa("127.0.0.2:7700")).is_ok(),
            "another address, same port"
        );
        // Even where the admin allows every address, the unspecified address is this host:
        // it reaches the listeners.
        let open = EgressPolicy::new(
            vec![
                parse_cidr("0.0.0.0/0").expect("cidr"),
                parse_cidr("::/0").expect("cidr"),
            ],
            vec![sa("127.0.0.1:7700")],
        );
        for addr in ["0.0.0.0:7700", "[::]:7700", "[::ffff:0.0.0.0]:7700"] {
            assert!(
                matches!(open.check(sa(addr)), Err(EgressDenied::NodeListener { .. })),
                "{addr}"
            );
        }
        assert_eq!(open.check(sa("0.0.0.0:9000")), Ok(()), "not a listener's port");
    }

    #[test]
    fn cidrs_parse_or_say_why_not() {
        assert!(parse_cidr("10.0.0.0/8").is_ok());
        assert!(parse_cidr("fd00::/8").is_ok());
        assert_eq!(
            parse_cidr("127.0.0.1").map(|c| c.to_string()).ok().as_deref(),
            Some("127.0.0.1/32")
        );
        let e = parse_cidr("10.0.0.0/33").expect_err("too long");
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        assert!(parse_cidr("example.com/8").is_err());
        let all = parse_cidr("0.0.0.0/0").expect("all");
        assert!(all.contains(&"8.8.8.8".parse::<IpAddr>().expect("ip")));
    }
}
