//! Maintenance: everything that writes packs or the index, under the exclusive maintenance lock.
//!
//! One process at a time holds the lock (an `flock` on `locks/maintenance.lock`, released by the
//! kernel when the process dies, so a crash never leaves a lock a human must delete). Readers and
//! loose writers never take it and never fail because of what happens here: pack bytes are
//! fdatasynced before the index rows that point at them are committed; loose copies and old packs
//! are removed only after the index stopped pointing at them.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;

use crate::compress;
use crate::config::{Compression, GONE_FORMAT_VERSION};
use crate::error::{Error, IoContext, Result};
use crate::format::{
    Position, RecordKind, FRAME_RAW_BYTES, PACK_FLAG_BATCH, PACK_HEADER_BYTES,
    RECORD_OVERHEAD_BYTES,
};
use crate::fsutil;
use crate::index::{Index, IndexRow, Kills, PackRow, RowWrite, TombstoneRow, INDEX_FILE};
use crate::key::{Key, KeySet};
use crate::loose::{self, STREAM_CHUNK_BYTES};
use crate::pack::{self, Appender, NewRecord, PACKS_DIR};
use crate::progress::{Progress, Unit};
use crate::store::{Store, LOCKS_DIR, MAINTENANCE_LOCK};

/// Bytes packed between index commits by `pack_loose`, unless [`PackOptions::commit_bytes`]
/// says otherwise. Each commit is an fdatasync of the pack and an index fsync, after which the
/// loose copies go: it bounds the bytes stored twice.
const COMMIT_BYTES: u64 = 128 << 20;
/// Bytes appended between index commits by `write_packed`, which frees nothing at a commit.
/// Keys of a bulk import are random, so every commit rewrites about every index page: the
/// fewer commits, the less index is written (a million objects of 0–1000 B, four commits
/// against one: 3.2 s against 2.1 s, medians of four interleaved runs). Memory is bounded by
/// [`COMMIT_RECORDS`] rows either way.
const WRITE_PACKED_COMMIT_BYTES: u64 = 512 << 20;
/// Records appended between index commits.
const COMMIT_RECORDS: usize = 1_000_000;
/// Bytes a `write_packed` call writes through the page cache before the rest goes to the
/// device directly (why: [`crate::fsutil::WriteBehind::write_direct_after`]). Was 256 MiB;
/// since `read_many` reads what the cache lacks around it, reading an import back costs the
/// same either way, and each cached MiB cost the million-object import ~2.7 ms of the write
/// thread's time (fresh page-cache pages): at 128 MiB it took ~0.88x as long (3 interleaved
/// runs). An import up to 128 MiB (the benchmark's 92 MB step d, which validate reads next)
/// stays cached whole, for single reads and validates right after it.
const WRITE_PACKED_CACHED_BYTES: u64 = 128 << 20;
/// Objects read and encoded in parallel per round.
const PARALLEL_CHUNK_OBJECTS: usize = 512;
/// Bytes of small objects a round holds in memory: a round ends at the object that reaches it,
/// or at [`PARALLEL_CHUNK_OBJECTS`]. Without it, a round of 512 files of 10 MiB held 5 GiB,
/// and `write_packed` has three rounds in flight.
const CHUNK_IN_MEMORY_BYTES_MAX: u64 = 32 << 20;
/// Old packs of up to this many bytes in all are rewritten under one index commit.
const REPACK_COMMIT_BYTES: u64 = 512 << 20;
/// Largest read repack makes to fetch a run of live records (see `pack::SPAN_BUFFERS` for why
/// not larger).
const REPACK_SPAN_BYTES: u64 = 1 << 20;
/// Index rows one pass of a repack gathers at most beyond those of its next commit: ~70 MB in
/// memory (see `scan_len`).
const REPACK_SCAN_ROWS_MAX: u64 = 1_000_000;
/// Rows a repack stages into the index at once, unless [`RepackOptions::stage_rows_min`] says
/// otherwise (see `Appender::stage`): 9 MiB of the benchmark's 1-8 KiB objects, a few ms of
/// writes, so the index work of a commit goes on while the spans after them are written.
const REPACK_STAGE_ROWS_MIN: usize = 2048;
/// Objects at most this big are read into memory whole for direct-to-pack; bigger ones stream.
const IN_MEMORY_OBJECT_BYTES_MAX: u64 = 16 << 20;

/// What to do when another process holds the maintenance lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once with [`Error::Locked`].
    Fail,
    /// Wait until the lock is free.
    Block,
}

/// Proof that this process holds the maintenance lock; maintenance operations hang off it.
pub struct Maintenance<'s> {
    pub(crate) store: &'s Store,
    /// Maintenance's own index connection, so readers sharing the store handle never wait on
    /// the handle's connection while a long operation runs. Given back to the store handle
    /// when the lock is released (`None` only then).
    index: std::sync::Mutex<Option<Index>>,
    _lock: File,
}

impl Drop for Maintenance<'_> {
    fn drop(&mut self) {
        let slot = self.index.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(mut index) = slot.take() {
            // A staged transaction (see `Index::stage`) would hold the index's write lock.
            index.drop_staged();
            if index.reusable() {
                *self
                    .store
                    .spare_maintenance_index
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(index);
            }
        }
    }
}

/// The maintenance index connection, locked.
pub(crate) struct IndexGuard<'a>(std::sync::MutexGuard<'a, Option<Index>>);

impl std::ops::Deref for IndexGuard<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        self.0
            .as_ref()
            .expect("the maintenance index is present until the lock is released")
    }
}

impl std::ops::DerefMut for IndexGuard<'_> {
    fn deref_mut(&mut self) -> &mut Index {
        self.0
            .as_mut()
            .expect("the maintenance index is present until the lock is released")
    }
}

impl Store {
    /// Takes the exclusive maintenance lock.
    pub fn maintenance(&self, wait: LockWait) -> Result<Maintenance<'_>> {
        self.check_writable()?;
        let path = self.path().join(LOCKS_DIR).join(MAINTENANCE_LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at("open", &path)?;
        match wait {
            LockWait::Block => file.lock().at("lock", &path)?,
            LockWait::Fail => {
                if let Err(e) = file.try_lock() {
                    if let std::fs::TryLockError::Error(err) = e {
                        return Err(Error::io("lock", &path, err));
                    }
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let holder = if holder.is_empty() {
                        String::new()
                    } else {
                        format!(" ({holder})")
                    };
                    return Err(Error::Locked { path, holder });
                }
            }
        }
        // Who holds it, for the message another process shows; advisory only.
        let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        // Written over the last holder's text, padded, instead of truncating first: freeing
        // and allocating the file's block each time costs more than the write.
        let mut holder = format!(
            "pid {} on {} since unix time {since}",
            std::process::id(),
            host.trim()
        )
        .into_bytes();
        holder.resize(holder.len().max(LOCK_HOLDER_BYTES), b' ');
        let _ = file.write_all_at_start(&holder);
        if file.metadata().is_ok_and(|m| m.len() > holder.len() as u64) {
            let _ = file.set_len(holder.len() as u64);
        }
        let spare = self
            .spare_maintenance_index
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .and_then(|mut index| index.reusable().then_some(index));
        let index = match spare {
            Some(index) => index,
            None => {
                let index = Index::open(self.path(), &self.config().container_id)?;
                index.use_bulk_cache()?;
                index
            }
        };
        Ok(Maintenance {
            store: self,
            index: std::sync::Mutex::new(Some(index)),
            _lock: file,
        })
    }
}

trait WriteAtStart {
    fn write_all_at_start(&mut self, b: &[u8]) -> std::io::Result<()>;
}
impl WriteAtStart for File {
    fn write_all_at_start(&mut self, b: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.write_all_at(b, 0)
    }
}

/// The lock file's text (who holds it) is padded to this many bytes: every holder writes over
/// the whole of the last one's.
const LOCK_HOLDER_BYTES: usize = 128;

/// Deletes of at least this many keys list loose/ once instead of probing per key.
const DELETE_LISTING_KEYS_MIN: usize = 256;
/// Batch packs and retired maintenance packs up to this size are merged by `pack`, which keeps
/// the number of pack files low however many small batches come. Larger ones stay where they
/// are (retired ones are sealed there): moving them would rewrite every byte for one file less.
/// Batch packs of any size are merged when the store compresses, as batches store content raw.
const PACK_MERGE_BYTES_MAX: u64 = 64 << 20;

/// Which loose objects to pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackSelection {
    All,
    /// Keys whose hex starts with this prefix.
    Prefix(String),
    Keys(Vec<Key>),
}

/// Options for writing into packs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PackOptions {
    /// `None`: the store's configured policy.
    pub compression: Option<Compression>,
    /// Bytes appended between two index commits; `None`: 128 MiB for `pack_loose`, 512 MiB
    /// for `write_packed`. A commit makes what came before it durable and visible to readers
    /// (and lets `pack_loose` remove the loose copies), at the price of an fdatasync and of
    /// rewriting most index pages when keys are random.
    pub commit_bytes: Option<u64>,
    /// Bytes `write_packed` writes through the page cache before it writes the rest straight
    /// to the device (`O_DIRECT`); `None`: 128 MiB. A large import then neither pushes what
    /// readers use out of the cache nor pays for copying into it; the objects written directly
    /// are read from the device the first time. Other operations ignore it.
    pub cached_bytes: Option<u64>,
}

/// What `pack_loose` did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PackReport {
    pub packed: u64,
    pub packed_bytes: u64,
    /// Loose objects that were already packed (their loose copy was removed).
    pub already_packed: u64,
    pub loose_removed: u64,
    /// Loose files that could not be read now (left for next time).
    pub skipped: Vec<String>,
    /// Loose files whose content does not match their name (left in place, not packed).
    pub corrupt: Vec<String>,
    /// Batch packs (and small retired maintenance packs) merged into the current pack.
    pub packs_merged: u64,
    /// Objects moved by those merges.
    pub objects_merged: u64,
}

