//! Helpers shared by the store's integration tests: temporary stores, deterministic content,
//! seeds, a recording `Progress`, and a reader of pack files built on the public format parsers
//! (so corruption tests can aim at a record's header, payload or trailer by offset).
//!
//! Each test binary uses a different subset, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod parsers;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use basin_store::format::{
    decode_record, Footer, PackHeader, RecordHeader, FOOTER_BYTES, PACK_HEADER_BYTES,
    RECORD_HEADER_BYTES,
};
use basin_store::{
    Compression, HashAlgorithm, InitOptions, Key, LockWait, NoProgress, Progress, Store, Unit,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A store in a fresh temporary folder; the folder goes away with the `TempDir`.
pub struct TestStore {
    pub dir: tempfile::TempDir,
    pub store: Store,
}

impl TestStore {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Drops the handle and opens the folder again (as a new process would).
    pub fn reopen(&mut self) {
        self.store = Store::open(&self.root()).expect("reopen store");
    }
}

/// Small packs so a handful of objects exercises pack rollover.
pub const SMALL_PACK_BYTES: u64 = 4096;

pub fn small_opts() -> InitOptions {
    InitOptions {
        pack_size_target_bytes: SMALL_PACK_BYTES,
        ..InitOptions::default()
    }
}

pub fn new_store(opts: &InitOptions) -> TestStore {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("store"), opts).expect("init store");
    TestStore { dir, store }
}

pub fn new_small_store() -> TestStore {
    new_store(&small_opts())
}

/// A seed from `BASIN_TEST_SEED`, else a fresh random one; printed so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("BASIN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("{test}: seed {seed} (replay with BASIN_TEST_SEED={seed})");
    seed
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Incompressible bytes derived from `n`.
pub fn random_bytes(n: u64, len: usize) -> Vec<u8> {
    let mut r = StdRng::seed_from_u64(n ^ 0x5EED_0000_0000_0000);
    (0..len).map(|_| r.random()).collect()
}

/// Very compressible bytes derived from `n` (text with a number in it).
pub fn text_bytes(n: u64, len: usize) -> Vec<u8> {
    let line = format!("object {n}: the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(len).collect()
}

pub fn key_of(store: &Store, content: &[u8]) -> Key {
    store.config().hash.hash(content)
}

/// A key no test ever stores.
pub fn absent_key(n: u64) -> Key {
    HashAlgorithm::Blake3.hash(format!("never stored {n}").as_bytes())
}

pub fn pack_all(store: &Store) -> basin_store::PackReport {
    let m = store.maintenance(LockWait::Fail).expect("maintenance lock");
    m.pack_loose(
        &basin_store::PackSelection::All,
        &basin_store::PackOptions::default(),
        &NoProgress,
    )
    .expect("pack_loose")
}

pub fn validate(store: &Store) -> basin_store::ValidationReport {
    let m = store.maintenance(LockWait::Fail).expect("maintenance lock");
    m.validate(&NoProgress).expect("validate runs")
}

pub fn assert_valid(store: &Store) {
    let r = validate(store);
    let problems: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        r.is_ok(),
        "validate found problems:\n{}",
        problems.join("\n")
    );
}

pub fn write_packed(
    store: &Store,
    contents: &[Vec<u8>],
    compression: Option<Compression>,
) -> Vec<Key> {
    let m = store.maintenance(LockWait::Fail).expect("maintenance lock");
    let mut it = contents
        .iter()
        .map(|c| Ok(basin_store::Source::Bytes(c.clone())));
    let opts = basin_store::PackOptions {
        compression,
        commit_bytes: None,
        cached_bytes: None,
    };
    m.write_packed(&mut it, &opts, &NoProgress)
        .expect("write_packed")
}

