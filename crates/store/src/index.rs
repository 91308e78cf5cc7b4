//! The index: an SQLite database mapping key → where the packed record is.
//!
//! It is a cache of what the packs say, never the only copy of the truth: `rebuild` recreates it
//! from the pack files alone. Loose objects are not indexed; their file is their truth. Rows are
//! committed only after the pack bytes they point at are fdatasynced (the writer's job).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::error::{Error, Result};
use crate::format::Position;
use crate::key::{Key, KEY_BYTES};

/// File name of the index inside the store folder.
pub const INDEX_FILE: &str = "index.sqlite";

/// Version of the index schema (stored in `meta`).
pub const INDEX_SCHEMA_VERSION: i64 = 2;

/// Where a packed object's record is, and its lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRow {
    pub pack: u64,
    /// Offset of the record (its header) in the pack.
    pub offset: u64,
    pub raw_len: u64,
    pub stored_len: u64,
    pub flags: u8,
}

impl IndexRow {
    pub fn position(&self) -> Position {
        Position {
            pack: self.pack,
            offset: self.offset,
        }
    }
}

/// The live rows of a pack, in offset order, and the keys of its dead rows.
pub(crate) type PackRows = (Vec<(Key, IndexRow)>, Vec<Key>);

/// A pack as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackRow {
    pub id: u64,
    pub sealed: bool,
    /// Bytes of the pack that committed rows may point into (header + committed records
    /// [+ table and footer when sealed]). Anything past this in an unsealed pack is an
    /// uncommitted tail from a crash.
    pub end_bytes: u64,
}

impl PackRow {
    /// The row a write batch commits first to take an id: sealed, yet only a header long.
    /// No reader or maintenance step uses such a row; the batch's second transaction replaces
    /// it, or `clean` removes it (with the file, if a crash left one).
    pub(crate) fn reserved(id: u64) -> PackRow {
        PackRow {
            id,
            sealed: true,
            end_bytes: crate::format::PACK_HEADER_BYTES as u64,
        }
    }

    pub(crate) fn is_reserved(&self) -> bool {
        self.sealed && self.end_bytes == crate::format::PACK_HEADER_BYTES as u64
    }
}

/// How [`IndexTx::write_rows`] treats a row already there for the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowWrite {
    /// Replace it: rebuild, and moves of records by repack and merge. A move is a replace
    /// because nobody else can remove or move the row meanwhile (both need the maintenance
    /// lock, which the mover holds, and write batches only add keys the index lacks); a
    /// replace seeks once where an `UPDATE` of a row without rowid seeks twice (about half
    /// the time for 40,000 moved rows).
    Replace,
    /// Keep it: its record stays the one live copy, the new one is garbage.
    New,
}

/// A tombstone as the index knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneRow {
    pub key: Key,
    pub at: Position,
    pub before: Position,
}

/// For each key with tombstones, the latest position before which its records are dead.
#[derive(Debug, Default)]
pub(crate) struct Kills(std::collections::HashMap<Key, Position>);

impl Kills {
    pub(crate) fn new(tombstones: &[TombstoneRow]) -> Kills {
        let mut kills = std::collections::HashMap::new();
        for t in tombstones {
            let e = kills.entry(t.key).or_insert(t.before);
            *e = (*e).max(t.before);
        }
        Kills(kills)
    }

    /// Whether a record of `key` at `at` is dead (a later tombstone of the key kills it).
    pub(crate) fn kills(&self, key: &Key, at: Position) -> bool {
        self.0.get(key).is_some_and(|before| at < *before)
    }
}

/// What [`Index::checkpoint_and_vacuum`] did to the index file.
#[derive(Debug, Default)]
pub(crate) struct Compaction {
    /// Whether the whole file was rewritten (VACUUM).
    pub rewritten: bool,
    /// Pages the file is shorter by.
    pub pages_freed: u64,
}

pub(crate) struct Index {
    conn: Connection,
    path: PathBuf,
    /// Device and inode of the file the connection opened: a file put in its place later (a
    /// rebuild in another process) is another index.
    file_id: Option<(u64, u64)>,
    /// When the read snapshot used by [`Index::get_recent`] began, if one is open.
    snapshot_since: Option<Instant>,
    /// Whether any key was gone when the snapshot began: while none was, lookups in it skip
    /// the probe of `gone` (a tenth of a single read).
    snapshot_gone: bool,
    /// The staged write transaction open on this connection, if any (see [`Index::stage`]):
    /// the number it was begun with.
    staged: Option<u64>,
    /// Staged transactions begun so far on this connection: tells one from the next.
    stages_begun: u64,
}

/// Device and inode of the file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Above this many bytes of used index pages per object, `clean` rewrites the index.
const VACUUM_BYTES_PER_OBJECT_MAX: i64 = 70;
/// `PRAGMA auto_vacuum` of a file whose free pages `PRAGMA incremental_vacuum` gives back.
const AUTO_VACUUM_INCREMENTAL: i64 = 2;

