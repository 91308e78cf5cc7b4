//! The 33 behaviours that disk-objectstore's test suite pins down (shared/peers/disk-objectstore.md
//! §5), each restated in basin's terms and tested against `basin_store`'s public API.
//!
//! Mapping (dos behaviour → test here; "in our terms" notes where the peer's feature differs):
//!  1 init / not-initialised / refusals            → b01_init_open_and_refusals
//!  2 config validation (dos zlib+N → our zstd:N)  → b02_config_validation
//!  3 container id unique per init, stable         → b03_container_id_unique_and_stable
//!  4 key = hash of uncompressed content (sha1 → our blake3; sha256 kept)
//!                                                 → b04_key_is_hash_of_uncompressed_content
//!  5 loose prefix lengths 0/2/3                   → b05_loose_prefix_lengths
//!  6 stray files ignored by listing/counting      → b06_stray_files_are_ignored
//!  7 same content N times loose → 1 object        → b07_same_content_loose_is_one_object
//!  8 same content N times direct-to-pack → 1 row (dos `no_holes` option → ours always dedups)
//!                                                 → b08_same_content_direct_to_pack_is_stored_once
//!  9 object loose and packed at once              → b09_loose_and_packed_copy_coexist
//! 10 round trips loose/packed/compressed, single/bulk/streamed
//!                                                 → b10_round_trip_every_path
//! 11 bulk read: each key once, pack/offset order  → b11_read_many_visits_each_once_in_pack_order
//! 12 missing keys                                 → b12_missing_keys
//! 13 very long key lists                          → b13_very_long_key_lists
//! 14 has_many keeps input order                   → b14_has_many_and_meta_many_keep_input_order
//! 15 meta opens no files; reads leak no fds       → b15_meta_opens_no_pack_and_reads_leak_no_fds
//! 16 seekable streams (dos "loosen" on backward seek of compressed → ours seeks frames in place)
//!                                                 → b16_streams_seek_without_loosening
//! 17 sizes and totals consistent                  → b17_sizes_and_stats_add_up
//! 18 pack rollover honours the target             → b18_pack_rollover_honours_target
//! 19 open loose reader survives packing + cleanup → b19_open_loose_reader_survives_packing
//! 20 object moved loose→pack between lookups is still found (retry path)
//!                                                 → b20_reads_never_fail_while_packing_races
//! 21 packing skips a file it cannot read now (dos: Windows lock → ours: unreadable/vanished entry)
//!                                                 → b21_packing_skips_unreadable_and_vanished_loose
//! 22 packing re-hashes loose files                → b22_pack_validation_catches_corrupt_loose
//! 23 validate reports corrupt loose/packed, wrong size, overlaps
//!                                                 → b23_validate_reports_each_kind
//! 24 delete: loose + packed, only existing returned
//!                                                 → b24_delete
//! 25 clean_storage resolves duplicates/ (ours has no duplicates/ folder: POSIX rename never needs
//!    it) → clean removes sandbox leftovers, loose copies of packed objects, uncommitted tails
//!                                                 → b25_clean_removes_leftovers_but_not_live_writes
//! 26 repack reclaims holes, keeps content; compress modes (dos KEEP → our `compression: None`)
//!                                                 → b26_repack_reclaims_space_and_recompresses
//! 27 pack_loose honours every compression mode    → b27_pack_loose_compression_modes
//! 28 clean_loose_per_pack (ours: always; loose copies go right after the index commit that covers
//!    them, every 128 MiB — below that one commit, so only the end state is observable here)
//!                                                 → b28_pack_loose_removes_loose_copies
//! 29 import from another container, any hash     → b29_import_store_same_and_other_hash,
//!                                                   b29_import_dos_container
//! 30 progress callbacks balanced, totals add up   → b30_progress_is_balanced
//! 31 object writer: abort leaves nothing, corrupt copy replaced
//!                                                 → b31_writer_abort_and_replace
//! 32 4 writers + packer (threads with separate handles here; the multi-process version with
//!    kill -9 lives in crates/torture)             → b32_concurrent_writers_and_packer
//! 33 backup (dos: rsync + sqlite backup → ours: incremental, resumable `Maintenance::backup`)
//!                                                 → b33_backup_is_complete_and_incremental

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use basin_store::format::{decode_table, RECORD_OVERHEAD_BYTES};
use basin_store::*;
use common::*;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::Rng;

fn maint(store: &Store) -> Maintenance<'_> {
    store.maintenance(LockWait::Fail).expect("maintenance lock")
}

/// `write_packed` of `sources` with the default options, under a lock held for the call only.
fn write_packed_sources(store: &Store, sources: Vec<Source>) -> Result<Vec<Key>> {
    maint(store).write_packed(
        &mut sources.into_iter().map(Ok),
        &PackOptions::default(),
        &NoProgress,
    )
}

fn pack_with(store: &Store, sel: PackSelection, compression: Option<Compression>) -> PackReport {
    maint(store)
        .pack_loose(
            &sel,
            &PackOptions {
                compression,
                commit_bytes: None,
                cached_bytes: None,
            },
            &NoProgress,
        )
        .expect("pack_loose")
}

fn read_all(store: &Store, key: &Key) -> Vec<u8> {
    let mut r = store.open_object(key).expect("open_object");
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("read object stream");
    out
}

fn location(store: &Store, key: &Key) -> Location {
    store
        .meta(key)
        .expect("meta")
        .expect("object exists")
        .location
}

// ---------------------------------------------------------------------------------------------

#[test]
fn b01_init_open_and_refusals() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let absent = tmp.path().join("absent");
    let e = Store::open(&absent)
        .err()
        .expect("opening an absent folder must fail");
    assert!(matches!(e, Error::NotAStore { .. }), "got {e:?}");
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let e = Store::open(&empty)
        .err()
        .expect("opening an empty folder must fail");
    assert!(matches!(e, Error::NotAStore { .. }), "got {e:?}");

    // Init into an empty folder and into an absent one both work and lay out the container.
    for dir in [&empty, &absent] {
        let s = Store::init(dir, &InitOptions::default()).expect("init");
        for sub in ["loose", "packs", "sandbox", "locks"] {
            assert!(dir.join(sub).is_dir(), "{sub}/ missing after init");
        }
        assert!(dir.join(CONFIG_FILE).is_file(), "config missing");
        assert!(dir.join(INDEX_FILE).is_file(), "index missing");
        let k = s.put(b"x").expect("put");
        drop(s);
        assert_eq!(
            Store::open(dir).expect("reopen").get(&k).expect("get"),
            b"x"
        );
    }

    // Re-init of a store, and init into a folder holding anything, are refused untouched.
    let e = Store::init(&absent, &InitOptions::default())
        .err()
        .expect("re-init must fail");
    assert!(matches!(e, Error::NotEmpty { .. }), "got {e:?}");
    let busy = tmp.path().join("busy");
    fs::create_dir(&busy).expect("mkdir");
    fs::write(busy.join("notes.txt"), b"mine").expect("write");
    let e = Store::init(&busy, &InitOptions::default())
        .err()
        .expect("init into non-empty must fail");
    assert!(matches!(e, Error::NotEmpty { .. }), "got {e:?}");
    assert_eq!(
        files_under(&busy),
        vec![busy.join("notes.txt")],
        "a refused init must not write anything"
    );

    // A store missing one of its folders is not a store.
    fs::remove_dir_all(absent.join("loose")).expect("rm loose");
    let e = Store::open(&absent)
        .err()
        .expect("store without loose/ must not open");
    assert!(matches!(e, Error::NotAStore { .. }), "got {e:?}");

    // A store written by a newer basin says so instead of misreading it.
    let cfg = empty.join(CONFIG_FILE);
    let text = fs::read_to_string(&cfg).expect("read config");
    let newer = text.replace(
        &format!("format_version = {STORE_FORMAT_VERSION}"),
        "format_version = 999",
    );
    assert_ne!(newer, text, "config must carry format_version: {text}");
    fs::write(&cfg, newer).expect("write config");
    let e = Store::open(&empty)
        .err()
        .expect("newer format must not open");
    assert!(
        matches!(e, Error::NewerFormat { found: 999, .. }),
        "got {e:?}"
    );
}

#[test]
fn b02_config_validation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = [
        InitOptions {
            loose_prefix_len: 9,
            ..InitOptions::default()
        },
        InitOptions {
            pack_size_target_bytes: 0,
            ..InitOptions::default()
        },
    ];
    for (i, opts) in bad.iter().enumerate() {
        let dir = tmp.path().join(format!("bad{i}"));
        let e = Store::init(&dir, opts)
            .err()
            .expect("invalid options must be refused");
        assert!(matches!(e, Error::InvalidArgument(_)), "got {e:?}");
        assert!(
            !dir.join(CONFIG_FILE).exists(),
            "refused init left a config behind"
        );
    }

    assert_eq!("blake3".parse::<HashAlgorithm>(), Ok(HashAlgorithm::Blake3));
    assert_eq!("sha256".parse::<HashAlgorithm>(), Ok(HashAlgorithm::Sha256));
    for name in ["sha1", "md5", "", "blake2"] {
        assert!(
            name.parse::<HashAlgorithm>().is_err(),
            "hash '{name}' must be rejected"
        );
    }
    assert_eq!("none".parse::<Compression>(), Ok(Compression::None));
    assert_eq!(
        "zstd:3".parse::<Compression>(),
        Ok(Compression::Zstd { level: 3 })
    );
    assert_eq!(
        "zstd:22".parse::<Compression>(),
        Ok(Compression::Zstd { level: 22 })
    );
    assert!(
        matches!("auto".parse::<Compression>(), Ok(Compression::Auto { .. })),
        "auto must parse"
    );
    for name in [
        "zlib+1", "zstd:0", "zstd:23", "zstd:-1", "zstd:x", "gzip", "none:3", "", "ZSTD",
    ] {
        assert!(
            name.parse::<Compression>().is_err(),
            "compression '{name}' must be rejected"
        );
    }

    // Every setting survives the round trip through the config file.
    let opts = InitOptions {
        hash: HashAlgorithm::Sha256,
        loose_prefix_len: 3,
        pack_size_target_bytes: 12_345,
        compression: Compression::Zstd { level: 5 },
    };
    let dir = tmp.path().join("good");
    let cfg = Store::init(&dir, &opts).expect("init").config().clone();
    let again = Store::open(&dir).expect("open").config().clone();
    assert_eq!(cfg, again);
    assert_eq!(
        (
            again.hash,
            again.loose_prefix_len,
            again.pack_size_target_bytes,
            again.compression
        ),
        (
            opts.hash,
            opts.loose_prefix_len,
            opts.pack_size_target_bytes,
            opts.compression
        )
    );

    // A hand-edited config with a value we do not support is refused with the file named.
    let path = dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).expect("read config");
    fs::write(&path, text.replace("sha256", "sha1")).expect("write config");
    let e = Store::open(&dir)
        .err()
        .expect("bad hash in config must be refused");
    assert!(
        matches!(&e, Error::Config { path: p, .. } if *p == path),
        "got {e:?}"
    );
}

