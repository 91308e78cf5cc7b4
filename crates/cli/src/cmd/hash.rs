//! `basin hash`, `basin verify`, `basin copy` (owned by the hash/scan work).

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct HashArgs {
    pub paths: Vec<std::path::PathBuf>,
}
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    pub paths: Vec<std::path::PathBuf>,
}
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    pub paths: Vec<std::path::PathBuf>,
}

pub fn run_hash(_a: HashArgs, _g: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("basin hash: not built yet")
}
pub fn run_verify(_a: VerifyArgs, _g: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("basin verify: not built yet")
}
pub fn run_copy(_a: CopyArgs, _g: &Global) -> anyhow::Result<ExitCode> {
    anyhow::bail!("basin copy: not built yet")
}
