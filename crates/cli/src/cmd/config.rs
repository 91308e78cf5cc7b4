//! `basin config ...` (owned by the hash/scan work).

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration.
    Show,
}

pub fn run(_cmd: ConfigCommand, _global: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("basin config: not built yet")
}