#[test]
fn b03_container_id_unique_and_stable() {
    let a = new_store(&InitOptions::default());
    let b = new_store(&InitOptions::default());
    let id = a.store.config().container_id.clone();
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{id}"
    );
    assert_ne!(
        id,
        b.store.config().container_id,
        "two inits gave the same container id"
    );
    let reopened = Store::open(&a.root()).expect("reopen");
    assert_eq!(
        reopened.config().container_id,
        id,
        "container id changed on reopen"
    );
    // Packs carry the id, so packs of another store are recognised as foreign.
    write_packed(&a.store, &[b"in a pack".to_vec()], None);
    let (_, path) = pack_files(&a.root()).into_iter().next().expect("a pack");
    let header = read_pack(&path).header;
    assert_eq!(hex::encode(header.container_id), id);
}

#[test]
fn b04_key_is_hash_of_uncompressed_content() {
    // Published SHA-256 of "abc".
    assert_eq!(
        HashAlgorithm::Sha256.hash(b"abc").to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    for hash in [HashAlgorithm::Blake3, HashAlgorithm::Sha256] {
        let t = new_store(&InitOptions {
            hash,
            compression: Compression::Zstd { level: 3 },
            ..small_opts()
        });
        let s = &t.store;
        let loose = text_bytes(1, 5000);
        let direct = text_bytes(2, 5000);
        let k1 = s.put(&loose).expect("put");
        assert_eq!(k1, hash.hash(&loose), "{hash}: loose key");
        let k2 = write_packed(s, std::slice::from_ref(&direct), None)[0];
        assert_eq!(k2, hash.hash(&direct), "{hash}: direct-to-pack key");
        pack_all(s);
        for (k, content) in [(k1, &loose), (k2, &direct)] {
            let m = s.meta(&k).expect("meta").expect("exists");
            assert!(
                m.compressed,
                "{hash}: store default zstd must compress text: {m:?}"
            );
            assert_eq!(m.key, k);
            assert_eq!(
                hash.hash(&s.get(&k).expect("get")),
                k,
                "{hash}: content no longer hashes to its key"
            );
            assert_eq!(&s.get(&k).expect("get"), content);
        }
        assert_eq!(s.list().expect("list"), {
            let mut v = vec![k1, k2];
            v.sort();
            v
        });
    }
}

#[test]
fn b05_loose_prefix_lengths() {
    for prefix in [0u8, 2, 3] {
        let t = new_store(&InitOptions {
            loose_prefix_len: prefix,
            ..small_opts()
        });
        let s = &t.store;
        let contents: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(i, 100 + i as usize)).collect();
        let mut keys: Vec<Key> = contents.iter().map(|c| s.put(c).expect("put")).collect();
        for k in &keys {
            let hex = k.to_hex();
            let p = prefix as usize;
            let expect = if p == 0 {
                s.path().join("loose").join(&hex)
            } else {
                s.path().join("loose").join(&hex[..p]).join(&hex[p..])
            };
            assert!(
                expect.is_file(),
                "prefix {prefix}: {} missing",
                expect.display()
            );
        }
        keys.sort();
        assert_eq!(s.list().expect("list"), keys, "prefix {prefix}");
        assert_eq!(s.stats().expect("stats").loose_objects, 5);
        pack_all(s);
        assert_eq!(
            s.list().expect("list"),
            keys,
            "prefix {prefix} after packing"
        );
        for (c, k) in contents.iter().zip(contents.iter().map(|c| key_of(s, c))) {
            assert_eq!(&s.get(&k).expect("get"), c);
        }
        assert!(
            files_under(&s.path().join("loose")).is_empty(),
            "prefix {prefix}: loose files left after packing"
        );
    }
}

#[test]
fn b06_stray_files_are_ignored() {
    for prefix in [0u8, 2] {
        let t = new_store(&InitOptions {
            loose_prefix_len: prefix,
            ..small_opts()
        });
        let s = &t.store;
        let mut keys = vec![s.put(b"one").expect("put"), s.put(b"two").expect("put")];
        keys.sort();
        let loose = s.path().join("loose");
        // Names that are not keys: junk, wrong-length prefixes, uppercase twins of a key we never
        // stored (the store writes lowercase only, so listing them would list an unreadable key).
        let ghost = absent_key(6).to_hex();
        fs::write(loose.join("README"), b"junk").expect("write");
        fs::create_dir_all(loose.join("zz")).expect("mkdir");
        fs::write(loose.join("zz").join("notakey"), b"junk").expect("write");
        if prefix == 0 {
            fs::write(loose.join(ghost.to_uppercase()), b"junk").expect("write");
            fs::write(loose.join(&ghost[..60]), b"junk").expect("write");
        } else {
            fs::create_dir_all(loose.join(ghost[..2].to_uppercase())).expect("mkdir");
            fs::write(
                loose.join(ghost[..2].to_uppercase()).join(&ghost[2..]),
                b"junk",
            )
            .expect("write");
            fs::create_dir_all(loose.join(&ghost[..2])).expect("mkdir");
            fs::write(
                loose.join(&ghost[..2]).join(ghost[2..].to_uppercase()),
                b"junk",
            )
            .expect("write");
            fs::create_dir_all(loose.join(&ghost[..3])).expect("mkdir");
            fs::write(loose.join(&ghost[..3]).join(&ghost[3..]), b"junk").expect("write");
        }
        let packs = s.path().join("packs");
        for name in ["notes.txt", "007.pack", "x.pack", "7.pack.old"] {
            fs::write(packs.join(name), b"junk").expect("write");
        }
        assert_eq!(
            s.list().expect("list"),
            keys,
            "prefix {prefix}: strays listed"
        );
        let st = s.stats().expect("stats");
        assert_eq!(
            (st.loose_objects, st.pack_files),
            (2, 0),
            "prefix {prefix}: strays counted: {st:?}"
        );
        assert!(
            !s.has(&absent_key(6)).expect("has"),
            "prefix {prefix}: a stray counts as an object"
        );
        let r = pack_all(s);
        assert_eq!(r.packed, 2, "prefix {prefix}: {r:?}");
        assert_eq!(
            s.list().expect("list"),
            keys,
            "prefix {prefix}: strays listed after packing"
        );
        assert_eq!(s.stats().expect("stats").pack_files, 1, "prefix {prefix}");
    }
}

#[test]
fn b07_same_content_loose_is_one_object() {
    let t = new_small_store();
    let s = &t.store;
    let content = random_bytes(7, 3000);
    let k = s.put(&content).expect("put");
    for _ in 0..4 {
        assert_eq!(s.put(&content).expect("put again"), k);
    }
    assert_eq!(s.put_reader(&mut &content[..]).expect("put_reader"), k);
    let mut b = s.batch().expect("batch");
    for _ in 0..3 {
        assert_eq!(b.put(&content).expect("batch put"), k);
    }
    assert_eq!(b.commit().expect("commit"), vec![k; 3]);
    assert_eq!(
        files_under(&s.path().join("loose")),
        vec![loose_file(s, &k)]
    );
    assert_eq!(s.list().expect("list"), vec![k]);
    let st = s.stats().expect("stats");
    assert_eq!((st.loose_objects, st.loose_bytes), (1, 3000), "{st:?}");
    assert!(
        files_under(&s.path().join("sandbox")).is_empty(),
        "sandbox leftovers"
    );
    assert_eq!(s.get(&k).expect("get"), content);
}

#[test]
fn b08_same_content_direct_to_pack_is_stored_once() {
    let t = new_store(&InitOptions {
        pack_size_target_bytes: 1 << 20,
        ..InitOptions::default()
    });
    let s = &t.store;
    let a = random_bytes(81, 2000);
    let b = random_bytes(82, 3000);
    let keys = write_packed(s, &[a.clone(), a.clone(), b.clone(), a.clone()], None);
    let (ka, kb) = (key_of(s, &a), key_of(s, &b));
    assert_eq!(
        keys,
        vec![ka, ka, kb, ka],
        "keys in input order, repeats included"
    );
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.packed_objects, st.packed_stored_bytes),
        (2, 5000),
        "{st:?}"
    );
    let pack_bytes = st.pack_file_bytes;

    // Again, in a later call: nothing new is written (no holes).
    assert_eq!(write_packed(s, &[b.clone(), a.clone()], None), vec![kb, ka]);
    // And through the streaming path (a large size hint makes the store stream instead of buffer).
    let m = maint(s);
    let mut it = std::iter::once(Ok(Source::Reader {
        reader: Box::new(std::io::Cursor::new(a.clone())),
        size_hint: 64 << 20,
    }));
    let streamed = m
        .write_packed(&mut it, &PackOptions::default(), &NoProgress)
        .expect("write_packed stream");
    drop(m);
    assert_eq!(streamed, vec![ka]);
    let st = s.stats().expect("stats");
    assert_eq!(
        (st.packed_objects, st.packed_stored_bytes),
        (2, 5000),
        "{st:?}"
    );
    assert_eq!(
        st.pack_file_bytes, pack_bytes,
        "duplicate writes grew the packs"
    );
    assert_valid(s);
    assert_eq!(s.get(&ka).expect("get"), a);
}

#[test]
fn b09_loose_and_packed_copy_coexist() {
    let t = new_small_store();
    let s = &t.store;
    let content = random_bytes(9, 1500);
    let k = s.put(&content).expect("put");
    pack_all(s);
    assert!(matches!(location(s, &k), Location::Packed { .. }), "packed");
    // A loose copy appears next to the packed one (a writer that raced the packer).
    let lf = loose_file(s, &k);
    fs::create_dir_all(lf.parent().expect("parent")).expect("mkdir");
    fs::write(&lf, &content).expect("write loose copy");
    assert_eq!(s.get(&k).expect("get"), content);
    assert_eq!(s.list().expect("list"), vec![k], "listed once");
    assert!(
        matches!(location(s, &k), Location::Packed { .. }),
        "readers prefer the pack"
    );
    assert_valid(s);
    let before = s.stats().expect("stats");
    let r = pack_all(s);
    assert_eq!((r.packed, r.already_packed), (0, 1), "{r:?}");
    assert!(
        !lf.exists(),
        "packing again must drop the redundant loose copy"
    );
    let after = s.stats().expect("stats");
    assert_eq!(
        (after.packed_objects, after.pack_file_bytes),
        (before.packed_objects, before.pack_file_bytes)
    );
    // Putting it again once packed writes nothing loose.
    assert_eq!(s.put(&content).expect("put"), k);
    assert!(!lf.exists(), "put of a packed object wrote a loose copy");
    assert_eq!(s.get(&k).expect("get"), content);
}

