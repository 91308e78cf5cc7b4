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
    let dir = root.join(LOOSE_DIR);
    let mut out = Vec::new();
    let p = prefix_len as usize;
    if p == 0 {
        for e in fs::read_dir(&dir).at("list", &dir)? {
            let e = e.at("list", &dir)?;
            // Only the exact lowercase spelling is an object: the store never writes another.
            if let Some(name) = e.file_name().to_str() {
                if let Ok(k) = name.parse::<Key>() {
                    if k.to_hex() == name {
                        out.push(k);
                    }
                }
            }
        }
        return Ok(out);
    }
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let e = e.at("list", &dir)?;
        let name = e.file_name();
        let Some(prefix) = name.to_str() else {
            continue;
        };
        if prefix.len() != p
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            continue;
        }
        let sub = e.path();
        let rd = match fs::read_dir(&sub) {
            Ok(rd) => rd,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(Error::io("list", sub, err)),
        };
        for f in rd {
            let f = f.at("list", &sub)?;
            if let Some(rest) = f.file_name().to_str() {
                if let Ok(k) = format!("{prefix}{rest}").parse::<Key>() {
                    if k.to_hex() == format!("{prefix}{rest}") {
                        out.push(k);
                    }
                }
            }
        }
    }
    Ok(out)
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
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .at("create", &path)?;
        // Exclusive advisory lock: released by the kernel when the process dies.
        file.try_lock()
            .map_err(|e| Error::io("lock", &path, std::io::Error::other(e.to_string())))?;
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
    let parent = ensure_parent(dest, durable_parent)?;
    // Renaming over an existing copy is fine: same key, same bytes (and a corrupt copy gets replaced).
    fs::rename(sandbox, dest).at("rename into", dest)?;
    Ok(parent)
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
