//! The `Store` handle: open/init, loose writes, and every read path.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rayon::slice::ParallelSliceMut;

use crate::config::{self, InitOptions, StoreConfig};
use crate::direct_read::SpanReads;
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::{Index, IndexRow, INDEX_FILE};
use crate::key::Key;
use crate::loose::{self, SandboxFile, LOOSE_DIR, SANDBOX_DIR};
use crate::pack::{self, PACKS_DIR};
use crate::reader::ObjectReader;

/// Folder of the maintenance lock.
pub const LOCKS_DIR: &str = "locks";
pub(crate) const MAINTENANCE_LOCK: &str = "maintenance.lock";

/// Request sizes above which bulk calls may scan the whole index instead of looking keys up one
/// by one.
const BULK_SCAN_KEYS_MIN: usize = 4096;
/// Index rows per requested key up to which `read_many` scans the whole index: a scan costs
/// every row, lookups cost every key several times more. In an index of a million rows (its
/// pages cached), 4,096 keys took 163 ms by scan and 45 ms by lookups, 65,536 keys 180 and
/// 106 ms, 262,144 keys 228 and 257 ms. The rows are bounded from above by the file's size
/// (`Index::rows_at_most`: 1.4x the true count for a compact index of ~55 B per row, up to
/// 2.7x for pages left half empty), so with 8 the scan starts at a sixth to a third of the
/// rows.
const BULK_SCAN_ROWS_PER_KEY_MAX: u64 = 8;
/// Largest span of a pack read in one call by bulk reads. Small enough that a span read on one
/// core is still in cache when the caller visits it on the other (measured: 512 KiB beat 2 and
/// 8 MiB; much smaller spans pay more thread hand-offs).
const BULK_READ_SPAN_BYTES: u64 = 512 << 10;
/// Loose prefix length from which `list` reads loose/ and the index at once (16^2 = 256 prefix
/// folders take about a millisecond to read, more than starting a thread costs).
const LIST_OVERLAP_PREFIX_LEN_MIN: u8 = 2;
/// Items from which `read_many` and an index commit sort on every core: `read_many`'s sorts of
/// a million keys and rows were a fifth of its time before any byte was read, and a commit of a
/// million rows sorted them on one thread while the other core was idle.
pub(crate) const PARALLEL_SORT_ITEMS_MIN: usize = 1 << 16;
/// Bytes a `read_many` must read before a second thread pays for its start.
const READ_MANY_PIPELINE_BYTES_MIN: u64 = 2 * BULK_READ_SPAN_BYTES;
/// Span buffers of a pipelined `read_many`: one being filled, one queued, one being visited.
const READ_MANY_BUFFERS_MAX: usize = 3;
/// Objects up to this size are verified whole when a range of them is read.
const RANGE_VERIFIED_WHOLE_BYTES_MAX: u64 = 4 << 20;
/// Open pack handles (and pack maps) kept per store handle.
const PACK_HANDLES_MAX: usize = 256;

/// Open pack handles or maps of one store handle, at most [`PACK_HANDLES_MAX`]: past that the
/// one used longest ago goes (a store of many packs read at random then reopens the packs it
/// reads least, not every pack).
struct PackCache<T> {
    entries: HashMap<u64, (T, u64)>,
    /// Uses so far; an entry's stamp is the count at its last use.
    uses: u64,
}

impl<T> Default for PackCache<T> {
    fn default() -> Self {
        PackCache {
            entries: HashMap::new(),
            uses: 0,
        }
    }
}

impl<T: Clone> PackCache<T> {
    fn get(&mut self, id: u64) -> Option<T> {
        self.uses += 1;
        let uses = self.uses;
        self.entries.get_mut(&id).map(|(v, stamp)| {
            *stamp = uses;
            v.clone()
        })
    }

    fn insert(&mut self, id: u64, value: T) {
        if self.entries.len() >= PACK_HANDLES_MAX && !self.entries.contains_key(&id) {
            // A scan of at most PACK_HANDLES_MAX stamps, on a miss only: cheaper than the open
            // (or map) the miss costs anyway.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, stamp))| *stamp)
                .map(|(id, _)| *id)
            {
                self.entries.remove(&oldest);
            }
        }
        self.uses += 1;
        self.entries.insert(id, (value, self.uses));
    }

    fn remove(&mut self, id: u64) {
        self.entries.remove(&id);
    }
}

/// Receives each object of [`Store::read_many`]: its key and its content (or why not).
pub type ReadManyVisitor<'a> = dyn FnMut(Key, Result<&[u8]>) -> Result<()> + 'a;

