//! Copy while hashing, then verify the copy by reading it back.
//!
//! Each file is read once: the bytes go to a temporary file beside the destination and to the
//! digest lanes at the same time. The temporary file is fsynced, its pages dropped from the cache
//! where the OS allows (so the read-back sees the disk, not memory), re-hashed, compared, and only
//! then renamed into place with the source's mtime.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use basin_hash::read::{hash_file, hash_reader_pipelined};
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
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.basin-copy.{}", std::process::id()))
}

/// Copies `source` to `dest` (parents created), hashing with `specs`, then verifies the copy.
/// With `no_clobber`, an existing `dest` is an error. Errors are messages for the failed-files list.
pub fn copy_file(source: &Path, dest: &Path, specs: &[AlgoSpec], read: &ReadOptions, no_clobber: bool) -> Result<CopiedFile, String> {
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
        std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let temp = temp_path_for(dest);
    let result = (|| {
        let mut out = OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| format!("cannot create {}: {e}", temp.display()))?;
        let (bytes, digests) = hash_reader_pipelined(Tee { inner: &mut input, sink: &mut out }, specs, read)
            .map_err(|e| format!("copy failed: {e}"))?;
        let source_after = input.metadata().map(|m| FileMeta::from_metadata(&m)).map_err(|e| format!("cannot stat: {e}"))?;
        if bytes != source_meta.size_bytes || source_after != source_meta {
            return Err("source changed while being copied".to_string());
        }
        out.sync_all().map_err(|e| format!("fsync of {} failed: {e}", temp.display()))?;
        drop_cached_pages(&out);
        let mut reread = File::open(&temp).map_err(|e| format!("cannot reopen {}: {e}", temp.display()))?;
        let (dest_bytes, dest_digests) = hash_file(&mut reread, bytes, specs, read, &mut Vec::new())
            .map_err(|e| format!("read-back of {} failed: {e}", temp.display()))?;
        if dest_bytes != bytes || dest_digests != digests {
            return Err(format!("copy at {} does not match the source on read-back", dest.display()));
        }
        if let Ok(mtime) = source_before.modified() {
            let _ = out.set_modified(mtime);
        }
        std::fs::rename(&temp, dest).map_err(|e| format!("cannot rename into {}: {e}", dest.display()))?;
        let dest_meta = std::fs::metadata(dest).map(|m| FileMeta::from_metadata(&m)).map_err(|e| format!("cannot stat copy: {e}"))?;
        Ok(CopiedFile { source_meta, dest_meta, digests })
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
