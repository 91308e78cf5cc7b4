//! `basin-bench`: the basin side of the object-store benchmark against disk-objectstore.
//!
//! It runs, in-process and with durability on, the steps `bench/store/dos_workload.py` runs on
//! disk-objectstore, on the same objects and in the same random orders (read from the workload file
//! that script's `gen` writes), and prints JSON timings that `bench/store/report.py` turns into the
//! comparison table. `bench/store/run.sh` is the one command that runs everything.
//!
//! Sub-commands, each meant to run in its own process (so peak RSS is per scenario):
//! - `workload`: loose writes (WriteBatch, plus single durable puts on a subset, extrapolated), random
//!   loose reads, pack_loose, random packed reads, read_many, has_many, list, write_packed, validate,
//!   delete 10 %, repack --all, clean with vacuum; index bytes per object; and the floor under
//!   validate: `limit_hash_objects`, the same objects hashed in memory on every core, plus
//!   `limit_read_packs`, the bytes of the packs read from the page cache on every core.
//! - `million`: many small objects straight to packs and read back in bulk.
//! - `big`: one large object through `put_reader` and a streamed read, with peak RSS.

mod data;
mod pattern;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use basin_store::{
    CleanOptions, Compression, HashAlgorithm, InitOptions, Key, LockWait, NoProgress, PackOptions,
    PackSelection, RepackOptions, Source, Stats, Store,
};
use clap::{Parser, Subcommand};
use serde_json::{json, Map, Value};

use crate::data::Workload;
use crate::pattern::PatternReader;

type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Positions of the lists in the workload file (see dos_workload.py).
const LIST_A2_ORDER: usize = 0;
const LIST_C_ORDER: usize = 1;
const LIST_C2_ORDER: usize = 2;
const LIST_PROBE_ORDER: usize = 3;
const LIST_DELETE_ORDER: usize = 4;

#[derive(Parser)]
#[command(about = "basin side of the object-store benchmark (see bench/store/run.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// Store folder; must not exist (it is created, and removed at the end unless --keep).
    #[arg(long)]
    dir: PathBuf,
    /// Hash algorithm of the store.
    #[arg(long, default_value = "blake3")]
    hash: String,
    /// Write the JSON result here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Keep the store folder afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Subcommand)]
enum Command {
    /// The disk-objectstore workload (20k objects of 1–8 KiB by default).
    Workload {
        #[command(flatten)]
        store: StoreArgs,
        /// Workload file from `dos_workload.py gen`.
        #[arg(long)]
        data: PathBuf,
        /// Objects per WriteBatch commit in step a; 0 = all objects in one batch.
        #[arg(long, default_value_t = 0)]
        batch_objects: usize,
        /// Objects written with single durable `put` calls (timed, then extrapolated to N).
        #[arg(long, default_value_t = 500)]
        single_puts: usize,
    },
    /// Many small objects direct to pack, then read back with read_many.
    Million {
        #[command(flatten)]
        store: StoreArgs,
        /// Million-object workload file from `dos_workload.py gen --million-out`.
        #[arg(long)]
        data: PathBuf,
    },
    /// One large object: put_reader, then a streamed read through open_object; reports peak RSS.
    Big {
        #[command(flatten)]
        store: StoreArgs,
        /// Object size in MiB (4096 = 4 GiB).
        #[arg(long, default_value_t = 4096)]
        size_mib: u64,
    },
}

fn main() {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Workload {
            store,
            data,
            batch_objects,
            single_puts,
        } => run_scenario(store, |s| workload(s, data, *batch_objects, *single_puts)),
        Command::Million { store, data } => run_scenario(store, |s| million(s, data)),
        Command::Big { store, size_mib } => run_scenario(store, |s| big(s, *size_mib)),
    };
    if let Err(err) = outcome {
        eprintln!("basin-bench: {err}");
        std::process::exit(1);
    }
}

/// Creates the store, runs one scenario, adds the common fields and writes the JSON.
fn run_scenario(
    args: &StoreArgs,
    scenario: impl FnOnce(&Store) -> BenchResult<Map<String, Value>>,
) -> BenchResult<()> {
    let hash =
        HashAlgorithm::from_str(&args.hash).map_err(|e| format!("--hash {}: {e}", args.hash))?;
    // Raw records as disk-objectstore's `compress=False`; durability is not optional in basin.
    let opts = InitOptions {
        hash,
        compression: Compression::None,
        ..InitOptions::default()
    };
    let store = Store::init(&args.dir, &opts)?;
    let mut result = scenario(&store)?;
    result.insert("tool".into(), json!("basin"));
    result.insert("hash".into(), json!(args.hash));
    result.insert("maxrss_mb".into(), json!(peak_rss_mib()));
    drop(store);
    if !args.keep {
        std::fs::remove_dir_all(&args.dir)
            .map_err(|e| format!("removing {}: {e}", args.dir.display()))?;
    }
    let text = serde_json::to_string_pretty(&Value::Object(result))?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{text}\n"))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    println!("{text}");
    Ok(())
}

