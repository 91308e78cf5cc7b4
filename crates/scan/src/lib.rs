//! basin-scan: hash whole trees into a catalog, resume after interruption, verify later.
//!
//! The pieces, front to back:
//! - [`walk`]: sorted walk of a [`ScanRoot`] with [`Filters`] (hidden, size, extensions, mtime
//!   window, gitignore, symlinks, one file system); only regular files are ever opened;
//! - [`scan::scan`]: walk → skip unchanged (size, mtime, inode) → hash in parallel (large files
//!   spread their algorithms over cores, see `basin_hash::read`) → catalog batches + an observer,
//!   in walk order, with bounded memory ([`pipeline`]);
//! - [`catalog`]: SQLite (default) or PostgreSQL (`postgres://` URL), one row per file or archive
//!   member, upserted in batched transactions;
//! - [`lock::RootLock`]: one run per (catalog, root), an OS advisory lock that dies with its holder;
//! - [`verify::verify`]: re-hash and report changed / missing / new / unreadable;
//! - [`copy`]: copy while hashing, read back, compare, rename into place;
//! - [`failed`]: the failed-files list that `--retry-failed` reads.
//!
//! ```no_run
//! use basin_scan::{catalog, scan, walk::ScanRoot};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! struct Quiet;
//! impl scan::ScanObserver for Quiet {
//!     fn file_done(&mut self, _: &ScanRoot, _: &scan::FileOutcome) -> std::io::Result<()> { Ok(()) }
//! }
//! let mut cat = catalog::open("hashes.db")?;
//! let root = ScanRoot::resolve(std::path::Path::new("data"))?;
//! let options = scan::ScanOptions::new(basin_hash::parse_algo_list("sha256,blake3")?);
//! let summary = scan::scan(&root, Some(cat.as_mut()), &options, &mut Quiet)?;
//! println!("{} hashed, {} unchanged", summary.counters.files_hashed, summary.counters.files_skipped);
//! # Ok(()) }
//! ```

pub mod archive;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod copy;
pub mod download;
pub mod failed;
pub mod lock;
pub mod pipeline;
pub mod scan;
pub mod verify;
pub mod walk;

use std::path::PathBuf;

pub use walk::{Filters, ScanRoot};

/// Errors that stop a whole scan, verify or copy (per-file problems are outcomes, not errors).
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("writing output: {0}")]
    Output(std::io::Error),
}
