//! Damaged stores: bytes flipped in loose files, in pack record headers, payloads and trailers,
//! in a sealed pack's footer and table, in the index; a truncated pack; a deleted index.
//!
//! For each kind of damage the same four things must hold:
//! - `validate` reports it, naming the key and/or the pack and offset;
//! - no read path (`get`, `read_many`, `open_object` read to the end, a whole-object
//!   `read_range`) ever returns wrong bytes: every read is the original content or an error;
//! - objects the damage did not touch stay readable;
//! - the documented repair (`rebuild_index`, `clean`, or deleting and re-adding a lost object)
//!   leaves a store that `validate` finds clean, with every surviving object correct.
//!
//! Partial `read_range` reads of a damaged uncompressed payload are deliberately not checked
//! here: a range read cannot verify a checksum over bytes it does not read.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;

use basin_store::format::{FOOTER_BYTES, RECORD_HEADER_BYTES};
use basin_store::*;
use common::*;

struct Fixture {
    t: TestStore,
    /// Every live object and its content.
    contents: BTreeMap<Key, Vec<u8>>,
    loose: Vec<Key>,
    /// Uncompressed packed objects: these fill the sealed packs.
    raw: Vec<Key>,
    /// Compressed packed objects: these sit in the open (unsealed) pack.
    compressed: Vec<Key>,
    /// An object that was packed and then deleted: must stay deleted through every repair.
    deleted: Key,
}

/// Two or more sealed packs plus an open one, raw and compressed records, loose objects, and a
/// deletion (tombstone).
fn fixture() -> Fixture {
    let t = new_small_store();
    let s = &t.store;
    let raw: Vec<Vec<u8>> = (0..14).map(|i| random_bytes(500 + i, 600)).collect();
    let text: Vec<Vec<u8>> = (0..4)
        .map(|i| text_bytes(600 + i, 3000 + i as usize))
        .collect();
    let mut contents = BTreeMap::new();
    let raw_keys = write_packed(s, &raw, None);
    for (k, c) in raw_keys.iter().zip(&raw) {
        contents.insert(*k, c.clone());
    }
    let compressed = write_packed(s, &text, Some(Compression::Zstd { level: 3 }));
    for (k, c) in compressed.iter().zip(&text) {
        contents.insert(*k, c.clone());
    }
    let doomed = random_bytes(700, 600);
    let deleted = write_packed(s, &[doomed], None)[0];
    store_maint(s).delete(&[deleted]).expect("delete");
    let mut loose = Vec::new();
    for i in 0..3 {
        let c = random_bytes(800 + i, 400);
        let k = s.put(&c).expect("put");
        contents.insert(k, c);
        loose.push(k);
    }
    let sealed = pack_files(&t.root())
        .values()
        .filter(|p| read_pack(p).footer.is_some())
        .count();
    assert!(sealed >= 2, "fixture needs sealed packs, has {sealed}");
    assert_valid(s);
    let f = Fixture {
        t,
        contents,
        loose,
        raw: raw_keys,
        compressed,
        deleted,
    };
    let sealed_of = |k: &Key| read_pack(&f.pack_path(f.packed_at(k).0)).footer.is_some();
    assert!(
        f.raw.iter().all(sealed_of),
        "raw objects must sit in sealed packs"
    );
    assert!(
        !f.compressed.iter().any(sealed_of),
        "compressed objects must sit in the open pack"
    );
    f
}

fn store_maint(s: &Store) -> Maintenance<'_> {
    s.maintenance(LockWait::Fail).expect("maintenance lock")
}

impl Fixture {
    fn s(&self) -> &Store {
        &self.t.store
    }

    fn packed_at(&self, key: &Key) -> (u64, u64) {
        match self.s().meta(key).expect("meta").expect("exists").location {
            Location::Packed { pack, offset } => (pack, offset),
            Location::Loose => panic!("{key} is loose"),
        }
    }

    fn pack_path(&self, pack: u64) -> std::path::PathBuf {
        pack_files(&self.t.root())
            .remove(&pack)
            .unwrap_or_else(|| panic!("pack {pack} file"))
    }

