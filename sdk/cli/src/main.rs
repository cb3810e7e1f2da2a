//! `wisp`: one binary for the whole system. Thin: parse flags (every flag also a `WISP_*`
//! environment variable), set up tracing, run the command, print the error chain.

mod author;
mod cli;
#[cfg(test)]
mod cli_docs;
mod describe;
mod manifests;
mod output;
mod resources;
mod rollout;
mod server;
mod top;

use clap::Parser;

use crate::cli::{Cli, Command, RolloutCommand, TokenCommand};

/// mimalloc, not glibc's malloc: allocation was ≈ 17 % of the CPU of a cold start (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: cannot start the async runtime: {e}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    let format = match cli.global.log_format {
        cli::LogFormat::Text => wisp_telemetry::LogFormat::Text,
        cli::LogFormat::Json => wisp_telemetry::LogFormat::Json,
    };
    // Only the long-running commands export traces.
    let otlp = match &cli.command {
        Command::Up(a) => otlp(&a.traces, "up"),
        Command::Server(a) => otlp(&a.up.traces, "server"),
        Command::Node(a) => otlp(
            &a.traces,
            &a.node.node_name.clone().unwrap_or_else(wisp_node::node::hostname),
        ),
        _ => None,
    };
    let guard = match wisp_telemetry::init(format, otlp.as_ref(), runtime.handle()) {
        Ok(g) => g,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e}");
            }
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // The spans still queued go out while the runtime their sender uses still runs.
    drop(guard);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e}");
                for cause in e.chain().skip(1) {
                    eprintln!("  caused by: {cause}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The exporter's settings for a long-running command started with `--otlp-endpoint`.
fn otlp(args: &cli::TraceArgs, instance: &str) -> Option<wisp_telemetry::Otlp> {
    Some(wisp_telemetry::Otlp {
        endpoint: args.otlp_endpoint.clone()?,
        sample_ratio: args.otlp_sample_ratio,
        instance: instance.to_owned(),
    })
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            wisp_tls::private_umask();
            Box::pin(server::up(args)).await
        }
        Command::Server(args) => {
            wisp_tls::private_umask();
            Box::pin(server::server(args, false)).await
        }
        Command::Node(args) => {
            wisp_tls::private_umask();
            Box::pin(server::node(&cli.global, args)).await
        }
        Command::Logs(args) => resources::logs(&cli.global, args).await,
        Command::Apply(args) => resources::apply(&cli.global, args).await,
        Command::Get(args) => resources::get(&cli.global, args).await,
        Command::Describe(args) => resources::describe(&cli.global, args).await,
        Command::Top { command } => top::run(&cli.global, command).await,
        Command::Delete(args) => resources::delete(&cli.global, args).await,
        Command::Rollout { command } => match command {
            RolloutCommand::Status(args) => rollout::status(&cli.global, &args).await,
            RolloutCommand::History(args) => rollout::history(&cli.global, &args).await,
            RolloutCommand::Undo(args) => rollout::undo(&cli.global, &args).await,
            RolloutCommand::Promote(args) => author::traffic::promote(&cli.global, &args).await,
            RolloutCommand::Rollback(args) => author::traffic::rollback(&cli.global, &args).await,
        },
        Command::New(args) => author::new(&args),
        Command::Build(args) => author::build(&args).await,
        Command::Deploy(args) => author::deploy(&cli.global, &args).await,
        Command::Invoke(args) => author::invoke(&cli.global, &args).await,
        Command::Push(args) => author::push(&args).await,
        Command::Dev(args) => author::dev::dev(&cli.global, &args).await,
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "wisp", &mut std::io::stdout());
            Ok(())
        }
        Command::Context { command } => resources::context(&cli.global, command),
        Command::Token {
            command: TokenCommand::Create(args),
        } => resources::token_create(&cli.global, args).await,
        Command::Token {
            command: TokenCommand::List,
        } => resources::token_list(&cli.global).await,
        Command::Token {
            command: TokenCommand::Revoke { id },
        } => resources::token_revoke(&cli.global, &id).await,
    }
}
