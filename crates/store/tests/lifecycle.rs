//! End-to-end life of a store: the paths where the format's invariants meet (rollover and
//! sealing, tombstones across rebuild and repack, streamed compressed objects, backup, import).

use std::io::{Read, Seek, SeekFrom};

use basin_store::{
    CleanOptions, Compression, InitOptions, Key, LockWait, NoProgress, PackOptions, PackSelection,
    RepackOptions, Source, Store,
};

fn content(i: u64, len: usize) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Puts loose objects of `content(seed, len(i))` for `seed = first + i`, `i` in `0..count`;
/// returns them with their keys, in order.
fn put_loose(
    store: &Store,
    first: u64,
    count: u64,
    len: impl Fn(u64) -> usize,
) -> Vec<(Key, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let c = content(first + i, len(i));
            (store.put(&c).expect("put"), c)
        })
        .collect()
}

/// `repack --all` with every other option at its default.
fn repack_all(m: &basin_store::Maintenance<'_>) -> basin_store::RepackReport {
    let opts = RepackOptions {
        all: true,
        ..RepackOptions::default()
    };
    m.repack(&opts, &NoProgress).expect("repack --all")
}

/// A repack drops the rows of deleted keys with the packs they point into: `clean` then finds
/// none left to fold.
fn assert_repack_left_no_dead_rows(m: &basin_store::Maintenance<'_>, what: &str) {
    let cleaned = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_eq!(
        cleaned.deleted_rows_folded, 0,
        "{what}: the repack left rows of deleted keys: {cleaned:?}"
    );
}

fn small_store(dir: &std::path::Path, compression: Compression) -> Store {
    let opts = InitOptions {
        pack_size_target_bytes: 64 << 10,
        compression,
        ..InitOptions::default()
    };
    Store::init(&dir.join("s"), &opts).expect("init")
}

#[test]
fn deleted_objects_stay_deleted_across_rebuild_and_repack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let objects = put_loose(&store, 0, 200, |i| 100 + (i as usize * 37) % 3000);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let report = m
        .pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    assert_eq!(report.packed, 200);
    assert_eq!(report.loose_removed, 200);
    assert!(
        store.stats().expect("stats").pack_files > 3,
        "small target must roll over into several packs"
    );

    let doomed: Vec<Key> = objects.iter().step_by(3).map(|(k, _)| *k).collect();
    let existed = m.delete(&doomed).expect("delete");
    assert_eq!(existed.len(), doomed.len());
    for k in &doomed {
        assert!(store.get(k).expect_err("deleted").is_not_found());
    }
    // Re-add one deleted object: the later record must win over the earlier tombstone.
    let (readded, readded_content) = &objects[0];
    let _ = m.write_packed(
        &mut std::iter::once(Ok(Source::Bytes(readded_content.clone()))),
        &PackOptions::default(),
        &NoProgress,
    );

    let check = |store: &Store, when: &str| {
        for (i, (k, c)) in objects.iter().enumerate() {
            let deleted = i % 3 == 0 && k != readded;
            match store.get(k) {
                Ok(v) => {
                    assert!(!deleted, "{when}: deleted object {k} came back");
                    assert_eq!(&v, c, "{when}: wrong bytes for {k}");
                }
                Err(e) => assert!(deleted && e.is_not_found(), "{when}: {k}: {e}"),
            }
        }
    };
    check(&store, "after delete");
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "after delete: {:?}", v.problems);

    let rb = m.rebuild_index(&NoProgress).expect("rebuild");
    assert!(rb.unreadable_packs.is_empty(), "{:?}", rb.unreadable_packs);
    check(&store, "after rebuild");

    let rp = m
        .repack(&RepackOptions::default(), &NoProgress)
        .expect("repack");
    assert!(
        rp.packs_rewritten > 0,
        "a third deleted must exceed the garbage threshold: {rp:?}"
    );
    check(&store, "after repack");
    m.rebuild_index(&NoProgress).expect("rebuild 2");
    check(&store, "after repack + rebuild");
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "after repack: {:?}", v.problems);
    drop(m);

    // Deleting the index file: the next open rebuilds it from the packs.
    drop(store);
    let root = dir.path().join("s");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(root.join(format!("index.sqlite{suffix}")));
    }
    let store = Store::open(&root).expect("reopen");
    check(&store, "after index loss");
}

#[test]
fn large_streamed_compressed_object_seeks_without_materialising() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::Zstd { level: 1 });
    // 3.5 MiB of compressible data crosses several 1 MiB frames.
    let raw: Vec<u8> = (0..3_500_000u32).map(|i| ((i / 7) % 251) as u8).collect();
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(raw.clone()));
    let keys = m
        .write_packed(
            &mut std::iter::once(Ok(Source::Reader {
                reader,
                size_hint: 1 << 30,
            })),
            &PackOptions::default(),
            &NoProgress,
        )
        .expect("write");
    let key = keys[0];
    let meta = store.meta(&key).expect("meta").expect("present");
    assert!(
        meta.compressed && meta.stored_size < raw.len() as u64 / 5,
        "{meta:?}"
    );
    assert_eq!(store.get(&key).expect("get"), raw);
    let mut r = store.open_object(&key).expect("open");
    for &at in &[3_400_000u64, 10, 1_048_570, 2_097_160, 0] {
        r.seek(SeekFrom::Start(at)).expect("seek");
        let mut buf = vec![0u8; 5000];
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0);
        assert_eq!(
            &buf[..n],
            &raw[at as usize..at as usize + n],
            "bytes at {at}"
        );
    }
    r.seek(SeekFrom::End(-3)).expect("seek end");
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).expect("tail");
    assert_eq!(tail, raw[raw.len() - 3..]);
    assert_eq!(
        store.read_range(&key, 1_000_000, 100_000).expect("range"),
        raw[1_000_000..1_100_000]
    );
    // Writing it again deduplicates, also when streamed.
    let again: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(raw.clone()));
    let before = store.stats().expect("stats").pack_file_bytes;
    let k2 = m
        .write_packed(
            &mut std::iter::once(Ok(Source::Reader {
                reader: again,
                size_hint: 1 << 30,
            })),
            &PackOptions::default(),
            &NoProgress,
        )
        .expect("write again");
    assert_eq!(k2[0], key);
    assert_eq!(
        store.stats().expect("stats").pack_file_bytes,
        before,
        "duplicate must leave no bytes behind"
    );
    assert!(m.validate(&NoProgress).expect("validate").is_ok());
}

#[test]
fn backup_is_a_consistent_store_and_incremental() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::Auto { level: 3 });
    let mut all = Vec::new();
    for i in 0..50 {
        let c = content(i, 2000);
        all.push((store.put(&c).expect("put"), c));
    }
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    for i in 50..60 {
        let c = content(i, 500);
        all.push((store.put(&c).expect("put"), c));
    }
    let dest = dir.path().join("backup");
    let r1 = m.backup(&dest, &NoProgress).expect("backup");
    assert_eq!(r1.loose_copied, 10);
    let r2 = m.backup(&dest, &NoProgress).expect("backup again");
    assert_eq!(
        (r2.loose_copied, r2.packs_copied),
        (0, 0),
        "second run copies nothing: {r2:?}"
    );
    let b = Store::open(&dest).expect("open backup");
    for (k, c) in &all {
        assert_eq!(&b.get(k).expect("get from backup"), c);
    }
    let bm = b.maintenance(LockWait::Fail).expect("lock backup");
    let v = bm.validate(&NoProgress).expect("validate backup");
    assert!(v.is_ok(), "{:?}", v.problems);

    // Import into a store with another hash: same contents, new keys.
    let other = Store::init(
        &dir.path().join("other"),
        &InitOptions {
            hash: basin_store::HashAlgorithm::Sha256,
            ..InitOptions::default()
        },
    )
    .expect("init other");
    let om = other.maintenance(LockWait::Fail).expect("lock other");
    let rep = om
        .import_store(&dir.path().join("s"), &NoProgress)
        .expect("import");
    assert_eq!(rep.objects, 60);
    for (_, c) in &all {
        let k = basin_store::HashAlgorithm::Sha256.hash(c);
        assert_eq!(&other.get(&k).expect("imported"), c);
    }
    let cr = m
        .clean(
            &CleanOptions {
                sandbox_grace: std::time::Duration::ZERO,
                ..CleanOptions::default()
            },
            &NoProgress,
        )
        .expect("clean");
    assert_eq!(cr.sandbox_removed, 0, "{cr:?}");
}

