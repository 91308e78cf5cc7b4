//! A hash run over one root: walk → skip unchanged → hash in parallel → catalog batches and the
//! caller's observer, in walk order.
//!
//! Resume contract: rows are committed in batches of `batch_rows` (or every `batch_interval`);
//! a run killed at any instant loses at most the batch in progress; the rerun skips every file
//! whose committed row matches its (size, mtime_ns, inode), so it ends with the same rows as an
//! uninterrupted run.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use basin_hash::{read::hash_file, AlgoSpec, Digest, ReadOptions};

use crate::catalog::{path_key, CatalogStore, FileRow, KnownFiles, RunCounters};
use crate::lock::RootLock;
use crate::pipeline::run_ordered;
use crate::walk::{walk, FileMeta, Filters, ScanRoot, WalkItem};
use crate::ScanError;

/// Environment variable read by the kill tests: after committing at least this many rows the
/// run prints `basin-test: holding` on stderr and stops making progress, so a test can kill it
/// at a known point without sleeping. Unset in normal use.
pub const TEST_HOLD_ENV: &str = "BASIN_TEST_HOLD_AFTER_ROWS";

#[derive(Debug, Clone)]
pub struct ScanOptions {
    pub specs: Vec<AlgoSpec>,
    /// Files hashed at once.
    pub jobs: usize,
    pub filters: Filters,
    pub read: ReadOptions,
    /// Hash files even when the catalog says they are unchanged.
    pub rehash: bool,
    /// Rows per catalog transaction.
    pub batch_rows: usize,
    /// Longest time rows wait for their transaction.
    pub batch_interval: Duration,
    /// Also hash the members of archives and compressed files.
    pub inside_archives: bool,
    /// Hash only these relative paths (a retry of failed files) instead of walking.
    pub only_paths: Option<Vec<String>>,
    /// Recorded on the run row.
    pub command: String,
}

impl ScanOptions {
    pub fn new(specs: Vec<AlgoSpec>) -> ScanOptions {
        ScanOptions {
            specs,
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            filters: Filters::default(),
            read: ReadOptions::default(),
            rehash: false,
            batch_rows: 1000,
            batch_interval: Duration::from_secs(1),
            inside_archives: false,
            only_paths: None,
            command: String::new(),
        }
    }
}

/// What happened to one file (or walk entry).
#[derive(Debug, Clone)]
pub struct FileOutcome {
    pub rel_path: String,
    pub meta: FileMeta,
    /// Digests in spec order, or why the file could not be hashed.
    pub result: Result<Vec<Digest>, String>,
    /// The walk could not read this entry (a folder, usually); not stored in the catalog.
    pub walk_error: bool,
    /// Archive members hashed with `inside_archives`.
    pub members: Vec<MemberOutcome>,
}

#[derive(Debug, Clone)]
pub struct MemberOutcome {
    /// `<archive rel path>!<member path>`.
    pub rel_path: String,
    pub size_bytes: u64,
    pub result: Result<Vec<Digest>, String>,
}

/// Counts for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScanProgress {
    pub files_discovered: u64,
    pub bytes_discovered: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_skipped: u64,
    pub bytes_skipped: u64,
    pub walk_finished: bool,
}

/// Receives results on the caller's thread, in walk order.
pub trait ScanObserver {
    fn file_done(&mut self, root: &ScanRoot, outcome: &FileOutcome) -> io::Result<()>;
    fn progress(&mut self, _progress: &ScanProgress) {}
}

#[derive(Debug, Clone, Default)]
pub struct ScanSummary {
    pub counters: RunCounters,
    pub members_hashed: u64,
    pub walk_errors: u64,
    pub run_id: Option<i64>,
    pub elapsed: Duration,
}

/// Hashes one file. Never panics on what it reads; every failure becomes `Err(message)`.
pub fn hash_one(
    path: &Path,
    walked: Option<FileMeta>,
    specs: &[AlgoSpec],
    read: &ReadOptions,
    buffer: &mut Vec<u8>,
) -> Result<(FileMeta, Vec<Digest>), String> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A file swapped for a FIFO after the walk must not block the run.
        options.custom_flags(libc::O_NONBLOCK);
    }
    let mut file: File = options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "vanished before it was read".to_string(),
        _ => format!("cannot open: {e}"),
    })?;
    // With the walk's lstat in hand, one fstat after reading is enough: if it still matches, the
    // bytes read are the file the walk saw. Otherwise hash again with a stat before and after.
    let meta = match walked {
        Some(meta) => meta,
        None => {
            let before = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
            if !before.is_file() {
                return Err("not a regular file".into());
            }
            FileMeta::from_metadata(&before)
        }
    };
    let (bytes_read, digests) = hash_file(&mut file, meta.size_bytes, specs, read, buffer)
        .map_err(|e| format!("read failed: {e}"))?;
    let after = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !after.is_file() {
        return Err("not a regular file".into());
    }
    let after = FileMeta::from_metadata(&after);
    if bytes_read == meta.size_bytes && after == meta {
        return Ok((meta, digests));
    }
    if walked.is_some() {
        drop(file);
        return hash_one(path, None, specs, read, buffer);
    }
    Err(format!(
        "changed while being read ({} bytes expected, {bytes_read} read, now {} bytes)",
        meta.size_bytes, after.size_bytes
    ))
}

