//! `wisp build`: run a project's build command, then check what it made.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::component::{self, ComponentInfo};
use super::manifest::{Kind, Project};

/// A component as built: its bytes, digest and what it is.
pub struct Built {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub digest: String,
    pub info: ComponentInfo,
}

impl Built {
    pub fn summary(&self) -> String {
        format!(
            "{}: {} ({}), {}, {}",
            self.path.display(),
            self.info.world,
            self.info.entry,
            component::size(self.bytes.len() as u64),
            self.digest
        )
    }
}

/// Run the build command in the project directory, its output shown as it comes; a failure
/// names the one command that fixes it when the cause is a known one.
pub async fn run_build(project: &Project) -> anyhow::Result<()> {
    let command = project.manifest.build.command.get_ref();
    super::say(&format!("building {}: {command}", project.name()));
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&project.dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot run `sh -c {command:?}` in {}", project.dir.display()))?;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines.next_line().await.context("reading the build's output")? {
            super::complain(&line);
            if tail.len() == 400 {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child.wait().await.context("waiting for the build")?;
    if status.success() {
        return Ok(());
    }
    let output: Vec<String> = tail.into();
    let hint = hint(command, status.code(), &output.join("\n"));
    match hint {
        Some(h) => bail!("the build failed ({status}): {h}"),
        None => bail!("the build failed ({status}): `{command}` (its output is above)"),
    }
}

/// The fix for a build failure whose cause is known.
fn hint(command: &str, code: Option<i32>, output: &str) -> Option<String> {
    if output.contains("target may not be installed")
        || (output.contains("wasm32-wasip2") && output.contains("can't find crate for `std`"))
    {
        return Some(
            "the wasm32-wasip2 target is not installed: run `rustup target add wasm32-wasip2`".into(),
        );
    }
    if code == Some(127) {
        let program = command.split_whitespace().next().unwrap_or(command);
        return Some(match program {
            "componentize-py" => {
                "componentize-py is not installed: run `pip install componentize-py==0.25.1`".into()
            }
            "cargo" => "cargo is not installed: install Rust from https://rustup.rs".into(),
            other => format!("`{other}` is not installed (not found on PATH)"),
        });
    }
    None
}

/// Read the component the build made and check it fits the project's kind.
pub fn check(project: &Project) -> anyhow::Result<Built> {
    let path = project.component_path();
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "the build made no component at {} (build.component in wisp.toml)",
            path.display()
        )
    })?;
    let info =
        component::inspect(&bytes).with_context(|| format!("{} is not a Wisp component", path.display()))?;
    let want = match project.kind() {
        Kind::Http => "wasi:http/proxy",
        Kind::Job => "wasi:cli/command",
    };
    if info.world != want {
        bail!(
            "{} is a {} component, but wisp.toml says kind = {:?}, which needs a {want} component",
            path.display(),
            info.world,
            match project.kind() {
                Kind::Http => "http",
                Kind::Job => "job",
            }
        );
    }
    let digest = {
        use sha2::Digest;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
    };
    Ok(Built {
        path,
        bytes,
        digest,
        info,
    })
}

/// Whether the component is missing or older than a file it is built from.
pub fn stale(project: &Project) -> bool {
    let component = project.component_path();
    let Some(built) = modified(&component) else {
        return true;
    };
    let watch = &project.manifest.build.watch;
    let roots: Vec<PathBuf> = if watch.is_empty() {
        vec![project.dir.clone()]
    } else {
        watch.iter().map(|w| project.dir.join(w.get_ref())).collect()
    };
    roots.iter().any(|r| newer_than(r, built, &component))
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Whether a file under `path` (not the component, not build output) changed after `than`.
fn newer_than(path: &Path, than: SystemTime, component: &Path) -> bool {
    if path == component {
        return false;
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    if !meta.is_dir() {
        return meta.modified().is_ok_and(|m| m > than);
    }
    let skip = |name: &std::ffi::OsStr| {
        matches!(
            name.to_str(),
            Some("target" | ".git" | "__pycache__" | "node_modules")
        )
    };
    std::fs::read_dir(path).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .filter(|e| !skip(&e.file_name()))
            .any(|e| newer_than(&e.path(), than, component))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_failures_name_the_command_that_fixes_them() {
        let rustc = "error[E0463]: can't find crate for `core`\n  = note: the `wasm32-wasip2` target may not be installed";
        assert!(
            hint("cargo build --target wasm32-wasip2", Some(101), rustc)
                .is_some_and(|h| h.contains("rustup target add wasm32-wasip2"))
        );
        assert!(
            hint(
                "componentize-py -d wit componentize app",
                Some(127),
                "sh: 1: componentize-py: not found"
            )
            .is_some_and(|h| h.contains("pip install componentize-py"))
        );
        assert!(hint("make", Some(2), "make: *** No rule").is_none());
    }
}