    /// Keys whose record lives in `pack`.
    fn keys_in_pack(&self, pack: u64) -> Vec<Key> {
        self.contents
            .keys()
            .filter(|k| !self.loose.contains(k) && self.packed_at(k).0 == pack)
            .copied()
            .collect()
    }

    /// Reads every object every way; panics on wrong bytes. Returns the keys that read correctly
    /// every way, and those that failed some way.
    fn reads(&self) -> (BTreeSet<Key>, BTreeSet<Key>) {
        let failed = self.failed_reads();
        let bad: BTreeSet<Key> = failed.keys().copied().collect();
        let good = self
            .contents
            .keys()
            .filter(|k| !bad.contains(k))
            .copied()
            .collect();
        (good, bad)
    }

    /// Like `reads`, with which read paths failed for each object and why.
    fn failed_reads(&self) -> BTreeMap<Key, Vec<String>> {
        let s = self.s();
        let mut failed: BTreeMap<Key, Vec<String>> = BTreeMap::new();
        let mut fail = |k: &Key, why: String| failed.entry(*k).or_default().push(why);
        for (k, c) in &self.contents {
            match s.get(k) {
                Ok(b) => assert!(b == *c, "get({k}) returned wrong bytes"),
                Err(e) => fail(k, format!("get: {e}")),
            }
            match s.open_object(k) {
                Ok(mut r) => {
                    let mut b = Vec::new();
                    match r.read_to_end(&mut b) {
                        Ok(_) => assert!(b == *c, "open_object({k}) streamed wrong bytes"),
                        Err(e) => fail(k, format!("stream: {e}")),
                    }
                }
                Err(e) => fail(k, format!("open_object: {e}")),
            }
            match s.read_range(k, 0, c.len() as u64) {
                Ok(b) => assert!(b == *c, "read_range({k}, whole) returned wrong bytes"),
                Err(e) => fail(k, format!("read_range: {e}")),
            }
        }
        let keys: Vec<Key> = self.contents.keys().copied().collect();
        s.read_many(&keys, &mut |k, r| {
            match r {
                Ok(b) => assert!(
                    b == self.contents[&k].as_slice(),
                    "read_many returned wrong bytes for {k}"
                ),
                Err(e) => fail(&k, format!("read_many: {e}")),
            }
            Ok(())
        })
        .expect("read_many itself must not fail on a damaged record");
        assert!(
            !s.has(&self.deleted).expect("has"),
            "deleted object resurrected"
        );
        failed
    }

    fn problems(&self) -> Vec<Problem> {
        validate(self.s()).problems
    }

    fn rebuild(&self) -> RebuildReport {
        store_maint(self.s())
            .rebuild_index(&NoProgress)
            .expect("rebuild_index")
    }

    fn clean(&self) {
        store_maint(self.s())
            .clean(
                &CleanOptions {
                    vacuum: true,
                    sandbox_grace: std::time::Duration::ZERO,
                },
                &NoProgress,
            )
            .expect("clean");
    }

    /// The repair for lost objects: delete them, compact, write them again from a good copy.
    fn readd(&self, keys: &BTreeSet<Key>) {
        let m = store_maint(self.s());
        m.delete(&keys.iter().copied().collect::<Vec<_>>())
            .expect("delete damaged");
        m.repack(
            &RepackOptions {
                all: true,
                ..RepackOptions::default()
            },
            &NoProgress,
        )
        .expect("repack");
        let mut it = keys
            .iter()
            .map(|k| Ok(Source::Bytes(self.contents[k].clone())));
        m.write_packed(&mut it, &PackOptions::default(), &NoProgress)
            .expect("write again");
    }

    fn assert_all_good(&self, what: &str) {
        let failed = self.failed_reads();
        assert!(failed.is_empty(), "{what}: unreadable objects: {failed:#?}");
        let problems = self.problems();
        assert!(
            problems.is_empty(),
            "{what}: validate not clean:\n{}",
            lines(&problems)
        );
    }
}

