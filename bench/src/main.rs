//! `tributary-bench`: the benchmarks, out of the shipped binaries. Each prints `name=value`
//! figures. `operator-scale` runs the operator binary as users run it (build it alongside:
//! `cargo build --release -p tributary-operator -p tributary-bench`); `topics`, `relay` and
//! `dispatch` run the operator's and the relay's code in this process.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tributary_common::logging::{self, LoggingArgs};

mod dispatch;
mod figures;
mod operator_scale;
mod relay;
mod topics;

// As in `tributary-relay`, whose code the relay and dispatch benchmarks run: its figures depend on
// the allocator (records are freed on other threads than they were allocated on).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "tributary-bench", about = "Benchmarks of the Tributary binaries")]
struct Cli {
    #[command(flatten)]
    logging: LoggingArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// `tributary-operator run` against an in-memory API server holding N EventTopics and a real
    /// broker: time until all are Ready, peak RSS, and the slowest /healthz answer.
    OperatorScale(operator_scale::Args),
    /// Reconcile N fresh EventTopics against a broker through the controller's path; prints
    /// topics_per_s and peak_rss_mib.
    Topics(topics::Args),
    /// Relay throughput and commit→ack latency against a real database and broker, beside
    /// PostgreSQL-only and Kafka-only baselines.
    Relay(Box<relay::Args>),
    /// Dispatcher throughput (unordered, per-key) and latency at an offered load against a real
    /// broker and an in-process sink, beside a plain-consume baseline.
    Dispatch(Box<dispatch::Args>),
}

/// Duration flags as the binaries take them (`10s`, `1m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    tributary_api::duration::parse(text).map_err(|error| error.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.logging.log_format);
    let result = match cli.command {
        Command::OperatorScale(args) => operator_scale::run(args).await,
        Command::Topics(args) => topics::run(args).await,
        Command::Relay(args) => relay::run(*args).await,
        Command::Dispatch(args) => dispatch::run(*args).await,
    };
    logging::exit_code(result.map(|()| ExitCode::SUCCESS))
}
