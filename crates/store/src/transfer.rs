//! Moving objects between stores: consistent backup while in use, and imports from another basin
//! store or from a disk-objectstore container.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::config::{StoreConfig, CONFIG_FILE};
use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use crate::index::INDEX_FILE;
use crate::key::Key;
use crate::loose::{self, LOOSE_DIR, SANDBOX_DIR};
use crate::maint::{Maintenance, PackOptions, Source};
use crate::pack::{self, PACKS_DIR};
use crate::progress::{Progress, Unit};
use crate::store::{Store, LOCKS_DIR};

/// What a backup did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackupReport {
    pub loose_copied: u64,
    pub loose_present: u64,
    pub packs_copied: u64,
    pub packs_present: u64,
    pub pack_bytes_copied: u64,
    pub packs_removed: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImportReport {
    /// Objects found in the source.
    pub objects: u64,
    /// Objects the destination already had (not read).
    pub already_present: u64,
    /// Objects read from the source and written (or found equal) in the destination.
    pub imported: u64,
    pub bytes: u64,
    /// Source objects whose content does not match their key (not imported).
    pub corrupt: Vec<String>,
}

/// Objects at most this big are read into memory during imports; larger ones stream.
const IMPORT_IN_MEMORY_BYTES_MAX: u64 = 16 << 20;

