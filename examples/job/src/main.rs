//! nightly: a Wisp job (a `wasi:cli/run` component). `wisp deploy` runs it once to
//! completion; `wisp logs nightly` shows what it printed and how it exited.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `[job] args` in wisp.toml are the arguments; `[env]` the environment.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    println!("{greeting} from nightly: {} argument(s): {}", args.len(), args.join(" "));
    let sum: u64 = (1..=100).sum();
    println!("the sum of 1..=100 is {sum}");
    if args.iter().any(|a| a == "--fail") {
        eprintln!("failing on purpose (--fail)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
