//! Loose objects: one file per object under `loose/`, written in `sandbox/` while hashing and
//! renamed into place only once durable.
//!
//! Writers in any number of processes need no lock: the sandbox file has a unique name, and the
//! rename is atomic. Two writers of the same content converge on one file with the same bytes.
//! A writer holds an advisory lock on its sandbox entry so `clean` never removes work in progress.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::key::{HashAlgorithm, Key};

pub const LOOSE_DIR: &str = "loose";
pub const SANDBOX_DIR: &str = "sandbox";

/// Read size for streaming objects in and out.
pub(crate) const STREAM_CHUNK_BYTES: usize = 1 << 20;

/// The path of a loose object.
pub(crate) fn loose_path(root: &Path, prefix_len: u8, key: &Key) -> PathBuf {
    let hex = key.to_hex();
    let p = prefix_len as usize;
    if p == 0 {
        root.join(LOOSE_DIR).join(hex)
    } else {
        root.join(LOOSE_DIR).join(&hex[..p]).join(&hex[p..])
    }
}

/// Every loose object key on disk (names that are not keys are ignored), unsorted.
pub(crate) fn list_loose(root: &Path, prefix_len: u8) -> Result<Vec<Key>> {
    let mut out = Vec::new();
    walk_loose(root, prefix_len, false, &mut |entry| {
        if let LooseEntry::Object(k) = entry {
            out.push(k);
        }
    })?;
    Ok(out)
}

/// What a walk of `loose/` meets.
pub(crate) enum LooseEntry {
    Object(Key),
    /// A name that is not an object of this layout (only reported when asked for).
    Stray(PathBuf),
}

/// Walks `loose/` once and hands every object key (and, if `strays`, every name that is not
/// one) to `visit`.
///
/// Only the exact lowercase spelling of a key is an object: the store never writes another. A
/// prefix folder that vanishes meanwhile is skipped; a prefix name that is not a folder is an
/// error. A new store has every prefix folder (`pack` of everything and `clean` remove the empty
/// ones again), so on Linux the walk reads entries with `getdents64` into one reused buffer,
/// opening each folder relative to `loose/`: listing an empty folder costs one open, two reads
/// and a close, nothing else.
pub(crate) fn walk_loose(
    root: &Path,
    prefix_len: u8,
    strays: bool,
    visit: &mut dyn FnMut(LooseEntry),
) -> Result<()> {
    let dir = root.join(LOOSE_DIR);
    let p = prefix_len as usize;
    let mut names = dirents::Lister::new();
    let top = names.open(None, &dir).at("list", &dir)?;
    let mut prefixes: Vec<Vec<u8>> = Vec::new();
    names
        .for_each(&top, &mut |name| {
            if p == 0 {
                match key_of_hex(&[name]) {
                    Some(k) => visit(LooseEntry::Object(k)),
                    None if strays => visit(LooseEntry::Stray(dir.join(os_name(name)))),
                    None => {}
                }
            } else if name.len() == p && is_lower_hex(name) {
                prefixes.push(name.to_vec());
            } else if strays {
                visit(LooseEntry::Stray(dir.join(os_name(name))));
            }
        })
        .at("list", &dir)?;
    // Most of the time goes to opening and reading (mostly empty) prefix folders: with 256 or
    // more of them, a second thread reads the second half meanwhile.
    let (first, second) = prefixes.split_at(prefixes.len() / 2);
    let entries = if prefixes.len() >= WALK_SPLIT_PREFIXES_MIN {
        std::thread::scope(|s| {
            let other = std::thread::Builder::new()
                .name("basin-list-loose".into())
                .spawn_scoped(s, || read_prefixes(&top, &dir, second, strays));
            let mut entries = read_prefixes(&top, &dir, first, strays)?;
            entries.extend(match other {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?,
                // No thread to be had: read them here.
                Err(_) => read_prefixes(&top, &dir, second, strays)?,
            });
            Ok::<_, Error>(entries)
        })?
    } else {
        read_prefixes(&top, &dir, &prefixes, strays)?
    };
    entries.into_iter().for_each(visit);
    Ok(())
}

