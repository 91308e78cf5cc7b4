//! Per-root run locks: one writer per (catalog, root) at a time.
//!
//! The lock is an OS advisory lock (`flock` on Unix, `LockFileEx` on Windows, through `fs4`) on a
//! small file whose content names the holder (pid, host, start time). The OS drops the lock when
//! the holder dies, however it dies, so a lock left by a killed run is taken over by the next run
//! without anyone deleting files; the content is only there to name the holder in the error.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;

use crate::clock;

/// Who holds a lock, as written in the lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// UTC, `2026-11-21T14:06:52Z`.
    pub started: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {}",
            self.pid, self.host, self.started
        )
    }
}

#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("root {root} is being scanned by {holder} (lock file {})", lock_path.display())]
    Held {
        root: String,
        holder: LockHolder,
        lock_path: PathBuf,
    },
    #[error("lock file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RootLock {
    file: File,
    path: PathBuf,
}

impl RootLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock for `root` in `lock_dir` (created if missing), or fails at once naming the holder.
    pub fn acquire(lock_dir: &Path, root: &str) -> Result<RootLock, LockError> {
        fn io(path: &Path) -> impl Fn(std::io::Error) -> LockError + '_ {
            move |source| LockError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
        std::fs::create_dir_all(lock_dir).map_err(io(lock_dir))?;
        let path = lock_dir.join(format!(
            "{:016x}.lock",
            xxhash_rust::xxh3::xxh3_64(root.as_bytes())
        ));
        // Never truncate on open: the holder's content must survive a failed attempt.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let taken = file.try_lock_exclusive().map_err(io(&path))?;
        if !taken {
            let mut content = String::new();
            let _ = file.read_to_string(&mut content);
            let holder = parse_holder(&content).unwrap_or(LockHolder {
                pid: 0,
                host: "an unknown host".into(),
                started: "an unknown time".into(),
            });
            return Err(LockError::Held {
                root: root.to_string(),
                holder,
                lock_path: path,
            });
        }
        let holder = LockHolder {
            pid: std::process::id(),
            host: host_name(),
            started: clock::format_utc(clock::now_ns()),
        };
        let content = format!(
            "pid={}\nhost={}\nstarted={}\nroot={root}\n",
            holder.pid, holder.host, holder.started
        );
        file.set_len(0).map_err(io(&path))?;
        file.rewind().map_err(io(&path))?;
        file.write_all(content.as_bytes()).map_err(io(&path))?;
        file.flush().map_err(io(&path))?;
        Ok(RootLock { file, path })
    }
}

impl Drop for RootLock {
    fn drop(&mut self) {
        // The file stays: deleting it would race with a process that opened it and waits to lock it.
        let _ = FileExt::unlock(&self.file);
    }
}

/// Reads the holder from a lock file's content.
pub fn parse_holder(content: &str) -> Option<LockHolder> {
    let field = |key: &str| {
        content
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::to_string)
    };
    Some(LockHolder {
        pid: field("pid=")?.parse().ok()?,
        host: field("host=")?,
        started: field("started=")?,
    })
}

/// This machine's name, for lock files and run rows.
pub fn host_name() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it on success.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown-host".into())
}
