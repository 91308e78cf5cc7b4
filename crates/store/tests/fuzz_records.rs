//! Fuzz-style test of the pack-format parsers (`basin_store::format`), run in every `cargo test`.
//!
//! A checked-in seed corpus (`tests/corpus/`: records, pack headers, sealed and unsealed packs,
//! frame tables) is first checked as a fixture — every file must still parse and every object
//! record must still hash to its key, so old packs stay readable. Then each file is mutated
//! exhaustively (every single-bit flip, every truncation) and randomly (bit flips, byte sets,
//! truncations, extensions, splices, length-field rewrites), half the time with the checksums
//! recomputed so the mutation reaches the logic behind the checksum gates. Every mutant goes
//! through `common::parsers::check`: parsers return Ok or Err, never panic, and an Ok re-encodes
//! to the same bytes. The random part is deterministic: fixed default seed, printed; override
//! with `BASIN_FUZZ_SEED`, and the count per file with `BASIN_FUZZ_ITERS`.
//!
//! `BASIN_WRITE_CORPUS=1` regenerates the corpus files from `build_corpus` (do that only on a
//! format version bump, and keep the old files as fixtures under a new name).
//! The same oracle runs unbounded under cargo-fuzz in `fuzz/fuzz_targets/records.rs`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use basin_store::format::{
    decode_record, encode_frame_table, encode_record, encode_table, encode_tombstone, Footer,
    PackHeader, Position, RecordHeader, RecordKind, FLAG_ZSTD, FOOTER_BYTES, FRAME_RAW_BYTES,
    PACK_FORMAT_VERSION, PACK_HEADER_BYTES, RECORD_HEADER_BYTES, TOMBSTONE_PAYLOAD_BYTES,
};
use basin_store::{HashAlgorithm, Key};
use common::parsers::{check, Accepted, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEFAULT_SEED: u64 = 0xBA51_F022;
const DEFAULT_ITERS_PER_FILE: u64 = 3000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("corpus")
}

// ---------------------------------------------------------------------------------------------
// The corpus: built with the format's own encoders, checked in as bytes.

fn object_record(hash: HashAlgorithm, content: &[u8], compress: bool) -> Vec<u8> {
    let key = hash.hash(content);
    let payload = if compress {
        let mut payload = Vec::new();
        let mut sizes = Vec::new();
        let chunks: Vec<&[u8]> = if content.is_empty() {
            vec![content]
        } else {
            content.chunks(FRAME_RAW_BYTES as usize).collect()
        };
        for chunk in chunks {
            let frame = zstd::bulk::compress(chunk, 3).expect("zstd compress");
            sizes.push(u32::try_from(frame.len()).expect("frame fits u32"));
            payload.extend_from_slice(&frame);
        }
        encode_frame_table(&sizes, &mut payload);
        payload
    } else {
        content.to_vec()
    };
    let header = RecordHeader {
        kind: RecordKind::Object,
        flags: if compress { FLAG_ZSTD } else { 0 },
        hash,
        raw_len: content.len() as u64,
        stored_len: payload.len() as u64,
        key,
    };
    let mut out = Vec::new();
    encode_record(&header, &payload, &mut out);
    out
}

fn tombstone_record(key: Key, before: Position) -> Vec<u8> {
    let header = RecordHeader {
        kind: RecordKind::Tombstone,
        flags: 0,
        hash: HashAlgorithm::Blake3,
        raw_len: 0,
        stored_len: TOMBSTONE_PAYLOAD_BYTES,
        key,
    };
    let mut out = Vec::new();
    encode_record(&header, &encode_tombstone(before), &mut out);
    out
}

fn pack_header(hash: HashAlgorithm, pack_id: u64) -> Vec<u8> {
    PackHeader {
        version: PACK_FORMAT_VERSION,
        hash,
        flags: 0,
        pack_id,
        container_id: *b"corpus-container",
    }
    .encode()
    .to_vec()
}

