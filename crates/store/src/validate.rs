//! `validate`: re-reads everything and reports every problem with its key, path, pack and offset.
//!
//! Checks loose objects (content hashes to name; stray names), every pack (header, record
//! checksums, content hashes, sealed table and footer, crash tails), the index against the packs
//! (rows past the end or not at a record, rows that disagree with their record, overlapping
//! rows, records no row reaches), SQLite's own consistency check, and leftovers in sandbox/.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::path::PathBuf;

use rayon::prelude::*;

use crate::error::{IoContext, Result};
use crate::format::{RecordHeader, RecordKind, PACK_HEADER_BYTES};
use crate::index::{IndexRow, Kills};
use crate::key::Key;
use crate::loose::{self, LOOSE_DIR};
use crate::maint::Maintenance;
use crate::pack::{self, PACKS_DIR};
use crate::progress::{Progress, Unit};
use crate::store::ser_key;

/// One thing wrong with a store.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    LooseHashMismatch {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        path: PathBuf,
        #[serde(serialize_with = "ser_key")]
        actual: Key,
    },
    LooseUnreadable {
        path: PathBuf,
        error: String,
    },
    StrayFile {
        path: PathBuf,
    },
    SandboxLeftover {
        path: PathBuf,
    },
    IndexCheck {
        detail: String,
    },
    PackMissing {
        pack: u64,
    },
    PackNotIndexed {
        pack: u64,
    },
    PackUnreadable {
        pack: u64,
        detail: String,
    },
    PackShorterThanIndex {
        pack: u64,
        file_bytes: u64,
        index_bytes: u64,
    },
    UncommittedTail {
        pack: u64,
        offset: u64,
        bytes: u64,
    },
    BadFooter {
        pack: u64,
        detail: String,
    },
    RecordCorrupt {
        pack: u64,
        offset: u64,
        detail: String,
    },
    RecordHashMismatch {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        pack: u64,
        offset: u64,
        #[serde(serialize_with = "ser_key")]
        actual: Key,
    },
    RowPastEnd {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        pack: u64,
        offset: u64,
    },
    RowWithoutRecord {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        pack: u64,
        offset: u64,
    },
    RowMismatch {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        pack: u64,
        offset: u64,
        detail: String,
    },
    OverlappingRows {
        pack: u64,
        offset: u64,
        #[serde(serialize_with = "ser_key")]
        key: Key,
        #[serde(serialize_with = "ser_key")]
        other: Key,
    },
    RecordNotIndexed {
        #[serde(serialize_with = "ser_key")]
        key: Key,
        pack: u64,
        offset: u64,
    },
    TableMismatch {
        pack: u64,
        detail: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Problem::*;
        match self {
            LooseHashMismatch { key, path, actual } => {
                write!(
                    f,
                    "loose object {key} ({}): content hashes to {actual}",
                    path.display()
                )
            }
            LooseUnreadable { path, error } => write!(f, "loose file {}: {error}", path.display()),
            StrayFile { path } => {
                write!(f, "stray file {} (not part of the store)", path.display())
            }
            SandboxLeftover { path } => write!(
                f,
                "sandbox leftover {} (basin clean removes it)",
                path.display()
            ),
            IndexCheck { detail } => {
                write!(f, "index: {detail} (basin rebuild-index recreates it)")
            }
            PackMissing { pack } => write!(f, "pack {pack}: in the index but its file is missing"),
            PackNotIndexed { pack } => write!(
                f,
                "pack {pack}: file not in the index (basin rebuild-index adds it)"
            ),
            PackUnreadable { pack, detail } => write!(f, "pack {pack}: {detail}"),
            PackShorterThanIndex {
                pack,
                file_bytes,
                index_bytes,
            } => {
                write!(f, "pack {pack}: file is {file_bytes} bytes but the index says {index_bytes} are committed")
            }
            UncommittedTail {
                pack,
                offset,
                bytes,
            } => {
                write!(f, "pack {pack} offset {offset}: {bytes} uncommitted bytes (basin clean truncates them)")
            }
            BadFooter { pack, detail } => write!(f, "pack {pack}: sealed footer/table: {detail}"),
            RecordCorrupt {
                pack,
                offset,
                detail,
            } => write!(f, "pack {pack} offset {offset}: {detail}"),
            RecordHashMismatch {
                key,
                pack,
                offset,
                actual,
            } => {
                write!(
                    f,
                    "pack {pack} offset {offset}: object {key} content hashes to {actual}"
                )
            }
            RowPastEnd { key, pack, offset } => {
                write!(
                    f,
                    "index row for {key} points past the end of pack {pack} (offset {offset})"
                )
            }
            RowWithoutRecord { key, pack, offset } => {
                write!(f, "index row for {key} points at pack {pack} offset {offset}, where no such record starts")
            }
            RowMismatch {
                key,
                pack,
                offset,
                detail,
            } => {
                write!(
                    f,
                    "index row for {key} at pack {pack} offset {offset}: {detail}"
                )
            }
            OverlappingRows {
                pack,
                offset,
                key,
                other,
            } => {
                write!(
                    f,
                    "pack {pack} offset {offset}: index rows for {key} and {other} overlap"
                )
            }
            RecordNotIndexed { key, pack, offset } => {
                write!(
                    f,
                    "pack {pack} offset {offset}: object {key} is in the pack but not in the index"
                )
            }
            TableMismatch { pack, detail } => write!(f, "pack {pack}: sealed table: {detail}"),
        }
    }
}