#[test]
fn objects_larger_than_memory_paths_go_through_pack_repack_validate_and_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let root = dir.path().join(format!("{compression}").replace(':', "-"));
        let store = Store::init(
            &root,
            &InitOptions {
                compression,
                ..InitOptions::default()
            },
        )
        .expect("init");
        // 20 MiB: above the 16 MiB in-memory limit of packing, repack and validate.
        let big: Vec<u8> = (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let key = store.put_reader(&mut &big[..]).expect("put");
        let corrupt_victim = store.put(b"small neighbour").expect("put small");
        let m = store.maintenance(LockWait::Fail).expect("lock");
        let r = m
            .pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
            .expect("pack");
        assert_eq!((r.packed, r.corrupt.len()), (2, 0), "{r:?}");
        assert_eq!(store.get(&key).expect("get"), big);
        m.delete(&[corrupt_victim]).expect("delete");
        let rp = repack_all(&m);
        assert_eq!(rp.objects_moved, 1, "{rp:?}");
        let v = m.validate(&NoProgress).expect("validate");
        assert!(v.is_ok(), "{compression}: {:?}", v.problems);
        m.rebuild_index(&NoProgress).expect("rebuild");
        let mut back = Vec::new();
        store
            .open_object(&key)
            .expect("open")
            .read_to_end(&mut back)
            .expect("read");
        assert!(back == big, "{compression}: streamed read differs");
        assert!(store
            .get(&corrupt_victim)
            .expect_err("deleted")
            .is_not_found());
    }
}

#[test]
fn an_index_file_of_garbage_is_set_aside_and_rebuilt_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("s");
    let store = Store::init(&root, &InitOptions::default()).expect("init");
    let keys: Vec<Key> = (0..20)
        .map(|i| store.put(&content(i, 300)).expect("put"))
        .collect();
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    drop(m);
    drop(store);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(root.join(format!("index.sqlite{suffix}")));
    }
    std::fs::write(root.join("index.sqlite"), vec![0x5au8; 8192]).expect("overwrite index");
    let store = Store::open(&root).expect("open must recover from a garbage index");
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(store.get(k).expect("get"), content(i as u64, 300));
    }
    let broken = std::fs::read_dir(&root)
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".broken-"))
        })
        .count();
    assert_eq!(broken, 1, "the broken index is kept aside for inspection");
}

/// Write batches publish batch packs under the index's write lock, with pack ids taken at
/// commit. A delete of an object in a batch pack newer than maintenance's open pack must kill
/// it across `rebuild_index`, and the same object put again afterwards must survive it.
#[test]
fn batch_packs_deletes_and_rebuilds_agree() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    // Maintenance's pack first (unsealed, older), then a batch pack (newer).
    let mut first = (0..5).map(|i| Ok(Source::Bytes(content(900 + i, 500))));
    m.write_packed(&mut first, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    let mut b = store.batch().expect("batch");
    let batched: Vec<(Key, Vec<u8>)> = (0..20)
        .map(|i| {
            let c = content(i, 200 + i as usize * 10);
            (b.put(&c).expect("batch put"), c)
        })
        .collect();
    let before_commit = store.stats().expect("stats").pack_files;
    assert_eq!(
        b.commit().expect("commit"),
        batched.iter().map(|(k, _)| *k).collect::<Vec<_>>()
    );
    assert_eq!(
        store.stats().expect("stats").pack_files,
        before_commit + 1,
        "one batch, one pack file"
    );
    for (k, c) in &batched {
        assert_eq!(&store.get(k).expect("get batched"), c);
    }

    // Delete from the batch pack: the tombstone lands in maintenance's pack, older than it.
    let doomed: Vec<Key> = batched.iter().step_by(2).map(|(k, _)| *k).collect();
    assert_eq!(m.delete(&doomed).expect("delete").len(), doomed.len());
    m.rebuild_index(&NoProgress).expect("rebuild");
    for (i, (k, c)) in batched.iter().enumerate() {
        if i % 2 == 0 {
            assert!(
                store.get(k).expect_err("deleted").is_not_found(),
                "object {i} came back from the batch pack after rebuild"
            );
        } else {
            assert_eq!(&store.get(k).expect("kept"), c);
        }
    }

    // Put one deleted object again, in a new batch: it lives on across rebuild.
    let (again, again_content) = &batched[0];
    let mut b = store.batch().expect("batch");
    assert_eq!(b.put(again_content).expect("put again"), *again);
    b.commit().expect("commit");
    m.rebuild_index(&NoProgress).expect("rebuild");
    assert_eq!(&store.get(again).expect("re-added"), again_content);
    assert!(m.validate(&NoProgress).expect("validate").is_ok());

    // A batch of objects the store has already publishes nothing; a mixed one only the new.
    let packs_before = store.stats().expect("stats").pack_files;
    let mut b = store.batch().expect("batch");
    for (k, c) in batched.iter().skip(1).step_by(2) {
        assert_eq!(b.put(c).expect("put known"), *k);
    }
    b.commit().expect("commit");
    assert_eq!(store.stats().expect("stats").pack_files, packs_before);

    // pack merges the batch packs into maintenance's pack: fewer files, same objects.
    let report = m
        .pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    assert!(report.packs_merged >= 2, "{report:?}");
    assert!(store.stats().expect("stats").pack_files < packs_before);
    for (i, (k, c)) in batched.iter().enumerate() {
        if i == 0 || i % 2 == 1 {
            assert_eq!(&store.get(k).expect("after merge"), c);
        } else {
            assert!(store.get(k).expect_err("deleted").is_not_found());
        }
    }
    m.rebuild_index(&NoProgress).expect("rebuild after merge");
    assert_eq!(&store.get(again).expect("re-added, merged"), again_content);
    assert!(store
        .get(&batched[2].0)
        .expect_err("deleted")
        .is_not_found());
    assert!(m.validate(&NoProgress).expect("validate").is_ok());
    assert!(
        std::fs::read_dir(store.path().join("sandbox"))
            .expect("sandbox")
            .next()
            .is_none(),
        "batches left sandbox files"
    );
}

/// The two states a crash can leave in a write batch's commit: an id reserved with no file yet
/// (killed before the rename, the sandbox file still there), and an id reserved with its pack
/// file in place but no rows (killed between the rename and the commit). Neither is visible to
/// readers; `clean` removes both, and validate is clean after.
#[test]
fn clean_removes_what_a_crashed_batch_commit_leaves() {
    use basin_store::INDEX_FILE;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let kept = store.put(b"kept").expect("put");
    let mut b = store.batch().expect("batch");
    let keys: Vec<Key> = (0..3)
        .map(|i| b.put(&content(i, 300)).expect("put"))
        .collect();
    b.commit().expect("commit");
    let packs_dir = store.path().join("packs");
    let pack_file = std::fs::read_dir(&packs_dir)
        .expect("packs")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "pack"))
        .expect("the batch pack");
    let id: i64 = pack_file
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("pack id");
    // Between the rename and the commit: the row is still the reservation, no object rows.
    let db = rusqlite::Connection::open(store.path().join(INDEX_FILE)).expect("open index");
    db.execute_batch(&format!(
        "UPDATE packs SET end_bytes = 48 WHERE id = {id}; DELETE FROM objects WHERE pack = {id};\
         INSERT INTO packs(id, sealed, end_bytes) VALUES ({next}, 1, 48);\
         UPDATE meta SET value = '{next}' WHERE name = 'pack_id_high_water';",
        next = id + 1
    ))
    .expect("simulate the crash");
    drop(db);
    // Before the rename: a reservation (written above as id + 1) and an unlocked sandbox file.
    let leftover = store.path().join("sandbox").join("batch-0123.pack");
    std::fs::write(&leftover, b"half a batch").expect("sandbox leftover");

    let fresh = Store::open(store.path()).expect("reopen");
    for k in &keys {
        assert!(
            !fresh.has(k).expect("has"),
            "unpublished batch object visible"
        );
    }
    let m = fresh.maintenance(LockWait::Fail).expect("lock");
    let report = m
        .clean(
            &CleanOptions {
                vacuum: false,
                sandbox_grace: std::time::Duration::ZERO,
            },
            &NoProgress,
        )
        .expect("clean");
    assert_eq!(
        (
            report.stray_packs_removed,
            report.pack_rows_removed,
            report.sandbox_removed
        ),
        (1, 2, 1),
        "{report:?}"
    );
    assert!(!pack_file.exists(), "unpublished batch pack survived clean");
    assert!(!leftover.exists(), "sandbox leftover survived clean");
    assert_eq!(fresh.get(&kept).expect("get"), b"kept");
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "{:?}", v.problems);
    // Ids are never reused: the next batch takes a new one.
    drop(m);
    let mut b = fresh.batch().expect("batch");
    let again = b.put(&content(0, 300)).expect("put");
    b.commit().expect("commit");
    assert_eq!(fresh.get(&again).expect("get"), content(0, 300));
    assert!(!pack_file.exists(), "an id was reused");
}