/// Whether `read_many` of `keys` distinct keys reads every row of an index of at most
/// `rows_at_most` rows rather than looking each key up.
fn scans_index(keys: usize, rows_at_most: u64) -> bool {
    keys >= BULK_SCAN_KEYS_MIN
        && rows_at_most <= (keys as u64).saturating_mul(BULK_SCAN_ROWS_PER_KEY_MAX)
}

/// Where an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Location {
    Loose,
    Packed { pack: u64, offset: u64 },
}

/// What the store knows of an object without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ObjectMeta {
    #[serde(serialize_with = "ser_key")]
    pub key: Key,
    /// Content length in bytes.
    pub size: u64,
    /// Bytes it takes on disk (payload only; record framing excluded).
    pub stored_size: u64,
    pub location: Location,
    pub compressed: bool,
}

pub(crate) fn ser_key<S: serde::Serializer>(k: &Key, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&k.to_hex())
}

/// Counts and sizes of a store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub loose_objects: u64,
    pub loose_bytes: u64,
    pub packed_objects: u64,
    pub packed_raw_bytes: u64,
    pub packed_stored_bytes: u64,
    pub pack_files: u64,
    pub pack_file_bytes: u64,
    pub index_bytes: u64,
    pub index_bytes_per_object: f64,
}

/// A handle on one store folder. Cheap to share between threads (`Send + Sync`); any number of
/// processes may hold one on the same folder.
pub struct Store {
    root: PathBuf,
    config: StoreConfig,
    index: Arc<Mutex<Index>>,
    pack_handles: Mutex<PackCache<Arc<File>>>,
    /// Read-only maps of packs for single reads: a read from a map is a copy, not a syscall.
    pack_maps: Mutex<PackCache<Arc<memmap2::Mmap>>>,
    poisoned: Mutex<Option<String>>,
    /// The index connection of the last maintenance run, kept for the next: opening one
    /// (schema, pragmas, the WAL, whose first sync also syncs the store folder) costs a
    /// fraction of a millisecond, a good share of a small delete or clean.
    pub(crate) spare_maintenance_index: Mutex<Option<Index>>,
}