/// What `validate` found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ValidationReport {
    pub problems: Vec<Problem>,
    pub objects_checked: u64,
    pub bytes_checked: u64,
}

impl ValidationReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Bytes of a pack read per round; the records in a round are checked in parallel.
const SCAN_CHUNK_BYTES: u64 = 32 << 20;

/// Checks the records of one chunk in parallel: record checksum, then the content's hash.
fn process_spans(
    chunk: &[u8],
    spans: &[(u64, RecordHeader, std::ops::Range<usize>)],
    pack: u64,
    hash: crate::key::HashAlgorithm,
    out: &mut PackOutcome,
    records: &mut HashMap<u64, RecordHeader>,
) {
    let problems: Vec<Option<Problem>> = spans
        .par_iter()
        .map(|(offset, h, range)| {
            let bytes = &chunk[range.clone()];
            let payload = match crate::format::decode_record(bytes) {
                Ok((_, p)) => p,
                Err(reason) => {
                    return Some(Problem::RecordCorrupt {
                        pack,
                        offset: *offset,
                        detail: reason.to_string(),
                    })
                }
            };
            if h.kind != RecordKind::Object {
                return None;
            }
            let actual = if h.is_compressed() {
                match crate::compress::decompress_all(payload, h.raw_len) {
                    Ok(c) => hash.hash(&c),
                    Err(detail) => {
                        return Some(Problem::RecordCorrupt {
                            pack,
                            offset: *offset,
                            detail,
                        })
                    }
                }
            } else {
                hash.hash(payload)
            };
            (actual != h.key).then_some(Problem::RecordHashMismatch {
                key: h.key,
                pack,
                offset: *offset,
                actual,
            })
        })
        .collect();
    for (offset, h, _) in spans {
        records.insert(*offset, *h);
        if h.kind == RecordKind::Object {
            out.objects += 1;
            out.bytes += h.raw_len;
        }
    }
    out.problems.extend(problems.into_iter().flatten());
}

