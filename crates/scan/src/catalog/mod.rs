//! The catalog: where scans keep what they hashed, so that reruns skip unchanged files and
//! `verify` can compare later.
//!
//! Schema (same shape in SQLite and PostgreSQL):
//! - `roots(id, path UNIQUE)`: one row per canonical root folder;
//! - `runs(id, root_id, command, host, pid, started_ns, finished_ns, state, counters...)`:
//!   `state` is `running` until the run ends (`done`), or `interrupted` when a later run on the
//!   same root finds it still `running` (it was killed);
//! - `files(root_id, rel_path, size, mtime_ns, inode, status, error, run_id, hashed_at_ns,
//!   d_<algo>...)`, primary key `(root_id, rel_path)`: one row per file, or per archive member
//!   (`dir/a.zip!member/path`); `status` is `ok` or `error` (with `error` saying why); one
//!   nullable binary column per algorithm spec (`d_sha256`, `d_shake256_64`), added on first use.
//!
//! Rows are upserted, never duplicated. A digest column the current run does not compute keeps
//! its value only while (size, mtime, inode) are unchanged; otherwise it is cleared, so no row
//! ever pairs new metadata with an old file's digest.

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::path::PathBuf;

use basin_hash::{AlgoSpec, Digest};

pub use self::postgres::PostgresCatalog;
pub use self::sqlite::SqliteCatalog;
use crate::walk::FileMeta;

/// One row to write: a file (or archive member) and what hashing it gave.
#[derive(Debug, Clone)]
pub struct FileRow {
    pub rel_path: String,
    pub meta: FileMeta,
    /// Digests in the order of the run's specs, or why the file could not be hashed.
    pub result: Result<Vec<Digest>, String>,
    /// Delete the rows of this archive's old members first (the archive was re-read).
    pub replace_members: bool,
}

/// A row read back for `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    pub rel_path: String,
    pub size_bytes: u64,
    pub mtime_ns: i64,
    pub inode: u64,
    /// `None` for `ok` rows; the message for `error` rows.
    pub error: Option<String>,
    /// Every non-null digest column.
    pub digests: Vec<Digest>,
}

/// What a rerun needs to know about a file already in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownFile {
    pub meta: FileMeta,
    /// `ok` and holding every digest the current run asks for.
    pub complete: bool,
}

/// Known files of a root keyed by the XXH3-64 of their relative path: 40 bytes a file instead of
/// the path itself, so millions of files stay cheap. A collision could only skip a file whose
/// size, mtime and inode all equal another path's, i.e. the same inode (a hard link).
pub type KnownFiles = HashMap<u64, KnownFile>;

pub fn path_key(rel_path: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(rel_path.as_bytes())
}

/// Counters stored on a finished run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounters {
    pub files_hashed: u64,
    pub files_skipped: u64,
    pub files_failed: u64,
    pub bytes_hashed: u64,
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("SQLite catalog {}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("PostgreSQL catalog {url}: {source}")]
    Postgres {
        url: String,
        source: ::postgres::Error,
    },
    #[error("catalog location {location:?}: {reason}")]
    BadLocation { location: String, reason: String },
    #[error("catalog {location}: column {column} does not name an algorithm: {reason}")]
    BadColumn {
        location: String,
        column: String,
        reason: String,
    },
}

/// Operations both backends offer. The scan drives these; nothing else touches catalog SQL.
pub trait CatalogStore: Send {
    /// Where per-root lock files live for this catalog.
    fn lock_dir(&self) -> PathBuf;
    /// A printable name (path or URL without password).
    fn location(&self) -> String;
    /// The id of `root`, created if new.
    fn root_id(&mut self, root: &str) -> Result<i64, CatalogError>;
    /// Every root in the catalog.
    fn roots(&mut self) -> Result<Vec<(i64, String)>, CatalogError>;
    /// Adds digest columns for specs not yet stored.
    fn ensure_algorithms(&mut self, specs: &[AlgoSpec]) -> Result<(), CatalogError>;
    /// The specs that have a column.
    fn stored_algorithms(&mut self) -> Result<Vec<AlgoSpec>, CatalogError>;
    /// Records a new run (marking runs of this root still `running` as `interrupted`).
    fn start_run(&mut self, root_id: i64, command: &str) -> Result<i64, CatalogError>;
    fn finish_run(&mut self, run_id: i64, counters: &RunCounters) -> Result<(), CatalogError>;
    /// Files of the root, for skipping unchanged ones.
    fn known_files(&mut self, root_id: i64, specs: &[AlgoSpec])
        -> Result<KnownFiles, CatalogError>;
    /// Upserts rows in one transaction.
    fn write_batch(
        &mut self,
        root_id: i64,
        run_id: i64,
        specs: &[AlgoSpec],
        rows: &[FileRow],
    ) -> Result<(), CatalogError>;
    /// Relative paths whose row has status `error`.
    fn failed_paths(&mut self, root_id: i64) -> Result<Vec<String>, CatalogError>;
    /// Every row of a root, for `verify`, sorted by path.
    fn stored_rows(&mut self, root_id: i64) -> Result<Vec<StoredRow>, CatalogError>;
}

/// Opens the catalog named by `location`: a `postgres://` or `postgresql://` URL, else a SQLite file path.
pub fn open(location: &str) -> Result<Box<dyn CatalogStore>, CatalogError> {
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        Ok(Box::new(PostgresCatalog::connect(location)?))
    } else {
        Ok(Box::new(SqliteCatalog::open(std::path::Path::new(
            location,
        ))?))
    }
}