impl Maintenance<'_> {
    /// Copies the store to `dest` so that `dest` is a consistent store of the same container,
    /// while readers and loose writers keep working. Incremental: loose objects and sealed packs
    /// already in `dest` are not copied again; a pack copied partly is continued (resumable).
    /// `dest` is a valid store at every moment: its index is replaced last.
    pub fn backup(&self, dest: &Path, p: &dyn Progress) -> Result<BackupReport> {
        let store = self.store;
        let src = store.path();
        let mut report = BackupReport::default();
        prepare_backup_dest(store, dest)?;

        // 1. Loose objects: immutable files named by their content; copy the missing ones,
        //    make them durable in one round, then rename them into place.
        let keys = loose::list_loose(src, store.config().loose_prefix_len)?;
        p.start("backup loose", Some(keys.len() as u64), Unit::Objects);
        let staging = dest
            .join(SANDBOX_DIR)
            .join(format!("backup-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&staging).at("create", &staging)?;
        let mut staged = Vec::new();
        for key in keys {
            p.advance(1);
            let to = loose::loose_path(dest, store.config().loose_prefix_len, &key);
            if to.exists() {
                report.loose_present += 1;
                continue;
            }
            let from = store.loose_path(&key);
            let tmp = staging.join(key.to_hex());
            match fs::copy(&from, &tmp) {
                Ok(_) => staged.push((tmp, to)),
                // Packed and cleaned meanwhile? Not possible while we hold the lock; deleted by a
                // concurrent reader-side action is not possible either, so this is a real error.
                Err(e) => return Err(Error::io("copy loose object", from, e)),
            }
        }
        if !fsutil::syncfs(&staging)? {
            for (tmp, _) in &staged {
                File::open(tmp)
                    .and_then(|f| f.sync_all())
                    .at("fsync", tmp)?;
            }
        }
        let mut dirs = BTreeSet::new();
        for (tmp, to) in &staged {
            dirs.insert(loose::install(tmp, to, true)?);
            report.loose_copied += 1;
        }
        for d in &dirs {
            fsutil::fsync_dir(d)?;
        }
        let _ = fs::remove_dir_all(&staging);
        p.finish();

        // 2. A snapshot of the index. Maintenance is locked out, so the packs cannot change
        //    under it except for appends past their committed ends, which we do not copy.
        let snapshot = dest.join(format!(
            "{INDEX_FILE}.backup-{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let packs = {
            let mut index = self.index();
            index.snapshot_into(&snapshot)?;
            index.packs()?
        };

        // 3. Pack bytes up to each pack's committed end.
        p.start(
            "backup packs",
            Some(packs.iter().map(|r| r.end_bytes).sum()),
            Unit::Bytes,
        );
        for row in &packs {
            let from = pack::pack_path(src, row.id);
            let to = pack::pack_path(dest, row.id);
            let have = fsutil::file_len_or_zero(&to);
            let mut input = File::open(&from).at("open pack", &from)?;
            if have == row.end_bytes && same_tail(&input, &to, have)? {
                report.packs_present += 1;
                p.advance(row.end_bytes);
                continue;
            }
            let mut output = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&to)
                .at("open", &to)?;
            // Packs only grow, so a shorter copy of the same pack is a prefix: continue it
            // (resume). Its last bytes must match the source's, else copy afresh.
            let start = if have < row.end_bytes && same_tail(&input, &to, have)? {
                have
            } else {
                0
            };
            output.set_len(start).at("truncate", &to)?;
            input.seek(SeekFrom::Start(start)).at("seek", &from)?;
            output.seek(SeekFrom::Start(start)).at("seek", &to)?;
            let copied = std::io::copy(&mut (&mut input).take(row.end_bytes - start), &mut output)
                .at("copy pack to", &to)?;
            if copied != row.end_bytes - start {
                return Err(Error::CorruptPack {
                    pack: row.id,
                    reason: format!("ended after {} bytes while copying", start + copied),
                });
            }
            fsutil::datasync(&output, &to)?;
            report.packs_copied += 1;
            report.pack_bytes_copied += copied;
            p.advance(row.end_bytes);
        }
        fsutil::fsync_dir(&dest.join(PACKS_DIR))?;
        p.finish();

        // 4. Switch the backup's index, then drop packs it no longer needs.
        File::open(&snapshot)
            .and_then(|f| f.sync_all())
            .at("fsync", &snapshot)?;
        for suffix in ["-wal", "-shm"] {
            let stale = dest.join(format!("{INDEX_FILE}{suffix}"));
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", stale, e)),
            }
        }
        fs::rename(&snapshot, dest.join(INDEX_FILE)).at("rename into", dest.join(INDEX_FILE))?;
        fsutil::fsync_dir(dest)?;
        let keep: BTreeSet<u64> = packs.iter().map(|r| r.id).collect();
        for id in pack::pack_ids_on_disk(dest)? {
            if !keep.contains(&id) {
                let path = pack::pack_path(dest, id);
                fs::remove_file(&path).at("remove", &path)?;
                report.packs_removed += 1;
            }
        }
        Ok(report)
    }

    /// Imports every object of another basin store (any hash algorithm) straight into packs.
    pub fn import_store(&self, src_dir: &Path, p: &dyn Progress) -> Result<ImportReport> {
        let src = Store::open(src_dir)?;
        let same_hash = src.config().hash == self.store.config().hash;
        let keys = src.list()?;
        let mut report = ImportReport {
            objects: keys.len() as u64,
            ..Default::default()
        };
        let mut todo = Vec::new();
        for k in keys {
            if same_hash && self.store.has(&k)? {
                report.already_present += 1;
            } else {
                todo.push(k);
            }
        }
        let mut sources = todo.iter().map(|k| -> Result<Source> {
            let size = src
                .meta(k)?
                .map(|m| m.size)
                .ok_or(Error::NotFound { key: *k })?;
            if size <= IMPORT_IN_MEMORY_BYTES_MAX {
                Ok(Source::Bytes(src.get(k)?))
            } else {
                let reader = src.open_object(k)?;
                Ok(Source::Reader {
                    reader: Box::new(reader),
                    size_hint: size,
                })
            }
        });
        let written = self.write_packed(&mut sources, &PackOptions::default(), p)?;
        report.imported = written.len() as u64;
        report.bytes = todo
            .iter()
            .filter_map(|k| src.meta(k).ok().flatten())
            .map(|m| m.size)
            .sum();
        if same_hash {
            for (want, got) in todo.iter().zip(&written) {
                if want != got {
                    return Err(Error::Import {
                        path: src_dir.to_path_buf(),
                        detail: format!("object {want} read back as {got}"),
                    });
                }
            }
        }
        Ok(report)
    }

    /// Imports a disk-objectstore container (`config.json`, `loose/`, `packs/`, `packs.idx`,
    /// zlib-compressed records) straight into packs, checking every object against its key.
    pub fn import_dos(&self, src: &Path, p: &dyn Progress) -> Result<ImportReport> {
        let dos = DosContainer::open(src)?;
        let mut report = ImportReport::default();
        let same_hash = dos.hash == DosHash::Sha256
            && self.store.config().hash == crate::key::HashAlgorithm::Sha256;
        let mut items: Vec<DosItem> = dos.packed_items()?;
        let packed: std::collections::HashSet<String> =
            items.iter().map(|i| i.hashkey.clone()).collect();
        for (hashkey, path) in dos.loose_items()? {
            if !packed.contains(&hashkey) {
                items.push(DosItem {
                    hashkey,
                    place: DosPlace::Loose(path),
                    size: 0,
                });
            }
        }
        report.objects = items.len() as u64;
        let mut todo = Vec::new();
        for it in items {
            if same_hash {
                if let Ok(k) = it.hashkey.parse::<Key>() {
                    if self.store.has(&k)? {
                        report.already_present += 1;
                        continue;
                    }
                }
            }
            todo.push(it);
        }
        p.start("import", Some(todo.len() as u64), Unit::Objects);
        let mut corrupt = Vec::new();
        let mut bytes = 0u64;
        let mut imported = 0u64;
        {
            let mut sources = todo.iter().filter_map(|it| match dos.read(it) {
                Ok(content) => {
                    bytes += content.len() as u64;
                    imported += 1;
                    Some(Ok(Source::Bytes(content)))
                }
                Err(DosReadError::Corrupt(why)) => {
                    corrupt.push(why);
                    None
                }
                Err(DosReadError::Store(e)) => Some(Err(e)),
            });
            self.write_packed(&mut sources, &PackOptions::default(), p)?;
        }
        report.imported = imported;
        report.bytes = bytes;
        report.corrupt = corrupt;
        Ok(report)
    }
}