fn lines(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn names_record(problems: &[Problem], key: Key, pack: u64, offset: u64) -> bool {
    problems.iter().any(|p| match p {
        Problem::RecordCorrupt {
            pack: p2,
            offset: o,
            ..
        } => (*p2, *o) == (pack, offset),
        Problem::RecordHashMismatch {
            key: k,
            pack: p2,
            offset: o,
            ..
        }
        | Problem::RowWithoutRecord {
            key: k,
            pack: p2,
            offset: o,
        }
        | Problem::RowMismatch {
            key: k,
            pack: p2,
            offset: o,
            ..
        }
        | Problem::RowPastEnd {
            key: k,
            pack: p2,
            offset: o,
        } => *k == key && (*p2, *o) == (pack, offset),
        _ => false,
    })
}

// ---------------------------------------------------------------------------------------------

#[test]
fn flipped_loose_file() {
    let f = fixture();
    let k = f.loose[1];
    let path = loose_file(f.s(), &k);
    flip_byte(&path, 17, 0x20);
    let problems = f.problems();
    assert!(
        problems.iter().any(|p| matches!(p, Problem::LooseHashMismatch { key, path: p2, .. } if *key == k && *p2 == path)),
        "validate must name {k} at {}:\n{}",
        path.display(),
        lines(&problems)
    );
    let (good, bad) = f.reads();
    assert_eq!(bad, BTreeSet::from([k]));
    assert_eq!(good.len(), f.contents.len() - 1);
    let e = f.s().get(&k).expect_err("corrupt loose object");
    assert!(e.is_corruption(), "got {e:?}");
    // Repair: a good copy written again replaces the damaged file.
    assert_eq!(f.s().put(&f.contents[&k]).expect("put"), k);
    f.assert_all_good("after re-adding");
}

/// Flips one byte at `offset_in_record(record)` of a packed object's record; checks detection,
/// containment and repair.
fn damage_record(
    key_pick: impl Fn(&Fixture) -> Key,
    offset_in_record: impl Fn(&RecordAt) -> u64,
    what: &str,
) {
    let f = fixture();
    let k = key_pick(&f);
    let (pack, offset) = f.packed_at(&k);
    let path = f.pack_path(pack);
    let layout = read_pack(&path);
    let rec = layout
        .records
        .iter()
        .find(|r| r.offset == offset)
        .expect("record at the index offset");
    assert_eq!(rec.header.key, k);
    flip_byte(&path, offset_in_record(rec), 0x04);

    let problems = f.problems();
    assert!(
        names_record(&problems, k, pack, offset),
        "{what}: validate must name {k} at pack {pack} offset {offset}:\n{}",
        lines(&problems)
    );
    let (_, bad) = f.reads();
    assert_eq!(
        bad,
        BTreeSet::from([k]),
        "{what}: exactly the damaged object must fail"
    );
    let e = f.s().get(&k).expect_err("damaged record");
    assert!(e.is_corruption(), "{what}: got {e:?}");

    // Rebuilding the index must not lose the undamaged neighbours in the same pack.
    f.rebuild();
    let (_, bad) = f.reads();
    assert!(
        bad.iter().all(|b| *b == k),
        "{what}: after rebuild_index, undamaged objects unreadable: {bad:?}"
    );
    let problems = f.problems();
    assert!(
        !problems.is_empty(),
        "{what}: rebuild_index hid the damage from validate"
    );

    f.readd(&BTreeSet::from([k]));
    f.clean();
    f.assert_all_good(&format!("{what}: after delete + repack + re-add"));
}

// Records in sealed packs (the raw objects; the sealed table lists every record).

#[test]
fn flipped_record_header_key_in_sealed_pack() {
    damage_record(|f| f.raw[2], |r| r.offset + 24 + 5, "header key");
}

#[test]
fn flipped_record_header_length_in_sealed_pack() {
    damage_record(|f| f.raw[3], |r| r.offset + 9, "header length");
}

#[test]
fn flipped_record_magic_in_sealed_pack() {
    damage_record(|f| f.raw[9], |r| r.offset + 1, "magic");
}

#[test]
fn flipped_raw_payload_in_sealed_pack() {
    damage_record(
        |f| f.raw[4],
        |r| r.payload_offset() + r.header.stored_len / 2,
        "raw payload",
    );
}

#[test]
fn flipped_trailer_in_sealed_pack() {
    damage_record(|f| f.raw[10], |r| r.trailer_offset() + 2, "raw trailer");
}

// Records in the open pack (compressed objects; no table, a rebuild scans record by record).

#[test]
fn flipped_compressed_payload_in_open_pack() {
    damage_record(
        |f| f.compressed[1],
        |r| r.payload_offset() + r.header.stored_len / 3,
        "compressed payload",
    );
}

#[test]
fn flipped_frame_table_in_open_pack() {
    damage_record(
        |f| f.compressed[2],
        |r| r.trailer_offset() - 6,
        "frame table",
    );
}

#[test]
fn flipped_trailer_in_open_pack() {
    damage_record(|f| f.compressed[0], |r| r.trailer_offset() + 1, "trailer");
}

#[test]
fn flipped_record_header_in_open_pack() {
    damage_record(|f| f.compressed[1], |r| r.offset + 24 + 7, "header key");
}

fn first_sealed_pack(f: &Fixture) -> (u64, std::path::PathBuf, PackLayout) {
    pack_files(&f.t.root())
        .into_iter()
        .map(|(id, p)| {
            let l = read_pack(&p);
            (id, p, l)
        })
        .find(|(_, _, l)| l.footer.is_some())
        .expect("a sealed pack")
}

/// Damage to a sealed pack's footer or table: no object is lost (records and the index are
/// intact); validate names the pack; rebuild_index (which falls back to scanning records) plus
/// clean gives a clean store.
fn damage_seal(at: impl Fn(&PackLayout) -> u64, what: &str) {
    let f = fixture();
    let (pack, path, layout) = first_sealed_pack(&f);
    flip_byte(&path, at(&layout), 0x10);
    let problems = f.problems();
    assert!(
        problems.iter().any(|p| matches!(p, Problem::BadFooter { pack: p2, .. } | Problem::TableMismatch { pack: p2, .. } if *p2 == pack)),
        "{what}: validate must name pack {pack}:\n{}",
        lines(&problems)
    );
    let (_, bad) = f.reads();
    assert!(
        bad.is_empty(),
        "{what}: reads must not depend on the footer: {bad:?}"
    );
    let report = f.rebuild();
    assert!(report.unreadable_packs.is_empty(), "{what}: {report:?}");
    let (_, bad) = f.reads();
    assert!(bad.is_empty(), "{what}: after rebuild_index: {bad:?}");
    f.clean();
    f.assert_all_good(&format!("{what}: after rebuild_index + clean"));
}

#[test]
fn flipped_sealed_footer() {
    damage_seal(
        |l| l.file_len - FOOTER_BYTES as u64 + 9,
        "footer entry count",
    );
}

#[test]
fn flipped_footer_magic() {
    damage_seal(|l| l.file_len - 3, "footer magic");
}

#[test]
fn flipped_sealed_table() {
    damage_seal(
        |l| l.footer.expect("sealed").1.table_offset + 40 + 3,
        "table",
    );
}

#[test]
fn truncated_sealed_pack() {
    let f = fixture();
    let (pack, path, layout) = first_sealed_pack(&f);
    // Cut in the middle of the third record: the first two survive, the rest of the pack is gone.
    let cut_record = &layout.records[2];
    let cut = cut_record.offset + 30;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(cut)
        .expect("truncate");
    let lost: BTreeSet<Key> = f
        .keys_in_pack(pack)
        .into_iter()
        .filter(|k| f.packed_at(k).1 >= cut_record.offset)
        .collect();
    assert!(!lost.is_empty());

    let problems = f.problems();
    assert!(
        problems.iter().any(|p| match p {
            Problem::PackShorterThanIndex { pack: p2, .. }
            | Problem::BadFooter { pack: p2, .. } => *p2 == pack,
            Problem::RowPastEnd { key, pack: p2, .. } => *p2 == pack && lost.contains(key),
            _ => false,
        }),
        "validate must name pack {pack}:\n{}",
        lines(&problems)
    );
    let (_, bad) = f.reads();
    assert_eq!(bad, lost, "exactly the objects past the cut must fail");
    for k in &lost {
        let e = f.s().get(k).expect_err("cut off");
        assert!(e.is_corruption() || e.is_not_found(), "got {e:?}");
    }

    let report = f.rebuild();
    assert!(report.unreadable_packs.is_empty(), "{report:?}");
    let (_, bad) = f.reads();
    assert_eq!(
        bad, lost,
        "rebuild_index must keep the records before the cut"
    );
    f.clean();
    f.readd(&lost);
    f.assert_all_good("after rebuild + clean + re-add");
}

#[test]
fn truncated_open_pack() {
    let f = fixture();
    let (last, path) = pack_files(&f.t.root())
        .into_iter()
        .next_back()
        .expect("packs");
    let layout = read_pack(&path);
    assert!(
        layout.footer.is_none(),
        "the newest pack should still be open"
    );
    // Cut into the last compressed object's record. What follows it (the deleted object and its
    // tombstone) goes too; cutting only the tombstone would rightly bring the deleted object back.
    let last_compressed = f
        .compressed
        .iter()
        .map(|k| f.packed_at(k).1)
        .max()
        .expect("compressed");
    let rec = layout
        .records
        .iter()
        .find(|r| r.offset == last_compressed)
        .expect("record");
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open")
        .set_len(rec.offset + 5)
        .expect("truncate");
    let lost: BTreeSet<Key> = f
        .keys_in_pack(last)
        .into_iter()
        .filter(|k| f.packed_at(k).1 >= rec.offset)
        .collect();
    let problems = f.problems();
    assert!(
        !problems.is_empty(),
        "a truncated pack must not validate clean"
    );
    let (_, bad) = f.reads();
    assert_eq!(bad, lost);
    f.rebuild();
    f.clean();
    f.readd(&lost);
    f.assert_all_good("after rebuild + clean + re-add");
    // The store keeps working: new objects pack into it.
    f.s().put(b"after the repair").expect("put");
    pack_all(f.s());
    assert_valid(f.s());
}

#[test]
fn index_deleted() {
    let f = fixture();
    let root = f.t.root();
    let loose = f.loose.clone();
    pack_all(f.s());
    // Close the store, delete every index file, reopen: the index comes back from the packs.
    let Fixture {
        t: TestStore { dir, store },
        contents,
        raw,
        compressed,
        deleted,
        ..
    } = f;
    drop(store);
    for suffix in ["", "-wal", "-shm"] {
        let p = root.join(format!("{INDEX_FILE}{suffix}"));
        if p.exists() {
            fs::remove_file(&p).expect("remove index");
        }
    }
    let store = Store::open(&root).expect("open without an index");
    let f = Fixture {
        t: TestStore { dir, store },
        contents,
        loose: Vec::new(),
        raw,
        compressed,
        deleted,
    };
    assert!(
        root.join(INDEX_FILE).exists(),
        "open must recreate the index"
    );
    assert_eq!(
        f.s().list().expect("list"),
        f.contents.keys().copied().collect::<Vec<_>>(),
        "objects lost or resurrected"
    );
    assert!(
        !f.s().has(&f.deleted).expect("has"),
        "a deleted object came back with the rebuilt index"
    );
    for k in &loose {
        assert!(
            matches!(
                f.s().meta(k).expect("meta").expect("exists").location,
                Location::Packed { .. }
            ),
            "{k}"
        );
    }
    f.assert_all_good("after reopening without an index");
}

#[test]
fn index_rows_pointing_at_the_wrong_record() {
    let f = fixture();
    let keys: Vec<Key> = f
        .contents
        .keys()
        .filter(|k| !f.loose.contains(k))
        .copied()
        .collect();
    let (a, b) = (keys[0], keys[1]);
    let ((pa, oa), (pb, ob)) = (f.packed_at(&a), f.packed_at(&b));
    let db = rusqlite::Connection::open(f.t.root().join(INDEX_FILE)).expect("open index");
    // a's row now points at b's record (same lengths: every object here has 600 bytes).
    db.execute(
        "UPDATE objects SET pack = ?1, offset = ?2 WHERE key = ?3",
        rusqlite::params![pb as i64, ob as i64, &a.as_bytes()[..]],
    )
    .expect("update");
    // c's row claims a different stored length.
    let c = f.compressed[0];
    db.execute(
        "UPDATE objects SET stored_len = COALESCE(stored_len, raw_len) - 1 WHERE key = ?1",
        [&c.as_bytes()[..]],
    )
    .expect("update");
    drop(db);
    let (_, bad) = f.reads();
    assert_eq!(
        bad,
        BTreeSet::from([a, c]),
        "stale rows must be errors, never another object's bytes"
    );
    let e = f.s().get(&a).expect_err("row at another record");
    assert!(
        matches!(e, Error::WrongRecord { expected, found, .. } if expected == a && found == b),
        "got {e:?}"
    );
    let problems = f.problems();
    assert!(
        names_record(&problems, a, pb, ob) || names_record(&problems, a, pa, oa),
        "row of {a}:\n{}",
        lines(&problems)
    );
    let (pc, oc) = f.packed_at(&c);
    assert!(
        names_record(&problems, c, pc, oc),
        "row of {c}:\n{}",
        lines(&problems)
    );
    f.rebuild();
    f.assert_all_good("after rebuild_index");
}

#[test]
fn index_file_bytes_flipped() {
    let f = fixture();
    // Enough rows for a multi-page index, checkpointed into the main file.
    let extra: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("small object {i}").into_bytes())
        .collect();
    let keys = write_packed(f.s(), &extra, None);
    let mut contents = f.contents.clone();
    contents.extend(keys.into_iter().zip(extra));
    f.clean();
    let root = f.t.root();
    let Fixture {
        t: TestStore { dir, store },
        loose,
        raw,
        compressed,
        deleted,
        ..
    } = f;
    drop(store);
    let index = root.join(INDEX_FILE);
    let len = fs::metadata(&index).expect("stat index").len();
    // The page size, from SQLite's file header (big-endian at offset 16; 1 means 65536).
    let header = fs::read(&index).expect("read index");
    let page_bytes = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => u64::from(n),
    };
    assert!(
        len >= 4 * page_bytes,
        "index too small to damage a data page: {len} bytes of {page_bytes}-byte pages"
    );
    // Damage bytes inside every page but the first (page 1 holds SQLite's header and schema;
    // index_header_destroyed covers that).
    // Cells fill a b-tree page from its end, so aim near the end as well as the middle.
    for page in 1..len / page_bytes {
        for at in [page_bytes / 2, page_bytes * 7 / 8, page_bytes - 6] {
            flip_byte(&index, page * page_bytes + at, 0xFF);
        }
    }
    // A store whose index is damaged either opens (then validate reports it and rebuild_index
    // repairs it) or refuses with an index error (then removing the index is the repair).
    let (store, opened_damaged) = match Store::open(&root) {
        Ok(s) => (s, true),
        Err(e) => {
            assert!(
                matches!(e, Error::Index { .. } | Error::IndexCorrupt { .. }),
                "got {e:?}"
            );
            println!("open refused the damaged index ({e}); removing it");
            fs::remove_file(&index).expect("remove index");
            (
                Store::open(&root).expect("open after removing the index"),
                false,
            )
        }
    };
    let f = Fixture {
        t: TestStore { dir, store },
        contents,
        loose,
        raw,
        compressed,
        deleted,
    };
    // Whatever SQLite now returns, no read may produce wrong bytes; and the damage shows.
    let (_, bad) = f.reads();
    let problems = f.problems();
    println!(
        "damaged index: {} objects unreadable, {} problems",
        bad.len(),
        problems.len()
    );
    assert!(
        !opened_damaged || !problems.is_empty(),
        "validate found nothing wrong with a damaged index ({} unreadable objects)",
        bad.len()
    );
    let report = f.rebuild();
    assert!(report.unreadable_packs.is_empty(), "{report:?}");
    f.assert_all_good("after rebuild_index of a damaged index");
}