/// A pack: header, the records, and (when `sealed`) the sorted table of object records + footer.
fn pack(records: &[Vec<u8>], sealed: bool) -> Vec<u8> {
    let mut out = pack_header(HashAlgorithm::Blake3, 7);
    let mut entries = Vec::new();
    for r in records {
        let (h, _) = decode_record(r).expect("corpus record");
        if h.kind == RecordKind::Object {
            entries.push((h.key, out.len() as u64));
        }
        out.extend_from_slice(r);
    }
    if sealed {
        entries.sort();
        let table = encode_table(&entries);
        let footer = Footer {
            table_offset: out.len() as u64,
            entry_count: entries.len() as u64,
            table_crc: crc32fast::hash(&table),
        };
        out.extend_from_slice(&table);
        out.extend_from_slice(&footer.encode());
    }
    out
}

fn text(len: usize) -> Vec<u8> {
    let line = b"basin stores objects named by the hash of their content.\n";
    line.iter().copied().cycle().take(len).collect()
}

fn build_corpus() -> Vec<(String, Vec<u8>)> {
    let raw = object_record(HashAlgorithm::Blake3, b"hello basin\n", false);
    let empty = object_record(HashAlgorithm::Blake3, b"", false);
    let sha = object_record(HashAlgorithm::Sha256, b"keys that match git-lfs\n", false);
    let zstd_one = object_record(HashAlgorithm::Blake3, &text(4096), true);
    let zstd_two = object_record(
        HashAlgorithm::Blake3,
        &text(FRAME_RAW_BYTES as usize + 1000),
        true,
    );
    let zstd_empty = object_record(HashAlgorithm::Blake3, b"", true);
    let tomb = tombstone_record(
        HashAlgorithm::Blake3.hash(b"hello basin\n"),
        Position {
            pack: 7,
            offset: 48,
        },
    );
    let payload_of = |record: &[u8], raw_len: u64| {
        let (_, payload) = decode_record(record).expect("corpus record");
        let mut b = raw_len.to_le_bytes().to_vec();
        b.extend_from_slice(payload);
        b
    };
    vec![
        ("record-object-raw.bin".into(), raw.clone()),
        ("record-object-empty.bin".into(), empty.clone()),
        ("record-object-sha256.bin".into(), sha),
        ("record-object-zstd.bin".into(), zstd_one.clone()),
        ("record-object-zstd-2frames.bin".into(), zstd_two.clone()),
        ("record-object-zstd-empty.bin".into(), zstd_empty),
        ("record-tombstone.bin".into(), tomb.clone()),
        (
            "header-blake3.bin".into(),
            pack_header(HashAlgorithm::Blake3, 0),
        ),
        (
            "header-sha256.bin".into(),
            pack_header(HashAlgorithm::Sha256, u64::MAX >> 1),
        ),
        (
            "pack-sealed.bin".into(),
            pack(
                &[raw.clone(), zstd_one.clone(), empty.clone(), tomb.clone()],
                true,
            ),
        ),
        ("pack-sealed-empty.bin".into(), pack(&[], true)),
        ("pack-unsealed.bin".into(), pack(&[raw, tomb, empty], false)),
        ("frames-one.bin".into(), payload_of(&zstd_one, 4096)),
        (
            "frames-two.bin".into(),
            payload_of(&zstd_two, FRAME_RAW_BYTES + 1000),
        ),
    ]
}