/// Enough bytes for several spans, so `read_many` reads and verifies on a second thread while
/// the caller visits: every object once with its bytes, a damaged record as that key's error
/// (the walk goes on), missing keys as NotFound, and a visitor's error stops the walk at once.
#[test]
fn read_many_over_many_spans_reads_ahead_on_a_second_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let raw: Vec<Vec<u8>> = (0..500).map(|i| content(10_000 + i, 20_000)).collect();
    let text: Vec<Vec<u8>> = (0..100)
        .map(|i| format!("text {i} ").repeat(2000).into_bytes())
        .collect();
    let mut keys = Vec::new();
    for (set, compression) in [
        (&raw, Compression::None),
        (&text, Compression::Zstd { level: 3 }),
    ] {
        let mut it = set.iter().map(|c| Ok(Source::Bytes(c.clone())));
        let opts = PackOptions {
            compression: Some(compression),
            commit_bytes: None,
            cached_bytes: None,
        };
        keys.extend(
            m.write_packed(&mut it, &opts, &NoProgress)
                .expect("write_packed"),
        );
    }
    drop(m);
    let contents: std::collections::HashMap<Key, &Vec<u8>> =
        keys.iter().copied().zip(raw.iter().chain(&text)).collect();

    // Damage one raw record's payload in place.
    let damaged = keys[250];
    let Some(basin_store::ObjectMeta {
        location: basin_store::Location::Packed { pack, offset },
        ..
    }) = store.meta(&damaged).expect("meta")
    else {
        panic!("{damaged} is not packed");
    };
    let path = store.path().join("packs").join(format!("{pack}.pack"));
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[(offset as usize) + basin_store::format::RECORD_HEADER_BYTES + 7] ^= 0x40;
    std::fs::write(&path, &bytes).expect("write pack");

    let missing: Vec<Key> = (0..3)
        .map(|i| basin_store::HashAlgorithm::Blake3.hash(format!("absent {i}").as_bytes()))
        .collect();
    let mut request: Vec<Key> = keys.iter().rev().chain(&missing).copied().collect();
    request.extend_from_slice(&keys[..50]);
    let mut seen = std::collections::HashSet::new();
    let (mut corrupt, mut not_found) = (Vec::new(), Vec::new());
    store
        .read_many(&request, &mut |k, r| {
            assert!(seen.insert(k), "{k} visited twice");
            match r {
                Ok(b) => assert!(
                    contents.get(&k).is_some_and(|c| c.as_slice() == b),
                    "wrong bytes for {k}"
                ),
                Err(e) if e.is_corruption() => corrupt.push(k),
                Err(e) if e.is_not_found() => not_found.push(k),
                Err(e) => panic!("{k}: {e}"),
            }
            Ok(())
        })
        .expect("read_many");
    assert_eq!(seen.len(), keys.len() + missing.len(), "every key once");
    assert_eq!(corrupt, vec![damaged], "the damaged record, and only it");
    not_found.sort();
    let mut want_missing = missing.clone();
    want_missing.sort();
    assert_eq!(not_found, want_missing);

    let mut visits = 0;
    let stopped = store.read_many(&keys, &mut |_, _| {
        visits += 1;
        if visits == 100 {
            return Err(basin_store::Error::InvalidArgument("stop here".into()));
        }
        Ok(())
    });
    assert!(
        matches!(&stopped, Err(basin_store::Error::InvalidArgument(m)) if m == "stop here"),
        "got {stopped:?}"
    );
    assert_eq!(visits, 100, "no visit after the visitor's error");
}

/// Names in `loose/` (the prefix folders that exist).
fn loose_entries(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.path().join("loose"))
        .expect("read loose/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn pack_and_clean_remove_empty_prefix_folders_and_puts_make_them_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    assert_eq!(
        loose_entries(&store).len(),
        256,
        "init makes every prefix folder"
    );
    let objects = put_loose(&store, 0, 50, |i| 200 + i as usize);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    assert_eq!(
        loose_entries(&store),
        Vec::<String>::new(),
        "pack of everything leaves no empty prefix folder"
    );

    // A put after that makes its folder again; the object is loose, readable and listed.
    let fresh = content(1000, 777);
    let key = store.put(&fresh).expect("put after pack");
    assert_eq!(loose_entries(&store), vec![key.to_hex()[..2].to_string()]);
    assert_eq!(store.get(&key).expect("get"), fresh);
    assert_eq!(store.list().expect("list").len(), objects.len() + 1);

    // An empty folder made by someone else goes at the next clean; one with an object stays.
    let other = if key.to_hex().starts_with("ff") {
        "fe"
    } else {
        "ff"
    };
    std::fs::create_dir(store.path().join("loose").join(other)).expect("mkdir");
    m.clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_eq!(loose_entries(&store), vec![key.to_hex()[..2].to_string()]);
    for (k, c) in &objects {
        assert_eq!(&store.get(k).expect("get packed"), c);
    }
    let report = m.validate(&NoProgress).expect("validate");
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A delete of more keys than one bulk lookup binds (4096), with repeats, unknown keys and
/// loose copies mixed in: the bulk lookup, the sorted row removal and the loose listing must
/// agree with what a key-by-key delete would do.
#[test]
fn bulk_delete_across_lookup_chunks_matches_key_by_key_semantics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        pack_size_target_bytes: 1 << 20,
        ..InitOptions::default()
    };
    let store = Store::init(&dir.path().join("s"), &opts).expect("init");
    let n = 9000u64;
    let contents: Vec<Vec<u8>> = (0..n).map(|i| content(i, 24 + (i as usize % 40))).collect();
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let mut sources = contents.iter().map(|c| Ok(Source::Bytes(c.clone())));
    let keys = m
        .write_packed(&mut sources, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    // Some objects are loose only, some both loose and packed.
    let loose_only: Vec<Key> = (0..50)
        .map(|i| store.put(&content(100_000 + i, 64)).expect("put"))
        .collect();
    for k in keys.iter().take(30) {
        let c = &contents[keys.iter().position(|x| x == k).expect("key")];
        assert_eq!(store.put(c).expect("put"), *k);
    }
    let unknown: Vec<Key> = (0..20)
        .map(|i| store.config().hash.hash(&content(200_000 + i, 10)))
        .collect();

    // Every other packed key, all loose-only keys, unknown keys, and repeats.
    let mut doomed: Vec<Key> = keys.iter().copied().step_by(2).collect();
    doomed.extend(&loose_only);
    doomed.extend(&unknown);
    doomed.extend(keys.iter().copied().step_by(2).take(100));
    assert!(doomed.len() > 4096, "must span more than one bulk lookup");
    let existed = m.delete(&doomed).expect("delete");

    let mut expected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for k in &doomed {
        if seen.insert(*k) && !unknown.contains(k) {
            expected.push(*k);
        }
    }
    assert_eq!(existed, expected, "existing keys, input order, once each");
    let check = |store: &Store, when: &str| {
        for (i, (k, c)) in keys.iter().zip(&contents).enumerate() {
            match store.get(k) {
                Ok(v) => {
                    assert!(i % 2 == 1, "{when}: deleted object {i} readable");
                    assert_eq!(&v, c, "{when}: wrong bytes for object {i}");
                }
                Err(e) => assert!(i % 2 == 0 && e.is_not_found(), "{when}: object {i}: {e}"),
            }
        }
        for k in &loose_only {
            assert!(
                !store.has(k).expect("has"),
                "{when}: loose object {k} survived"
            );
        }
    };
    check(&store, "after delete");
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "{:?}", v.problems);
    m.rebuild_index(&NoProgress).expect("rebuild");
    check(&store, "after rebuild");
}