/// Closes the index's read snapshot once it is idle past its age: a timer, not synchronisation.
/// Exits when the store handle is dropped.
fn spawn_snapshot_closer(index: std::sync::Weak<Mutex<Index>>) {
    let _ = std::thread::Builder::new()
        .name("basin-index-snapshot".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(25));
            let Some(strong) = index.upgrade() else { break };
            if let Ok(mut guard) = strong.try_lock() {
                guard.end_stale_snapshot();
            };
        });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another thread while holding the lock leaves the data usable: every mutation
    // under these locks is a whole-value replace or a cache insert.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Creates a store in `dir` (absent or empty) and opens it.
    pub fn init(dir: &Path, opts: &InitOptions) -> Result<Store> {
        let cfg = StoreConfig::new(opts)?;
        match fs::read_dir(dir) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(Error::NotEmpty {
                        path: dir.to_path_buf(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(dir).at("create folder", dir)?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fsutil::fsync_dir(parent)?;
                }
            }
            Err(e) => return Err(Error::io("read folder", dir, e)),
        }
        for sub in [LOOSE_DIR, PACKS_DIR, SANDBOX_DIR, LOCKS_DIR] {
            config::ensure_dir(&dir.join(sub))?;
        }
        // Every prefix folder up front, made durable once, so no loose write ever pays for a
        // new folder and its parent's fsync.
        if (1..=3).contains(&cfg.loose_prefix_len) {
            let width = cfg.loose_prefix_len as usize;
            for n in 0..16u32.pow(width as u32) {
                config::ensure_dir(&dir.join(LOOSE_DIR).join(format!("{n:0width$x}")))?;
            }
            fsutil::fsync_dir(&dir.join(LOOSE_DIR))?;
        }
        Index::open(dir, &cfg.container_id)?;
        // The config goes last: its presence is what makes the folder a store.
        cfg.write_new(dir)?;
        fsutil::fsync_dir(dir)?;
        Store::open(dir)
    }

    /// Opens an existing store. A missing index is rebuilt from the packs.
    pub fn open(dir: &Path) -> Result<Store> {
        let cfg = StoreConfig::load(dir)?;
        for sub in [LOOSE_DIR, PACKS_DIR, SANDBOX_DIR, LOCKS_DIR] {
            if !dir.join(sub).is_dir() {
                return Err(Error::NotAStore {
                    path: dir.to_path_buf(),
                    reason: format!("missing folder {sub}/"),
                });
            }
        }
        let mut index_missing = !dir.join(INDEX_FILE).exists();
        let index = match Index::open(dir, &cfg.container_id) {
            Ok(index) => index,
            // The index is a cache of the packs: set a broken one aside and rebuild it.
            Err(Error::IndexCorrupt { .. }) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                for suffix in ["", "-wal", "-shm"] {
                    let from = dir.join(format!("{INDEX_FILE}{suffix}"));
                    if from.exists() {
                        let to = dir.join(format!("{INDEX_FILE}{suffix}.broken-{stamp}"));
                        fs::rename(&from, &to).at("set aside broken index", &from)?;
                    }
                }
                index_missing = true;
                Index::open(dir, &cfg.container_id)?
            }
            Err(e) => return Err(e),
        };
        let index = Arc::new(Mutex::new(index));
        spawn_snapshot_closer(Arc::downgrade(&index));
        let store = Store {
            root: dir.to_path_buf(),
            config: cfg,
            index,
            pack_handles: Mutex::new(PackCache::default()),
            pack_maps: Mutex::new(PackCache::default()),
            poisoned: Mutex::new(None),
            spare_maintenance_index: Mutex::new(None),
        };
        if index_missing && !pack::pack_ids_on_disk(dir)?.is_empty() {
            let m = store.maintenance(crate::maint::LockWait::Block)?;
            m.rebuild_index(&crate::progress::NoProgress)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// Reopens this handle's index connection (after the index file was recreated).
    pub(crate) fn reopen_index(&self) -> Result<()> {
        *self.index() = Index::open(&self.root, &self.config.container_id)?;
        Ok(())
    }

    pub(crate) fn check_writable(&self) -> Result<()> {
        match lock(&self.poisoned).as_ref() {
            Some(reason) => Err(Error::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// After a failed fsync the kernel may have dropped the dirty pages: nothing this handle
    /// writes afterwards can be trusted to be durable, so it refuses further writes.
    pub(crate) fn note_failure(&self, e: Error) -> Error {
        if let Error::Io { op, .. } = &e {
            if op.contains("sync") {
                *lock(&self.poisoned) = Some(e.to_string());
            }
        }
        e
    }

    pub(crate) fn loose_path(&self, key: &Key) -> PathBuf {
        loose::loose_path(&self.root, self.config.loose_prefix_len, key)
    }

    // ---- loose writes ----

    /// Stores `content` as a loose object, durable when this returns.
    pub fn put(&self, content: &[u8]) -> Result<Key> {
        self.put_reader(&mut &content[..])
    }

    /// Stores the bytes of `r` as a loose object in constant memory, durable when this returns.
    pub fn put_reader(&self, r: &mut dyn Read) -> Result<Key> {
        self.check_writable()?;
        let sb = SandboxFile::create(&self.root.join(SANDBOX_DIR))?;
        let result = self.put_sandboxed(&sb, r);
        if result.is_err() || sb.path.exists() {
            let _ = fs::remove_file(&sb.path);
        }
        result.map_err(|e| self.note_failure(e))
    }

    fn put_sandboxed(&self, sb: &SandboxFile, r: &mut dyn Read) -> Result<Key> {
        let mut w = std::io::BufWriter::with_capacity(256 << 10, &sb.file);
        let (key, _len) = loose::copy_hashing(r, &mut w, self.config.hash, &sb.path)?;
        std::io::Write::flush(&mut w).at("write", &sb.path)?;
        drop(w);
        // Already packed: the packed copy is durable (its rows were committed after fdatasync).
        if self.index().get(&key)?.is_some() {
            return Ok(key);
        }
        fsutil::datasync(&sb.file, &sb.path)?;
        let dest = self.loose_path(&key);
        let dir = loose::install(&sb.path, &dest, true)?;
        fsutil::fsync_dir(&dir)?;
        Ok(key)
    }

    // ---- reads ----

    fn pack_handle(&self, id: u64) -> Result<Option<Arc<File>>> {
        if let Some(f) = lock(&self.pack_handles).get(id) {
            return Ok(Some(f));
        }
        let path = pack::pack_path(&self.root, id);
        let f = match File::open(&path) {
            Ok(f) => Arc::new(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open pack", path, e)),
        };
        lock(&self.pack_handles).insert(id, f.clone());
        Ok(Some(f))
    }

    pub(crate) fn forget_pack_handle(&self, id: u64) {
        lock(&self.pack_handles).remove(id);
        lock(&self.pack_maps).remove(id);
    }

    /// A map of pack `id` covering at least its first `end` bytes; `None` when the pack is gone
    /// or shorter than `end` (the caller then reads with `pread`, which reports either exactly).
    ///
    /// Mapping is safe because a pack's committed bytes never change or shrink while its file
    /// exists: packs are append-only, `clean` truncates only an uncommitted tail past every row,
    /// and a repack writes a new file under a new id (an unlinked file stays mapped). Only
    /// damage from outside the store, truncating a pack while it is mapped, could fault a read.
    fn pack_map(&self, id: u64, end: u64) -> Result<Option<Arc<memmap2::Mmap>>> {
        if let Some(m) = lock(&self.pack_maps).get(id) {
            if m.len() as u64 >= end {
                return Ok(Some(m));
            }
        }
        // Not mapped yet, or the pack grew past the map: map it again at its current length.
        let Some(file) = self.pack_handle(id)? else {
            return Ok(None);
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat pack", pack::pack_path(&self.root, id), e))?
            .len();
        if len < end {
            return Ok(None);
        }
        // SAFETY: see above; the map is read-only and every read through it is bounds-checked
        // and checksummed before its bytes are trusted.
        let map = unsafe { memmap2::Mmap::map(&*file) }
            .map_err(|e| Error::io("map pack", pack::pack_path(&self.root, id), e))?;
        let map = Arc::new(map);
        lock(&self.pack_maps).insert(id, map.clone());
        Ok(Some(map))
    }

    /// Reads a packed object at `row`. `Ok(None)` when the pack is gone (repacked away): the
    /// caller re-reads the index.
    fn read_packed(&self, key: &Key, row: &IndexRow) -> Result<Option<Vec<u8>>> {
        let end = row
            .offset
            .saturating_add(crate::format::RECORD_OVERHEAD_BYTES)
            .saturating_add(row.stored_len);
        if let Some(map) = self.pack_map(row.pack, end)? {
            match pack::object_from_record(&map[row.offset as usize..end as usize], key, row) {
                Ok(v) => return Ok(Some(v)),
                // Read it again through a fresh handle below: the error must come from the file.
                Err(e) if e.is_corruption() => self.forget_pack_handle(row.pack),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.pack_handle(row.pack)? else {
            return Ok(None);
        };
        match pack::read_object(&file, key, row) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_corruption() => {
                // A cached handle may be for an older file of the same id; retry once fresh.
                self.forget_pack_handle(row.pack);
                let Some(file) = self.pack_handle(row.pack)? else {
                    return Ok(None);
                };
                pack::read_object(&file, key, row).map(Some)
            }
            Err(e) => Err(e),
        }
    }

    /// Finds an object's index row or learns that it is loose, following the one protocol that
    /// is exact while a packer works in another process: look in the index (a recent snapshot is
    /// enough), then in loose/, then in the index again with a fresh snapshot. A packer deletes a
    /// loose copy only after committing its row, so an object missed by the first two looks is
    /// seen by the third.
    fn locate(
        &self,
        key: &Key,
        loose_probe: &mut dyn FnMut(&Path) -> Result<bool>,
    ) -> Result<Located> {
        if let Some(row) = self.index().get_recent(key)? {
            return Ok(Located::Packed(row));
        }
        let path = self.loose_path(key);
        if loose_probe(&path)? {
            return Ok(Located::Loose(path));
        }
        let mut index = self.index();
        index.begin_snapshot()?;
        Ok(match index.get_recent(key)? {
            Some(row) => Located::Packed(row),
            None => Located::Missing,
        })
    }

    /// The content of an object, verified (record checksums for packed objects, the hash for
    /// loose ones). Never returns wrong bytes.
    pub fn get(&self, key: &Key) -> Result<Vec<u8>> {
        let mut loose_bytes = None;
        let hash = self.config.hash;
        for _ in 0..3 {
            let located = self.locate(key, &mut |path| {
                loose_bytes = loose::read_loose(path, key, hash)?;
                Ok(loose_bytes.is_some())
            })?;
            match located {
                Located::Loose(_) => {
                    return loose_bytes.take().ok_or(Error::NotFound { key: *key })
                }
                Located::Missing => return Err(Error::NotFound { key: *key }),
                Located::Packed(row) => {
                    if let Some(v) = self.read_packed(key, &row)? {
                        return Ok(v);
                    }
                    // The pack was repacked away since our snapshot: look again, afresh.
                    self.index().end_snapshot()?;
                }
            }
        }
        Err(Error::NotFound { key: *key })
    }

    /// A `Read + Seek` stream over an object's content, without materialising it anywhere.
    pub fn open_object(&self, key: &Key) -> Result<ObjectReader> {
        for _ in 0..3 {
            let mut opened = None;
            let located = self.locate(key, &mut |path| match loose::open_noatime(path) {
                Ok(f) => {
                    opened = Some(f);
                    Ok(true)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(Error::io("open", path, e)),
            })?;
            match located {
                Located::Loose(path) => {
                    let f = opened.take().ok_or(Error::NotFound { key: *key })?;
                    return ObjectReader::loose(f, path, *key, self.config.hash);
                }
                Located::Missing => return Err(Error::NotFound { key: *key }),
                Located::Packed(row) => match self.pack_handle(row.pack)? {
                    Some(file) => return ObjectReader::packed(file, *key, row),
                    None => self.index().end_snapshot()?,
                },
            }
        }
        Err(Error::NotFound { key: *key })
    }

    /// `len` bytes of an object from `offset` (fewer at the end of the object).
    pub fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        // Small objects are read and verified whole: a range of them is then checked too.
        if let Some(meta) = self.meta(key)? {
            if meta.size <= RANGE_VERIFIED_WHOLE_BYTES_MAX {
                let all = self.get(key)?;
                if offset > meta.size {
                    return Err(Error::OutOfRange {
                        key: *key,
                        offset,
                        len,
                        size: meta.size,
                    });
                }
                let end = offset.saturating_add(len).min(all.len() as u64);
                return Ok(all[offset as usize..end as usize].to_vec());
            }
        }
        let mut r = self.open_object(key)?;
        let size = r.size();
        if offset > size {
            return Err(Error::OutOfRange {
                key: *key,
                offset,
                len,
                size,
            });
        }
        r.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek in object", key.to_hex(), e))?;
        let want = len.min(size - offset) as usize;
        let mut out = vec![0u8; want];
        r.read_exact(&mut out).map_err(|e| r.explain(e))?;
        Ok(out)
    }

    /// What is known of an object, opening no pack file.
    pub fn meta(&self, key: &Key) -> Result<Option<ObjectMeta>> {
        let mut size = 0;
        let located = self.locate(key, &mut |path| match fs::metadata(path) {
            Ok(m) => {
                size = m.len();
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("stat", path, e)),
        })?;
        Ok(match located {
            Located::Packed(row) => Some(meta_of(key, &row)),
            Located::Loose(_) => Some(ObjectMeta {
                key: *key,
                size,
                stored_size: size,
                location: Location::Loose,
                compressed: false,
            }),
            Located::Missing => None,
        })
    }

    /// [`Store::meta`] for many keys, in input order.
    pub fn meta_many(&self, keys: &[Key]) -> Result<Vec<Option<ObjectMeta>>> {
        keys.iter().map(|k| self.meta(k)).collect()
    }

    pub fn has(&self, key: &Key) -> Result<bool> {
        let located = self.locate(key, &mut |path| Ok(path.exists()))?;
        Ok(!matches!(located, Located::Missing))
    }

    /// Which of `keys` exist, in input order.
    pub fn has_many(&self, keys: &[Key]) -> Result<Vec<bool>> {
        if keys.len() < BULK_SCAN_KEYS_MIN {
            return keys.iter().map(|k| self.has(k)).collect();
        }
        // The same protocol as `locate`, for all keys at once: list loose/ first, then read the
        // index in one snapshot begun after the listing.
        let loose: std::collections::HashSet<Key> =
            loose::list_loose(&self.root, self.config.loose_prefix_len)?
                .into_iter()
                .collect();
        let mut sorted: Vec<Key> = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut index = self.index();
        index.begin_snapshot()?;
        let packed: std::collections::HashSet<Key> = sorted
            .iter()
            .zip(index.known_recent(&sorted)?)
            .filter_map(|(k, known)| known.then_some(*k))
            .collect();
        Ok(keys
            .iter()
            .map(|k| loose.contains(k) || packed.contains(k))
            .collect())
    }

    /// Visits the content of each of `keys` once, in the order that is fastest to read: packed
    /// objects grouped by pack in offset order, then loose ones. Missing keys are visited with
    /// `Err(NotFound)`. An error returned by `visit` stops the walk and is returned.
    ///
    /// Packed objects are read in spans of many records. When there are several spans and a
    /// second core, one thread reads and verifies the next spans while the caller's thread
    /// visits the current one (`visit` is always called on the caller's thread).
    pub fn read_many(&self, keys: &[Key], visit: &mut ReadManyVisitor<'_>) -> Result<()> {
        let mut wanted: Vec<Key> = keys.to_vec();
        if wanted.len() >= PARALLEL_SORT_ITEMS_MIN {
            wanted.par_sort_unstable();
        } else {
            wanted.sort_unstable();
        }
        wanted.dedup();
        let mut found: Vec<(Key, IndexRow)> = Vec::with_capacity(wanted.len());
        let mut rest: Vec<Key> = Vec::new();
        {
            let mut index = self.index();
            // Smaller requests never scan: they need not ask the index's size.
            if wanted.len() >= BULK_SCAN_KEYS_MIN
                && scans_index(wanted.len(), index.rows_at_most()?)
            {
                let mut it = wanted.iter().peekable();
                index.for_each(&mut |k, row| {
                    while it.peek().is_some_and(|w| **w < k) {
                        rest.push(*it.next().unwrap_or(&k));
                    }
                    if it.peek() == Some(&&k) {
                        it.next();
                        found.push((k, row));
                    }
                    Ok(())
                })?;
                rest.extend(it.copied());
            } else {
                index.begin_snapshot()?;
                for k in &wanted {
                    match index.get_recent(k)? {
                        Some(row) => found.push((*k, row)),
                        None => rest.push(*k),
                    }
                }
            }
        }
        let place = |(_, r): &(Key, IndexRow)| (r.pack, r.offset);
        if found.len() >= PARALLEL_SORT_ITEMS_MIN {
            found.par_sort_unstable_by_key(place);
        } else {
            found.sort_unstable_by_key(place);
        }
        let mut spans: Vec<SpanRead> = Vec::new();
        let mut at = 0;
        while at < found.len() {
            let pack_id = found[at].1.pack;
            let group_end = at
                + found[at..]
                    .iter()
                    .take_while(|(_, r)| r.pack == pack_id)
                    .count();
            for (i, end_i, start, end) in
                pack::plan_spans(&found[at..group_end], BULK_READ_SPAN_BYTES)
            {
                spans.push(SpanRead {
                    pack: pack_id,
                    items: at + i..at + end_i,
                    start,
                    end,
                });
            }
            at = group_end;
        }
        let span_bytes: u64 = spans.iter().map(|s| s.end - s.start).sum();
        let pipelined = spans.len() >= 2
            && span_bytes >= READ_MANY_PIPELINE_BYTES_MIN
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1)
            && self.read_spans_pipelined(&found, &spans, &mut rest, visit)?;
        if !pipelined {
            let mut buf = Vec::new();
            let mut reads = SpanReads::new(&self.root);
            for span in &spans {
                let fetched = self.fetch_span(&found, span, &mut reads, &mut buf)?;
                visit_span(&found, span, &buf, fetched, &mut rest, visit)?;
            }
        }
        for key in rest {
            match self.get(&key) {
                Ok(v) => visit(key, Ok(&v))?,
                Err(e) => visit(key, Err(e))?,
            }
        }
        Ok(())
    }

    /// Reads one span of records into `buf` (around the page cache where it does not hold all
    /// of it, see [`SpanReads`]) and verifies each record.
    fn fetch_span(
        &self,
        found: &[(Key, IndexRow)],
        span: &SpanRead,
        reads: &mut SpanReads,
        buf: &mut Vec<u8>,
    ) -> Result<Fetched> {
        let Some(file) = self.pack_handle(span.pack)? else {
            // Repacked meanwhile: these keys take the one-by-one path.
            return Ok(Fetched::Unreadable);
        };
        let first = &found[span.items.start].1;
        let read = pack::check_fits(&file, first, span.end - span.start).and_then(|()| {
            let len = (span.end - span.start) as usize;
            reads.read(&file, span.pack, span.start, len, buf)
        });
        let Ok(base) = read else {
            // A short or unreadable pack: each key gets its own answer.
            return Ok(Fetched::Unreadable);
        };
        Ok(Fetched::Records(
            found[span.items.clone()]
                .iter()
                .map(|(key, row)| {
                    let off = base + (row.offset - span.start) as usize;
                    let rec = &buf[off..off + record_len(row) as usize];
                    decode_packed(key, row, rec).map(|d| match d {
                        Decoded::Borrowed((a, b)) => Decoded::Borrowed((off + a, off + b)),
                        owned => owned,
                    })
                })
                .collect(),
        ))
    }

    /// [`Store::read_many`]'s spans with reading and verifying on a second thread, one span
    /// ahead of the visits. Returns `Ok(false)` if no thread could be started (nothing was
    /// visited then).
    fn read_spans_pipelined(
        &self,
        found: &[(Key, IndexRow)],
        spans: &[SpanRead],
        rest: &mut Vec<Key>,
        visit: &mut ReadManyVisitor<'_>,
    ) -> Result<bool> {
        std::thread::scope(|s| {
            // Both channels live in this closure: when it returns (a visit failed) or unwinds,
            // they close, and the reader thread stops at its next send or receive.
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Result<(Vec<u8>, Fetched)>>(1);
            let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
            let reader = std::thread::Builder::new()
                .name("basin-read-many".into())
                .spawn_scoped(s, move || {
                    let mut buffers = 0usize;
                    let mut reads = SpanReads::new(&self.root);
                    for span in spans {
                        let mut buf = match free_rx.try_recv() {
                            Ok(b) => b,
                            Err(_) if buffers < READ_MANY_BUFFERS_MAX => {
                                buffers += 1;
                                Vec::new()
                            }
                            Err(_) => match free_rx.recv() {
                                Ok(b) => b,
                                Err(_) => return,
                            },
                        };
                        let fetched = self.fetch_span(found, span, &mut reads, &mut buf);
                        let stop = fetched.is_err();
                        if full_tx.send(fetched.map(|f| (buf, f))).is_err() || stop {
                            return;
                        }
                    }
                });
            if reader.is_err() {
                return Ok(false);
            }
            for span in spans {
                // The reader sends one message per span unless it stopped on an error it sent,
                // so a closed channel here can only follow a panic, which the scope re-raises.
                let Ok(message) = full_rx.recv() else { break };
                let (buf, fetched) = message?;
                visit_span(found, span, &buf, fetched, rest, visit)?;
                let _ = free_tx.send(buf);
            }
            Ok(true)
        })
    }

    /// Every key in the store, sorted, each once.
    pub fn list(&self) -> Result<Vec<Key>> {
        let (loose, mut keys) = self.list_parts()?;
        if !loose.is_empty() {
            keys.extend(loose);
            keys.sort_unstable();
            keys.dedup();
        }
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]));
        Ok(keys)
    }

    /// The keys under loose/, and those of the index in key order.
    ///
    /// The index must be read after loose/ was: a packer commits an object's row before it
    /// deletes the loose copy, so an object that moves meanwhile is seen in one of the two. With
    /// many prefix folders and a second core, both are read at once instead, and the index is
    /// read again if anything was committed to it meanwhile (its `data_version` moved): when
    /// nothing was, what the scan saw is what a scan after the walk would see.
    fn list_parts(&self) -> Result<(Vec<Key>, Vec<Key>)> {
        let prefix_len = self.config.loose_prefix_len;
        let mut index = self.index();
        let index = &mut *index;
        let mut keys = Vec::new();
        let overlap = prefix_len >= LIST_OVERLAP_PREFIX_LEN_MIN
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        if !overlap {
            let loose = loose::list_loose(&self.root, prefix_len)?;
            index.for_each_key(&mut |k| keys.push(k))?;
            return Ok((loose, keys));
        }
        let before = index.data_version()?;
        let (loose, scanned, walked_first) = std::thread::scope(|s| {
            let walker = std::thread::Builder::new()
                .name("basin-list".into())
                .spawn_scoped(s, || loose::list_loose(&self.root, prefix_len));
            let scanned = index.for_each_key(&mut |k| keys.push(k));
            match walker {
                Ok(h) => (
                    h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                    scanned,
                    false,
                ),
                // No thread to be had: the walk comes after the scan, so the scan is redone.
                Err(_) => (loose::list_loose(&self.root, prefix_len), scanned, true),
            }
        });
        let loose = loose?;
        scanned?;
        if walked_first || index.data_version()? != before {
            keys.clear();
            index.for_each_key(&mut |k| keys.push(k))?;
        }
        Ok((loose, keys))
    }

    /// Counts and sizes, including the index's bytes per packed object.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        for k in loose::list_loose(&self.root, self.config.loose_prefix_len)? {
            if let Ok(m) = fs::metadata(self.loose_path(&k)) {
                s.loose_objects += 1;
                s.loose_bytes += m.len();
            }
        }
        let (n, raw, stored) = self.index().totals()?;
        s.packed_objects = n;
        s.packed_raw_bytes = raw;
        s.packed_stored_bytes = stored;
        for id in pack::pack_ids_on_disk(&self.root)? {
            s.pack_files += 1;
            s.pack_file_bytes += fsutil::file_len_or_zero(&pack::pack_path(&self.root, id));
        }
        let idx = self.root.join(INDEX_FILE);
        s.index_bytes = fsutil::file_len_or_zero(&idx)
            + fsutil::file_len_or_zero(&self.root.join(format!("{INDEX_FILE}-wal")));
        s.index_bytes_per_object = if n > 0 {
            s.index_bytes as f64 / n as f64
        } else {
            0.0
        };
        Ok(s)
    }
}

