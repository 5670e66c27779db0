//! `tributary-bench`: benchmarks that run the shipped binaries as users run them and print
//! `name=value` figures. Build it with the binaries it drives:
//! `cargo build --release -p tributary-operator -p tributary-bench`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod operator_scale;

#[derive(Debug, Parser)]
#[command(name = "tributary-bench", about = "Benchmarks of the Tributary binaries")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `tributary-operator run` against an in-memory API server holding N EventTopics and a real
    /// broker: time until all are Ready, peak RSS, and the slowest /healthz answer.
    OperatorScale(operator_scale::Args),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::OperatorScale(args) => operator_scale::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