/// Wall times per step, printed to stderr as they happen.
#[derive(Default)]
struct Steps {
    steps: Map<String, Value>,
}

impl Steps {
    fn time<T>(
        &mut self,
        name: &str,
        objects: u64,
        bytes: u64,
        f: impl FnOnce() -> BenchResult<T>,
    ) -> BenchResult<T> {
        let clock_start = monotonic_seconds();
        let cpu_start = process_cpu_seconds();
        let start = Instant::now();
        let out = f().map_err(|e| format!("step {name}: {e}"))?;
        let seconds = start.elapsed().as_secs_f64();
        let cpu_seconds = process_cpu_seconds() - cpu_start;
        if std::env::var_os("BASIN_BENCH_STEP_CLOCK").is_some() {
            // For `perf record -k CLOCK_MONOTONIC` then `perf report --time START,END`: the
            // profile of one step.
            eprintln!(
                "  step-clock {name} {clock_start:.6},{:.6}",
                monotonic_seconds()
            );
        }
        self.record(name, seconds, objects, bytes);
        eprintln!("  basin {name:24} {cpu_seconds:9.3} s CPU (all threads)");
        if let Some(Value::Object(step)) = self.steps.get_mut(name) {
            step.insert("cpu_seconds".into(), json!(cpu_seconds));
        }
        Ok(out)
    }

    fn record(&mut self, name: &str, seconds: f64, objects: u64, bytes: u64) {
        eprintln!("  basin {name:24} {seconds:9.3} s");
        self.steps.insert(
            name.into(),
            json!({"seconds": seconds, "objects": objects, "bytes": bytes}),
        );
    }
}

