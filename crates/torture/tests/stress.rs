//! Multi-process stress: 4 writer processes, 2 readers, a packer and a maintainer (repack,
//! delete of its own objects, clean, validate, pack) on one store at once, bounded by object
//! and round counts. Every read any process makes is checked byte for byte; at the end every
//! acknowledged, undeleted object is readable and correct and validate is clean.
//!
//! The seed is printed; `BASIN_TORTURE_SEED=<seed>` replays the same objects and choices (the
//! interleaving of processes is up to the OS).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use basin_torture::{derive_seed, run_seed};
use rand::rngs::StdRng;
use rand::SeedableRng;

use common::{check_store, init_store, WORKER};

const WRITERS: u64 = 4;
const OBJECTS_PER_WRITER: u64 = 300;
const READERS: u64 = 2;
const READS_PER_READER: u64 = 1500;
const MAINTAINER_ROUNDS_MIN: u64 = 8;
const PACKER_ROUNDS_MIN: u64 = 10;

struct Worker {
    name: String,
    child: Option<Child>,
    output: PathBuf,
}

impl Worker {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Worker {
        let output = dir.join(format!("{name}.out"));
        let out = File::create(&output).expect("create worker output file");
        let err = out.try_clone().expect("clone output file");
        let child = Command::new(WORKER)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {WORKER}: {e}"));
        Worker {
            name: name.to_string(),
            child: Some(child),
            output,
        }
    }

    /// Waits for the process; the failure text when it did not exit cleanly.
    fn wait(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = child.wait().expect("wait for worker");
        if status.success() {
            return Ok(());
        }
        let output = std::fs::read_to_string(&self.output).unwrap_or_default();
        Err(format!(
            "{} exited with {status}:\n{}",
            self.name,
            tail(&output, 40)
        ))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only our own children, by handle; they may have exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[test]
fn writers_readers_packer_and_maintainer_share_one_store() {
    let seed = run_seed();
    println!("stress seed = {seed} (replay with BASIN_TORTURE_SEED={seed})");
    let started = Instant::now();
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let store_dir = dir.join("store");
    let mut rng = StdRng::seed_from_u64(seed);
    drop(init_store(&store_dir, &mut rng));
    let store = store_dir.display().to_string();

    let writer_logs: Vec<PathBuf> = (0..WRITERS)
        .map(|i| dir.join(format!("writer-{i}.log")))
        .collect();
    let maintainer_log = dir.join("maintainer.log");
    let packer_log = dir.join("packer.log");

    // Spawn order is wait order: each process only waits for those before it.
    let mut workers = Vec::new();
    for (i, log) in writer_logs.iter().enumerate() {
        let mut args = strings(&["writer", "--store", &store]);
        args.extend(strings(&[
            "--seed",
            &derive_seed(seed, i as u64).to_string(),
        ]));
        args.extend(strings(&["--count", &OBJECTS_PER_WRITER.to_string()]));
        args.extend(strings(&["--log", &log.display().to_string()]));
        workers.push(Worker::spawn(dir, &format!("writer-{i}"), &args));
    }
    let watch_writers: Vec<String> = writer_logs
        .iter()
        .flat_map(|p| ["--watch".to_string(), p.display().to_string()])
        .collect();
    let mut packer = strings(&["maintainer", "--store", &store, "--ops", "pack"]);
    packer.extend(strings(&["--seed", &derive_seed(seed, 100).to_string()]));
    packer.extend(strings(&["--rounds", &PACKER_ROUNDS_MIN.to_string()]));
    packer.extend(strings(&["--log", &packer_log.display().to_string()]));
    packer.extend(watch_writers.iter().cloned());
    workers.push(Worker::spawn(dir, "packer", &packer));
    let mut maintainer = strings(&[
        "maintainer",
        "--store",
        &store,
        "--ops",
        "pack,repack,delete,clean,validate",
    ]);
    maintainer.extend(strings(&["--seed", &derive_seed(seed, 101).to_string()]));
    maintainer.extend(strings(&["--rounds", &MAINTAINER_ROUNDS_MIN.to_string()]));
    maintainer.extend(strings(&["--log", &maintainer_log.display().to_string()]));
    maintainer.extend(watch_writers.iter().cloned());
    workers.push(Worker::spawn(dir, "maintainer", &maintainer));
    for i in 0..READERS {
        let mut args = strings(&["reader", "--store", &store]);
        args.extend(strings(&[
            "--seed",
            &derive_seed(seed, 200 + i).to_string(),
        ]));
        args.extend(strings(&["--count", &READS_PER_READER.to_string()]));
        args.extend(watch_writers.iter().cloned());
        args.extend(strings(&["--watch", &maintainer_log.display().to_string()]));
        workers.push(Worker::spawn(dir, &format!("reader-{i}"), &args));
    }

    let mut failures = Vec::new();
    for i in 0..workers.len() {
        if let Err(failure) = workers[i].wait() {
            failures.push(failure);
            // Later processes wait for this one's log: stop them rather than hang.
            for later in &mut workers[i + 1..] {
                later.kill();
            }
            break;
        }
    }
    for worker in &workers {
        let output = std::fs::read_to_string(&worker.output).unwrap_or_default();
        println!("{}: {}", worker.name, tail(&output, 3));
    }
    if !failures.is_empty() {
        let kept = temp.keep();
        panic!(
            "seed {seed}: {}\n(store kept in {})",
            failures.join("\n"),
            kept.display()
        );
    }
    println!(
        "workers finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut logs = writer_logs.clone();
    logs.push(maintainer_log);
    logs.push(packer_log);
    match check_store(&store_dir, &logs, true) {
        Ok(summary) => println!("final check: {summary}"),
        Err(failure) => {
            let kept = temp.keep();
            panic!(
                "seed {seed}: final check: {failure}\n(store kept in {})",
                kept.display()
            );
        }
    }
    println!("stress total {:.1} s", started.elapsed().as_secs_f64());
}