/// Repack copies live records in runs (neighbours in the old pack go out in one write, short
/// runs through the write buffer) over several read spans read ahead on a second thread; a
/// damaged record stops it with an error naming where, and the store stays as it was.
#[test]
fn repack_moves_runs_across_read_spans_and_stops_at_a_damaged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    // 2400 × 5000 bytes: 12 MB, many 1 MiB read spans.
    let objects: Vec<Vec<u8>> = (0..2400).map(|i| content(70_000 + i, 5000)).collect();
    let mut it = objects.iter().map(|c| Ok(Source::Bytes(c.clone())));
    let keys = m
        .write_packed(&mut it, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    // Gaps of every size: runs of one record (below the direct-write size), runs of several,
    // and a long run with no gap at all at the end.
    let doomed: Vec<Key> = (0..2000)
        .filter(|i| i % 7 == 0 || (i % 50 == 1 || i % 50 == 3))
        .map(|i| keys[i])
        .collect();
    m.delete(&doomed).expect("delete");
    let doomed_set: std::collections::HashSet<Key> = doomed.iter().copied().collect();
    let survivors: Vec<usize> = (0..keys.len())
        .filter(|i| !doomed_set.contains(&keys[*i]))
        .collect();
    let all = RepackOptions {
        all: true,
        ..RepackOptions::default()
    };
    let report = m.repack(&all, &NoProgress).expect("repack");
    assert_eq!(report.objects_moved, survivors.len() as u64);
    for &i in &survivors {
        assert_eq!(store.get(&keys[i]).expect("get"), objects[i], "object {i}");
    }
    for k in &doomed {
        assert!(
            store.get(k).is_err_and(|e| e.is_not_found()),
            "{k} came back"
        );
    }
    let clean = m.validate(&NoProgress).expect("validate");
    assert!(clean.is_ok(), "{:?}", clean.problems);

    // Damage one survivor's payload, past the first read span, then repack again.
    let victim = keys[survivors[survivors.len() - 10]];
    let Some(basin_store::ObjectMeta {
        location: basin_store::Location::Packed { pack, offset },
        ..
    }) = store.meta(&victim).expect("meta")
    else {
        panic!("{victim} is not packed");
    };
    assert!(offset > 8 << 20, "victim at {offset} is in the first span");
    let path = store.path().join("packs").join(format!("{pack}.pack"));
    let mut bytes = std::fs::read(&path).expect("read pack");
    bytes[offset as usize + basin_store::format::RECORD_HEADER_BYTES + 100] ^= 0x08;
    std::fs::write(&path, &bytes).expect("write pack");
    let err = m
        .repack(&all, &NoProgress)
        .expect_err("repack over a damaged record");
    assert!(err.is_corruption(), "{err}");
    let told = err.to_string();
    assert!(
        told.contains(&format!("pack {pack} offset {offset}")),
        "error does not say where: {told}"
    );
    // Nothing moved for good: every other object reads back, the damaged one is an error, and
    // validate names only the damaged record.
    for &i in &survivors {
        match store.get(&keys[i]) {
            Ok(b) => assert_eq!(b, objects[i], "object {i}"),
            Err(e) => assert!(keys[i] == victim && e.is_corruption(), "object {i}: {e}"),
        }
    }
    let after = m.validate(&NoProgress).expect("validate");
    let problems: Vec<String> = after.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].contains(&format!("pack {pack} offset {offset}")),
        "{problems:#?}"
    );
}

/// `n` objects numbered from `first`, where the object `at` is a repeat of the one `back` places
/// before it, for each `(at, back)` of `repeats`.
fn objects_with_repeats(first: u64, n: u64, repeats: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = (0..n)
        .map(|i| content(first + i, 100 + (i as usize % 900)))
        .collect();
    for &(at, back) in repeats {
        v[at] = v[at - back].clone();
    }
    v
}

/// The store validates and holds one record per distinct object of `objects`.
fn assert_written_once(m: &basin_store::Maintenance<'_>, objects: &[Vec<u8>]) {
    let distinct = objects
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len() as u64;
    let report = m.validate(&NoProgress).expect("validate");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(
        report.objects_checked, distinct,
        "a repeat was written twice"
    );
}

/// write_packed hashes one chunk, looks up the next and appends a third at once: a repeat of an
/// object in the same chunk, the next one or one further on is written once, keys come back in
/// input order, and the same holds when the caller is itself one of rayon's threads (where the
/// hashing must not be queued behind the caller).
#[test]
fn write_packed_writes_repeats_across_chunks_in_flight_once_even_inside_a_rayon_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    // Chunks are 512 objects: repeats 1, 511, 512, 513, 1024 and 1500 places later land in
    // the same chunk, the next one, and the one after.
    let repeats = [
        (5usize, 1usize),
        (600, 511),
        (700, 512),
        (800, 513),
        (1100, 1024),
        (1700, 1500),
    ];
    let build = |first: u64, n: u64| objects_with_repeats(first, n, &repeats);
    let first = build(90_000, 1800);
    let written_once = |objects: &[Vec<u8>]| assert_written_once(&m, objects);
    let mut it = first.iter().map(|c| Ok(Source::Bytes(c.clone())));
    let keys = m
        .write_packed(&mut it, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    assert_eq!(keys.len(), first.len());
    for (k, c) in keys.iter().zip(&first) {
        assert_eq!(*k, basin_store::HashAlgorithm::Blake3.hash(c));
        assert_eq!(&store.get(k).expect("get"), c);
    }
    written_once(&first);

    // Again from inside a one-thread pool, half of it repeating objects already stored.
    let mut second = build(95_000, 1800);
    for i in (0..1800).step_by(2) {
        second[i] = first[i].clone();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool");
    let keys2 = pool.install(|| {
        let mut it = second.iter().map(|c| Ok(Source::Bytes(c.clone())));
        m.write_packed(&mut it, &PackOptions::default(), &NoProgress)
            .expect("write_packed in a pool")
    });
    for (k, c) in keys2.iter().zip(&second) {
        assert_eq!(&store.get(k).expect("get"), c);
    }
    written_once(&first.iter().chain(&second).cloned().collect::<Vec<_>>());
}

#[test]
fn write_packed_committing_after_every_chunk_writes_repeats_once_and_keeps_every_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    // A commit after every chunk (512 objects): a chunk's lookup runs while the chunk before
    // it is appended, so it may miss that chunk's commit; repeats one and two chunks back
    // must still be written once.
    let objects = objects_with_repeats(
        70_000,
        2600,
        &[
            (520, 10),
            (900, 511),
            (1100, 512),
            (1300, 513),
            (1700, 1024),
            (2100, 1100),
            (2500, 2000),
        ],
    );
    let opts = PackOptions {
        commit_bytes: Some(1),
        ..PackOptions::default()
    };
    let mut it = objects.iter().map(|c| Ok(Source::Bytes(c.clone())));
    let keys = m
        .write_packed(&mut it, &opts, &NoProgress)
        .expect("write_packed");
    assert_eq!(keys.len(), objects.len());
    for (k, c) in keys.iter().zip(&objects) {
        assert_eq!(&store.get(k).expect("get"), c);
    }
    assert_written_once(&m, &objects);
}

/// A pack file whose pack row the index lacks, while object rows point into it, is not a stray
/// that clean may remove: its records are accounted for only by themselves. (What clean saw
/// when a write batch's row turned from reserved to published between two reads of the packs.)
#[test]
fn clean_keeps_a_pack_file_the_object_rows_point_into_even_without_its_pack_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let objects = objects_with_repeats(40_000, 300, &[]);
    let keys = {
        let m = store.maintenance(LockWait::Fail).expect("lock");
        let mut it = objects.iter().map(|c| Ok(Source::Bytes(c.clone())));
        m.write_packed(&mut it, &PackOptions::default(), &NoProgress)
            .expect("write_packed")
    };
    let db =
        rusqlite::Connection::open(store.path().join(basin_store::INDEX_FILE)).expect("open index");
    let removed = db
        .execute(
            "DELETE FROM packs WHERE id IN (SELECT pack FROM objects)",
            [],
        )
        .expect("drop the pack row");
    assert_eq!(removed, 1, "one pack holds the objects");
    drop(db);

    let fresh = Store::open(store.path()).expect("reopen");
    let m = fresh.maintenance(LockWait::Fail).expect("lock");
    let report = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_eq!(report.stray_packs_removed, 0, "{report:?}");
    drop(m);
    for (k, c) in keys.iter().zip(&objects) {
        assert_eq!(&fresh.get(k).expect("object still readable"), c);
    }
}

