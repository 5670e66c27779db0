//! `tributary-relay bench-dispatch` (in progress).
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct BenchDispatchArgs {}

pub async fn run(_args: BenchDispatchArgs) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
