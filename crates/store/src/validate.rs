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
use crate::index::{Index, IndexRow, Kills, TombstoneRow};
use crate::key::Key;
use crate::loose::{self, LooseEntry};
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

/// Bytes of a pack read per round. Small enough that a round is still in the cache of the core
/// that read it while that core checks its records: checking on the reading core, from its own
/// cache, costs less than handing a larger round to other cores.
const ROUND_BYTES: u64 = 1 << 20;

/// Records up to this size are read whole, as a round of their own; larger ones are checked
/// streaming, in constant memory.
const ROUND_RECORD_MAX_BYTES: u64 = 8 << 20;

/// One record found by the header walk: its offset, header, and bytes within its round.
type Span = (u64, RecordHeader, std::ops::Range<usize>);

/// What the index says, read while the packs are scanned.
struct IndexSide {
    problems: Vec<Problem>,
    /// Every live row, in key order. One allocation of the right size: growing per-pack lists
    /// row by row touched twice their size of fresh memory, which costs more than the rows'
    /// reading on these VMs (see bench/store/README.md, "Noise").
    rows: Vec<(Key, IndexRow)>,
    /// Per pack, where its rows are in `rows` (so in key order too).
    rows_by_pack: HashMap<u64, Vec<usize>>,
    tombstones: Vec<TombstoneRow>,
    /// Packs the index lists once the rows are read (published ones and reservations).
    packs_after_rows: HashSet<u64>,
}

impl Maintenance<'_> {
    /// Checks the whole store. Problems are reported, never repaired here.
    pub fn validate(&self, p: &dyn Progress) -> Result<ValidationReport> {
        let store = self.store;
        let root = store.path();
        let hash = store.config().hash;
        let mut report = ValidationReport::default();
        let mut index = self.index();
        // Reserved: ids a write batch is publishing right now (or a crash left to `clean`).
        let (packs, reserved) = index.packs_and_reserved().unwrap_or_default();
        let reserved: HashSet<u64> = reserved.into_iter().collect();

        // Loose objects, and names under loose/ that are not objects.
        let mut loose_keys = Vec::new();
        let mut strays = Vec::new();
        loose::walk_loose(
            root,
            store.config().loose_prefix_len,
            true,
            &mut |entry| match entry {
                LooseEntry::Object(k) => loose_keys.push(k),
                LooseEntry::Stray(path) => strays.push(Problem::StrayFile { path }),
            },
        )?;
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
        let mut problems = Vec::new();
        for (bytes, problem) in loose_problems {
            report.objects_checked += 1;
            report.bytes_checked += bytes;
            problems.extend(problem);
        }
        p.finish();
        problems.extend(strays);
        // Entries still locked belong to live writers; only abandoned ones are leftovers.
        for path in loose::stale_sandbox_entries(root, std::time::Duration::ZERO)? {
            problems.push(Problem::SandboxLeftover { path });
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
            let now: HashSet<u64> = index.pack_ids()?.into_iter().collect();
            for id in unknown {
                if !now.contains(&id) {
                    problems.push(Problem::PackNotIndexed { pack: id });
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
                problems.push(Problem::StrayFile { path: e.path() });
            }
        }

        // The index's own check and rows are read while the packs are scanned: the scan needs
        // only the pack list, and the rows are needed only to compare with its results.
        p.start("validate packs", Some(packs.len() as u64), Unit::Packs);
        // By one of the scan's own threads, before it joins the scan: a thread of its own made
        // one more runnable thread than cores, and a scan thread preempted while it held the
        // cursor held up the others (e 0.95x wall, 14 interleaved runs of `bench/store/ab.sh`).
        let index = std::sync::Mutex::new(&mut *index);
        let read_index = || {
            let mut index = index.lock().unwrap_or_else(|p| p.into_inner());
            read_index_side(&mut index)
        };
        let side_slot = std::sync::Mutex::new(None);
        let side_job = || {
            let side = read_index();
            *side_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(side);
        };
        let scans = scan_packs(store, &packs, &disk, p, &side_job);
        // Read here when the scan ended before any thread took the job (an error).
        let side = match side_slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(side) => side,
            None => read_index(),
        };
        p.finish();
        let scans = scans?;
        let IndexSide {
            problems: index_problems,
            rows,
            mut rows_by_pack,
            tombstones,
            packs_after_rows,
        } = side;
        let kills = Kills::new(&tombstones);

        // In the order of the checks: the index's own view first, as a broken index makes the
        // row checks meaningless.
        report.problems = index_problems;
        report.problems.extend(problems);
        // Each scanned pack against its rows, packs in parallel; problems in pack order. A
        // missing pack's problems are known without a check.
        let mut checks = Vec::new();
        for (row, scan) in packs.iter().zip(scans) {
            let Some(scan) = scan else {
                let mut missing = vec![Problem::PackMissing { pack: row.id }];
                for (key, r) in rows_by_pack
                    .get(&row.id)
                    .into_iter()
                    .flatten()
                    .map(|&i| &rows[i])
                {
                    missing.push(Problem::RowWithoutRecord {
                        key: *key,
                        pack: r.pack,
                        offset: r.offset,
                    });
                }
                checks.push(Err(missing));
                continue;
            };
            let mine = rows_by_pack.remove(&row.id).unwrap_or_default();
            let tomb_here: HashSet<u64> = tombstones
                .iter()
                .filter(|t| t.at.pack == row.id)
                .map(|t| t.at.offset)
                .collect();
            report.objects_checked += scan.objects;
            report.bytes_checked += scan.bytes;
            checks.push(Ok((row.id, scan, mine, tomb_here)));
        }
        let checked: Vec<Vec<Problem>> = checks
            .into_par_iter()
            .map(|check| match check {
                Ok((id, scan, mine, tomb_here)) => {
                    check_rows(id, scan, &rows, mine, &tomb_here, &kills)
                }
                Err(missing) => missing,
            })
            .collect();
        report.problems.extend(checked.into_iter().flatten());
        // Rows pointing at packs the index does not list. A write batch may have published a
        // pack since the pack list was read: its rows are for the next validate.
        for (pack_id, mine) in rows_by_pack {
            if packs_after_rows.contains(&pack_id) {
                continue;
            }
            for (key, r) in mine.into_iter().map(|i| &rows[i]) {
                report.problems.push(Problem::RowWithoutRecord {
                    key: *key,
                    pack: pack_id,
                    offset: r.offset,
                });
            }
        }
        Ok(report)
    }
}