/// Files directly inside `dir` (recursively), relative names sorted; empty when absent.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Pack files by id.
pub fn pack_files(root: &Path) -> BTreeMap<u64, PathBuf> {
    let mut out = BTreeMap::new();
    for p in files_under(&root.join("packs")) {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(id) = name.strip_suffix(".pack").and_then(|d| d.parse().ok()) {
            out.insert(id, p);
        }
    }
    out
}

/// One record found by walking a pack file.
#[derive(Debug, Clone)]
pub struct RecordAt {
    pub offset: u64,
    pub header: RecordHeader,
}

impl RecordAt {
    pub fn payload_offset(&self) -> u64 {
        self.offset + RECORD_HEADER_BYTES as u64
    }
    pub fn trailer_offset(&self) -> u64 {
        self.payload_offset() + self.header.stored_len
    }
    pub fn end(&self) -> u64 {
        self.trailer_offset() + 4
    }
}

/// What a pack file holds, parsed with the public format functions.
#[derive(Debug)]
pub struct PackLayout {
    pub header: PackHeader,
    pub records: Vec<RecordAt>,
    /// Footer (and where it starts) when the pack is sealed.
    pub footer: Option<(u64, Footer)>,
    pub file_len: u64,
}

pub fn read_pack(path: &Path) -> PackLayout {
    let b = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let header =
        PackHeader::decode(&b).unwrap_or_else(|e| panic!("{}: pack header: {e}", path.display()));
    let len = b.len() as u64;
    let footer = (b.len() >= FOOTER_BYTES)
        .then(|| Footer::decode(&b[b.len() - FOOTER_BYTES..], len).ok())
        .flatten()
        .map(|f| (len - FOOTER_BYTES as u64, f));
    let records_end = footer.map_or(len, |(_, f)| f.table_offset);
    let mut records = Vec::new();
    let mut at = PACK_HEADER_BYTES as u64;
    while at < records_end {
        let (h, _) = decode_record(&b[at as usize..records_end as usize])
            .unwrap_or_else(|e| panic!("{}: record at {at}: {e}", path.display()));
        records.push(RecordAt {
            offset: at,
            header: h,
        });
        at += h.record_len();
    }
    PackLayout {
        header,
        records,
        footer,
        file_len: len,
    }
}

/// XORs `mask` into the byte at `offset` of `path`.
pub fn flip_byte(path: &Path, offset: u64, mask: u8) {
    let mut b = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        (offset as usize) < b.len(),
        "{}: offset {offset} past the end ({})",
        path.display(),
        b.len()
    );
    b[offset as usize] ^= mask;
    fs::write(path, b).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The path of a loose object, per the documented layout `loose/<prefix>/<rest>`.
pub fn loose_file(store: &Store, key: &Key) -> PathBuf {
    let hex = key.to_hex();
    let p = store.config().loose_prefix_len as usize;
    let loose = store.path().join("loose");
    if p == 0 {
        loose.join(hex)
    } else {
        loose.join(&hex[..p]).join(&hex[p..])
    }
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|rd| rd.count())
        .unwrap_or(0)
}

