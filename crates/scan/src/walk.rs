//! Walking a root: which files a scan sees, in a stable (sorted) order, after the filters.
//!
//! Only regular files are yielded; symlinks are not followed unless asked, and FIFOs, sockets and
//! devices are never opened. Filters run on the `lstat` the walk already made, before any open.

use std::fs::Metadata;
use std::path::{Path, PathBuf};

use crate::ScanError;

/// What a walk keeps. The default keeps every regular file, hidden ones included.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Skip names starting with `.` (files and folders).
    pub exclude_hidden: bool,
    pub size_min_bytes: Option<u64>,
    pub size_max_bytes: Option<u64>,
    /// Keep only these extensions (lower-case, no dot); empty keeps all.
    pub extensions_allow: Vec<String>,
    /// Drop these extensions (lower-case, no dot).
    pub extensions_deny: Vec<String>,
    /// Keep files modified at or after this instant (ns since the epoch).
    pub modified_since_ns: Option<i64>,
    /// Keep files modified strictly before this instant.
    pub modified_before_ns: Option<i64>,
    /// Honour `.gitignore`, `.ignore` and `.git/info/exclude` files.
    pub gitignore: bool,
    /// Follow symbolic links to files and folders.
    pub follow_symlinks: bool,
    /// Stay on the file system of the root.
    pub one_file_system: bool,
}

impl Filters {
    /// Whether a file with this name and metadata passes the size, extension and time filters.
    pub fn keeps(&self, name: &str, meta: &FileMeta) -> bool {
        if self.size_min_bytes.is_some_and(|min| meta.size_bytes < min)
            || self.size_max_bytes.is_some_and(|max| meta.size_bytes > max)
            || self.modified_since_ns.is_some_and(|t| meta.mtime_ns < t)
            || self.modified_before_ns.is_some_and(|t| meta.mtime_ns >= t)
        {
            return false;
        }
        if self.extensions_allow.is_empty() && self.extensions_deny.is_empty() {
            return true;
        }
        let extension = Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if !self.extensions_allow.is_empty() && !self.extensions_allow.contains(&extension) {
            return false;
        }
        !self.extensions_deny.contains(&extension)
    }
}

/// The facts a resumed run compares to decide a file is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMeta {
    pub size_bytes: u64,
    pub mtime_ns: i64,
    /// Inode number on Unix; 0 where the platform has none (Windows support would use the file index).
    pub inode: u64,
}

impl FileMeta {
    pub fn from_metadata(meta: &Metadata) -> FileMeta {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileMeta {
                size_bytes: meta.len(),
                mtime_ns: meta
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.mtime_nsec()),
                inode: meta.ino(),
            }
        }
        #[cfg(not(unix))]
        {
            FileMeta {
                size_bytes: meta.len(),
                mtime_ns: meta
                    .modified()
                    .map(crate::clock::system_time_ns)
                    .unwrap_or(0),
                inode: 0,
            }
        }
    }
}

/// A root as the user named it. `dir` is canonical; rows store paths relative to it.
#[derive(Debug, Clone)]
pub struct ScanRoot {
    /// Canonical absolute folder.
    pub dir: PathBuf,
    /// When the user named a single file: its path relative to `dir`.
    pub only: Option<String>,
    /// The argument as given, used to print paths the way the user wrote them.
    pub given: PathBuf,
}

impl ScanRoot {
    /// Resolves a user argument. A file becomes its folder plus `only`.
    pub fn resolve(given: &Path) -> Result<ScanRoot, ScanError> {
        let canonical = std::fs::canonicalize(given).map_err(|source| ScanError::Io {
            path: given.to_path_buf(),
            source,
        })?;
        let meta = std::fs::metadata(&canonical).map_err(|source| ScanError::Io {
            path: given.to_path_buf(),
            source,
        })?;
        if meta.is_dir() {
            return Ok(ScanRoot {
                dir: canonical,
                only: None,
                given: given.to_path_buf(),
            });
        }
        let dir = canonical
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let name = canonical
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(ScanRoot {
            dir,
            only: Some(name),
            given: given.to_path_buf(),
        })
    }