/// CPU time of every thread of this process so far, in seconds: on a machine of N cores a step
/// takes at least its CPU time / N of wall time, whatever its parallelism. Work the kernel does
/// on its own threads (writeback) is not in it.
fn process_cpu_seconds() -> f64 {
    clock_seconds(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CLOCK_MONOTONIC in seconds, the clock `perf record -k CLOCK_MONOTONIC` stamps samples with.
fn monotonic_seconds() -> f64 {
    clock_seconds(libc::CLOCK_MONOTONIC)
}

fn clock_seconds(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec, and both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> BenchResult<()> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

fn stats_json(stats: &Stats) -> Value {
    json!({
        "objects": stats.packed_objects + stats.loose_objects,
        "loose_objects": stats.loose_objects,
        "packed_objects": stats.packed_objects,
        "pack_files": stats.pack_files,
        "pack_file_bytes": stats.pack_file_bytes,
        "index_bytes": stats.index_bytes,
        "index_bytes_per_object": stats.index_bytes_per_object,
    })
}

/// Bytes of every file whose name starts with the index file name (the SQLite file, WAL and
/// shared memory), measured independently of `Stats` as a cross-check.
fn index_file_bytes(dir: &Path) -> BenchResult<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(basin_store::INDEX_FILE)
        {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

fn pack_options() -> PackOptions {
    PackOptions {
        compression: Some(Compression::None),
        commit_bytes: None,
        cached_bytes: None,
    }
}

fn workload(
    store: &Store,
    data: &Path,
    batch_objects: usize,
    single_puts: usize,
) -> BenchResult<Map<String, Value>> {
    let w = Workload::load(data)?;
    ensure(w.set_count() == 2 && w.list_count() == 5, || {
        "workload file needs 2 sets and 5 lists".into()
    })?;
    let n = w.set_len(0);
    let payload = w.set_bytes(0);
    let payload2 = w.set_bytes(1);
    let batch_objects = if batch_objects == 0 {
        n.max(1)
    } else {
        batch_objects
    };
    let mut t = Steps::default();

    // a. loose writes, one durability round per batch
    let keys = t.time("a_loose_write", n as u64, payload, || {
        let mut keys = Vec::with_capacity(n);
        let objects: Vec<&[u8]> = w.objects(0).collect();
        for chunk in objects.chunks(batch_objects) {
            let mut batch = store.batch()?;
            for obj in chunk {
                batch.put(obj)?;
            }
            keys.extend(batch.commit()?);
        }
        Ok(keys)
    })?;
    ensure(keys.len() == n, || {
        format!("batch commit returned {} keys for {n} objects", keys.len())
    })?;

    // a1. single durable puts on a subset, in a second store so the main one holds exactly N objects
    let single = single_puts.min(n);
    if single > 0 {
        let side_dir = store.path().with_extension("single-puts");
        let side = Store::init(
            &side_dir,
            &InitOptions {
                hash: store.config().hash,
                ..InitOptions::default()
            },
        )?;
        let start = Instant::now();
        for obj in w.objects(0).take(single) {
            side.put(obj)?;
        }
        let seconds = start.elapsed().as_secs_f64();
        let bytes: u64 = w.objects(0).take(single).map(|o| o.len() as u64).sum();
        t.record("a1_single_put_subset", seconds, single as u64, bytes);
        t.record(
            "a1_single_put_extrapolated",
            seconds * n as f64 / single as f64,
            n as u64,
            payload,
        );
        drop(side);
        std::fs::remove_dir_all(&side_dir)?;
    }

    // Single reads are checked against a CRC-32 of each object taken before any timer starts:
    // the CRC reads only the bytes just returned (in cache), where comparing with the
    // workload's copy read that too, scattered over 92 MB in random order, and took a third of
    // a packed read step. git's anchor (cat-file) is timed without any check. Bulk reads come
    // in pack order, which is the copy's order: comparing bytes stays cheaper there.
    let crcs: Vec<u32> = w.objects(0).map(crc32fast::hash).collect();
    let read_back_right =
        |i: usize, got: &[u8]| got.len() == w.object(0, i).len() && crc32fast::hash(got) == crcs[i];
    let read_each = |order: &[u32]| -> BenchResult<()> {
        for &i in order {
            let got = store.get(&keys[i as usize])?;
            ensure(read_back_right(i as usize, &got), || {
                format!("object {i} read back wrong")
            })?;
        }
        Ok(())
    };
    t.time("a2_read_loose", n as u64, payload, || {
        read_each(w.list(LIST_A2_ORDER))
    })?;

    // b. pack every loose object; basin removes the loose copies as each pack is committed
    t.time("b_pack", n as u64, payload, || {
        let m = store.maintenance(LockWait::Fail)?;
        Ok(m.pack_loose(&PackSelection::All, &pack_options(), &NoProgress)?)
    })?;
    let stats = store.stats()?;
    if stats.loose_objects != 0 {
        // Only if pack_loose left loose copies behind: then removing them is a separate step, as in dos.
        t.time("b2_clean", n as u64, 0, || {
            let m = store.maintenance(LockWait::Fail)?;
            Ok(m.clean(&CleanOptions::default(), &NoProgress)?)
        })?;
    }
    let stats = store.stats()?;
    ensure(
        stats.loose_objects == 0 && stats.packed_objects == n as u64,
        || {
            format!(
                "after packing: {} loose, {} packed, want 0 and {n}",
                stats.loose_objects, stats.packed_objects
            )
        },
    )?;

    t.time("c_read_packed", n as u64, payload, || {
        read_each(w.list(LIST_C_ORDER))
    })?;

    let position: HashMap<Key, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let bulk_keys: Vec<Key> = w
        .list(LIST_C2_ORDER)
        .iter()
        .map(|&i| keys[i as usize])
        .collect();
    t.time("c2_read_many", n as u64, payload, || {
        let mut visited = 0usize;
        store.read_many(&bulk_keys, &mut |key, bytes| {
            let bytes = bytes?;
            visited += 1;
            match position.get(&key) {
                Some(&i) if bytes == w.object(0, i) => Ok(()),
                _ => Err(basin_store::Error::InvalidArgument(format!(
                    "read_many returned wrong bytes for {key}"
                ))),
            }
        })?;
        ensure(visited == n, || {
            format!("read_many visited {visited} of {n}")
        })
    })?;

    let probe: Vec<Key> = w
        .list(LIST_PROBE_ORDER)
        .iter()
        .map(|&i| {
            let i = i as usize;
            if i < n {
                Ok(keys[i])
            } else {
                Key::from_str(&format!("{:064x}", i - n))
            }
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unknown probe key: {e}"))?;
    t.time("c3_has_many", probe.len() as u64, 0, || {
        let found = store.has_many(&probe)?.into_iter().filter(|&f| f).count();
        ensure(found == n, || format!("has_many found {found} of {n}"))
    })?;

    t.time("c4_list", n as u64, 0, || {
        let listed = store.list()?.len();
        ensure(listed == n, || format!("list returned {listed} of {n}"))
    })?;

    // d. direct-to-pack; the sources are built before the clock starts, as dos gets a ready list
    let sources: Vec<Source> = w.objects(1).map(|o| Source::Bytes(o.to_vec())).collect();
    let keys2 = t.time("d_write_packed", n as u64, payload2, || {
        let m = store.maintenance(LockWait::Fail)?;
        let mut iter = sources.into_iter().map(Ok);
        Ok(m.write_packed(&mut iter, &pack_options(), &NoProgress)?)
    })?;
    ensure(keys2.len() == w.set_len(1), || {
        format!("write_packed returned {} keys", keys2.len())
    })?;
    let stats_after_d = store.stats()?;

    t.time("e_validate", 2 * n as u64, payload + payload2, || {
        let m = store.maintenance(LockWait::Fail)?;
        let report = m.validate(&NoProgress)?;
        ensure(report.is_ok(), || {
            format!("validate found {} problems", report.problems.len())
        })
    })?;

    // The floor under e: hashing the same objects, already in memory, and reading the bytes of
    // the packs that hold them from the page cache, each on every core.
    let limit_hash = limit_hash_objects(&w, store.config().hash, &[&keys, &keys2])?;
    let limit_read = limit_read_packs(store.path())?;

    let all_key = |i: usize| if i < n { keys[i] } else { keys2[i - n] };
    let all_object = |i: usize| {
        if i < n {
            w.object(0, i)
        } else {
            w.object(1, i - n)
        }
    };
    let doomed_idx = w.list(LIST_DELETE_ORDER);
    let doomed: Vec<Key> = doomed_idx.iter().map(|&i| all_key(i as usize)).collect();
    t.time("f1_delete", doomed.len() as u64, 0, || {
        let m = store.maintenance(LockWait::Fail)?;
        let deleted = m.delete(&doomed)?.len();
        ensure(deleted == doomed.len(), || {
            format!("delete removed {deleted} of {}", doomed.len())
        })
    })?;
    let mut is_doomed = vec![false; 2 * n];
    for &i in doomed_idx {
        is_doomed[i as usize] = true;
    }
    let survivors: Vec<usize> = (0..2 * n).filter(|&i| !is_doomed[i]).collect();
    let remaining_bytes: u64 = survivors.iter().map(|&i| all_object(i).len() as u64).sum();
    t.time("f2_repack", survivors.len() as u64, remaining_bytes, || {
        let m = store.maintenance(LockWait::Fail)?;
        let opts = RepackOptions {
            all: true,
            ..RepackOptions::default()
        };
        Ok(m.repack(&opts, &NoProgress)?)
    })?;
    t.time("f3_clean_vacuum", survivors.len() as u64, 0, || {
        let m = store.maintenance(LockWait::Fail)?;
        let opts = CleanOptions {
            vacuum: true,
            ..CleanOptions::default()
        };
        Ok(m.clean(&opts, &NoProgress)?)
    })?;
    for &i in survivors.iter().take(200) {
        ensure(store.get(&all_key(i))? == all_object(i), || {
            format!("object {i} wrong after repack")
        })?;
    }
    for key in doomed.iter().take(200) {
        ensure(!store.has(key)?, || {
            format!("deleted object {key} still present")
        })?;
    }
    let stats_end = store.stats()?;
    ensure(
        stats_end.packed_objects + stats_end.loose_objects == survivors.len() as u64,
        || {
            format!(
                "{} objects at the end, want {}",
                stats_end.packed_objects + stats_end.loose_objects,
                survivors.len()
            )
        },
    )?;

    let mut out = Map::new();
    out.insert("steps".into(), Value::Object(t.steps));
    let mut sizes = stats_json(&stats_end);
    sizes["index_file_bytes"] = json!(index_file_bytes(store.path())?);
    out.insert("sizes".into(), sizes);
    out.insert("sizes_after_d".into(), stats_json(&stats_after_d));
    out.insert("limit_hash_objects".into(), limit_hash);
    out.insert("limit_read_packs".into(), limit_read);
    out.insert("batch_objects".into(), json!(batch_objects));
    out.insert("single_puts".into(), json!(single));
    Ok(out)
}

/// Objects a hashing thread takes from the shared queue at a time, and hashes together
/// (`HashAlgorithm::hash_all`, the fastest way the store has to hash many small objects).
const LIMIT_HASH_CLAIM_OBJECTS: usize = 128;

/// Seconds to hash every object of the workload's sets (in memory, no I/O) with all cores, each
/// object hashed on its own as `validate` must: the floor under the validate step. Every digest
/// is checked against the key the store returned for the object.
fn limit_hash_objects(w: &Workload, hash: HashAlgorithm, keys: &[&[Key]]) -> BenchResult<Value> {
    let objects: Vec<(&[u8], Key)> = (0..keys.len())
        .flat_map(|set| w.objects(set).zip(keys[set].iter().copied()))
        .collect();
    let bytes: u64 = objects.iter().map(|(o, _)| o.len() as u64).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let wrong: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut wrong = 0;
                    loop {
                        let at = next.fetch_add(
                            LIMIT_HASH_CLAIM_OBJECTS,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        let Some(claim) =
                            objects.get(at..(at + LIMIT_HASH_CLAIM_OBJECTS).min(objects.len()))
                        else {
                            break;
                        };
                        let contents: Vec<&[u8]> = claim.iter().map(|(o, _)| *o).collect();
                        wrong += hash
                            .hash_all(&contents)
                            .into_iter()
                            .zip(claim)
                            .filter(|(actual, (_, k))| actual != k)
                            .count();
                    }
                    wrong
                })
            })
            .collect();
        // A panicked worker counts as all wrong.
        workers
            .into_iter()
            .map(|h| h.join().unwrap_or(usize::MAX))
            .fold(0, usize::saturating_add)
    });
    let seconds = start.elapsed().as_secs_f64();
    ensure(wrong == 0, || {
        format!("hashing floor: {wrong} objects hashed to another key")
    })?;
    eprintln!(
        "  basin {:24} {seconds:9.3} s  (floor of e, {threads} threads)",
        "limit_hash_objects"
    );
    Ok(json!({"seconds": seconds, "objects": objects.len(), "bytes": bytes, "threads": threads}))
}

/// Bytes a reading thread takes from the shared queue at a time, as one `pread`.
const LIMIT_READ_CLAIM_BYTES: u64 = 1 << 20;

/// Reads every pack file of the store whole, from the page cache, on every core: the other half
/// of what validate cannot skip (its bytes have to come out of the page cache to be hashed).
fn limit_read_packs(root: &Path) -> BenchResult<Value> {
    use std::os::unix::fs::FileExt;
    let mut files = Vec::new();
    for e in std::fs::read_dir(root.join("packs"))? {
        let path = e?.path();
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        files.push((file, len));
    }
    let claims: Vec<(usize, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(i, (_, len))| {
            (0..len.div_ceil(LIMIT_READ_CLAIM_BYTES)).map(move |c| (i, c * LIMIT_READ_CLAIM_BYTES))
        })
        .collect();
    let bytes: u64 = files.iter().map(|(_, len)| len).sum();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    let read: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> std::io::Result<u64> {
                    let mut buf = vec![0u8; LIMIT_READ_CLAIM_BYTES as usize];
                    let mut read = 0;
                    while let Some(&(i, at)) =
                        claims.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
                    {
                        let (file, len) = &files[i];
                        let n = (len - at).min(LIMIT_READ_CLAIM_BYTES) as usize;
                        file.read_exact_at(&mut buf[..n], at)?;
                        read += n as u64;
                    }
                    Ok(read)
                })
            })
            .collect();
        // A failed or panicked worker counts as nothing read.
        workers
            .into_iter()
            .map(|h| h.join().ok().and_then(Result::ok).unwrap_or(0))
            .sum()
    });
    let seconds = start.elapsed().as_secs_f64();
    ensure(read == bytes, || {
        format!("reading floor: read {read} of the packs' {bytes} bytes")
    })?;
    eprintln!(
        "  basin {:24} {seconds:9.3} s  (floor of e, {threads} threads)",
        "limit_read_packs"
    );
    Ok(json!({"seconds": seconds, "bytes": bytes, "threads": threads}))
}