/// A delete marks keys gone and leaves their rows to maintenance: every read leaves them out at
/// once, a later write of the same content brings the object back whichever way it arrives,
/// and clean folds the rest. A store of format 2 (which older versions also read) deletes its
/// rows at once instead.
#[test]
fn deleted_keys_wait_in_gone_for_maintenance_and_come_back_when_written_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    // One pack: no merge of a retired pack folds gone rows before clean does.
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let objects = put_loose(&store, 1000, 60, |i| 200 + (i as usize * 53) % 2000);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    let doomed: Vec<&(Key, Vec<u8>)> = objects.iter().take(20).collect();
    let doomed_keys: Vec<Key> = doomed.iter().map(|(k, _)| *k).collect();
    assert_eq!(m.delete(&doomed_keys).expect("delete").len(), 20);
    assert_eq!(store.stats().expect("stats").packed_objects, 40);
    let listed = store.list().expect("list");
    assert_eq!(listed.len(), 40, "list must leave deleted keys out");
    let has = store.has_many(&doomed_keys).expect("has_many");
    assert!(has.iter().all(|h| !h), "has_many after delete: {has:?}");
    let mut read = 0;
    store
        .read_many(&doomed_keys, &mut |k, got| {
            match got {
                Ok(_) => read += 1,
                Err(e) => assert!(e.is_not_found(), "read_many {k}: {e}"),
            }
            Ok(())
        })
        .expect("read_many");
    assert_eq!(read, 0, "read_many returned deleted objects");

    // Back by three roads: a write batch, write_packed, and a loose put packed later.
    let mut batch = store.batch().expect("batch");
    for (k, c) in &doomed[0..3] {
        assert_eq!(batch.put(c).expect("batch put"), *k);
    }
    batch.commit().expect("batch commit");
    let direct: Vec<Source> = doomed[3..6]
        .iter()
        .map(|(_, c)| Source::Bytes(c.clone()))
        .collect();
    m.write_packed(
        &mut direct.into_iter().map(Ok),
        &PackOptions::default(),
        &NoProgress,
    )
    .expect("write_packed");
    let check = |store: &Store, when: &str, back: usize| {
        for (i, (k, c)) in objects.iter().enumerate() {
            match store.get(k) {
                Ok(v) => {
                    assert!(
                        !(back..20).contains(&i),
                        "{when}: deleted object {i} came back"
                    );
                    assert_eq!(&v, c, "{when}: wrong bytes for object {i}");
                }
                Err(e) => {
                    assert!(
                        (back..20).contains(&i) && e.is_not_found(),
                        "{when}: {i}: {e}"
                    )
                }
            }
        }
        let packed = store.stats().expect("stats").packed_objects;
        assert_eq!(packed, 40 + back as u64, "{when}");
    };
    check(&store, "after the writes", 6);
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "before clean: {:?}", v.problems);
    // No pack was dropped since the delete: every mark not undone by a write is still there.
    let cleaned = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_eq!(cleaned.deleted_rows_folded, 14, "{cleaned:?}");
    check(&store, "after clean", 6);
    let again = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean 2");
    assert_eq!(again.deleted_rows_folded, 0, "{again:?}");

    // Deleting a revived object again, and the third road back (a loose put, packed); then a
    // repack that drops the packs of the dead rows, which leaves clean nothing to fold.
    let still_gone: Vec<Key> = doomed[6..20].iter().map(|(k, _)| *k).collect();
    assert_eq!(m.delete(&still_gone).expect("delete again").len(), 0);
    assert_eq!(
        m.delete(&doomed_keys[0..1]).expect("delete revived").len(),
        1
    );
    for (k, c) in doomed[..1].iter().chain(&doomed[6..9]) {
        assert_eq!(store.put(c).expect("put again"), *k);
    }
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack again");
    check(&store, "after loose writes", 9);
    let all = RepackOptions {
        all: true,
        ..RepackOptions::default()
    };
    let repacked = m.repack(&all, &NoProgress).expect("repack");
    assert!(repacked.packs_rewritten > 0, "{repacked:?}");
    check(&store, "after repack", 9);
    assert_repack_left_no_dead_rows(&m, "repack --all");
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "after repack: {:?}", v.problems);
    m.rebuild_index(&NoProgress).expect("rebuild");
    check(&store, "after rebuild", 9);
    drop(m);

    // Format 2: the rows go with the delete, nothing waits for clean.
    let root = dir.path().join("s");
    drop(store);
    let cfg = root.join(basin_store::CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg).expect("read config");
    let v2 = text.replace(
        &format!("format_version = {}", basin_store::STORE_FORMAT_VERSION),
        "format_version = 2",
    );
    assert_ne!(v2, text, "config must carry format_version: {text}");
    std::fs::write(&cfg, v2).expect("write config");
    let store = Store::open(&root).expect("open as format 2");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let more: Vec<Key> = objects[20..30].iter().map(|(k, _)| *k).collect();
    assert_eq!(m.delete(&more).expect("delete in format 2").len(), 10);
    assert_eq!(store.stats().expect("stats").packed_objects, 39);
    let cleaned = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_eq!(cleaned.deleted_rows_folded, 0, "{cleaned:?}");
    for k in &more {
        assert!(store.get(k).expect_err("deleted").is_not_found());
    }
}

/// A connection of its own to the index file of the store at `path`, behind the store's back.
fn open_index(path: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(path.join(basin_store::INDEX_FILE)).expect("open index")
}

/// Runs `sql` on the index of the store at `path` (to make it look as an older version left it).
fn rewrite_index(path: &std::path::Path, sql: &str) {
    open_index(path).execute_batch(sql).expect(sql);
}

/// `(auto_vacuum, freelist_count, page_count)` of a store's index file.
fn index_pages(store: &Store) -> (i64, i64, i64) {
    open_index(store.path())
        .query_row(
            "SELECT auto_vacuum, freelist_count, page_count \
         FROM pragma_auto_vacuum, pragma_freelist_count, pragma_page_count",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("pragmas")
}

/// Writes `n` objects straight into packs, deletes those `doomed` picks, repacks, and runs
/// `clean` with vacuum; returns the index pages before and after the clean, and whether it
/// rewrote the index.
fn delete_and_clean(
    store: &Store,
    n: u64,
    doomed: impl Fn(usize) -> bool,
) -> ((i64, i64, i64), (i64, i64, i64), bool) {
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let mut sources = (0..n).map(|i| Ok(Source::Bytes(content(i, 40))));
    let keys = m
        .write_packed(&mut sources, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    let deleted: Vec<Key> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| doomed(*i))
        .map(|(_, k)| *k)
        .collect();
    m.delete(&deleted).expect("delete");
    // Repack drops the dead rows and empties the table of deleted keys: their pages go to the
    // free list.
    m.repack(
        &RepackOptions {
            all: true,
            ..RepackOptions::default()
        },
        &NoProgress,
    )
    .expect("repack");
    let before = index_pages(store);
    let report = m
        .clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    let after = index_pages(store);
    assert_eq!(
        report.index_pages_freed,
        (before.2 - after.2) as u64,
        "{report:?}"
    );
    for (i, k) in keys.iter().enumerate() {
        if !doomed(i) {
            assert_eq!(
                store.get(k).expect("get"),
                content(i as u64, 40),
                "object {i}"
            );
        } else {
            assert!(
                !store.has(k).expect("has"),
                "object {i} deleted, still there"
            );
        }
    }
    let v = m.validate(&NoProgress).expect("validate");
    assert!(v.is_ok(), "{:?}", v.problems);
    (before, after, report.index_rewritten)
}

#[test]
fn clean_gives_free_index_pages_back_to_the_file_system() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let ((mode, free_before, pages_before), (_, free_after, pages_after), rewritten) =
        delete_and_clean(&store, 20_000, |i| i % 10 == 0);
    assert_eq!(mode, 2, "a new index frees pages incrementally");
    assert!(!rewritten, "free pages alone made clean rewrite the index");
    let page_bytes = index_page_bytes(store.path());
    assert!(
        free_before * page_bytes > 64 << 10,
        "nothing to give back: {free_before} free pages of {page_bytes} bytes"
    );
    assert_eq!(free_after, 0, "free pages left after clean");
    assert!(
        pages_after <= pages_before - free_before,
        "{pages_before} pages with {free_before} free became {pages_after}"
    );
}

