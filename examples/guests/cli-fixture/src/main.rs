//! `cli-fixture`: a `wasi:cli/run` program for the sandbox conformance suite.
//!
//! * `exit <code> <line>` — prints `line` on stdout and on stderr, then exits with `code`;
//! * `sleep <line>` — prints `line` on stdout, then runs until stopped or killed;
//! * `spin <line>` — prints `line`, then busy-loops forever (never yields);
//! * `read <path>` — prints the file's contents (exit 1 when it cannot be read);
//! * `write <path>` — writes `written` to the file (exit 1 when it cannot);
//! * `env <NAME>` — prints the variable (exit 1 when unset);
//! * `args` — prints each argument on its own line.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    match arg(1) {
        "exit" => {
            let code: u8 = arg(2).parse().unwrap_or(1);
            println!("{}", arg(3));
            eprintln!("{}", arg(3));
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            // std's `ExitCode` reaches WASI as `exit(ok|err)`, i.e. 0 or 1 only.
            wasip2::cli::exit::exit_with_code(code);
            ExitCode::from(code)
        }
        "sleep" => {
            println!("{}", arg(2));
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        "spin" => {
            println!("{}", arg(2));
            let _ = std::io::stdout().flush();
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        "read" => match std::fs::read_to_string(arg(2)) {
            Ok(s) => {
                print!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("read {}: {e}", arg(2));
                ExitCode::FAILURE
            }
        },
        "write" => match std::fs::write(arg(2), b"written") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("write {}: {e}", arg(2));
                ExitCode::FAILURE
            }
        },
        "env" => match std::env::var(arg(2)) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(_) => {
                eprintln!("{} unset", arg(2));
                ExitCode::FAILURE
            }
        },
        "args" => {
            for a in &args {
                println!("{a}");
            }
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("unknown command {other:?}");
            ExitCode::from(2)
        }
    }
}
