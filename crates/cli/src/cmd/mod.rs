//! Subcommand definitions and dispatch. Each area owns one module.

pub mod config;
pub mod download;
pub mod hash;
pub mod store;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// basin: a content-addressed storage system for files.
#[derive(Debug, Parser)]
#[command(name = "basin", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every subcommand.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// The object store folder.
    #[arg(long, global = true, env = "BASIN_STORE", value_name = "DIR")]
    pub store: Option<std::path::PathBuf>,
    /// Print data as JSON (one document, or one line per item for streams).
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress bars and no summary chatter on stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Store(store::StoreCommand),
    /// Hash files and trees with many algorithms in one read.
    Hash(hash::HashArgs),
    /// Re-hash files and report changed, missing and new ones.
    Verify(hash::VerifyArgs),
    /// Copy files while hashing, then verify the copies.
    Copy(hash::CopyArgs),
    /// Download URLs to disk while hashing.
    Download(download::DownloadArgs),
    /// Show the effective configuration.
    #[command(subcommand)]
    Config(config::ConfigCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Store(c) => store::run(c, &global),
        Command::Hash(a) => hash::run_hash(a, &global),
        Command::Verify(a) => hash::run_verify(a, &global),
        Command::Copy(a) => hash::run_copy(a, &global),
        Command::Download(a) => download::run(a, &global),
        Command::Config(c) => config::run(c, &global),
    }
}
