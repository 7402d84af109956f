//! `outpost-fleet`: parse, run, map the error to a message and an exit code (see
//! `outpost_fleet::exit`).

use std::process::ExitCode;

use clap::Parser;
use outpost_fleet::cli::Cli;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(outpost_fleet::exit::USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match outpost_fleet::run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("outpost-fleet: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