/// Longest a read snapshot is reused. Beginning a read transaction costs more than the lookup
/// itself (WAL read locks are fcntl calls); reusing one for a few milliseconds makes single
/// reads several times faster, and bounds how long a checkpoint can be held back.
const SNAPSHOT_AGE_MAX: Duration = Duration::from_millis(20);
/// Page size of a new index file (older files keep theirs; SQLite reads any). Keys are random,
/// so a bulk commit dirties nearly every leaf, and the WAL takes a frame (24-byte header plus
/// page) per dirty page, half as many with 8 KiB pages as with 4 KiB. In the benchmark
/// (`bench/store/ab.sh`) that made write_packed of 20,000 objects into 40,000 0.81-0.88x its
/// time and a million-object import 0.80x, for 1.5 % more index bytes; 16 KiB pages left the
/// bench's index sparse enough that `clean` rewrote it.
const INDEX_PAGE_BYTES: u32 = 8192;
/// Fewest bytes of the index file an `objects` row can take: its cell holds the 32-byte key
/// plus at least a length byte, a record header of 7 bytes, and a 2-byte pointer to it (the
/// integers 0 and 1 take no bytes of the record).
const OBJECT_ROW_BYTES_MIN: u64 = 40;
/// Page cache of a maintenance connection (see [`Index::use_bulk_cache`]).
const BULK_CACHE_BYTES: u64 = 512 << 20;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    raw_len INTEGER NOT NULL,
    stored_len INTEGER,          -- NULL when equal to raw_len: saves index bytes per object
    flags INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packs (
    id INTEGER PRIMARY KEY,
    sealed INTEGER NOT NULL,
    end_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gone (key BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tombstones (
    pack INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key BLOB NOT NULL,
    before_pack INTEGER NOT NULL,
    before_offset INTEGER NOT NULL,
    PRIMARY KEY (pack, offset)
) WITHOUT ROWID;
";

/// The condition that an `objects o` row is live: its key is not in `gone`, the keys deleted
/// whose rows are still there (see [`IndexTx::mark_gone`]). Every query that answers "what does
/// the store hold" applies it.
macro_rules! live {
    () => {
        "NOT EXISTS (SELECT 1 FROM gone g WHERE g.key = o.key)"
    };
}

/// Rows one `INSERT` statement of [`IndexTx::write_rows`] carries.
const ROWS_PER_INSERT: usize = 16;

/// Runs `head VALUES (..), (..), ..` over `items`, [`ROWS_PER_INSERT`] of them per statement
/// (the rest one by one): a sixth less time per row than one row per statement (measured on a
/// million sorted rows). Items go in order, so of two rows with the same key the first stays
/// (`OR IGNORE`) or the last (`OR REPLACE`), as one by one. `bind` binds one item to the
/// `columns` parameters from its first index on.
fn insert_grouped<T>(
    conn: &Connection,
    head: &str,
    columns: usize,
    items: &[T],
    bind: &dyn Fn(&mut rusqlite::CachedStatement<'_>, usize, &T) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    let one_row = format!("({})", vec!["?"; columns].join(", "));
    let values = |n: usize| vec![one_row.as_str(); n].join(", ");
    let mut many = conn.prepare_cached(&format!("{head} VALUES {}", values(ROWS_PER_INSERT)))?;
    let mut one = conn.prepare_cached(&format!("{head} VALUES {}", values(1)))?;
    let mut groups = items.chunks_exact(ROWS_PER_INSERT);
    for group in &mut groups {
        for (n, item) in group.iter().enumerate() {
            bind(&mut many, 1 + columns * n, item)?;
        }
        many.raw_execute()?;
    }
    for item in groups.remainder() {
        bind(&mut one, 1, item)?;
        one.raw_execute()?;
    }
    Ok(())
}

/// Keys a bulk lookup binds at most at once.
const KNOWN_KEYS_PER_QUERY: usize = 4096;

/// `keys` as the value of one `rarray` parameter: SQLite then handles the whole list inside
/// one statement instead of one statement per key.
fn key_array(keys: &[Key]) -> std::rc::Rc<Vec<rusqlite::types::Value>> {
    std::rc::Rc::new(
        keys.iter()
            .map(|k| rusqlite::types::Value::Blob(k.as_bytes().to_vec()))
            .collect(),
    )
}

/// Runs `select` (which reads the `rarray` list `?1`, see [`ROWS_OF_KEYS_JOIN`]) over `keys`
/// and hands every result row to `each`. Keys go in sorted, so consecutive seeks share the
/// upper B-tree pages while they are in cache, at most [`KNOWN_KEYS_PER_QUERY`] per statement.
fn for_rows_of_keys(
    conn: &Connection,
    path: &Path,
    select: &str,
    keys: &[Key],
    each: &mut dyn FnMut(&rusqlite::Row<'_>) -> Result<()>,
) -> Result<()> {
    let sql = |e| index_err(path, e);
    let mut st = conn.prepare_cached(select).map_err(sql)?;
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    for chunk in sorted.chunks(KNOWN_KEYS_PER_QUERY) {
        let mut rows = st.query([key_array(chunk)]).map_err(sql)?;
        while let Some(r) = rows.next().map_err(sql)? {
            each(r)?;
        }
    }
    Ok(())
}

/// A column of a row from [`for_rows_of_keys`].
fn column<T: rusqlite::types::FromSql>(r: &rusqlite::Row<'_>, i: usize, path: &Path) -> Result<T> {
    r.get(i).map_err(|e| index_err(path, e))
}

/// The rows of a list of keys, as a join that walks the list and seeks each key:
/// `key IN rarray(..)` first copies the list into a temporary index, about a third more time
/// for the same seeks (measured on 4000 keys against 40,000 rows). [`rows_of_keys_join`]
/// picks this or [`ROWS_OF_LIVE_KEYS_JOIN`].
const ROWS_OF_KEYS_JOIN: &str = "FROM rarray(?1) r CROSS JOIN objects o ON o.key = r.value";
/// [`ROWS_OF_KEYS_JOIN`] without the rows of deleted keys (see [`live!`]).
const ROWS_OF_LIVE_KEYS_JOIN: &str = concat!(
    "FROM rarray(?1) r CROSS JOIN objects o ON o.key = r.value WHERE ",
    live!()
);

/// The join of a list of keys to their live rows: while no key is gone (`any_gone` false, as
/// the reading transaction sees it), the plain join (a probe of `gone` per row costs
/// `has_many` a tenth of its time).
fn rows_of_keys_join(any_gone: bool) -> &'static str {
    if any_gone {
        ROWS_OF_LIVE_KEYS_JOIN
    } else {
        ROWS_OF_KEYS_JOIN
    }
}

/// Whether `gone` has any key, as `conn` sees it.
fn gone_any(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM gone)")?
        .query_row([], |r| r.get(0))
}

/// For each of `keys`, whether `objects` has a live row for it (`any_gone`: see
/// [`rows_of_keys_join`]).
fn known_keys(conn: &Connection, path: &Path, keys: &[Key], any_gone: bool) -> Result<Vec<bool>> {
    let mut found = crate::key::KeySet::default();
    let select = format!("SELECT o.key {}", rows_of_keys_join(any_gone));
    for_rows_of_keys(conn, path, &select, keys, &mut |r| {
        found.insert(key_of(column(r, 0, path)?, path)?);
        Ok(())
    })?;
    Ok(keys.iter().map(|k| found.contains(k)).collect())
}

/// An SQLite error of the index at `path`; damage to the file is told apart.
fn index_err(path: &Path, e: rusqlite::Error) -> Error {
    if is_corruption(&e) {
        return Error::IndexCorrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        };
    }
    Error::Index {
        path: path.to_path_buf(),
        cause: e,
    }
}

fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// The highest pack id ever handed out, as `conn` sees it (0 before the first).
fn read_high_water(conn: &Connection) -> rusqlite::Result<u64> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE name='pack_id_high_water'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()).unwrap_or(0))
}

fn key_of(b: Vec<u8>, path: &Path) -> Result<Key> {
    Key::from_slice(&b).ok_or_else(|| Error::IndexCorrupt {
        path: path.to_path_buf(),
        detail: format!("key of {} bytes, expected {KEY_BYTES}", b.len()),
    })
}

fn nonneg(v: i64, what: &str, path: &Path) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::IndexCorrupt {
        path: path.to_path_buf(),
        detail: format!("negative {what}: {v}"),
    })
}