/// Prefix folders at which [`walk_loose`] splits the work over two threads.
const WALK_SPLIT_PREFIXES_MIN: usize = 256;

/// The objects (and, if `strays`, other names) in the prefix folders `prefixes` of `dir`.
fn read_prefixes(
    top: &dirents::Dir,
    dir: &Path,
    prefixes: &[Vec<u8>],
    strays: bool,
) -> Result<Vec<LooseEntry>> {
    let mut names = dirents::Lister::new();
    let mut out = Vec::new();
    for prefix in prefixes {
        let sub = || dir.join(os_name(prefix));
        let folder = match names.open(Some(top), &sub()) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("list", sub(), e)),
        };
        names
            .for_each(
                &folder,
                &mut |rest| match (rest.len() + prefix.len() == KEY_HEX_LEN)
                    .then(|| key_of_hex(&[prefix.as_slice(), rest]))
                    .flatten()
                {
                    Some(k) => out.push(LooseEntry::Object(k)),
                    None if strays => out.push(LooseEntry::Stray(sub().join(os_name(rest)))),
                    None => {}
                },
            )
            .map_err(|e| Error::io("list", sub(), e))?;
    }
    Ok(out)
}

/// Hex digits in a key's name.
const KEY_HEX_LEN: usize = 2 * crate::key::KEY_BYTES;

fn os_name(name: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(name)
}

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key spelled, in lowercase hex, by the concatenation of `parts`.
fn key_of_hex(parts: &[&[u8]]) -> Option<Key> {
    let mut digits = [0u8; KEY_HEX_LEN];
    let mut len = 0;
    for part in parts {
        digits.get_mut(len..len + part.len())?.copy_from_slice(part);
        len += part.len();
    }
    if len != KEY_HEX_LEN {
        return None;
    }
    let nibble = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; crate::key::KEY_BYTES];
    for (out, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *out = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Key::from_slice(&bytes)
}

/// Folder listing without per-entry allocations: raw `getdents64` on Linux.
#[cfg(target_os = "linux")]
mod dirents {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    /// Bytes of folder entries fetched per `getdents64` call.
    const DIRENT_BUF_BYTES: usize = 32 << 10;
    /// Bytes before the name in a `linux_dirent64` (ino, off, reclen, type).
    const DIRENT_NAME_AT: usize = 19;

    /// An open folder.
    pub(super) type Dir = OwnedFd;

    pub(super) struct Lister {
        buf: Vec<u8>,
    }

    impl Lister {
        pub(super) fn new() -> Lister {
            // Room to start the entries at an 8-byte boundary, as the kernel lays them out.
            Lister {
                buf: vec![0u8; DIRENT_BUF_BYTES + 8],
            }
        }