/// The archive members of `path`, if it is an archive.
pub(crate) fn hash_archive_members(
    path: &Path,
    rel_path: &str,
    specs: &[AlgoSpec],
) -> Vec<MemberOutcome> {
    if crate::archive::archive_kind(path).is_none() {
        return Vec::new();
    }
    let prefix = path.to_string_lossy().into_owned();
    let mut members = Vec::new();
    let result = crate::archive::hash_members(path, specs, &mut |member| {
        let inner = member
            .path
            .strip_prefix(&prefix)
            .and_then(|p| p.strip_prefix('!'))
            .unwrap_or(&member.path);
        members.push(MemberOutcome {
            rel_path: format!("{rel_path}!{inner}"),
            size_bytes: member.size,
            result: Ok(member.digests),
        });
        Ok(())
    });
    if let Err(e) = result {
        members.push(MemberOutcome {
            rel_path: format!("{rel_path}!"),
            size_bytes: 0,
            result: Err(e.to_string()),
        });
    }
    members
}

enum Task {
    Hash { rel_path: String, meta: FileMeta },
    WalkError { rel_path: String, message: String },
}

/// Runs one hash scan of `root`. With a catalog, takes the root's lock first (failing at once if
/// another run holds it), skips unchanged files unless `rehash`, and records the run.
pub fn scan(
    root: &ScanRoot,
    mut catalog: Option<&mut dyn CatalogStore>,
    options: &ScanOptions,
    observer: &mut dyn ScanObserver,
) -> Result<ScanSummary, ScanError> {
    let started = Instant::now();
    let specs = &options.specs;
    let mut _lock: Option<RootLock> = None;
    let mut known = KnownFiles::new();
    let mut ids: Option<(i64, i64)> = None;
    if let Some(catalog) = catalog.as_deref_mut() {
        _lock = Some(RootLock::acquire(&catalog.lock_dir(), &root.key())?);
        catalog.ensure_algorithms(specs)?;
        let root_id = catalog.root_id(&root.key())?;
        if !options.rehash {
            known = catalog.known_files(root_id, specs)?;
        }
        let run_id = catalog.start_run(root_id, &options.command)?;
        ids = Some((root_id, run_id));
    }
    let hold_after_rows: Option<u64> = std::env::var(TEST_HOLD_ENV)
        .ok()
        .and_then(|v| v.parse().ok());

    let files_discovered = AtomicU64::new(0);
    let bytes_discovered = AtomicU64::new(0);
    let files_skipped = AtomicU64::new(0);
    let bytes_skipped = AtomicU64::new(0);
    let walk_finished = std::sync::atomic::AtomicBool::new(false);
    let mut summary = ScanSummary {
        run_id: ids.map(|(_, run)| run),
        ..Default::default()
    };
    let mut progress = ScanProgress::default();
    let mut pending: Vec<FileRow> = Vec::new();
    let mut rows_committed = 0u64;
    let mut last_flush = Instant::now();
    let mut failure: Option<ScanError> = None;

    let produce = |emit: &mut dyn FnMut(Task, u64) -> bool| {
        match &options.only_paths {
            Some(paths) => {
                for rel_path in paths {
                    let meta = std::fs::symlink_metadata(root.abs_path(rel_path))
                        .map(|m| FileMeta::from_metadata(&m))
                        .unwrap_or(FileMeta {
                            size_bytes: 0,
                            mtime_ns: 0,
                            inode: 0,
                        });
                    files_discovered.fetch_add(1, Ordering::Relaxed);
                    bytes_discovered.fetch_add(meta.size_bytes, Ordering::Relaxed);
                    let task = Task::Hash {
                        rel_path: rel_path.clone(),
                        meta,
                    };
                    if !emit(task, meta.size_bytes) {
                        break;
                    }
                }
            }
            None => walk(root, &options.filters, &mut |item| match item {
                WalkItem::File { rel_path, meta } => {
                    files_discovered.fetch_add(1, Ordering::Relaxed);
                    bytes_discovered.fetch_add(meta.size_bytes, Ordering::Relaxed);
                    let unchanged = known
                        .get(&path_key(&rel_path))
                        .is_some_and(|k| k.complete && k.meta == meta);
                    if unchanged {
                        files_skipped.fetch_add(1, Ordering::Relaxed);
                        bytes_skipped.fetch_add(meta.size_bytes, Ordering::Relaxed);
                        return true;
                    }
                    emit(Task::Hash { rel_path, meta }, meta.size_bytes)
                }
                WalkItem::Error { rel_path, message } => {
                    emit(Task::WalkError { rel_path, message }, 0)
                }
            }),
        }
        walk_finished.store(true, Ordering::Relaxed);
    };

    let work = |task: Task, buffer: &mut Vec<u8>| -> FileOutcome {
        match task {
            Task::WalkError { rel_path, message } => FileOutcome {
                rel_path,
                meta: FileMeta {
                    size_bytes: 0,
                    mtime_ns: 0,
                    inode: 0,
                },
                result: Err(message),
                walk_error: true,
                members: Vec::new(),
            },
            Task::Hash { rel_path, meta } => {
                let path = root.abs_path(&rel_path);
                match hash_one(&path, Some(meta), specs, &options.read, buffer) {
                    Ok((meta, digests)) => {
                        let members = if options.inside_archives {
                            hash_archive_members(&path, &rel_path, specs)
                        } else {
                            Vec::new()
                        };
                        FileOutcome {
                            rel_path,
                            meta,
                            result: Ok(digests),
                            walk_error: false,
                            members,
                        }
                    }
                    Err(message) => FileOutcome {
                        rel_path,
                        meta,
                        result: Err(message),
                        walk_error: false,
                        members: Vec::new(),
                    },
                }
            }
        }
    };

    let mut flush = |pending: &mut Vec<FileRow>,
                     catalog: &mut Option<&mut dyn CatalogStore>|
     -> Result<(), ScanError> {
        if let (Some(catalog), Some((root_id, run_id))) = (catalog.as_deref_mut(), ids) {
            if !pending.is_empty() {
                catalog.write_batch(root_id, run_id, specs, pending)?;
                rows_committed += pending.len() as u64;
                if hold_after_rows.is_some_and(|n| rows_committed >= n) {
                    eprintln!("basin-test: holding after {rows_committed} rows");
                    loop {
                        std::thread::park();
                    }
                }
            }
        }
        pending.clear();
        Ok(())
    };

    let mut sink = |outcome: Option<FileOutcome>| -> bool {
        if let Some(outcome) = outcome {
            if outcome.walk_error {
                summary.walk_errors += 1;
            } else {
                progress.files_done += 1;
                progress.bytes_done += outcome.meta.size_bytes;
                match &outcome.result {
                    Ok(_) => {
                        summary.counters.files_hashed += 1;
                        summary.counters.bytes_hashed += outcome.meta.size_bytes;
                    }
                    Err(_) => summary.counters.files_failed += 1,
                }
                summary.members_hashed +=
                    outcome.members.iter().filter(|m| m.result.is_ok()).count() as u64;
                summary.counters.files_failed +=
                    outcome.members.iter().filter(|m| m.result.is_err()).count() as u64;
                if ids.is_some() {
                    let is_archive_scan = options.inside_archives && outcome.result.is_ok();
                    pending.push(FileRow {
                        rel_path: outcome.rel_path.clone(),
                        meta: outcome.meta,
                        result: outcome.result.clone(),
                        replace_members: is_archive_scan,
                    });
                    for m in &outcome.members {
                        pending.push(FileRow {
                            rel_path: m.rel_path.clone(),
                            // Members carry the archive's mtime and inode: they change only with it.
                            meta: FileMeta {
                                size_bytes: m.size_bytes,
                                ..outcome.meta
                            },
                            result: m.result.clone(),
                            replace_members: false,
                        });
                    }
                }
            }
            if let Err(e) = observer.file_done(root, &outcome) {
                failure = Some(ScanError::Output(e));
                return false;
            }
        }
        if pending.len() >= options.batch_rows.max(1)
            || (!pending.is_empty() && last_flush.elapsed() >= options.batch_interval)
        {
            if let Err(e) = flush(&mut pending, &mut catalog) {
                failure = Some(e);
                return false;
            }
            last_flush = Instant::now();
        }
        progress.files_discovered = files_discovered.load(Ordering::Relaxed);
        progress.bytes_discovered = bytes_discovered.load(Ordering::Relaxed);
        progress.files_skipped = files_skipped.load(Ordering::Relaxed);
        progress.bytes_skipped = bytes_skipped.load(Ordering::Relaxed);
        progress.walk_finished = walk_finished.load(Ordering::Relaxed);
        observer.progress(&progress);
        true
    };

    run_ordered(
        options.jobs,
        options.batch_interval.min(Duration::from_millis(250)),
        produce,
        work,
        &mut sink,
    );
    if let Some(e) = failure {
        return Err(e);
    }
    flush(&mut pending, &mut catalog)?;
    summary.counters.files_skipped = files_skipped.load(Ordering::Relaxed);
    if let (Some(catalog), Some((_, run_id))) = (catalog, ids) {
        catalog.finish_run(run_id, &summary.counters)?;
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}
