//! Model-based test: random sequences of store operations run against the real store and against
//! a trivial model (a `BTreeMap` of key → content, plus where each object lives), compared after
//! every step.
//!
//! Operations: put, put_reader, batch put (committed or dropped), get/has of present and absent
//! objects, delete, pack_loose (all / by prefix / by keys, any compression), write_packed,
//! repack, clean, rebuild_index, validate, reopen. After each one: `list` equals the model's keys,
//! every object reads back (get and stream), `meta` says packed exactly when the model does,
//! the loose/packed counts in `stats` match, and absent objects stay absent. Reports
//! (`delete`'s returned keys, `pack_loose`'s counts) are checked against the model too.
//!
//! Seed: printed at start, fixed with `BASIN_TEST_SEED`; number of cases with `PROPTEST_CASES`.
//! A failure is shrunk to a minimal sequence and saved in `tests/model.proptest-regressions`,
//! which proptest replays first on the next run.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use basin_store::*;
use common::*;
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, RngSeed};

/// Object contents are picked from a small pool so that the same content is written again,
/// deleted and re-added: that is where stores go wrong.
const POOL: u8 = 24;

fn content(id: u8) -> Vec<u8> {
    let len = [0usize, 1, 50, 700, 3000, 9000][id as usize % 6];
    if id.is_multiple_of(3) {
        text_bytes(u64::from(id), len)
    } else {
        random_bytes(u64::from(id), len)
    }
}

#[derive(Debug, Clone)]
enum Selection {
    All,
    /// First hex digit of the key.
    Prefix(u8),
    Keys(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Op {
    Put(u8),
    PutReader(u8),
    Batch {
        ids: Vec<u8>,
        commit: bool,
    },
    Read(u8),
    Delete(Vec<u8>),
    Pack {
        sel: Selection,
        compression: Option<u8>,
    },
    WritePacked {
        ids: Vec<u8>,
        compression: Option<u8>,
    },
    Repack {
        all: bool,
        compression: Option<u8>,
        bypass_page_cache: bool,
        merge_small: bool,
    },
    Clean,
    RebuildIndex,
    Validate,
    Reopen,
}

fn compression(c: Option<u8>) -> Option<Compression> {
    c.map(|c| match c % 3 {
        0 => Compression::None,
        1 => Compression::Zstd { level: 1 },
        _ => Compression::Auto { level: 3 },
    })
}

fn ids() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..POOL, 0..6)
}

fn op() -> impl Strategy<Value = Op> {
    let sel = prop_oneof![
        Just(Selection::All),
        (0u8..16).prop_map(Selection::Prefix),
        ids().prop_map(Selection::Keys),
    ];
    prop_oneof![
        5 => (0..POOL).prop_map(Op::Put),
        1 => (0..POOL).prop_map(Op::PutReader),
        3 => (ids(), prop::bool::weighted(0.8)).prop_map(|(ids, commit)| Op::Batch { ids, commit }),
        3 => (0..POOL).prop_map(Op::Read),
        2 => ids().prop_map(Op::Delete),
        3 => (sel, prop::option::of(0u8..3)).prop_map(|(sel, compression)| Op::Pack { sel, compression }),
        2 => (ids(), prop::option::of(0u8..3)).prop_map(|(ids, compression)| Op::WritePacked { ids, compression }),
        1 => (any::<bool>(), prop::option::of(0u8..3), any::<bool>(), any::<bool>()).prop_map(
            |(all, compression, bypass_page_cache, merge_small)| Op::Repack {
                all,
                compression,
                bypass_page_cache,
                merge_small,
            }
        ),
        1 => Just(Op::Clean),
        1 => Just(Op::RebuildIndex),
        1 => Just(Op::Validate),
        1 => Just(Op::Reopen),
    ]
}

/// Which keys a pack selection takes, as the model sees it.
type KeyFilter = Box<dyn Fn(&Key) -> bool>;

/// Where the model says an object lives.
#[derive(Debug, Clone, Copy, Default)]
struct Place {
    packed: bool,
    loose: bool,
}

struct Model {
    objects: BTreeMap<Key, (u8, Place)>,
}

struct Run {
    t: TestStore,
    model: Model,
}

impl Run {
    fn s(&self) -> &Store {
        &self.t.store
    }

    fn key(&self, id: u8) -> Key {
        key_of(self.s(), &content(id))
    }