/// Progress that records every call, to check that phases balance and totals add up.
#[derive(Default)]
pub struct RecordingProgress {
    pub events: Mutex<Vec<ProgressEvent>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProgressEvent {
    Start {
        phase: String,
        total: Option<u64>,
        unit: Unit,
    },
    Advance(u64),
    Finish,
}

impl Progress for RecordingProgress {
    fn start(&self, phase: &str, total: Option<u64>, unit: Unit) {
        self.events
            .lock()
            .expect("events")
            .push(ProgressEvent::Start {
                phase: phase.to_string(),
                total,
                unit,
            });
    }
    fn advance(&self, n: u64) {
        self.events
            .lock()
            .expect("events")
            .push(ProgressEvent::Advance(n));
    }
    fn finish(&self) {
        self.events
            .lock()
            .expect("events")
            .push(ProgressEvent::Finish);
    }
}

impl RecordingProgress {
    /// Checks the call sequence: every phase starts before it advances and finishes once, phases
    /// do not nest, and a phase with a known total advances by exactly that total. Returns the
    /// phases as (name, total advanced).
    pub fn phases(&self) -> Vec<(String, u64)> {
        let events = self.events.lock().expect("events").clone();
        let mut out = Vec::new();
        let mut open: Option<(String, Option<u64>, u64)> = None;
        for e in &events {
            match e {
                ProgressEvent::Start { phase, total, .. } => {
                    assert!(
                        open.is_none(),
                        "phase {phase} starts inside {open:?}: {events:?}"
                    );
                    open = Some((phase.clone(), *total, 0));
                }
                ProgressEvent::Advance(n) => {
                    let Some(o) = open.as_mut() else {
                        panic!("advance outside a phase: {events:?}")
                    };
                    o.2 += n;
                }
                ProgressEvent::Finish => {
                    let Some((phase, total, done)) = open.take() else {
                        panic!("finish without start: {events:?}")
                    };
                    if let Some(t) = total {
                        assert_eq!(
                            done, t,
                            "phase {phase} announced {t} units but advanced {done}"
                        );
                    }
                    out.push((phase, done));
                }
            }
        }
        assert!(open.is_none(), "phase never finished: {open:?}");
        out
    }
}

/// Builds a disk-objectstore container by hand, to its documented layout (config.json, loose/,
/// packs/<int>, packs.idx with table db_object, zlib streams for compressed objects).
pub fn dos_container(dir: &std::path::Path, objects: &[(Vec<u8>, &str)]) {
    use std::io::Write;
    fs::create_dir_all(dir.join("loose")).expect("mkdir");
    fs::create_dir_all(dir.join("packs")).expect("mkdir");
    fs::create_dir_all(dir.join("sandbox")).expect("mkdir");
    fs::create_dir_all(dir.join("duplicates")).expect("mkdir");
    fs::write(
        dir.join("config.json"),
        r#"{"container_version": 1, "loose_prefix_len": 2, "pack_size_target": 4294967296, "hash_type": "sha256", "container_id": "8f5f317c641f4bd1976f4dcd7af5f531", "compression_algorithm": "zlib+1"}"#,
    )
    .expect("config");
    let db = rusqlite::Connection::open(dir.join("packs.idx")).expect("db");
    db.execute_batch(
        "CREATE TABLE db_object (id INTEGER NOT NULL, hashkey VARCHAR NOT NULL, compressed BOOLEAN NOT NULL, \
         size INTEGER NOT NULL, \"offset\" INTEGER NOT NULL, length INTEGER NOT NULL, pack_id INTEGER NOT NULL, PRIMARY KEY (id)); \
         CREATE UNIQUE INDEX ix_db_object_hashkey ON db_object (hashkey);",
    )
    .expect("schema");
    let mut pack = Vec::new();
    for (content, how) in objects {
        let key = HashAlgorithm::Sha256.hash(content).to_hex();
        match *how {
            "loose" => {
                fs::create_dir_all(dir.join("loose").join(&key[..2])).expect("mkdir");
                fs::write(dir.join("loose").join(&key[..2]).join(&key[2..]), content)
                    .expect("loose");
            }
            "raw" | "zlib" => {
                let stored = if *how == "zlib" {
                    let mut e =
                        flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(1));
                    e.write_all(content).expect("zlib");
                    e.finish().expect("zlib")
                } else {
                    content.clone()
                };
                pack.extend_from_slice(b"HOLE"); // dos packs may hold unreferenced bytes
                db.execute(
                    "INSERT INTO db_object (hashkey, compressed, size, \"offset\", length, pack_id) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
                    rusqlite::params![key, *how == "zlib", content.len() as i64, pack.len() as i64, stored.len() as i64],
                )
                .expect("row");
                pack.extend_from_slice(&stored);
            }
            other => panic!("unknown placement {other}"),
        }
    }
    fs::write(dir.join("packs").join("0"), pack).expect("pack");
}
