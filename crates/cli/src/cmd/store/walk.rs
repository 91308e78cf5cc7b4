//! Expanding `basin import` arguments into the regular files they name, in a stable order.
//!
//! A path given on the command line is followed if it is a symlink (the user named it); inside
//! folders, symlinks and special files are skipped with a note, so a tree is imported as what it
//! holds and a link cannot pull in files from outside it.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// What the walk found besides files worth mentioning.
#[derive(Debug, Default)]
pub struct Walk {
    /// Regular files: a folder's own files sorted by name, then its subfolders in name order.
    pub files: Vec<PathBuf>,
    /// Symlinks and special files inside folders that were not imported.
    pub skipped: Vec<PathBuf>,
}

pub fn regular_files(roots: &[PathBuf]) -> anyhow::Result<Walk> {
    let mut walk = Walk::default();
    for root in roots {
        let meta = fs::metadata(root).with_context(|| format!("read {}", root.display()))?;
        if meta.is_dir() {
            visit_folder(root, &mut walk)?;
        } else if meta.is_file() {
            walk.files.push(root.clone());
        } else {
            anyhow::bail!("{} is neither a file nor a folder", root.display());
        }
    }
    Ok(walk)
}

fn visit_folder(folder: &Path, walk: &mut Walk) -> anyhow::Result<()> {
    // An explicit stack instead of recursion: trees can be deeper than the thread's stack allows.
    let mut pending = vec![folder.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("read folder {}", dir.display()))? {
            let entry = entry.with_context(|| format!("read folder {}", dir.display()))?;
            let kind = entry
                .file_type()
                .with_context(|| format!("read {}", entry.path().display()))?;
            entries.push((entry.file_name(), kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subfolders = Vec::new();
        for (name, kind) in entries {
            let path = dir.join(name);
            if kind.is_file() {
                walk.files.push(path);
            } else if kind.is_dir() {
                subfolders.push(path);
            } else {
                walk.skipped.push(path);
            }
        }
        // Reversed so the stack pops them in name order, keeping the walk depth first and sorted.
        pending.extend(subfolders.into_iter().rev());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_then_subfolders_sorted_and_skips_links() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("t");
        fs::create_dir_all(root.join("b/inner")).expect("mkdir");
        fs::create_dir_all(root.join("a")).expect("mkdir");
        for f in ["z.txt", "a/1", "b/inner/2", "b/0"] {
            fs::write(root.join(f), f).expect("write");
        }
        std::os::unix::fs::symlink(root.join("z.txt"), root.join("link")).expect("symlink");
        let walk = regular_files(std::slice::from_ref(&root)).expect("walk");
        let rel: Vec<_> = walk
            .files
            .iter()
            .map(|p| p.strip_prefix(&root).expect("under root").to_path_buf())
            .collect();
        let want: Vec<PathBuf> = ["z.txt", "a/1", "b/0", "b/inner/2"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(rel, want);
        assert_eq!(walk.skipped, vec![root.join("link")]);
    }
}