#[test]
fn index_header_destroyed() {
    let f = fixture();
    pack_all(f.s());
    f.clean();
    let root = f.t.root();
    let contents = f.contents.clone();
    let Fixture {
        t: TestStore { dir: _dir, store },
        ..
    } = f;
    drop(store);
    // Overwrite SQLite's file header: the file is no longer a database at all.
    let index = root.join(INDEX_FILE);
    let mut b = fs::read(&index).expect("read index");
    b[..100].fill(0x5A);
    fs::write(&index, b).expect("write index");
    let _ = fs::remove_file(root.join(format!("{INDEX_FILE}-wal")));
    let _ = fs::remove_file(root.join(format!("{INDEX_FILE}-shm")));
    // Either open rebuilds by itself, or it fails with an index error (and the documented repair
    // — remove the index, reopen — works). It must not open into a store that lost objects.
    let s = match Store::open(&root) {
        Ok(s) => s,
        Err(e) => {
            assert!(
                matches!(e, Error::Index { .. } | Error::IndexCorrupt { .. }),
                "got {e:?}"
            );
            fs::remove_file(&index).expect("remove index");
            Store::open(&root).expect("reopen without index")
        }
    };
    assert_eq!(
        s.list().expect("list"),
        contents.keys().copied().collect::<Vec<_>>()
    );
    for (k, c) in &contents {
        assert_eq!(&s.get(k).expect("get"), c);
    }
    assert_valid(&s);
}

