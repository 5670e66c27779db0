//! `tributary-relay`: the data-plane companion of the operator. Its subcommands (`outbox`,
//! `migrate`, `dispatch`) arrive with the issues that build them; until then it only identifies
//! itself, so images and charts can already reference it.

use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "tributary-relay", version, about = "Tributary's outbox relay and push dispatcher (subcommands not yet available)")]
struct Cli {}

fn main() -> ExitCode {
    Cli::parse();
    eprintln!("tributary-relay has no subcommands yet; see `tributary-relay --help`");
    ExitCode::from(2)
}
