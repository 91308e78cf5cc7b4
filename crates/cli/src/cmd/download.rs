//! `basin download` (owned by the download work).

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// URLs to fetch.
    pub urls: Vec<String>,
}

pub fn run(_args: DownloadArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("basin download: not built yet")
}