/// A row whose length is absurd must produce an error, not an allocation that aborts the
/// process. Run in a child process so an abort is observed instead of killing this test binary.
#[test]
fn index_row_with_huge_length_is_an_error_not_an_abort() {
    const CHILD_STORE: &str = "BASIN_CORRUPTION_CHILD_STORE";
    const CHILD_KEY: &str = "BASIN_CORRUPTION_CHILD_KEY";
    if let (Ok(root), Ok(key)) = (std::env::var(CHILD_STORE), std::env::var(CHILD_KEY)) {
        let s = Store::open(std::path::Path::new(&root)).expect("child open");
        let k: Key = key.parse().expect("key");
        assert!(
            s.get(&k).is_err(),
            "get of a row with a huge length must fail"
        );
        let streamed = s.open_object(&k).and_then(|mut r| {
            let mut b = Vec::new();
            r.read_to_end(&mut b).map_err(|e| r.explain(e))
        });
        assert!(
            streamed.is_err(),
            "streaming a row with a huge length must fail"
        );
        let mut visited = 0;
        s.read_many(&[k], &mut |_, r| {
            assert!(
                r.is_err(),
                "read_many of a row with a huge length must fail"
            );
            visited += 1;
            Ok(())
        })
        .expect("read_many");
        assert_eq!(visited, 1);
        println!("child survived");
        return;
    }
    let f = fixture();
    let k = *f
        .contents
        .keys()
        .find(|k| !f.loose.contains(k) && !f.compressed.contains(k))
        .expect("raw packed");
    let db = rusqlite::Connection::open(f.t.root().join(INDEX_FILE)).expect("open index");
    db.execute(
        "UPDATE objects SET raw_len = ?1, stored_len = NULL WHERE key = ?2",
        rusqlite::params![1i64 << 45, &k.as_bytes()[..]],
    )
    .expect("update");
    drop(db);
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "index_row_with_huge_length_is_an_error_not_an_abort",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STORE, f.t.root())
        .env(CHILD_KEY, k.to_hex())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("child survived"),
        "reading a row of 2^45 bytes killed or failed the process ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // And validate names the row.
    let problems = f.problems();
    let (pack, offset) = f.packed_at(&k);
    assert!(
        names_record(&problems, k, pack, offset),
        "{}",
        lines(&problems)
    );
    f.rebuild();
    f.assert_all_good("after rebuild_index");
}

