//! Bulk reads of pack bytes: a span the page cache holds whole is copied from it, and any other
//! is read around it (`O_DIRECT`), into the reader's own buffer.
//!
//! Why: reading a pack the page cache has not seen makes the kernel fill fresh page-cache pages
//! and then copy out of them. On guests whose freed memory goes back to the host, every fresh
//! page faults on the host first: a 500 MB file read cold in 512 KiB `pread`s took 1.06–1.41 s
//! on these VMs, and 0.23–0.30 s read with `O_DIRECT` into one reused buffer (the disk itself
//! is not the limit). A one-time bulk read has no reason to push what other readers use out of
//! the cache either. Bytes the cache does hold stay cheaper to copy than to read again.
//!
//! What the cache holds is asked with `cachestat` (Linux 6.5), which reads nothing. Asking by
//! reading with `RWF_NOWAIT` instead starts the kernel's readahead on a miss, which then fills
//! the cache megabytes ahead of every later span, so that all but the first were "cached".
//! Where `cachestat` is missing, spans are read the ordinary way.
//!
//! Direct reads start and end on block boundaries, so a few bytes around the span are read
//! too; the span's own bytes start where [`SpanReads::read`] says. A pack's committed bytes
//! never change, and the kernel writes a range's dirty pages back before reading it directly,
//! so the bytes are the same either way. Where `O_DIRECT` is refused (a file system without
//! it, an alignment the device rejects) or fails, the span is read the ordinary way, which also
//! reports a short or unreadable pack exactly.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct::{open_direct, DIRECT_ALIGN_BYTES};
use crate::error::Result;
use crate::pack;

/// Reads spans of packs for one bulk read, keeping the packs it opened for direct reads.
pub(crate) struct SpanReads {
    root: PathBuf,
    /// Per pack, the file opened with `O_DIRECT`; `None` where that was refused.
    direct: HashMap<u64, Option<File>>,
}

impl SpanReads {
    pub(crate) fn new(root: &Path) -> SpanReads {
        SpanReads {
            root: root.to_path_buf(),
            direct: HashMap::new(),
        }
    }

    /// Reads `len` bytes of pack `pack` (open as `file`) at `offset` into `buf`, and returns
    /// where in `buf` they start.
    pub(crate) fn read(
        &mut self,
        file: &File,
        pack: u64,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<usize> {
        if cached_whole(file, offset, len) == Some(false) {
            if let Some(direct) = self.direct_file(pack) {
                match read_direct(direct, offset, len, buf) {
                    Direct::Read(at) => return Ok(at),
                    Direct::Short => {}
                    Direct::Refused => {
                        self.direct.insert(pack, None);
                    }
                }
            }
        }
        buf.resize(len, 0);
        pack::read_exact_at(file, &mut buf[..len], offset, pack)?;
        Ok(0)
    }

    fn direct_file(&mut self, pack: u64) -> Option<&File> {
        let root = &self.root;
        self.direct
            .entry(pack)
            .or_insert_with(|| open_direct(&pack::pack_path(root, pack), false))
            .as_ref()
    }
}

/// Whether the page cache holds every page of `offset..offset + len` of `file`; `None` where
/// the kernel cannot say (before Linux 6.5).
#[cfg(target_os = "linux")]
fn cached_whole(file: &File, offset: u64, len: usize) -> Option<bool> {
    use std::os::fd::AsRawFd;
    /// `cachestat`'s number, the same on every architecture (the syscall table they share
    /// since Linux 5.1); the `libc` crate does not name it for all of them.
    const SYS_CACHESTAT: libc::c_long = 451;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
    if page == 0 || len == 0 {
        return None;
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Cachestat::default();
    // SAFETY: the kernel reads `range` and writes `stat`, both live, of the layout it expects.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            libc::c_long::from(file.as_raw_fd()),
            &range as *const Range,
            &mut stat as *mut Cachestat,
            0 as libc::c_long,
        )
    };
    if rc != 0 {
        return None;
    }
    let pages = offset.checked_add(len as u64)?.div_ceil(page) - offset / page;
    Some(stat.nr_cache >= pages)
}

#[cfg(not(target_os = "linux"))]
fn cached_whole(_file: &File, _offset: u64, _len: usize) -> Option<bool> {
    None
}

/// How a direct read of a span went.
enum Direct {
    /// Read; the span starts at this index of the buffer.
    Read(usize),
    /// The file ended first.
    Short,
    /// Refused or failed: this file is read the ordinary way from now on.
    Refused,
}

/// Reads the blocks covering `offset..offset + len` with `O_DIRECT` into an aligned window of
/// `buf`.
fn read_direct(direct: &File, offset: u64, len: usize, buf: &mut Vec<u8>) -> Direct {
    let align = DIRECT_ALIGN_BYTES as u64;
    let first_block = offset - offset % align;
    let end = offset + len as u64;
    let Some(blocks_end) = end.checked_next_multiple_of(align) else {
        return Direct::Refused;
    };
    let window = (blocks_end - first_block) as usize;
    buf.resize(window + DIRECT_ALIGN_BYTES, 0);
    let at = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
    if at >= DIRECT_ALIGN_BYTES {
        return Direct::Refused;
    }
    let need = (end - first_block) as usize;
    let mut got = 0usize;
    while got < need {
        match direct.read_at(&mut buf[at + got..at + window], first_block + got as u64) {
            Ok(0) => return Direct::Short,
            // Past the end of the file a read stops short of a block boundary.
            Ok(n) if n % DIRECT_ALIGN_BYTES != 0 && got + n < need => return Direct::Short,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Direct::Refused,
        }
    }
    Direct::Read(at + (offset - first_block) as usize)
}