fn load_corpus() -> Vec<(String, Target, Vec<u8>)> {
    let dir = corpus_dir();
    if std::env::var_os("BASIN_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        for (name, bytes) in build_corpus() {
            std::fs::write(dir.join(&name), bytes).expect("write corpus file");
        }
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name")
            .to_string();
        let target = Target::from_file_name(&name).unwrap_or_else(|| {
            panic!("corpus file {name} has no known prefix (record-, header-, pack-, frames-)")
        });
        out.push((
            name,
            target,
            std::fs::read(&path).expect("read corpus file"),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 10,
        "corpus in {} is missing files: {}",
        dir.display(),
        out.len()
    );
    out
}

// ---------------------------------------------------------------------------------------------
// Fixture checks: the checked-in bytes still parse, fully, and still mean what they meant.

#[test]
fn corpus_files_still_parse_and_round_trip() {
    for (name, target, bytes) in load_corpus() {
        let acc = check(target, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        match target {
            Target::Record => {
                assert_eq!(acc.records, 1, "{name} must parse as one record: {acc:?}");
                let (h, payload) = decode_record(&bytes).expect("record");
                assert_eq!(h.record_len(), bytes.len() as u64, "{name}: trailing bytes");
                if h.kind == RecordKind::Object {
                    let content = if h.is_compressed() {
                        assert_eq!(
                            acc.frame_tables, 1,
                            "{name}: frame table must parse: {acc:?}"
                        );
                        decompress(payload, h.raw_len)
                    } else {
                        payload.to_vec()
                    };
                    assert_eq!(content.len() as u64, h.raw_len, "{name}: raw length");
                    assert_eq!(
                        h.hash.hash(&content),
                        h.key,
                        "{name}: content no longer hashes to its key"
                    );
                } else {
                    assert_eq!(
                        acc.tombstones, 1,
                        "{name}: tombstone payload must parse: {acc:?}"
                    );
                }
            }
            Target::Header => assert_eq!(acc.pack_headers, 1, "{name}: {acc:?}"),
            Target::Pack => {
                assert_eq!(acc.pack_headers, 1, "{name}: {acc:?}");
                if name.contains("unsealed") {
                    assert_eq!(
                        acc.footers, 0,
                        "{name}: an unsealed pack has no footer: {acc:?}"
                    );
                    assert!(acc.records > 0, "{name}: records must walk: {acc:?}");
                } else {
                    assert_eq!(
                        (acc.footers, acc.tables),
                        (1, 1),
                        "{name}: footer and table: {acc:?}"
                    );
                }
            }
            Target::Frames => assert_eq!(acc.frame_tables, 1, "{name}: {acc:?}"),
        }
    }
}

/// Decompresses a frame-table payload the way a reader does: frame by frame, by the table.
fn decompress(payload: &[u8], raw_len: u64) -> Vec<u8> {
    let frames = basin_store::format::decode_frame_table(payload, payload.len() as u64, raw_len)
        .expect("frames");
    let mut out = Vec::new();
    for (offset, size) in frames {
        let frame = &payload[offset as usize..offset as usize + size as usize];
        out.extend_from_slice(&zstd::decode_all(frame).expect("zstd frame"));
    }
    out
}

#[test]
fn corpus_matches_the_encoders_for_uncompressed_files() {
    // zstd output may change between zstd releases, so compressed files are only checked by
    // meaning (above); everything else must be byte-identical to what the encoders write today.
    // A failure here means the format changed: bump PACK_FORMAT_VERSION and log it.
    let built = build_corpus();
    let on_disk = load_corpus();
    for (name, bytes) in built {
        if name.contains("zstd") || name.starts_with("frames") || name.starts_with("pack-sealed.") {
            continue;
        }
        let (_, _, disk) = on_disk
            .iter()
            .find(|(n, _, _)| *n == name)
            .unwrap_or_else(|| panic!("corpus file {name} missing; run with BASIN_WRITE_CORPUS=1"));
        assert!(
            *disk == bytes,
            "{name}: encoders now write different bytes than the checked-in fixture"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Mutation.

/// Recomputes every checksum the target's layout has, so a mutant is judged on its content.
fn fix_checksums(target: Target, b: &mut [u8]) {
    match target {
        Target::Record => {
            fix_record_at(b, 0);
        }
        Target::Header => fix_pack_header(b),
        Target::Pack => {
            fix_pack_header(b);
            let mut at = PACK_HEADER_BYTES;
            while let Some(next) = fix_record_at(b, at) {
                at = next;
            }
            fix_footer(b);
        }
        Target::Frames => {}
    }
}

fn put_crc(b: &mut [u8], at: usize, over: std::ops::Range<usize>) {
    let crc = crc32fast::hash(&b[over]);
    b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

fn fix_pack_header(b: &mut [u8]) {
    if b.len() >= PACK_HEADER_BYTES {
        put_crc(b, 44, 0..44);
    }
}

/// Fixes the header and trailer checksums of the record at `at`; returns where the next begins.
fn fix_record_at(b: &mut [u8], at: usize) -> Option<usize> {
    let key_end = RECORD_HEADER_BYTES - 4;
    if b.len() < at.checked_add(RECORD_HEADER_BYTES)? {
        return None;
    }
    put_crc(b, at + key_end, at..at + key_end);
    let stored = u64::from_le_bytes(b[at + 16..at + 24].try_into().ok()?);
    let end = (at + RECORD_HEADER_BYTES).checked_add(usize::try_from(stored).ok()?)?;
    if end.checked_add(4)? > b.len() {
        return None;
    }
    put_crc(b, end, at..end);
    Some(end + 4)
}

fn fix_footer(b: &mut [u8]) {
    if b.len() < PACK_HEADER_BYTES + FOOTER_BYTES {
        return;
    }
    let f = b.len() - FOOTER_BYTES;
    let table_offset = u64::from_le_bytes(b[f..f + 8].try_into().expect("8 bytes"));
    if let Ok(start) = usize::try_from(table_offset) {
        if start <= f {
            let crc = crc32fast::hash(&b[start..f]);
            b[f + 16..f + 20].copy_from_slice(&crc.to_le_bytes());
        }
    }
    put_crc(b, f + 28, f..f + 28);
}

/// Byte offsets of little-endian length/count fields worth rewriting, per target.
fn length_fields(target: Target, b: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    match target {
        Target::Record => fields.extend([(8, 8), (16, 8)]),
        Target::Header => fields.extend([(8, 2), (16, 8)]),
        Target::Pack => {
            fields.extend([(PACK_HEADER_BYTES + 8, 8), (PACK_HEADER_BYTES + 16, 8)]);
            if b.len() >= FOOTER_BYTES {
                let f = b.len() - FOOTER_BYTES;
                fields.extend([(f, 8), (f + 8, 8), (f + 20, 2)]);
            }
        }
        Target::Frames => {
            fields.push((0, 8));
            if b.len() >= 4 {
                fields.push((b.len() - 4, 4));
            }
            if b.len() >= 8 {
                fields.push((b.len() - 8, 4));
            }
        }
    }
    fields.retain(|&(at, width)| at + width <= b.len());
    fields
}

fn interesting_value(rng: &mut StdRng, old: u64, len: usize) -> u64 {
    match rng.random_range(0..12) {
        0 => 0,
        1 => 1,
        2 => old.wrapping_add(1),
        3 => old.wrapping_sub(1),
        4 => old.wrapping_mul(2),
        5 => u64::MAX,
        6 => u64::from(u32::MAX),
        7 => 1 << 46,
        8 => (1 << 46) + 1,
        9 => len as u64,
        10 => FRAME_RAW_BYTES,
        _ => rng.random(),
    }
}

/// Applies 1..=3 random edits; returns a short description for failure messages.
fn mutate(rng: &mut StdRng, target: Target, b: &mut Vec<u8>, others: &[Vec<u8>]) -> String {
    let mut what = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let op = rng.random_range(0..8);
        if b.is_empty() && op != 4 {
            continue;
        }
        match op {
            0 | 1 => {
                let at = rng.random_range(0..b.len());
                let bit = rng.random_range(0..8);
                b[at] ^= 1 << bit;
                what.push(format!("flip {at}.{bit}"));
            }
            2 => {
                let at = rng.random_range(0..b.len());
                let v = [0u8, 0xff, 0x7f, 0x80, 1, rng.random()][rng.random_range(0..6)];
                b[at] = v;
                what.push(format!("set {at}={v:#04x}"));
            }
            3 => {
                let to = rng.random_range(0..b.len());
                b.truncate(to);
                what.push(format!("truncate {to}"));
            }
            4 => {
                let n = rng.random_range(1..64);
                b.extend((0..n).map(|_| rng.random::<u8>()));
                what.push(format!("extend {n}"));
            }
            5 | 6 => {
                let fields = length_fields(target, b);
                if fields.is_empty() {
                    continue;
                }
                let (at, width) = fields[rng.random_range(0..fields.len())];
                let mut old = [0u8; 8];
                old[..width].copy_from_slice(&b[at..at + width]);
                let v = interesting_value(rng, u64::from_le_bytes(old), b.len());
                b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                what.push(format!("field {at}/{width}={v}"));
            }
            _ => {
                let donor = &others[rng.random_range(0..others.len())];
                if donor.is_empty() {
                    continue;
                }
                let from = rng.random_range(0..donor.len());
                let n = rng.random_range(1..=(donor.len() - from).min(64));
                let at = rng.random_range(0..b.len());
                let end = (at + n).min(b.len());
                b.splice(at..end, donor[from..from + n].iter().copied());
                what.push(format!("splice {n} at {at}"));
            }
        }
    }
    what.join(", ")
}

struct Findings {
    /// (kind of finding, how many inputs showed it, first example).
    failures: Vec<(String, u64, String)>,
    accepted: Accepted,
    inputs: u64,
}

impl Findings {
    fn run(&mut self, name: &str, target: Target, input: &[u8], how: &str) {
        self.inputs += 1;
        match catch_unwind(AssertUnwindSafe(|| check(target, input))) {
            Ok(Ok(acc)) => self.accepted.add(&acc),
            Ok(Err(e)) => self.fail(name, input, how, &e),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                self.fail(name, input, how, &format!("PANIC: {msg}"));
            }
        }
    }

    /// Keeps the first example of each kind of finding (per corpus file and message shape), so
    /// one systematic bug does not hide the others.
    fn fail(&mut self, name: &str, input: &[u8], how: &str, what: &str) {
        let class = format!(
            "{name}: {}",
            what.split(['{', '(', '[']).next().unwrap_or(what)
        );
        if let Some(seen) = self.failures.iter_mut().find(|f| f.0 == class) {
            seen.1 += 1;
            return;
        }
        let shown = &input[..input.len().min(160)];
        let example = format!(
            "[{how}] ({} bytes): {what}\n    input: {}",
            input.len(),
            hex::encode(shown)
        );
        self.failures.push((class, 1, example));
    }

    fn report(&self) -> String {
        let lines: Vec<String> = self
            .failures
            .iter()
            .map(|(class, n, example)| format!("{class} ({n} inputs)\n  e.g. {example}"))
            .collect();
        lines.join("\n")
    }
}

#[test]
fn every_single_bit_flip_and_truncation_is_rejected_or_round_trips() {
    let corpus = load_corpus();
    let mut f = Findings {
        failures: Vec::new(),
        accepted: Accepted::default(),
        inputs: 0,
    };
    for (name, target, bytes) in &corpus {
        if bytes.len() > 64 * 1024 {
            continue;
        }
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[at] ^= 1 << bit;
                f.run(name, *target, &m, &format!("flip {at}.{bit}"));
                fix_checksums(*target, &mut m);
                f.run(
                    name,
                    *target,
                    &m,
                    &format!("flip {at}.{bit} + fixed checksums"),
                );
            }
        }
        for len in 0..bytes.len() {
            f.run(name, *target, &bytes[..len], &format!("truncate {len}"));
        }
    }
    println!("exhaustive: {} inputs, accepted {:?}", f.inputs, f.accepted);
    assert!(f.failures.is_empty(), "parser findings:\n{}", f.report());
    // With checksums recomputed, many flips land in fields the parsers accept (keys, offsets):
    // if none did, the mutator would be testing nothing but the checksum.
    assert!(
        f.accepted.records > 100 && f.accepted.footers > 10,
        "mutants never got past the gates: {:?}",
        f.accepted
    );
}

#[test]
fn random_mutations_never_panic_and_accepted_bytes_round_trip() {
    let seed = std::env::var("BASIN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let iters = std::env::var("BASIN_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_ITERS_PER_FILE);
    println!("fuzz_records seed {seed} ({iters} mutants per corpus file; rerun with BASIN_FUZZ_SEED={seed})");
    let corpus = load_corpus();
    let donors: Vec<Vec<u8>> = corpus.iter().map(|c| c.2.clone()).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut f = Findings {
        failures: Vec::new(),
        accepted: Accepted::default(),
        inputs: 0,
    };
    for (name, target, bytes) in &corpus {
        for i in 0..iters {
            let mut m = bytes.clone();
            let mut how = mutate(&mut rng, *target, &mut m, &donors);
            if rng.random_bool(0.5) {
                fix_checksums(*target, &mut m);
                how.push_str(" + fixed checksums");
            }
            // Feed it to the other parsers too: bytes on disk are not labelled.
            f.run(name, *target, &m, &format!("seed {seed} #{i}: {how}"));
            let other = Target::ALL[rng.random_range(0..Target::ALL.len())];
            f.run(
                name,
                other,
                &m,
                &format!("seed {seed} #{i} as {other:?}: {how}"),
            );
        }
    }
    println!("random: {} inputs, accepted {:?}", f.inputs, f.accepted);
    assert!(
        f.failures.is_empty(),
        "parser findings (seed {seed}):\n{}",
        f.report()
    );
    assert!(
        f.accepted.records > 100 && f.accepted.frame_tables > 10 && f.accepted.tables > 10,
        "mutants never got past the gates: {:?}",
        f.accepted
    );
}