impl Maintenance<'_> {
    /// Checks the whole store. Problems are reported, never repaired here.
    pub fn validate(&self, p: &dyn Progress) -> Result<ValidationReport> {
        let store = self.store;
        let root = store.path();
        let hash = store.config().hash;
        let mut report = ValidationReport::default();

        // SQLite's own view first: a broken index makes the row checks meaningless.
        let mut index = self.index();
        match index.quick_check() {
            Ok(v) => report
                .problems
                .extend(v.into_iter().map(|detail| Problem::IndexCheck { detail })),
            Err(e) => report.problems.push(Problem::IndexCheck {
                detail: e.to_string(),
            }),
        }
        let mut rows_by_pack: HashMap<u64, Vec<(Key, IndexRow)>> = HashMap::new();
        let mut indexed: HashSet<Key> = HashSet::new();
        if let Err(e) = index.for_each(&mut |k, row| {
            indexed.insert(k);
            rows_by_pack.entry(row.pack).or_default().push((k, row));
            Ok(())
        }) {
            report.problems.push(Problem::IndexCheck {
                detail: e.to_string(),
            });
        }
        let packs = index.packs().unwrap_or_default();
        // Ids a write batch is publishing right now (or a crash left to `clean`).
        let reserved: HashSet<u64> = index
            .reserved_packs()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let tombstones = index.tombstones().unwrap_or_default();
        drop(index);
        let kills = Kills::new(&tombstones);

        // Loose objects.
        let loose_keys = loose::list_loose(root, store.config().loose_prefix_len)?;
        p.start(
            "validate loose",
            Some(loose_keys.len() as u64),
            Unit::Objects,
        );
        let loose_problems: Vec<(u64, Option<Problem>)> = loose_keys
            .par_iter()
            .map(|k| {
                let path = store.loose_path(k);
                let r = match fs::read(&path) {
                    Ok(b) => {
                        let actual = hash.hash(&b);
                        let problem = (actual != *k).then_some(Problem::LooseHashMismatch {
                            key: *k,
                            path,
                            actual,
                        });
                        (b.len() as u64, problem)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
                    Err(e) => (
                        0,
                        Some(Problem::LooseUnreadable {
                            path,
                            error: e.to_string(),
                        }),
                    ),
                };
                p.advance(1);
                r
            })
            .collect();
        for (bytes, problem) in loose_problems {
            report.objects_checked += 1;
            report.bytes_checked += bytes;
            report.problems.extend(problem);
        }
        p.finish();
        report
            .problems
            .extend(stray_loose_files(root, store.config().loose_prefix_len)?);
        // Entries still locked belong to live writers; only abandoned ones are leftovers.
        for path in loose::stale_sandbox_entries(root, std::time::Duration::ZERO)? {
            report.problems.push(Problem::SandboxLeftover { path });
        }

        // Packs.
        let on_disk: Vec<u64> = pack::pack_ids_on_disk(root)?;
        let known: HashSet<u64> = packs.iter().map(|r| r.id).collect();
        // Write batches publish packs meanwhile: a file unknown to the first read of the index
        // is a stray only if the index, read after the listing, does not know it either.
        let unknown: Vec<u64> = on_disk
            .iter()
            .copied()
            .filter(|id| !known.contains(id) && !reserved.contains(id))
            .collect();
        if !unknown.is_empty() {
            let mut index = self.index();
            let now: HashSet<u64> = index
                .packs()?
                .iter()
                .map(|r| r.id)
                .chain(index.reserved_packs()?)
                .collect();
            for id in unknown {
                if !now.contains(&id) {
                    report.problems.push(Problem::PackNotIndexed { pack: id });
                }
            }
        }
        let disk: HashSet<u64> = on_disk.iter().copied().collect();
        for e in fs::read_dir(root.join(PACKS_DIR)).at("list", root.join(PACKS_DIR))? {
            let e = e.at("list", root.join(PACKS_DIR))?;
            if e.file_name()
                .to_str()
                .and_then(pack::parse_pack_name)
                .is_none()
            {
                report.problems.push(Problem::StrayFile { path: e.path() });
            }
        }
        p.start("validate packs", Some(packs.len() as u64), Unit::Packs);
        for row in &packs {
            if !disk.contains(&row.id) {
                report.problems.push(Problem::PackMissing { pack: row.id });
                for (key, r) in rows_by_pack.get(&row.id).into_iter().flatten() {
                    report.problems.push(Problem::RowWithoutRecord {
                        key: *key,
                        pack: r.pack,
                        offset: r.offset,
                    });
                }
                continue;
            }
            let rows = rows_by_pack.remove(&row.id).unwrap_or_default();
            let tomb_here: HashSet<u64> = tombstones
                .iter()
                .filter(|t| t.at.pack == row.id)
                .map(|t| t.at.offset)
                .collect();
            let out = validate_pack(store, row, rows, &tomb_here, &indexed, &kills)?;
            report.objects_checked += out.objects;
            report.bytes_checked += out.bytes;
            report.problems.extend(out.problems);
            p.advance(1);
        }
        p.finish();
        // Rows pointing at packs the index does not list.
        for (pack_id, rows) in rows_by_pack {
            for (key, r) in rows {
                report.problems.push(Problem::RowWithoutRecord {
                    key,
                    pack: pack_id,
                    offset: r.offset,
                });
            }
        }
        Ok(report)
    }
}