/// One read of [`Store::read_many`]: records `items` of the sorted rows, all in `pack`, read
/// as the byte range `start..end`.
struct SpanRead {
    pack: u64,
    items: std::ops::Range<usize>,
    start: u64,
    end: u64,
}

/// A span's records after reading, in the span's order.
enum Fetched {
    /// The pack is gone or too short: its keys are looked up one by one.
    Unreadable,
    /// Each record's content (a range of the span's buffer, or decompressed) or why not.
    Records(Vec<Result<Decoded>>),
}

/// Hands a fetched span's records to `visit`, or its keys to `rest` when it was unreadable.
fn visit_span(
    found: &[(Key, IndexRow)],
    span: &SpanRead,
    buf: &[u8],
    fetched: Fetched,
    rest: &mut Vec<Key>,
    visit: &mut ReadManyVisitor<'_>,
) -> Result<()> {
    let records = match fetched {
        Fetched::Unreadable => {
            rest.extend(found[span.items.clone()].iter().map(|(k, _)| *k));
            return Ok(());
        }
        Fetched::Records(r) => r,
    };
    for ((key, _), record) in found[span.items.clone()].iter().zip(records) {
        match record {
            Ok(Decoded::Borrowed((a, b))) => visit(*key, Ok(&buf[a..b]))?,
            Ok(Decoded::Owned(v)) => visit(*key, Ok(&v))?,
            Err(e) => visit(*key, Err(e))?,
        }
    }
    Ok(())
}

