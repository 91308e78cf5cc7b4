//! The store's error type: every variant names what failed and where (path, key, pack, offset).

use std::io;
use std::path::PathBuf;

use crate::format::FormatError;
use crate::key::Key;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The cause is part of the message and deliberately not chained as `source()`, so a caller
    /// printing the whole chain says it once.
    #[error("{op} {}: {cause}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        cause: io::Error,
    },

    #[error("{} is not a basin store: {reason}", path.display())]
    NotAStore { path: PathBuf, reason: String },

    #[error("{} already holds files; a store is created only in an empty or absent folder", path.display())]
    NotEmpty { path: PathBuf },

    #[error("{} has store format version {found}; this basin reads version {supported} (upgrade basin)", path.display())]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    #[error("bad configuration in {}: {message}", path.display())]
    Config { path: PathBuf, message: String },

    #[error("object {key} not found")]
    NotFound { key: Key },

    #[error("pack {pack} offset {offset}: {reason}")]
    CorruptRecord {
        pack: u64,
        offset: u64,
        reason: FormatError,
    },

    #[error("pack {pack} offset {offset}: record holds {found}, index expected {expected}")]
    WrongRecord {
        pack: u64,
        offset: u64,
        expected: Key,
        found: Key,
    },

    #[error("pack {pack}: {reason}")]
    CorruptPack { pack: u64, reason: String },

    #[error("object {key} at {location}: content hashes to {actual}")]
    HashMismatch {
        key: Key,
        location: String,
        actual: Key,
    },

    #[error("object {key} at {location}: {detail}")]
    CorruptObject {
        key: Key,
        location: String,
        detail: String,
    },

    #[error("index {}: {cause}", path.display())]
    Index {
        path: PathBuf,
        cause: rusqlite::Error,
    },

    #[error("index {}: {detail}", path.display())]
    IndexCorrupt { path: PathBuf, detail: String },

    #[error("maintenance lock {} is held by another process{holder}", path.display())]
    Locked { path: PathBuf, holder: String },

    #[error("this store handle stopped accepting writes after an earlier failure: {reason}; reopen the store")]
    Poisoned { reason: String },

    #[error("range {offset}+{len} is outside object {key} of {size} bytes")]
    OutOfRange {
        key: Key,
        offset: u64,
        len: u64,
        size: u64,
    },

    #[error("{0}")]
    InvalidArgument(String),

    #[error("importing {}: {detail}", path.display())]
    Import { path: PathBuf, detail: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, cause: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            cause,
        }
    }

    /// True when the error says the object does not exist (as opposed to a failure reading it).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True when the error reports damaged bytes on disk.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::CorruptRecord { .. }
                | Error::WrongRecord { .. }
                | Error::CorruptPack { .. }
                | Error::HashMismatch { .. }
                | Error::CorruptObject { .. }
                | Error::IndexCorrupt { .. }
        )
    }
}

/// Adds the path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(op, path, e))
    }
}
