//! The CLI config file, at `$WISP_CONFIG` or `~/.wisp/config`: named contexts (a server and
//! a token each, like kubeconfig's) and the current one. A file of the first format (one
//! `server` and `token`) still reads, as the current context.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ClientError;

/// Where the CLI connects: the current context's server and token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: String,
    pub token: String,
    /// The CA the server's certificate must chain to, PEM (`wisp up` writes the cluster
    /// CA's); none: the public web's roots.
    #[serde(
        default,
        rename = "certificateAuthorityData",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca: Option<String>,
}

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contexts: BTreeMap<String, Config>,
    /// The first format: one server and token, no contexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The context `wisp up` writes and makes current.
pub const LOCAL_CONTEXT: &str = "local";
/// The name a first-format file's server and token get as a context.
pub const DEFAULT_CONTEXT: &str = "default";

impl ConfigFile {
    /// The file at `path`; empty when there is none.
    pub fn read(path: &Path) -> Result<Self, ClientError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| ClientError::Config {
                what: format!("config {} is malformed", path.display()),
                source: e.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ClientError::Config {
                what: format!("cannot read the Wisp config {}", path.display()),
                source: e.into(),
            }),
        }
    }

    /// The current context (a first-format file's one server and token counts as one).
    pub fn current(&self) -> Option<(String, Config)> {
        if let Some(name) = &self.current_context {
            return self.contexts.get(name).map(|c| (name.clone(), c.clone()));
        }
        match (&self.server, &self.token) {
            (Some(server), Some(token)) => Some((
                DEFAULT_CONTEXT.to_owned(),
                Config {
                    server: server.clone(),
                    token: token.clone(),
                    ca: None,
                },
            )),
            _ => None,
        }
    }

    /// Every context with its name (the first format's as `default`).
    pub fn all(&self) -> BTreeMap<String, Config> {
        let mut all = self.contexts.clone();
        if self.current_context.is_none()
            && let Some((name, c)) = self.current()
        {
            all.entry(name).or_insert(c);
        }
        all
    }

    /// Set context `name` (the first becomes current); a first-format file becomes contexts.
    pub fn set(&mut self, name: &str, config: Config) {
        if let Some((legacy, c)) = self.current_context.is_none().then(|| self.current()).flatten() {
            self.contexts.entry(legacy.clone()).or_insert(c);
            self.current_context = Some(legacy);
        }
        self.server = None;
        self.token = None;
        self.contexts.insert(name.to_owned(), config);
        self.current_context.get_or_insert_with(|| name.to_owned());
    }

    /// Write the file (mode 0600: it holds credentials), creating its directory.
    pub fn write(&self, path: &Path) -> Result<(), ClientError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| ClientError::Config {
            what: "cannot encode the config".into(),
            source: e.into(),
        })?;
        write_private(path, &text)
    }
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

    /// The current context of the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        if !path.exists() {
            return Err(ClientError::Config {
                what: format!(
                    "cannot read the Wisp config {} (start a cluster with `wisp up`, or set WISP_CONFIG)",
                    path.display()
                ),
                source: std::io::Error::from(std::io::ErrorKind::NotFound).into(),
            });
        }
        let file = ConfigFile::read(path)?;
        let current = file.current().ok_or_else(|| ClientError::Config {
            what: format!(
                "config {} has no current context (`wisp context use NAME`)",
                path.display()
            ),
            source: std::io::Error::from(std::io::ErrorKind::NotFound).into(),
        })?;
        Ok(current.1)
    }

    /// Save as the `local` context (what `wisp up` does) and make it current, keeping the
    /// file's other contexts.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        // A file that does not read is an error, not an empty file to overwrite.
        let mut file = ConfigFile::read(path)?;
        file.set(LOCAL_CONTEXT, self.clone());
        file.current_context = Some(LOCAL_CONTEXT.to_owned());
        file.write(path)
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), ClientError> {
    let err = |e: std::io::Error| ClientError::Config {
        what: format!("cannot write {}", path.display()),
        source: e.into(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A fresh temporary file each time (created 0600, never an older one's permissions).
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn c(server: &str) -> Config {
        Config {
            server: server.into(),
            token: format!("t-{server}"),
            ca: None,
        }
    }

    #[test]
    fn a_first_format_file_reads_as_the_current_context_and_becomes_contexts_when_set() {
        let dir = std::env::temp_dir().join(format!("wisp-config-{}", std::process::id()));
        let path = dir.join("config");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(&path, r#"{"server": "http://a", "token": "t-http://a"}"#).expect("write");
        assert_eq!(Config::load(&path).expect("load"), c("http://a"));
        let mut file = ConfigFile::read(&path).expect("read");
        file.set("prod", c("http://prod"));
        file.write(&path).expect("write");
        let file = ConfigFile::read(&path).expect("read");
        assert_eq!(
            file.current_context.as_deref(),
            Some("default"),
            "the old one stays current"
        );
        assert_eq!(file.all().keys().collect::<Vec<_>>(), ["default", "prod"]);
        // wisp up saves its cluster as `local` and makes it current, keeping the others.
        c("http://b").save(&path).expect("save");
        let file = ConfigFile::read(&path).expect("read");
        assert_eq!(file.contexts["local"], c("http://b"));
        assert_eq!(file.contexts["prod"], c("http://prod"));
        assert_eq!(
            file.contexts["default"],
            c("http://a"),
            "the first file's server is kept"
        );
        assert_eq!(Config::load(&path).expect("load"), c("http://b"));
        // A malformed file is not overwritten.
        std::fs::write(&path, "{not json").expect("write");
        assert!(c("http://c").save(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "{not json");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
