use std::process::ExitCode;

use clap::Parser;
use tributary_relay::cli::{self, Cli};

// Records are allocated on the Kafka consumer's thread and freed on the async workers; glibc's
// allocator serialises such cross-thread frees on its arena locks, mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    tributary_common::logging::exit_code(cli::run(Cli::parse()).await)
}