fn million(store: &Store, data: &Path) -> BenchResult<Map<String, Value>> {
    let w = Workload::load(data)?;
    ensure(w.set_count() == 1 && w.list_count() == 1, || {
        "million file needs 1 set and 1 list".into()
    })?;
    let n = w.set_len(0);
    let payload = w.set_bytes(0);
    let mut t = Steps::default();
    let sources: Vec<Source> = w.objects(0).map(|o| Source::Bytes(o.to_vec())).collect();
    let keys = t.time("m1_million_write_packed", n as u64, payload, || {
        let m = store.maintenance(LockWait::Fail)?;
        let mut iter = sources.into_iter().map(Ok);
        Ok(m.write_packed(&mut iter, &pack_options(), &NoProgress)?)
    })?;
    ensure(keys.len() == n, || {
        format!("write_packed returned {} keys for {n}", keys.len())
    })?;
    // Small objects repeat (the empty one, one-byte ones), so expected bytes are looked up per key.
    let position: HashMap<Key, usize> = keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let wanted: Vec<Key> = w.list(0).iter().map(|&i| keys[i as usize]).collect();
    let read_back = || -> BenchResult<()> {
        let mut visited = 0usize;
        store.read_many(&wanted, &mut |key, bytes| {
            let bytes = bytes?;
            visited += 1;
            match position.get(&key) {
                Some(&i) if bytes == w.object(0, i) => Ok(()),
                _ => Err(basin_store::Error::InvalidArgument(format!(
                    "read_many returned wrong bytes for {key}"
                ))),
            }
        })?;
        ensure(visited == position.len(), || {
            format!("read_many visited {visited} of {} distinct", position.len())
        })
    };
    t.time("m2_million_read_many", n as u64, payload, read_back)?;
    // The same read-back once the packs have left the page cache (as after a reboot, or once
    // other files pushed them out): what a backup or an export of a store at rest reads.
    drop_packs_from_page_cache(store.path())?;
    t.time(
        "m2c_million_read_many_uncached",
        n as u64,
        payload,
        read_back,
    )?;
    let before = store.stats()?;
    // The index after bulk random-order inserts, then compacted by clean, as a user would.
    t.time("m3_million_clean", n as u64, 0, || {
        let m = store.maintenance(LockWait::Fail)?;
        m.clean(&CleanOptions::default(), &NoProgress)?;
        Ok(())
    })?;
    let stats = store.stats()?;
    let mut out = Map::new();
    out.insert("steps".into(), Value::Object(t.steps));
    let mut sizes = stats_json(&stats);
    sizes["index_file_bytes"] = json!(index_file_bytes(store.path())?);
    sizes["index_bytes_per_object_before_clean"] = json!(before.index_bytes_per_object);
    out.insert("sizes".into(), sizes);
    Ok(out)
}

