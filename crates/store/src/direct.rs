//! Appending long runs of bytes to a pack without going through the page cache (`O_DIRECT`),
//! for repack: the bytes it moves are copied once into an aligned staging buffer and written
//! from there by the device, instead of the kernel copying them into fresh page-cache pages.
//!
//! Why: the kernel's copy into new page-cache pages was the largest cost of a repack, and on
//! guests whose freed memory goes back to the host it costs several times more again (every new
//! page faults on the host). A repack also has no reason to fill the page cache with a copy of
//! the whole store, pushing out what readers use; databases write their compactions this way
//! for the same reason.
//!
//! Direct writes must start and end on the device's block boundaries. Runs start anywhere, so
//! the bytes of a run up to its first block boundary are written through the page cache, and
//! the staging window starts at that boundary; [`DirectRuns::finish`] writes the last partial
//! block through the page cache too. A direct write therefore never covers a block holding
//! bytes that were in the file before the run: a reader may have such a block's page mapped,
//! and the kernel cannot drop a mapped page when a direct write goes under it, which would
//! leave that reader the old bytes. Where `O_DIRECT` is refused (a file system without it, an
//! alignment the device rejects), the same bytes are written the ordinary way.
//!
//! Callers must keep every other writer of the file away from the blocks of the run being
//! staged: the appender lands its own writes before handing out a run's place.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{IoContext, Result};
use crate::fsutil;

/// Block size direct writes are aligned to (offset, length and memory): the logical block size
/// of any common device divides it.
pub(crate) const DIRECT_ALIGN_BYTES: usize = 4096;

/// Bytes staged between two direct writes.
pub(crate) const DIRECT_STAGE_BYTES: usize = 4 << 20;

/// Writes runs that follow each other in a file through aligned staging windows, with
/// `O_DIRECT`. Runs must be given in file order, each starting where the previous one ended,
/// or the staging starts over (after writing what it holds).
///
/// A full window is written on a thread of its own while the next one fills: a direct write
/// waits for the device, and copying into the window between two writes left the device idle a
/// third of the time in a repack (1.9 ms per 4 MiB write, 0.9 ms between writes).
pub(crate) struct DirectRuns {
    /// The allocation holding the window being filled: `buf[window..window + DIRECT_STAGE_BYTES]`.
    buf: Vec<u8>,
    window: usize,
    /// The other allocation, while no write holds it.
    spare: Option<Vec<u8>>,
    /// The thread writing full windows; `None` until the first one fills, and where no thread
    /// can be had (windows are then written here).
    lander: Option<Lander>,
    target: Option<Target>,
}