#[test]
fn clean_turns_an_index_without_auto_vacuum_into_one_that_has_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = small_store(dir.path(), Compression::None)
        .path()
        .to_path_buf();
    // An index made before stores set auto_vacuum: rewritten without it.
    rewrite_index(&path, "PRAGMA auto_vacuum=NONE; VACUUM");
    let store = Store::open(&path).expect("open");
    assert_eq!(
        index_pages(&store).0,
        0,
        "the old index kept auto_vacuum off"
    );
    let ((mode_before, free_before, _), (mode_after, free_after, _), rewritten) =
        delete_and_clean(&store, 20_000, |i| i % 10 == 0);
    assert_eq!(mode_before, 0, "opening the store changed the old index");
    assert!(
        rewritten,
        "an index without auto_vacuum gives pages back only by a rewrite"
    );
    let page_bytes = index_page_bytes(store.path());
    assert!(
        free_before * page_bytes > 64 << 10,
        "nothing to give back: {free_before} free pages of {page_bytes} bytes"
    );
    assert_eq!((mode_after, free_after), (2, 0), "clean's rewrite");
}

fn index_page_bytes(path: &std::path::Path) -> i64 {
    open_index(path)
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page_size")
}

#[test]
fn a_new_index_has_8_kib_pages_and_one_made_with_4_kib_keeps_them_through_maintenance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = small_store(dir.path(), Compression::None)
        .path()
        .to_path_buf();
    assert_eq!(index_page_bytes(&path), 8192, "a new index");
    // An index made before stores chose 8 KiB: SQLite changes the page size of a WAL file
    // only outside WAL mode.
    rewrite_index(
        &path,
        "PRAGMA journal_mode=DELETE; PRAGMA page_size=4096; VACUUM; PRAGMA journal_mode=WAL",
    );
    assert_eq!(index_page_bytes(&path), 4096, "the rewritten index");
    let store = Store::open(&path).expect("open");
    let ((mode, _, _), (_, free_after, _), _) = delete_and_clean(&store, 5_000, |i| i % 10 == 0);
    assert_eq!(
        (mode, free_after),
        (2, 0),
        "the old index's pages after clean"
    );
    drop(store);
    assert_eq!(
        index_page_bytes(&path),
        4096,
        "maintenance changed the page size"
    );
}

#[test]
fn clean_rewrites_an_index_whose_pages_deletes_left_sparse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let ((_, _, pages_before), (mode, free_after, pages_after), rewritten) =
        delete_and_clean(&store, 20_000, |i| i % 10 != 0);
    assert!(
        rewritten,
        "a tenth of the rows left on their pages, and no rewrite"
    );
    assert_eq!((mode, free_after), (2, 0));
    assert!(
        pages_after * 2 < pages_before,
        "{pages_before} pages became {pages_after}"
    );
}

#[test]
fn opening_a_store_and_reading_writes_nothing_to_the_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let key = store.put(b"one").expect("put");
    let path = store.path().to_path_buf();
    // The last connection to close copies the WAL into the file and removes it.
    drop(store);
    let wal = path.join(format!("{}-wal", basin_store::INDEX_FILE));
    let wal_bytes = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_bytes(), 0, "WAL left after every connection closed");
    let store = Store::open(&path).expect("open");
    assert_eq!(store.get(&key).expect("get"), b"one");
    store.stats().expect("stats");
    assert_eq!(wal_bytes(), 0, "opening and reading wrote to the index");
    assert_eq!(
        index_pages(&store).0,
        2,
        "a new index frees pages incrementally"
    );
}

/// Imports that write past their first `cached_bytes` straight to the device: every run of
/// direct writes starts mid-block, right after records committed and just read through this
/// store handle (their pages cached and mapped), and a record larger than a write buffer cuts
/// a run in two. Every object reads back, through this handle and a fresh one, and validate
/// finds nothing wrong.
#[test]
fn write_packed_straight_to_the_device_keeps_every_object_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let mut all: Vec<(basin_store::Key, Vec<u8>)> = Vec::new();
    for (round, cached_bytes) in [Some(0), Some(300 << 10), Some(0)].into_iter().enumerate() {
        let mut objects = objects_with_repeats(100_000 * (round as u64 + 1), 12_000, &[]);
        // Larger than a write buffer: written on the caller's thread, between direct runs.
        objects.insert(7000, content(round as u64, 3 << 20));
        let opts = PackOptions {
            commit_bytes: Some(2 << 20),
            cached_bytes,
            ..PackOptions::default()
        };
        let m = store.maintenance(LockWait::Fail).expect("lock");
        let mut it = objects.iter().map(|c| Ok(Source::Bytes(c.clone())));
        let keys = m
            .write_packed(&mut it, &opts, &NoProgress)
            .expect("write_packed");
        drop(m);
        all.extend(keys.into_iter().zip(objects));
        for (k, c) in &all {
            assert_eq!(&store.get(k).expect("get"), c, "round {round}");
        }
    }
    let fresh = Store::open(store.path()).expect("reopen");
    for (k, c) in &all {
        assert_eq!(&fresh.get(k).expect("get after reopen"), c);
    }
    let m = fresh.maintenance(LockWait::Fail).expect("lock");
    let report = m.validate(&NoProgress).expect("validate");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.objects_checked, all.len() as u64);
}

/// Names of the pack files in a store's packs/ folder.
fn pack_file_names(store: &Store) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(store.path().join("packs"))
        .expect("list packs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pack"))
        .collect()
}

/// `pack` merges small batch packs, and every batch pack when the store compresses (batches
/// store content raw); a large batch pack of a store that stores raw stays where it is, since
/// it is sealed with its table already and moving it would rewrite every byte.
#[test]
fn pack_merges_small_batch_packs_and_leaves_a_large_raw_one_where_it_is() {
    for compression in [Compression::None, Compression::Zstd { level: 1 }] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::init(
            &dir.path().join("s"),
            &InitOptions {
                compression,
                ..InitOptions::default()
            },
        )
        .expect("init");
        // 65 MiB in one batch (past the 64 MiB merge line), then a small batch.
        let big: Vec<Vec<u8>> = (0..1040).map(|i| content(i, 64 << 10)).collect();
        let small: Vec<Vec<u8>> = (5000..5010).map(|i| content(i, 1000)).collect();
        let mut keys = Vec::new();
        let mut batch_packs = Vec::new();
        for set in [&big, &small] {
            let before = pack_file_names(&store);
            let mut b = store.batch().expect("batch");
            for c in set.iter() {
                keys.push(b.put(c).expect("put"));
            }
            b.commit().expect("commit");
            let new: Vec<String> = pack_file_names(&store)
                .difference(&before)
                .cloned()
                .collect();
            assert_eq!(new.len(), 1, "one batch, one pack file: {new:?}");
            batch_packs.push(new[0].clone());
        }
        let m = store.maintenance(LockWait::Fail).expect("lock");
        let report = m
            .pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
            .expect("pack");
        let after = pack_file_names(&store);
        assert!(
            !after.contains(&batch_packs[1]),
            "{compression:?}: the small batch pack was not merged: {after:?}"
        );
        if compression == Compression::None {
            assert_eq!(report.packs_merged, 1, "{report:?}");
            assert!(
                after.contains(&batch_packs[0]),
                "the large raw batch pack was moved: {after:?}"
            );
        } else {
            assert_eq!(report.packs_merged, 2, "{compression:?}: {report:?}");
            assert!(
                !after.contains(&batch_packs[0]),
                "{compression:?}: the large batch pack was not recompressed: {after:?}"
            );
        }
        for (k, c) in keys.iter().zip(big.iter().chain(small.iter())) {
            assert_eq!(&store.get(k).expect("get"), c, "{compression:?}");
        }
        let v = m.validate(&NoProgress).expect("validate");
        assert!(v.is_ok(), "{compression:?}: {:?}", v.problems);
    }
}