#[test]
fn b10_round_trip_every_path() {
    let contents: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"x".to_vec(),
        random_bytes(100, 100),
        text_bytes(101, 4096),
        random_bytes(102, 70_000),
        text_bytes(103, 1_300_000), // more than one compressed frame
        random_bytes(104, 300_000),
    ];
    let policies = [
        None,
        Some(Compression::None),
        Some(Compression::Zstd { level: 3 }),
        Some(Compression::Auto { level: 3 }),
    ];
    for policy in policies {
        // Loose writes three ways, then packed.
        let t = new_store(&InitOptions {
            pack_size_target_bytes: 256 << 10,
            ..InitOptions::default()
        });
        let s = &t.store;
        let mut keys = Vec::new();
        for (i, c) in contents.iter().enumerate() {
            let k = match i % 3 {
                0 => s.put(c).expect("put"),
                1 => s
                    .put_reader(&mut std::io::Cursor::new(c.clone()))
                    .expect("put_reader"),
                _ => {
                    let mut b = s.batch().expect("batch");
                    let k = b.put_reader(&mut &c[..]).expect("batch put_reader");
                    assert_eq!(b.commit().expect("commit"), vec![k]);
                    k
                }
            };
            assert_eq!(k, key_of(s, c));
            keys.push(k);
        }
        check_reads(s, &keys, &contents, &format!("{policy:?} loose"));
        pack_with(s, PackSelection::All, policy);
        check_reads(s, &keys, &contents, &format!("{policy:?} packed"));
        assert_valid(s);

        // Direct to pack, from bytes, readers and files.
        let t2 = new_store(&InitOptions {
            pack_size_target_bytes: 256 << 10,
            ..InitOptions::default()
        });
        let s2 = &t2.store;
        let file_dir = tempfile::tempdir().expect("tempdir");
        let mut sources = Vec::new();
        for (i, c) in contents.iter().enumerate() {
            sources.push(match i % 3 {
                0 => Source::Bytes(c.clone()),
                1 => Source::Reader {
                    reader: Box::new(std::io::Cursor::new(c.clone())),
                    size_hint: c.len() as u64,
                },
                _ => {
                    let p = file_dir.path().join(format!("f{i}"));
                    fs::write(&p, c).expect("write source file");
                    Source::File(p)
                }
            });
        }
        // A reader announcing a huge size takes the streaming path.
        sources.push(Source::Reader {
            reader: Box::new(std::io::Cursor::new(contents[5].clone())),
            size_hint: 1 << 40,
        });
        let m = maint(s2);
        let mut it = sources.into_iter().map(Ok);
        let got = m
            .write_packed(
                &mut it,
                &PackOptions {
                    compression: policy,
                    commit_bytes: None,
                    cached_bytes: None,
                },
                &NoProgress,
            )
            .expect("write_packed");
        drop(m);
        let mut expect = keys.clone();
        expect.push(keys[5]);
        assert_eq!(got, expect, "{policy:?}: write_packed keys");
        check_reads(s2, &keys, &contents, &format!("{policy:?} direct"));
        assert_valid(s2);
    }
}

/// A file `write_packed` cannot read fails the call with an error naming it, whether it is in
/// the first chunk (read and hashed before anything is appended) or a later one (read on the
/// pool while the chunk before is appended), and nothing of that call becomes visible.
#[test]
fn b10_write_packed_names_a_file_it_cannot_read() {
    for bad_at in [3usize, 700] {
        let t = new_small_store();
        let s = &t.store;
        let dir = tempfile::tempdir().expect("tempdir");
        // A folder passes the size check and then cannot be read as a file.
        let bad = dir.path().join("not-a-file");
        fs::create_dir(&bad).expect("mkdir");
        let good = dir.path().join("good");
        fs::write(&good, b"a readable file").expect("write");
        let contents: Vec<Vec<u8>> = (0..1000)
            .map(|i| format!("object {i} of {bad_at}").into_bytes())
            .collect();
        let mut sources: Vec<Source> = contents.iter().cloned().map(Source::Bytes).collect();
        sources.insert(1, Source::File(good.clone()));
        sources.insert(bad_at, Source::File(bad.clone()));
        let err = write_packed_sources(s, sources).expect_err("write_packed of a folder as a file");
        assert!(
            err.to_string().contains(&bad.display().to_string()),
            "file at {bad_at}: the error must name the file: {err}"
        );
        for c in contents
            .iter()
            .take(10)
            .chain([&b"a readable file".to_vec()])
        {
            assert!(
                !s.has(&key_of(s, c)).expect("has"),
                "file at {bad_at}: an object of the failed call is visible"
            );
        }
        // The store takes the same objects afterwards, whole.
        let keys = write_packed(s, &contents, None);
        check_reads(
            s,
            &keys,
            &contents,
            &format!("file at {bad_at}: after the failure"),
        );
        assert_valid(s);
    }
}

/// write_packed holds a bounded amount in memory whatever its sources say: a reader far longer
/// than its size hint is streamed whole, and objects of a megabyte go in rounds of a few dozen;
/// every key comes back in input order and every object reads back.
#[test]
fn b10_write_packed_bounds_what_it_holds_and_keeps_input_order() {
    let t = new_small_store();
    let s = &t.store;
    let seed = seed("b10-bounded");
    let mut rng = rng(seed);
    let mut contents: Vec<Vec<u8>> = (0..70)
        .map(|_| {
            let mut c = vec![0u8; (1 << 20) + rng.random_range(0..4096)];
            rng.fill(&mut c[..]);
            c
        })
        .collect();
    let mut long = vec![0u8; (17 << 20) + 5];
    rng.fill(&mut long[..]);
    contents.insert(41, long);
    let sources: Vec<Source> = contents
        .iter()
        .enumerate()
        .map(|(i, c)| match i % 2 {
            0 => Source::Bytes(c.clone()),
            // Claims ten bytes.
            _ => Source::Reader {
                reader: Box::new(std::io::Cursor::new(c.clone())),
                size_hint: 10,
            },
        })
        .collect();
    let keys = write_packed_sources(s, sources).expect("write_packed");
    let want: Vec<Key> = contents.iter().map(|c| key_of(s, c)).collect();
    assert!(keys == want, "seed {seed}: keys not in input order");
    check_reads(s, &keys, &contents, &format!("seed {seed}"));
    assert_valid(s);
}

fn check_reads(s: &Store, keys: &[Key], contents: &[Vec<u8>], what: &str) {
    for (k, c) in keys.iter().zip(contents) {
        assert!(
            s.get(k).expect("get") == *c,
            "{what}: get of {} bytes",
            c.len()
        );
        assert!(read_all(s, k) == *c, "{what}: stream of {} bytes", c.len());
        assert!(
            s.read_range(k, 0, c.len() as u64).expect("read_range") == *c,
            "{what}: range of {} bytes",
            c.len()
        );
        let m = s.meta(k).expect("meta").expect("exists");
        assert_eq!(m.size, c.len() as u64, "{what}");
    }
    let by_key: HashMap<Key, &Vec<u8>> = keys.iter().copied().zip(contents).collect();
    let mut seen = HashSet::new();
    s.read_many(keys, &mut |k, r| {
        let bytes = r.expect("read_many item");
        assert!(
            bytes == by_key[&k].as_slice(),
            "{what}: read_many content of {k}"
        );
        assert!(seen.insert(k), "{what}: {k} visited twice");
        Ok(())
    })
    .expect("read_many");
    assert_eq!(
        seen.len(),
        by_key.len(),
        "{what}: read_many visited {} of {}",
        seen.len(),
        by_key.len()
    );
}

#[test]
fn b11_read_many_visits_each_once_in_pack_order() {
    let seed = seed("b11");
    let mut rng = rng(seed);
    let t = new_small_store();
    let s = &t.store;
    let packed: Vec<Vec<u8>> = (0..40)
        .map(|i| random_bytes(1100 + i, 200 + (i as usize * 37) % 900))
        .collect();
    let packed_keys = write_packed(s, &packed, None);
    let loose: Vec<Vec<u8>> = (0..5).map(|i| random_bytes(1200 + i, 300)).collect();
    let loose_keys: Vec<Key> = loose.iter().map(|c| s.put(c).expect("put")).collect();
    let missing: Vec<Key> = (0..3).map(absent_key).collect();
    let content: HashMap<Key, Vec<u8>> = packed_keys
        .iter()
        .chain(&loose_keys)
        .copied()
        .zip(packed.iter().chain(&loose).cloned())
        .collect();
    assert!(
        pack_files(&t.root()).len() > 3,
        "the test needs several packs"
    );

    let mut request: Vec<Key> = packed_keys
        .iter()
        .chain(&loose_keys)
        .chain(&missing)
        .copied()
        .collect();
    request.extend_from_slice(&packed_keys[..5]);
    request.extend_from_slice(&missing[..1]);
    request.shuffle(&mut rng);
    let mut visits: Vec<(Key, std::result::Result<Vec<u8>, String>)> = Vec::new();
    s.read_many(&request, &mut |k, r| {
        visits.push((
            k,
            r.map(|b| b.to_vec())
                .map_err(|e| format!("{}:{e}", e.is_not_found())),
        ));
        Ok(())
    })
    .expect("read_many");

    let mut counts: HashMap<Key, usize> = HashMap::new();
    for (k, _) in &visits {
        *counts.entry(*k).or_default() += 1;
    }
    assert!(
        counts.values().all(|&n| n == 1),
        "a key was visited more than once: {counts:?}"
    );
    assert_eq!(counts.len(), content.len() + missing.len());
    for (k, r) in &visits {
        match (content.get(k), r) {
            (Some(c), Ok(b)) => assert!(b == c, "wrong content for {k}"),
            (None, Err(e)) => assert!(e.starts_with("true:"), "missing key {k} gave {e}"),
            (c, r) => panic!("{k}: present {} but got {r:?}", c.is_some()),
        }
    }
    // Packed objects come first, by (pack, offset); then the loose ones.
    let positions: Vec<Option<(u64, u64)>> = visits
        .iter()
        .filter(|(k, _)| content.contains_key(k))
        .map(|(k, _)| match location(s, k) {
            Location::Packed { pack, offset } => Some((pack, offset)),
            Location::Loose => None,
        })
        .collect();
    let first_loose = positions
        .iter()
        .position(Option::is_none)
        .unwrap_or(positions.len());
    assert!(
        positions[first_loose..].iter().all(Option::is_none),
        "packed object visited after a loose one: {positions:?}"
    );
    let packed_order: Vec<(u64, u64)> =
        positions[..first_loose].iter().flatten().copied().collect();
    assert!(
        packed_order.windows(2).all(|w| w[0] < w[1]),
        "not in pack/offset order: {packed_order:?}"
    );
    assert_eq!(packed_order.len(), packed_keys.len());
}