impl Index {
    /// Opens (creating if absent) the index of the store at `dir`.
    pub(crate) fn open(dir: &Path, container_id: &str) -> Result<Index> {
        let path = dir.join(INDEX_FILE);
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| Error::Index {
            path: path.clone(),
            cause: e,
        })?;
        let file_id = file_id(&path);
        let idx = Index {
            conn,
            path,
            file_id,
            snapshot_since: None,
            snapshot_gone: true,
            staged: None,
            stages_begun: 0,
        };
        idx.setup(container_id).map_err(|e| match e {
            Error::Index { path, cause } if is_corruption(&cause) => Error::IndexCorrupt {
                path,
                detail: cause.to_string(),
            },
            other => other,
        })?;
        Ok(idx)
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        index_err(&self.path, e)
    }

    /// Whether this connection can serve another maintenance run: idle (no transaction or
    /// snapshot left open), and its file is still the one at the index's path.
    pub(crate) fn reusable(&mut self) -> bool {
        self.end_snapshot().is_ok()
            && self.conn.is_autocommit()
            && self.file_id.is_some()
            && file_id(&self.path) == self.file_id
    }

    fn setup(&self, container_id: &str) -> Result<()> {
        // Many processes share this file: wait for writers instead of failing, and make every
        // commit durable (the rows it adds are what makes packed objects reachable).
        self.conn
            .busy_timeout(std::time::Duration::from_secs(60))
            .map_err(|e| self.err(e))?;
        // A new file takes auto_vacuum before its first page is written: from then on `clean`
        // gives free pages back by moving only those pages, instead of rewriting the whole
        // file. On an existing file the pragma is a write transaction (it records the mode in
        // the header), so it is left to `clean`'s rewrite (see `checkpoint_and_vacuum`).
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if pages == 0 {
            self.conn
                .execute_batch(&format!(
                    "PRAGMA page_size={INDEX_PAGE_BYTES}; PRAGMA auto_vacuum=INCREMENTAL"
                ))
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-16000; \
                 PRAGMA temp_store=MEMORY; PRAGMA mmap_size=1073741824;",
            )
            .map_err(|e| self.err(e))?;
        // `rarray(?)`: a list of keys bound as one parameter, for bulk membership queries.
        rusqlite::vtab::array::load_module(&self.conn).map_err(|e| self.err(e))?;
        self.conn.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
        let have: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name='container_id'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        match have {
            None => {
                self.conn
                    .execute(
                        "INSERT OR IGNORE INTO meta(name, value) VALUES ('container_id', ?1), ('schema_version', ?2)",
                        params![container_id, INDEX_SCHEMA_VERSION.to_string()],
                    )
                    .map_err(|e| self.err(e))?;
            }
            Some(id) if id != container_id => {
                return Err(Error::IndexCorrupt {
                    path: self.path.clone(),
                    detail: format!("index belongs to store {id}, this store is {container_id}"),
                })
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Gives this connection a page cache big enough for bulk work (maintenance): inserting a
    /// million rows with a small cache spills and re-reads pages hundreds of thousands of times.
    /// SQLite allocates the cache only as pages are used.
    pub(crate) fn use_bulk_cache(&self) -> Result<()> {
        self.conn
            .execute_batch(&format!("PRAGMA cache_size=-{}", BULK_CACHE_BYTES / 1024))
            .map_err(|e| self.err(e))
    }

    /// Looks `key` up in a recent read snapshot (at most [`SNAPSHOT_AGE_MAX`] old; a commit on
    /// this connection ends it). A hit is safe to use: a key's bytes never change, and a row
    /// whose pack was repacked away since is detected when the pack file is gone. A miss proves
    /// nothing, since write batches in other processes commit too: ask [`Index::get`], or begin
    /// a snapshot first when the whole operation must see one point in time.
    pub(crate) fn get_recent(&mut self, key: &Key) -> Result<Option<IndexRow>> {
        self.renew_aged_snapshot()?;
        self.lookup(key, self.snapshot_gone)
    }

    /// For each of `keys`, whether the index has it, in a recent read snapshot (see
    /// [`Index::get_recent`]): one statement for the whole list instead of one per key.
    pub(crate) fn known_recent(&mut self, keys: &[Key]) -> Result<Vec<bool>> {
        self.renew_aged_snapshot()?;
        known_keys(&self.conn, &self.path, keys, self.snapshot_gone)
    }

    /// For each of `keys`, whether the index has it, in a snapshot begun now: it sees every
    /// commit made before this call.
    pub(crate) fn known_fresh(&mut self, keys: &[Key]) -> Result<Vec<bool>> {
        self.begin_snapshot()?;
        known_keys(&self.conn, &self.path, keys, self.snapshot_gone)
    }

    /// Begins a fresh read snapshot when there is none or the current one is past its age.
    fn renew_aged_snapshot(&mut self) -> Result<()> {
        if self
            .snapshot_since
            .is_none_or(|t| t.elapsed() >= SNAPSHOT_AGE_MAX)
        {
            self.begin_snapshot()?;
        }
        Ok(())
    }

    /// Starts a new read snapshot that sees every commit made before this call; lookups through
    /// [`Index::get_recent`] use it until it ages out.
    pub(crate) fn begin_snapshot(&mut self) -> Result<()> {
        self.end_snapshot()?;
        self.drop_staged();
        self.conn.execute_batch("BEGIN").map_err(|e| self.err(e))?;
        self.snapshot_since = Some(Instant::now());
        // The read transaction starts here, so this holds for every read in it.
        self.snapshot_gone = gone_any(&self.conn).map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends the read snapshot if it is past its age, so an idle handle does not hold back WAL
    /// checkpoints of other processes.
    pub(crate) fn end_stale_snapshot(&mut self) {
        if self
            .snapshot_since
            .is_some_and(|t| t.elapsed() >= SNAPSHOT_AGE_MAX)
        {
            let _ = self.end_snapshot();
        }
    }

    /// Ends the read snapshot, so the next read sees every commit.
    pub(crate) fn end_snapshot(&mut self) -> Result<()> {
        if self.snapshot_since.take().is_some() {
            self.conn.execute_batch("COMMIT").map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Looks `key` up, seeing every committed change.
    pub(crate) fn get(&mut self, key: &Key) -> Result<Option<IndexRow>> {
        self.end_snapshot()?;
        self.lookup(key, true)
    }

    /// The live row of `key`; `any_gone` false promises that no key is gone in the current
    /// read transaction.
    fn lookup(&self, key: &Key, any_gone: bool) -> Result<Option<IndexRow>> {
        let sql = if any_gone {
            concat!(
                "SELECT pack, offset, raw_len, stored_len, flags FROM objects o WHERE o.key = ?1 AND ",
                live!()
            )
        } else {
            "SELECT pack, offset, raw_len, stored_len, flags FROM objects WHERE key = ?1"
        };
        let mut st = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let row = st
            .query_row([&key.as_bytes()[..]], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(pack, offset, raw, stored, flags)| self.row(pack, offset, raw, stored, flags))
            .transpose()
    }

    fn row(
        &self,
        pack: i64,
        offset: i64,
        raw: i64,
        stored: Option<i64>,
        flags: i64,
    ) -> Result<IndexRow> {
        let raw_len = nonneg(raw, "raw_len", &self.path)?;
        Ok(IndexRow {
            pack: nonneg(pack, "pack", &self.path)?,
            offset: nonneg(offset, "offset", &self.path)?,
            raw_len,
            stored_len: match stored {
                Some(s) => nonneg(s, "stored_len", &self.path)?,
                None => raw_len,
            },
            flags: u8::try_from(flags).map_err(|_| Error::IndexCorrupt {
                path: self.path.clone(),
                detail: format!("flags {flags}"),
            })?,
        })
    }

    /// Highest pack id ever handed out (ids are never reused, so a cached handle or a backup copy
    /// of pack N always means the same bytes).
    pub(crate) fn pack_id_high_water(&mut self) -> Result<u64> {
        self.end_snapshot()?;
        read_high_water(&self.conn).map_err(|e| self.err(e))
    }

    /// Begins a fresh snapshot for a scan of every live row and picks its statement: `plain`
    /// while no key is gone (the common case, and a probe of `gone` per row would cost a list
    /// of every key most of its time again), `filtered` otherwise.
    fn begin_scan(&mut self, plain: &'static str, filtered: &'static str) -> Result<&'static str> {
        self.begin_snapshot()?;
        Ok(if self.snapshot_gone { filtered } else { plain })
    }

    /// Whether any key is gone (deleted, its row not yet folded), as of now.
    pub(crate) fn gone_any(&mut self) -> Result<bool> {
        self.end_snapshot()?;
        gone_any(&self.conn).map_err(|e| self.err(e))
    }

    /// Every live row, in key order, fed to `visit`.
    pub(crate) fn for_each(
        &mut self,
        visit: &mut dyn FnMut(Key, IndexRow) -> Result<()>,
    ) -> Result<()> {
        let sql = self.begin_scan(
            "SELECT key, pack, offset, raw_len, stored_len, flags FROM objects ORDER BY key",
            concat!(
                "SELECT key, pack, offset, raw_len, stored_len, flags FROM objects o WHERE ",
                live!(),
                " ORDER BY key"
            ),
        )?;
        let scanned = self.scan_rows(sql, visit);
        self.end_snapshot()?;
        scanned
    }

    /// Feeds every row of `sql` (key, pack, offset, raw_len, stored_len, flags) to `visit`,
    /// each column checked for its type as rusqlite's typed getters would.
    fn scan_rows(
        &self,
        sql: &str,
        visit: &mut dyn FnMut(Key, IndexRow) -> Result<()>,
    ) -> Result<()> {
        let mut rows = RawRows::prepare(&self.conn, sql).map_err(|e| self.err(e))?;
        let wrong_type = |column: &str, rows: &RawRows<'_>, at: i32| Error::IndexCorrupt {
            path: self.path.clone(),
            detail: format!(
                "{column} of type {}, expected an integer",
                rows.type_name(at)
            ),
        };
        while rows.step().map_err(|e| self.err(e))? {
            let key = self.key_of(rows.blob(0).ok_or(rows.type_name(0)))?;
            let int =
                |at: i32, column: &str| rows.int(at).ok_or_else(|| wrong_type(column, &rows, at));
            let stored = if rows.is_null(4) {
                None
            } else {
                Some(int(4, "stored_len")?)
            };
            let row = self.row(
                int(1, "pack")?,
                int(2, "offset")?,
                int(3, "raw_len")?,
                stored,
                int(5, "flags")?,
            )?;
            visit(key, row)?;
        }
        Ok(())
    }

    /// Every live key, in key order, fed to `visit`: [`Index::for_each`] without the positions.
    pub(crate) fn for_each_key(&mut self, visit: &mut dyn FnMut(Key)) -> Result<()> {
        let sql = self.begin_scan(
            "SELECT key FROM objects ORDER BY key",
            concat!("SELECT key FROM objects o WHERE ", live!(), " ORDER BY key"),
        )?;
        let scanned = (|| {
            let mut st = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let key = r.get_ref(0).map_err(|e| self.err(e))?;
                visit(self.key_ref(key)?);
            }
            Ok(())
        })();
        self.end_snapshot()?;
        scanned
    }

    /// SQLite's `data_version` of the index: it moves whenever another connection (of any
    /// process) commits to the index, and only then.
    pub(crate) fn data_version(&mut self) -> Result<i64> {
        self.end_snapshot()?;
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// A key column read in place (no copy into a fresh buffer per row).
    fn key_ref(&self, v: rusqlite::types::ValueRef<'_>) -> Result<Key> {
        match v {
            rusqlite::types::ValueRef::Blob(b) => self.key_of(Ok(b)),
            other => self.key_of(Err(&format!("{:?}", other.data_type()))),
        }
    }

    /// The key in a key column: its blob, or the name of the type it has instead.
    fn key_of(&self, column: std::result::Result<&[u8], &str>) -> Result<Key> {
        let corrupt = |detail: String| Error::IndexCorrupt {
            path: self.path.clone(),
            detail,
        };
        match column {
            Ok(b) => Key::from_slice(b)
                .ok_or_else(|| corrupt(format!("key of {} bytes, expected {KEY_BYTES}", b.len()))),
            Err(type_name) => Err(corrupt(format!("key of type {type_name}, expected a blob"))),
        }
    }

    /// (objects, raw bytes, stored bytes) of all packed objects.
    pub(crate) fn totals(&mut self) -> Result<(u64, u64, u64)> {
        self.end_snapshot()?;
        let (n, raw, stored): (i64, i64, i64) = self
            .conn
            .query_row(
                concat!(
                    "SELECT count(*), coalesce(sum(raw_len),0), coalesce(sum(coalesce(stored_len, raw_len)),0) FROM objects o WHERE ",
                    live!()
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok((
            nonneg(n, "count", &self.path)?,
            nonneg(raw, "sum", &self.path)?,
            nonneg(stored, "sum", &self.path)?,
        ))
    }

    /// Every pack row but the ids reserved by write batches still committing (or crashed).
    pub(crate) fn packs(&mut self) -> Result<Vec<PackRow>> {
        Ok(self
            .all_pack_rows()?
            .into_iter()
            .filter(|p| !p.is_reserved())
            .collect())
    }

    /// Ids reserved by write batches that have not published them (see [`PackRow::reserved`]).
    /// Every pack id the index has a row for, reserved or published, from one read. Asking
    /// [`Index::packs`] and then [`Index::reserved_packs`] can miss a write batch's pack that
    /// turns from reserved to published between the two.
    pub(crate) fn pack_ids(&mut self) -> Result<Vec<u64>> {
        Ok(self.all_pack_rows()?.into_iter().map(|p| p.id).collect())
    }

    /// The published pack rows and the reserved ids, from one read (see [`Index::pack_ids`]).
    pub(crate) fn packs_and_reserved(&mut self) -> Result<(Vec<PackRow>, Vec<u64>)> {
        let (reserved, packs): (Vec<PackRow>, Vec<PackRow>) = self
            .all_pack_rows()?
            .into_iter()
            .partition(|p| p.is_reserved());
        Ok((packs, reserved.into_iter().map(|p| p.id).collect()))
    }

    pub(crate) fn reserved_packs(&mut self) -> Result<Vec<u64>> {
        Ok(self
            .all_pack_rows()?
            .into_iter()
            .filter(|p| p.is_reserved())
            .map(|p| p.id)
            .collect())
    }

    fn all_pack_rows(&mut self) -> Result<Vec<PackRow>> {
        self.end_snapshot()?;
        let mut st = self
            .conn
            .prepare_cached("SELECT id, sealed, end_bytes FROM packs ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let (id, sealed, end) = r.map_err(|e| self.err(e))?;
            out.push(PackRow {
                id: nonneg(id, "pack id", &self.path)?,
                sealed: sealed != 0,
                end_bytes: nonneg(end, "end_bytes", &self.path)?,
            });
        }
        Ok(out)
    }

    /// Live bytes (whole records) per pack, from the object rows and tombstones; packs with
    /// none are absent. The rows of gone keys are summed apart and taken off (one seek per gone
    /// key, where leaving them out of the sum would probe `gone` once per row).
    pub(crate) fn live_bytes_per_pack(&mut self) -> Result<std::collections::HashMap<u64, u64>> {
        self.end_snapshot()?;
        let overhead = crate::format::RECORD_OVERHEAD_BYTES as i64;
        let mut sums: std::collections::HashMap<u64, i64> = std::collections::HashMap::new();
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT pack, sum(coalesce(stored_len, raw_len) + {overhead}) FROM objects GROUP BY pack \
                 UNION ALL SELECT pack, count(*) * ({overhead} + {}) FROM tombstones GROUP BY pack \
                 UNION ALL SELECT o.pack, -sum(coalesce(o.stored_len, o.raw_len) + {overhead}) \
                   FROM gone g CROSS JOIN objects o ON o.key = g.key GROUP BY o.pack",
                crate::format::TOMBSTONE_PAYLOAD_BYTES
            ))
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(|e| self.err(e))?;
        for r in rows {
            let (pack, bytes) = r.map_err(|e| self.err(e))?;
            *sums.entry(nonneg(pack, "pack", &self.path)?).or_insert(0) += bytes;
        }
        let mut out = std::collections::HashMap::new();
        for (pack, bytes) in sums {
            if bytes < 0 {
                return Err(Error::IndexCorrupt {
                    path: self.path.clone(),
                    detail: format!("negative live bytes in pack {pack}: {bytes}"),
                });
            }
            if bytes > 0 {
                out.insert(pack, bytes as u64);
            }
        }
        Ok(out)
    }

    /// Live rows of one pack, in offset order.
    pub(crate) fn rows_in_pack(&mut self, pack: u64) -> Result<Vec<(Key, IndexRow)>> {
        Ok(self.rows_in_pack_and_dead(pack)?.0)
    }

    /// Live rows of one pack, in offset order, and the keys of its dead rows (gone keys), from
    /// one snapshot. Each row is checked against the gone keys in memory: a probe of `gone` per
    /// row would cost a repack of every pack a tenth more.
    pub(crate) fn rows_in_pack_and_dead(&mut self, pack: u64) -> Result<PackRows> {
        let mut by_pack = self.rows_in_packs_and_dead(&[pack])?;
        Ok(by_pack.remove(&pack).unwrap_or_default())
    }

    /// Rows per pack, dead ones included, from one pass over the rows.
    pub(crate) fn rows_per_pack(&mut self) -> Result<std::collections::HashMap<u64, u64>> {
        self.begin_snapshot()?;
        let counted = (|| {
            let mut st = self
                .conn
                .prepare_cached("SELECT pack FROM objects")
                .map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            let mut counts = std::collections::HashMap::new();
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let pack = nonneg(r.get(0).map_err(|e| self.err(e))?, "pack", &self.path)?;
                *counts.entry(pack).or_insert(0u64) += 1;
            }
            Ok(counts)
        })();
        self.end_snapshot()?;
        counted
    }

    /// [`Index::rows_in_pack_and_dead`] of several packs, from one pass over the rows: with no
    /// index by pack, finding one pack's rows reads every row, so a repack asks once for all
    /// the packs of one commit instead of once per pack. Every pack asked for is in the map.
    pub(crate) fn rows_in_packs_and_dead(
        &mut self,
        packs: &[u64],
    ) -> Result<std::collections::HashMap<u64, PackRows>> {
        self.begin_snapshot()?;
        let scanned = self.scan_packs(packs);
        self.end_snapshot()?;
        scanned
    }

    /// [`Index::rows_in_packs_and_dead`] inside the snapshot it began.
    fn scan_packs(&self, packs: &[u64]) -> Result<std::collections::HashMap<u64, PackRows>> {
        let mut gone = crate::key::KeySet::default();
        if self.snapshot_gone {
            let mut st = self
                .conn
                .prepare_cached("SELECT key FROM gone")
                .map_err(|e| self.err(e))?;
            let mut rows = st.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                gone.insert(self.key_ref(r.get_ref(0).map_err(|e| self.err(e))?)?);
            }
        }
        // Found through a sorted list of the few pack ids rather than a hash map: hashing the
        // pack of every row was most of what this loop did besides stepping SQLite.
        let mut ids: Vec<u64> = packs.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut found: Vec<PackRows> = ids.iter().map(|_| PackRows::default()).collect();
        // One pack is a filter SQLite applies as it walks the rows; several are looked up here.
        let (sql, one) = match packs {
            [one] => (
                "SELECT key, pack, offset, raw_len, stored_len, flags FROM objects WHERE pack = ?1",
                Some(*one as i64),
            ),
            _ => (
                "SELECT key, pack, offset, raw_len, stored_len, flags FROM objects",
                None,
            ),
        };
        let mut st = self.conn.prepare_cached(sql).map_err(|e| self.err(e))?;
        let mut rows = match one {
            Some(pack) => st.query([pack]),
            None => st.query([]),
        }
        .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let pack: i64 = r.get(1).map_err(|e| self.err(e))?;
            let Some((out, dead)) = u64::try_from(pack)
                .ok()
                .and_then(|p| ids.binary_search(&p).ok())
                .and_then(|slot| found.get_mut(slot))
            else {
                continue;
            };
            let key = self.key_ref(r.get_ref(0).map_err(|e| self.err(e))?)?;
            if gone.contains(&key) {
                dead.push(key);
                continue;
            }
            let row = self.row(
                r.get(1).map_err(|e| self.err(e))?,
                r.get(2).map_err(|e| self.err(e))?,
                r.get(3).map_err(|e| self.err(e))?,
                r.get(4).map_err(|e| self.err(e))?,
                r.get(5).map_err(|e| self.err(e))?,
            )?;
            out.push((key, row));
        }
        // A pack has one record per offset: the unstable sort orders them the same way, and
        // moves less memory.
        for (out, _) in &mut found {
            out.sort_unstable_by_key(|(_, r)| r.offset);
        }
        Ok(ids.into_iter().zip(found).collect())
    }

    pub(crate) fn tombstones(&mut self) -> Result<Vec<TombstoneRow>> {
        self.end_snapshot()?;
        let mut st = self
            .conn
            .prepare("SELECT key, pack, offset, before_pack, before_offset FROM tombstones ORDER BY pack, offset")
            .map_err(|e| self.err(e))?;
        let mut rows = st.query([]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let key = key_of(r.get(0).map_err(|e| self.err(e))?, &self.path)?;
            let g = |i: usize| -> Result<u64> {
                nonneg(
                    r.get::<_, i64>(i).map_err(|e| self.err(e))?,
                    "position",
                    &self.path,
                )
            };
            out.push(TombstoneRow {
                key,
                at: Position {
                    pack: g(1)?,
                    offset: g(2)?,
                },
                before: Position {
                    pack: g(3)?,
                    offset: g(4)?,
                },
            });
        }
        Ok(out)
    }

    pub(crate) fn begin(&mut self) -> Result<IndexTx<'_>> {
        self.end_snapshot()?;
        self.drop_staged();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| Error::Index {
                path: self.path.clone(),
                cause: e,
            })?;
        Ok(IndexTx {
            tx: TxHandle::Owned(tx),
            path: self.path.clone(),
        })
    }

    /// Does `write` (rows, say: [`IndexTx::write_rows`]) in this connection's staged
    /// transaction, begun here if none is open, and leaves it open: what it wrote is neither
    /// visible to others nor durable until [`Index::continue_staged`] commits it. Lets a
    /// caller do the index work of a commit while it still waits on other work (a repack, on
    /// its writes), holding the index's write lock meanwhile. Anything else that needs a
    /// transaction of its own on this connection ([`Index::begin`], a read snapshot, a
    /// checkpoint) rolls the staged one back first: its caller learns so from
    /// [`Index::staged`], and writes again. Returns the number of the staged transaction.
    pub(crate) fn stage(&mut self, write: impl FnOnce(&IndexTx<'_>) -> Result<()>) -> Result<u64> {
        self.end_snapshot()?;
        let stage = match self.staged {
            Some(n) => n,
            None => {
                self.conn
                    .execute_batch("BEGIN IMMEDIATE")
                    .map_err(|e| self.err(e))?;
                self.stages_begun += 1;
                self.staged = Some(self.stages_begun);
                self.stages_begun
            }
        };
        let tx = self.staged_tx();
        // On an error the transaction is dropped here, which rolls it back.
        write(&tx)?;
        if let TxHandle::Staged(mut staged) = tx.tx {
            staged.kept = true;
        }
        Ok(stage)
    }

    /// The open staged transaction as an [`IndexTx`] (rolled back if dropped uncommitted).
    fn staged_tx(&mut self) -> IndexTx<'_> {
        IndexTx {
            tx: TxHandle::Staged(StagedTx {
                conn: &self.conn,
                staged: &mut self.staged,
                kept: false,
            }),
            path: self.path.clone(),
        }
    }

    /// The number of the staged transaction open on this connection, if one is.
    pub(crate) fn staged(&self) -> Option<u64> {
        self.staged
    }

    /// The staged transaction as an [`IndexTx`], to add to and commit; a new one if none is
    /// open (see [`Index::stage`]).
    pub(crate) fn continue_staged(&mut self) -> Result<IndexTx<'_>> {
        if self.staged.is_none() {
            return self.begin();
        }
        Ok(self.staged_tx())
    }

    /// Rolls the staged transaction back, if one is open.
    pub(crate) fn drop_staged(&mut self) {
        if self.staged.take().is_some() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Copies the WAL into the file and cuts the WAL file (unless readers hold it); with
    /// `vacuum`, also gives free pages back to the file system, and rewrites the file when its
    /// pages are sparse.
    pub(crate) fn checkpoint_and_vacuum(&mut self, vacuum: bool) -> Result<Compaction> {
        self.end_snapshot()?;
        self.drop_staged();
        let mut done = Compaction::default();
        if vacuum {
            let (free, total, page_bytes, auto_vacuum): (i64, i64, i64, i64) = self
                .conn
                .query_row(
                    "SELECT freelist_count, page_count, page_size, auto_vacuum \
                     FROM pragma_freelist_count, pragma_page_count, pragma_page_size, pragma_auto_vacuum",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(|e| self.err(e))?;
            // Dead rows count too: they take room until folded (clean folds them first).
            let rows = i64::try_from(self.row_count()?).unwrap_or(i64::MAX);
            let incremental = auto_vacuum == AUTO_VACUUM_INCREMENTAL;
            // Rewriting the whole file pays when random-order inserts left pages half full (a
            // compact index is ~50 B/object). A file made before stores set auto_vacuum is
            // rewritten once, which turns it on: from then on its free pages go back cheaply.
            let used_bytes = (total - free) * page_bytes;
            let sparse = rows > 1000 && used_bytes > rows * VACUUM_BYTES_PER_OBJECT_MAX;
            let rewrite = sparse || !incremental;
            // Moving the pages at the end of the file into the free ones and cutting the file
            // there is work in proportion to the free pages, not to the index.
            let give_back = incremental && free > 0;
            if rewrite || give_back {
                // Either changes no row, only where rows sit in the file: its commit needs no
                // fsync of its own. A crash before the checkpoint below leaves the same rows,
                // not yet compacted; the checkpoint syncs the WAL before copying it into the file.
                self.conn
                    .execute_batch("PRAGMA synchronous=NORMAL")
                    .map_err(|e| self.err(e))?;
                let compacted = if rewrite {
                    // An older file takes the mode with this rewrite.
                    self.conn
                        .execute_batch("PRAGMA auto_vacuum=INCREMENTAL; VACUUM")
                } else {
                    // The pragma frees one page per row it returns: step it to the end.
                    self.conn
                        .prepare("PRAGMA incremental_vacuum")
                        .and_then(|mut st| st.query([])?.mapped(|_| Ok(())).collect())
                };
                self.conn
                    .execute_batch("PRAGMA synchronous=FULL")
                    .map_err(|e| self.err(e))?;
                compacted.map_err(|e| self.err(e))?;
                let pages: i64 = self
                    .conn
                    .query_row("PRAGMA page_count", [], |r| r.get(0))
                    .map_err(|e| self.err(e))?;
                done = Compaction {
                    rewritten: rewrite,
                    pages_freed: u64::try_from(total - pages).unwrap_or(0),
                };
            }
        }
        // Never wait on readers without vacuum: a steady reader would stall maintenance.
        // Compaction waits a moment for them at most.
        self.checkpoint_truncate(if vacuum {
            Duration::from_secs(1)
        } else {
            Duration::ZERO
        })?;
        Ok(done)
    }

    /// Copies the WAL into the file and cuts the WAL file to nothing, waiting at most `wait`
    /// for readers in the way; with some still there, copies what it can (TRUNCATE does what
    /// PASSIVE does, and reports readers in the way as busy instead of failing).
    fn checkpoint_truncate(&mut self, wait: Duration) -> Result<()> {
        self.conn.busy_timeout(wait).map_err(|e| self.err(e))?;
        let truncated = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        self.conn
            .busy_timeout(Duration::from_secs(60))
            .map_err(|e| self.err(e))?;
        if truncated.is_err() {
            self.conn
                .execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// An upper bound on the rows in `objects`, from the size of the index file alone (no page
    /// is read): no row takes fewer than [`OBJECT_ROW_BYTES_MIN`] bytes of it.
    pub(crate) fn rows_at_most(&mut self) -> Result<u64> {
        let bytes: i64 = self
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(nonneg(bytes, "index size", &self.path)? / OBJECT_ROW_BYTES_MIN)
    }

    /// Rows in `objects`, dead ones too (counted from the pages, without decoding a row).
    pub(crate) fn row_count(&mut self) -> Result<u64> {
        self.end_snapshot()?;
        let rows: i64 = self
            .conn
            .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        nonneg(rows, "row count", &self.path)
    }

    /// `PRAGMA quick_check`: the first problems SQLite itself finds, empty when fine.
    pub(crate) fn quick_check(&mut self) -> Result<Vec<String>> {
        self.end_snapshot()?;
        let mut st = self
            .conn
            .prepare("PRAGMA quick_check(20)")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for r in rows {
            let line = r.map_err(|e| self.err(e))?;
            if line != "ok" {
                out.push(line);
            }
        }
        Ok(out)
    }

    /// Writes a consistent copy of the index to `dest` (a new file).
    pub(crate) fn snapshot_into(&mut self, dest: &Path) -> Result<()> {
        self.end_snapshot()?;
        self.conn
            .execute("VACUUM INTO ?1", [dest.to_string_lossy().as_ref()])
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// One index transaction; dropped without `commit` it rolls back.
pub(crate) struct IndexTx<'a> {
    tx: TxHandle<'a>,
    path: PathBuf,
}

/// A transaction begun for one [`IndexTx`], or the connection's staged one (see
/// [`Index::stage`]).
enum TxHandle<'a> {
    Owned(rusqlite::Transaction<'a>),
    Staged(StagedTx<'a>),
}

impl std::ops::Deref for TxHandle<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            TxHandle::Owned(tx) => tx,
            TxHandle::Staged(s) => s.conn,
        }
    }
}

/// The staged transaction in use: rolled back when dropped, unless kept open or committed.
struct StagedTx<'a> {
    conn: &'a Connection,
    staged: &'a mut Option<u64>,
    kept: bool,
}

impl Drop for StagedTx<'_> {
    fn drop(&mut self) {
        if !self.kept {
            *self.staged = None;
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl IndexTx<'_> {
    fn err(&self, e: rusqlite::Error) -> Error {
        Error::Index {
            path: self.path.clone(),
            cause: e,
        }
    }

    /// Writes many rows with one prepared statement: looking the statement up in the cache
    /// once per row cost more than some of the inserts.
    pub(crate) fn write_rows(&self, how: RowWrite, rows: &[(Key, IndexRow)]) -> Result<()> {
        if how == RowWrite::New {
            self.revive(rows)?;
        }
        let insert = match how {
            RowWrite::Replace => "INSERT OR REPLACE",
            RowWrite::New => "INSERT OR IGNORE",
        };
        insert_grouped(
            &self.tx,
            &format!("{insert} INTO objects(key, pack, offset, raw_len, stored_len, flags)"),
            6,
            rows,
            &|st, first, (key, row)| {
                // The stored length is NULL when equal to the raw length: smaller rows.
                let stored = (row.stored_len != row.raw_len).then_some(row.stored_len as i64);
                st.raw_bind_parameter(first, &key.as_bytes()[..])?;
                st.raw_bind_parameter(first + 1, row.pack as i64)?;
                st.raw_bind_parameter(first + 2, row.offset as i64)?;
                st.raw_bind_parameter(first + 3, row.raw_len as i64)?;
                st.raw_bind_parameter(first + 4, stored)?;
                st.raw_bind_parameter(first + 5, row.flags as i64)
            },
        )
        .map_err(|e| self.err(e))
    }

    /// Makes room for new rows of deleted keys: their dead rows go, and the keys leave `gone`
    /// (an `INSERT OR IGNORE` would keep the dead row). Moves never need this: they only move
    /// live rows.
    fn revive(&self, rows: &[(Key, IndexRow)]) -> Result<()> {
        if !self.any_gone()? {
            return Ok(());
        }
        let keys: Vec<Key> = rows.iter().map(|(k, _)| *k).collect();
        for chunk in keys.chunks(KNOWN_KEYS_PER_QUERY) {
            let list = key_array(chunk);
            self.tx
                .execute(
                    "DELETE FROM objects WHERE key IN \
                     (SELECT g.key FROM rarray(?1) r CROSS JOIN gone g ON g.key = r.value)",
                    [list.clone()],
                )
                .map_err(|e| self.err(e))?;
            self.tx
                .execute("DELETE FROM gone WHERE key IN rarray(?1)", [list])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Whether pack `id` is still only reserved (see [`PackRow::reserved`]).
    pub(crate) fn is_reserved(&self, id: u64) -> Result<bool> {
        let row: Option<(i64, i64)> = self
            .tx
            .query_row(
                "SELECT sealed, end_bytes FROM packs WHERE id = ?1",
                [id as i64],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(row.is_some_and(|(sealed, end)| {
            sealed != 0 && end == crate::format::PACK_HEADER_BYTES as i64
        }))
    }

    /// For each of `keys`, whether the index has a row for it (as this transaction sees it).
    pub(crate) fn known(&self, keys: &[Key]) -> Result<Vec<bool>> {
        known_keys(&self.tx, &self.path, keys, self.any_gone()?)
    }

    /// Whether any key is gone, as this transaction sees it.
    fn any_gone(&self) -> Result<bool> {
        gone_any(&self.tx).map_err(|e| self.err(e))
    }

    /// [`Index::pack_id_high_water`] inside this transaction.
    pub(crate) fn pack_id_high_water(&self) -> Result<u64> {
        read_high_water(&self.tx).map_err(|e| self.err(e))
    }

    /// Removes the rows of `keys` and returns where each removed row pointed (keys without a
    /// row are absent from the map). First one statement looks every key up (see
    /// [`ROWS_OF_KEYS_JOIN`]), then one prepared statement removes the rows in key order, so
    /// consecutive seeks share cached B-tree pages: about twice as fast as one
    /// `DELETE .. IN rarray(..)`, which first copies the list into a temporary index, or as
    /// the same deletes in random order. `DELETE .. RETURNING` per key, one seek instead of
    /// two, took longer still: SQLite runs each such statement through a temporary table
    /// (measured on 4000 of 40,000 rows).
    pub(crate) fn take_rows(&self, keys: &[Key]) -> Result<crate::key::KeyMap<Position>> {
        let taken = self.live_positions(keys)?;
        let mut sorted: Vec<Key> = taken.keys().copied().collect();
        sorted.sort_unstable();
        let mut st = self
            .tx
            .prepare_cached("DELETE FROM objects WHERE key = ?1")
            .map_err(|e| self.err(e))?;
        for key in &sorted {
            st.execute([&key.as_bytes()[..]]).map_err(|e| self.err(e))?;
        }
        Ok(taken)
    }

    /// Marks `keys` deleted and returns where each live row pointed (keys without a live row
    /// are absent from the map), like [`IndexTx::take_rows`] but without touching `objects`:
    /// the keys go into `gone`, which every read leaves out, and their rows stay until a
    /// repack drops their pack or `clean` folds them. Removing 10 % of the rows in place
    /// dirties nearly every page of `objects`, and the commit writes them all (2 MB for 4000 of
    /// 40,000 rows); the keys alone, sorted, are a few pages.
    pub(crate) fn mark_gone(&self, keys: &[Key]) -> Result<crate::key::KeyMap<Position>> {
        let taken = self.live_positions(keys)?;
        let mut gone: Vec<Key> = taken.keys().copied().collect();
        gone.sort_unstable();
        // `OR IGNORE`: a statement that may abort midway makes SQLite keep a journal of every
        // page it changes, to undo just that statement; these keys are live, so none is there.
        insert_grouped(
            &self.tx,
            "INSERT OR IGNORE INTO gone(key)",
            1,
            &gone,
            &|st, first, key| st.raw_bind_parameter(first, &key.as_bytes()[..]),
        )
        .map_err(|e| self.err(e))?;
        Ok(taken)
    }

    /// Where the live rows of `keys` point.
    fn live_positions(&self, keys: &[Key]) -> Result<crate::key::KeyMap<Position>> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let path = &self.path;
        let mut taken =
            crate::key::KeyMap::with_capacity_and_hasher(sorted.len(), Default::default());
        let join = rows_of_keys_join(self.any_gone()?);
        let select = format!("SELECT o.key, o.pack, o.offset {join}");
        for_rows_of_keys(&self.tx, path, &select, &sorted, &mut |r| {
            let at = Position {
                pack: nonneg(column(r, 1, path)?, "pack", path)?,
                offset: nonneg(column(r, 2, path)?, "offset", path)?,
            };
            taken.insert(key_of(column(r, 0, path)?, path)?, at);
            Ok(())
        })?;
        Ok(taken)
    }

    /// Removes the rows of every gone key and empties `gone`: the deletes [`IndexTx::mark_gone`]
    /// deferred. Returns how many rows went.
    pub(crate) fn fold_gone(&self) -> Result<u64> {
        let removed = self
            .tx
            .execute(
                "DELETE FROM objects WHERE key IN (SELECT key FROM gone)",
                [],
            )
            .map_err(|e| self.err(e))?;
        self.tx
            .execute("DELETE FROM gone", [])
            .map_err(|e| self.err(e))?;
        Ok(removed as u64)
    }

    pub(crate) fn put_pack(&self, p: &PackRow) -> Result<()> {
        let mut st = self
            .tx
            .prepare_cached(
                "INSERT OR REPLACE INTO packs(id, sealed, end_bytes) VALUES (?1, ?2, ?3)",
            )
            .map_err(|e| self.err(e))?;
        st.execute(params![p.id as i64, p.sealed as i64, p.end_bytes as i64])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn set_pack_id_high_water(&self, id: u64) -> Result<()> {
        self.tx
            .execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES ('pack_id_high_water', ?1)",
                [id.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Removes the dead rows of `keys` that point into pack `id` (see
    /// [`Index::rows_in_pack_and_dead`]), and their marks, before the pack goes: a write batch
    /// may have brought a key back since, and its new row is in another pack.
    pub(crate) fn drop_dead_rows(&self, id: u64, keys: &[Key]) -> Result<()> {
        let mut row = self
            .tx
            .prepare_cached("DELETE FROM objects WHERE key = ?1 AND pack = ?2")
            .map_err(|e| self.err(e))?;
        let mut mark = self
            .tx
            .prepare_cached("DELETE FROM gone WHERE key = ?1")
            .map_err(|e| self.err(e))?;
        for key in keys {
            row.execute(params![&key.as_bytes()[..], id as i64])
                .map_err(|e| self.err(e))?;
            mark.execute([&key.as_bytes()[..]])
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    pub(crate) fn remove_pack(&self, id: u64) -> Result<()> {
        self.tx
            .execute("DELETE FROM packs WHERE id = ?1", [id as i64])
            .map_err(|e| self.err(e))?;
        self.tx
            .execute("DELETE FROM tombstones WHERE pack = ?1", [id as i64])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn put_tombstones(&self, tombstones: &[TombstoneRow]) -> Result<()> {
        // `OR IGNORE` spares the statement journal (see `mark_gone`): tombstones are rows of
        // records just appended, or of packs just scanned into an emptied index, so no row
        // holds their position.
        insert_grouped(
            &self.tx,
            "INSERT OR IGNORE INTO tombstones(pack, offset, key, before_pack, before_offset)",
            5,
            tombstones,
            &|st, first, t| {
                st.raw_bind_parameter(first, t.at.pack as i64)?;
                st.raw_bind_parameter(first + 1, t.at.offset as i64)?;
                st.raw_bind_parameter(first + 2, &t.key.as_bytes()[..])?;
                st.raw_bind_parameter(first + 3, t.before.pack as i64)?;
                st.raw_bind_parameter(first + 4, t.before.offset as i64)
            },
        )
        .map_err(|e| self.err(e))
    }

    pub(crate) fn clear_all(&self) -> Result<()> {
        self.tx
            .execute_batch(
                "DELETE FROM objects; DELETE FROM gone; DELETE FROM packs; DELETE FROM tombstones;",
            )
            .map_err(|e| self.err(e))
    }

    pub(crate) fn commit(self) -> Result<()> {
        let path = self.path;
        match self.tx {
            TxHandle::Owned(tx) => tx.commit(),
            TxHandle::Staged(mut staged) => staged.conn.execute_batch("COMMIT").map(|()| {
                // Ended: nothing to roll back.
                staged.kept = true;
                *staged.staged = None;
            }),
        }
        .map_err(|e| Error::Index { path, cause: e })
    }
}

/// The rows of one query stepped through SQLite's C interface, for the scans of every row of
/// the index: rusqlite's typed getters ask SQLite for each column's type and then its value,
/// with checks of their own around both, which made reading a row's six columns cost more than
/// stepping to it (40,000 rows: 8.5 ms against 5.5 ms read here, types still checked).
struct RawRows<'c> {
    stmt: std::ptr::NonNull<rusqlite::ffi::sqlite3_stmt>,
    /// The statement belongs to this connection, which must outlive it.
    _conn: std::marker::PhantomData<&'c Connection>,
}

impl<'c> RawRows<'c> {
    fn prepare(conn: &'c Connection, sql: &str) -> rusqlite::Result<RawRows<'c>> {
        use rusqlite::ffi;
        let len = std::os::raw::c_int::try_from(sql.len()).map_err(|_| {
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_TOOBIG), None)
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `handle` is the open connection `conn` owns, alive for 'c; SQLite reads `len`
        // bytes of `sql` (no terminating NUL needed with an explicit length) and writes the
        // statement pointer.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                conn.handle(),
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        match std::ptr::NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(RawRows {
                stmt,
                _conn: std::marker::PhantomData,
            }),
            other => {
                if let Some(stmt) = other {
                    // SAFETY: a statement SQLite returned, finalized once.
                    unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
                }
                // SAFETY: the open connection `conn` owns.
                Err(unsafe { Self::error(conn.handle(), rc) })
            }
        }
    }

    /// The error SQLite reported on connection `db` for `rc`.
    ///
    /// # Safety
    /// `db` must be an open connection.
    unsafe fn error(db: *mut rusqlite::ffi::sqlite3, rc: std::os::raw::c_int) -> rusqlite::Error {
        use rusqlite::ffi;
        // SAFETY: the message is a NUL-terminated string SQLite owns, copied before any other
        // call on the connection.
        let message = unsafe {
            let m = ffi::sqlite3_errmsg(db);
            (!m.is_null()).then(|| std::ffi::CStr::from_ptr(m).to_string_lossy().into_owned())
        };
        rusqlite::Error::SqliteFailure(ffi::Error::new(rc), message)
    }

    /// Moves to the next row: `false` once there are no more.
    fn step(&mut self) -> rusqlite::Result<bool> {
        use rusqlite::ffi;
        // SAFETY: a prepared statement of a live connection.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            // SAFETY: the statement's own connection, open while the statement lives.
            rc => Err(unsafe { Self::error(ffi::sqlite3_db_handle(self.stmt.as_ptr()), rc) }),
        }
    }

    fn column_type(&self, at: i32) -> i32 {
        // SAFETY: called only while the statement is on a row (after `step` said so); a column
        // index out of range gives SQLITE_NULL.
        unsafe { rusqlite::ffi::sqlite3_column_type(self.stmt.as_ptr(), at) }
    }

    fn type_name(&self, at: i32) -> &'static str {
        use rusqlite::ffi;
        match self.column_type(at) {
            ffi::SQLITE_INTEGER => "integer",
            ffi::SQLITE_FLOAT => "real",
            ffi::SQLITE_TEXT => "text",
            ffi::SQLITE_BLOB => "blob",
            _ => "null",
        }
    }

    fn is_null(&self, at: i32) -> bool {
        self.column_type(at) == rusqlite::ffi::SQLITE_NULL
    }

    /// The column's value if it is an integer.
    fn int(&self, at: i32) -> Option<i64> {
        (self.column_type(at) == rusqlite::ffi::SQLITE_INTEGER)
            // SAFETY: as in `column_type`.
            .then(|| unsafe { rusqlite::ffi::sqlite3_column_int64(self.stmt.as_ptr(), at) })
    }

    /// The column's bytes if it is a blob, valid until the next step.
    fn blob(&self, at: i32) -> Option<&[u8]> {
        use rusqlite::ffi;
        if self.column_type(at) != ffi::SQLITE_BLOB {
            return None;
        }
        // SAFETY: as in `column_type`. The pointer is asked for before the length, as SQLite
        // requires, and stays valid until the statement steps or is finalized, which needs
        // `&mut self` or `self`, so not while the slice borrows it.
        unsafe {
            let p = ffi::sqlite3_column_blob(self.stmt.as_ptr(), at).cast::<u8>();
            let n = usize::try_from(ffi::sqlite3_column_bytes(self.stmt.as_ptr(), at)).ok()?;
            if p.is_null() || n == 0 {
                return Some(&[]);
            }
            Some(std::slice::from_raw_parts(p, n))
        }
    }
}

impl Drop for RawRows<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is finalized once, here, while its connection is alive.
        unsafe { rusqlite::ffi::sqlite3_finalize(self.stmt.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(first: u8, n: u8, pack: u64) -> Vec<(Key, IndexRow)> {
        (first..first + n)
            .map(|i| {
                let row = IndexRow {
                    pack,
                    offset: 48 + u64::from(i) * 100,
                    raw_len: 10,
                    stored_len: 10,
                    flags: 0,
                };
                (Key::from_bytes([i; KEY_BYTES]), row)
            })
            .collect()
    }

    /// What another connection sees: the rows committed, and nothing staged.
    fn committed_rows(dir: &Path) -> i64 {
        Connection::open(dir.join(INDEX_FILE))
            .expect("open")
            .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
            .expect("count")
    }

    /// The scan of every row gives back what was written (a stored length equal to the raw one
    /// is kept as NULL), and a column of the wrong type, or a key of the wrong length, is an
    /// `IndexCorrupt` naming it, as rusqlite's typed getters made it before.
    #[test]
    fn the_row_scan_reads_each_row_back_and_names_a_column_of_the_wrong_type() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = Index::open(dir.path(), "store").expect("open");
        let mut written = rows(1, 20, 3);
        written[4].1.stored_len = 7;
        written[5].1.flags = 1;
        let tx = index.begin().expect("begin");
        tx.write_rows(RowWrite::Replace, &written).expect("write");
        tx.commit().expect("commit");
        let mut read = Vec::new();
        index
            .for_each(&mut |k, r| {
                read.push((k, r));
                Ok(())
            })
            .expect("scan");
        assert_eq!(read, written);
        // Closed, the index is checkpointed into its one file, which the cases copy.
        drop(index);

        let cases = [
            (
                "UPDATE objects SET pack = 'three' WHERE key = ?1",
                "pack of type text",
            ),
            (
                "UPDATE objects SET offset = 1.5 WHERE key = ?1",
                "offset of type real",
            ),
            (
                "UPDATE objects SET raw_len = x'00' WHERE key = ?1",
                "raw_len of type blob",
            ),
            (
                "UPDATE objects SET stored_len = 'x' WHERE key = ?1",
                "stored_len of type text",
            ),
            (
                "UPDATE objects SET flags = NULL WHERE key = ?1",
                "flags of type null",
            ),
            (
                "UPDATE objects SET key = x'0102' WHERE key = ?1",
                "key of 2 bytes",
            ),
            (
                "UPDATE objects SET key = 12 WHERE key = ?1",
                "key of type integer",
            ),
        ];
        for (update, want) in cases {
            let copy = tempfile::tempdir().expect("tempdir");
            std::fs::copy(dir.path().join(INDEX_FILE), copy.path().join(INDEX_FILE)).expect("copy");
            let conn = Connection::open(copy.path().join(INDEX_FILE)).expect("open copy");
            // The table's NOT NULL would refuse the NULL: rewrite it without, as damage might.
            conn.execute_batch("PRAGMA writable_schema = ON")
                .expect("schema");
            conn.execute(
                "UPDATE sqlite_schema SET sql = replace(sql, 'flags INTEGER NOT NULL', 'flags INTEGER') WHERE name = 'objects'",
                [],
            )
            .expect("relax");
            drop(conn);
            let conn = Connection::open(copy.path().join(INDEX_FILE)).expect("reopen copy");
            let changed = conn
                .execute(update, [written[7].0.as_bytes().as_slice()])
                .expect(update);
            assert_eq!(changed, 1, "{update}");
            drop(conn);
            let mut damaged = Index::open(copy.path(), "store").expect("open damaged");
            let e = damaged.for_each(&mut |_, _| Ok(())).expect_err(update);
            let Error::IndexCorrupt { detail, .. } = &e else {
                panic!("{update}: {e:?}");
            };
            assert!(detail.starts_with(want), "{update}: {detail}");
        }
    }

    #[test]
    fn staged_rows_commit_with_the_staged_transaction_and_go_when_another_begins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = Index::open(dir.path(), "store").expect("open");
        let first = index
            .stage(|tx| tx.write_rows(RowWrite::Replace, &rows(0, 10, 1)))
            .expect("stage");
        assert_eq!(
            index
                .stage(|tx| tx.write_rows(RowWrite::Replace, &rows(10, 5, 1)))
                .expect("stage"),
            first,
            "a second batch began another staged transaction"
        );
        assert_eq!(index.staged(), Some(first));
        assert_eq!(
            committed_rows(dir.path()),
            0,
            "staged rows seen before the commit"
        );
        let tx = index.continue_staged().expect("continue");
        tx.write_rows(RowWrite::Replace, &rows(15, 1, 1))
            .expect("write");
        tx.commit().expect("commit");
        assert_eq!(index.staged(), None);
        assert_eq!(committed_rows(dir.path()), 16);

        // Staged rows moved to pack 2; a transaction of its own (a new pack's row, say) rolls
        // them back, and the next staging is another transaction.
        let second = index
            .stage(|tx| tx.write_rows(RowWrite::Replace, &rows(0, 16, 2)))
            .expect("stage");
        assert_ne!(second, first);
        index.begin().expect("begin").commit().expect("commit");
        assert_eq!(
            index.staged(),
            None,
            "begin left the staged transaction open"
        );
        let row = index.get(&Key::from_bytes([3; KEY_BYTES])).expect("get");
        assert_eq!(row.map(|r| r.pack), Some(1), "rolled-back move is visible");
        let third = index
            .stage(|tx| tx.write_rows(RowWrite::Replace, &rows(0, 1, 2)))
            .expect("stage");
        assert_ne!(third, second);
        // A read snapshot rolls it back too, and so does the end of a maintenance session.
        index
            .get_recent(&Key::from_bytes([0; KEY_BYTES]))
            .expect("read");
        assert_eq!(
            index.staged(),
            None,
            "a read snapshot began inside the staged writes"
        );
        index
            .stage(|tx| tx.write_rows(RowWrite::Replace, &rows(0, 1, 2)))
            .expect("stage");
        index.drop_staged();
        assert!(index.reusable(), "a rolled-back connection is not reusable");
        let row = index.get(&Key::from_bytes([0; KEY_BYTES])).expect("get");
        assert_eq!(row.map(|r| r.pack), Some(1));
    }
}