/// Where `locate` found an object.
enum Located {
    Packed(IndexRow),
    Loose(PathBuf),
    Missing,
}

fn record_len(row: &IndexRow) -> u64 {
    crate::format::RECORD_OVERHEAD_BYTES + row.stored_len
}

enum Decoded {
    Borrowed((usize, usize)),
    Owned(Vec<u8>),
}

fn decode_packed(key: &Key, row: &IndexRow, rec: &[u8]) -> Result<Decoded> {
    let (header, _) = crate::format::decode_record(rec).map_err(|reason| Error::CorruptRecord {
        pack: row.pack,
        offset: row.offset,
        reason,
    })?;
    pack::check_header(&header, key, row)?;
    let a = crate::format::RECORD_HEADER_BYTES;
    let b = a + row.stored_len as usize;
    if header.is_compressed() {
        crate::compress::decompress_all(&rec[a..b], header.raw_len)
            .map(Decoded::Owned)
            .map_err(|detail| Error::CorruptObject {
                key: *key,
                location: format!("pack {} offset {}", row.pack, row.offset),
                detail,
            })
    } else {
        Ok(Decoded::Borrowed((a, b)))
    }
}

pub(crate) fn meta_of(key: &Key, row: &IndexRow) -> ObjectMeta {
    ObjectMeta {
        key: *key,
        size: row.raw_len,
        stored_size: row.stored_len,
        location: Location::Packed {
            pack: row.pack,
            offset: row.offset,
        },
        compressed: row.flags & crate::format::FLAG_ZSTD != 0,
    }
}