#[test]
fn record_header_bytes_constant_matches_layout() {
    // The offsets aimed at above assume this layout (magic 4, kind, flags, key len, hash id,
    // raw 8, stored 8, key 32, header crc 4); a format change must revisit these tests.
    assert_eq!(RECORD_HEADER_BYTES, 24 + KEY_BYTES + 4);
}

#[test]
fn index_row_key_bytes_flipped() {
    let f = fixture();
    f.clean();
    let root = f.t.root();
    let Fixture {
        t: TestStore { dir, store },
        contents,
        loose,
        raw,
        compressed,
        deleted,
    } = f;
    drop(store);
    // Find one packed object's key inside the index file and damage it there.
    let index = root.join(INDEX_FILE);
    let bytes = fs::read(&index).expect("read index");
    let k = raw[5];
    let at = bytes
        .windows(KEY_BYTES)
        .position(|w| w == k.as_bytes())
        .expect("the key is stored in the index file") as u64;
    flip_byte(&index, at + 7, 0x01);
    let store = Store::open(&root).expect("an index with a damaged row still opens");
    let f = Fixture {
        t: TestStore { dir, store },
        contents,
        loose,
        raw,
        compressed,
        deleted,
    };
    let (_, bad) = f.reads();
    assert!(
        bad.iter().all(|b| *b == k),
        "only {k} may be affected: {bad:?}"
    );
    let problems = f.problems();
    assert!(
        problems.iter().any(|p| match p {
            Problem::RecordNotIndexed { key, .. } | Problem::RowWithoutRecord { key, .. } =>
                *key == k,
            Problem::IndexCheck { .. } => true,
            _ => false,
        }),
        "validate must notice {k} lost its row:\n{}",
        lines(&problems)
    );
    let report = f.rebuild();
    assert!(report.unreadable_packs.is_empty(), "{report:?}");
    f.assert_all_good("after rebuild_index");
}

