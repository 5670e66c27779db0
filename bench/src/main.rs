//! `tributary-bench`: the benchmarks, out of the shipped binaries. Each prints `name=value`
//! figures. `operator-scale` runs the operator binary as users run it (build it alongside:
//! `cargo build --release -p tributary-operator -p tributary-bench`); `topics`, `relay` and
//! `dispatch` run the operator's and the relay's code in this process; `dispatch-memory` and
//! `soak` run the relay binary (`cargo build --release -p tributary-relay -p tributary-bench`).

use std::process::ExitCode;

use allocator::Allocator;
use clap::{Parser, Subcommand};
use tributary_common::logging::{self, LoggingArgs};

mod allocator;
mod dispatch;
mod dispatch_memory;
mod figures;
mod operator_scale;
mod relay;
mod soak;
mod topics;

#[global_allocator]
static ALLOCATOR: allocator::PerProcess = allocator::PerProcess;

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
    /// Peak RSS of the `tributary-relay dispatch` binary on a backlog over many partitions behind
    /// a slow sink (build it alongside: `cargo build --release -p tributary-relay -p tributary-bench`).
    DispatchMemory(Box<dispatch_memory::Args>),
    /// The release binaries end to end (PostgreSQL outbox → relay → Kafka → dispatcher → an HTTP
    /// sink in this process) under load while the relay and the dispatcher are SIGKILLed, the
    /// broker is stopped, PostgreSQL restarted and the sink taken down, each with a PostgreSQL
    /// and a broker of its own; prints lost, skipped, order_violations, duplicates and
    /// dead_lettered, and fails unless all but duplicates are 0.
    Soak(Box<soak::Args>),
}

impl Command {
    /// The allocator of the binary whose code the benchmark runs (see `allocator`).
    fn allocator(&self) -> Allocator {
        match self {
            // The operator's code, or a binary in a child process (which has its own allocator).
            Command::OperatorScale(_) | Command::Topics(_) | Command::DispatchMemory(_) => Allocator::System,
            Command::Relay(_) | Command::Dispatch(_) => Allocator::Mimalloc,
            // Its own code only (the sink, the writers); the relay runs in child processes.
            Command::Soak(_) => Allocator::System,
        }
    }

    async fn run(self) -> anyhow::Result<()> {
        match self {
            Command::OperatorScale(args) => operator_scale::run(args).await,
            Command::Topics(args) => topics::run(args).await,
            Command::Relay(args) => relay::run(*args).await,
            Command::Dispatch(args) => dispatch::run(*args).await,
            Command::DispatchMemory(args) => dispatch_memory::run(*args).await,
            Command::Soak(args) => soak::run(*args).await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let allocator = cli.command.allocator();
    if allocator != Allocator::current() {
        return logging::exit_code(allocator.run_again_under());
    }
    logging::init(cli.logging.log_format);
    logging::exit_code(run(cli.command).map(|()| ExitCode::SUCCESS))
}

fn run(command: Command) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(command.run())
}