/// As b11 with more keys than `read_many` sorts on one core (its sorts of keys and of rows
/// run on every core from 65,536 items on): still each key once, in pack/offset order.
#[test]
fn b11_read_many_of_many_keys_visits_each_once_in_pack_order() {
    let seed = seed("b11-many");
    let mut rng = rng(seed);
    let t = new_small_store();
    let s = &t.store;
    let packed: Vec<Vec<u8>> = (0..70_000u32)
        .map(|i| {
            let mut c = i.to_le_bytes().to_vec();
            c.resize(4 + (i as usize * 7) % 40, (i % 251) as u8);
            c
        })
        .collect();
    let packed_keys = write_packed(s, &packed, None);
    let content: HashMap<Key, &Vec<u8>> = packed_keys.iter().copied().zip(&packed).collect();
    let missing: Vec<Key> = (0..3).map(absent_key).collect();
    // Every key (the index is scanned), then a few thousand of them (looked up one by one:
    // too few of the rows for a scan to pay); each with missing keys and repeats.
    let mut every: Vec<Key> = packed_keys.iter().chain(&missing).copied().collect();
    every.extend_from_slice(&packed_keys[..1000]);
    let mut few: Vec<Key> = packed_keys
        .choose_multiple(&mut rng, 4_500)
        .copied()
        .collect();
    few.extend_from_slice(&missing);
    few.extend_from_within(..100);
    for (what, mut request) in [("every key", every), ("4,500 keys", few)] {
        request.shuffle(&mut rng);
        let expected: std::collections::HashSet<Key> = request.iter().copied().collect();
        let mut visits: Vec<(Key, bool)> = Vec::new();
        s.read_many(&request, &mut |k, r| {
            let right = match (content.get(&k), r) {
                (Some(c), Ok(b)) => b == c.as_slice(),
                (None, Err(e)) => e.is_not_found(),
                _ => false,
            };
            visits.push((k, right));
            Ok(())
        })
        .expect("read_many");
        let wrong: Vec<&Key> = visits.iter().filter(|v| !v.1).map(|v| &v.0).collect();
        assert!(wrong.is_empty(), "{what}: wrong answers for {wrong:?}");
        let distinct: std::collections::HashSet<Key> = visits.iter().map(|v| v.0).collect();
        assert_eq!(
            distinct.len(),
            visits.len(),
            "{what}: a key was visited more than once"
        );
        assert!(
            distinct == expected,
            "{what}: not every key asked for was visited"
        );
        let packed_order: Vec<(u64, u64)> = visits
            .iter()
            .filter(|(k, _)| content.contains_key(k))
            .map(|(k, _)| match location(s, k) {
                Location::Packed { pack, offset } => (pack, offset),
                Location::Loose => panic!("{k} is loose"),
            })
            .collect();
        assert!(
            packed_order.windows(2).all(|w| w[0] < w[1]),
            "{what}: not in pack/offset order"
        );
    }
}

#[test]
fn b12_missing_keys() {
    let t = new_small_store();
    let s = &t.store;
    s.put(b"present").expect("put");
    write_packed(s, &[b"packed".to_vec()], None);
    let k = absent_key(12);
    let e = s.get(&k).expect_err("get of a missing key");
    assert!(e.is_not_found() && !e.is_corruption(), "got {e:?}");
    assert!(
        matches!(e, Error::NotFound { key } if key == k),
        "got {e:?}"
    );
    assert!(
        e.to_string().contains(&k.to_hex()),
        "message must name the key: {e}"
    );
    let e = s
        .open_object(&k)
        .err()
        .expect("open_object of a missing key");
    assert!(e.is_not_found(), "got {e:?}");
    let e = s
        .read_range(&k, 0, 1)
        .expect_err("read_range of a missing key");
    assert!(e.is_not_found(), "got {e:?}");
    assert_eq!(s.meta(&k).expect("meta"), None);
    assert!(!s.has(&k).expect("has"));
    assert_eq!(s.has_many(&[k, k]).expect("has_many"), vec![false, false]);
    assert_eq!(s.meta_many(&[k]).expect("meta_many"), vec![None]);
    let mut seen = Vec::new();
    s.read_many(&[k], &mut |key, r| {
        seen.push((key, r.err().map(|e| e.is_not_found())));
        Ok(())
    })
    .expect("read_many");
    assert_eq!(seen, vec![(k, Some(true))]);
    assert_eq!(maint(s).delete(&[k]).expect("delete"), Vec::<Key>::new());
}

#[test]
fn b13_very_long_key_lists() {
    let seed = seed("b13");
    let mut rng = rng(seed);
    let t = new_store(&InitOptions {
        pack_size_target_bytes: 64 << 10,
        ..InitOptions::default()
    });
    let s = &t.store;
    let packed: Vec<Vec<u8>> = (0..3000)
        .map(|i| format!("packed object {i}").into_bytes())
        .collect();
    let packed_keys = write_packed(s, &packed, None);
    let loose: Vec<Vec<u8>> = (0..500)
        .map(|i| format!("loose object {i}").into_bytes())
        .collect();
    let loose_keys: Vec<Key> = loose.iter().map(|c| s.put(c).expect("put")).collect();
    // And a write batch: a third kind of place (a batch pack).
    let mut b = s.batch().expect("batch");
    let batched: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("batched object {i}").into_bytes())
        .collect();
    for c in &batched {
        b.put(c).expect("batch put");
    }
    let batched_keys = b.commit().expect("commit");
    let known: HashSet<Key> = packed_keys
        .iter()
        .chain(&loose_keys)
        .chain(&batched_keys)
        .copied()
        .collect();
    let mut request: Vec<Key> = known.iter().copied().collect();
    request.extend((0..36_500).map(|i| absent_key(100_000 + i)));
    request.shuffle(&mut rng);
    assert!(
        request.len() > 32_766,
        "must exceed SQLite's parameter limit"
    );

    let has = s.has_many(&request).expect("has_many");
    let expect: Vec<bool> = request.iter().map(|k| known.contains(k)).collect();
    assert!(
        has == expect,
        "has_many wrong on a {}-key request",
        request.len()
    );
    let metas = s.meta_many(&request).expect("meta_many");
    for (k, m) in request.iter().zip(&metas) {
        assert_eq!(m.is_some(), known.contains(k), "meta_many {k}");
        if let Some(m) = m {
            assert_eq!(m.key, *k);
        }
    }
    let content: HashMap<Key, &Vec<u8>> = packed_keys
        .iter()
        .chain(&loose_keys)
        .chain(&batched_keys)
        .copied()
        .zip(packed.iter().chain(&loose).chain(&batched))
        .collect();
    let (mut ok, mut missing) = (0usize, 0usize);
    s.read_many(&request, &mut |k, r| {
        match r {
            Ok(b) => {
                assert!(
                    content.get(&k).is_some_and(|c| c.as_slice() == b),
                    "read_many content of {k}"
                );
                ok += 1;
            }
            Err(e) => {
                assert!(
                    e.is_not_found() && !known.contains(&k),
                    "read_many {k}: {e}"
                );
                missing += 1;
            }
        }
        Ok(())
    })
    .expect("read_many");
    assert_eq!((ok, missing), (known.len(), 36_500));
    assert_eq!(s.list().expect("list").len(), known.len());
    let r = pack_all(s);
    assert_eq!(r.packed, 500, "{r:?}");
    // The batch pack, and the retired packs of write_packed behind it, merged into one.
    assert!(r.objects_merged >= 300, "{r:?}");
    assert_eq!(
        s.has_many(&request).expect("has_many after packing"),
        expect
    );
}

#[test]
fn b14_has_many_and_meta_many_keep_input_order() {
    let t = new_small_store();
    let s = &t.store;
    let k_loose = s.put(b"loose").expect("put");
    let k_packed = write_packed(s, &[b"packed".to_vec()], None)[0];
    let (x, y) = (absent_key(140), absent_key(141));
    let request = [x, k_packed, y, k_loose, k_packed, x];
    assert_eq!(
        s.has_many(&request).expect("has_many"),
        vec![false, true, false, true, true, false]
    );
    let metas = s.meta_many(&request).expect("meta_many");
    let keys: Vec<Option<Key>> = metas.iter().map(|m| m.map(|m| m.key)).collect();
    assert_eq!(
        keys,
        vec![
            None,
            Some(k_packed),
            None,
            Some(k_loose),
            Some(k_packed),
            None
        ]
    );
    assert_eq!(metas[3].expect("loose meta").location, Location::Loose);
    assert!(
        matches!(
            metas[1].expect("packed meta").location,
            Location::Packed { .. }
        ),
        "{metas:?}"
    );
}

#[test]
fn b15_meta_opens_no_pack_and_reads_leak_no_fds() {
    let mut t = new_small_store();
    let contents: Vec<Vec<u8>> = (0..30).map(|i| random_bytes(150 + i, 700)).collect();
    let keys = write_packed(&t.store, &contents, None);
    let loose_key = t.store.put(b"loose one").expect("put");
    t.reopen();
    // With every pack file out of reach, metadata still answers: it comes from the index alone.
    let packs = t.root().join("packs");
    let moved = t.root().join("packs.away");
    fs::rename(&packs, &moved).expect("move packs away");
    let metas = t
        .store
        .meta_many(&keys)
        .expect("meta_many without pack files");
    fs::rename(&moved, &packs).expect("move packs back");
    for (m, c) in metas.iter().zip(&contents) {
        let m = m.expect("meta");
        assert_eq!(m.size, c.len() as u64);
        assert!(matches!(m.location, Location::Packed { .. }), "{m:?}");
    }

    // Reads release what they open: a leak of one descriptor per call shows as hundreds here.
    let s = &t.store;
    let warm = |s: &Store| {
        for k in keys.iter().chain([&loose_key]) {
            s.get(k).expect("get");
            read_all(s, k);
            s.read_range(k, 1, 3).expect("read_range");
        }
        s.read_many(&keys, &mut |_, r| r.map(|_| ()))
            .expect("read_many");
    };
    warm(s);
    let before = open_fds();
    for _ in 0..10 {
        warm(s);
    }
    let after = open_fds();
    assert!(
        after < before + 100,
        "open descriptors grew from {before} to {after} over 10 rounds of reads"
    );
}