/// A disk-objectstore source whose index claims an absurd size for a compressed object: the
/// import must report that object, not allocate the claimed size and abort. Child process as in
/// `index_row_with_huge_length_is_an_error_not_an_abort`.
#[test]
fn dos_source_with_absurd_size_is_reported_not_an_abort() {
    const CHILD_SOURCE: &str = "BASIN_CORRUPTION_CHILD_DOS";
    if let Ok(src) = std::env::var(CHILD_SOURCE) {
        let dst = new_small_store();
        let m = dst.store.maintenance(LockWait::Fail).expect("lock");
        let r = m.import_dos(std::path::Path::new(&src), &NoProgress);
        println!("child survived: {r:?}");
        let r = r.expect("import_dos must report, not fail, on one bad object");
        assert_eq!((r.imported, r.corrupt.len()), (1, 1), "{r:?}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dos = tmp.path().join("dos");
    let good = text_bytes(9001, 4000);
    let liar = text_bytes(9002, 4000);
    dos_container(&dos, &[(good, "zlib"), (liar.clone(), "zlib")]);
    let db = rusqlite::Connection::open(dos.join("packs.idx")).expect("db");
    db.execute(
        "UPDATE db_object SET size = ?1 WHERE hashkey = ?2",
        rusqlite::params![1i64 << 45, HashAlgorithm::Sha256.hash(&liar).to_hex()],
    )
    .expect("update");
    drop(db);
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "dos_source_with_absurd_size_is_reported_not_an_abort",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SOURCE, &dos)
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("child survived"),
        "importing a dos object that claims 2^45 bytes killed or failed the process ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Records larger than one validate round (1 MiB) but small enough to be read whole: each is
/// read into a round of its own. A byte flipped in one of them is reported at its offset, and
/// only there; the large and small neighbours before and after it check clean.
#[test]
fn flipped_payload_of_a_record_larger_than_a_validate_round() {
    let t = new_small_store();
    let s = &t.store;
    let contents: Vec<Vec<u8>> = [600usize, 1_500_000, 3_000_000, 700, 2_200_000, 900]
        .iter()
        .enumerate()
        .map(|(i, len)| random_bytes(900 + i as u64, *len))
        .collect();
    let keys = write_packed(s, &contents, None);
    assert_valid(s);
    let damaged = keys[2];
    let (pack, offset) = match s.meta(&damaged).expect("meta").expect("exists").location {
        Location::Packed { pack, offset } => (pack, offset),
        Location::Loose => panic!("{damaged} is loose"),
    };
    let path = pack_files(&t.root()).remove(&pack).expect("pack file");
    flip_byte(&path, offset + RECORD_HEADER_BYTES as u64 + 2_000_000, 0x08);
    let problems = validate(s).problems;
    assert!(
        names_record(&problems, damaged, pack, offset),
        "validate must name {damaged} at pack {pack} offset {offset}:\n{}",
        lines(&problems)
    );
    assert_eq!(
        problems.len(),
        1,
        "only the damaged record:\n{}",
        lines(&problems)
    );
    for (k, c) in keys.iter().zip(&contents) {
        if *k != damaged {
            assert_eq!(&s.get(k).expect("undamaged neighbour"), c);
        }
    }
}