        /// Opens the folder `path` (relative to `parent` when given: only its last part is used).
        pub(super) fn open(
            &self,
            parent: Option<&OwnedFd>,
            path: &Path,
        ) -> std::io::Result<OwnedFd> {
            let (dirfd, name) = match parent {
                Some(p) => (
                    p.as_raw_fd(),
                    path.file_name().map_or(path.as_os_str(), |n| n),
                ),
                None => (libc::AT_FDCWD, path.as_os_str()),
            };
            let name = CString::new(name.as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            // SAFETY: `name` is NUL-terminated and `dirfd` is open (or AT_FDCWD) for the call.
            let fd = unsafe {
                libc::openat(
                    dirfd,
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just returned by openat and nothing else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }

        /// Calls `visit` with the name of every entry of `dir` but `.` and `..`.
        pub(super) fn for_each(
            &mut self,
            dir: &OwnedFd,
            visit: &mut dyn FnMut(&[u8]),
        ) -> std::io::Result<()> {
            let at = self.buf.as_ptr().align_offset(8).min(8);
            let buf = &mut self.buf[at..at + DIRENT_BUF_BYTES];
            loop {
                // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `dir` is open.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        dir.as_raw_fd(),
                        buf.as_mut_ptr(),
                        buf.len(),
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
                    return Ok(());
                }
                let filled = buf.get(..n as usize).ok_or_else(bad_entries)?;
                let mut rec = 0;
                while rec < filled.len() {
                    let head = filled
                        .get(rec..rec + DIRENT_NAME_AT)
                        .ok_or_else(bad_entries)?;
                    let reclen = u16::from_ne_bytes([head[16], head[17]]) as usize;
                    let field = filled
                        .get(rec + DIRENT_NAME_AT..rec + reclen)
                        .ok_or_else(bad_entries)?;
                    let name = &field[..field.iter().position(|&b| b == 0).unwrap_or(field.len())];
                    if name != b"." && name != b".." {
                        visit(name);
                    }
                    rec += reclen.max(DIRENT_NAME_AT);
                }
            }
        }
    }

    fn bad_entries() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "getdents64 returned a malformed entry",
        )
    }
}

/// Folder listing through `std::fs::read_dir` where `getdents64` is not available.
#[cfg(not(target_os = "linux"))]
mod dirents {
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    /// A folder, checked to be readable.
    pub(super) type Dir = PathBuf;

    pub(super) struct Lister;

    impl Lister {
        pub(super) fn new() -> Lister {
            Lister
        }

        /// Checks that `path` is a readable folder (errors surface here, as on Linux).
        pub(super) fn open(
            &self,
            _parent: Option<&PathBuf>,
            path: &Path,
        ) -> std::io::Result<PathBuf> {
            std::fs::read_dir(path)?;
            Ok(path.to_path_buf())
        }

        pub(super) fn for_each(
            &mut self,
            dir: &PathBuf,
            visit: &mut dyn FnMut(&[u8]),
        ) -> std::io::Result<()> {
            for e in std::fs::read_dir(dir)? {
                visit(e?.file_name().as_bytes());
            }
            Ok(())
        }
    }
}

/// Reads a loose object and checks that its content hashes to its name.
pub(crate) fn read_loose(path: &Path, key: &Key, hash: HashAlgorithm) -> Result<Option<Vec<u8>>> {
    let bytes = match open_noatime(path).and_then(|mut f| {
        let mut b = Vec::new();
        f.read_to_end(&mut b).map(|_| b)
    }) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("read", path, e)),
    };
    let actual = hash.hash(&bytes);
    if actual != *key {
        return Err(Error::HashMismatch {
            key: *key,
            location: path.display().to_string(),
            actual,
        });
    }
    Ok(Some(bytes))
}

/// Opens a file for reading without updating its access time where the OS allows it: with
/// `relatime`, the first read after a write would otherwise cost an inode write.
pub(crate) fn open_noatime(path: &Path) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME)
            .open(path)
        {
            // O_NOATIME is refused for files of other owners: fall back to a plain open.
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
            other => other,
        }
    }
    #[cfg(not(target_os = "linux"))]
    File::open(path)
}

/// Makes sure the prefix folder of a loose path exists; a new folder is made durable in its parent.
/// `durable`: fsync the folder's parent when the folder is new (a batch skips it: its
/// `syncfs` round makes the new folder durable with everything else).
pub(crate) fn ensure_parent(path: &Path, durable: bool) -> Result<PathBuf> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    match fs::create_dir(&parent) {
        Ok(()) => {
            if let Some(grand) = parent.parent().filter(|_| durable) {
                fsutil::fsync_dir(grand)?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("create folder", parent, e)),
    }
    Ok(parent)
}

/// A sandbox file being written: locked while open so `clean` leaves it alone.
pub(crate) struct SandboxFile {
    pub path: PathBuf,
    pub file: File,
}