/// One object to write directly into a pack.
pub enum Source {
    Bytes(Vec<u8>),
    Reader {
        reader: Box<dyn Read + Send>,
        size_hint: u64,
    },
    File(PathBuf),
}

/// Options for repack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RepackOptions {
    /// Rewrite every pack, not only those with enough garbage.
    pub all: bool,
    /// Rewrite packs whose dead bytes are at least this share of their records.
    pub garbage_ratio_min: f64,
    /// Recompress while rewriting (`None`: keep each record as it is).
    pub compression: Option<Compression>,
    /// Write the moved records around the page cache (`O_DIRECT`, where the file system takes
    /// it), as databases write compactions: a repack then neither pushes out of the cache
    /// what readers use nor pays the kernel's copy into new cache pages. Reads of moved
    /// objects come from the disk until cached again. Records that are recompressed go
    /// through the page cache either way.
    pub bypass_page_cache: bool,
    /// Also merge sealed packs smaller than this many bytes (and than half the pack size
    /// target), when there are at least two, into the current pack, as restic's `prune
    /// --repack-small` and git's `repack --geometric` do. `pack` merges only batch packs of at
    /// most 64 MiB, so a store imported in many larger batches keeps one file per batch; this
    /// bounds that count. `None`: no such merge.
    pub small_pack_bytes_max: Option<u64>,
    /// Bytes of old packs rewritten between two index commits; `None`: 512 MiB. Each commit
    /// makes the moved records durable where they now are and removes the old packs it covers,
    /// so this also bounds the extra disk a repack holds at once; a commit rewrites most index
    /// pages when keys are random.
    pub commit_bytes: Option<u64>,
    /// Rows of moved records written into the index at a time while the copy goes on,
    /// uncommitted until the commit (which then has only the rest to write); `None`: 2048. The
    /// index is locked for other writers from the first of them to the commit.
    pub stage_rows_min: Option<usize>,
}

