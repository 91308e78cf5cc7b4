//! Copy while hashing, then verify the copy by reading it back.
//!
//! Each file is read once: the bytes go to a temporary file beside the destination and to the
//! digest lanes at the same time. The temporary file is fsynced, its pages dropped from the cache
//! where the OS allows (so the read-back sees the disk, not memory), re-hashed, compared, and only
//! then renamed into place with the source's mtime.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use basin_hash::read::{hash_file, hash_reader, hash_reader_pipelined};
use basin_hash::{AlgoSpec, Digest, ReadOptions};

use crate::walk::FileMeta;

/// What copying one file gave.
#[derive(Debug, Clone)]
pub struct CopiedFile {
    pub source_meta: FileMeta,
    pub dest_meta: FileMeta,
    /// The digests, equal for source and destination (else the copy is an error).
    pub digests: Vec<Digest>,
}

/// A reader that writes every byte it yields to `sink` too.
struct Tee<'a, R> {
    inner: R,
    sink: &'a mut File,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sink.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn temp_path_for(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.basin-copy.{}", std::process::id()))
}

/// Copies `source` to `dest` (parents created), hashing with `specs`, then verifies the copy.
/// With `no_clobber`, an existing `dest` is an error. Errors are messages for the failed-files list.
pub fn copy_file(
    source: &Path,
    dest: &Path,
    specs: &[AlgoSpec],
    read: &ReadOptions,
    no_clobber: bool,
) -> Result<CopiedFile, String> {
    if no_clobber && std::fs::symlink_metadata(dest).is_ok() {
        return Err(format!("{} exists (no-clobber)", dest.display()));
    }
    let mut input = File::open(source).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "vanished before it was read".to_string(),
        _ => format!("cannot open: {e}"),
    })?;
    let source_before = input.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !source_before.is_file() {
        return Err("not a regular file".into());
    }
    let source_meta = FileMeta::from_metadata(&source_before);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let temp = temp_path_for(dest);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        let tee = Tee {
            inner: &mut input,
            sink: &mut out,
        };
        let hashed = if source_meta.size_bytes >= read.pipeline_min_bytes {
            hash_reader_pipelined(tee, specs, read)
        } else {
            hash_reader(tee, specs, &mut Vec::new())
        };
        let (bytes, digests) = hashed.map_err(|e| format!("copy failed: {e}"))?;
        let source_after = input
            .metadata()
            .map(|m| FileMeta::from_metadata(&m))
            .map_err(|e| format!("cannot stat: {e}"))?;
        if bytes != source_meta.size_bytes || source_after != source_meta {
            return Err("source changed while being copied".to_string());
        }
        out.sync_all()
            .map_err(|e| format!("fsync of {} failed: {e}", temp.display()))?;
        drop_cached_pages(&out);
        let mut reread =
            File::open(&temp).map_err(|e| format!("cannot reopen {}: {e}", temp.display()))?;
        let (dest_bytes, dest_digests) =
            hash_file(&mut reread, bytes, specs, read, &mut Vec::new())
                .map_err(|e| format!("read-back of {} failed: {e}", temp.display()))?;
        if dest_bytes != bytes || dest_digests != digests {
            return Err(format!(
                "copy at {} does not match the source on read-back",
                dest.display()
            ));
        }
        if let Ok(mtime) = source_before.modified() {
            let _ = out.set_modified(mtime);
        }
        std::fs::rename(&temp, dest)
            .map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
        let dest_meta = std::fs::metadata(dest)
            .map(|m| FileMeta::from_metadata(&m))
            .map_err(|e| format!("cannot stat copy: {e}"))?;
        Ok(CopiedFile {
            source_meta,
            dest_meta,
            digests,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Asks the OS to forget the file's cached pages so a read-back comes from the device.
fn drop_cached_pages(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: a valid open descriptor; the call only advises the page cache.
        unsafe {
            libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Options of [`copy_tree`].
#[derive(Debug, Clone)]
pub struct CopyOptions {
    pub specs: Vec<AlgoSpec>,
    pub jobs: usize,
    pub read: ReadOptions,
    pub filters: crate::walk::Filters,
    pub no_clobber: bool,
    pub batch_rows: usize,
    pub command: String,
}

/// One copied (or failed) file of a tree.
#[derive(Debug, Clone)]
pub struct CopyOutcome {
    /// Relative to the source root.
    pub rel_path: String,
    /// Relative to the destination root.
    pub dest_rel_path: String,
    pub result: Result<CopiedFile, String>,
}

/// Copies every file of `source` into `dest_dir` (a file root copies to `dest_dir/<dest_name>`),
/// verifying each copy, and records both sides in `catalog` when given (two roots, two runs).
pub fn copy_tree(
    source: &crate::walk::ScanRoot,
    dest_dir: &Path,
    dest_name: Option<&str>,
    mut catalog: Option<&mut dyn crate::catalog::CatalogStore>,
    options: &CopyOptions,
    report: &mut dyn FnMut(&CopyOutcome),
) -> Result<crate::catalog::RunCounters, crate::ScanError> {
    use crate::catalog::{FileRow, RunCounters};
    use crate::walk::{walk, WalkItem};
    std::fs::create_dir_all(dest_dir).map_err(|e| crate::ScanError::Io {
        path: dest_dir.to_path_buf(),
        source: e,
    })?;
    let dest_dir = std::fs::canonicalize(dest_dir).map_err(|e| crate::ScanError::Io {
        path: dest_dir.to_path_buf(),
        source: e,
    })?;
    let dest_key = dest_dir.to_string_lossy().into_owned();
    let mut locks = Vec::new();
    let mut ids = None;
    if let Some(c) = catalog.as_deref_mut() {
        locks.push(crate::lock::RootLock::acquire(
            &c.lock_dir(),
            &source.key(),
        )?);
        if dest_key != source.key() {
            locks.push(crate::lock::RootLock::acquire(&c.lock_dir(), &dest_key)?);
        }
        c.ensure_algorithms(&options.specs)?;
        let source_id = c.root_id(&source.key())?;
        let dest_id = c.root_id(&dest_key)?;
        let source_run = c.start_run(source_id, &options.command)?;
        let dest_run = c.start_run(dest_id, &options.command)?;
        ids = Some(((source_id, source_run), (dest_id, dest_run)));
    }
    let mut counters = RunCounters::default();
    let mut source_rows: Vec<FileRow> = Vec::new();
    let mut dest_rows: Vec<FileRow> = Vec::new();
    let mut failure: Option<crate::ScanError> = None;
    let produce = |emit: &mut dyn FnMut(Result<String, (String, String)>, u64) -> bool| {
        walk(source, &options.filters, &mut |item| match item {
            WalkItem::File { rel_path, meta } => emit(Ok(rel_path), meta.size_bytes),
            WalkItem::Error { rel_path, message } => emit(Err((rel_path, message)), 0),
        });
    };
    let work = |item: Result<String, (String, String)>, _buffer: &mut Vec<u8>| -> CopyOutcome {
        match item {
            Ok(rel_path) => {
                let dest_rel_path = match (&source.only, dest_name) {
                    (Some(only), Some(name)) if *only == rel_path => name.to_string(),
                    _ => rel_path.clone(),
                };
                let result = copy_file(
                    &source.abs_path(&rel_path),
                    &dest_dir.join(&dest_rel_path),
                    &options.specs,
                    &options.read,
                    options.no_clobber,
                );
                CopyOutcome {
                    rel_path,
                    dest_rel_path,
                    result,
                }
            }
            Err((rel_path, message)) => CopyOutcome {
                dest_rel_path: rel_path.clone(),
                rel_path,
                result: Err(message),
            },
        }
    };
    let flush = |source_rows: &mut Vec<FileRow>,
                 dest_rows: &mut Vec<FileRow>,
                 catalog: &mut Option<&mut dyn crate::catalog::CatalogStore>| {
        if let (Some(c), Some(((sid, srun), (did, drun)))) = (catalog.as_deref_mut(), ids) {
            c.write_batch(sid, srun, &options.specs, source_rows)?;
            c.write_batch(did, drun, &options.specs, dest_rows)?;
        }
        source_rows.clear();
        dest_rows.clear();
        Ok::<(), crate::ScanError>(())
    };
    let mut sink = |outcome: Option<CopyOutcome>| -> bool {
        let Some(outcome) = outcome else { return true };
        match &outcome.result {
            Ok(copied) => {
                counters.files_hashed += 1;
                counters.bytes_hashed += copied.source_meta.size_bytes;
                if ids.is_some() {
                    let ok = Ok(copied.digests.clone());
                    source_rows.push(FileRow {
                        rel_path: outcome.rel_path.clone(),
                        meta: copied.source_meta,
                        result: ok.clone(),
                        replace_members: false,
                    });
                    dest_rows.push(FileRow {
                        rel_path: outcome.dest_rel_path.clone(),
                        meta: copied.dest_meta,
                        result: ok,
                        replace_members: false,
                    });
                }
            }
            Err(_) => counters.files_failed += 1,
        }
        report(&outcome);
        if source_rows.len() >= options.batch_rows.max(1) {
            if let Err(e) = flush(&mut source_rows, &mut dest_rows, &mut catalog) {
                failure = Some(e);
                return false;
            }
        }
        true
    };
    crate::pipeline::run_ordered(
        options.jobs,
        std::time::Duration::from_millis(250),
        produce,
        work,
        &mut sink,
    );
    if let Some(e) = failure {
        return Err(e);
    }
    flush(&mut source_rows, &mut dest_rows, &mut catalog)?;
    if let (Some(c), Some(((_, srun), (_, drun)))) = (catalog, ids) {
        c.finish_run(srun, &counters)?;
        c.finish_run(drun, &counters)?;
    }
    drop(locks);
    Ok(counters)
}