    fn maint(&self) -> Maintenance<'_> {
        self.s()
            .maintenance(LockWait::Fail)
            .expect("maintenance lock")
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Put(id) | Op::PutReader(id) => {
                let c = content(*id);
                let k = if matches!(op, Op::Put(_)) {
                    self.s().put(&c).expect("put")
                } else {
                    self.s()
                        .put_reader(&mut std::io::Cursor::new(c))
                        .expect("put_reader")
                };
                assert_eq!(k, self.key(*id));
                let e = self
                    .model
                    .objects
                    .entry(k)
                    .or_insert((*id, Place::default()));
                // A put of an object already packed writes no loose copy.
                if !e.1.packed {
                    e.1.loose = true;
                }
            }
            Op::Batch { ids, commit } => {
                let mut b = self.s().batch().expect("batch");
                let keys: Vec<Key> = ids
                    .iter()
                    .map(|id| b.put(&content(*id)).expect("batch put"))
                    .collect();
                if *commit {
                    assert_eq!(b.commit().expect("commit"), keys);
                    for (k, id) in keys.iter().zip(ids) {
                        // A batch publishes a batch pack: its objects are packed (a loose copy
                        // already there stays until pack or clean removes it).
                        self.model
                            .objects
                            .entry(*k)
                            .or_insert((*id, Place::default()))
                            .1
                            .packed = true;
                    }
                } else {
                    drop(b);
                }
            }
            Op::Read(id) => {
                let k = self.key(*id);
                let present = self.model.objects.contains_key(&k);
                assert_eq!(self.s().has(&k).expect("has"), present, "has({id})");
                match self.s().get(&k) {
                    Ok(b) => assert!(
                        present && b == content(*id),
                        "get({id}) returned bytes for an absent object"
                    ),
                    Err(e) => assert!(!present && e.is_not_found(), "get({id}): {e}"),
                }
                if present {
                    let c = content(*id);
                    let from = c.len() as u64 / 3;
                    assert_eq!(
                        self.s().read_range(&k, from, 100).expect("read_range"),
                        c[from as usize..(from as usize + 100).min(c.len())]
                    );
                }
            }
            Op::Delete(ids) => {
                let keys: Vec<Key> = ids.iter().map(|id| self.key(*id)).collect();
                let got = self.maint().delete(&keys).expect("delete");
                let mut expect = Vec::new();
                for k in &keys {
                    if self.model.objects.remove(k).is_some() {
                        expect.push(*k);
                    }
                }
                assert_eq!(
                    got, expect,
                    "delete returns the keys that existed, in input order"
                );
            }
            Op::Pack {
                sel,
                compression: c,
            } => {
                let (selection, chosen): (PackSelection, KeyFilter) = match sel {
                    Selection::All => (PackSelection::All, Box::new(|_| true)),
                    Selection::Prefix(d) => {
                        let p = format!("{d:x}");
                        let q = p.clone();
                        (
                            PackSelection::Prefix(p),
                            Box::new(move |k: &Key| k.to_hex().starts_with(&q)),
                        )
                    }
                    Selection::Keys(ids) => {
                        let keys: Vec<Key> = ids.iter().map(|id| self.key(*id)).collect();
                        let set: BTreeSet<Key> = keys.iter().copied().collect();
                        (
                            PackSelection::Keys(keys),
                            Box::new(move |k: &Key| set.contains(k)),
                        )
                    }
                };
                let opts = PackOptions {
                    compression: compression(*c),
                    // Small, so that one call commits several times.
                    commit_bytes: Some(8 << 10),
                    cached_bytes: None,
                };
                let r = self
                    .maint()
                    .pack_loose(&selection, &opts, &NoProgress)
                    .expect("pack_loose");
                let (mut packed, mut already) = (0, 0);
                for (k, (_, place)) in self.model.objects.iter_mut() {
                    if place.loose && chosen(k) {
                        if place.packed {
                            already += 1;
                        } else {
                            packed += 1;
                        }
                        place.loose = false;
                        place.packed = true;
                    }
                }
                assert_eq!(
                    (r.packed, r.already_packed),
                    (packed, already),
                    "pack_loose report: {r:?}"
                );
                assert!(r.corrupt.is_empty() && r.skipped.is_empty(), "{r:?}");
            }
            Op::WritePacked {
                ids,
                compression: c,
            } => {
                let m = self.maint();
                let mut it = ids.iter().map(|id| Ok(Source::Bytes(content(*id))));
                let opts = PackOptions {
                    compression: compression(*c),
                    // Small, so that one call commits several times.
                    commit_bytes: Some(8 << 10),
                    // Part through the page cache, the rest with O_DIRECT, runs crossing commits.
                    cached_bytes: Some(5 << 10),
                };
                let keys = m
                    .write_packed(&mut it, &opts, &NoProgress)
                    .expect("write_packed");
                drop(m);
                let expect: Vec<Key> = ids.iter().map(|id| self.key(*id)).collect();
                assert_eq!(keys, expect);
                for (k, id) in keys.iter().zip(ids) {
                    self.model
                        .objects
                        .entry(*k)
                        .or_insert((*id, Place::default()))
                        .1
                        .packed = true;
                }
            }
            Op::Repack {
                all,
                compression: c,
                bypass_page_cache,
                merge_small,
            } => {
                let opts = RepackOptions {
                    all: *all,
                    compression: compression(*c),
                    bypass_page_cache: *bypass_page_cache,
                    // Every pack the model makes is far below this.
                    small_pack_bytes_max: merge_small.then_some(1 << 20),
                    // Staged after every few records: a pack filling up rolls them back.
                    stage_rows_min: Some(3),
                    ..RepackOptions::default()
                };
                self.maint().repack(&opts, &NoProgress).expect("repack");
            }
            Op::Clean => {
                let opts = CleanOptions {
                    vacuum: true,
                    sandbox_grace: std::time::Duration::ZERO,
                };
                self.maint().clean(&opts, &NoProgress).expect("clean");
                for (_, place) in self.model.objects.values_mut() {
                    if place.packed {
                        place.loose = false;
                    }
                }
            }
            Op::RebuildIndex => {
                let r = self
                    .maint()
                    .rebuild_index(&NoProgress)
                    .expect("rebuild_index");
                assert!(r.unreadable_packs.is_empty(), "{r:?}");
            }
            Op::Validate => {
                let r = self.maint().validate(&NoProgress).expect("validate");
                let problems: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
                assert!(r.is_ok(), "validate: {problems:#?}");
            }
            Op::Reopen => self.t.reopen(),
        }
    }

    /// The whole observable state against the model.
    fn compare(&self) {
        let s = self.s();
        let keys: Vec<Key> = self.model.objects.keys().copied().collect();
        assert_eq!(s.list().expect("list"), keys, "list");
        for (k, (id, place)) in &self.model.objects {
            let c = content(*id);
            assert!(s.get(k).expect("get") == c, "get({id})");
            let mut streamed = Vec::new();
            s.open_object(k)
                .expect("open_object")
                .read_to_end(&mut streamed)
                .expect("stream");
            assert!(streamed == c, "stream({id})");
            let m = s.meta(k).expect("meta").expect("meta of a present object");
            assert_eq!(m.size, c.len() as u64);
            assert_eq!(
                matches!(m.location, Location::Packed { .. }),
                place.packed,
                "meta({id}) location {m:?}, model {place:?}"
            );
        }
        let st = s.stats().expect("stats");
        let loose = self.model.objects.values().filter(|(_, p)| p.loose).count() as u64;
        let packed = self
            .model
            .objects
            .values()
            .filter(|(_, p)| p.packed)
            .count() as u64;
        assert_eq!(
            (st.loose_objects, st.packed_objects),
            (loose, packed),
            "stats {st:?}"
        );
        let absent: Vec<Key> = (0..POOL)
            .map(|id| self.key(id))
            .filter(|k| !self.model.objects.contains_key(k))
            .collect();
        assert!(
            s.has_many(&absent).expect("has_many").iter().all(|h| !h),
            "an absent object is present"
        );
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(24);
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed("model")),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn store_matches_model(
        prefix in prop_oneof![Just(0u8), Just(2u8)],
        target in prop_oneof![Just(512u64), Just(4096u64), Just(1u64 << 20)],
        default_compression in 0u8..3,
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let opts = InitOptions {
            loose_prefix_len: prefix,
            pack_size_target_bytes: target,
            compression: compression(Some(default_compression)).unwrap_or(Compression::None),
            ..InitOptions::default()
        };
        let mut run = Run { t: new_store(&opts), model: Model { objects: BTreeMap::new() } };
        for op in &ops {
            run.apply(op);
            run.compare();
        }
        run.apply(&Op::Validate);
        run.apply(&Op::Reopen);
        run.apply(&Op::RebuildIndex);
        run.compare();
        run.apply(&Op::Validate);
    }
}