    /// The key of this root in a catalog.
    pub fn key(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// How to print `rel_path` to the user: under the argument as given.
    pub fn display_path(&self, rel_path: &str) -> String {
        if self.only.as_deref() == Some(rel_path) {
            return self.given.to_string_lossy().into_owned();
        }
        let given = self.given.to_string_lossy();
        if self.only.is_some() {
            // A sibling of a named file (a retried failure, say): print it beside the file.
            let parent = self
                .given
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            return if parent.is_empty() {
                rel_path.to_string()
            } else {
                format!("{parent}/{rel_path}")
            };
        }
        if given == "." {
            return rel_path.to_string();
        }
        format!("{}/{rel_path}", given.trim_end_matches('/'))
    }

    pub fn abs_path(&self, rel_path: &str) -> PathBuf {
        self.dir.join(rel_path)
    }
}

/// One thing a walk found.
#[derive(Debug)]
pub enum WalkItem {
    File {
        rel_path: String,
        meta: FileMeta,
    },
    /// A folder or file the walk could not read; the path is relative to the root.
    Error {
        rel_path: String,
        message: String,
    },
}

/// Relative path with `/` separators whatever the platform.
pub fn relative_string(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut out = String::new();
    for (i, c) in rel.components().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&c.as_os_str().to_string_lossy());
    }
    out
}

/// Walks `root` in sorted order, calling `visit` for every kept regular file and every error.
/// `visit` returns false to stop early.
pub fn walk(root: &ScanRoot, filters: &Filters, visit: &mut dyn FnMut(WalkItem) -> bool) {
    if let Some(only) = &root.only {
        let path = root.abs_path(only);
        let item = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => WalkItem::File {
                rel_path: only.clone(),
                meta: FileMeta::from_metadata(&m),
            },
            Ok(_) => match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => WalkItem::File {
                    rel_path: only.clone(),
                    meta: FileMeta::from_metadata(&m),
                },
                _ => WalkItem::Error {
                    rel_path: only.clone(),
                    message: "not a regular file".into(),
                },
            },
            Err(e) => WalkItem::Error {
                rel_path: only.clone(),
                message: e.to_string(),
            },
        };
        visit(item);
        return;
    }
    let mut builder = ignore::WalkBuilder::new(&root.dir);
    builder
        .standard_filters(false)
        .hidden(filters.exclude_hidden)
        .git_ignore(filters.gitignore)
        .git_exclude(filters.gitignore)
        .ignore(filters.gitignore)
        .require_git(false)
        .follow_links(filters.follow_symlinks)
        .same_file_system(filters.one_file_system)
        .sort_by_file_name(|a, b| a.cmp(b));
    for entry in builder.build() {
        let entry = match entry {
            Ok(e) => e,
            Err(err) => {
                let rel_path = walk_error_path(&err)
                    .map(|p| relative_string(&root.dir, &p))
                    .unwrap_or_default();
                if !visit(WalkItem::Error {
                    rel_path,
                    message: err.to_string(),
                }) {
                    return;
                }
                continue;
            }
        };
        let Some(file_type) = entry.file_type() else {
            continue;
        };
        if !file_type.is_file() {
            // Folders, symlinks not followed, FIFOs, sockets, devices: never opened.
            continue;
        }
        let rel_path = relative_string(&root.dir, entry.path());
        let meta = match entry.metadata() {
            Ok(m) => FileMeta::from_metadata(&m),
            Err(err) => {
                if !visit(WalkItem::Error {
                    rel_path,
                    message: err.to_string(),
                }) {
                    return;
                }
                continue;
            }
        };
        let name = entry.file_name().to_string_lossy();
        if !filters.keeps(&name, &meta) {
            continue;
        }
        if !visit(WalkItem::File { rel_path, meta }) {
            return;
        }
    }
}

fn walk_error_path(err: &ignore::Error) -> Option<PathBuf> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            walk_error_path(err)
        }
        ignore::Error::Loop { child, .. } => Some(child.clone()),
        ignore::Error::Partial(errs) => errs.first().and_then(walk_error_path),
        _ => None,
    }
}
