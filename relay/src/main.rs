use std::process::ExitCode;

use clap::Parser;
use tributary_relay::cli::{self, Cli};

#[tokio::main]
async fn main() -> ExitCode {
    tributary_common::logging::exit_code(cli::run(Cli::parse()).await)
}