struct Target {
    /// The file as the appender opened it (read and write, through the page cache).
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`; `None` where that was refused.
    direct: Option<Arc<File>>,
    path: PathBuf,
    /// Where the next byte of the run goes while it is still short of `base` (those bytes are
    /// written through the page cache at once); equal to `base` once the head is written.
    head_at: u64,
    /// File offset of the window's first byte: the first block boundary at or after the run's
    /// start.
    base: u64,
    /// Bytes staged in the window.
    staged: usize,
}

impl Target {
    /// Where the next byte given to the run goes.
    fn next_at(&self) -> u64 {
        if self.head_at < self.base {
            self.head_at
        } else {
            self.base + self.staged as u64
        }
    }
}

/// One full window for the lander: the allocation, where the window starts in it, and where
/// its bytes go.
struct Landing {
    buf: Vec<u8>,
    window: usize,
    at: u64,
    direct: Option<Arc<File>>,
    file: Arc<File>,
    path: PathBuf,
}

impl Landing {
    /// Writes the window; returns whether the direct write was refused.
    fn land(&self) -> Result<bool> {
        let blocks = &self.buf[self.window..self.window + DIRECT_STAGE_BYTES];
        land_blocks(
            self.direct.as_deref(),
            &self.file,
            &self.path,
            blocks,
            self.at,
        )
    }
}

/// A landed window: its allocation back, and whether the direct write was refused.
type Landed = (Vec<u8>, Result<bool>);

/// The thread that writes full windows, one at a time.
struct Lander {
    to_land: Option<std::sync::mpsc::SyncSender<Landing>>,
    landed: std::sync::mpsc::Receiver<Landed>,
    /// A window was handed over and its result not yet taken.
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Lander {
    fn start() -> Option<Lander> {
        let (to_land, landings) = std::sync::mpsc::sync_channel::<Landing>(1);
        let (done, landed) = std::sync::mpsc::sync_channel::<Landed>(1);
        let thread = std::thread::Builder::new()
            .name("basin-direct-write".into())
            .spawn(move || {
                for l in landings {
                    let refused = l.land();
                    if done.send((l.buf, refused)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Lander {
            to_land: Some(to_land),
            landed,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Sends `landing` to the thread; back when the thread is gone.
    fn hand_over(&mut self, landing: Landing) -> Option<Landing> {
        let Some(to_land) = &self.to_land else {
            return Some(landing);
        };
        match to_land.send(landing) {
            Ok(()) => {
                self.in_flight = true;
                None
            }
            Err(returned) => Some(returned.0),
        }
    }

    /// Waits for the window in flight, if any: its allocation, and whether the direct write
    /// was refused.
    fn wait(&mut self) -> Option<Landed> {
        if !std::mem::take(&mut self.in_flight) {
            return None;
        }
        Some(self.landed.recv().unwrap_or_else(|_| {
            (
                Vec::new(),
                Err(crate::error::Error::InvalidArgument(
                    "direct write thread ended".into(),
                )),
            )
        }))
    }
}

impl Drop for Lander {
    /// Lets the window in flight land before returning: whoever drops this (an appender
    /// abandoning its batch, a maintenance guard letting go) must find no write still to come.
    fn drop(&mut self) {
        drop(self.to_land.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl DirectRuns {
    /// A writer whose staging windows reuse the allocations of `buffers` (up to two; grown at
    /// the first write if too small: a writer never given a run touches no new memory).
    pub(crate) fn new(mut buffers: Vec<Vec<u8>>) -> DirectRuns {
        let buf = buffers.pop().unwrap_or_default();
        DirectRuns {
            buf,
            window: 0,
            spare: buffers.pop(),
            lander: None,
            target: None,
        }
    }

    /// Writes `bytes` at `at` in `file`: those short of the run's first block boundary at once,
    /// through the page cache; the rest staged, in the file by [`DirectRuns::finish`].
    pub(crate) fn write(
        &mut self,
        file: &Arc<File>,
        path: &Path,
        at: u64,
        mut bytes: &[u8],
    ) -> Result<()> {
        let continues = self
            .target
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.file, file) && t.next_at() == at);
        if !continues {
            self.finish()?;
            self.start(file, path, at);
        }
        let Some(t) = self.target.as_mut() else {
            return Ok(());
        };
        if t.head_at < t.base && !bytes.is_empty() {
            let n = bytes.len().min((t.base - t.head_at) as usize);
            t.file
                .write_all_at(&bytes[..n], t.head_at)
                .at("write pack", &t.path)?;
            t.head_at += n as u64;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            let t = self.target.as_mut().ok_or_else(no_run)?;
            let n = bytes.len().min(DIRECT_STAGE_BYTES - t.staged);
            let from = self.window + t.staged;
            self.buf[from..from + n].copy_from_slice(&bytes[..n]);
            t.staged += n;
            bytes = &bytes[n..];
            if t.staged == DIRECT_STAGE_BYTES {
                self.hand_over_window()?;
            }
        }
        Ok(())
    }

    /// Hands the full window to the lander (written here where there is none) and goes on in
    /// the other allocation, once the window before has landed.
    fn hand_over_window(&mut self) -> Result<()> {
        if self.lander.is_none() {
            self.lander = Lander::start();
        }
        let next = self.wait_landed()?.or_else(|| self.spare.take());
        let t = self.target.as_mut().ok_or_else(no_run)?;
        let at = t.base;
        t.base += DIRECT_STAGE_BYTES as u64;
        // The head stays written: left behind, it made `next_at` point back at it, and every
        // run ended at its first window.
        t.head_at = t.base;
        t.staged = 0;
        let landing = Landing {
            buf: std::mem::take(&mut self.buf),
            window: self.window,
            at,
            direct: t.direct.clone(),
            file: t.file.clone(),
            path: t.path.clone(),
        };
        let unsent = match self.lander.as_mut() {
            Some(lander) => lander.hand_over(landing),
            None => Some(landing),
        };
        if let Some(l) = unsent {
            // No thread to write it: written here, before the next window fills.
            if l.land()? {
                t.direct = None;
            }
            self.buf = l.buf;
            self.spare = self.spare.take().or(next);
        } else {
            self.buf = next.unwrap_or_default();
            self.place_window();
        }
        Ok(())
    }

    /// Waits for the window in flight: its allocation back, or its write's error.
    fn wait_landed(&mut self) -> Result<Option<Vec<u8>>> {
        let Some((buf, refused)) = self.lander.as_mut().and_then(Lander::wait) else {
            return Ok(None);
        };
        if refused? {
            if let Some(t) = self.target.as_mut() {
                t.direct = None;
            }
        }
        Ok(Some(buf))
    }

    /// Sizes the allocation for a window and places the window in it, on a block boundary.
    fn place_window(&mut self) {
        if self.buf.len() < DIRECT_STAGE_BYTES + DIRECT_ALIGN_BYTES {
            self.buf.resize(DIRECT_STAGE_BYTES + DIRECT_ALIGN_BYTES, 0);
        }
        self.window = self.buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
    }

    /// Starts a run at `at`: its bytes up to the next block boundary go through the page
    /// cache, the window starts at that boundary.
    fn start(&mut self, file: &Arc<File>, path: &Path, at: u64) {
        self.place_window();
        self.target = Some(Target {
            file: file.clone(),
            direct: open_direct(path, true).map(Arc::new),
            path: path.to_path_buf(),
            head_at: at,
            base: at.next_multiple_of(DIRECT_ALIGN_BYTES as u64),
            staged: 0,
        });
    }

    /// Writes everything staged: the window in flight, then the whole blocks of this one
    /// directly and its last partial block through the page cache. Every byte given to
    /// [`DirectRuns::write`] is in the file when this returns (not yet synced: the appender's
    /// commit does that).
    pub(crate) fn finish(&mut self) -> Result<()> {
        if let Some(buf) = self.wait_landed()? {
            self.spare = Some(buf);
        }
        let Some(t) = self.target.take() else {
            return Ok(());
        };
        let whole = t.staged - t.staged % DIRECT_ALIGN_BYTES;
        let window = &self.buf[self.window..self.window + t.staged];
        // The run ends here: whether the direct write was refused matters no more.
        land_blocks(
            t.direct.as_deref(),
            &t.file,
            &t.path,
            &window[..whole],
            t.base,
        )?;
        let tail = &window[whole..];
        if !tail.is_empty() {
            let at = t.base + whole as u64;
            t.file.write_all_at(tail, at).at("write pack", &t.path)?;
        }
        Ok(())
    }

    /// The allocations back, for the next user (once the window in flight has landed).
    pub(crate) fn into_buffers(mut self) -> Vec<Vec<u8>> {
        let landed = self.lander.as_mut().and_then(Lander::wait).map(|(b, _)| b);
        let mut out: Vec<Vec<u8>> = landed.into_iter().chain(self.spare.take()).collect();
        out.push(std::mem::take(&mut self.buf));
        out.retain(|b| b.capacity() > 0);
        out
    }
}

/// Takes from `pool` the allocations (up to two) that already hold a window, for
/// [`DirectRuns::new`]: fresh memory costs more than the copy into it on these VMs.
pub(crate) fn take_windows(pool: &mut Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut windows = Vec::new();
    while windows.len() < 2 {
        let Some(i) = pool
            .iter()
            .position(|b| b.capacity() >= DIRECT_STAGE_BYTES + DIRECT_ALIGN_BYTES)
        else {
            break;
        };
        windows.push(pool.swap_remove(i));
    }
    windows
}

fn no_run() -> crate::error::Error {
    crate::error::Error::InvalidArgument("direct write without a run".into())
}

/// Opens `path` with `O_DIRECT`, for reading or for writing; `None` where the file system
/// refuses (or elsewhere than Linux).
#[cfg(target_os = "linux")]
pub(crate) fn open_direct(path: &Path, write: bool) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn open_direct(_path: &Path, _write: bool) -> Option<File> {
    None
}

/// Writes `blocks` (whole aligned blocks of a window) at `at`: directly, or through the page
/// cache where the direct write is refused. Returns whether it was refused (the run then stops
/// trying).
fn land_blocks(
    direct: Option<&File>,
    file: &File,
    path: &PathBuf,
    blocks: &[u8],
    at: u64,
) -> Result<bool> {
    if blocks.is_empty() {
        return Ok(false);
    }
    fsutil::reserve_ahead(file, at, blocks.len() as u64);
    if let Some(direct) = direct {
        match direct.write_all_at(blocks, at) {
            Ok(()) => return Ok(false),
            // EINVAL: an alignment or a file the device or file system will not take
            // directly. Whatever part landed is rewritten below with the same bytes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(crate::error::Error::io("write pack", path, e)),
        }
    }
    file.write_all_at(blocks, at).at("write pack", path)?;
    fsutil::start_writeback(file, at, blocks.len() as u64);
    Ok(direct.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_land_byte_for_byte_around_the_bytes_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        // A file whose committed bytes end mid-block, as a pack's do.
        let head: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &head).unwrap();
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        let mut runs = DirectRuns::new(Vec::new());
        let mut expected = head.clone();
        // Runs of uneven lengths, one past the size of the staging buffer.
        for (i, len) in [1usize, 4095, 4097, DIRECT_STAGE_BYTES + 3, 10, 0, 777]
            .into_iter()
            .enumerate()
        {
            let run: Vec<u8> = (0..len).map(|j| (i * 41 + j * 7) as u8).collect();
            runs.write(&file, &path, expected.len() as u64, &run)
                .unwrap();
            expected.extend_from_slice(&run);
        }
        runs.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        // A run that does not follow the last one starts the staging over.
        runs.write(&file, &path, 4000, b"elsewhere").unwrap();
        runs.finish().unwrap();
        expected[4000..4009].copy_from_slice(b"elsewhere");
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        assert!(runs
            .into_buffers()
            .iter()
            .any(|b| b.len() >= DIRECT_STAGE_BYTES));
    }

    #[test]
    fn a_run_written_in_pieces_stays_one_run_past_its_windows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pack");
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        let mut runs = DirectRuns::new(Vec::new());
        // Starts mid-block, in pieces that end mid-block, for two and a half windows.
        let start = 100u64;
        let piece = 1000usize;
        let total = 2 * DIRECT_STAGE_BYTES + DIRECT_STAGE_BYTES / 2;
        let bytes: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        for (i, chunk) in bytes.chunks(piece).enumerate() {
            runs.write(&file, &path, start + (i * piece) as u64, chunk)
                .unwrap();
        }
        // One run: its head, then two whole windows written, and the rest staged.
        let t = runs.target.as_ref().expect("a run in progress");
        let head = DIRECT_ALIGN_BYTES as u64 - start;
        assert_eq!(t.base, start + head + 2 * DIRECT_STAGE_BYTES as u64);
        assert_eq!(
            t.staged as u64,
            total as u64 - head - 2 * DIRECT_STAGE_BYTES as u64
        );
        runs.finish().unwrap();
        let mut expected = vec![0u8; start as usize];
        expected.extend_from_slice(&bytes);
        assert_eq!(std::fs::read(&path).unwrap(), expected);
    }

    #[test]
    fn a_window_that_fails_to_land_is_an_error_at_the_next_window_or_the_finish() {
        let dir = tempfile::tempdir().unwrap();
        // A path that cannot be opened for direct writes (a folder), and a handle that cannot
        // write: every window fails on the lander's thread.
        let path = dir.path().join("not-a-pack");
        std::fs::create_dir(&path).unwrap();
        let other = dir.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        let file = Arc::new(File::open(&other).unwrap());
        let window = vec![7u8; DIRECT_STAGE_BYTES];
        let mut runs = DirectRuns::new(Vec::new());
        // The first window goes to the lander; the error comes back with the second.
        runs.write(&file, &path, 0, &window).unwrap();
        let err = runs.write(&file, &path, window.len() as u64, &window);
        let err = match err {
            Err(e) => e,
            // Or with the finish, when the second window did not have to wait for the first.
            Ok(()) => runs.finish().unwrap_err(),
        }
        .to_string();
        assert!(err.contains("not-a-pack"), "{err}");
        assert_eq!(std::fs::read(&other).unwrap(), b"x");
    }

    #[test]
    fn a_write_that_fails_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"x").unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let mut runs = DirectRuns::new(Vec::new());
        // Mid-block: the head goes through the page cache at once, and fails there.
        let err = runs
            .write(&file, &path, 1, b"more")
            .unwrap_err()
            .to_string();
        assert!(err.contains("read-only"), "{err}");
        // On a block boundary: staged, and the failure comes when it lands.
        runs.write(&file, &path, 4096, b"more").unwrap();
        let err = runs.finish().unwrap_err().to_string();
        assert!(err.contains("read-only"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }
}