/// SQL shared by both dialects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    pub(crate) fn schema(self) -> String {
        let (id, int, text) = match self {
            Dialect::Sqlite => ("INTEGER PRIMARY KEY", "INTEGER", "TEXT"),
            // Bytewise collation keeps `a.zip!` .. `a.zip"` a contiguous range of member rows.
            Dialect::Postgres => ("BIGSERIAL PRIMARY KEY", "BIGINT", "TEXT COLLATE \"C\""),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS roots (id {id}, path TEXT NOT NULL UNIQUE);
             CREATE TABLE IF NOT EXISTS runs (id {id}, root_id {int} NOT NULL, command TEXT NOT NULL,
                host TEXT NOT NULL, pid {int} NOT NULL, started_ns {int} NOT NULL, finished_ns {int},
                state TEXT NOT NULL, files_hashed {int}, files_skipped {int}, files_failed {int}, bytes_hashed {int});
             CREATE TABLE IF NOT EXISTS files (root_id {int} NOT NULL, rel_path {text} NOT NULL,
                size {int} NOT NULL, mtime_ns {int} NOT NULL, inode {int} NOT NULL, status TEXT NOT NULL,
                error TEXT, run_id {int} NOT NULL, hashed_at_ns {int} NOT NULL, PRIMARY KEY (root_id, rel_path));"
        )
    }

    /// `INSERT ... ON CONFLICT DO UPDATE` for `rows` rows of this spec set. `other_columns` are digest
    /// columns this run does not compute: kept while the metadata is unchanged, cleared otherwise.
    pub(crate) fn upsert_sql(
        self,
        specs: &[AlgoSpec],
        other_columns: &[String],
        rows: usize,
    ) -> String {
        let mut columns: Vec<String> = [
            "root_id",
            "rel_path",
            "size",
            "mtime_ns",
            "inode",
            "status",
            "error",
            "run_id",
            "hashed_at_ns",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect();
        columns.extend(specs.iter().map(|s| format!("d_{}", s.column_name())));
        let width = columns.len();
        let values: Vec<String> = (0..rows)
            .map(|r| {
                let params: Vec<String> = (1..=width).map(|c| self.param(r * width + c)).collect();
                format!("({})", params.join(","))
            })
            .collect();
        let same_meta = "files.size = excluded.size AND files.mtime_ns = excluded.mtime_ns AND files.inode = excluded.inode";
        let mut sets: Vec<String> = columns[2..]
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        sets.extend(
            other_columns
                .iter()
                .map(|c| format!("{c} = CASE WHEN {same_meta} THEN files.{c} ELSE NULL END")),
        );
        format!(
            "INSERT INTO files ({}) VALUES {} ON CONFLICT (root_id, rel_path) DO UPDATE SET {}",
            columns.join(","),
            values.join(","),
            sets.join(", ")
        )
    }

    pub(crate) fn known_sql(self, specs: &[AlgoSpec]) -> String {
        let mut complete = String::from("status = 'ok'");
        for s in specs {
            complete.push_str(&format!(" AND d_{} IS NOT NULL", s.column_name()));
        }
        format!(
            "SELECT rel_path, size, mtime_ns, inode, CASE WHEN {complete} THEN 1 ELSE 0 END FROM files WHERE root_id = {}",
            self.param(1)
        )
    }

    pub(crate) fn delete_members_sql(self) -> String {
        format!(
            "DELETE FROM files WHERE root_id = {} AND rel_path >= {} AND rel_path < {}",
            self.param(1),
            self.param(2),
            self.param(3)
        )
    }
}

/// The key range `[archive!, archive")` holding every member row of `archive` (`"` follows `!`).
pub(crate) fn member_range(archive_rel_path: &str) -> (String, String) {
    (
        format!("{archive_rel_path}!"),
        format!("{archive_rel_path}\""),
    )
}

/// Splits the digest columns of a table into specs, refusing names that are not ours.
pub(crate) fn specs_from_columns(
    location: &str,
    columns: &[String],
) -> Result<Vec<AlgoSpec>, CatalogError> {
    columns
        .iter()
        .filter_map(|c| c.strip_prefix("d_"))
        .map(|c| {
            AlgoSpec::from_column_name(c).map_err(|e| CatalogError::BadColumn {
                location: location.to_string(),
                column: format!("d_{c}"),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// The digest columns of a catalog that this run does not compute (`all` lists every digest
/// column): a batch keeps them only while the file is unchanged.
pub(crate) fn other_digest_columns(all: Vec<String>, specs: &[AlgoSpec]) -> Vec<String> {
    let run_columns: Vec<String> = specs
        .iter()
        .map(|s| format!("d_{}", s.column_name()))
        .collect();
    all.into_iter()
        .filter(|c| !run_columns.contains(c))
        .collect()
}

pub(crate) fn status_of(row: &FileRow) -> (&'static str, Option<&str>) {
    match &row.result {
        Ok(_) => ("ok", None),
        Err(message) => ("error", Some(message.as_str())),
    }
}

/// The digest bytes of `row` for each spec, `None` for failed rows.
pub(crate) fn digest_columns<'a>(row: &'a FileRow, specs: &[AlgoSpec]) -> Vec<Option<&'a [u8]>> {
    match &row.result {
        Ok(digests) => specs
            .iter()
            .map(|spec| {
                digests
                    .iter()
                    .find(|d| d.spec == *spec)
                    .map(|d| d.bytes.as_slice())
            })
            .collect(),
        Err(_) => vec![None; specs.len()],
    }
}
