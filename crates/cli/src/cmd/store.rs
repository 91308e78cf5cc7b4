//! Object store subcommands (`basin init`, `put`, `get`, `pack`, `validate`, ...).
//!
//! Every command is a thin shell over `basin_store`: it parses arguments, opens the store, calls
//! one library operation and prints the answer. Data goes to stdout (plain text, or JSON with
//! `--json`: one document, or one line per item for per-object answers); progress bars and
//! summaries go to stderr and are silenced by `-q`.
//!
//! Exit codes: 0 success; 1 the answer is "no" (`has`, `meta` with a missing key) or problems
//! were found (`validate`); 2 an error; 3 the maintenance lock is held by another process (the
//! operation did not start; retry, or pass `--wait`).

mod maintain;
mod objects;
mod output;
mod parse;
mod walk;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use basin_store::{Compression, HashAlgorithm, Key, LockWait, Store};

use super::Global;

/// Exit code when the answer is "no" or problems were found.
pub const EXIT_NO: u8 = 1;
/// Exit code when the maintenance lock is held by another process.
pub const EXIT_LOCKED: u8 = 3;

#[derive(Debug, clap::Subcommand)]
pub enum StoreCommand {
    /// Create a new, empty object store.
    Init(InitArgs),
    /// Store files (or stdin) as loose objects; prints one key per object, in input order.
    Put(PutArgs),
    /// Write an object's bytes to stdout or to a file.
    Get(GetArgs),
    /// Say whether objects exist: `KEY yes|no` per key; exit 1 if any is missing.
    Has(KeysArgs),
    /// Show size, stored size, location and compression of objects; exit 1 if any is missing.
    Meta(KeysArgs),
    /// List every key in the store, sorted, one per line.
    Ls,
    /// Show object counts, sizes and index overhead.
    Stats,
    /// Move loose objects into packs (all, by key prefix, or a list of keys).
    Pack(PackArgs),
    /// Store files and whole trees straight into packs; prints `KEY  PATH` per file.
    Import(ImportArgs),
    /// Delete objects (loose or packed); packed space is reclaimed by `repack`.
    Delete(DeleteArgs),
    /// Rewrite packs whose garbage exceeds a threshold (or all packs).
    Repack(RepackArgs),
    /// Check every object, record, pack and index row; prints each problem, exit 1 if any.
    Validate(LockArgs),
    /// Remove leftovers: sandbox files, loose copies already packed, unsealed pack tails.
    Clean(CleanArgs),
    /// Rebuild the index from the packs alone.
    RebuildIndex(LockArgs),
    /// Copy a consistent backup of the store into DEST (incremental, resumable).
    Backup(BackupArgs),
    /// Copy every object of another basin store into this one.
    ImportStore(ImportFromArgs),
    /// Copy every object of a disk-objectstore container into this one.
    ImportDos(ImportFromArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to create the store in (absent or empty); defaults to --store.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Hash that names objects: blake3 (fastest) or sha256 (keys match disk-objectstore, git-lfs).
    #[arg(long, default_value = "blake3", value_parser = parse::hash_algorithm)]
    pub hash: HashAlgorithm,
    /// Hex digits of the key used as a subfolder of loose/ (0 = flat).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=8), value_name = "N")]
    pub loose_prefix_len: u8,
    /// Seal a pack once it reaches this size (e.g. 4GiB, 512MiB, 100MB, 1048576).
    #[arg(long, default_value = "4GiB", value_parser = parse::size_bytes, value_name = "SIZE")]
    pub pack_size_target: u64,
    /// Compression of objects written into packs: none, zstd[:LEVEL] or auto[:LEVEL].
    #[arg(long, default_value = "none", value_parser = parse::compression)]
    pub compression: Compression,
}

#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Files to store; `-` or nothing reads one object from stdin.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Make all objects durable in one sync round (much faster for many small files).
    #[arg(long)]
    pub batch: bool,
}

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[arg(value_parser = parse::key, value_name = "KEY")]
    pub key: Key,
    /// Write to FILE (through a temporary file renamed into place, so FILE is never left
    /// partial or damaged) instead of stdout. On stdout, objects up to 16 MiB are verified
    /// before their first byte is written; larger ones stream and end in an error if damaged.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct KeysArgs {
    #[arg(required = true, value_parser = parse::key, value_name = "KEY")]
    pub keys: Vec<Key>,
}

/// How maintenance commands treat a maintenance lock held by another process.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LockArgs {
    /// Wait for another maintenance process to finish instead of failing at once.
    #[arg(long)]
    pub wait: bool,
}

