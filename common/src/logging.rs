//! Logging set-up shared by the binaries: `--log-format text|json`, filtered by `RUST_LOG`
//! (default `info`), written to stderr.

use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The logging flags every binary takes (`#[command(flatten)]` into its top-level parser).
#[derive(Debug, Args)]
pub struct LoggingArgs {
    /// Log format.
    #[arg(long, global = true, env = "TRIBUTARY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Installs the global subscriber. Call once, first thing.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The process exit code of a binary's `run`: its own code, or 1 with the error chain on stderr.
pub fn exit_code(result: anyhow::Result<std::process::ExitCode>) -> std::process::ExitCode {
    result.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        std::process::ExitCode::FAILURE
    })
}