impl Default for RepackOptions {
    fn default() -> Self {
        RepackOptions {
            all: false,
            garbage_ratio_min: 0.2,
            compression: None,
            bypass_page_cache: true,
            small_pack_bytes_max: None,
            commit_bytes: None,
            stage_rows_min: None,
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepackReport {
    pub packs_rewritten: u64,
    pub objects_moved: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub tombstones_dropped: u64,
}

/// Options for clean.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CleanOptions {
    pub vacuum: bool,
    /// Sandbox entries younger than this are left alone even when unlocked: a writer takes its
    /// lock a moment after creating its file.
    pub sandbox_grace: Duration,
}

impl Default for CleanOptions {
    fn default() -> Self {
        CleanOptions {
            vacuum: true,
            sandbox_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CleanReport {
    pub sandbox_removed: u64,
    /// Pack files the index did not know and fully accounted for (crash leftovers), removed.
    pub stray_packs_removed: u64,
    /// Pack files the index does not know that hold records it lacks: run rebuild-index.
    pub stray_packs_kept: Vec<u64>,
    /// Index rows of packs whose file was never created.
    pub pack_rows_removed: u64,
    pub loose_copies_removed: u64,
    pub tail_bytes_truncated: u64,
    pub temp_files_removed: u64,
    /// Index rows of deleted objects removed (`delete` leaves them to maintenance).
    pub deleted_rows_folded: u64,
    pub index_bytes_before: u64,
    pub index_bytes_after: u64,
    /// Whether vacuum rewrote the whole index file (its pages were sparse, or it could not
    /// give free pages back any other way).
    pub index_rewritten: bool,
    /// Pages vacuum cut from the index file.
    pub index_pages_freed: u64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RebuildReport {
    pub packs: u64,
    pub objects: u64,
    pub tombstones: u64,
    pub dead_records: u64,
    /// Packs that could not be read, with why.
    pub unreadable_packs: Vec<String>,
    /// Damaged records skipped (their objects are not indexed), as "pack N offset M".
    pub damaged_records: Vec<String>,
}

/// A loose object read for packing: small ones encoded in memory, large ones streamed later.
enum Prepared {
    InMemory {
        raw_len: u64,
        enc: compress::Encoded,
    },
    Large {
        path: PathBuf,
    },
}

impl<'s> Maintenance<'s> {
    pub fn store(&self) -> &'s Store {
        self.store
    }

    pub(crate) fn index(&self) -> IndexGuard<'_> {
        IndexGuard(self.index.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn appender(&self, exclude: HashSet<u64>) -> Appender<'s> {
        let c = self.store.config();
        Appender::new(
            self.store.path(),
            c.hash,
            c.container_id_bytes(),
            c.pack_size_target_bytes,
            exclude,
        )
    }

    fn policy(&self, opts: &PackOptions) -> Compression {
        opts.compression.unwrap_or(self.store.config().compression)
    }

    /// Runs `f` with the index and an appender; on error the uncommitted tail is dropped.
    fn with_appender<T>(
        &self,
        exclude: HashSet<u64>,
        f: impl FnOnce(&mut Index, &mut Appender<'s>) -> Result<T>,
    ) -> Result<T> {
        let mut index = self.index();
        let mut app = self.appender(exclude);
        let result = f(&mut index, &mut app);
        // Whatever was committed, this process's readers see it from now on.
        let _ = self.store.index().end_snapshot();
        match result {
            Ok(v) => match app.finish(&mut index, false) {
                Ok(()) => Ok(v),
                Err(e) => Err(self.store.note_failure(e)),
            },
            Err(e) => {
                app.abandon(&mut index);
                Err(self.store.note_failure(e))
            }
        }
    }

    /// Moves loose objects into packs. Loose copies are deleted batch by batch, right after the
    /// index commit that makes their packed copies reachable, so disk use never doubles.
    pub fn pack_loose(
        &self,
        sel: &PackSelection,
        opts: &PackOptions,
        p: &dyn Progress,
    ) -> Result<PackReport> {
        let store = self.store;
        let cfg = store.config();
        let mut keys = match sel {
            PackSelection::Keys(k) => k.clone(),
            PackSelection::All => loose::list_loose(store.path(), cfg.loose_prefix_len)?,
            PackSelection::Prefix(prefix) => {
                let prefix = prefix.to_ascii_lowercase();
                if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::InvalidArgument(format!(
                        "key prefix '{prefix}' is not hex"
                    )));
                }
                loose::list_loose(store.path(), cfg.loose_prefix_len)?
                    .into_iter()
                    .filter(|k| k.to_hex().starts_with(&prefix))
                    .collect()
            }
        };
        keys.sort_unstable();
        keys.dedup();
        let policy = self.policy(opts);
        let commit_bytes = opts.commit_bytes.unwrap_or(COMMIT_BYTES);
        let mut report = PackReport::default();
        p.start("pack", Some(keys.len() as u64), Unit::Objects);
        let result = self.with_appender(HashSet::new(), |index, app| {
            let mut to_remove: Vec<Key> = Vec::new();
            let mut pending_bytes = 0u64;
            let mut rest: &[Key] = &keys;
            while !rest.is_empty() {
                let (chunk, sizes) = take_loose_chunk(store, &mut rest);
                let prepared: Vec<(Key, std::result::Result<Option<Prepared>, String>)> = chunk
                    .par_iter()
                    .zip(sizes)
                    .map(|(k, size)| (*k, prepare_loose(store, k, size, policy)))
                    .collect();
                for (key, prep) in prepared {
                    match prep {
                        Ok(None) => {} // vanished: packed by someone else or deleted
                        Err(why) if why.starts_with("corrupt:") => {
                            report.corrupt.push(why[8..].to_string())
                        }
                        Err(why) => report.skipped.push(why),
                        Ok(Some(_)) if index.get_recent(&key)?.is_some() => {
                            report.already_packed += 1;
                            to_remove.push(key);
                        }
                        Ok(Some(Prepared::InMemory { raw_len, enc })) => {
                            pending_bytes += enc.payload.len() as u64;
                            app.append_encoded(index, key, raw_len, &enc)?;
                            report.packed += 1;
                            report.packed_bytes += raw_len;
                            to_remove.push(key);
                        }
                        Ok(Some(Prepared::Large { path })) => {
                            let mut f = match File::open(&path) {
                                Ok(f) => f,
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                                Err(e) => {
                                    report.skipped.push(format!("{}: {e}", path.display()));
                                    continue;
                                }
                            };
                            let name = path.display().to_string();
                            match append_stream(
                                app,
                                index,
                                &mut f,
                                &name,
                                store.config().hash,
                                policy,
                                &KeySet::default(),
                                Some(key),
                            )?
                            .1
                            {
                                Streamed::Written {
                                    raw_len,
                                    stored_len,
                                } => {
                                    pending_bytes += stored_len;
                                    report.packed += 1;
                                    report.packed_bytes += raw_len;
                                    to_remove.push(key);
                                }
                                Streamed::Duplicate => {
                                    report.already_packed += 1;
                                    to_remove.push(key);
                                }
                                Streamed::Mismatch { actual } => report
                                    .corrupt
                                    .push(format!("{name}: content hashes to {actual}")),
                            }
                        }
                    }
                    p.advance(1);
                }
                if pending_bytes >= commit_bytes || app.pending() >= COMMIT_RECORDS {
                    app.commit(index, &mut |_| Ok(()))?;
                    report.loose_removed += remove_loose(store, &to_remove);
                    to_remove.clear();
                    pending_bytes = 0;
                }
            }
            app.commit(index, &mut |_| Ok(()))?;
            report.loose_removed += remove_loose(store, &to_remove);
            Ok(())
        });
        p.finish();
        result?;
        if *sel == PackSelection::All {
            self.merge_small_packs(policy, &mut report, p)?;
            // Listings then open only the prefix folders that hold something.
            loose::remove_empty_prefix_dirs(store.path(), cfg.loose_prefix_len)?;
        }
        Ok(report)
    }

    /// Merges batch packs into the current pack: every one when the store compresses (batches
    /// store content raw), else those of at most [`PACK_MERGE_BYTES_MAX`]; and with them any
    /// retired maintenance pack (unsealed, but no longer the newest, so never appended to
    /// again) that is small. Larger retired packs are sealed where they are.
    fn merge_small_packs(
        &self,
        policy: Compression,
        report: &mut PackReport,
        p: &dyn Progress,
    ) -> Result<()> {
        let store = self.store;
        let recompress = (policy != Compression::None).then_some(policy);
        let mut batches = Vec::new();
        let mut retired = Vec::new();
        let all_packs = {
            let mut index = self.index();
            let packs = index.packs()?;
            let high_water = index.pack_id_high_water()?;
            for row in &packs {
                let path = pack::pack_path(store.path(), row.id);
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(Error::io("open pack", &path, e)),
                };
                if row.sealed {
                    if (recompress.is_some() || row.end_bytes <= PACK_MERGE_BYTES_MAX)
                        && pack::read_pack_header(&file, row.id)?.flags & PACK_FLAG_BATCH != 0
                    {
                        batches.push(*row);
                    }
                } else if row.id < high_water {
                    if row.end_bytes <= PACK_MERGE_BYTES_MAX {
                        retired.push(*row);
                    } else {
                        drop(file);
                        let file = OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open(&path)
                            .at("open pack", &path)?;
                        pack::seal(&mut index, &file, row.id, &path, row.end_bytes)?;
                    }
                }
            }
            packs
        };
        for (group, compression) in [(batches, recompress), (retired, None)] {
            if group.is_empty() {
                continue;
            }
            let mut r = RepackReport::default();
            let how = Rewrite {
                compression,
                // Just written and about to be read: through the page cache.
                bypass_page_cache: false,
                commit_bytes: REPACK_COMMIT_BYTES,
                stage_rows_min: REPACK_STAGE_ROWS_MIN,
            };
            self.rewrite_packs(&group, &all_packs, &how, &mut r, p)?
                .wait()?;
            report.packs_merged += r.packs_rewritten;
            report.objects_merged += r.objects_moved;
        }
        Ok(())
    }

    /// Writes objects straight into packs (bulk import). Returns keys in input order. Objects
    /// already in the store are not written again; dedup asks the index per object instead of
    /// loading every key into memory.
    ///
    /// Objects go in chunks through three stages that overlap: while the caller's thread
    /// appends one chunk, the keys of the next are looked up in the index (on a second thread,
    /// through the store's reader connection), and the one after that is hashed (on rayon's
    /// threads). Reading the sources stays on the caller's thread.
    pub fn write_packed(
        &self,
        sources: &mut dyn Iterator<Item = Result<Source>>,
        opts: &PackOptions,
        p: &dyn Progress,
    ) -> Result<Vec<Key>> {
        let store = self.store;
        let hash = store.config().hash;
        let policy = self.policy(opts);
        let commit_bytes = opts.commit_bytes.unwrap_or(WRITE_PACKED_COMMIT_BYTES);
        p.start("write", None, Unit::Objects);
        let result = self.with_appender(HashSet::new(), |index, app| {
            app.write_direct_after(opts.cached_bytes.unwrap_or(WRITE_PACKED_CACHED_BYTES));
            std::thread::scope(|scope| {
                let (to_check, check_in) = std::sync::mpsc::sync_channel::<Vec<Key>>(1);
                let (check_out, checked) = std::sync::mpsc::sync_channel::<Result<Vec<bool>>>(1);
                scope.spawn(move || {
                    for chunk_keys in check_in {
                        // A fresh snapshot per chunk: it sees every commit this call made
                        // before the chunk was sent (see `committed_lately` below).
                        let known = store.index().known_fresh(&chunk_keys);
                        if check_out.send(known).is_err() {
                            break;
                        }
                    }
                });
                self.write_packed_chunks(
                    sources,
                    hash,
                    policy,
                    commit_bytes,
                    p,
                    index,
                    app,
                    &to_check,
                    &checked,
                )
            })
        });
        p.finish();
        result
    }

    /// The main loop of [`Maintenance::write_packed`]; `to_check`/`checked` talk to its lookup
    /// thread, which answers each chunk's keys in order.
    #[allow(clippy::too_many_arguments)]
    fn write_packed_chunks(
        &self,
        sources: &mut dyn Iterator<Item = Result<Source>>,
        hash: crate::key::HashAlgorithm,
        policy: Compression,
        commit_bytes: u64,
        p: &dyn Progress,
        index: &mut Index,
        app: &mut Appender<'s>,
        to_check: &std::sync::mpsc::SyncSender<Vec<Key>>,
        checked: &std::sync::mpsc::Receiver<Result<Vec<bool>>>,
    ) -> Result<Vec<Key>> {
        let lookup_thread_gone =
            || Error::InvalidArgument("write_packed: lookup thread ended".into());
        let mut keys = Vec::new();
        // Keys written by this call since its last commit, not yet visible in the index.
        let mut session = KeySet::default();
        // Keys of the commit before: a chunk is looked up while the chunk before it is
        // appended, so its lookup may have run just before the commit that chunk made, and
        // missed it. Commits before that one are always visible to it: the lookup of a chunk
        // starts only after the chunk two before it (and any commit it made) is done.
        let mut committed_lately = KeySet::default();
        let mut pending_bytes = 0u64;
        // Three chunks in flight: `current` is appended (its lookup was sent a round ago),
        // `hashed` is looked up meanwhile, and the chunk after it is hashed on rayon's threads.
        let mut taken_objects = 0usize;
        let mut current: Option<ReadChunk> = None;
        let mut hashed: Option<ReadChunk> = match take_chunk(sources, taken_objects)? {
            Some(t) => {
                taken_objects += t.n;
                Some(t.hash_here(hash, policy)?)
            }
            None => None,
        };
        loop {
            // Sent only now that the chunk before `current` is appended and committed.
            if let Some(h) = &hashed {
                keys.resize(h.base + h.n, Key::from_bytes([0; 32]));
                let chunk_keys = h.prepared.iter().map(|p| p.1).collect();
                to_check
                    .send(chunk_keys)
                    .map_err(|_| lookup_thread_gone())?;
            }
            let hashing = match take_chunk(sources, taken_objects)? {
                Some(t) => {
                    taken_objects += t.n;
                    // Called from one of rayon's own threads, this one would block waiting for
                    // a task queued behind it: hash in place instead, without the overlap.
                    Some(if rayon::current_thread_index().is_some() {
                        Hashing::Done(t.hash_here(hash, policy)?)
                    } else {
                        Hashing::OnPool(t.hash_on_pool(hash, policy))
                    })
                }
                None => None,
            };
            if let Some(chunk) = current.take() {
                let known = checked.recv().map_err(|_| lookup_thread_gone())??;
                for ((i, key, raw_len, enc), known) in chunk.prepared.into_iter().zip(known) {
                    keys[i] = key;
                    if known || session.contains(&key) || committed_lately.contains(&key) {
                        continue;
                    }
                    let enc = enc.map_err(|e| Error::io("compress", key.to_hex(), e))?;
                    pending_bytes += enc.payload.len() as u64;
                    app.append_encoded(index, key, raw_len, &enc)?;
                    session.insert(key);
                }
                for (i, src) in chunk.large {
                    let (mut reader, name): (Box<dyn Read>, String) = match src {
                        Source::File(path) => (
                            Box::new(File::open(&path).at("open", &path)?),
                            path.display().to_string(),
                        ),
                        Source::Reader { reader, .. } => (reader, "reader".to_string()),
                        Source::Bytes(_) => continue,
                    };
                    // Large objects ask the maintenance connection, which sees every commit.
                    let (key, outcome) = append_stream(
                        app,
                        index,
                        &mut *reader,
                        &name,
                        hash,
                        policy,
                        &session,
                        None,
                    )?;
                    keys[i] = key;
                    if let Streamed::Written { stored_len, .. } = outcome {
                        session.insert(key);
                        pending_bytes += stored_len;
                    }
                }
                p.advance(chunk.n as u64);
                if pending_bytes >= commit_bytes || app.pending() >= COMMIT_RECORDS {
                    app.commit(index, &mut |_| Ok(()))?;
                    committed_lately = std::mem::take(&mut session);
                    pending_bytes = 0;
                }
            }
            current = hashed.take();
            hashed = match hashing {
                Some(Hashing::OnPool(h)) => Some(h.wait()?),
                Some(Hashing::Done(c)) => Some(c),
                None => None,
            };
            if current.is_none() && hashed.is_none() {
                break;
            }
        }
        Ok(keys)
    }

    /// Deletes objects (loose and packed). Returns the keys that existed, in input order.
    pub fn delete(&self, keys: &[Key]) -> Result<Vec<Key>> {
        let store = self.store;
        let mut seen = KeySet::default();
        let mut existed = Vec::new();
        let mut loose_paths = Vec::new();
        self.with_appender(HashSet::new(), |index, app| {
            // Many keys: one listing of loose/ instead of a stat per key. A loose write landing
            // after the listing is newer than the delete, and stays.
            let listed: Option<KeySet> = (keys.len() >= DELETE_LISTING_KEYS_MIN)
                .then(|| loose::list_loose(store.path(), store.config().loose_prefix_len))
                .transpose()?
                .map(|v| v.into_iter().collect());
            // The tombstones go to the pack opened now, before the write transaction: opening
            // a pack may commit to the index by itself.
            app.open_now(index)?;
            // Rows are looked up and removed under the write lock, held to the commit: no write
            // batch commits between a lookup and its removal, and whatever one commits later is
            // newer than the delete. The tombstones are durable before the removals are
            // (`commit_in` syncs the pack first).
            let tx = index.begin()?;
            // Stores of format 2 are read by older versions, which know nothing of `gone`: there
            // the rows go at once.
            let positions = if store.config().format_version >= GONE_FORMAT_VERSION {
                tx.mark_gone(keys)?
            } else {
                tx.take_rows(keys)?
            };
            for key in keys {
                if !seen.insert(*key) {
                    continue;
                }
                let live = positions.get(key);
                let in_loose = match &listed {
                    Some(set) => set.contains(key),
                    None => store.loose_path(key).exists(),
                };
                if let Some(live) = live {
                    app.append_delete_tombstone_to_open(*key, *live)?;
                }
                if in_loose {
                    loose_paths.push(store.loose_path(key));
                }
                if live.is_some() || in_loose {
                    existed.push(*key);
                }
            }
            app.commit_in(tx, &mut |_| Ok(()))?;
            app.seal_filled(index)
        })?;
        fsutil::remove_files(&loose_paths);
        for lp in &loose_paths {
            if lp.exists() {
                return Err(Error::io(
                    "delete",
                    lp,
                    std::io::Error::other("file is still there after unlink"),
                ));
            }
        }
        let dirs: std::collections::BTreeSet<&Path> =
            loose_paths.iter().filter_map(|p| p.parent()).collect();
        for d in dirs {
            fsutil::fsync_dir(d)?;
        }
        Ok(existed)
    }

    /// Rewrites packs that hold enough garbage (or all), keeping live records and the
    /// tombstones still needed. Old packs are removed only after the index points at the new
    /// ones; a reader that still has an old pack open keeps reading correct bytes from it.
    pub fn repack(&self, opts: &RepackOptions, p: &dyn Progress) -> Result<RepackReport> {
        let store = self.store;
        let mut report = RepackReport::default();
        let (candidates, all_packs) = {
            let mut index = self.index();
            let packs = index.packs()?;
            // Every pack is a candidate then: no need to sum every row's bytes.
            let every = opts.all || opts.compression.is_some();
            let live = if every {
                HashMap::new()
            } else {
                index.live_bytes_per_pack()?
            };
            let mut c = Vec::new();
            for row in &packs {
                if every {
                    c.push(*row);
                    continue;
                }
                let path = pack::pack_path(store.path(), row.id);
                let file = File::open(&path).at("open pack", &path)?;
                let records =
                    pack::records_end(row, &file)?.saturating_sub(PACK_HEADER_BYTES as u64);
                let live_bytes = live.get(&row.id).copied().unwrap_or(0);
                let garbage = records.saturating_sub(live_bytes);
                let ratio = if records == 0 {
                    1.0
                } else {
                    garbage as f64 / records as f64
                };
                if (ratio >= opts.garbage_ratio_min && garbage > 0) || live_bytes == 0 {
                    c.push(*row);
                }
            }
            if let Some(max) = opts.small_pack_bytes_max.filter(|_| !every) {
                // A pack of half the target or more is as full as merging would leave it.
                let max = max.min(store.config().pack_size_target_bytes / 2);
                let small: Vec<PackRow> = packs
                    .iter()
                    .filter(|r| r.sealed && r.end_bytes < max)
                    .copied()
                    .collect();
                // A single small pack would only move into another file: no fewer files.
                if small.len() >= 2 {
                    let chosen: HashSet<u64> = c.iter().map(|r| r.id).collect();
                    c.extend(small.into_iter().filter(|r| !chosen.contains(&r.id)));
                    c.sort_by_key(|r| r.id);
                }
            }
            (c, packs)
        };
        if candidates.is_empty() {
            return Ok(report);
        }
        let how = Rewrite {
            compression: opts.compression,
            bypass_page_cache: opts.bypass_page_cache,
            commit_bytes: opts.commit_bytes.unwrap_or(REPACK_COMMIT_BYTES),
            stage_rows_min: opts.stage_rows_min.unwrap_or(REPACK_STAGE_ROWS_MIN),
        };
        let unlinking = self.rewrite_packs(&candidates, &all_packs, &how, &mut report, p)?;
        let mut index = self.index();
        let checkpointed = index.checkpoint_and_vacuum(false);
        unlinking.wait()?;
        checkpointed?;
        for r in index.packs()? {
            report.bytes_after += fsutil::file_len_or_zero(&pack::pack_path(store.path(), r.id));
        }
        Ok(report)
    }

    /// Moves the live records and still-needed tombstones of `candidates` into the current
    /// pack, switches the index to the new copies, then unlinks the old packs.
    fn rewrite_packs(
        &self,
        candidates: &[PackRow],
        all_packs: &[PackRow],
        how: &Rewrite,
        report: &mut RepackReport,
        p: &dyn Progress,
    ) -> Result<Unlinking> {
        let store = self.store;
        let Rewrite {
            compression,
            bypass_page_cache,
            commit_bytes,
            stage_rows_min,
        } = *how;
        // Unlinks of packs by an earlier repack become durable now, before tombstones are
        // dropped because those packs are gone: a pack a crash brought back after that would
        // hold records no tombstone kills any more (deleted objects, alive again). Usually a
        // no-op: any fsync since then has committed the file system's journal with them.
        fsutil::fsync_dir(&store.path().join(PACKS_DIR))?;
        let rewriting: HashSet<u64> = candidates.iter().map(|r| r.id).collect();
        // The packs being rewritten count as present: if the process dies after the index
        // switch but before their files are unlinked, the tombstones carried forward still
        // explain every dead record in them (to clean, validate and rebuild-index). A tombstone
        // is dropped only once no pack that could hold a record it kills exists at all.
        let keep_min_pack = all_packs
            .iter()
            .map(|r| r.id)
            .chain(pack::pack_ids_on_disk(store.path())?)
            .min();
        p.start("repack", Some(candidates.len() as u64), Unit::Packs);
        let result = self.with_appender(rewriting.clone(), |index, app| {
            app.set_moves();
            let tombstones = index.tombstones()?;
            // Read buffers kept from one pack to the next.
            let mut span_buffers = Vec::new();
            // Old packs rewritten since the last commit, and their bytes.
            let mut rewritten: Vec<Rewritten> = Vec::new();
            let mut rewritten_bytes = 0u64;
            let sizes: Vec<u64> = candidates
                .iter()
                .map(|r| fsutil::file_len_or_zero(&pack::pack_path(store.path(), r.id)))
                .collect();
            // Rows of each candidate, when they take more than one commit: then one pass over
            // the index can gather the rows of several commits (see `scan_len`). Empty: unknown.
            let rows: Vec<u64> = if commit_group_len(&sizes, 0, commit_bytes) < sizes.len() {
                let counts = index.rows_per_pack()?;
                candidates
                    .iter()
                    .map(|r| counts.get(&r.id).copied().unwrap_or(0))
                    .collect()
            } else {
                Vec::new()
            };
            // The rows of every pack of the coming commits, from one pass over the index.
            let mut scanned: HashMap<u64, crate::index::PackRows> = HashMap::new();
            for (n, row) in candidates.iter().enumerate() {
                let path = pack::pack_path(store.path(), row.id);
                let old_bytes = sizes[n];
                report.bytes_before += old_bytes;
                if !scanned.contains_key(&row.id) {
                    let len = scan_len(
                        &sizes[n..],
                        rows.get(n..).unwrap_or_default(),
                        rewritten_bytes,
                        commit_bytes,
                        REPACK_SCAN_ROWS_MAX,
                    );
                    let ids: Vec<u64> = candidates[n..n + len].iter().map(|r| r.id).collect();
                    scanned = index.rows_in_packs_and_dead(&ids)?;
                }
                let file = File::open(&path).at("open pack", &path)?;
                // This process's cached handle and map of the pack go now, not at its unlink:
                // mapped pages stay in the page cache, which the copy clears as it reads (see
                // `for_each_span_read_ahead`). A read of it meanwhile opens it again.
                store.forget_pack_handle(row.id);
                // Rows of deleted keys (gone, not yet folded) stay behind and go with the pack.
                // Every pack asked for is in the map: a pack missing here would lose its rows
                // with its file, so it is an error, never an empty pack.
                let (live, dead) = scanned.remove(&row.id).ok_or_else(|| {
                    Error::InvalidArgument(format!("repack: rows of pack {} not read", row.id))
                })?;
                let mut dead_staged_in = None;
                let (huge, rows): (Vec<_>, Vec<_>) = live
                    .into_iter()
                    .partition(|(_, r)| r.stored_len > IN_MEMORY_OBJECT_BYTES_MAX);
                // Records too large to hold in memory are copied as they are, compression kept.
                for (key, irow) in &huge {
                    app.copy_record(index, &file, key, irow)?;
                    report.objects_moved += 1;
                }
                match compression {
                    None => pack::for_each_span_read_ahead(
                        &file,
                        row.id,
                        &rows,
                        REPACK_SPAN_BYTES,
                        &mut span_buffers,
                        bypass_page_cache,
                        &mut |span_rows, start, buf, writes| {
                            // Records that lie next to each other are copied as one run.
                            let mut run = Vec::new();
                            let (mut run_at, mut run_end) = (0usize, 0usize);
                            let mut append = |run: &[_], bytes| {
                                app.append_verified_records(index, run, buf, bytes, writes)
                            };
                            for (key, irow) in span_rows {
                                let at = (irow.offset - start) as usize;
                                let len = (RECORD_OVERHEAD_BYTES + irow.stored_len) as usize;
                                let (header, _) = verified_record(&buf[at..at + len], key, irow)?;
                                if !run.is_empty() && at != run_end {
                                    append(&run, run_at..run_end)?;
                                    run.clear();
                                }
                                if run.is_empty() {
                                    run_at = at;
                                }
                                run_end = at + len;
                                run.push(header);
                                report.objects_moved += 1;
                            }
                            if !run.is_empty() {
                                append(&run, run_at..run_end)?;
                            }
                            // The rows of the records moved so far go into the index while
                            // their bytes are still being written (a repack here waits on the
                            // device): the commit is left with the last few.
                            if app.unstaged_rows() >= stage_rows_min {
                                app.stage(index)?;
                                // So does the drop of the rows of its deleted keys: two
                                // statements a key, 7-11 ms of the commit for 4,000 keys.
                                if dead_staged_in.is_none() && !dead.is_empty() {
                                    dead_staged_in =
                                        Some(index.stage(|tx| tx.drop_dead_rows(row.id, &dead))?);
                                }
                            }
                            Ok(())
                        },
                    )?,
                    Some(policy) => pack::for_each_record(
                        &file,
                        row.id,
                        &rows,
                        REPACK_SPAN_BYTES,
                        &mut |key, irow, rec| {
                            let (header, payload) = verified_record(rec, key, irow)?;
                            let raw = if header.is_compressed() {
                                compress::decompress_all(payload, header.raw_len).map_err(
                                    |detail| Error::CorruptObject {
                                        key: *key,
                                        location: format!(
                                            "pack {} offset {}",
                                            irow.pack, irow.offset
                                        ),
                                        detail,
                                    },
                                )?
                            } else {
                                payload.to_vec()
                            };
                            let enc = compress::encode(&raw, policy)
                                .map_err(|e| Error::io("compress", key.to_hex(), e))?;
                            app.append(
                                index,
                                &NewRecord {
                                    key: *key,
                                    raw_len: header.raw_len,
                                    compressed: enc.compressed,
                                    payload: &enc.payload,
                                },
                            )?;
                            report.objects_moved += 1;
                            Ok(())
                        },
                    )?,
                }
                for t in tombstones.iter().filter(|t| t.at.pack == row.id) {
                    // Needed while some pack that stays could hold a record it kills.
                    if keep_min_pack.is_some_and(|m| m <= t.before.pack) {
                        app.append_tombstone(index, t.key, t.before)?;
                    } else {
                        report.tombstones_dropped += 1;
                    }
                }
                rewritten.push(Rewritten {
                    id: row.id,
                    path,
                    dead,
                    dead_staged_in,
                });
                rewritten_bytes += old_bytes;
                // Keys are random, so every commit rewrites most index pages: small packs share
                // one (see `commit_group_len`). The old packs stay readable until it, and go
                // right after it.
                if rewritten_bytes < commit_bytes && n + 1 < candidates.len() {
                    continue;
                }
                // The commit continues the staged transaction open now: drops staged in it
                // are done; those staged in one that a transaction of its own (a new pack's
                // row) rolled back since are done again.
                let staged_now = index.staged();
                app.commit(index, &mut |tx| {
                    for old in &rewritten {
                        if staged_now.is_none() || old.dead_staged_in != staged_now {
                            tx.drop_dead_rows(old.id, &old.dead)?;
                        }
                        tx.remove_pack(old.id)?;
                    }
                    Ok(())
                })?;
                let paths: Vec<PathBuf> = rewritten
                    .drain(..)
                    .map(|old| {
                        store.forget_pack_handle(old.id);
                        old.path
                    })
                    .collect();
                report.packs_rewritten += paths.len() as u64;
                p.advance(paths.len() as u64);
                rewritten_bytes = 0;
                if n + 1 == candidates.len() {
                    // The caller checkpoints the index meanwhile: freeing the extents of the
                    // old packs takes the file system a while (12 ms for 92 MB here, a quarter
                    // of the time writing them took).
                    return Unlinking::spawn(paths);
                }
                remove_old_packs(&paths)?;
            }
            // No fsync of packs/ for the unlinks here (the next repack makes them durable
            // before it relies on them, see above). Until then, an old pack that a crash brings
            // back is a stray whose every record the index accounts for (moved, or killed by a
            // tombstone carried forward), which clean removes. The journal commit this fsync
            // forced waits for the discard of the freed blocks on file systems mounted
            // `-o discard` (it took 20–40 ms after a 158 MB pack here); left to a later commit,
            // part of that wait leaves the repack (3–8 % of repack --all in interleaved runs).
            Ok(Unlinking(None))
        });
        p.finish();
        result
    }

    /// Removes leftovers: stale sandbox entries, loose copies of packed objects, uncommitted pack
    /// tails, temporary files; optionally compacts the index.
    pub fn clean(&self, opts: &CleanOptions, p: &dyn Progress) -> Result<CleanReport> {
        let store = self.store;
        let root = store.path();
        let mut report = CleanReport {
            index_bytes_before: index_bytes(root),
            ..Default::default()
        };
        p.start("clean", None, Unit::Objects);
        for path in loose::stale_sandbox_entries(root, opts.sandbox_grace)? {
            let r = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            r.at("remove sandbox leftover", &path)?;
            report.sandbox_removed += 1;
        }
        let loose_keys = loose::list_loose(root, store.config().loose_prefix_len)?;
        let packed: Vec<Key> = {
            let mut index = self.index();
            let mut v = Vec::new();
            for k in loose_keys {
                if index.get_recent(&k)?.is_some() {
                    v.push(k);
                }
            }
            v
        };
        report.loose_copies_removed = remove_loose(store, &packed);
        loose::remove_empty_prefix_dirs(root, store.config().loose_prefix_len)?;
        p.advance(report.loose_copies_removed);
        let mut index = self.index();
        // Ids reserved by write batches that never published them (a crash): the row goes, and
        // the file if the crash came after its rename.
        let reserved = index.reserved_packs()?;
        if !reserved.is_empty() {
            let tx = index.begin()?;
            // A live batch before its rename holds its sandbox file locked; after the rename it
            // holds the write lock (which this transaction has). With one alive, reservations
            // wait for the next clean: the live one's cannot be told from the dead ones'.
            let reserved = if loose::live_batch_exists(root)? {
                Vec::new()
            } else {
                reserved
            };
            for id in reserved {
                if tx.is_reserved(id)? {
                    let path = pack::pack_path(root, id);
                    match fs::remove_file(&path) {
                        Ok(()) => report.stray_packs_removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io("remove unpublished batch pack", &path, e)),
                    }
                    tx.remove_pack(id)?;
                    report.pack_rows_removed += 1;
                }
            }
            tx.commit()?;
        }
        for row in index.packs()? {
            let path = pack::pack_path(root, row.id);
            let len = fsutil::file_len_or_zero(&path);
            if !row.sealed && len > row.end_bytes {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .at("open pack", &path)?;
                f.set_len(row.end_bytes)
                    .at("truncate crash tail of", &path)?;
                fsutil::datasync(&f, &path)?;
                report.tail_bytes_truncated += len - row.end_bytes;
            } else if !row.sealed && len == row.end_bytes {
                // The pack still open may hold blocks reserved for its next records; a pack
                // gives them back when it is sealed, this one now.
                fsutil::release_reserved(&path, len)?;
            }
        }
        // Pack rows whose file was never created (a crash right after registering a new
        // pack) and that nothing points at. Whether anything points at a pack takes a pass over
        // every object row, so it is asked only when such a row exists.
        let fileless: Vec<PackRow> = index
            .packs()?
            .into_iter()
            .filter(|row| {
                row.end_bytes == PACK_HEADER_BYTES as u64 && !pack::pack_path(root, row.id).exists()
            })
            .collect();
        if !fileless.is_empty() {
            let live = index.live_bytes_per_pack()?;
            for row in fileless {
                if !live.contains_key(&row.id) {
                    let tx = index.begin()?;
                    tx.remove_pack(row.id)?;
                    tx.commit()?;
                    report.pack_rows_removed += 1;
                }
            }
        }
        // Pack files the index does not know: left by a crash between a repack's index switch
        // and the unlink of the old pack, or by an emptied pack. Removed only when the index
        // accounts for every object record in them; otherwise they may hold the only copy of
        // something, and are left for rebuild-index (validate reports them).
        // Reserved ids count: a batch publishing right now has its file in place before its
        // rows. One read, or a batch's pack turning from reserved to published in between
        // would be missed by both.
        let known: HashSet<u64> = index.pack_ids()?.into_iter().collect();
        // Read only when a stray pack turns up: every tombstone row is a few milliseconds per
        // 4000, most of a clean that finds nothing.
        let mut kills: Option<Kills> = None;
        for id in pack::pack_ids_on_disk(root)? {
            if known.contains(&id) {
                continue;
            }
            let kills = match &mut kills {
                Some(k) => &*k,
                None => kills.insert(Kills::new(&index.tombstones()?)),
            };
            let mut records = HashMap::new();
            let mut stray_tombstones = Vec::new();
            let mut damaged = Vec::new();
            if rebuild_scan_pack(store, id, &mut records, &mut stray_tombstones, &mut damaged)
                .is_err()
                || !damaged.is_empty()
            {
                report.stray_packs_kept.push(id);
                continue;
            }
            let mut accounted = true;
            for (key, row) in &records {
                // Accounted for: killed, or live in another pack. A row pointing into this very
                // pack means the index does know it after all: never remove it then.
                let killed = kills.kills(key, row.position());
                let elsewhere = index.get_recent(key)?.is_some_and(|r| r.pack != id);
                if !killed && !elsewhere {
                    accounted = false;
                    break;
                }
            }
            if accounted {
                let path = pack::pack_path(root, id);
                fs::remove_file(&path).at("remove stray pack", &path)?;
                report.stray_packs_removed += 1;
            } else {
                report.stray_packs_kept.push(id);
            }
        }
        let packs_dir = root.join(PACKS_DIR);
        for e in fs::read_dir(&packs_dir).at("list", &packs_dir)? {
            let e = e.at("list", &packs_dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                fs::remove_file(e.path()).at("remove temporary file", e.path())?;
                report.temp_files_removed += 1;
            }
        }
        // The deletes `delete` left to maintenance (see `IndexTx::mark_gone`).
        if index.gone_any()? {
            let tx = index.begin()?;
            report.deleted_rows_folded = tx.fold_gone()?;
            tx.commit()?;
        }
        let compaction = index.checkpoint_and_vacuum(opts.vacuum)?;
        report.index_rewritten = compaction.rewritten;
        report.index_pages_freed = compaction.pages_freed;
        drop(index);
        report.index_bytes_after = index_bytes(root);
        p.finish();
        Ok(report)
    }

    /// Recreates the index from the pack files alone.
    pub fn rebuild_index(&self, p: &dyn Progress) -> Result<RebuildReport> {
        let store = self.store;
        let root = store.path();
        let mut report = RebuildReport::default();
        let ids = pack::pack_ids_on_disk(root)?;
        p.start("rebuild", Some(ids.len() as u64), Unit::Packs);
        // Latest record per key, tombstones, and pack rows, gathered before touching the index.
        let mut latest: HashMap<Key, IndexRow> = HashMap::new();
        let mut tombstones: Vec<TombstoneRow> = Vec::new();
        let mut pack_rows: Vec<PackRow> = Vec::new();
        let mut scan = |id: u64,
                        latest: &mut HashMap<Key, IndexRow>,
                        tombstones: &mut Vec<TombstoneRow>,
                        pack_rows: &mut Vec<PackRow>| {
            let mut damaged = Vec::new();
            let scanned = rebuild_scan_pack(store, id, latest, tombstones, &mut damaged);
            report.damaged_records.extend(
                damaged
                    .into_iter()
                    .map(|offset| format!("pack {id} offset {offset}")),
            );
            match scanned {
                Ok(row) => pack_rows.push(row),
                Err(e) => report.unreadable_packs.push(e.to_string()),
            }
        };
        let mut scanned: HashSet<u64> = HashSet::new();
        for id in ids {
            scan(id, &mut latest, &mut tombstones, &mut pack_rows);
            scanned.insert(id);
            p.advance(1);
        }
        // A broken index file cannot even take a DELETE: start it afresh.
        let mut index = self.index();
        let healthy = index.quick_check().map(|v| v.is_empty()).unwrap_or(false);
        let index_high_water = if healthy {
            index.pack_id_high_water().unwrap_or(0)
        } else {
            0
        };
        if !healthy {
            for suffix in ["", "-wal", "-shm"] {
                let path = root.join(format!("{INDEX_FILE}{suffix}"));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove broken index", path, e)),
                }
            }
            *index = Index::open(root, &store.config().container_id)?;
            index.use_bulk_cache()?;
            store.reopen_index()?;
        }
        let tx = index.begin()?;
        // Write batches publish packs without the maintenance lock; under the write lock no
        // more can appear, so the packs published since the scan are read now.
        for id in pack::pack_ids_on_disk(root)? {
            if scanned.insert(id) {
                scan(id, &mut latest, &mut tombstones, &mut pack_rows);
            }
        }
        let kills = Kills::new(&tombstones);
        let index_high_water = if healthy {
            index_high_water.max(tx.pack_id_high_water()?)
        } else {
            0
        };
        tx.clear_all()?;
        for row in &pack_rows {
            tx.put_pack(row)?;
        }
        if let Some(max) = pack_rows.iter().map(|r| r.id).max() {
            tx.set_pack_id_high_water(max.max(index_high_water))?;
        }
        tx.put_tombstones(&tombstones)?;
        let latest_len = latest.len();
        let live: Vec<(Key, IndexRow)> = latest
            .into_iter()
            .filter(|(key, row)| !kills.kills(key, row.position()))
            .collect();
        report.dead_records += (latest_len - live.len()) as u64;
        report.objects += live.len() as u64;
        tx.write_rows(RowWrite::Replace, &live)?;
        tx.commit()?;
        drop(index);
        self.store.index().end_snapshot()?;
        report.packs = pack_rows.len() as u64;
        report.tombstones = tombstones.len() as u64;
        p.finish();
        Ok(report)
    }
}

/// Reads one pack for `rebuild_index`: from its sealed table when it has a valid one, else by
/// scanning its records.
fn rebuild_scan_pack(
    store: &Store,
    id: u64,
    latest: &mut HashMap<Key, IndexRow>,
    tombstones: &mut Vec<TombstoneRow>,
    damaged: &mut Vec<u64>,
) -> Result<PackRow> {
    let path = pack::pack_path(store.path(), id);
    let file = File::open(&path).at("open pack", &path)?;
    let header = pack::read_pack_header(&file, id)?;
    if header.hash != store.config().hash
        || header.container_id != store.config().container_id_bytes()
        || header.pack_id != id
    {
        return Err(Error::CorruptPack {
            pack: id,
            reason: "pack header belongs to another store or pack id".into(),
        });
    }
    let len = file.metadata().at("stat", &path)?.len();
    let mut note =
        |offset: u64, h: &crate::format::RecordHeader, payload: Option<&[u8]>| -> Result<()> {
            let pos = Position { pack: id, offset };
            match h.kind {
                RecordKind::Object => {
                    let row = IndexRow {
                        pack: id,
                        offset,
                        raw_len: h.raw_len,
                        stored_len: h.stored_len,
                        flags: h.flags,
                    };
                    let e = latest.entry(h.key).or_insert(row);
                    if row.position() > e.position() {
                        *e = row;
                    }
                }
                RecordKind::Tombstone => {
                    let payload = match payload {
                        Some(p) => p.to_vec(),
                        None => {
                            let mut b = vec![0u8; crate::format::TOMBSTONE_PAYLOAD_BYTES as usize];
                            pack::read_exact_at(
                                &file,
                                &mut b,
                                offset + crate::format::RECORD_HEADER_BYTES as u64,
                                id,
                            )?;
                            b
                        }
                    };
                    let before = crate::format::decode_tombstone(&payload).map_err(|reason| {
                        Error::CorruptRecord {
                            pack: id,
                            offset,
                            reason,
                        }
                    })?;
                    tombstones.push(TombstoneRow {
                        key: h.key,
                        at: pos,
                        before,
                    });
                }
            }
            Ok(())
        };
    if let Ok(Some((_footer, table))) = pack::read_sealed_table(&file, id, len) {
        // A damaged entry costs that record only, never the rest of the pack.
        for (key, offset) in table {
            let mut hb = [0u8; crate::format::RECORD_HEADER_BYTES];
            let header = pack::read_exact_at(&file, &mut hb, offset, id)
                .ok()
                .and_then(|_| crate::format::RecordHeader::decode(&hb).ok())
                .filter(|h| h.key == key);
            match header {
                Some(h) => match note(offset, &h, None) {
                    Err(e) if e.is_corruption() => damaged.push(offset),
                    other => other?,
                },
                None => damaged.push(offset),
            }
        }
        return Ok(PackRow {
            id,
            sealed: true,
            end_bytes: len,
        });
    }
    let (end, bad) = pack::scan_records_resilient(&file, id, len, &mut |rec| match note(
        rec.offset,
        &rec.header,
        Some(rec.payload),
    ) {
        Err(e) if e.is_corruption() => Ok(()),
        other => other,
    })?;
    damaged.extend(bad);
    Ok(PackRow {
        id,
        sealed: false,
        end_bytes: end,
    })
}

/// Reads and encodes one loose object for packing. `Ok(None)`: the file is gone.
/// `Err("corrupt:...")`: its content does not match its name. `Err(other)`: unreadable now.
/// Decodes a record read for a move and checks it: its checksum, and that its header matches
/// the index row that pointed at it.
fn verified_record<'b>(
    rec: &'b [u8],
    key: &Key,
    irow: &IndexRow,
) -> Result<(crate::format::RecordHeader, &'b [u8])> {
    let (header, payload) =
        crate::format::decode_record(rec).map_err(|reason| Error::CorruptRecord {
            pack: irow.pack,
            offset: irow.offset,
            reason,
        })?;
    pack::check_header(&header, key, irow)?;
    Ok((header, payload))
}