#[cfg(test)]
mod tests {
    use super::{scans_index, PackCache, BULK_SCAN_KEYS_MIN, PACK_HANDLES_MAX};

    /// read_many scans the index only for many keys that are a fair share of its rows: a few
    /// thousand keys of a hundred million rows are looked up one by one.
    #[test]
    fn read_many_scans_the_index_only_for_a_fair_share_of_its_rows() {
        let cases = [
            // (keys, rows at most, scans)
            (BULK_SCAN_KEYS_MIN - 1, 100, false),
            (BULK_SCAN_KEYS_MIN, 100, true),
            (20_000, 100_000, true),
            (1_000_000, 2_750_000, true),
            (5_000, 100_000_000, false),
            (100_000, 100_000_000, false),
            (20_000_000, 100_000_000, true),
            (4_096, 32_768, true),
            (4_096, 32_769, false),
            (usize::MAX, u64::MAX, true),
        ];
        for (keys, rows, scans) in cases {
            assert_eq!(
                scans_index(keys, rows),
                scans,
                "{keys} keys of at most {rows} rows"
            );
        }
    }

    /// Full, the cache lets go of the entry used longest ago, and only that one.
    #[test]
    fn a_full_pack_cache_drops_the_entry_used_longest_ago() {
        let mut cache = PackCache::default();
        for id in 0..PACK_HANDLES_MAX as u64 {
            cache.insert(id, id * 10);
        }
        // Use every entry but id 7 again: 7 is now the one used longest ago.
        for id in (0..PACK_HANDLES_MAX as u64).filter(|&id| id != 7) {
            assert_eq!(cache.get(id), Some(id * 10));
        }
        cache.insert(1000, 10_000);
        assert_eq!(cache.get(7), None, "the entry used longest ago stayed");
        assert_eq!(cache.entries.len(), PACK_HANDLES_MAX);
        for id in (0..PACK_HANDLES_MAX as u64).filter(|&id| id != 7) {
            assert_eq!(cache.get(id), Some(id * 10), "entry {id} went");
        }
        assert_eq!(cache.get(1000), Some(10_000));
        // Replacing an entry that is there drops nothing.
        cache.insert(1000, 1);
        assert_eq!(cache.entries.len(), PACK_HANDLES_MAX);
        assert_eq!(cache.get(1000), Some(1));
        cache.remove(1000);
        assert_eq!(cache.get(1000), None);
    }
}
