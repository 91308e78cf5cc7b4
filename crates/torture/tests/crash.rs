//! Crash tests: a worker repeats one operation (put, batch put, pack, import = write_packed,
//! repack, delete) and is killed with SIGKILL at a random instant inside it; then the store is
//! reopened and must honour the crash contract (tests/common: acknowledged objects correct
//! before and after `clean`, lock free, sandbox empty, validate clean, finished deletes gone).
//!
//! The kill instant: the worker prints `begin KIND` as the operation starts and `end KIND
//! MICROS` when it returns; the test waits for `begin`, then waits a random delay drawn from
//! the printed seed over the operation's last observed duration, then kills. Each kind keeps
//! one store across its kills, so every crash lands on the debris of the previous ones.
//! 6 kinds x KILLS_PER_KIND = 54 kills per run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basin_torture::{derive_seed, run_seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use common::{check_store, init_store, WORKER};

const KILLS_PER_KIND: u64 = 9;
/// put, batch, pack, import, repack, delete: one test each below.
const KINDS: u64 = 6;
// The issue asks for at least 50 kills per run.
const _: () = assert!(KILLS_PER_KIND * KINDS >= 50);
/// Until a kind's operation was seen to finish, assume it takes this long.
const OPERATION_MICROS_GUESS: u64 = 30_000;

/// What one kill found out.
struct Kill {
    /// The worker was between `begin` and `end` when killed (as far as its output tells).
    inside_operation: bool,
    /// The last `phase` line the worker printed (progress hooks of the store).
    last_phase: Option<String>,
    delay_micros: u64,
}

fn kill_cycles(kind: &str, kind_index: u64) {
    let base_seed = run_seed();
    let seed = derive_seed(base_seed, kind_index);
    println!("crash {kind}: seed = {base_seed} (replay with BASIN_TORTURE_SEED={base_seed})");
    let started = Instant::now();
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let store_dir = dir.join("store");
    let scratch = dir.join("scratch");
    let mut rng = StdRng::seed_from_u64(seed);
    drop(init_store(&store_dir, &mut rng));

    let mut logs: Vec<PathBuf> = Vec::new();
    let mut operation_micros = OPERATION_MICROS_GUESS;
    let mut kills = Vec::new();
    for cycle in 0..KILLS_PER_KIND {
        let log = dir.join(format!("{kind}-{cycle}.log"));
        logs.push(log.clone());
        let worker_seed: u64 = rng.random();
        let kill = match kill_once(
            kind,
            &store_dir,
            &scratch,
            &log,
            worker_seed,
            &mut rng,
            &mut operation_micros,
        ) {
            Ok(kill) => kill,
            Err(failure) => {
                let kept = temp.keep();
                panic!(
                    "crash {kind} seed {base_seed} cycle {cycle}: {failure}\n(store kept in {})",
                    kept.display()
                )
            }
        };
        // Rebuilding the index now and then (always after the last kill) checks that the
        // packs alone say what the index said.
        let rebuild = cycle + 1 == KILLS_PER_KIND || rng.random_bool(0.3);
        match check_store(&store_dir, &logs, rebuild) {
            Ok(summary) => println!(
                "crash {kind} cycle {cycle}: killed {} us after begin ({}, last phase {:?}); rebuild {rebuild}; {summary}",
                kill.delay_micros,
                if kill.inside_operation { "inside the operation" } else { "after it ended" },
                kill.last_phase
            ),
            Err(failure) => {
                let kept = temp.keep();
                panic!(
                    "crash {kind} seed {base_seed} cycle {cycle}: killed {} us after begin ({}, last phase {:?}):\n{failure}\n(store kept in {})",
                    kill.delay_micros,
                    if kill.inside_operation { "inside the operation" } else { "after it ended" },
                    kill.last_phase,
                    kept.display()
                )
            }
        }
        kills.push(kill);
    }
    let inside = kills.iter().filter(|k| k.inside_operation).count();
    println!(
        "crash {kind}: {} kills, {inside} inside the operation, {:.1} s",
        kills.len(),
        started.elapsed().as_secs_f64()
    );
    // The point of the test is killing mid-operation; if timing drifted so far that most kills
    // land between operations, the test no longer tests what it says.
    assert!(
        inside * 3 >= kills.len(),
        "crash {kind} seed {base_seed}: only {inside} of {} kills landed inside the operation",
        kills.len()
    );
}

