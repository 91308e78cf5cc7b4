//! `basin`: the command-line front door to basin's libraries.
//!
//! This crate parses arguments, draws progress bars and formats output. Anything a library user
//! would also need lives in the libraries (`basin-store`, `basin-hash`, `basin-scan`), never here.

mod cmd;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("basin: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