impl SandboxFile {
    pub(crate) fn create(dir: &Path) -> Result<SandboxFile> {
        let path = dir.join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let file = fsutil::create_locked(&path)?;
        Ok(SandboxFile { path, file })
    }
}

/// Streams `r` into `out` while hashing; returns (key, length).
pub(crate) fn copy_hashing(
    r: &mut dyn Read,
    out: &mut dyn Write,
    hash: HashAlgorithm,
    path: &Path,
) -> Result<(Key, u64)> {
    let mut h = hash.hasher();
    let mut buf = vec![0u8; STREAM_CHUNK_BYTES];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("read source for", path, e)),
        };
        h.update(&buf[..n]);
        out.write_all(&buf[..n]).at("write", path)?;
        total += n as u64;
    }
    Ok((h.finish(), total))
}

/// Moves a durable sandbox file into its loose place. Returns the folder that needs an fsync.
pub(crate) fn install(sandbox: &Path, dest: &Path, durable_parent: bool) -> Result<PathBuf> {
    // Maintenance removes empty prefix folders, so one can vanish between its creation here and
    // the rename: then the rename finds no folder, and the folder is made again.
    let mut attempts = 0;
    loop {
        let parent = ensure_parent(dest, durable_parent)?;
        // Renaming over an existing copy is fine: same key, same bytes (and a corrupt copy gets
        // replaced).
        match fs::rename(sandbox, dest) {
            Ok(()) => return Ok(parent),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && attempts < INSTALL_ATTEMPTS_MAX
                    && sandbox.exists() =>
            {
                attempts += 1;
            }
            Err(e) => return Err(Error::io("rename into", dest, e)),
        }
    }
}

/// Times a loose write re-creates a prefix folder that maintenance removed under it.
const INSTALL_ATTEMPTS_MAX: u32 = 16;

/// Removes the prefix folders of `loose/` that are empty, so listings do not open them. A
/// folder that is not empty stays (`rmdir` refuses it atomically), and a writer that loses its
/// folder to this makes it again (see [`install`]). Not made durable: a folder that comes back
/// after a crash is harmless. Returns how many were removed.
pub(crate) fn remove_empty_prefix_dirs(root: &Path, prefix_len: u8) -> Result<u64> {
    if prefix_len == 0 {
        return Ok(0);
    }
    let dir = root.join(LOOSE_DIR);
    let mut removed = 0;
    for entry in fs::read_dir(&dir).at("list", &dir)? {
        let entry = entry.at("list", &dir)?;
        let name = entry.file_name();
        let name = name.as_encoded_bytes();
        if name.len() == prefix_len as usize
            && is_lower_hex(name)
            && fs::remove_dir(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Sandbox entries a dead or finished writer left behind: unlocked and older than `grace`.
/// Whether a write batch is alive in another handle or process: its sandbox file is locked.
pub(crate) fn live_batch_exists(root: &Path) -> Result<bool> {
    let dir = root.join(SANDBOX_DIR);
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let e = e.at("list", &dir)?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("batch-") && name.ends_with(".pack")) {
            continue;
        }
        if let Ok(f) = OpenOptions::new().read(true).open(e.path()) {
            if f.try_lock().is_err() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

pub(crate) fn stale_sandbox_entries(
    root: &Path,
    grace: std::time::Duration,
) -> Result<Vec<PathBuf>> {
    let dir = root.join(SANDBOX_DIR);
    let mut out = Vec::new();
    let now = std::time::SystemTime::now();
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let e = e.at("list", &dir)?;
        let path = e.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < grace {
            continue;
        }
        let lock_target = if meta.is_dir() {
            path.join("lock")
        } else {
            path.clone()
        };
        let free = match OpenOptions::new().read(true).open(&lock_target) {
            Ok(f) => f.try_lock().is_ok(),
            Err(_) => true,
        };
        if free {
            out.push(path);
        }
    }
    Ok(out)
}
