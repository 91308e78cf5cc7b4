//! basin's object store: content-addressed objects in one folder, shared by many processes, no server.
//!
//! New objects are written *loose* (one file each, durable when the call returns) or, many at
//! once, as a [`WriteBatch`] (one sealed *batch pack*, durable and indexed at commit), by any
//! number of processes at once. Maintenance moves loose objects into append-only,
//! self-describing *packs*, merges batch packs into them, and keeps an SQLite *index* of where
//! each packed object lives; the index is a cache that
//! [`Maintenance::rebuild_index`] recreates from the packs alone. Reads work at any time, also
//! during maintenance in another process, and never return wrong bytes: every read is checked
//! against the record checksums or the object's hash.
//!
//! ```
//! use basin_store::{InitOptions, LockWait, NoProgress, PackOptions, PackSelection, Store};
//! # fn main() -> Result<(), basin_store::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::init(&dir.path().join("store"), &InitOptions::default())?;
//! let key = store.put(b"hello")?;
//! assert_eq!(store.get(&key)?, b"hello");
//!
//! let maint = store.maintenance(LockWait::Fail)?;
//! maint.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)?;
//! assert_eq!(store.get(&key)?, b"hello");
//! assert!(maint.validate(&NoProgress)?.is_ok());
//! # Ok(()) }
//! ```
//!
//! The byte layouts are in `docs/format.md` and [`format`].

mod batch;
mod blake3_batch;
mod compress;
mod config;
mod direct;
mod direct_read;
mod error;
pub mod format;
mod fsutil;
mod index;
mod key;
mod loose;
mod maint;
mod pack;
mod progress;
mod reader;
mod store;
mod transfer;
mod validate;

pub use batch::WriteBatch;
pub use config::{
    Compression, InitOptions, StoreConfig, CONFIG_FILE, PACK_SIZE_TARGET_BYTES_DEFAULT,
    STORE_FORMAT_VERSION,
};
pub use error::{Error, Result};
pub use index::INDEX_FILE;
pub use key::{HashAlgorithm, Key, KeyHasher, KeyParseError, KEY_BYTES};
pub use maint::{
    CleanOptions, CleanReport, LockWait, Maintenance, PackOptions, PackReport, PackSelection,
    RebuildReport, RepackOptions, RepackReport, Source,
};
pub use progress::{NoProgress, Progress, Unit};
pub use reader::ObjectReader;
pub use store::{Location, ObjectMeta, ReadManyVisitor, Stats, Store};
pub use transfer::{BackupReport, ImportReport};
pub use validate::{Problem, ValidationReport};