/// What the worker's output told so far.
struct Observed<'a> {
    kind: &'a str,
    inside_operation: bool,
    last_phase: Option<String>,
    /// Shared across a kind's kills: the last duration of a finished operation.
    operation_micros: &'a mut u64,
}

impl Observed<'_> {
    fn note(&mut self, line: &str) {
        if line.strip_prefix("begin ") == Some(self.kind) {
            self.inside_operation = true;
        } else if let Some(rest) = line
            .strip_prefix("end ")
            .and_then(|l| l.strip_prefix(self.kind))
        {
            self.inside_operation = false;
            if let Ok(micros) = rest.trim().parse::<u64>() {
                *self.operation_micros = micros.max(100);
            }
        } else if let Some(phase) = line.strip_prefix("phase ") {
            self.last_phase = Some(phase.to_string());
        }
    }
}

/// Starts a worker, kills it at a random instant inside its operation, waits for it to die.
fn kill_once(
    kind: &str,
    store_dir: &Path,
    scratch: &Path,
    log: &Path,
    worker_seed: u64,
    rng: &mut StdRng,
    operation_micros: &mut u64,
) -> Result<Kill, String> {
    let stderr_path = log.with_extension("err");
    let stderr = std::fs::File::create(&stderr_path)
        .map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
    let mut child = Command::new(WORKER)
        .args(["op", "--kind", kind, "--seed", &worker_seed.to_string()])
        .arg("--store")
        .arg(store_dir)
        .arg("--log")
        .arg(log)
        .arg("--scratch")
        .arg(scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawn {WORKER}: {e}"))?;
    let stdout = child.stdout.take().ok_or("worker stdout not piped")?;
    let (lines_tx, lines) = mpsc::channel::<String>();
    // Drains the worker's output until it dies, so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let begin = format!("begin {kind}");
    let mut seen = Observed {
        kind,
        inside_operation: false,
        last_phase: None,
        operation_micros,
    };
    // Kill in a later round now and then, so acknowledged objects pile up between kills
    // (cheap operations get more rounds).
    let rounds_max = if matches!(kind, "put" | "batch") {
        6
    } else {
        2
    };
    let mut begins_left = rng.random_range(1..=rounds_max);
    loop {
        let Ok(line) = lines.recv() else {
            let status = child.wait().map_err(|e| format!("wait for worker: {e}"))?;
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            return Err(format!(
                "worker exited ({status}) before its operation began:\n{stderr}"
            ));
        };
        seen.note(&line);
        if line == begin {
            begins_left -= 1;
            if begins_left == 0 {
                break;
            }
        }
    }
    // The random wait is the point: the kill lands at an instant chosen by the seed.
    let estimate = *seen.operation_micros;
    let delay_micros = rng.random_range(0..=estimate + estimate / 4);
    std::thread::sleep(Duration::from_micros(delay_micros));
    // Child::kill sends SIGKILL on Unix: no destructor, no flush, no unlock runs.
    child.kill().map_err(|e| format!("kill worker: {e}"))?;
    let status = child
        .wait()
        .map_err(|e| format!("wait for killed worker: {e}"))?;
    drain
        .join()
        .map_err(|_| "output drain thread panicked".to_string())?;
    for line in lines.try_iter() {
        seen.note(&line);
    }
    if status.code().is_some() {
        // It exited on its own before the kill: that is a worker failure, not a crash.
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(format!(
            "worker exited ({status}) before the kill:\n{stderr}"
        ));
    }
    let Observed {
        inside_operation,
        last_phase,
        ..
    } = seen;
    Ok(Kill {
        inside_operation,
        last_phase,
        delay_micros,
    })
}

#[test]
fn kill_during_put() {
    kill_cycles("put", 1);
}

#[test]
fn kill_during_batch_put() {
    kill_cycles("batch", 2);
}

#[test]
fn kill_during_pack() {
    kill_cycles("pack", 3);
}

#[test]
fn kill_during_import() {
    kill_cycles("import", 4);
}

#[test]
fn kill_during_repack() {
    kill_cycles("repack", 5);
}

#[test]
fn kill_during_delete() {
    kill_cycles("delete", 6);
}