struct PackOutcome {
    objects: u64,
    bytes: u64,
    problems: Vec<Problem>,
}

fn validate_pack(
    store: &crate::store::Store,
    row: &crate::index::PackRow,
    mut rows: Vec<(Key, IndexRow)>,
    tombstones_here: &HashSet<u64>,
    indexed: &HashSet<Key>,
    kills: &Kills,
) -> Result<PackOutcome> {
    let id = row.id;
    let hash = store.config().hash;
    let mut out = PackOutcome {
        objects: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    let path = pack::pack_path(store.path(), id);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(Problem::PackUnreadable {
                pack: id,
                detail: e.to_string(),
            });
            return Ok(out);
        }
    };
    let file_len = file.metadata().at("stat", &path)?.len();
    match pack::read_pack_header(&file, id) {
        Ok(h)
            if h.pack_id == id
                && h.hash == hash
                && h.container_id == store.config().container_id_bytes() => {}
        Ok(_) => out.problems.push(Problem::PackUnreadable {
            pack: id,
            detail: "header belongs to another pack or store".into(),
        }),
        Err(e) => {
            out.problems.push(Problem::PackUnreadable {
                pack: id,
                detail: e.to_string(),
            });
            return Ok(out);
        }
    }
    if file_len < row.end_bytes {
        out.problems.push(Problem::PackShorterThanIndex {
            pack: id,
            file_bytes: file_len,
            index_bytes: row.end_bytes,
        });
    }
    let mut table = None;
    let records_end = if row.sealed {
        match pack::read_sealed_table(&file, id, file_len) {
            Ok(Some((footer, t))) => {
                table = Some(t);
                footer.table_offset
            }
            Ok(None) => {
                out.problems.push(Problem::BadFooter {
                    pack: id,
                    detail: "no footer at the end of a sealed pack".into(),
                });
                file_len
            }
            Err(e) => {
                out.problems.push(Problem::BadFooter {
                    pack: id,
                    detail: e.to_string(),
                });
                file_len
            }
        }
    } else {
        if file_len > row.end_bytes {
            out.problems.push(Problem::UncommittedTail {
                pack: id,
                offset: row.end_bytes,
                bytes: file_len - row.end_bytes,
            });
        }
        row.end_bytes.min(file_len)
    };

    // Scan all records chunk by chunk; check checksums and content hashes in parallel, in place.
    let mut records: HashMap<u64, RecordHeader> = HashMap::new();
    let mut chunk = Vec::new();
    let mut offset = PACK_HEADER_BYTES as u64;
    'chunks: while offset < records_end {
        let len = (records_end - offset).min(SCAN_CHUNK_BYTES);
        chunk.resize(len as usize, 0);
        if let Err(e) = pack::read_exact_at(&file, &mut chunk, offset, id) {
            out.problems.push(Problem::RecordCorrupt {
                pack: id,
                offset,
                detail: e.to_string(),
            });
            break;
        }
        // Walk headers (each has its own checksum, so lengths are trusted once it passes).
        let mut spans: Vec<(u64, RecordHeader, std::ops::Range<usize>)> = Vec::new();
        let mut at = 0usize;
        loop {
            let here = offset + at as u64;
            if here >= records_end {
                break;
            }
            let Some(hb) = chunk.get(at..at + crate::format::RECORD_HEADER_BYTES) else {
                break;
            };
            let header = match RecordHeader::decode(hb) {
                Ok(h) => h,
                Err(reason) => {
                    out.problems.push(Problem::RecordCorrupt {
                        pack: id,
                        offset: here,
                        detail: format!(
                            "{reason}; {} bytes up to {records_end} unreadable",
                            records_end - here
                        ),
                    });
                    process_spans(&chunk, &spans, id, hash, &mut out, &mut records);
                    break 'chunks;
                }
            };
            let rec_len = header.record_len() as usize;
            if here + rec_len as u64 > records_end {
                out.problems.push(Problem::RecordCorrupt {
                    pack: id,
                    offset: here,
                    detail: format!("record of {rec_len} bytes runs past the end of the records at {records_end}"),
                });
                process_spans(&chunk, &spans, id, hash, &mut out, &mut records);
                break 'chunks;
            }
            if at + rec_len > chunk.len() {
                if at == 0 {
                    // One record larger than a chunk: check it streaming, in constant memory.
                    out.problems
                        .extend(verify_large_record(&file, id, here, &header, hash)?);
                    records.insert(here, header);
                    if header.kind == RecordKind::Object {
                        out.objects += 1;
                        out.bytes += header.raw_len;
                    }
                    at = rec_len;
                }
                break;
            }
            spans.push((here, header, at..at + rec_len));
            at += rec_len;
        }
        process_spans(&chunk, &spans, id, hash, &mut out, &mut records);
        offset += at as u64;
        if at == 0 {
            break;
        }
    }

    if offset < records_end
        && !out
            .problems
            .iter()
            .any(|p| matches!(p, Problem::RecordCorrupt { pack, .. } if *pack == id))
    {
        out.problems.push(Problem::RecordCorrupt {
            pack: id,
            offset,
            detail: format!("{} trailing bytes hold no record", records_end - offset),
        });
    }

    // Index rows against records.
    rows.sort_by_key(|(_, r)| r.offset);
    let mut prev: Option<(Key, u64)> = None;
    for (key, r) in &rows {
        if let Some((pk, pend)) = prev {
            if r.offset < pend {
                out.problems.push(Problem::OverlappingRows {
                    pack: id,
                    offset: r.offset,
                    key: *key,
                    other: pk,
                });
            }
        }
        prev = Some((
            *key,
            r.offset + crate::format::RECORD_OVERHEAD_BYTES + r.stored_len,
        ));
        match records.get(&r.offset) {
            None if r.offset >= records_end.max(PACK_HEADER_BYTES as u64) => {
                out.problems.push(Problem::RowPastEnd {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                })
            }
            None => out.problems.push(Problem::RowWithoutRecord {
                key: *key,
                pack: id,
                offset: r.offset,
            }),
            Some(h) if h.key != *key || h.kind != RecordKind::Object => {
                out.problems.push(Problem::RowWithoutRecord {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                })
            }
            Some(h)
                if h.raw_len != r.raw_len || h.stored_len != r.stored_len || h.flags != r.flags =>
            {
                out.problems.push(Problem::RowMismatch {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                    detail: format!(
                        "row says raw {} stored {} flags {}, record says raw {} stored {} flags {}",
                        r.raw_len, r.stored_len, r.flags, h.raw_len, h.stored_len, h.flags
                    ),
                })
            }
            Some(_) => {}
        }
    }
    // Records that nothing reaches although they are live.
    let mut offsets: Vec<&u64> = records.keys().collect();
    offsets.sort_unstable();
    for off in offsets {
        let h = &records[off];
        let pos = crate::format::Position {
            pack: id,
            offset: *off,
        };
        if h.kind == RecordKind::Object && !indexed.contains(&h.key) && !kills.kills(&h.key, pos) {
            out.problems.push(Problem::RecordNotIndexed {
                key: h.key,
                pack: id,
                offset: *off,
            });
        }
        if h.kind == RecordKind::Tombstone && !tombstones_here.contains(off) {
            out.problems.push(Problem::RecordCorrupt {
                pack: id,
                offset: *off,
                detail: format!("tombstone for {} is not in the index", h.key),
            });
        }
    }
    // A sealed table must list every live row of its pack, each at a record with that key.
    if let Some(t) = table {
        let entries: HashSet<(Key, u64)> = t.iter().copied().collect();
        for (key, off) in &t {
            if records.get(off).map(|h| h.key) != Some(*key) {
                out.problems.push(Problem::TableMismatch {
                    pack: id,
                    detail: format!("entry {key} at {off} has no such record"),
                });
            }
        }
        for (key, r) in &rows {
            if !entries.contains(&(*key, r.offset)) {
                out.problems.push(Problem::TableMismatch {
                    pack: id,
                    detail: format!("row {key} at {} missing from the table", r.offset),
                });
            }
        }
    }
    Ok(out)
}

