//! `basin config show`: the effective configuration and where each value came from. The loading
//! and layering live in `basin_scan::config`; this module only parses flags and prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use basin_scan::config::LoadedConfig;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration: built-in defaults, then basin.toml (explicit file,
    /// $BASIN_CONFIG, ./basin.toml or $XDG_CONFIG_HOME/basin/basin.toml), then BASIN_*
    /// environment variables, then flags. Each value is annotated with its origin. TOML by
    /// default (itself a valid basin.toml), JSON with --json.
    Show(ShowArgs),
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Read this config file instead of searching for basin.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a setting as a command-line flag would (`--set hash.jobs=4`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(cmd: ConfigCommand, global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCommand::Show(args) => show(args, global),
    }
}

fn show(args: ShowArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let mut loaded = LoadedConfig::load(args.config.as_deref())?;
    for assignment in &args.set {
        let (key, value) = assignment
            .split_once('=')
            .with_context(|| format!("--set {assignment}: expected KEY=VALUE"))?;
        loaded.set(key.trim(), value)?;
    }
    if global.json {
        println!("{}", serde_json::to_string_pretty(&loaded.to_json())?);
    } else {
        print!("{}", loaded.to_toml());
    }
    Ok(ExitCode::SUCCESS)
}