#[test]
fn b16_streams_seek_without_loosening() {
    let t = new_store(&InitOptions {
        pack_size_target_bytes: 1 << 20,
        ..InitOptions::default()
    });
    let s = &t.store;
    let raw = random_bytes(160, 100_000);
    let big = text_bytes(161, 2_600_000); // three compressed frames
    let loose = random_bytes(162, 50_000);
    let k_raw = write_packed(s, std::slice::from_ref(&raw), Some(Compression::None))[0];
    let k_big = write_packed(
        s,
        std::slice::from_ref(&big),
        Some(Compression::Zstd { level: 3 }),
    )[0];
    let k_loose = s.put(&loose).expect("put");
    assert!(
        s.meta(&k_big).expect("meta").expect("exists").compressed,
        "big must be compressed"
    );

    for (k, c) in [(k_raw, &raw), (k_big, &big), (k_loose, &loose)] {
        let n = c.len() as u64;
        let mut r = s.open_object(&k).expect("open_object");
        assert_eq!(r.size(), n);
        let mut buf = vec![0u8; 1000];
        // Forward, backward across frames, relative, from the end.
        for &at in &[n / 2, 10, n - 1000, 1_048_000.min(n - 1000), 0] {
            assert_eq!(r.seek(SeekFrom::Start(at)).expect("seek"), at);
            r.read_exact(&mut buf).expect("read after seek");
            assert!(
                buf[..] == c[at as usize..at as usize + 1000],
                "{k}: bytes at {at}"
            );
        }
        assert_eq!(r.seek(SeekFrom::Current(-500)).expect("seek back"), 500);
        r.read_exact(&mut buf[..10]).expect("read");
        assert_eq!(buf[..10], c[500..510]);
        assert_eq!(r.seek(SeekFrom::End(-10)).expect("seek end"), n - 10);
        let mut tail = Vec::new();
        r.read_to_end(&mut tail).expect("read to end");
        assert_eq!(tail, c[c.len() - 10..]);
        assert_eq!(
            r.read(&mut buf).expect("read at end"),
            0,
            "read past the end must return 0"
        );
        assert!(
            r.seek(SeekFrom::Current(-(n as i64) - 1)).is_err(),
            "seek before the start must fail"
        );

        // Range reads: inside, clipped at the end, empty at the end, refused past it.
        assert_eq!(s.read_range(&k, 5, 100).expect("range"), c[5..105]);
        assert_eq!(
            s.read_range(&k, n - 3, 100).expect("clipped range"),
            c[c.len() - 3..]
        );
        assert_eq!(
            s.read_range(&k, n, 10).expect("empty range"),
            Vec::<u8>::new()
        );
        let e = s.read_range(&k, n + 1, 1).expect_err("range past the end");
        assert!(matches!(e, Error::OutOfRange { .. }), "got {e:?}");
    }
    // Nothing was materialised to serve those seeks.
    assert_eq!(
        files_under(&s.path().join("loose")),
        vec![loose_file(s, &k_loose)]
    );
    assert!(
        files_under(&s.path().join("sandbox")).is_empty(),
        "seeking left files in sandbox/"
    );
}

#[test]
fn b17_sizes_and_stats_add_up() {
    let t = new_small_store();
    let s = &t.store;
    let mut contents: Vec<Vec<u8>> = (0..10)
        .map(|i| text_bytes(170 + i, 3000 + i as usize))
        .collect();
    contents.extend((0..10).map(|i| random_bytes(180 + i, 2000 + i as usize)));
    let keys = write_packed(s, &contents, Some(Compression::Auto { level: 3 }));
    let loose: Vec<Vec<u8>> = (0..5)
        .map(|i| random_bytes(190 + i, 111 * (i as usize + 1)))
        .collect();
    for c in &loose {
        s.put(c).expect("put");
    }
    let (mut raw, mut stored) = (0u64, 0u64);
    let mut stored_by_record: HashMap<(u64, u64), u64> = HashMap::new();
    for (id, path) in pack_files(&t.root()) {
        for r in read_pack(&path).records {
            stored_by_record.insert((id, r.offset), r.header.stored_len);
        }
    }
    for (i, (k, c)) in keys.iter().zip(&contents).enumerate() {
        let m = s.meta(k).expect("meta").expect("exists");
        assert_eq!(m.size, c.len() as u64);
        assert_eq!(
            m.compressed,
            i < 10,
            "auto must compress text and only text: {m:?}"
        );
        if m.compressed {
            assert!(m.stored_size < m.size / 2, "{m:?}");
        } else {
            assert_eq!(m.stored_size, m.size);
        }
        let Location::Packed { pack, offset } = m.location else {
            panic!("not packed: {m:?}")
        };
        assert_eq!(
            stored_by_record.get(&(pack, offset)),
            Some(&m.stored_size),
            "meta disagrees with the pack"
        );
        raw += m.size;
        stored += m.stored_size;
    }
    let st = s.stats().expect("stats");
    assert_eq!(st.packed_objects, 20);
    assert_eq!(
        (st.packed_raw_bytes, st.packed_stored_bytes),
        (raw, stored),
        "{st:?}"
    );
    assert_eq!(st.loose_objects, 5);
    assert_eq!(
        st.loose_bytes,
        loose.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    let files = pack_files(&t.root());
    assert_eq!(st.pack_files, files.len() as u64);
    let on_disk: u64 = files
        .values()
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(st.pack_file_bytes, on_disk);
    assert!(st.index_bytes > 0, "{st:?}");
    assert!(
        (st.index_bytes_per_object - st.index_bytes as f64 / 20.0).abs() < 1e-6,
        "{st:?}"
    );
}

#[test]
fn b18_pack_rollover_honours_target() {
    let target = 8 << 10;
    let t = new_store(&InitOptions {
        pack_size_target_bytes: target,
        ..InitOptions::default()
    });
    let s = &t.store;
    let contents: Vec<Vec<u8>> = (0..256).map(|i| random_bytes(18_000 + i, 1024)).collect();
    let keys = write_packed(s, &contents, None);
    // The rule: a pack takes records until its records reach the target, then is sealed.
    let record = 1024 + RECORD_OVERHEAD_BYTES;
    let header = basin_store::format::PACK_HEADER_BYTES as u64;
    let per_pack = (target - header).div_ceil(record);
    let packs = pack_files(&t.root());
    assert_eq!(
        packs.len() as u64,
        256u64.div_ceil(per_pack),
        "{} packs for 256 records of {record} bytes",
        packs.len()
    );
    let last = *packs.keys().last().expect("packs");
    let mut seen = 0;
    for (id, path) in &packs {
        let layout = read_pack(path);
        let records_end = layout.records.last().map_or(header, |r| r.end());
        let before_last = layout.records.last().map_or(header, |r| r.offset);
        assert!(
            before_last < target,
            "pack {id} took a record after reaching the target"
        );
        if *id != last || records_end >= target {
            assert!(
                records_end >= target,
                "pack {id} sealed at {records_end} bytes, under the target"
            );
            let (footer_at, footer) = layout
                .footer
                .unwrap_or_else(|| panic!("full pack {id} is not sealed"));
            let b = fs::read(path).expect("read pack");
            let table = decode_table(
                &b[footer.table_offset as usize..footer_at as usize],
                &footer,
            )
            .expect("table");
            let mut expect: Vec<(Key, u64)> = layout
                .records
                .iter()
                .map(|r| (r.header.key, r.offset))
                .collect();
            expect.sort();
            assert_eq!(
                table, expect,
                "pack {id}: sealed table does not list its records"
            );
        }
        seen += layout.records.len();
    }
    assert_eq!(seen, 256);

    // An object bigger than the target gets a pack of its own.
    let big = random_bytes(18_999, 3 * target as usize);
    let k = write_packed(s, &[big.clone(), contents[0].clone()], None)[0];
    let Location::Packed { pack, .. } = location(s, &k) else {
        panic!("big object not packed")
    };
    let layout = read_pack(&pack_files(&t.root())[&pack]);
    assert_eq!(
        layout.records.len(),
        1,
        "big object shares its pack: {layout:?}"
    );
    assert_eq!(s.get(&k).expect("get"), big);
    for (k, c) in keys.iter().zip(&contents).step_by(17) {
        assert_eq!(&s.get(k).expect("get"), c);
    }
    assert_valid(s);
}

#[test]
fn b19_open_loose_reader_survives_packing() {
    let t = new_small_store();
    let s = &t.store;
    let contents: Vec<Vec<u8>> = (0..3).map(|i| random_bytes(190 + i, 200_000)).collect();
    let keys: Vec<Key> = contents.iter().map(|c| s.put(c).expect("put")).collect();
    let mut readers: Vec<ObjectReader> = keys
        .iter()
        .map(|k| s.open_object(k).expect("open"))
        .collect();
    let mut firsts = Vec::new();
    for r in &mut readers {
        let mut half = vec![0u8; 100_000];
        r.read_exact(&mut half).expect("read first half");
        firsts.push(half);
    }
    let report = pack_all(s);
    assert_eq!(report.loose_removed, 3, "{report:?}");
    assert!(
        files_under(&s.path().join("loose")).is_empty(),
        "loose copies survived packing"
    );
    for ((mut r, first), c) in readers.into_iter().zip(firsts).zip(&contents) {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest)
            .expect("finish reading an unlinked loose file");
        assert!(
            [first, rest].concat() == *c,
            "reader of an unlinked loose file returned wrong bytes"
        );
    }
    for (k, c) in keys.iter().zip(&contents) {
        assert!(
            matches!(location(s, k), Location::Packed { .. }),
            "next read must come from the pack"
        );
        assert_eq!(&read_all(s, k), c);
    }
}

/// Objects acknowledged by the writer, shared with the reader thread.
type Acked = Arc<Mutex<Vec<(Key, Vec<u8>)>>>;