impl LockArgs {
    fn lock_wait(self) -> LockWait {
        if self.wait {
            LockWait::Block
        } else {
            LockWait::Fail
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct PackArgs {
    /// Pack only loose objects whose key starts with these hex digits.
    #[arg(long, value_parser = parse::key_prefix, value_name = "HEX", conflicts_with = "keys_from")]
    pub prefix: Option<String>,
    /// Pack only the keys listed in FILE (first word of each line; `-` = stdin).
    #[arg(long, value_name = "FILE")]
    pub keys_from: Option<PathBuf>,
    /// Compression for the new pack records (default: the store's policy).
    #[arg(long, value_parser = parse::compression)]
    pub compression: Option<Compression>,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Files and folders (walked recursively; symlinks inside folders are skipped).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Compression for the new pack records (default: the store's policy).
    #[arg(long, value_parser = parse::compression)]
    pub compression: Option<Compression>,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[arg(required = true, value_parser = parse::key, value_name = "KEY")]
    pub keys: Vec<Key>,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct RepackArgs {
    /// Rewrite every pack, not only those with enough garbage.
    #[arg(long)]
    pub all: bool,
    /// Rewrite a pack when deleted bytes are at least this fraction of it (0.0..=1.0).
    #[arg(long, default_value_t = 0.2, value_parser = parse::ratio, value_name = "RATIO")]
    pub garbage_min: f64,
    /// Compression for the rewritten records (default: keep each record as it is stored).
    #[arg(long, value_parser = parse::compression)]
    pub compression: Option<Compression>,
    /// Write the moved records through the page cache (by default they bypass it, so that a
    /// repack does not push out of memory what readers use).
    #[arg(long)]
    pub through_page_cache: bool,
    /// Also merge sealed packs smaller than SIZE (e.g. 1GiB) and than half the pack size
    /// target, when there are at least two, into the current pack: a store imported in many
    /// large batches otherwise keeps one pack file per batch.
    #[arg(long, value_parser = parse::size_bytes, value_name = "SIZE")]
    pub merge_below: Option<u64>,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Do not compact the index database.
    #[arg(long)]
    pub no_vacuum: bool,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// Folder that receives (or already holds) the backup.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, clap::Args)]
pub struct ImportFromArgs {
    /// The store (or container) to copy objects from.
    #[arg(value_name = "SRC")]
    pub src: PathBuf,
    #[command(flatten)]
    pub lock: LockArgs,
}

pub fn run(cmd: StoreCommand, global: &Global) -> anyhow::Result<ExitCode> {
    match dispatch(cmd, global) {
        Ok(code) => Ok(code),
        // The reader of stdout left (`basin ls | head`): it has what it wanted.
        Err(err) if err.downcast_ref::<output::StdoutClosed>().is_some() => Ok(ExitCode::SUCCESS),
        Err(err) => match err.downcast_ref::<basin_store::Error>() {
            // A busy store is an expected state, not a failure of this process: say what to do
            // and use its own exit code so scripts can retry.
            Some(basin_store::Error::Locked { .. }) => {
                eprintln!(
                    "basin: error: {err:#}\nbasin: another maintenance operation is running; retry later or pass --wait"
                );
                Ok(ExitCode::from(EXIT_LOCKED))
            }
            _ => Err(err),
        },
    }
}

fn dispatch(cmd: StoreCommand, global: &Global) -> anyhow::Result<ExitCode> {
    match cmd {
        StoreCommand::Init(a) => objects::init(a, global),
        StoreCommand::Put(a) => objects::put(a, global),
        StoreCommand::Get(a) => objects::get(a, global),
        StoreCommand::Has(a) => objects::has(a, global),
        StoreCommand::Meta(a) => objects::meta(a, global),
        StoreCommand::Ls => objects::ls(global),
        StoreCommand::Stats => objects::stats(global),
        StoreCommand::Pack(a) => maintain::pack(a, global),
        StoreCommand::Import(a) => maintain::import(a, global),
        StoreCommand::Delete(a) => maintain::delete(a, global),
        StoreCommand::Repack(a) => maintain::repack(a, global),
        StoreCommand::Validate(a) => maintain::validate(a, global),
        StoreCommand::Clean(a) => maintain::clean(a, global),
        StoreCommand::RebuildIndex(a) => maintain::rebuild_index(a, global),
        StoreCommand::Backup(a) => maintain::backup(a, global),
        StoreCommand::ImportStore(a) => maintain::import_store(a, global),
        StoreCommand::ImportDos(a) => maintain::import_dos(a, global),
    }
}

/// The store folder named by `--store` or `BASIN_STORE`.
fn store_dir(global: &Global) -> anyhow::Result<&Path> {
    global
        .store
        .as_deref()
        .context("no store given: pass --store DIR or set BASIN_STORE")
}

/// Opens the store named by `--store` / `BASIN_STORE`. The library's errors already name the path.
fn open_store(global: &Global) -> anyhow::Result<Store> {
    Ok(Store::open(store_dir(global)?)?)
}