/// Asks the kernel to drop the cached pages of every pack of the store at `root` (they are
/// clean: the packs were synced), as the disk-objectstore side does with its packs.
fn drop_packs_from_page_cache(root: &Path) -> BenchResult<()> {
    use std::os::fd::AsRawFd;
    for e in std::fs::read_dir(root.join("packs"))? {
        let file = std::fs::File::open(e?.path())?;
        file.sync_all()?;
        // SAFETY: plain syscall on an open descriptor; it changes no byte of the file.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        ensure(rc == 0, || format!("posix_fadvise(DONTNEED) failed: {rc}"))?;
    }
    Ok(())
}

fn big(store: &Store, size_mib: u64) -> BenchResult<Map<String, Value>> {
    let size_bytes = size_mib << 20;
    let mut t = Steps::default();
    let key = t.time("big_put_reader", 1, size_bytes, || {
        let mut reader = PatternReader::new(size_bytes);
        Ok(store.put_reader(&mut reader)?)
    })?;
    let rss_after_put = peak_rss_mib();
    t.time("big_streamed_read", 1, size_bytes, || {
        let mut reader = store.open_object(&key)?;
        let expected = PatternReader::new(size_bytes);
        let mut buf = vec![0u8; 1 << 20];
        let mut want = vec![0u8; 1 << 20];
        let mut pos = 0u64;
        loop {
            let got = reader.read(&mut buf)?;
            if got == 0 {
                break;
            }
            expected.fill_at(pos, &mut want[..got]);
            ensure(buf[..got] == want[..got], || {
                format!("big object differs near byte {pos}")
            })?;
            pos += got as u64;
        }
        ensure(pos == size_bytes, || {
            format!("big object read {pos} of {size_bytes} bytes")
        })
    })?;
    let mut out = Map::new();
    out.insert("steps".into(), Value::Object(t.steps));
    out.insert("size_bytes".into(), json!(size_bytes));
    out.insert("maxrss_after_put_mb".into(), json!(rss_after_put));
    Ok(out)
}

/// Peak resident set size of this process so far, in MiB (getrusage reports KiB on Linux).
fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer is always accepted.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}