/// Checks one record too large for memory: its checksum and its content hash, streaming (and
/// decompressing frame by frame when compressed).
fn verify_large_record(
    file: &File,
    pack: u64,
    offset: u64,
    h: &RecordHeader,
    hash: crate::key::HashAlgorithm,
) -> Result<Option<Problem>> {
    let corrupt = |detail: String| {
        Ok(Some(Problem::RecordCorrupt {
            pack,
            offset,
            detail,
        }))
    };
    let payload_at = offset + crate::format::RECORD_HEADER_BYTES as u64;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h.encode());
    let mut hasher = hash.hasher();
    let mut buf = vec![0u8; crate::loose::STREAM_CHUNK_BYTES];
    let mut done = 0u64;
    while done < h.stored_len {
        let n = (h.stored_len - done).min(buf.len() as u64) as usize;
        pack::read_exact_at(file, &mut buf[..n], payload_at + done, pack)?;
        crc.update(&buf[..n]);
        if !h.is_compressed() {
            hasher.update(&buf[..n]);
        }
        done += n as u64;
    }
    let mut trailer = [0u8; 4];
    pack::read_exact_at(file, &mut trailer, payload_at + h.stored_len, pack)?;
    if crc.finalize().to_le_bytes() != trailer {
        return corrupt("record checksum mismatch".into());
    }
    if h.kind != RecordKind::Object {
        return Ok(None);
    }
    if h.is_compressed() {
        let table_len = crate::format::frame_table_bytes(h.raw_len).min(h.stored_len);
        let mut tail = vec![0u8; table_len as usize];
        pack::read_exact_at(file, &mut tail, payload_at + h.stored_len - table_len, pack)?;
        let frames = match crate::compress::frame_layout(&tail, h.stored_len, h.raw_len) {
            Ok(f) => f,
            Err(e) => return corrupt(e.to_string()),
        };
        for (i, (at, size)) in frames.iter().enumerate() {
            let mut frame = vec![0u8; *size as usize];
            pack::read_exact_at(file, &mut frame, payload_at + at, pack)?;
            match crate::compress::decompress_frame(&frame, h.raw_len, i as u64) {
                Ok(raw) => hasher.update(&raw),
                Err(detail) => return corrupt(detail),
            }
        }
    }
    let actual = hasher.finish();
    Ok((actual != h.key).then_some(Problem::RecordHashMismatch {
        key: h.key,
        pack,
        offset,
        actual,
    }))
}

/// Files under loose/ that are not objects of this store's layout.
fn stray_loose_files(root: &std::path::Path, prefix_len: u8) -> Result<Vec<Problem>> {
    let dir = root.join(LOOSE_DIR);
    let mut out = Vec::new();
    let p = prefix_len as usize;
    let is_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    for e in fs::read_dir(&dir).at("list", &dir)? {
        let e = e.at("list", &dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if p == 0 {
            if name.len() != 64 || !is_hex(&name) {
                out.push(Problem::StrayFile { path: e.path() });
            }
            continue;
        }
        if name.len() != p || !is_hex(&name) || !e.path().is_dir() {
            out.push(Problem::StrayFile { path: e.path() });
            continue;
        }
        for f in fs::read_dir(e.path()).at("list", e.path())? {
            let f = f.at("list", e.path())?;
            let rest = f.file_name().to_string_lossy().into_owned();
            if rest.len() != 64 - p || !is_hex(&rest) {
                out.push(Problem::StrayFile { path: f.path() });
            }
        }
    }
    Ok(out)
}
