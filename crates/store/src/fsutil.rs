//! Durable file-system steps: fsync of files and folders, atomic replace, one-round sync of many files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// Flushes a folder's entries (after a create, rename or unlink in it).
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).at("open folder", dir)?;
    f.sync_all().at("fsync folder", dir)
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync of the folder.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .at("create", &tmp)?;
    f.write_all(bytes).at("write", &tmp)?;
    f.sync_all().at("fsync", &tmp)?;
    drop(f);
    fs::rename(&tmp, path).at("rename into", path)?;
    fsync_dir(dir)
}

/// Makes everything written so far to the file system holding `any_path` durable in one round.
///
/// On Linux this is `syncfs(2)`: one journal commit for any number of files, which is what lets a
/// backup make thousands of files durable for the price of one or two fsyncs. Since
/// Linux 5.8 it reports writeback errors. Elsewhere the caller falls back to per-file fsync.
#[cfg(target_os = "linux")]
pub(crate) fn syncfs(any_path: &Path) -> Result<bool> {
    use std::os::fd::AsRawFd;
    let f = File::open(any_path).at("open for syncfs", any_path)?;
    // SAFETY: `f` is an open descriptor for the duration of the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc != 0 {
        return Err(crate::error::Error::io(
            "syncfs",
            any_path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(true)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn syncfs(_any_path: &Path) -> Result<bool> {
    Ok(false)
}

/// `fdatasync`: the file's bytes and the metadata needed to read them back (its length).
pub(crate) fn datasync(f: &File, path: &Path) -> Result<()> {
    f.sync_data().at("fdatasync", path)
}

/// Size of a file, 0 if it does not exist.
pub(crate) fn file_len_or_zero(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Threads used to unlink many files at once. Unlinking is not CPU work: on file systems that
/// discard freed blocks synchronously (ext4 mounted `-o discard`, common on virtual disks) each
/// unlink waits ~3 ms for the device, and the device serves many such waits at once; measured
/// here 28× faster with 32 concurrent unlinkers than with one.
const UNLINK_THREADS: usize = 48;

/// Removes files concurrently; returns how many were removed (missing ones are not counted).
pub(crate) fn remove_files(paths: &[PathBuf]) -> u64 {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    if paths.len() < 16 {
        return paths.iter().filter(|p| fs::remove_file(p).is_ok()).count() as u64;
    }
    let next = AtomicUsize::new(0);
    let removed = AtomicU64::new(0);
    let threads = UNLINK_THREADS.min(paths.len() / 8).max(1);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = paths.get(i) else { break };
                if fs::remove_file(p).is_ok() {
                    removed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    removed.into_inner()
}

/// Bytes of a file reserved at a time ahead of its writes (see [`reserve_ahead`]).
const RESERVE_STEP_BYTES: u64 = 16 << 20;

/// Reserves the blocks of a file for a write of `len` bytes at `at` and for a step of
/// [`RESERVE_STEP_BYTES`] past it, without changing the file's size (`FALLOC_FL_KEEP_SIZE`).
/// ext4 otherwise reserves each 4 KiB block as the page cache takes it (delayed allocation)
/// and allocates the blocks when they are written back; a write into blocks already reserved
/// does neither (the benchmark's bulk import of 92 MB took 0.90× the time, and of a million
/// small objects 0.85–0.92×). Only a write that starts within the first step or reaches into
/// a new one asks, so that a run of writes asks once per step. For the packs an appender
/// writes, which end up large: the blocks reserved past the end of a file go with it, or when
/// it is cut to its own length, as a pack is when it is sealed and the open pack by `clean`.
/// (A write batch's pack gets none: giving 16 MiB back at every commit cost more than the
/// reservation saved.) Failure (a file system without `fallocate`) only loses the head start.
#[cfg(target_os = "linux")]
pub(crate) fn reserve_ahead(f: &File, at: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let end = at.saturating_add(len);
    if at >= RESERVE_STEP_BYTES && at / RESERVE_STEP_BYTES == end / RESERVE_STEP_BYTES {
        return;
    }
    let to = (end / RESERVE_STEP_BYTES + 2).saturating_mul(RESERVE_STEP_BYTES);
    let (Ok(offset), Ok(reserved)) = (i64::try_from(at), i64::try_from(to - at)) else {
        return;
    };
    // SAFETY: plain syscall on an open descriptor; it changes no byte of the file.
    unsafe {
        libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, offset, reserved);
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn reserve_ahead(_f: &File, _at: u64, _len: u64) {}

/// Gives back the blocks [`reserve_ahead`] left past the end of the file at `path` (its length,
/// `len`, is unchanged), if it holds more than a step's worth of blocks beyond it. Cutting a file
/// to its own length frees what lies past the end.
pub(crate) fn release_reserved(path: &Path, len: u64) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).at("stat", path)?;
    // Blocks are counted in 512-byte units, the file system's own (extent tree) among them.
    if meta.blocks().saturating_mul(512) <= len.saturating_add(RESERVE_STEP_BYTES) {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .at("open", path)?
        .set_len(len)
        .at("give back the blocks reserved past the end of", path)
}

/// Starts writeback of a file range without waiting, so that a later fdatasync finds most of
/// the bytes already on their way and the disk works while the CPU keeps appending.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; failure only loses the head start.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_f: &File, _offset: u64, _len: u64) {}

/// Drops the file's cached pages in a range that was read for the last time (a pack that is
/// being rewritten and then removed). Freeing those pages is a quarter to a third of the cost
/// of unlinking a cached file; done here, it leaves the unlink, which comes after the index
/// commit. Pages mapped anywhere stay cached; their bytes never change either way.
#[cfg(target_os = "linux")]
pub(crate) fn drop_cached(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on an open descriptor; failure only leaves the pages cached.
    unsafe {
        libc::posix_fadvise(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn drop_cached(_f: &File, _offset: u64, _len: u64) {}

/// Writes `parts`, one after another, at `at` in `file`, with one `pwritev` call per
/// [`IOVECS_PER_CALL_MAX`] parts when the kernel takes them whole: pieces scattered in memory
/// reach the file without being copied together first.
pub(crate) fn write_all_vectored_at(file: &File, parts: &[&[u8]], at: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (mut first, mut skip, mut at) = (0usize, 0usize, at);
    let mut iovecs = Vec::with_capacity(parts.len().min(IOVECS_PER_CALL_MAX));
    while first < parts.len() {
        if parts[first].len() == skip {
            first += 1;
            skip = 0;
            continue;
        }
        iovecs.clear();
        for (j, part) in parts[first..].iter().take(IOVECS_PER_CALL_MAX).enumerate() {
            let part = if j == 0 { &part[skip..] } else { part };
            iovecs.push(libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            });
        }
        // SAFETY: every iovec points into a slice borrowed for this whole call.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iovecs.as_ptr(),
                iovecs.len() as libc::c_int,
                at as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut written = n as usize;
        at += written as u64;
        while written > 0 {
            let left = parts[first].len() - skip;
            if written >= left {
                written -= left;
                first += 1;
                skip = 0;
            } else {
                skip += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// Parts given to one `pwritev` call: Linux's `IOV_MAX`.
const IOVECS_PER_CALL_MAX: usize = 1024;

/// Writes `buf` at `*at` in `file`, starts its writeback, advances `*at` and empties `buf`: the
/// flush of a write buffer whose bytes will be fdatasynced soon.
pub(crate) fn flush_write_buffer(
    file: &File,
    path: &Path,
    buf: &mut Vec<u8>,
    at: &mut u64,
) -> Result<()> {
    if !buf.is_empty() {
        std::os::unix::fs::FileExt::write_all_at(file, buf, *at).at("write", path)?;
        start_writeback(file, *at, buf.len() as u64);
        *at += buf.len() as u64;
        buf.clear();
    }
    Ok(())
}

/// Creates `path` (it must not exist), readable and writable, and takes an exclusive `flock` on
/// it that the kernel drops when the process dies: a sandbox entry's "still being written".
pub(crate) fn create_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .at("create", path)?;
    file.try_lock()
        .map_err(|e| crate::error::Error::io("lock", path, std::io::Error::other(e.to_string())))?;
    Ok(file)
}

/// Writes full write buffers on a thread of its own, so the thread that fills them goes on
/// filling the next one meanwhile. Copying written bytes into the page cache is the kernel's
/// single largest cost in bulk appends (a third of a million-object import's CPU time here),
/// and it was paid on the appending thread.
///
/// Writes are done in the order submitted. [`WriteBehind::drain`] waits for all of them and
/// returns the first error: call it before syncing the file, and before anything that must see
/// the bytes (truncating, reading them back). Dropping waits for the writes in flight, so none
/// lands after its owner let go of the file (another process may append to it next).
pub(crate) struct WriteBehind {
    to_writer: Option<std::sync::mpsc::SyncSender<BehindJob>>,
    written: std::sync::mpsc::Receiver<Result<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    in_flight: usize,
    /// Emptied buffers back from the writer, to fill again (their pages are already touched).
    spare: Vec<Vec<u8>>,
    buffer_bytes: usize,
    /// The first error of a write whose result was collected by [`WriteBehind::submit`],
    /// reported by the next [`WriteBehind::drain`].
    failed: Option<crate::error::Error>,
    /// Bytes submitted so far, and how many may go through the page cache before the rest is
    /// written with `O_DIRECT` (see [`WriteBehind::write_direct_after`]).
    submitted_bytes: u64,
    cached_bytes_max: u64,
    /// Whether a direct write was submitted since the last [`BehindJob::Land`]: its last
    /// partial block may still be staged on the write thread.
    direct_unlanded: bool,
}

enum BehindJob {
    Write {
        file: std::sync::Arc<File>,
        path: PathBuf,
        at: u64,
        buf: Vec<u8>,
        direct: bool,
    },
    /// Lands what direct writes hold staged (their last partial block).
    Land,
}

/// Buffers written or waiting to be at once: one being written, one queued, while the caller
/// fills a third.
const WRITES_IN_FLIGHT_MAX: usize = 2;

impl WriteBehind {
    /// A writer for buffers of about `buffer_bytes`; its thread starts on the first write.
    pub(crate) fn new(buffer_bytes: usize) -> WriteBehind {
        let (_, written) = std::sync::mpsc::channel();
        WriteBehind {
            to_writer: None,
            written,
            thread: None,
            in_flight: 0,
            spare: Vec::new(),
            buffer_bytes,
            failed: None,
            submitted_bytes: 0,
            cached_bytes_max: u64::MAX,
            direct_unlanded: false,
        }
    }

    /// Writes every byte submitted past the first `cached_bytes_max` with `O_DIRECT` (through
    /// [`crate::direct::DirectRuns`]) instead of through the page cache. For bulk imports:
    /// copying into fresh page-cache pages was the write thread's whole time in a million-object
    /// import (see bench/store/README.md, "Noise"), and an import of many gigabytes would push
    /// what readers use out of the cache. The first bytes stay cached, as small imports are
    /// often read back at once.
    pub(crate) fn write_direct_after(&mut self, cached_bytes_max: u64) {
        self.cached_bytes_max = cached_bytes_max;
    }

    fn start(&mut self) -> Result<()> {
        let (to_writer, jobs) = std::sync::mpsc::sync_channel::<BehindJob>(WRITES_IN_FLIGHT_MAX);
        let (done, written) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("basin-write-behind".into())
            .spawn(move || {
                // Its staging buffer is allocated at the first direct write. Bytes still staged
                // when the owner lets go are dropped, never written: they were not committed,
                // and another process may append to the file next. A full window already being
                // written lands before this thread ends, so before the owner lets go too.
                let mut runs = crate::direct::DirectRuns::new(Vec::new());
                for job in jobs {
                    let result = match job {
                        BehindJob::Write {
                            file,
                            path,
                            mut at,
                            mut buf,
                            direct,
                        } => {
                            let written = if direct {
                                runs.write(&file, &path, at, &buf)
                            } else {
                                // Staged direct bytes lie before these: they land first.
                                runs.finish().and_then(|()| {
                                    reserve_ahead(&file, at, buf.len() as u64);
                                    flush_write_buffer(&file, &path, &mut buf, &mut at)
                                })
                            };
                            written.map(|()| {
                                buf.clear();
                                buf
                            })
                        }
                        BehindJob::Land => runs.finish().map(|()| Vec::new()),
                    };
                    if done.send(result).is_err() {
                        break;
                    }
                }
            })
            .at("start write thread for", Path::new("packs"))?;
        self.to_writer = Some(to_writer);
        self.written = written;
        self.thread = Some(thread);
        Ok(())
    }

    /// Collects one finished write: keeps its buffer, or its error for the next drain.
    fn collect_one(&mut self) {
        let result = self.written.recv().unwrap_or_else(|_| {
            Err(crate::error::Error::InvalidArgument(
                "the write-behind thread ended".into(),
            ))
        });
        self.in_flight -= 1;
        match result {
            Ok(buf) if buf.capacity() > 0 => self.spare.push(buf),
            Ok(_) => {}
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }

    /// An empty buffer to fill (with capacity for a whole buffer).
    pub(crate) fn empty_buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.buffer_bytes))
    }

    /// Queues `buf` to be written at `*at` in `file`, advances `*at`, and leaves an empty
    /// buffer in its place. Waits only when [`WRITES_IN_FLIGHT_MAX`] writes are in flight.
    pub(crate) fn submit(
        &mut self,
        file: &std::sync::Arc<File>,
        path: &Path,
        buf: &mut Vec<u8>,
        at: &mut u64,
    ) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if self.to_writer.is_none() {
            self.start()?;
        }
        while self.in_flight >= WRITES_IN_FLIGHT_MAX {
            self.collect_one();
        }
        let len = buf.len() as u64;
        let direct = self.submitted_bytes >= self.cached_bytes_max;
        self.submitted_bytes += len;
        self.direct_unlanded |= direct;
        let job = BehindJob::Write {
            file: file.clone(),
            path: path.to_path_buf(),
            at: *at,
            buf: std::mem::replace(buf, self.empty_buffer()),
            direct,
        };
        self.send(job)?;
        *at += len;
        Ok(())
    }

    fn send(&mut self, job: BehindJob) -> Result<()> {
        let writer_gone =
            || crate::error::Error::InvalidArgument("the write-behind thread ended".into());
        let to_writer = self.to_writer.as_ref().ok_or_else(writer_gone)?;
        to_writer.send(job).map_err(|_| writer_gone())?;
        self.in_flight += 1;
        Ok(())
    }

    /// Waits for every write submitted so far; the first error of any of them.
    pub(crate) fn drain(&mut self) -> Result<()> {
        if std::mem::take(&mut self.direct_unlanded) {
            while self.in_flight >= WRITES_IN_FLIGHT_MAX {
                self.collect_one();
            }
            self.send(BehindJob::Land)?;
        }
        while self.in_flight > 0 {
            self.collect_one();
        }
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn write_behind_lands_every_buffer_at_its_offset_and_recycles_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(File::create(&path).unwrap());
        let mut behind = WriteBehind::new(64);
        let mut buf = behind.empty_buffer();
        let mut at = 0u64;
        let mut expected = Vec::new();
        for round in 0..10u8 {
            buf.extend((0..50).map(|i| round.wrapping_mul(31).wrapping_add(i)));
            expected.extend_from_slice(&buf);
            behind.submit(&file, &path, &mut buf, &mut at).unwrap();
            assert!(
                buf.is_empty(),
                "round {round}: submit leaves an empty buffer"
            );
            assert!(
                buf.capacity() >= 64,
                "round {round}: the buffer has its capacity"
            );
        }
        assert_eq!(at, expected.len() as u64);
        behind.drain().unwrap();
        assert_eq!(fs::read(&path).unwrap(), expected);
        assert!(
            behind.spare.len() <= WRITES_IN_FLIGHT_MAX + 1,
            "buffers are reused, not allocated per write: {} spare",
            behind.spare.len()
        );
    }

    #[test]
    fn vectored_writes_land_every_part_in_order_past_the_per_call_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = File::create(&path).unwrap();
        // More parts than one call takes, of uneven lengths (some empty), after a prefix.
        let owned: Vec<Vec<u8>> = (0..2500u32)
            .map(|i| (0..(i % 7) * 3).map(|j| (i * 31 + j) as u8).collect())
            .collect();
        let parts: Vec<&[u8]> = owned.iter().map(|p| p.as_slice()).collect();
        write_all_vectored_at(&file, &[b"head"], 0).unwrap();
        write_all_vectored_at(&file, &parts, 4).unwrap();
        let mut expected = b"head".to_vec();
        expected.extend(owned.concat());
        assert_eq!(fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn write_behind_reports_a_failed_write_with_its_path_at_drain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        fs::write(&path, b"x").unwrap();
        // Opened for reading only: every write fails with EBADF.
        let file = Arc::new(File::open(&path).unwrap());
        let mut behind = WriteBehind::new(16);
        let mut buf = behind.empty_buffer();
        let mut at = 0u64;
        for _ in 0..4 {
            buf.extend_from_slice(b"0123456789");
            behind.submit(&file, &path, &mut buf, &mut at).unwrap();
        }
        let err = behind.drain().unwrap_err().to_string();
        assert!(err.contains("read-only"), "error names the file: {err}");
        behind.drain().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }
}