#[test]
fn b20_reads_never_fail_while_packing_races() {
    let t = new_small_store();
    let root = t.root();
    let reader_store = Store::open(&root).expect("second handle");
    let acked: Acked = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut slowest_repack = std::time::Duration::ZERO;
    let reads = std::thread::scope(|scope| {
        let reader = {
            let (acked, done, failures) = (acked.clone(), done.clone(), failures.clone());
            let s = &reader_store;
            scope.spawn(move || {
                let mut reads = 0u64;
                let mut i = 0usize;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let item = {
                        let a = acked.lock().expect("acked");
                        (!a.is_empty()).then(|| a[i % a.len()].clone())
                    };
                    if let Some((k, c)) = item {
                        match s.get(&k) {
                            Ok(b) if b == c => {}
                            Ok(_) => failures
                                .lock()
                                .expect("f")
                                .push(format!("{k}: wrong bytes")),
                            Err(e) => failures.lock().expect("f").push(format!("{k}: {e}")),
                        }
                        reads += 1;
                    }
                    i += 7;
                    if finished {
                        return reads;
                    }
                }
            })
        };
        let s = &t.store;
        // Stops the reader however this loop ends (a panic here must not leave it spinning).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let stop = StopOnDrop(&done);
        for round in 0..12u64 {
            let mut b = s.batch().expect("batch");
            let contents: Vec<Vec<u8>> = (0..8)
                .map(|i| random_bytes(20_000 + round * 100 + i, 600))
                .collect();
            for c in &contents {
                b.put(c).expect("batch put");
            }
            let keys = b.commit().expect("commit");
            acked
                .lock()
                .expect("acked")
                .extend(keys.into_iter().zip(contents));
            let started = std::time::Instant::now();
            pack_all(s);
            println!("round {round}: pack_loose took {:?}", started.elapsed());
            if round % 4 == 3 {
                let started = std::time::Instant::now();
                maint(s)
                    .repack(
                        &RepackOptions {
                            all: true,
                            ..RepackOptions::default()
                        },
                        &NoProgress,
                    )
                    .expect("repack");
                let took = started.elapsed();
                println!("round {round}: repack took {took:?}");
                slowest_repack = slowest_repack.max(took);
            }
        }
        drop(stop);
        reader.join().expect("reader thread")
    });
    // A repack takes ~0.1 s here; a reader must not be able to stall maintenance (the bound is
    // generous so that only a stall, never a slow machine, trips it).
    assert!(
        slowest_repack < std::time::Duration::from_secs(10),
        "repack stalled {slowest_repack:?} behind a busy reader"
    );
    let failures = failures.lock().expect("f");
    assert!(
        failures.is_empty(),
        "{} failed reads of {reads}: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(reads > 0, "reader never read");
}

#[test]
fn b21_packing_skips_unreadable_and_vanished_loose() {
    let t = new_small_store();
    let s = &t.store;
    let a = s.put(b"object a").expect("put");
    let b = s.put(b"object b").expect("put");
    let vanished = s.put(b"object that vanishes").expect("put");
    fs::remove_file(loose_file(s, &vanished)).expect("unlink");
    // An entry with a key's name that cannot be read as a file right now.
    let blocked_content = b"object written later".to_vec();
    let blocked = key_of(s, &blocked_content);
    let blocked_path = loose_file(s, &blocked);
    fs::create_dir_all(&blocked_path).expect("a directory where a loose file would be");

    let r = pack_with(s, PackSelection::Keys(vec![a, b, vanished, blocked]), None);
    assert_eq!(r.packed, 2, "{r:?}");
    assert_eq!(
        r.skipped.len(),
        1,
        "the unreadable entry must be reported as skipped: {r:?}"
    );
    assert!(r.corrupt.is_empty(), "{r:?}");
    assert_eq!(s.get(&a).expect("get a"), b"object a");
    assert!(s.get(&vanished).expect_err("vanished").is_not_found());

    // Next time it is readable, it gets packed.
    fs::remove_dir(&blocked_path).expect("rmdir");
    assert_eq!(s.put(&blocked_content).expect("put"), blocked);
    let r = pack_all(s);
    assert_eq!(r.packed, 1, "{r:?}");
    assert!(
        matches!(location(s, &blocked), Location::Packed { .. }),
        "not packed the second time"
    );
    assert_eq!(s.get(&blocked).expect("get"), blocked_content);
}

#[test]
fn b22_pack_validation_catches_corrupt_loose() {
    let t = new_small_store();
    let s = &t.store;
    let a = s.put(b"content of a").expect("put");
    let b = s.put(b"content of b").expect("put");
    let path_a = loose_file(s, &a);
    fs::write(&path_a, b"bit rot happened").expect("corrupt a");
    let r = pack_with(s, PackSelection::All, None);
    assert_eq!(r.packed, 1, "{r:?}");
    assert_eq!(r.corrupt.len(), 1, "{r:?}");
    assert!(
        r.corrupt[0].contains(&path_a.display().to_string()),
        "report must name the file: {r:?}"
    );
    assert!(path_a.exists(), "the corrupt file is evidence: keep it");
    assert_eq!(
        location(s, &a),
        Location::Loose,
        "corrupt content must not be packed"
    );
    let e = s.get(&a).expect_err("get of a corrupt loose object");
    assert!(e.is_corruption(), "got {e:?}");
    assert_eq!(s.get(&b).expect("get b"), b"content of b");

    // Packing again still refuses it: loose objects are always re-hashed before packing.
    let again = pack_with(s, PackSelection::All, None);
    assert_eq!(again.corrupt.len(), 1, "{again:?}");
    assert_eq!(
        location(s, &a),
        Location::Loose,
        "corrupt content must never be packed"
    );
}

#[test]
fn b23_validate_reports_each_kind() {
    let t = new_small_store();
    let s = &t.store;
    let loose = s.put(b"a loose object").expect("put");
    let contents: Vec<Vec<u8>> = (0..6).map(|i| random_bytes(230 + i, 500)).collect();
    let keys = write_packed(s, &contents, None);
    assert_valid(s);
    let report = validate(s);
    assert!(report.objects_checked >= 7, "{report:?}");

    // Corrupt loose content.
    fs::write(loose_file(s, &loose), b"changed").expect("corrupt loose");
    // Corrupt packed payload.
    let Location::Packed { pack, offset } = location(s, &keys[0]) else {
        panic!("packed")
    };
    let path = pack_files(&t.root())[&pack].clone();
    flip_byte(
        &path,
        offset + basin_store::format::RECORD_HEADER_BYTES as u64 + 10,
        0x01,
    );
    // Wrong size in the index for another object.
    let Location::Packed {
        pack: pack2,
        offset: offset2,
    } = location(s, &keys[3])
    else {
        panic!("packed")
    };
    let db = rusqlite::Connection::open(t.root().join(INDEX_FILE)).expect("open index");
    db.execute(
        "UPDATE objects SET raw_len = raw_len + 1 WHERE key = ?1",
        [&keys[3].as_bytes()[..]],
    )
    .expect("update");
    // Overlap: a row pointing into the middle of another record.
    let Location::Packed {
        pack: pack3,
        offset: offset3,
    } = location(s, &keys[5])
    else {
        panic!("packed")
    };
    db.execute(
        "UPDATE objects SET offset = offset + 8 WHERE key = ?1",
        [&keys[5].as_bytes()[..]],
    )
    .expect("update");
    drop(db);

    let problems = validate(s).problems;
    let has = |f: &dyn Fn(&Problem) -> bool| problems.iter().any(f);
    assert!(
        has(&|p| matches!(p, Problem::LooseHashMismatch { key, .. } if *key == loose)),
        "loose: {problems:#?}"
    );
    assert!(
        has(
            &|p| matches!(p, Problem::RecordCorrupt { pack: p2, offset: o, .. } if (*p2, *o) == (pack, offset))
                || matches!(p, Problem::RecordHashMismatch { key, .. } if *key == keys[0])
        ),
        "packed payload: {problems:#?}"
    );
    assert!(
        has(
            &|p| matches!(p, Problem::RowMismatch { key, pack: p2, offset: o, .. } if *key == keys[3] && (*p2, *o) == (pack2, offset2))
        ),
        "wrong size: {problems:#?}"
    );
    assert!(
        has(&|p| match p {
            Problem::RowWithoutRecord { key, pack: p2, .. }
            | Problem::RowPastEnd { key, pack: p2, .. } => *key == keys[5] && *p2 == pack3,
            Problem::OverlappingRows {
                key,
                other,
                pack: p2,
                ..
            } => (*key == keys[5] || *other == keys[5]) && *p2 == pack3,
            _ => false,
        }),
        "misplaced row at {offset3}+8: {problems:#?}"
    );
    for p in &problems {
        assert!(
            !p.to_string().is_empty() && serde_json::to_string(p).is_ok(),
            "{p:?} must display and serialize"
        );
    }
}

#[test]
fn b24_delete() {
    let mut t = new_small_store();
    let s = &t.store;
    let a = s.put(b"only loose").expect("put");
    let b = write_packed(s, &[b"only packed".to_vec()], None)[0];
    let c = s.put(b"both").expect("put");
    pack_all(s);
    let lf = loose_file(s, &c);
    fs::create_dir_all(lf.parent().expect("parent")).expect("mkdir");
    fs::write(&lf, b"both").expect("loose copy of a packed object");
    let keep = s.put(b"stays").expect("put");
    let d = absent_key(24);
    let existed = maint(s).delete(&[a, b, d, c, a]).expect("delete");
    assert_eq!(
        existed,
        vec![a, b, c],
        "existing keys, input order, once each"
    );
    for k in [a, b, c] {
        assert!(
            s.get(&k).expect_err("deleted").is_not_found(),
            "{k} still readable"
        );
        assert!(!s.has(&k).expect("has"), "{k} still there");
    }
    assert!(
        !lf.exists() && !loose_file(s, &a).exists(),
        "loose files survived delete"
    );
    assert_eq!(s.list().expect("list"), vec![keep]);
    assert_valid(s);

    // Deletion survives reopening and an index rebuilt from the packs alone.
    t.reopen();
    maint(&t.store).rebuild_index(&NoProgress).expect("rebuild");
    let s = &t.store;
    assert_eq!(
        s.list().expect("list"),
        vec![keep],
        "a rebuilt index resurrected deleted objects"
    );
    // And an object can come back after deletion.
    assert_eq!(s.put(b"only packed").expect("put"), b);
    pack_all(s);
    maint(s).rebuild_index(&NoProgress).expect("rebuild");
    assert_eq!(s.get(&b).expect("re-added object"), b"only packed");
    assert_valid(s);
}