/// SQLite's consistency check, every row grouped by pack, and the tombstones.
fn read_index_side(index: &mut Index) -> IndexSide {
    let mut problems = Vec::new();
    match index.quick_check() {
        Ok(v) => problems.extend(v.into_iter().map(|detail| Problem::IndexCheck { detail })),
        Err(e) => problems.push(Problem::IndexCheck {
            detail: e.to_string(),
        }),
    }
    // Sized by a count of the rows first (a count reads the pages without decoding any row,
    // and warms them for the scan); a count that is off only costs a reallocation.
    let mut rows: Vec<(Key, IndexRow)> =
        Vec::with_capacity(index.row_count().unwrap_or(0).try_into().unwrap_or(0));
    let scanned = index.for_each(&mut |k, row| {
        rows.push((k, row));
        Ok(())
    });
    if let Err(e) = scanned {
        problems.push(Problem::IndexCheck {
            detail: e.to_string(),
        });
    }
    // Rows come in key order; a damaged index may not keep it, and the lookups and the merge
    // with each sealed table need it.
    let order = |(k, r): &(Key, IndexRow)| (*k, r.offset);
    if !rows.is_sorted_by_key(order) {
        rows.sort_unstable_by_key(order);
    }
    // Grouped by pack through a sorted list of the few pack ids instead of a hash map: hashing
    // the pack id of every row was a tenth of this thread's time.
    let mut pack_ids: Vec<u64> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, (_, row)) in rows.iter().enumerate() {
        let slot = match pack_ids.binary_search(&row.pack) {
            Ok(slot) => slot,
            Err(slot) => {
                pack_ids.insert(slot, row.pack);
                groups.insert(slot, Vec::new());
                slot
            }
        };
        groups[slot].push(i);
    }
    let rows_by_pack: HashMap<u64, Vec<usize>> = pack_ids.into_iter().zip(groups).collect();
    let tombstones = index.tombstones().unwrap_or_default();
    let packs_after_rows = index.pack_ids().unwrap_or_default().into_iter().collect();
    IndexSide {
        problems,
        rows,
        rows_by_pack,
        tombstones,
        packs_after_rows,
    }
}

