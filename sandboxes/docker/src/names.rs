//! Names Docker sees (containers, networks), image references, the lock that serialises
//! network creation, and log-line parsing: pure helpers with unit tests.

use std::time::SystemTime;

use wisp_sandbox::{LogLine, LogStream, SandboxId};

/// Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; anything else becomes `-`.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The container of a sandbox: `wisp-<pod uid>-<container>`.
pub fn container_name(id: &SandboxId) -> String {
    format!("wisp-{}", sanitize(&id.0))
}

/// The bridge network of a namespace.
pub fn network_name(prefix: &str, namespace: &str) -> String {
    format!("{prefix}{}", sanitize(namespace))
}

/// An image reference split the way the pull API wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// `registry/path/name` (registry included when given).
    pub repository: String,
    /// A tag (`latest` when none is given) or a digest (`sha256:…`).
    pub tag_or_digest: String,
}

impl ImageRef {
    pub fn parse(reference: &str) -> Result<Self, String> {
        let r = reference.trim();
        if r.is_empty() || r.contains(char::is_whitespace) {
            return Err("not an image reference".into());
        }
        if let Some((repo, digest)) = r.split_once('@') {
            if !digest.contains(':') || repo.is_empty() {
                return Err(format!("bad digest {digest:?}"));
            }
            return Ok(Self {
                repository: repo.to_owned(),
                tag_or_digest: digest.to_owned(),
            });
        }
        // A ':' after the last '/' starts the tag; before it, it is a registry port.
        let last = r.rfind('/').map_or(0, |i| i + 1);
        match r[last..].rfind(':') {
            Some(i) => {
                let (repo, tag) = (&r[..last + i], &r[last + i + 1..]);
                if tag.is_empty() || repo.is_empty() {
                    return Err("empty tag or name".into());
                }
                Ok(Self {
                    repository: repo.to_owned(),
                    tag_or_digest: tag.to_owned(),
                })
            }
            None => Ok(Self {
                repository: r.to_owned(),
                tag_or_digest: "latest".into(),
            }),
        }
    }
}

/// Holds a lock on a file shared by every Wisp process of this user on this machine:
/// exclusive while a namespace network is looked up and created or checked and removed,
/// shared while a container is created on one (so a network is never removed between the
/// check that it exists and the container that uses it).
pub(crate) fn lock_networks(exclusive: bool) -> std::io::Result<std::fs::File> {
    // One lock file per user: another user's file in a sticky /tmp cannot be opened.
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    let path = std::env::temp_dir().join(format!("wisp-docker-networks-{uid}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    if exclusive {
        file.lock()?;
    } else {
        file.lock_shared()?;
    }
    Ok(file)
}

/// A timestamp as a `SystemTime` (times before 1970 become the epoch).
pub(crate) fn system_time(t: jiff::Timestamp) -> SystemTime {
    u64::try_from(t.as_nanosecond()).map_or(SystemTime::UNIX_EPOCH, |ns| {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(ns)
    })
}

/// A log line as Docker sends it with `timestamps=true`: `<RFC 3339> <text>`.
pub(crate) fn log_line(stream: LogStream, raw: &str) -> LogLine {
    let parsed = raw
        .split_once(' ')
        .and_then(|(t, rest)| t.parse::<jiff::Timestamp>().ok().map(|t| (system_time(t), rest)));
    let (at, line) = parsed.unwrap_or((SystemTime::now(), raw));
    LogLine {
        stream,
        line: line.to_owned(),
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_docker_safe() {
        let id = SandboxId::new("3f1c-aa", "web");
        assert_eq!(container_name(&id), "wisp-3f1c-aa-web");
        assert_eq!(network_name("wisp-", "team a"), "wisp-team-a");
    }

    #[test]
    fn image_references() {
        let p = |r: &str| ImageRef::parse(r).map(|i| (i.repository, i.tag_or_digest));
        assert_eq!(p("busybox"), Ok(("busybox".into(), "latest".into())));
        assert_eq!(p("wisp/echo:dev"), Ok(("wisp/echo".into(), "dev".into())));
        assert_eq!(
            p("127.0.0.1:5000/wisp/echo"),
            Ok(("127.0.0.1:5000/wisp/echo".into(), "latest".into()))
        );
        assert_eq!(
            p("127.0.0.1:5000/wisp/echo:v2"),
            Ok(("127.0.0.1:5000/wisp/echo".into(), "v2".into()))
        );
        assert_eq!(p("r.io/x@sha256:abc"), Ok(("r.io/x".into(), "sha256:abc".into())));
        assert!(p("").is_err());
        assert!(p("x:").is_err());
        assert!(p("a b").is_err());
        assert!(p("x@nodigest").is_err());
    }

    #[test]
    fn log_lines_carry_docker_timestamps() {
        let l = log_line(LogStream::Stdout, "2026-11-25T10:00:00.123456789Z hello world");
        assert_eq!(l.line, "hello world");
        assert_eq!(
            l.at,
            system_time(
                "2026-11-25T10:00:00.123456789Z"
                    .parse::<jiff::Timestamp>()
                    .expect("ts")
            )
        );
        let l = log_line(LogStream::Stderr, "no timestamp here");
        assert_eq!(l.line, "no timestamp here");
    }
}