/// A store handle keeps its maintenance connection between maintenance runs. When another
/// handle replaces the index file meanwhile (the index was lost and rebuilt from the packs),
/// the next maintenance run must write to the new file, not to the connection's unlinked one:
/// what it writes is then seen by every handle opened afterwards.
#[test]
fn maintenance_after_the_index_was_replaced_writes_to_the_new_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = small_store(dir.path(), Compression::None);
    let root = a.path().to_path_buf();
    let first = content(1, 3000);
    let write = |store: &Store, c: &[u8]| {
        let m = store.maintenance(LockWait::Fail).expect("maintenance");
        let mut sources = std::iter::once(Ok(Source::Bytes(c.to_vec())));
        m.write_packed(&mut sources, &PackOptions::default(), &NoProgress)
            .expect("write_packed")[0]
    };
    let first_key = write(&a, &first);
    for suffix in ["", "-wal", "-shm"] {
        let p = root.join(format!("{}{suffix}", basin_store::INDEX_FILE));
        if p.exists() {
            std::fs::remove_file(&p).expect("remove index");
        }
    }
    // Another handle finds no index and rebuilds one from the packs.
    let b = Store::open(&root).expect("open without an index");
    assert_eq!(b.get(&first_key).expect("rebuilt"), first);
    drop(b);
    let second = content(2, 3000);
    let second_key = write(&a, &second);
    let c = Store::open(&root).expect("open");
    assert_eq!(
        c.get(&second_key).expect("written after the rebuild"),
        second
    );
    assert_eq!(c.get(&first_key).expect("written before"), first);
}

/// `repack` with `small_pack_bytes_max` merges sealed packs below it (and below half the pack
/// size target) into one, when there are at least two, and leaves larger packs, a lone small
/// one, and everything when the option is off, where they are.
#[test]
fn repack_merges_small_sealed_packs_into_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        pack_size_target_bytes: 1 << 20,
        compression: Compression::None,
        ..InitOptions::default()
    };
    let store = Store::init(&dir.path().join("s"), &opts).expect("init");
    let mut written: Vec<(Key, Vec<u8>)> = Vec::new();
    fn batch_of(store: &Store, written: &mut Vec<(Key, Vec<u8>)>, count: u64, first: u64) {
        let mut b = store.batch().expect("batch");
        for i in first..first + count {
            let c = content(i, 2048);
            written.push((b.put(&c).expect("put"), c));
        }
        b.commit().expect("commit");
    }
    // Three batch packs of ~40 KiB and one of ~600 KiB, over half the 1 MiB target.
    batch_of(&store, &mut written, 20, 0);
    batch_of(&store, &mut written, 20, 100);
    batch_of(&store, &mut written, 20, 200);
    batch_of(&store, &mut written, 300, 1000);
    let pack_files = |s: &Store| s.stats().expect("stats").pack_files;
    assert_eq!(pack_files(&store), 4);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let repack = |small: Option<u64>| {
        let opts = RepackOptions {
            small_pack_bytes_max: small,
            ..RepackOptions::default()
        };
        m.repack(&opts, &NoProgress).expect("repack")
    };

    let off = repack(None);
    assert_eq!(off.packs_rewritten, 0, "{off:?}");
    let below_every_pack = repack(Some(30 << 10));
    assert_eq!(below_every_pack.packs_rewritten, 0, "{below_every_pack:?}");
    assert_eq!(pack_files(&store), 4);

    // Any larger limit is held to half the target: the three small packs, not the large one.
    let merged = repack(Some(u64::MAX));
    assert_eq!(merged.packs_rewritten, 3, "{merged:?}");
    assert_eq!(merged.objects_moved, 60, "{merged:?}");
    assert_eq!(pack_files(&store), 2);
    for (k, c) in &written {
        assert_eq!(&store.get(k).expect("after merge"), c, "{k}");
    }
    assert!(m.validate(&NoProgress).expect("validate").is_ok());

    // What is left: the large sealed pack and the unsealed one the merge wrote; then one more
    // small sealed pack, alone. Neither is worth a rewrite.
    assert_eq!(repack(Some(u64::MAX)).packs_rewritten, 0);
    drop(m);
    batch_of(&store, &mut written, 10, 5000);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let lone = m
        .repack(
            &RepackOptions {
                small_pack_bytes_max: Some(u64::MAX),
                ..RepackOptions::default()
            },
            &NoProgress,
        )
        .expect("repack");
    assert_eq!(lone.packs_rewritten, 0, "{lone:?}");
    assert_eq!(pack_files(&store), 3);
    m.rebuild_index(&NoProgress).expect("rebuild");
    for (k, c) in &written {
        assert_eq!(&store.get(k).expect("after rebuild"), c, "{k}");
    }
}

/// A repack of many packs in small commits: one pass over the index gathers the rows of several
/// commits, and each commit removes the old packs it covers. Every object reads back the same,
/// deleted ones stay deleted, and the index rebuilds from the packs alone.
#[test]
fn repack_in_small_commits_keeps_every_object_and_every_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let objects = put_loose(&store, 7000, 300, |i| 100 + (i as usize * 53) % 3000);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
        .expect("pack");
    let doomed: Vec<Key> = objects.iter().step_by(4).map(|(k, _)| *k).collect();
    assert_eq!(m.delete(&doomed).expect("delete").len(), doomed.len());
    let before = store.stats().expect("stats");
    let commit_bytes = 100 << 10;
    assert!(
        before.pack_file_bytes > 3 * commit_bytes && before.pack_files > 6,
        "the repack must take several commits: {before:?}"
    );
    let report = m
        .repack(
            &RepackOptions {
                all: true,
                commit_bytes: Some(commit_bytes),
                ..RepackOptions::default()
            },
            &NoProgress,
        )
        .expect("repack");
    assert_eq!(report.packs_rewritten, before.pack_files, "{report:?}");
    assert_eq!(report.objects_moved, 225, "{report:?}");
    let check = |store: &Store, when: &str| {
        for (i, (k, c)) in objects.iter().enumerate() {
            if i % 4 == 0 {
                assert!(
                    store.get(k).expect_err("deleted").is_not_found(),
                    "{when}: deleted object {i} came back"
                );
            } else {
                assert_eq!(&store.get(k).expect("kept"), c, "{when}: object {i}");
            }
        }
    };
    check(&store, "after repack");
    assert!(m.validate(&NoProgress).expect("validate").is_ok());
    m.rebuild_index(&NoProgress).expect("rebuild");
    check(&store, "after rebuild");
    assert!(m.validate(&NoProgress).expect("validate").is_ok());
}

/// A repack rewrites most index pages, so it gives the WAL file back at its checkpoint, but
/// never waits for a reader to do so: with one holding an old snapshot, the file stays.
#[test]
fn repack_cuts_the_wal_file_unless_a_reader_holds_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = small_store(dir.path(), Compression::None);
    let wal = store
        .path()
        .join(format!("{}-wal", basin_store::INDEX_FILE));
    let wal_bytes = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let mut sources = (0..3000u64).map(|i| Ok(Source::Bytes(content(i, 100))));
    let keys = m
        .write_packed(&mut sources, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    let all = RepackOptions {
        all: true,
        ..RepackOptions::default()
    };

    // A reader in the middle of a read transaction, begun before the repack's commit.
    let reader = open_index(store.path());
    reader.execute_batch("BEGIN").expect("begin");
    let rows: i64 = reader
        .query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 3000);
    m.repack(&all, &NoProgress).expect("repack beside a reader");
    assert!(wal_bytes() > 0, "the WAL was cut under a reader");
    reader.execute_batch("COMMIT").expect("end the read");
    drop(reader);

    m.repack(&all, &NoProgress).expect("repack");
    assert_eq!(wal_bytes(), 0, "a repack with no reader left its WAL file");
    drop(m);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            store.get(k).expect("get"),
            content(i as u64, 100),
            "object {i}"
        );
    }
    let v = store
        .maintenance(LockWait::Fail)
        .expect("lock")
        .validate(&NoProgress)
        .expect("validate");
    assert!(v.is_ok(), "{:?}", v.problems);
}