/// Splits off the front of `rest` the loose objects to read in one round: up to
/// [`PARALLEL_CHUNK_OBJECTS`], ending at the one whose file brings the round's bytes to
/// [`CHUNK_IN_MEMORY_BYTES_MAX`] (their sizes asked of the file system, in parallel), with
/// each one's size (`None` where the file system could not say).
fn take_loose_chunk<'k>(store: &Store, rest: &mut &'k [Key]) -> (&'k [Key], Vec<Option<u64>>) {
    let candidates = &rest[..rest.len().min(PARALLEL_CHUNK_OBJECTS)];
    let mut sizes: Vec<Option<u64>> = candidates
        .par_iter()
        .map(|k| fs::metadata(store.loose_path(k)).ok().map(|m| m.len()))
        .collect();
    // A file that cannot be asked counts as empty here; `prepare_loose` asks again and says why.
    let len = in_memory_chunk_len(&sizes.iter().map(|s| s.unwrap_or(0)).collect::<Vec<_>>());
    sizes.truncate(len);
    let (chunk, after) = rest.split_at(len);
    *rest = after;
    (chunk, sizes)
}

/// How many of the objects of `sizes` (bytes each) one round takes: all of them, or up to the
/// one that brings the bytes held in memory to [`CHUNK_IN_MEMORY_BYTES_MAX`]; objects too large
/// for memory are streamed and count for nothing. A round of a non-empty list takes one at
/// least.
fn in_memory_chunk_len(sizes: &[u64]) -> usize {
    let mut held = 0u64;
    for (i, &size) in sizes.iter().enumerate() {
        if size <= IN_MEMORY_OBJECT_BYTES_MAX {
            held += size;
        }
        if held >= CHUNK_IN_MEMORY_BYTES_MAX {
            return i + 1;
        }
    }
    sizes.len()
}

