//! `docs/cli.md`, generated from the clap definitions: every command's `--help`. A test checks
//! the file is what the code says; `WISP_BLESS=1 cargo test -p wisp cli_docs` rewrites it.

use clap::CommandFactory;

use crate::cli::Cli;

fn section(out: &mut String, cmd: &mut clap::Command, path: &str) {
    out.push_str(&format!("## {path}\n\n```text\n"));
    // The environment's values never show: the page is the same on every machine.
    let mut shown = cmd.clone().mut_args(|a| a.hide_env_values(true));
    let help = shown.render_long_help().to_string();
    for line in help.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("```\n\n");
    let names: Vec<String> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in names {
        if let Some(sub) = cmd.find_subcommand_mut(&name) {
            section(out, sub, &format!("{path} {name}"));
        }
    }
}

/// The whole of `docs/cli.md`.
pub fn markdown() -> String {
    let mut cmd = Cli::command().bin_name("wisp");
    cmd.build();
    let mut out = String::from(
        "# The `wisp` command line\n\nGenerated from the code (`sdk/cli/src/cli.rs`); a test keeps it current \
         (`WISP_BLESS=1 cargo test -p wisp cli_docs` rewrites it). Every flag can also be set through the \
         `WISP_*` variable its help names.\n\n",
    );
    section(&mut out, &mut cmd, "wisp");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_docs_match_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md");
        let want = super::markdown();
        if std::env::var_os("WISP_BLESS").is_some() {
            std::fs::write(path, &want).expect("write docs/cli.md");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/cli.md is out of date: run `WISP_BLESS=1 cargo test -p wisp cli_docs` and commit it"
        );
    }
}