/// What scanning one pack found, before comparing with the index.
struct PackScan {
    objects: u64,
    bytes: u64,
    problems: Vec<Problem>,
    /// The pack could not be read at all: there is nothing to compare rows with.
    unreadable: bool,
    /// Every valid record, in offset order, as the rounds of the scan found them: copied into
    /// one list, they touched their size of fresh memory again, on one thread, after the scan.
    records: Vec<Vec<(u64, RecordHeader)>>,
    records_end: u64,
    /// A sealed pack's table (sorted by key and offset, as its decoder checks).
    table: Option<Vec<(Key, u64)>>,
}

/// One round of a pack scan: bytes read and the records walked in them, not yet checked.
struct Round {
    buf: Vec<u8>,
    spans: Vec<Span>,
    /// Problems of the walk, reported before those of the round's records.
    problems: Vec<Problem>,
    /// A record larger than a round at the round's start, checked streaming during the walk.
    large: Option<(u64, RecordHeader)>,
    /// Where the walk stopped.
    walked_to: u64,
    /// Where the next round starts; `None` when the walk is over.
    next: Option<u64>,
}

/// Reads the round at `offset` into `buf` and walks its record headers (each has its own
/// checksum, so lengths are trusted once it passes). Records are checked later, in parallel.
fn read_round(
    file: &File,
    pack: u64,
    offset: u64,
    records_end: u64,
    hash: crate::key::HashAlgorithm,
    mut buf: Vec<u8>,
) -> Result<Round> {
    let mut round = Round {
        buf: Vec::new(),
        spans: Vec::new(),
        problems: Vec::new(),
        large: None,
        walked_to: offset,
        next: None,
    };
    let len = (records_end - offset).min(ROUND_BYTES);
    buf.resize(len as usize, 0);
    if let Err(e) = pack::read_exact_at(file, &mut buf, offset, pack) {
        round.problems.push(Problem::RecordCorrupt {
            pack,
            offset,
            detail: e.to_string(),
        });
        round.buf = buf;
        return Ok(round);
    }
    let mut at = 0usize;
    loop {
        let here = offset + at as u64;
        if here >= records_end {
            break;
        }
        let Some(hb) = buf.get(at..at + crate::format::RECORD_HEADER_BYTES) else {
            break;
        };
        let header = match RecordHeader::decode(hb) {
            Ok(h) => h,
            Err(reason) => {
                round.problems.push(Problem::RecordCorrupt {
                    pack,
                    offset: here,
                    detail: format!(
                        "{reason}; {} bytes up to {records_end} unreadable",
                        records_end - here
                    ),
                });
                round.walked_to = here;
                round.buf = buf;
                return Ok(round);
            }
        };
        let rec_len = header.record_len() as usize;
        if here + rec_len as u64 > records_end {
            round.problems.push(Problem::RecordCorrupt {
                pack,
                offset: here,
                detail: format!(
                    "record of {rec_len} bytes runs past the end of the records at {records_end}"
                ),
            });
            round.walked_to = here;
            round.buf = buf;
            return Ok(round);
        }
        if at + rec_len > buf.len() {
            if at > 0 {
                // The next round starts with it.
                break;
            }
            if rec_len as u64 > ROUND_RECORD_MAX_BYTES {
                // Too large for memory: check it streaming, in constant memory.
                round
                    .problems
                    .extend(verify_large_record(file, pack, here, &header, hash)?);
                round.large = Some((here, header));
                at = rec_len;
                break;
            }
            // Larger than a round: a round of its own.
            let have = buf.len();
            buf.resize(rec_len, 0);
            if let Err(e) = pack::read_exact_at(file, &mut buf[have..], here + have as u64, pack) {
                round.problems.push(Problem::RecordCorrupt {
                    pack,
                    offset: here,
                    detail: e.to_string(),
                });
                round.walked_to = here;
                round.buf = buf;
                return Ok(round);
            }
        }
        round.spans.push((here, header, at..at + rec_len));
        at += rec_len;
    }
    round.walked_to = offset + at as u64;
    round.next = (at > 0 && round.walked_to < records_end).then_some(round.walked_to);
    round.buf = buf;
    Ok(round)
}