/// A repack writes the rows of the records it moved into the index while it still copies
/// (staged, committed only after their bytes are synced); a pack filling up meanwhile takes a
/// transaction of its own, which rolls the staged rows back, and the commit writes them all.
/// Either way every object reads back from its new place, deletes stay, and the index
/// matches the packs.
#[test]
fn repack_staging_rows_keeps_every_object_whether_or_not_a_pack_fills_up() {
    for pack_size_target_bytes in [1 << 20, 4 << 30] {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = InitOptions {
            pack_size_target_bytes,
            ..InitOptions::default()
        };
        let store = Store::init(&dir.path().join("s"), &opts).expect("init");
        let m = store.maintenance(LockWait::Fail).expect("lock");
        let len = |i: u64| 100 + (i as usize * 37) % 200;
        let mut sources = (0..12_000u64).map(|i| Ok(Source::Bytes(content(i, len(i)))));
        let keys = m
            .write_packed(
                &mut sources,
                &PackOptions {
                    commit_bytes: Some(1 << 20),
                    ..PackOptions::default()
                },
                &NoProgress,
            )
            .expect("write_packed");
        let deleted: Vec<Key> = keys.iter().step_by(7).copied().collect();
        m.delete(&deleted).expect("delete");
        let report = repack_all(&m);
        assert_eq!(
            report.objects_moved,
            (keys.len() - deleted.len()) as u64,
            "target {pack_size_target_bytes}: {report:?}"
        );
        let check = |store: &Store| {
            for (i, k) in keys.iter().enumerate() {
                if i % 7 == 0 {
                    assert!(!store.has(k).expect("has"), "object {i} deleted, back");
                } else {
                    assert_eq!(
                        store.get(k).expect("get"),
                        content(i as u64, len(i as u64)),
                        "object {i}, target {pack_size_target_bytes}"
                    );
                }
            }
        };
        check(&store);
        let v = m.validate(&NoProgress).expect("validate");
        assert!(v.is_ok(), "{:?}", v.problems);
        // Whether their drop was staged in a transaction that committed, or done again after
        // one was rolled back.
        assert_repack_left_no_dead_rows(&m, &format!("target {pack_size_target_bytes}"));
        m.rebuild_index(&NoProgress).expect("rebuild");
        check(&store);
        // Nothing left holding the index: a batch from another handle commits at once.
        drop(m);
        let other = Store::open(store.path()).expect("open");
        let mut batch = other.batch().expect("batch");
        let after = batch.put(b"after the repack").expect("put");
        assert_eq!(batch.commit().expect("commit"), vec![after]);
        assert_eq!(store.get(&after).expect("get"), b"after the repack");
    }
}

/// The packs an appender writes go into blocks reserved ahead of them (`FALLOC_FL_KEEP_SIZE`,
/// 16 MiB at a time): a sealed pack keeps none past its end, nor does a batch pack (written
/// without). Only the pack still open may, until it is sealed or `clean` runs.
#[test]
fn packs_keep_no_blocks_reserved_past_their_end_once_sealed_or_cleaned() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        pack_size_target_bytes: 24 << 20,
        ..InitOptions::default()
    };
    let store = Store::init(&dir.path().join("s"), &opts).expect("init");
    let object_bytes = 64 << 10;
    // 20 MiB through one write batch: one batch pack, published.
    let mut batch = store.batch().expect("batch");
    for i in 0..320 {
        batch.put(&content(i, object_bytes)).expect("batch put");
    }
    batch.commit().expect("batch commit");
    // 30 MiB direct to pack: the first pack fills up past 24 MiB and is sealed, the rest stays
    // in the open pack.
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let mut sources = (1000..1480).map(|i| Ok(Source::Bytes(content(i, object_bytes))));
    m.write_packed(&mut sources, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    let packs_now = || {
        let mut packs: Vec<(u64, std::fs::Metadata)> =
            std::fs::read_dir(store.path().join("packs"))
                .expect("list packs")
                .map(|e| {
                    let e = e.expect("pack entry");
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name
                        .strip_suffix(".pack")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("unexpected file {name} in packs/"));
                    (id, e.metadata().expect("stat pack"))
                })
                .collect();
        packs.sort_by_key(|(id, _)| *id);
        packs
    };
    let assert_no_reserve = |packs: &[(u64, std::fs::Metadata)], when: &str| {
        for (id, meta) in packs {
            // Allocated blocks, the extent tree's own included, against the length.
            let allocated = meta.blocks() * 512;
            assert!(
                allocated <= meta.len() + (256 << 10),
                "{when}: pack {id}: {allocated} bytes allocated for {} bytes",
                meta.len()
            );
        }
    };
    let packs = packs_now();
    assert_eq!(packs.len(), 3, "a batch pack, a sealed pack, the open pack");
    assert!(
        packs[0].1.len() > 20 << 20 && packs[1].1.len() > 24 << 20,
        "packs of the expected sizes: {:?}",
        packs.iter().map(|(_, m)| m.len()).collect::<Vec<_>>()
    );
    assert_no_reserve(&packs[..2], "after the writes");
    m.clean(&CleanOptions::default(), &NoProgress)
        .expect("clean");
    assert_no_reserve(&packs_now(), "after clean");
    let report = m.validate(&NoProgress).expect("validate");
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// Pages of `path` the page cache holds, through `cachestat` (Linux 6.5); `None` without it.
fn cached_pages(path: &std::path::Path) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open pack");
    let range = [0u64, 0]; // offset 0, length 0: the whole file
    let mut stat = [0u64; 5];
    // SAFETY: the kernel reads `range` and writes `stat`, both live and of its layout.
    let rc = unsafe {
        libc::syscall(
            451,
            libc::c_long::from(file.as_raw_fd()),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0 as libc::c_long,
        )
    };
    (rc == 0).then_some(stat[0])
}

/// Drops the clean cached pages of `path` in `from..from + len` (0: to the end).
fn drop_cached(path: &std::path::Path, from: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("open pack");
    file.sync_all().expect("sync pack");
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            from as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// A bulk read of packs the page cache does not hold reads them around it, and of packs it
/// holds in part, each span one way or the other: every object comes back right either way,
/// records at any offset and the last one of the pack included, and the pages read around the
/// cache are not left in it.
#[test]
fn read_many_reads_what_the_page_cache_lacks_around_it_and_returns_the_same_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    // 12 MiB of objects of odd sizes (records start anywhere in their blocks), one zstd'd.
    let objects: Vec<Vec<u8>> = (0..3000u64)
        .map(|i| content(5000 + i, 1 + (i as usize * 4099) % 8000))
        .collect();
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let mut sources = objects.iter().map(|c| Ok(Source::Bytes(c.clone())));
    let keys = m
        .write_packed(&mut sources, &PackOptions::default(), &NoProgress)
        .expect("write_packed");
    let text: Vec<u8> = b"compressible ".repeat(4000);
    let mut sources = std::iter::once(Ok(Source::Bytes(text.clone())));
    let opts = PackOptions {
        compression: Some(Compression::Zstd { level: 3 }),
        ..PackOptions::default()
    };
    let text_key = m
        .write_packed(&mut sources, &opts, &NoProgress)
        .expect("write_packed")[0];
    drop(m);
    let pack = std::fs::read_dir(store.path().join("packs"))
        .expect("list packs")
        .map(|e| e.expect("entry").path())
        .next()
        .expect("a pack");
    let pack_bytes = std::fs::metadata(&pack).expect("stat").len();
    let mut wanted: Vec<Key> = keys.clone();
    wanted.push(text_key);
    wanted.reverse();
    let check = |what: &str| {
        let mut seen = 0usize;
        store
            .read_many(&wanted, &mut |k, r| {
                let bytes = r.expect("read_many item");
                let want = if k == text_key {
                    &text
                } else {
                    &objects[keys.iter().position(|x| *x == k).expect("a written key")]
                };
                assert!(bytes == want.as_slice(), "{what}: wrong bytes for {k}");
                seen += 1;
                Ok(())
            })
            .expect("read_many");
        assert_eq!(seen, wanted.len(), "{what}: objects visited");
    };

    drop_cached(&pack, 0, 0);
    let before = cached_pages(&pack);
    check("nothing cached");
    match (before, cached_pages(&pack)) {
        (Some(before), Some(after)) => assert!(
            after <= before + 2,
            "the read left {after} pages of the pack cached (before: {before})"
        ),
        _ => println!("no cachestat on this kernel: spans were read through the page cache"),
    }
    // Every page cached (read whole), then the first and last thirds only.
    std::fs::read(&pack).expect("read the pack");
    check("all cached");
    drop_cached(&pack, pack_bytes / 3, pack_bytes / 3);
    check("the middle third dropped");
}
