//! The templates `wisp new` makes function projects from, embedded in the binary: each is a
//! directory under `sdk/templates/` (source, a README of three commands and a `wisp.toml`).
//! This crate owns the files and their rendering (`{{name}}` becomes the project's name; a
//! file named `X.tmpl` is written as `X`, `gitignore.tmpl` as `.gitignore`); it does no I/O
//! and knows nothing of building or deploying.

/// One template: a name for `--template`, what it makes, and its files.
#[derive(Debug)]
pub struct Template {
    pub name: &'static str,
    pub summary: &'static str,
    /// What the build needs on the author's machine, once.
    pub needs: &'static str,
    /// `(path inside the template, contents)`.
    pub files: &'static [(&'static str, &'static str)],
}

macro_rules! files {
    ($dir:literal: $($path:literal),* $(,)?) => {
        &[$(($path, include_str!(concat!("../", $dir, "/", $path)))),*]
    };
}

/// Every template, in the order `wisp new --list` shows them.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "http-rust",
        summary: "HTTP function in Rust (wstd, wasi:http/proxy); scales to zero",
        needs: "rustup target add wasm32-wasip2",
        files: files!("http-rust": "Cargo.toml.tmpl", "README.md", "gitignore.tmpl", "src/main.rs", "wisp.toml"),
    },
    Template {
        name: "http-python",
        summary: "HTTP function in Python (componentize-py, wasi:http/proxy); scales to zero",
        needs: "pip install componentize-py==0.25.1",
        files: files!("http-python": "README.md", "app.py", "gitignore.tmpl", "wisp.toml",
            "wit/world.wit", "wit/deps/cli.wit", "wit/deps/clocks.wit", "wit/deps/filesystem.wit",
            "wit/deps/http.wit", "wit/deps/io.wit", "wit/deps/random.wit", "wit/deps/sockets.wit"),
    },
    Template {
        name: "job-rust",
        summary: "Job in Rust (wasi:cli/run): runs once to completion",
        needs: "rustup target add wasm32-wasip2",
        files: files!("job-rust": "Cargo.toml.tmpl", "README.md", "gitignore.tmpl", "src/main.rs", "wisp.toml"),
    },
];

/// The template called `name`.
pub fn find(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

impl Template {
    /// The files of a project called `project`: `(relative path, contents)`.
    pub fn render(&self, project: &str) -> Vec<(String, String)> {
        self.files
            .iter()
            .map(|(path, text)| {
                let path = match path.rsplit_once('/') {
                    Some((dir, "gitignore.tmpl")) => format!("{dir}/.gitignore"),
                    None if *path == "gitignore.tmpl" => ".gitignore".to_owned(),
                    _ => path.strip_suffix(".tmpl").unwrap_or(path).to_owned(),
                };
                (path, text.replace("{{name}}", project))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in a template's directory is embedded: one added without being listed
    /// above would be missing from every project made from it.
    #[test]
    fn every_file_of_each_template_directory_is_embedded() {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("template directory") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    let rel = path.strip_prefix(root).expect("inside");
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        for t in TEMPLATES {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(t.name);
            let mut on_disk = Vec::new();
            walk(&root, &root, &mut on_disk);
            on_disk.sort();
            let mut embedded: Vec<String> = t.files.iter().map(|(p, _)| (*p).to_owned()).collect();
            embedded.sort();
            assert_eq!(on_disk, embedded, "template {}", t.name);
        }
    }

    #[test]
    fn rendering_names_the_project_everywhere_and_renames_templated_files() {
        let t = find("http-rust").expect("http-rust");
        let files = t.render("my-fn");
        let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            paths.contains(&"Cargo.toml") && paths.contains(&".gitignore"),
            "{paths:?}"
        );
        for (path, text) in &files {
            assert!(!text.contains("{{name}}"), "{path} still has a placeholder");
        }
        let manifest = &files.iter().find(|(p, _)| p == "wisp.toml").expect("wisp.toml").1;
        assert!(manifest.contains("name = \"my-fn\""), "{manifest}");
        assert!(find("nope").is_none());
    }
}