#[test]
fn b25_clean_removes_leftovers_but_not_live_writes() {
    let t = new_store(&InitOptions {
        pack_size_target_bytes: 1 << 20,
        ..InitOptions::default()
    });
    let s = &t.store;
    let k = write_packed(s, &[b"packed".to_vec()], None)[0];
    // A loose copy of a packed object, a dead writer's sandbox file, an uncommitted pack tail.
    let lf = loose_file(s, &k);
    fs::create_dir_all(lf.parent().expect("parent")).expect("mkdir");
    fs::write(&lf, b"packed").expect("loose copy");
    fs::write(
        s.path().join("sandbox").join("deadbeef.tmp"),
        b"half written",
    )
    .expect("sandbox junk");
    let (_, pack_path) = pack_files(&t.root()).into_iter().next().expect("pack");
    let committed = fs::metadata(&pack_path).expect("stat").len();
    {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&pack_path)
            .expect("open pack");
        f.write_all(&[0xAB; 333]).expect("append tail");
    }
    // A batch still being written is someone's live work.
    let mut live = s.batch().expect("batch");
    let live_key = live.put(b"in flight").expect("batch put");

    let report = maint(s)
        .clean(
            &CleanOptions {
                vacuum: true,
                sandbox_grace: std::time::Duration::ZERO,
            },
            &NoProgress,
        )
        .expect("clean");
    assert_eq!(report.sandbox_removed, 1, "{report:?}");
    assert_eq!(report.loose_copies_removed, 1, "{report:?}");
    assert_eq!(report.tail_bytes_truncated, 333, "{report:?}");
    assert!(!lf.exists(), "loose copy of a packed object survived clean");
    assert_eq!(fs::metadata(&pack_path).expect("stat").len(), committed);
    assert_eq!(s.get(&k).expect("get"), b"packed");
    assert_eq!(
        live.commit().expect("a live batch must survive clean"),
        vec![live_key]
    );
    assert_eq!(s.get(&live_key).expect("get"), b"in flight");
    assert!(
        files_under(&s.path().join("sandbox")).is_empty(),
        "sandbox not empty"
    );
    assert_valid(s);
}

#[test]
fn b26_repack_reclaims_space_and_recompresses() {
    let mut t = new_small_store();
    let mut contents: Vec<Vec<u8>> = (0..30).map(|i| text_bytes(260 + i, 900)).collect();
    contents.extend((0..30).map(|i| random_bytes(300 + i, 900)));
    let keys = write_packed(&t.store, &contents, None);
    let doomed: Vec<Key> = keys.iter().copied().step_by(2).collect();
    maint(&t.store).delete(&doomed).expect("delete");
    let before = t.store.stats().expect("stats");
    let r = maint(&t.store)
        .repack(&RepackOptions::default(), &NoProgress)
        .expect("repack");
    assert!(
        r.packs_rewritten > 0 && r.bytes_after < r.bytes_before,
        "{r:?}"
    );
    let after = t.store.stats().expect("stats");
    assert!(
        after.pack_file_bytes < before.pack_file_bytes * 2 / 3,
        "{before:?} -> {after:?}"
    );
    let live: Vec<(Key, &Vec<u8>)> = keys
        .iter()
        .copied()
        .zip(&contents)
        .skip(1)
        .step_by(2)
        .collect();
    let check = |s: &Store, what: &str| {
        assert_eq!(s.list().expect("list").len(), live.len(), "{what}");
        for (k, c) in &live {
            assert!(s.get(k).expect("get") == **c, "{what}: content of {k}");
            assert_eq!(
                s.meta(k).expect("meta").expect("exists").size,
                c.len() as u64,
                "{what}"
            );
        }
        for k in &doomed {
            assert!(!s.has(k).expect("has"), "{what}: deleted {k} came back");
        }
    };
    check(&t.store, "after repack");
    assert_valid(&t.store);
    maint(&t.store).rebuild_index(&NoProgress).expect("rebuild");
    check(&t.store, "after rebuild_index");

    // Recompression: zstd compresses everything non-empty, auto only what shrinks, none nothing.
    for (policy, text_compressed, random_compressed) in [
        (Compression::Zstd { level: 3 }, true, true),
        (Compression::Auto { level: 3 }, true, false),
        (Compression::None, false, false),
    ] {
        let opts = RepackOptions {
            all: true,
            compression: Some(policy),
            ..RepackOptions::default()
        };
        maint(&t.store)
            .repack(&opts, &NoProgress)
            .expect("repack with compression");
        for (k, _) in &live {
            let m = t.store.meta(k).expect("meta").expect("exists");
            let is_text = keys.iter().position(|x| x == k).expect("known") < 30;
            let expect = if is_text {
                text_compressed
            } else {
                random_compressed
            };
            assert_eq!(m.compressed, expect, "{policy}: {m:?}");
        }
        check(&t.store, &format!("after repack to {policy}"));
    }
    t.reopen();
    check(&t.store, "after reopen");
    assert_valid(&t.store);
}

#[test]
fn b27_pack_loose_compression_modes() {
    let cases = [
        (Compression::None, None, false, false),
        (
            Compression::None,
            Some(Compression::Zstd { level: 1 }),
            true,
            true,
        ),
        (
            Compression::None,
            Some(Compression::Auto { level: 3 }),
            true,
            false,
        ),
        (Compression::Zstd { level: 3 }, None, true, true), // the store's default applies
        (
            Compression::Zstd { level: 3 },
            Some(Compression::None),
            false,
            false,
        ),
    ];
    for (default, option, text_compressed, random_compressed) in cases {
        let t = new_store(&InitOptions {
            compression: default,
            ..small_opts()
        });
        let s = &t.store;
        let text = text_bytes(27, 5000);
        let random = random_bytes(27, 5000);
        let (kt, kr) = (s.put(&text).expect("put"), s.put(&random).expect("put"));
        let ke = s.put(b"").expect("put empty");
        pack_with(s, PackSelection::All, option);
        let what = format!("default {default}, option {option:?}");
        assert_eq!(
            s.meta(&kt).expect("meta").expect("exists").compressed,
            text_compressed,
            "{what}: text"
        );
        assert_eq!(
            s.meta(&kr).expect("meta").expect("exists").compressed,
            random_compressed,
            "{what}: random"
        );
        assert!(
            !s.meta(&ke).expect("meta").expect("exists").compressed,
            "{what}: empty objects are never compressed"
        );
        assert_eq!(s.get(&kt).expect("get"), text);
        assert_eq!(s.get(&kr).expect("get"), random);
        assert_eq!(s.get(&ke).expect("get"), b"");
    }
}

#[test]
fn b28_pack_loose_removes_loose_copies() {
    let t = new_small_store();
    let s = &t.store;
    let contents: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(280 + i, 500)).collect();
    let keys: Vec<Key> = contents.iter().map(|c| s.put(c).expect("put")).collect();
    // Selections: by prefix first, then the rest.
    let prefix = keys[0].to_hex()[..1].to_string();
    let with_prefix = keys
        .iter()
        .filter(|k| k.to_hex().starts_with(&prefix))
        .count() as u64;
    let r = pack_with(s, PackSelection::Prefix(prefix.clone()), None);
    assert_eq!(
        (r.packed, r.loose_removed),
        (with_prefix, with_prefix),
        "{r:?}"
    );
    assert_eq!(s.stats().expect("stats").loose_objects, 40 - with_prefix);
    let r = pack_all(s);
    assert_eq!(
        (r.packed, r.loose_removed),
        (40 - with_prefix, 40 - with_prefix),
        "{r:?}"
    );
    assert!(
        files_under(&s.path().join("loose")).is_empty(),
        "loose files left after packing"
    );
    assert!(
        pack_files(&t.root()).len() > 2,
        "small target must have rolled over"
    );
    for (k, c) in keys.iter().zip(&contents) {
        assert_eq!(&s.get(k).expect("get"), c);
    }
    let e = maint(s).pack_loose(
        &PackSelection::Prefix("xyz".into()),
        &PackOptions::default(),
        &NoProgress,
    );
    assert!(
        matches!(e, Err(Error::InvalidArgument(_))),
        "non-hex prefix must be refused: {:?}",
        e.map(|r| r.packed)
    );
}

#[test]
fn b30_progress_is_balanced() {
    let t = new_small_store();
    let s = &t.store;
    let keys: Vec<Key> = (0..25)
        .map(|i| s.put(&random_bytes(300 + i, 400)).expect("put"))
        .collect();
    let m = maint(s);
    let p = RecordingProgress::default();
    m.pack_loose(&PackSelection::All, &PackOptions::default(), &p)
        .expect("pack");
    let phases = p.phases();
    assert!(
        phases.iter().any(|(_, n)| *n == 25),
        "packing 25 objects must count 25: {phases:?}"
    );

    let p = RecordingProgress::default();
    let mut it = (0..10).map(|i| Ok(Source::Bytes(random_bytes(400 + i, 300))));
    m.write_packed(&mut it, &PackOptions::default(), &p)
        .expect("write_packed");
    assert_eq!(
        p.phases().iter().map(|x| x.1).sum::<u64>(),
        10,
        "write_packed of 10"
    );

    m.delete(&keys[..10]).expect("delete");
    for run in 0..4 {
        let p = RecordingProgress::default();
        match run {
            0 => {
                m.validate(&p).expect("validate");
            }
            1 => {
                m.repack(
                    &RepackOptions {
                        all: true,
                        ..RepackOptions::default()
                    },
                    &p,
                )
                .expect("repack");
            }
            2 => {
                m.clean(&CleanOptions::default(), &p).expect("clean");
            }
            _ => {
                m.rebuild_index(&p).expect("rebuild");
            }
        }
        let phases = p.phases();
        assert!(!phases.is_empty(), "run {run} reported no progress at all");
    }
}

#[test]
fn b31_writer_abort_and_replace() {
    let t = new_small_store();
    let s = &t.store;
    // A dropped batch leaves nothing; nothing is visible before commit.
    let mut b = s.batch().expect("batch");
    let k = b.put(b"never committed").expect("put");
    assert!(
        !s.has(&k).expect("has"),
        "batch content visible before commit"
    );
    drop(b);
    assert!(!s.has(&k).expect("has"), "dropped batch became visible");
    assert!(
        files_under(&s.path().join("sandbox")).is_empty(),
        "dropped batch left files"
    );

    // A reader failing mid-stream: error, nothing stored, nothing left behind.
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("source broke"));
            }
            let n = buf.len().min(self.0).min(1000);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let e = s
        .put_reader(&mut Failing(5000))
        .expect_err("failing source");
    assert!(matches!(e, Error::Io { .. }), "got {e:?}");
    let mut b = s.batch().expect("batch");
    assert!(
        b.put_reader(&mut Failing(3000)).is_err(),
        "failing source in a batch"
    );
    let good = b.put(b"good one").expect("put");
    assert_eq!(b.commit().expect("commit after a failed put"), vec![good]);
    assert!(
        files_under(&s.path().join("sandbox")).is_empty(),
        "failed writes left files"
    );
    assert_eq!(s.list().expect("list"), vec![good]);

    // A corrupt loose file is replaced by the next put of the same content.
    let single = s.put(b"good two").expect("put");
    fs::write(loose_file(s, &single), b"rotten").expect("corrupt");
    assert!(s.get(&single).expect_err("corrupt").is_corruption());
    assert_eq!(s.put(b"good two").expect("put again"), single);
    assert_eq!(s.get(&single).expect("get"), b"good two");
    assert_valid(s);

    // Keys come back in put order.
    let mut b = s.batch().expect("batch");
    let order: Vec<Key> = [b"3".as_slice(), b"1", b"2"]
        .iter()
        .map(|c| b.put(c).expect("put"))
        .collect();
    assert_eq!(b.commit().expect("commit"), order);
}