/// Checks the records of one round, in the groups of `HashAlgorithm::hash_groups` (their
/// contents hashed together): record checksum, then the content's hash. Problems come out in
/// record order.
fn check_round(
    buf: &[u8],
    spans: &[Span],
    pack: u64,
    hash: crate::key::HashAlgorithm,
) -> Vec<Problem> {
    crate::key::HashAlgorithm::hash_groups(spans.iter().map(|(_, _, r)| r.len()))
        .into_iter()
        .flat_map(|g| check_group(buf, &spans[g], pack, hash))
        .collect()
}

/// An object record's content: borrowed from the round, or decompressed.
enum Content<'a> {
    Stored(&'a [u8]),
    Decompressed(Vec<u8>),
}

/// Checks one group of records of a round, hashing their contents together.
fn check_group(
    buf: &[u8],
    spans: &[Span],
    pack: u64,
    hash: crate::key::HashAlgorithm,
) -> Vec<Problem> {
    // (record, its problem): a list of the few problems rather than a slot per record, which
    // made every group allocate and walk room for a problem per record.
    let mut problems: Vec<(usize, Problem)> = Vec::new();
    let mut contents: Vec<(usize, Content<'_>)> = Vec::with_capacity(spans.len());
    for (i, (offset, h, range)) in spans.iter().enumerate() {
        // The walk decoded (and checked) this header from these bytes already.
        let payload = match crate::format::check_record_checksum(&buf[range.clone()], h) {
            Ok(p) => p,
            Err(reason) => {
                problems.push((
                    i,
                    Problem::RecordCorrupt {
                        pack,
                        offset: *offset,
                        detail: reason.to_string(),
                    },
                ));
                continue;
            }
        };
        if h.kind != RecordKind::Object {
            continue;
        }
        if !h.is_compressed() {
            contents.push((i, Content::Stored(payload)));
            continue;
        }
        match crate::compress::decompress_all(payload, h.raw_len) {
            Ok(c) => contents.push((i, Content::Decompressed(c))),
            Err(detail) => problems.push((
                i,
                Problem::RecordCorrupt {
                    pack,
                    offset: *offset,
                    detail,
                },
            )),
        }
    }
    let slices: Vec<&[u8]> = contents
        .iter()
        .map(|(_, c)| match c {
            Content::Stored(b) => *b,
            Content::Decompressed(v) => v.as_slice(),
        })
        .collect();
    for ((i, _), actual) in contents.iter().zip(hash.hash_all(&slices)) {
        let (offset, h, _) = &spans[*i];
        if actual != h.key {
            problems.push((
                *i,
                Problem::RecordHashMismatch {
                    key: h.key,
                    pack,
                    offset: *offset,
                    actual,
                },
            ));
        }
    }
    // In record order; a record has one problem at most.
    problems.sort_by_key(|(i, _)| *i);
    problems.into_iter().map(|(_, p)| p).collect()
}

/// Opens one pack and reads its header and its footer and table (sealed) or the extent its
/// index row commits (unsealed): everything of its scan but the records. The file is `None` when
/// the pack cannot be read at all.
fn open_pack(
    store: &crate::store::Store,
    row: &crate::index::PackRow,
) -> Result<(PackScan, Option<File>)> {
    let id = row.id;
    let hash = store.config().hash;
    let mut out = PackScan {
        objects: 0,
        bytes: 0,
        problems: Vec::new(),
        unreadable: false,
        records: Vec::new(),
        records_end: 0,
        table: None,
    };
    let path = pack::pack_path(store.path(), id);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(Problem::PackUnreadable {
                pack: id,
                detail: e.to_string(),
            });
            out.unreadable = true;
            return Ok((out, None));
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
            out.unreadable = true;
            return Ok((out, None));
        }
    }
    if file_len < row.end_bytes {
        out.problems.push(Problem::PackShorterThanIndex {
            pack: id,
            file_bytes: file_len,
            index_bytes: row.end_bytes,
        });
    }
    let records_end = if row.sealed {
        match pack::read_sealed_table(&file, id, file_len) {
            Ok(Some((footer, t))) => {
                out.table = Some(t);
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
    out.records_end = records_end;
    Ok((out, Some(file)))
}

/// Where the scan of the packs stands: the next round to hand out.
struct Cursor {
    /// The pack being walked (an index into the scans).
    pack: usize,
    /// Where its next round starts.
    offset: u64,
    /// Rounds handed out so far: results sorted by it come in pack and offset order.
    seq: u64,
    /// A worker met an error that ends the scan.
    failed: bool,
}

/// A round once checked: what `PackScan` keeps of it.
struct RoundDone {
    seq: u64,
    pack: usize,
    problems: Vec<Problem>,
    records: Vec<(u64, RecordHeader)>,
    walked_to: u64,
}

/// Reads every pack whole, each record checked against its checksum and its content against its
/// key; `None` for packs not on disk. Every thread of the pool runs the same loop: take the next
/// round (read it and walk its headers, under the cursor's lock, as where a round ends decides
/// where the next begins), then check its records on the same thread, from its own cache, while
/// the other threads read and check theirs. One thread runs `side_job` first.
fn scan_packs(
    store: &crate::store::Store,
    packs: &[crate::index::PackRow],
    disk: &HashSet<u64>,
    p: &dyn Progress,
    side_job: &(dyn Fn() + Sync),
) -> Result<Vec<Option<PackScan>>> {
    let hash = store.config().hash;
    let start = PACK_HEADER_BYTES as u64;
    let mut scans = Vec::with_capacity(packs.len());
    for row in packs {
        scans.push(
            disk.contains(&row.id)
                .then(|| open_pack(store, row))
                .transpose()?,
        );
    }
    // What the workers need of each pack: id, file, end of its records.
    let walks: Vec<Option<(u64, &File, u64)>> = scans
        .iter()
        .zip(packs)
        .map(|(scan, row)| match scan {
            Some((s, Some(f))) if start < s.records_end => Some((row.id, f, s.records_end)),
            _ => None,
        })
        .collect();
    for w in &walks {
        if w.is_none() {
            p.advance(1);
        }
    }
    let cursor = std::sync::Mutex::new(Cursor {
        pack: 0,
        offset: start,
        seq: 0,
        failed: false,
    });
    let work = || -> Result<Vec<RoundDone>> {
        let mut done = Vec::new();
        let mut buf = Vec::new();
        loop {
            let (seq, pack, id, round) = {
                let mut c = cursor.lock().unwrap_or_else(|e| e.into_inner());
                while c.pack < walks.len() && walks[c.pack].is_none() {
                    c.pack += 1;
                }
                let Some(&Some((id, file, records_end))) = walks.get(c.pack) else {
                    return Ok(done);
                };
                if c.failed {
                    return Ok(done);
                }
                let round = match read_round(
                    file,
                    id,
                    c.offset,
                    records_end,
                    hash,
                    std::mem::take(&mut buf),
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        c.failed = true;
                        return Err(e);
                    }
                };
                let (seq, pack) = (c.seq, c.pack);
                c.seq += 1;
                match round.next {
                    Some(next) => c.offset = next,
                    None => {
                        c.pack += 1;
                        c.offset = start;
                        p.advance(1);
                    }
                }
                (seq, pack, id, round)
            };
            let mut problems = round.problems;
            problems.extend(check_round(&round.buf, &round.spans, id, hash));
            let records = round
                .large
                .into_iter()
                .chain(
                    round
                        .spans
                        .into_iter()
                        .map(|(offset, header, _)| (offset, header)),
                )
                .collect();
            done.push(RoundDone {
                seq,
                pack,
                problems,
                records,
                walked_to: round.walked_to,
            });
            buf = round.buf;
        }
    };
    let mut rounds = Vec::new();
    for r in rayon::broadcast(|ctx| {
        if ctx.index() + 1 == ctx.num_threads() {
            side_job();
        }
        work()
    }) {
        rounds.extend(r?);
    }
    rounds.sort_unstable_by_key(|r| r.seq);

    let mut walked_to = vec![start; scans.len()];
    for r in rounds {
        let Some((out, _)) = scans[r.pack].as_mut() else {
            continue;
        };
        out.problems.extend(r.problems);
        for (_, header) in &r.records {
            if header.kind == RecordKind::Object {
                out.objects += 1;
                out.bytes += header.raw_len;
            }
        }
        out.records.push(r.records);
        walked_to[r.pack] = r.walked_to;
    }
    let mut out = Vec::with_capacity(scans.len());
    for ((scan, walked_to), row) in scans.into_iter().zip(walked_to).zip(packs) {
        out.push(scan.map(|(mut scan, file)| {
            let id = row.id;
            if file.is_some()
                && walked_to < scan.records_end
                && !scan
                    .problems
                    .iter()
                    .any(|p| matches!(p, Problem::RecordCorrupt { pack, .. } if *pack == id))
            {
                scan.problems.push(Problem::RecordCorrupt {
                    pack: id,
                    offset: walked_to,
                    detail: format!(
                        "{} trailing bytes hold no record",
                        scan.records_end - walked_to
                    ),
                });
            }
            scan
        }));
    }
    Ok(out)
}

/// Compares a scanned pack with the index rows that point into it (`mine`: where they are in
/// `rows`, every live row in key order) and returns every problem of the pack, the scan's own
/// first.
fn check_rows(
    id: u64,
    scan: PackScan,
    rows: &[(Key, IndexRow)],
    mine: Vec<usize>,
    tombstones_here: &HashSet<u64>,
    kills: &Kills,
) -> Vec<Problem> {
    let mut out = scan.problems;
    if scan.unreadable {
        return out;
    }
    // The records in one list of references, built here on the thread that checks this pack.
    let records: Vec<&(u64, RecordHeader)> = scan.records.iter().flatten().collect();
    let records_end = scan.records_end;
    // Records come in offset order from the walk; rows are put in offset order here, so each
    // row finds its record by advancing one cursor.
    debug_assert!(records.windows(2).all(|w| w[0].0 < w[1].0));
    // A sealed table must list every live row of its pack: rows come from the index in key
    // order and the table is in key and offset order, so one merge finds those it lacks.
    let mut not_in_table = Vec::new();
    // The table entry each row matched (in `mine`'s key order), if any.
    let mut entry_of_row: Vec<Option<usize>> = Vec::new();
    if let Some(t) = &scan.table {
        entry_of_row.reserve(mine.len());
        let mut at = 0usize;
        for (key, r) in mine.iter().map(|&i| &rows[i]) {
            let want = (*key, r.offset);
            while t.get(at).is_some_and(|e| *e < want) {
                at += 1;
            }
            if t.get(at) == Some(&want) {
                entry_of_row.push(Some(at));
            } else {
                entry_of_row.push(None);
                not_in_table.push(Problem::TableMismatch {
                    pack: id,
                    detail: format!("row {key} at {} missing from the table", r.offset),
                });
            }
        }
    }
    // Rows in offset order, sorted as (offset, place in `mine`) pairs: a sort that reads each
    // row through its index jumps about the whole of `rows` on every comparison.
    let mut by_offset: Vec<(u64, usize)> = mine
        .iter()
        .enumerate()
        .map(|(m, &i)| (rows[i].1.offset, m))
        .collect();
    by_offset.sort_unstable();
    // Table entries a row has matched at a record of the row's key: checked once that is known.
    let mut entry_checked = vec![false; scan.table.as_ref().map_or(0, Vec::len)];
    // Records a row of the same key points at: indexed without a lookup.
    let mut reached = vec![false; records.len()];
    let mut cursor = 0usize;
    let mut prev: Option<(Key, u64)> = None;
    for &(_, m) in &by_offset {
        let (key, r) = &rows[mine[m]];
        if let Some((pk, pend)) = prev {
            if r.offset < pend {
                out.push(Problem::OverlappingRows {
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
        while records.get(cursor).is_some_and(|(o, _)| *o < r.offset) {
            cursor += 1;
        }
        let found = records
            .get(cursor)
            .filter(|(o, _)| *o == r.offset)
            .map(|(_, h)| h);
        match found {
            None if r.offset >= records_end.max(PACK_HEADER_BYTES as u64) => {
                out.push(Problem::RowPastEnd {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                })
            }
            None => out.push(Problem::RowWithoutRecord {
                key: *key,
                pack: id,
                offset: r.offset,
            }),
            Some(h) if h.key != *key || h.kind != RecordKind::Object => {
                out.push(Problem::RowWithoutRecord {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                })
            }
            Some(h)
                if h.raw_len != r.raw_len || h.stored_len != r.stored_len || h.flags != r.flags =>
            {
                reached[cursor] = true;
                out.push(Problem::RowMismatch {
                    key: *key,
                    pack: id,
                    offset: r.offset,
                    detail: format!(
                        "row says raw {} stored {} flags {}, record says raw {} stored {} flags {}",
                        r.raw_len, r.stored_len, r.flags, h.raw_len, h.stored_len, h.flags
                    ),
                })
            }
            Some(_) => {
                reached[cursor] = true;
                if let Some(e) = entry_of_row.get(m).copied().flatten() {
                    entry_checked[e] = true;
                }
            }
        }
    }
    // Records that nothing reaches although they are live.
    for ((off, h), reached) in records.iter().zip(&reached) {
        let pos = crate::format::Position {
            pack: id,
            offset: *off,
        };
        if h.kind == RecordKind::Object
            && !reached
            && rows.binary_search_by(|(k, _)| k.cmp(&h.key)).is_err()
            && !kills.kills(&h.key, pos)
        {
            out.push(Problem::RecordNotIndexed {
                key: h.key,
                pack: id,
                offset: *off,
            });
        }
        if h.kind == RecordKind::Tombstone && !tombstones_here.contains(off) {
            out.push(Problem::RecordCorrupt {
                pack: id,
                offset: *off,
                detail: format!("tombstone for {} is not in the index", h.key),
            });
        }
    }
    // Every entry of a sealed table must be at a record with its key (those a row reached at
    // such a record are known to be).
    if let Some(t) = scan.table {
        let record_key = |off: u64| {
            records
                .binary_search_by_key(&off, |(o, _)| *o)
                .ok()
                .map(|i| records[i].1.key)
        };
        for ((key, off), checked) in t.iter().zip(&entry_checked) {
            if !checked && record_key(*off) != Some(*key) {
                out.push(Problem::TableMismatch {
                    pack: id,
                    detail: format!("entry {key} at {off} has no such record"),
                });
            }
        }
    }
    out.extend(not_in_table);
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_record, RECORD_HEADER_BYTES};
    use crate::key::HashAlgorithm;
    use crate::Compression;

    /// Three rounds' worth of groups in one round: raw and compressed records of many sizes,
    /// some whose key is not their content's hash (their checksums are right) and some with a
    /// flipped payload byte (wrong checksum). Each bad record is reported once, as the kind of
    /// damage it has, at its offset, in record order; the good ones not at all.
    #[test]
    fn a_round_of_many_groups_reports_each_bad_record_once_in_record_order() {
        for hash in [HashAlgorithm::Blake3, HashAlgorithm::Sha256] {
            let wrong_key = [5usize, 129, 300, 301, 699];
            let flipped = [150usize, 451, 640];
            let mut buf = Vec::new();
            let mut spans = Vec::new();
            let mut expected = Vec::new();
            let base = 4096u64;
            for i in 0..700usize {
                let content: Vec<u8> = (0..(i * 37 % 20_000))
                    .map(|j| (j % 251 * 7 + i) as u8)
                    .collect();
                let policy = if i % 3 == 0 {
                    Compression::Zstd { level: 1 }
                } else {
                    Compression::None
                };
                let enc = crate::compress::encode(&content, policy).expect("encode");
                let key = if wrong_key.contains(&i) {
                    hash.hash(format!("not record {i}").as_bytes())
                } else {
                    hash.hash(&content)
                };
                let header = RecordHeader {
                    kind: RecordKind::Object,
                    flags: if enc.compressed {
                        crate::format::FLAG_ZSTD
                    } else {
                        0
                    },
                    hash,
                    raw_len: content.len() as u64,
                    stored_len: enc.payload.len() as u64,
                    key,
                };
                let start = buf.len();
                encode_record(&header, &enc.payload, &mut buf);
                let offset = base + start as u64;
                if flipped.contains(&i) {
                    assert!(!enc.payload.is_empty(), "record {i} has a payload to flip");
                    buf[start + RECORD_HEADER_BYTES] ^= 0x40;
                    expected.push(format!("corrupt {offset}"));
                } else if wrong_key.contains(&i) {
                    expected.push(format!(
                        "mismatch {offset} {}",
                        hash.hash(&content).to_hex()
                    ));
                }
                spans.push((offset, header, start..buf.len()));
            }
            assert!(
                spans.iter().filter(|s| s.1.is_compressed()).count() > 100,
                "the round has compressed records"
            );
            let found: Vec<String> = check_round(&buf, &spans, 3, hash)
                .into_iter()
                .map(|p| match p {
                    Problem::RecordCorrupt {
                        pack: 3, offset, ..
                    } => format!("corrupt {offset}"),
                    Problem::RecordHashMismatch {
                        pack: 3,
                        offset,
                        actual,
                        ..
                    } => format!("mismatch {offset} {}", actual.to_hex()),
                    other => format!("unexpected: {other}"),
                })
                .collect();
            assert_eq!(found, expected, "{hash:?}");
        }
    }

    /// A sealed table is checked against the records: entries a row reached at a record of the
    /// row's key pass without a lookup, and every other entry is looked up, so an entry at no
    /// record or at a record of another key is reported whether or not a row shares it.
    #[test]
    fn table_entries_at_no_record_or_another_key_are_reported_with_or_without_a_row() {
        let hash = HashAlgorithm::Blake3;
        let key = |n: u8| hash.hash(&[n]);
        let record = |offset: u64, k: Key| {
            (
                offset,
                RecordHeader {
                    kind: RecordKind::Object,
                    flags: 0,
                    hash,
                    raw_len: 1,
                    stored_len: 1,
                    key: k,
                },
            )
        };
        let row = |k: Key, offset: u64| {
            (
                k,
                IndexRow {
                    pack: 7,
                    offset,
                    raw_len: 1,
                    stored_len: 1,
                    flags: 0,
                },
            )
        };
        // Records 1, 2, 3 at 100, 200, 300. The table adds 4 at 400 (no record), 5 at 200 (the
        // record there is 2's) and 6 at 300 (the record there is 3's, and a row says 6 too).
        let mut table = vec![
            (key(1), 100),
            (key(2), 200),
            (key(3), 300),
            (key(4), 400),
            (key(5), 200),
            (key(6), 300),
        ];
        table.sort_unstable();
        let scan = PackScan {
            objects: 3,
            bytes: 3,
            problems: Vec::new(),
            unreadable: false,
            records: vec![
                vec![record(100, key(1)), record(200, key(2))],
                vec![record(300, key(3))],
            ],
            records_end: 400,
            table: Some(table),
        };
        let mut rows = vec![
            row(key(1), 100),
            row(key(2), 200),
            row(key(3), 300),
            row(key(6), 300),
        ];
        rows.sort_unstable_by_key(|(k, r)| (*k, r.offset));
        let mine: Vec<usize> = (0..rows.len()).collect();
        let problems = check_rows(7, scan, &rows, mine, &HashSet::new(), &Kills::new(&[]));
        let mut table_problems: Vec<String> = problems
            .iter()
            .filter_map(|p| match p {
                Problem::TableMismatch { pack: 7, detail } => Some(detail.clone()),
                _ => None,
            })
            .collect();
        table_problems.sort();
        let mut want = vec![
            format!("entry {} at 400 has no such record", key(4)),
            format!("entry {} at 200 has no such record", key(5)),
            format!("entry {} at 300 has no such record", key(6)),
        ];
        want.sort();
        assert_eq!(table_problems, want, "all problems: {problems:?}");
        assert!(
            problems.iter().any(|p| *p
                == Problem::RowWithoutRecord {
                    key: key(6),
                    pack: 7,
                    offset: 300
                }),
            "the row for 6 at 300 is reported: {problems:?}"
        );
    }
}
