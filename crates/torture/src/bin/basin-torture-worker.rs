//! `basin-torture-worker`: one process of a torture run against a basin store.
//!
//! - `writer`: writes `--count` random objects (single put, batch put, streamed put, shared
//!   content that other writers also write) and acknowledges each in its log after the call
//!   returned.
//! - `reader`: reads random acknowledged keys of the watched logs through every read path and
//!   checks every byte, until the watched logs are done and `--count` reads were made.
//! - `maintainer`: loops pack / repack / delete (of objects it wrote itself) / clean / validate.
//! - `op --kind K`: repeats one operation forever, printing `begin K` and `end K MICROS` around
//!   it, so a crash test can kill it in the middle.
//!
//! Any wrong byte, missing acknowledged object or store error ends the process with status 1
//! and a message on stderr naming the key; the caller (tests/stress.rs, tests/crash.rs) reports
//! it.

use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use basin_store::{
    CleanOptions, Compression, Key, LockWait, Maintenance, NoProgress, PackOptions, PackSelection,
    Problem, Progress, RepackOptions, Source, Store, Unit,
};
use basin_torture::audit::check;
use basin_torture::content::ObjectSpec;
use basin_torture::{AckLog, Error, IoContext, Ledger, Result, StoreContext};
use clap::{Parser, Subcommand, ValueEnum};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "One process of a basin store torture run")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Write COUNT random objects, acknowledging each in LOG.
    Writer {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        log: PathBuf,
    },
    /// Read and check random acknowledged objects of the watched logs.
    Reader {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Reads to make at least; more while the watched logs are not done.
        #[arg(long)]
        count: u64,
        /// Ack logs to read keys from (writers and maintainers).
        #[arg(long = "watch", required = true)]
        watch: Vec<PathBuf>,
    },
    /// Loop maintenance operations until the watched logs are done.
    Maintainer {
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        seed: u64,
        /// Rounds to make at least; more while the watched logs are not done.
        #[arg(long)]
        rounds: u64,
        /// This process's own ack log (objects it writes in order to delete them).
        #[arg(long)]
        log: PathBuf,
        /// Writer logs: run until they are done; their keys feed `pack --keys`.
        #[arg(long = "watch")]
        watch: Vec<PathBuf>,
        /// Operations of a round, in a shuffled order each round.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "pack,repack,delete,clean,validate"
        )]
        ops: Vec<MaintenanceOp>,
    },
    /// Repeat one operation, printing `begin KIND` / `end KIND MICROS` around each.
    Op {
        #[arg(long)]
        kind: OpKind,
        #[arg(long)]
        store: PathBuf,
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        log: PathBuf,
        /// Folder for files that `import` reads (outside the store).
        #[arg(long)]
        scratch: PathBuf,
        /// Stop after this many rounds (default: run until killed).
        #[arg(long)]
        rounds: Option<u64>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MaintenanceOp {
    Pack,
    Repack,
    Delete,
    Clean,
    Validate,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OpKind {
    Put,
    Batch,
    Pack,
    Import,
    Repack,
    Delete,
}

impl OpKind {
    fn name(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Batch => "batch",
            OpKind::Pack => "pack",
            OpKind::Import => "import",
            OpKind::Repack => "repack",
            OpKind::Delete => "delete",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.role {
        Role::Writer {
            store,
            seed,
            count,
            log,
        } => writer(&store, seed, count, &log),
        Role::Reader {
            store,
            seed,
            count,
            watch,
        } => reader(&store, seed, count, &watch),
        Role::Maintainer {
            store,
            seed,
            rounds,
            log,
            watch,
            ops,
        } => maintainer(&store, seed, rounds, &log, &watch, &ops),
        Role::Op {
            kind,
            store,
            seed,
            log,
            scratch,
            rounds,
        } => op(kind, &store, seed, &log, &scratch, rounds),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Display already carries the store's own message (key, pack, offset).
            eprintln!("basin-torture-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

fn open_store(path: &Path) -> Result<Store> {
    Store::open(path).during(|| format!("open store {}", path.display()))
}

/// A fresh object seed (never a shared-pool seed).
fn fresh_spec(rng: &mut StdRng, len: u64) -> ObjectSpec {
    loop {
        let seed = rng.random();
        if !ObjectSpec::is_shared_seed(seed) {
            return ObjectSpec { seed, len };
        }
    }
}

/// A fresh object of a random size.
fn random_spec(rng: &mut StdRng) -> ObjectSpec {
    let len = random_len(rng);
    fresh_spec(rng, len)
}

/// A fresh object for a streamed put.
fn streamed_spec(rng: &mut StdRng) -> ObjectSpec {
    let len = streamed_len(rng);
    fresh_spec(rng, len)
}

/// Object sizes: mostly small, some medium, a few of a quarter megabyte.
fn random_len(rng: &mut StdRng) -> u64 {
    match rng.random_range(0..100) {
        0..60 => rng.random_range(8..2048),
        60..90 => rng.random_range(2048..32 * 1024),
        _ => rng.random_range(32 * 1024..256 * 1024),
    }
}

/// Sizes for streamed puts: big enough that the stream spans many buffers.
fn streamed_len(rng: &mut StdRng) -> u64 {
    if rng.random_bool(0.1) {
        rng.random_range(2 << 20..6 << 20)
    } else {
        rng.random_range(64 * 1024..1 << 20)
    }
}

fn random_compression(rng: &mut StdRng) -> Option<Compression> {
    match rng.random_range(0..5) {
        0 => Some(Compression::None),
        1 => Some(Compression::Zstd {
            level: rng.random_range(1..4),
        }),
        2 => Some(Compression::Auto { level: 3 }),
        _ => None,
    }
}

/// Small commit intervals half the time: a kill then lands between the commits of one call too.
fn random_commit_bytes(rng: &mut StdRng) -> Option<u64> {
    rng.random_bool(0.5)
        .then(|| rng.random_range(16 << 10..1 << 20))
}

/// Imports write through the page cache, straight to the device, or first one then the other.
fn random_cached_bytes(rng: &mut StdRng) -> Option<u64> {
    match rng.random_range(0..3) {
        0 => None,
        1 => Some(0),
        _ => Some(rng.random_range(1..256 << 10)),
    }
}

fn put_one(store: &Store, spec: &ObjectSpec) -> Result<Key> {
    store
        .put(&spec.bytes())
        .during(|| format!("put object seed {} ({} bytes)", spec.seed, spec.len))
}

fn put_streamed(store: &Store, spec: &ObjectSpec) -> Result<Key> {
    store
        .put_reader(&mut spec.reader())
        .during(|| format!("put_reader object seed {} ({} bytes)", spec.seed, spec.len))
}

/// The key the store returned must be the hash of what was written.
fn check_returned_key(store: &Store, key: &Key, spec: &ObjectSpec) -> Result<()> {
    let expected = store.config().hash.hash(&spec.bytes());
    if *key != expected {
        return Err(Error::Violation(format!(
            "store returned key {key} for object seed {} ({} bytes), which hashes to {expected}",
            spec.seed, spec.len
        )));
    }
    Ok(())
}

/// Puts `specs` in one batch and commits it (or drops it when `abort`). Checks that nothing
/// is visible before the commit.
fn put_batch(store: &Store, specs: &[ObjectSpec], abort: bool) -> Result<Vec<Key>> {
    let mut batch = store.batch().during(|| "start batch".to_string())?;
    let mut keys = Vec::with_capacity(specs.len());
    for spec in specs {
        let key = if spec.len > 64 * 1024 {
            batch.put_reader(&mut spec.reader())
        } else {
            batch.put(&spec.bytes())
        }
        .during(|| format!("batch put object seed {} ({} bytes)", spec.seed, spec.len))?;
        keys.push(key);
    }
    let visible: Vec<bool> = store
        .has_many(&keys)
        .during(|| "has_many on an uncommitted batch".to_string())?;
    if let Some(i) = visible.iter().position(|v| *v) {
        return Err(Error::Violation(format!(
            "batch object {} is visible before commit",
            keys[i]
        )));
    }
    if abort {
        drop(batch);
        return Ok(keys);
    }
    let committed = batch
        .commit()
        .during(|| format!("commit batch of {} objects", specs.len()))?;
    if committed != keys {
        return Err(Error::Violation(format!(
            "commit returned {} keys differing from the {} keys put returned",
            committed.len(),
            keys.len()
        )));
    }
    Ok(committed)
}

fn writer(store_path: &Path, seed: u64, count: u64, log_path: &Path) -> Result<()> {
    let store = open_store(store_path)?;
    let mut log = AckLog::create(log_path)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut written = 0u64;
    let mut own: Vec<(Key, ObjectSpec)> = Vec::new();
    while written < count {
        let acked: Vec<(Key, ObjectSpec)> = match rng.random_range(0..100) {
            0..45 => {
                let spec = random_spec(&mut rng);
                let key = put_one(&store, &spec)?;
                vec![(key, spec)]
            }
            45..70 => {
                let n = rng.random_range(2..=24).min(count - written).max(1);
                let specs: Vec<ObjectSpec> = (0..n).map(|_| random_spec(&mut rng)).collect();
                let abort = rng.random_bool(0.1);
                let keys = put_batch(&store, &specs, abort)?;
                if abort {
                    log.aborted(&keys)?;
                    let visible = store
                        .has_many(&keys)
                        .during(|| "has_many after dropping a batch".to_string())?;
                    if let Some(i) = visible.iter().position(|v| *v) {
                        return Err(Error::Violation(format!(
                            "dropped batch object {} is visible",
                            keys[i]
                        )));
                    }
                    continue;
                }
                keys.into_iter().zip(specs).collect()
            }
            70..85 => {
                let spec = streamed_spec(&mut rng);
                let key = put_streamed(&store, &spec)?;
                vec![(key, spec)]
            }
            _ => {
                let spec = ObjectSpec::shared(
                    rng.random_range(0..basin_torture::content::SHARED_POOL_OBJECTS),
                );
                let key = put_one(&store, &spec)?;
                vec![(key, spec)]
            }
        };
        for (key, spec) in &acked {
            check_returned_key(&store, key, spec)?;
        }
        log.ack(&acked)?;
        written += acked.len() as u64;
        own.extend(acked);
        // Read back one of our own objects now and then: it may have been packed meanwhile.
        if rng.random_bool(0.2) {
            if let Some((key, spec)) = own.choose(&mut rng) {
                let bytes = store
                    .get(key)
                    .during(|| format!("get own acknowledged object {key}"))?;
                check(store.config().hash, key, spec, &bytes)
                    .map_err(|detail| Error::WrongContent { key: *key, detail })?;
            }
        }
    }
    log.done()
}

/// Counts of what a reader saw, printed at the end.
#[derive(Default, Debug)]
struct ReadCounts {
    reads: u64,
    bytes: u64,
    raced_deletes: u64,
}

fn reader(store_path: &Path, seed: u64, count: u64, watch: &[PathBuf]) -> Result<()> {
    // Readers loop until the writers are done; on a shared 2-core machine they would take
    // the CPU from the writers and maintainers they are meant to race. Lower priority keeps
    // them reading whenever a core is free without starving the run.
    // SAFETY: nice() only changes this process's scheduling priority.
    unsafe {
        libc::nice(10);
    }
    let store = open_store(store_path)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ledger = Ledger::new();
    for path in watch {
        ledger.watch(path);
    }
    let mut counts = ReadCounts::default();
    loop {
        if counts.reads & 7 == 0 {
            ledger.refresh()?;
        }
        if counts.reads >= count && ledger.all_done() {
            break;
        }
        // Distinct keys: read_many promises one visit per found key.
        let mut candidates: Vec<Key> = (0..16)
            .filter_map(|_| ledger.acked_order.choose(&mut rng).copied())
            .filter(|k| ledger.must_exist(k))
            .collect();
        let mut distinct = BTreeSet::new();
        candidates.retain(|k| distinct.insert(*k));
        let Some(key) = candidates.first().copied() else {
            // Nothing acknowledged yet: let the writers run.
            std::thread::yield_now();
            ledger.refresh()?;
            continue;
        };
        let spec = ledger.acked[&key];
        counts.reads += 1;
        let outcome = read_checked(
            &store,
            &mut rng,
            &key,
            &spec,
            &candidates,
            &ledger,
            &mut counts,
        );
        if let Err(e) = outcome {
            // Not found is fine only when a delete of the key had begun by now.
            ledger.refresh()?;
            let explained = match &e {
                Error::Store {
                    source: basin_store::Error::NotFound { key: missing },
                    ..
                } => ledger.delete_begun(missing),
                _ => false,
            };
            if !explained {
                return Err(e);
            }
            counts.raced_deletes += 1;
        }
    }
    println!("reader done: {counts:?}");
    Ok(())
}

/// One random read of `key` (and a sample of `others`) through one read path, checked.
fn read_checked(
    store: &Store,
    rng: &mut StdRng,
    key: &Key,
    spec: &ObjectSpec,
    others: &[Key],
    ledger: &Ledger,
    counts: &mut ReadCounts,
) -> Result<()> {
    let hash = store.config().hash;
    let wrong = |key: &Key, detail: String| Error::WrongContent { key: *key, detail };
    match rng.random_range(0..6) {
        0 => {
            let bytes = store.get(key).during(|| format!("get {key}"))?;
            counts.bytes += bytes.len() as u64;
            check(hash, key, spec, &bytes).map_err(|d| wrong(key, format!("get: {d}")))?;
        }
        1 => {
            let mut reader = store
                .open_object(key)
                .during(|| format!("open_object {key}"))?;
            if reader.size() != spec.len {
                return Err(wrong(
                    key,
                    format!(
                        "open_object size {} but {} was written",
                        reader.size(),
                        spec.len
                    ),
                ));
            }
            let offset = rng.random_range(0..spec.len);
            let len = rng.random_range(0..=(spec.len - offset).min(100_000));
            reader
                .seek(SeekFrom::Start(offset))
                .at("seek object", key.to_hex())?;
            let mut part = vec![0u8; len as usize];
            reader
                .read_exact(&mut part)
                .at("read object", key.to_hex())?;
            spec.check_range(offset, &part)
                .map_err(|d| wrong(key, format!("open_object seek {offset}: {d}")))?;
            let mut rest = Vec::new();
            reader
                .seek(SeekFrom::Start(0))
                .at("seek object", key.to_hex())?;
            reader
                .read_to_end(&mut rest)
                .at("read object", key.to_hex())?;
            counts.bytes += rest.len() as u64 + len;
            check(hash, key, spec, &rest)
                .map_err(|d| wrong(key, format!("open_object read all: {d}")))?;
        }
        2 => {
            let offset = rng.random_range(0..spec.len);
            let len = rng.random_range(0..=(spec.len - offset));
            let part = store
                .read_range(key, offset, len)
                .during(|| format!("read_range {key} {offset}+{len}"))?;
            counts.bytes += part.len() as u64;
            if part.len() as u64 != len {
                return Err(wrong(
                    key,
                    format!("read_range {offset}+{len} returned {} bytes", part.len()),
                ));
            }
            spec.check_range(offset, &part)
                .map_err(|d| wrong(key, format!("read_range {offset}+{len}: {d}")))?;
        }
        3 => {
            let meta = store.meta(key).during(|| format!("meta {key}"))?;
            match meta {
                Some(meta) if meta.size == spec.len && meta.key == *key => {}
                Some(meta) => {
                    return Err(wrong(
                        key,
                        format!("meta {meta:?} but {} bytes were written", spec.len),
                    ))
                }
                None => {
                    return Err(Error::Store {
                        op: format!("meta {key}"),
                        source: basin_store::Error::NotFound { key: *key },
                    })
                }
            }
        }
        4 => {
            let found = store
                .has_many(others)
                .during(|| format!("has_many over {} keys", others.len()))?;
            if let Some(i) = found.iter().position(|f| !f) {
                return Err(Error::Store {
                    op: format!("has_many over {} keys (input order)", others.len()),
                    source: basin_store::Error::NotFound { key: others[i] },
                });
            }
        }
        _ => {
            let wanted: BTreeSet<Key> = others.iter().copied().collect();
            let mut seen = BTreeSet::new();
            let mut failure: Option<Error> = None;
            store
                .read_many(others, &mut |k, bytes| {
                    if failure.is_some() {
                        return Ok(());
                    }
                    if !seen.insert(k) || !wanted.contains(&k) {
                        failure = Some(wrong(
                            &k,
                            "read_many visited it twice or unasked".to_string(),
                        ));
                        return Ok(());
                    }
                    match bytes {
                        Ok(bytes) => {
                            counts.bytes += bytes.len() as u64;
                            if let Err(d) = check(hash, &k, &ledger.acked[&k], bytes) {
                                failure = Some(wrong(&k, format!("read_many: {d}")));
                            }
                        }
                        Err(e) => {
                            failure = Some(Error::Store {
                                op: format!("read_many visit {k}"),
                                source: e,
                            })
                        }
                    }
                    Ok(())
                })
                .during(|| format!("read_many over {} keys", others.len()))?;
            if let Some(e) = failure {
                return Err(e);
            }
            if seen != wanted {
                return Err(Error::Violation(format!(
                    "read_many visited {} of {} distinct keys",
                    seen.len(),
                    wanted.len()
                )));
            }
        }
    }
    Ok(())
}

/// Prints each phase a long operation enters, so a crash report can say where the kill landed.
struct PhasePrinter;

impl Progress for PhasePrinter {
    fn start(&self, phase: &str, _total: Option<u64>, _unit: Unit) {
        println!("phase {phase}");
    }
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}

fn lock(store: &Store) -> Result<Maintenance<'_>> {
    store
        .maintenance(LockWait::Block)
        .during(|| "take the maintenance lock".to_string())
}

fn random_selection(rng: &mut StdRng, known: &[Key]) -> PackSelection {
    match rng.random_range(0..10) {
        0..6 => PackSelection::All,
        6..8 => {
            let digits = rng.random_range(1..=2);
            let prefix: String = (0..digits)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect();
            PackSelection::Prefix(prefix)
        }
        _ => {
            let n = rng.random_range(1..=64).min(known.len());
            PackSelection::Keys(known.choose_multiple(rng, n).copied().collect())
        }
    }
}

fn random_repack_options(rng: &mut StdRng) -> RepackOptions {
    RepackOptions {
        all: rng.random_bool(0.3),
        garbage_ratio_min: *[0.0, 0.2, 0.5].choose(rng).expect("non-empty"),
        compression: random_compression(rng),
        bypass_page_cache: rng.random_bool(0.5),
        small_pack_bytes_max: rng.random_bool(0.3).then(|| {
            *[64 << 10, 1 << 20, u64::MAX]
                .choose(rng)
                .expect("non-empty")
        }),
        // Small commits: a repack of several commits, killed between them.
        commit_bytes: rng
            .random_bool(0.3)
            .then(|| *[16 << 10, 256 << 10].choose(rng).expect("non-empty")),
        // Rows staged into the index after every few records: killed with a staged
        // transaction open.
        stage_rows_min: rng
            .random_bool(0.5)
            .then(|| *[1, 16].choose(rng).expect("non-empty")),
    }
}

/// Deletes `keys` (objects this process wrote), logging before and after.
fn delete_logged(m: &Maintenance<'_>, log: &mut AckLog, keys: &[Key]) -> Result<()> {
    log.deleting(keys)?;
    let existed = m
        .delete(keys)
        .during(|| format!("delete {} keys", keys.len()))?;
    // Every key was acknowledged and not yet deleted, and only this process deletes it.
    let existed: BTreeSet<Key> = existed.into_iter().collect();
    if let Some(missing) = keys.iter().find(|k| !existed.contains(k)) {
        return Err(Error::Violation(format!(
            "delete says acknowledged, undeleted {missing} did not exist"
        )));
    }
    log.deleted(keys)
}

/// Validates while loose writers may be running. Their in-flight sandbox files are reported
/// by validate as leftovers (it cannot tell them from a dead writer's); those are expected
/// here and only here. Every other problem fails the run.
fn validate_while_writing(m: &Maintenance<'_>) -> Result<()> {
    let report = m.validate(&NoProgress).during(|| "validate".to_string())?;
    let problems: Vec<String> = report
        .problems
        .iter()
        .filter(|p| !matches!(p, Problem::SandboxLeftover { .. }))
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        return Err(Error::Violation(format!(
            "validate during the run found {} problems:\n  {}",
            problems.len(),
            problems
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        )));
    }
    Ok(())
}

fn maintainer(
    store_path: &Path,
    seed: u64,
    rounds: u64,
    log_path: &Path,
    watch: &[PathBuf],
    ops: &[MaintenanceOp],
) -> Result<()> {
    let store = open_store(store_path)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = AckLog::create(log_path)?;
    let mut ledger = Ledger::new();
    for path in watch {
        ledger.watch(path);
    }
    let mut live: Vec<Key> = Vec::new();
    let mut round = 0u64;
    loop {
        ledger.refresh()?;
        if round >= rounds && ledger.all_done() {
            break;
        }
        round += 1;
        if ops.contains(&MaintenanceOp::Delete) {
            // Objects of our own, so that deleting them cannot take anyone's acknowledged data.
            let specs: Vec<ObjectSpec> = (0..rng.random_range(4..24))
                .map(|_| random_spec(&mut rng))
                .collect();
            let keys = put_batch(&store, &specs, false)?;
            let acked: Vec<(Key, ObjectSpec)> = keys.iter().copied().zip(specs).collect();
            log.ack(&acked)?;
            live.extend(keys);
        }
        let mut order = ops.to_vec();
        order.shuffle(&mut rng);
        for step in order {
            let m = lock(&store)?;
            match step {
                MaintenanceOp::Pack => {
                    let mut known: Vec<Key> = ledger.acked_order.clone();
                    known.extend(&live);
                    let selection = random_selection(&mut rng, &known);
                    let opts = PackOptions {
                        compression: random_compression(&mut rng),
                        commit_bytes: random_commit_bytes(&mut rng),
                        cached_bytes: random_cached_bytes(&mut rng),
                    };
                    m.pack_loose(&selection, &opts, &NoProgress)
                        .during(|| format!("pack_loose {selection:?}"))?;
                }
                MaintenanceOp::Repack => {
                    let opts = random_repack_options(&mut rng);
                    m.repack(&opts, &NoProgress)
                        .during(|| format!("repack {opts:?}"))?;
                }
                MaintenanceOp::Delete => {
                    live.shuffle(&mut rng);
                    let n = rng.random_range(0..=live.len() / 2 + 1).min(live.len());
                    let doomed: Vec<Key> = live.drain(..n).collect();
                    delete_logged(&m, &mut log, &doomed)?;
                }
                MaintenanceOp::Clean => {
                    m.clean(&CleanOptions::default(), &NoProgress)
                        .during(|| "clean".to_string())?;
                }
                MaintenanceOp::Validate => validate_while_writing(&m)?,
            }
        }
    }
    println!(
        "maintainer done: {round} rounds, {} own objects live",
        live.len()
    );
    log.done()
}

/// Prints a line the crash test waits for; stdout is line buffered, so it leaves at once.
fn announce(text: &str) {
    let mut out = std::io::stdout().lock();
    // A closed pipe only means the test stopped listening; the kill is coming anyway.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn op(
    kind: OpKind,
    store_path: &Path,
    seed: u64,
    log_path: &Path,
    scratch: &Path,
    rounds: Option<u64>,
) -> Result<()> {
    let store = open_store(store_path)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = AckLog::create(log_path)?;
    std::fs::create_dir_all(scratch).at("create scratch folder", scratch)?;
    let name = kind.name();
    // Objects this process wrote and has not deleted (the only ones it may delete).
    let mut live: Vec<(Key, ObjectSpec)> = Vec::new();
    let mut round = 0u64;
    while rounds.is_none_or(|r| round < r) {
        round += 1;
        match kind {
            OpKind::Put => {
                // One put call is the operation: a kill inside it hits the streaming, the
                // fsyncs or the rename of that one object.
                let spec = if rng.random_bool(0.25) {
                    streamed_spec(&mut rng)
                } else {
                    random_spec(&mut rng)
                };
                announce(&format!("begin {name}"));
                let started = Instant::now();
                let key = if spec.len > 64 * 1024 {
                    put_streamed(&store, &spec)?
                } else {
                    put_one(&store, &spec)?
                };
                announce(&format!("end {name} {}", started.elapsed().as_micros()));
                log.ack(&[(key, spec)])?;
            }
            OpKind::Batch => {
                let specs: Vec<ObjectSpec> = (0..rng.random_range(20..150))
                    .map(|_| random_spec(&mut rng))
                    .collect();
                let abort = rng.random_bool(0.1);
                announce(&format!("begin {name}"));
                let started = Instant::now();
                let keys = put_batch(&store, &specs, abort)?;
                announce(&format!("end {name} {}", started.elapsed().as_micros()));
                if abort {
                    log.aborted(&keys)?;
                } else {
                    let acked: Vec<(Key, ObjectSpec)> = keys.into_iter().zip(specs).collect();
                    log.ack(&acked)?;
                }
            }
            OpKind::Pack => {
                let specs: Vec<ObjectSpec> = (0..rng.random_range(50..200))
                    .map(|_| random_spec(&mut rng))
                    .collect();
                let keys = put_batch(&store, &specs, false)?;
                log.ack(
                    &keys
                        .iter()
                        .copied()
                        .zip(specs.iter().copied())
                        .collect::<Vec<_>>(),
                )?;
                let m = lock(&store)?;
                let selection = random_selection(&mut rng, &keys);
                let opts = PackOptions {
                    compression: random_compression(&mut rng),
                    commit_bytes: random_commit_bytes(&mut rng),
                    cached_bytes: random_cached_bytes(&mut rng),
                };
                announce(&format!("begin {name}"));
                let started = Instant::now();
                m.pack_loose(&selection, &opts, &PhasePrinter)
                    .during(|| format!("pack_loose {selection:?}"))?;
                announce(&format!("end {name} {}", started.elapsed().as_micros()));
            }
            OpKind::Import => {
                let n = rng.random_range(30..200);
                let mut specs: Vec<ObjectSpec> = (0..n).map(|_| random_spec(&mut rng)).collect();
                // Some content twice, some already in the store: exercises dedup.
                for _ in 0..n / 10 {
                    if let Some(spec) = specs.choose(&mut rng).copied() {
                        specs.push(spec);
                    }
                    if let Some((_, spec)) = live.choose(&mut rng).copied() {
                        specs.push(spec);
                    }
                }
                specs.shuffle(&mut rng);
                let mut sources = Vec::with_capacity(specs.len());
                let mut files = Vec::new();
                for (i, spec) in specs.iter().enumerate() {
                    sources.push(match rng.random_range(0..3) {
                        0 => Source::Bytes(spec.bytes()),
                        1 => Source::Reader {
                            reader: Box::new(spec.reader()),
                            size_hint: spec.len,
                        },
                        _ => {
                            let path = scratch.join(format!("import-{round}-{i}"));
                            std::fs::write(&path, spec.bytes()).at("write import source", &path)?;
                            files.push(path.clone());
                            Source::File(path)
                        }
                    });
                }
                let m = lock(&store)?;
                let opts = PackOptions {
                    compression: random_compression(&mut rng),
                    commit_bytes: random_commit_bytes(&mut rng),
                    cached_bytes: random_cached_bytes(&mut rng),
                };
                announce(&format!("begin {name}"));
                let started = Instant::now();
                let keys = m
                    .write_packed(&mut sources.into_iter().map(Ok), &opts, &PhasePrinter)
                    .during(|| format!("write_packed {} sources", specs.len()))?;
                announce(&format!("end {name} {}", started.elapsed().as_micros()));
                if keys.len() != specs.len() {
                    return Err(Error::Violation(format!(
                        "write_packed returned {} keys for {} sources",
                        keys.len(),
                        specs.len()
                    )));
                }
                for (key, spec) in keys.iter().zip(&specs) {
                    check_returned_key(&store, key, spec)?;
                }
                let acked: Vec<(Key, ObjectSpec)> = keys.into_iter().zip(specs).collect();
                log.ack(&acked)?;
                live.extend(acked);
                for path in files {
                    std::fs::remove_file(&path).at("remove import source", &path)?;
                }
            }
            OpKind::Repack | OpKind::Delete => {
                let specs: Vec<ObjectSpec> = (0..rng.random_range(50..150))
                    .map(|_| random_spec(&mut rng))
                    .collect();
                let keys = put_batch(&store, &specs, false)?;
                let acked: Vec<(Key, ObjectSpec)> = keys.iter().copied().zip(specs).collect();
                log.ack(&acked)?;
                live.extend(acked);
                let m = lock(&store)?;
                if kind == OpKind::Repack || rng.random_bool(0.7) {
                    m.pack_loose(&PackSelection::All, &PackOptions::default(), &NoProgress)
                        .during(|| "pack_loose all".to_string())?;
                }
                live.shuffle(&mut rng);
                let n = rng
                    .random_range(live.len() / 4..=live.len() / 2 + 1)
                    .min(live.len());
                let doomed: Vec<Key> = live.drain(..n).map(|(k, _)| k).collect();
                if kind == OpKind::Delete {
                    announce(&format!("begin {name}"));
                    let started = Instant::now();
                    delete_logged(&m, &mut log, &doomed)?;
                    announce(&format!("end {name} {}", started.elapsed().as_micros()));
                } else {
                    delete_logged(&m, &mut log, &doomed)?;
                    let opts = random_repack_options(&mut rng);
                    announce(&format!("begin {name}"));
                    let started = Instant::now();
                    m.repack(&opts, &PhasePrinter)
                        .during(|| format!("repack {opts:?}"))?;
                    announce(&format!("end {name} {}", started.elapsed().as_micros()));
                }
            }
        }
    }
    log.done()
}
