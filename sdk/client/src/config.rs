//! The CLI config file: server URL and token, at `$WISP_CONFIG` or `~/.wisp/config`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClientError;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: String,
    pub token: String,
}

impl Config {
    /// `$WISP_CONFIG`, else `$HOME/.wisp/config`.
    pub fn default_path() -> PathBuf {
        if let Some(p) = std::env::var_os("WISP_CONFIG") {
            return PathBuf::from(p);
        }
        std::env::home_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".wisp")
            .join("config")
    }

    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| ClientError::Config {
            what: format!(
                "cannot read the Wisp config {} (start a cluster with `wisp up`, or set WISP_CONFIG)",
                path.display()
            ),
            source: e.into(),
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Config {
            what: format!("config {} is malformed", path.display()),
            source: e.into(),
        })
    }

    /// Write the file (mode 0600: it holds a credential), creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let err = |e: std::io::Error| ClientError::Config {
            what: format!("cannot write {}", path.display()),
            source: e.into(),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| ClientError::Config {
            what: "cannot encode the config".into(),
            source: e.into(),
        })?;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            #[cfg(unix)]
            let mut file = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
            }
            .map_err(err)?;
            #[cfg(not(unix))]
            let mut file = std::fs::File::create(&tmp).map_err(err)?;
            file.write_all(text.as_bytes()).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, path).map_err(err)
    }
}