/// Whether the first `len` bytes of `copy` end like the same range of `source` (and both start
/// with the same pack header).
fn same_tail(source: &File, copy: &Path, len: u64) -> Result<bool> {
    use std::os::unix::fs::FileExt;
    if len < crate::format::PACK_HEADER_BYTES as u64 {
        return Ok(false);
    }
    let c = File::open(copy).at("open", copy)?;
    let n = crate::format::PACK_HEADER_BYTES;
    let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
    for at in [0, len - n as u64] {
        if source.read_exact_at(&mut a, at).is_err()
            || c.read_exact_at(&mut b, at).is_err()
            || a != b
        {
            return Ok(false);
        }
    }
    Ok(true)
}

fn prepare_backup_dest(store: &Store, dest: &Path) -> Result<()> {
    if dest.join(CONFIG_FILE).exists() {
        let cfg = StoreConfig::load(dest)?;
        if cfg.container_id != store.config().container_id {
            return Err(Error::InvalidArgument(format!(
                "{} is a different store (container {}); a backup goes to an empty folder or an earlier backup of this store",
                dest.display(),
                cfg.container_id
            )));
        }
        return Ok(());
    }
    if let Ok(mut rd) = fs::read_dir(dest) {
        if rd.next().is_some() {
            return Err(Error::NotEmpty {
                path: dest.to_path_buf(),
            });
        }
    }
    for sub in [LOOSE_DIR, PACKS_DIR, SANDBOX_DIR, LOCKS_DIR] {
        fs::create_dir_all(dest.join(sub)).at("create folder", dest.join(sub))?;
    }
    store.config().write_new(dest)?;
    fsutil::fsync_dir(dest)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DosHash {
    Sha256,
    Sha1,
}

struct DosContainer {
    root: PathBuf,
    hash: DosHash,
    loose_prefix_len: usize,
}

enum DosPlace {
    Loose(PathBuf),
    Packed {
        pack_id: i64,
        offset: u64,
        length: u64,
        compressed: bool,
    },
}

struct DosItem {
    hashkey: String,
    place: DosPlace,
    size: u64,
}

enum DosReadError {
    Corrupt(String),
    Store(Error),
}

impl DosContainer {
    fn open(root: &Path) -> Result<DosContainer> {
        let cfg_path = root.join("config.json");
        let bad = |detail: String| Error::Import {
            path: cfg_path.clone(),
            detail,
        };
        let text = fs::read_to_string(&cfg_path).at("read", &cfg_path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let hash = match v.get("hash_type").and_then(|h| h.as_str()) {
            Some("sha256") => DosHash::Sha256,
            Some("sha1") => DosHash::Sha1,
            other => return Err(bad(format!("unsupported hash_type {other:?}"))),
        };
        let loose_prefix_len =
            v.get("loose_prefix_len")
                .and_then(|x| x.as_u64())
                .filter(|x| *x <= 16)
                .ok_or_else(|| bad("missing or bad loose_prefix_len".into()))? as usize;
        let version = v
            .get("container_version")
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        if version != 1 {
            return Err(bad(format!(
                "container_version {version}; this importer reads version 1"
            )));
        }
        Ok(DosContainer {
            root: root.to_path_buf(),
            hash,
            loose_prefix_len,
        })
    }

    fn valid_hashkey(&self, s: &str) -> bool {
        let len = if self.hash == DosHash::Sha256 { 64 } else { 40 };
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    fn loose_items(&self) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.root.join("loose");
        let mut out = Vec::new();
        let mut visit = |name: String, path: PathBuf| {
            if self.valid_hashkey(&name) {
                out.push((name, path));
            }
        };
        for e in fs::read_dir(&dir).at("list", &dir)? {
            let e = e.at("list", &dir)?;
            let first = e.file_name().to_string_lossy().into_owned();
            if self.loose_prefix_len == 0 {
                visit(first, e.path());
                continue;
            }
            if first.len() != self.loose_prefix_len || !e.path().is_dir() {
                continue;
            }
            for f in fs::read_dir(e.path()).at("list", e.path())? {
                let f = f.at("list", e.path())?;
                visit(
                    format!("{first}{}", f.file_name().to_string_lossy()),
                    f.path(),
                );
            }
        }
        Ok(out)
    }

    fn packed_items(&self) -> Result<Vec<DosItem>> {
        let db = self.root.join("packs.idx");
        if !db.exists() {
            return Ok(Vec::new());
        }
        let err = |e: rusqlite::Error| Error::Import {
            path: db.clone(),
            detail: e.to_string(),
        };
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(err)?;
        let mut st = conn
            .prepare("SELECT hashkey, compressed, size, offset, length, pack_id FROM db_object ORDER BY pack_id, offset")
            .map_err(err)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, bool>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(err)?;
        let mut out = Vec::new();
        for r in rows {
            let (hashkey, compressed, size, offset, length, pack_id) = r.map_err(err)?;
            if !self.valid_hashkey(&hashkey) || size < 0 || offset < 0 || length < 0 || pack_id < 0
            {
                return Err(Error::Import {
                    path: db.clone(),
                    detail: format!("bad row for '{hashkey}'"),
                });
            }
            out.push(DosItem {
                hashkey,
                place: DosPlace::Packed {
                    pack_id,
                    offset: offset as u64,
                    length: length as u64,
                    compressed,
                },
                size: size as u64,
            });
        }
        Ok(out)
    }

    /// Reads an object and checks it against its key and recorded size.
    fn read(&self, it: &DosItem) -> std::result::Result<Vec<u8>, DosReadError> {
        let (content, place) = match &it.place {
            DosPlace::Loose(path) => (
                fs::read(path).map_err(|e| DosReadError::Store(Error::io("read", path, e)))?,
                path.display().to_string(),
            ),
            DosPlace::Packed {
                pack_id,
                offset,
                length,
                compressed,
            } => {
                let path = self.root.join("packs").join(pack_id.to_string());
                let place = format!("{} offset {offset}", path.display());
                let f = File::open(&path)
                    .map_err(|e| DosReadError::Store(Error::io("open", &path, e)))?;
                let cap = (*length).min(IMPORT_IN_MEMORY_BYTES_MAX * 64);
                let mut stored = vec![0u8; cap as usize];
                if *length > cap {
                    return Err(DosReadError::Corrupt(format!(
                        "{place}: object of {length} bytes is too large to import"
                    )));
                }
                use std::os::unix::fs::FileExt;
                f.read_exact_at(&mut stored, *offset)
                    .map_err(|e| DosReadError::Corrupt(format!("{place}: {e}")))?;
                let content = if *compressed {
                    // `size` comes from the source's index: never trust it for an allocation.
                    let mut out =
                        Vec::with_capacity(it.size.min(IMPORT_IN_MEMORY_BYTES_MAX) as usize);
                    flate2::read::ZlibDecoder::new(&stored[..])
                        .take(it.size + 1)
                        .read_to_end(&mut out)
                        .map_err(|e| DosReadError::Corrupt(format!("{place}: zlib: {e}")))?;
                    out
                } else {
                    stored
                };
                if content.len() as u64 != it.size {
                    return Err(DosReadError::Corrupt(format!(
                        "{place}: {} bytes, index says {}",
                        content.len(),
                        it.size
                    )));
                }
                (content, place)
            }
        };
        let actual = match self.hash {
            DosHash::Sha256 => hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content)),
            DosHash::Sha1 => hex::encode(<sha1::Sha1 as sha1::Digest>::digest(&content)),
        };
        if actual != it.hashkey {
            return Err(DosReadError::Corrupt(format!(
                "{place}: object {} hashes to {actual}",
                it.hashkey
            )));
        }
        Ok(content)
    }
}