#[test]
fn b32_concurrent_writers_and_packer() {
    let seed = seed("b32");
    let t = new_small_store();
    let root = t.root();
    let writers_done = AtomicBool::new(false);
    let written: Mutex<BTreeMap<Key, Vec<u8>>> = Mutex::default();
    let errors: Mutex<Vec<String>> = Mutex::default();
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for w in 0..4u64 {
            let (root, written, errors) = (&root, &written, &errors);
            writers.push(scope.spawn(move || {
                let s = Store::open(root).expect("writer handle");
                let mut rng = rng(seed ^ w);
                for i in 0..20u64 {
                    // Overlapping content between writers: the same object written concurrently.
                    let n = rng.random_range(0..30u64);
                    let c = random_bytes(32_000 + n, 300 + n as usize);
                    let k = if i % 2 == 0 {
                        s.put(&c)
                    } else {
                        let mut b = s.batch().expect("batch");
                        b.put(&c).and_then(|_| b.commit().map(|v| v[0]))
                    };
                    match k {
                        Ok(k) => {
                            written.lock().expect("w").insert(k, c);
                            // Every writer reads back everything acknowledged so far, by anyone.
                            let all: Vec<(Key, Vec<u8>)> = written
                                .lock()
                                .expect("w")
                                .iter()
                                .map(|(k, v)| (*k, v.clone()))
                                .collect();
                            for (k, c) in all {
                                match s.get(&k) {
                                    Ok(b) if b == c => {}
                                    other => errors
                                        .lock()
                                        .expect("e")
                                        .push(format!("writer {w}: {k}: {other:?}")),
                                }
                            }
                        }
                        Err(e) => errors
                            .lock()
                            .expect("e")
                            .push(format!("writer {w}: put: {e}")),
                    }
                }
            }));
        }
        let packer = {
            let (root, done, errors) = (&root, &writers_done, &errors);
            scope.spawn(move || {
                let s = Store::open(root).expect("packer handle");
                let mut rounds = 0;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    match s.maintenance(LockWait::Block) {
                        Ok(m) => {
                            if let Err(e) = m.pack_loose(
                                &PackSelection::All,
                                &PackOptions::default(),
                                &NoProgress,
                            ) {
                                errors.lock().expect("e").push(format!("packer: {e}"));
                            }
                        }
                        Err(e) => errors.lock().expect("e").push(format!("packer lock: {e}")),
                    }
                    rounds += 1;
                    if finished {
                        return rounds;
                    }
                }
            })
        };
        for w in writers {
            w.join().expect("writer");
        }
        writers_done.store(true, Ordering::Release);
        assert!(packer.join().expect("packer") > 1);
    });
    let errors = errors.lock().expect("e");
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let s = Store::open(&root).expect("fresh handle");
    let written = written.lock().expect("w");
    assert_eq!(
        s.list().expect("list"),
        written.keys().copied().collect::<Vec<_>>()
    );
    for (k, c) in written.iter() {
        assert_eq!(&s.get(k).expect("get"), c);
    }
    assert_valid(&s);
    // A second maintainer is refused while one holds the lock.
    let m = s.maintenance(LockWait::Fail).expect("lock");
    let other = Store::open(&root).expect("other handle");
    let e = other
        .maintenance(LockWait::Fail)
        .err()
        .expect("second maintainer must be refused");
    assert!(matches!(e, Error::Locked { .. }), "got {e:?}");
    drop(m);
    other
        .maintenance(LockWait::Fail)
        .expect("lock is free again");
}

#[test]
fn b29_import_store_same_and_other_hash() {
    let src = new_store(&InitOptions {
        hash: HashAlgorithm::Sha256,
        ..small_opts()
    });
    let contents: Vec<Vec<u8>> = (0..12)
        .map(|i| random_bytes(290 + i, 300 + 50 * i as usize))
        .collect();
    write_packed(
        &src.store,
        &contents[..8],
        Some(Compression::Zstd { level: 3 }),
    );
    for c in &contents[8..] {
        src.store.put(c).expect("put loose");
    }
    for (hash, what) in [
        (HashAlgorithm::Sha256, "same hash"),
        (HashAlgorithm::Blake3, "other hash"),
    ] {
        let dst = new_store(&InitOptions {
            hash,
            ..small_opts()
        });
        let already = dst.store.put(&contents[0]).expect("put");
        let r = maint(&dst.store)
            .import_store(&src.root(), &NoProgress)
            .expect("import_store");
        assert_eq!(r.objects, 12, "{what}: {r:?}");
        assert!(r.corrupt.is_empty(), "{what}: {r:?}");
        if hash == HashAlgorithm::Sha256 {
            assert_eq!((r.already_present, r.imported), (1, 11), "{what}: {r:?}");
        }
        let mut expect: Vec<Key> = contents.iter().map(|c| hash.hash(c)).collect();
        expect.sort();
        assert_eq!(
            dst.store.list().expect("list"),
            expect,
            "{what}: keys must be this store's hash of the content"
        );
        for c in &contents {
            assert_eq!(&dst.store.get(&hash.hash(c)).expect("get"), c, "{what}");
        }
        assert_eq!(dst.store.get(&already).expect("get"), contents[0]);
        assert_valid(&dst.store);
        // Importing again finds everything present.
        let again = maint(&dst.store)
            .import_store(&src.root(), &NoProgress)
            .expect("import again");
        if hash == HashAlgorithm::Sha256 {
            assert_eq!(again.already_present, 12, "{what}: {again:?}");
        }
        assert_eq!(
            dst.store.list().expect("list").len(),
            12,
            "{what}: import again duplicated objects"
        );
    }
}

#[test]
fn b29_import_dos_container() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dos = tmp.path().join("dos");
    let objects: Vec<(Vec<u8>, &str)> = vec![
        (random_bytes(2901, 1000), "loose"),
        (random_bytes(2902, 2000), "raw"),
        (text_bytes(2903, 5000), "zlib"),
        (Vec::new(), "raw"),
        (text_bytes(2904, 70_000), "zlib"),
    ];
    dos_container(&dos, &objects);
    // A corrupt packed object in the source is reported, not imported.
    let bad = random_bytes(2905, 100);
    {
        let db = rusqlite::Connection::open(dos.join("packs.idx")).expect("db");
        db.execute(
            "INSERT INTO db_object (hashkey, compressed, size, \"offset\", length, pack_id) VALUES (?1, 0, 100, 0, 100, 0)",
            [HashAlgorithm::Sha256.hash(&bad).to_hex()],
        )
        .expect("bad row");
    }
    for hash in [HashAlgorithm::Sha256, HashAlgorithm::Blake3] {
        let dst = new_store(&InitOptions {
            hash,
            ..small_opts()
        });
        let r = maint(&dst.store)
            .import_dos(&dos, &NoProgress)
            .expect("import_dos");
        assert_eq!(r.imported, 5, "{hash}: {r:?}");
        assert_eq!(
            r.corrupt.len(),
            1,
            "{hash}: the damaged source object must be reported: {r:?}"
        );
        for (c, _) in &objects {
            assert_eq!(&dst.store.get(&hash.hash(c)).expect("get"), c, "{hash}");
        }
        assert!(
            !dst.store.has(&hash.hash(&bad)).expect("has"),
            "{hash}: corrupt object imported"
        );
        assert_eq!(dst.store.list().expect("list").len(), 5);
        assert_valid(&dst.store);
    }
}

#[test]
fn b33_backup_is_complete_and_incremental() {
    let t = new_small_store();
    let s = &t.store;
    let packed: Vec<Vec<u8>> = (0..20).map(|i| random_bytes(3300 + i, 700)).collect();
    let keys = write_packed(s, &packed, None);
    let loose = s.put(b"loose at the first backup").expect("put");
    let dest = t.dir.path().join("backup");
    let check = |what: &str, expect: &[Key]| {
        let b = Store::open(&dest).expect("backup opens as a store");
        assert_eq!(b.config().container_id, s.config().container_id, "{what}");
        let mut expect = expect.to_vec();
        expect.sort();
        assert_eq!(b.list().expect("list"), expect, "{what}");
        for k in &expect {
            assert_eq!(
                b.get(k).expect("get from backup"),
                s.get(k).expect("get"),
                "{what}"
            );
        }
        assert_valid(&b);
    };
    let r1 = maint(s).backup(&dest, &NoProgress).expect("backup");
    assert_eq!(r1.loose_copied, 1, "{r1:?}");
    assert!(r1.packs_copied >= 2, "{r1:?}");
    let mut all: Vec<Key> = keys.clone();
    all.push(loose);
    check("first backup", &all);

    // Unchanged store: nothing is copied again.
    let r2 = maint(s).backup(&dest, &NoProgress).expect("backup again");
    assert_eq!((r2.loose_copied, r2.loose_present), (0, 1), "{r2:?}");
    assert_eq!(
        r2.pack_bytes_copied, 0,
        "an unchanged store copied pack bytes again: {r2:?}"
    );

    // New objects, packing, deletion and repack: the next backup follows.
    let new = s.put(b"new since the first backup").expect("put");
    pack_all(s);
    maint(s).delete(&keys[..10]).expect("delete");
    maint(s)
        .repack(&RepackOptions::default(), &NoProgress)
        .expect("repack");
    let r3 = maint(s).backup(&dest, &NoProgress).expect("third backup");
    assert!(
        r3.packs_removed > 0,
        "packs repacked away must leave the backup too: {r3:?}"
    );
    assert!(
        r3.packs_present > 0,
        "untouched sealed packs must not be copied again: {r3:?}"
    );
    let mut now: Vec<Key> = keys[10..].to_vec();
    now.extend([loose, new]);
    check("after delete + repack", &now);

    // A backup never goes over an unrelated folder.
    let other = new_small_store();
    let e = maint(&other.store)
        .backup(&dest, &NoProgress)
        .expect_err("backup over another store's backup");
    assert!(
        matches!(e, Error::InvalidArgument(_) | Error::NotEmpty { .. }),
        "got {e:?}"
    );
    let junk = t.dir.path().join("junk");
    fs::create_dir(&junk).expect("mkdir");
    fs::write(junk.join("file"), b"x").expect("write");
    let e = maint(s)
        .backup(&junk, &NoProgress)
        .expect_err("backup into a non-empty folder");
    assert!(matches!(e, Error::NotEmpty { .. }), "got {e:?}");
}