/// Reads, checks and encodes one loose object; `size` is its file's size where already known
/// (asked again otherwise, to say why it cannot be).
fn prepare_loose(
    store: &Store,
    key: &Key,
    size: Option<u64>,
    policy: Compression,
) -> std::result::Result<Option<Prepared>, String> {
    let path = store.loose_path(key);
    let size = match size.map_or_else(|| fs::metadata(&path).map(|m| m.len()), Ok) {
        Ok(size) => size,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    if size > IN_MEMORY_OBJECT_BYTES_MAX {
        return Ok(Some(Prepared::Large { path }));
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    // Always re-hash: a loose file damaged since it was written must never be packed under
    // its name (packed reads check record checksums, which would then vouch for wrong bytes).
    let actual = store.config().hash.hash(&bytes);
    if actual != *key {
        return Err(format!(
            "corrupt:{}: content hashes to {actual}",
            path.display()
        ));
    }
    let raw_len = bytes.len() as u64;
    let enc = match policy {
        Compression::None => compress::Encoded {
            payload: bytes,
            compressed: false,
        },
        _ => compress::encode(&bytes, policy)
            .map_err(|e| format!("{}: compress: {e}", path.display()))?,
    };
    Ok(Some(Prepared::InMemory { raw_len, enc }))
}

/// Unlinks loose copies (best effort: one held open elsewhere stays until clean). Returns count.
fn remove_loose(store: &Store, keys: &[Key]) -> u64 {
    let paths: Vec<PathBuf> = keys.iter().map(|k| store.loose_path(k)).collect();
    fsutil::remove_files(&paths)
}

fn index_bytes(root: &Path) -> u64 {
    fsutil::file_len_or_zero(&root.join(INDEX_FILE))
        + fsutil::file_len_or_zero(&root.join(format!("{INDEX_FILE}-wal")))
}

/// What happened to a streamed object.
enum Streamed {
    Written {
        raw_len: u64,
        stored_len: u64,
    },
    /// Already stored (or written earlier in this call): nothing kept.
    Duplicate,
    /// The content does not hash to the key it was expected to have: nothing kept.
    Mismatch {
        actual: Key,
    },
}

/// Streams one large object into the open pack (compressing frame by frame when asked), in
/// constant memory. Returns the key and what happened.
#[allow(clippy::too_many_arguments)]
fn append_stream(
    app: &mut Appender<'_>,
    index: &mut Index,
    reader: &mut dyn Read,
    name: &str,
    hash: crate::key::HashAlgorithm,
    policy: Compression,
    session: &KeySet,
    expect: Option<Key>,
) -> Result<(Key, Streamed)> {
    let level = match policy {
        Compression::None => None,
        Compression::Zstd { level } | Compression::Auto { level } => Some(level),
    };
    let mut stored = 0u64;
    let mut raw_total = 0u64;
    let mut fill = |sink: &mut pack::Sink<'_>| -> Result<(Key, u64, bool)> {
        let mut h = hash.hasher();
        let chunk_bytes = if level.is_some() {
            FRAME_RAW_BYTES as usize
        } else {
            STREAM_CHUNK_BYTES
        };
        let mut buf = vec![0u8; chunk_bytes];
        let mut sizes = Vec::new();
        let mut comp = match level {
            Some(l) => Some(compress::compressor(l).map_err(|e| Error::io("compress", name, e))?),
            None => None,
        };
        loop {
            let n = read_full(reader, &mut buf).at("read", name)?;
            if n == 0 && raw_total > 0 {
                break;
            }
            h.update(&buf[..n]);
            raw_total += n as u64;
            match comp.as_mut() {
                Some(c) => {
                    let frame = c
                        .compress(&buf[..n])
                        .map_err(|e| Error::io("compress", name, e))?;
                    sizes.push(frame.len() as u32);
                    sink(&frame)?;
                    stored += frame.len() as u64;
                }
                None => {
                    sink(&buf[..n])?;
                    stored += n as u64;
                }
            }
            if n < chunk_bytes {
                break;
            }
        }
        if comp.is_some() {
            let mut table = Vec::new();
            crate::format::encode_frame_table(&sizes, &mut table);
            sink(&table)?;
            stored += table.len() as u64;
        }
        Ok((h.finish(), raw_total, comp.is_some()))
    };
    let mut mismatch = None;
    let mut keep = |key: &Key, index: &mut Index| -> Result<bool> {
        if let Some(want) = expect {
            if want != *key {
                mismatch = Some(*key);
                return Ok(false);
            }
        }
        Ok(!session.contains(key) && index.get_recent(key)?.is_none())
    };
    let (key, at) = app.append_streamed(index, &mut fill, &mut keep)?;
    let outcome = match (at, mismatch) {
        (_, Some(actual)) => Streamed::Mismatch { actual },
        (Some(_), None) => Streamed::Written {
            raw_len: raw_total,
            stored_len: stored,
        },
        (None, None) => Streamed::Duplicate,
    };
    Ok((key, outcome))
}

/// Fills `buf` as far as the reader allows; returns bytes read (short only at end of stream).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A small object of [`Maintenance::write_packed`]'s input, read, hashed and encoded:
/// (input index, key, raw length, encoded).
type PreparedObject = (usize, Key, u64, std::io::Result<compress::Encoded>);

/// One chunk of [`Maintenance::write_packed`]'s input: small objects read, hashed and encoded,
/// large ones still to be streamed.
struct ReadChunk {
    base: usize,
    n: usize,
    prepared: Vec<PreparedObject>,
    large: Vec<(usize, Source)>,
}

/// A chunk being hashed, or already hashed where it could not be handed to the pool.
enum Hashing {
    OnPool(HashingChunk),
    Done(ReadChunk),
}

/// A small object taken from the sources: its bytes, or the file they are still to be read from.
enum Small {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl Small {
    fn into_bytes(self) -> Result<Vec<u8>> {
        match self {
            Small::Bytes(b) => Ok(b),
            Small::File(path) => fs::read(&path).at("read", &path),
        }
    }
}

/// One chunk of input taken from the sources: small objects (files not read yet), not hashed.
struct TakenChunk {
    base: usize,
    n: usize,
    small: Vec<(usize, Small)>,
    large: Vec<(usize, Source)>,
}

/// A chunk whose small objects are being hashed on rayon's threads (see
/// [`TakenChunk::hash_on_pool`]).
struct HashingChunk {
    base: usize,
    n: usize,
    large: Vec<(usize, Source)>,
    prepared: std::sync::mpsc::Receiver<Result<Vec<PreparedObject>>>,
}

impl TakenChunk {
    /// Hashes and encodes the small objects on every core, and waits for them.
    fn hash_here(self, hash: crate::key::HashAlgorithm, policy: Compression) -> Result<ReadChunk> {
        Ok(ReadChunk {
            base: self.base,
            n: self.n,
            prepared: prepare_small(self.small, hash, policy)?,
            large: self.large,
        })
    }

    /// Starts hashing and encoding the small objects on rayon's threads and returns at once,
    /// so that the caller's thread can append the chunk before meanwhile.
    fn hash_on_pool(self, hash: crate::key::HashAlgorithm, policy: Compression) -> HashingChunk {
        let (done, prepared) = std::sync::mpsc::sync_channel(1);
        let small = self.small;
        rayon::spawn(move || {
            // The receiver is gone only when the caller already failed.
            let _ = done.send(prepare_small(small, hash, policy));
        });
        HashingChunk {
            base: self.base,
            n: self.n,
            large: self.large,
            prepared,
        }
    }
}

impl HashingChunk {
    fn wait(self) -> Result<ReadChunk> {
        let prepared = self.prepared.recv().map_err(|_| {
            Error::InvalidArgument("write_packed: a hashing task ended without its result".into())
        })??;
        Ok(ReadChunk {
            base: self.base,
            n: self.n,
            prepared,
            large: self.large,
        })
    }
}

/// Takes up to [`PARALLEL_CHUNK_OBJECTS`] sources, ending at the small one that brings the
/// chunk's bytes to [`CHUNK_IN_MEMORY_BYTES_MAX`] (files count by their size: they are read
/// later, on the pool); `base` is the input index of the first. `None` when the sources are
/// exhausted.
fn take_chunk(
    sources: &mut dyn Iterator<Item = Result<Source>>,
    base: usize,
) -> Result<Option<TakenChunk>> {
    let mut small: Vec<(usize, Small)> = Vec::new();
    let mut large: Vec<(usize, Source)> = Vec::new();
    let mut held = 0u64;
    let mut i = 0;
    while i < PARALLEL_CHUNK_OBJECTS && held < CHUNK_IN_MEMORY_BYTES_MAX {
        let Some(src) = sources.next() else {
            break;
        };
        match src? {
            Source::Bytes(b) => {
                held += b.len() as u64;
                small.push((base + i, Small::Bytes(b)))
            }
            Source::File(path) => {
                let len = fs::metadata(&path).at("stat", &path)?.len();
                if len <= IN_MEMORY_OBJECT_BYTES_MAX {
                    held += len;
                    small.push((base + i, Small::File(path)));
                } else {
                    large.push((base + i, Source::File(path)));
                }
            }
            Source::Reader { reader, size_hint } if size_hint > IN_MEMORY_OBJECT_BYTES_MAX => {
                large.push((base + i, Source::Reader { reader, size_hint }))
            }
            Source::Reader { reader, .. } => {
                // Read no further than an object held in memory may be: a reader longer than
                // it said is streamed after all, the bytes read so far in front of the rest.
                let mut b = Vec::new();
                let mut head = reader.take(IN_MEMORY_OBJECT_BYTES_MAX + 1);
                head.read_to_end(&mut b).at("read source", "reader")?;
                let reader = head.into_inner();
                if b.len() as u64 > IN_MEMORY_OBJECT_BYTES_MAX {
                    large.push((
                        base + i,
                        Source::Reader {
                            reader: Box::new(std::io::Cursor::new(b).chain(reader)),
                            size_hint: u64::MAX,
                        },
                    ));
                } else {
                    held += b.len() as u64;
                    small.push((base + i, Small::Bytes(b)));
                }
            }
        }
        i += 1;
    }
    let n = small.len() + large.len();
    if n == 0 {
        return Ok(None);
    }
    Ok(Some(TakenChunk {
        base,
        n,
        small,
        large,
    }))
}

/// Hashes and encodes small objects on every core, in the groups of
/// `HashAlgorithm::hash_groups` (objects hashed together fill the SIMD lanes that one small
/// object leaves empty).
fn prepare_small(
    small: Vec<(usize, Small)>,
    hash: crate::key::HashAlgorithm,
    policy: Compression,
) -> Result<Vec<PreparedObject>> {
    // Files are read here, on the pool's threads, several at once: read one after another on
    // the caller's thread, a tree not in the page cache was imported at the pace of one read in
    // flight (60,000 files of 1-16 KiB: 5.0 s, against 4.8 s for `cat` of them all; read
    // here, 3.7-4.0 s).
    let read = |(i, s): (usize, Small)| s.into_bytes().map(|b| (i, b));
    let small: Vec<(usize, Vec<u8>)> = if small.iter().any(|(_, s)| matches!(s, Small::File(_))) {
        small.into_par_iter().map(read).collect::<Result<_>>()?
    } else {
        small.into_iter().map(read).collect::<Result<_>>()?
    };
    let ranges = crate::key::HashAlgorithm::hash_groups(small.iter().map(|(_, b)| b.len()));
    let mut objects = small.into_iter();
    let groups: Vec<Vec<(usize, Vec<u8>)>> = ranges
        .iter()
        .map(|r| objects.by_ref().take(r.len()).collect())
        .collect();
    Ok(groups
        .into_par_iter()
        .flat_map_iter(|group| {
            let keys = hash.hash_all(&group.iter().map(|(_, b)| b.as_slice()).collect::<Vec<_>>());
            group.into_iter().zip(keys).map(move |((i, b), key)| {
                let raw_len = b.len() as u64;
                let enc = match policy {
                    Compression::None => Ok(compress::Encoded {
                        payload: b,
                        compressed: false,
                    }),
                    _ => compress::encode(&b, policy),
                };
                (i, key, raw_len, enc)
            })
        })
        .collect())
}

/// How `rewrite_packs` writes the records it moves.
struct Rewrite {
    /// Recompress them (`None`: each record as it is stored).
    compression: Option<Compression>,
    /// Around the page cache (see [`RepackOptions::bypass_page_cache`]).
    bypass_page_cache: bool,
    /// Bytes of old packs per index commit.
    commit_bytes: u64,
    /// Rows moved between two stagings (see [`RepackOptions::stage_rows_min`]).
    stage_rows_min: usize,
}

/// An old pack a repack has copied, until the commit that retires it.
struct Rewritten {
    id: u64,
    path: PathBuf,
    /// Rows of its deleted keys, dropped at that commit.
    dead: Vec<Key>,
    /// The staged transaction the drop of `dead` went into while the copy ran, if it did.
    dead_staged_in: Option<u64>,
}

/// Old pack files being unlinked on a thread of their own after the commit that moved their
/// records, while the caller goes on: [`Unlinking::wait`] returns once they are gone.
struct Unlinking(Option<std::thread::JoinHandle<Result<()>>>);

impl Unlinking {
    /// Unlinks `paths` on a new thread, or here when no thread can be had.
    fn spawn(paths: Vec<PathBuf>) -> Result<Unlinking> {
        let paths = std::sync::Arc::new(paths);
        let theirs = std::sync::Arc::clone(&paths);
        match std::thread::Builder::new()
            .name("basin-unlink".into())
            .spawn(move || remove_old_packs(&theirs))
        {
            Ok(handle) => Ok(Unlinking(Some(handle))),
            Err(_) => {
                remove_old_packs(&paths)?;
                Ok(Unlinking(None))
            }
        }
    }

    /// The first unlink failure, if any.
    fn wait(self) -> Result<()> {
        match self.0 {
            None => Ok(()),
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(Error::InvalidArgument("unlink thread panicked".into()))),
        }
    }
}

fn remove_old_packs(paths: &[PathBuf]) -> Result<()> {
    for path in paths {
        fs::remove_file(path).at("remove old pack", path)?;
    }
    Ok(())
}

/// How many of the packs of `sizes` (file bytes, in repack order) go into the commit that
/// already holds `committing_bytes`: packs are added until the commit reaches `commit_bytes`,
/// the pack that reaches it included, as `rewrite_packs` commits.
fn commit_group_len(sizes: &[u64], committing_bytes: u64, commit_bytes: u64) -> usize {
    let mut bytes = committing_bytes;
    for (n, size) in sizes.iter().enumerate() {
        bytes += size;
        if bytes >= commit_bytes {
            return n + 1;
        }
    }
    sizes.len()
}

/// How many of the packs of `sizes` one pass over the index gathers the rows of: the packs of
/// the coming commit (which holds `committing_bytes` already), and those of the commits after
/// it as long as their rows (`rows`, per pack; empty: unknown) stay within `rows_max`.
///
/// The index has no index by pack, so every pass reads every row: one pass per commit would
/// read a store of many large packs over and over. The rows gathered wait in memory, as the
/// rows of one pack always did.
fn scan_len(
    sizes: &[u64],
    rows: &[u64],
    committing_bytes: u64,
    commit_bytes: u64,
    rows_max: u64,
) -> usize {
    let mut len = commit_group_len(sizes, committing_bytes, commit_bytes);
    if rows.len() != sizes.len() {
        return len;
    }
    let mut gathered: u64 = rows[..len].iter().sum();
    while len < sizes.len() {
        let next = commit_group_len(&sizes[len..], 0, commit_bytes);
        let more: u64 = rows[len..len + next].iter().sum();
        if gathered + more > rows_max {
            break;
        }
        gathered += more;
        len += next;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_ends_at_the_object_that_fills_its_memory() {
        let mib = 1u64 << 20;
        let max = CHUNK_IN_MEMORY_BYTES_MAX;
        assert_eq!(in_memory_chunk_len(&[]), 0);
        assert_eq!(in_memory_chunk_len(&[1, 2, 3]), 3);
        assert_eq!(in_memory_chunk_len(&vec![mib; 100]), (max / mib) as usize);
        let half = max / 2;
        assert!(half <= IN_MEMORY_OBJECT_BYTES_MAX);
        assert_eq!(in_memory_chunk_len(&[half, half - 1, 1, 1]), 3);
        assert_eq!(in_memory_chunk_len(&[half, half, half]), 2);
        // Objects streamed instead of held count for nothing.
        let huge = IN_MEMORY_OBJECT_BYTES_MAX + 1;
        assert_eq!(in_memory_chunk_len(&[huge, huge, huge, 7]), 4);
    }

    #[test]
    fn write_packed_takes_chunks_by_count_and_by_bytes_without_losing_a_source() {
        let mib = 1usize << 20;
        let per_chunk = (CHUNK_IN_MEMORY_BYTES_MAX / mib as u64) as usize;
        let cases: [(usize, usize, Vec<usize>); 3] = [
            // (sources, bytes each, objects per chunk)
            (
                100,
                mib,
                vec![per_chunk, per_chunk, per_chunk, 100 - 3 * per_chunk],
            ),
            (
                1000,
                10,
                vec![PARALLEL_CHUNK_OBJECTS, 1000 - PARALLEL_CHUNK_OBJECTS],
            ),
            (0, 10, vec![]),
        ];
        for (count, size, want) in cases {
            let mut sources = (0..count).map(|i| Ok(Source::Bytes(vec![i as u8; size])));
            let mut got = Vec::new();
            let mut base = 0;
            while let Some(chunk) = take_chunk(&mut sources, base).expect("take_chunk") {
                assert_eq!(chunk.base, base, "{count} of {size} B: chunk base");
                for (j, (i, small)) in chunk.small.iter().enumerate() {
                    assert_eq!(*i, base + j, "{count} of {size} B: input index");
                    let Small::Bytes(b) = small else {
                        panic!("{count} of {size} B: bytes taken as a file")
                    };
                    assert!(
                        b.len() == size && b[0] == *i as u8,
                        "{count} of {size} B: source {i}"
                    );
                }
                got.push(chunk.n);
                base += chunk.n;
            }
            assert_eq!(got, want, "{count} sources of {size} B");
        }
    }

    #[test]
    fn commit_groups_end_with_the_pack_that_reaches_the_commit_size() {
        let c = REPACK_COMMIT_BYTES;
        let half = c / 2;
        assert_eq!(commit_group_len(&[], 0, c), 0);
        assert_eq!(commit_group_len(&[1, 2, 3], 0, c), 3);
        assert_eq!(commit_group_len(&[half, half, half], 0, c), 2);
        assert_eq!(commit_group_len(&[half, half, half], half, c), 1);
        assert_eq!(commit_group_len(&[c * 3, 1], 0, c), 1);
        assert_eq!(commit_group_len(&[half - 1, half, 7, 7], 0, c), 3);
        assert_eq!(commit_group_len(&[5, 5, 5], 0, 10), 2);
    }

    #[test]
    fn a_scan_takes_whole_commits_while_their_rows_fit() {
        // Commits of 10 bytes: packs of 10 bytes each make a commit of their own.
        let sizes = [10, 10, 10, 10];
        // Rows unknown (one commit in all): the next commit only.
        assert_eq!(scan_len(&sizes, &[], 0, 10, 100), 1);
        // The next commit always, whatever its rows; then more while the rows fit.
        assert_eq!(scan_len(&sizes, &[500, 1, 1, 1], 0, 10, 100), 1);
        assert_eq!(scan_len(&sizes, &[40, 40, 40, 40], 0, 10, 100), 2);
        assert_eq!(scan_len(&sizes, &[40, 30, 30, 41], 0, 10, 100), 3);
        assert_eq!(scan_len(&sizes, &[1, 1, 1, 1], 0, 10, 100), 4);
        // Commits of two packs are taken whole or not at all.
        assert_eq!(
            scan_len(&[5, 5, 5, 5, 5], &[30, 30, 30, 30, 30], 0, 10, 100),
            2
        );
        assert_eq!(
            scan_len(&[5, 5, 5, 5, 5], &[30, 20, 25, 25, 30], 0, 10, 100),
            4
        );
        // A commit already under way ends sooner.
        assert_eq!(scan_len(&[5, 5, 5], &[1, 1, 1], 5, 10, 0), 1);
    }
}
