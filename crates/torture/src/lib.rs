//! Torture tests for basin's object store: several real processes writing, reading and
//! maintaining one store at once, and `kill -9` of a process in the middle of an operation.
//!
//! This crate is test machinery, not a library anyone ships. It has three parts:
//! - [`content`]: object content that carries its own proof. The first 8 bytes of every object
//!   are a seed (little endian); the rest is a stream derived from that seed. Any process can
//!   check any object it reads without a shared map, and any object found in a store can be
//!   checked even when nobody logged it.
//! - [`ledger`]: append-only ack logs. A worker appends a key only *after* the store call that
//!   wrote it returned, and fsyncs the line: a log is the list of acknowledged writes (and of
//!   deletes begun and finished). A [`Ledger`] folds any number of logs into what a store must
//!   hold.
//! - [`audit`]: checks a store against a ledger (acknowledged objects present and correct,
//!   finished deletes gone, aborted batches invisible, every listed object self-consistent).
//!
//! The worker binary `basin-torture-worker` (writer, reader, maintainer, op) and the tests in
//! `tests/` (stress.rs, crash.rs) are built on these.
//!
//! ```
//! use basin_torture::content::ObjectSpec;
//! let spec = ObjectSpec { seed: 42, len: 100 };
//! let bytes = spec.bytes();
//! assert_eq!(ObjectSpec::check_self(&bytes), Ok(spec));
//! ```

pub mod audit;
pub mod content;
pub mod ledger;

use std::io;
use std::path::PathBuf;

use basin_store::Key;

pub use audit::{audit, AuditReport};
pub use content::ObjectSpec;
pub use ledger::{AckLog, Ledger};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that stops a torture worker or check. Store failures keep the store's error as
/// the source so the report names the key/pack/offset the store named.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{op}: {source}")]
    Store {
        op: String,
        source: basin_store::Error,
    },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },

    #[error("{}:{line}: {detail}", path.display())]
    Log {
        path: PathBuf,
        line: usize,
        detail: String,
    },

    #[error("object {key}: {detail}")]
    WrongContent { key: Key, detail: String },

    #[error("{0}")]
    Violation(String),
}

/// Adds what was being done to a store result.
pub trait StoreContext<T> {
    fn during(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> StoreContext<T> for basin_store::Result<T> {
    fn during(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Store { op: op(), source })
    }
}

/// Adds the path to an I/O result.
pub trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.into(),
            source,
        })
    }
}

/// The seed of a randomised run: `BASIN_TORTURE_SEED` when set (to replay a run), else fresh.
pub fn run_seed() -> u64 {
    match std::env::var("BASIN_TORTURE_SEED") {
        Ok(text) => match text.trim().parse() {
            Ok(seed) => seed,
            Err(_) => panic!("BASIN_TORTURE_SEED={text:?} is not a u64"),
        },
        Err(_) => rand::random(),
    }
}

/// Spreads one seed into independent child seeds (SplitMix64 finaliser), so every process and
/// phase of a run gets its own stream while the whole run replays from the printed seed.
pub fn derive_seed(seed: u64, salt: u64) -> u64 {
    content::splitmix64(seed ^ content::splitmix64(salt.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}
