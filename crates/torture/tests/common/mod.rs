//! What stress.rs and crash.rs share: the worker binary, store setup, after-the-fact checks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use basin_store::{
    CleanOptions, Compression, HashAlgorithm, InitOptions, LockWait, NoProgress, Store,
};
use basin_torture::{audit, Ledger};
use rand::rngs::StdRng;
use rand::Rng;

/// The worker binary Cargo built for these tests.
pub const WORKER: &str = env!("CARGO_BIN_EXE_basin-torture-worker");

/// A store with small packs (so pack rollover happens often) and a random hash and
/// compression policy.
pub fn init_store(dir: &Path, rng: &mut StdRng) -> Store {
    let opts = InitOptions {
        hash: if rng.random_bool(0.5) {
            HashAlgorithm::Blake3
        } else {
            HashAlgorithm::Sha256
        },
        pack_size_target_bytes: [256 << 10, 1 << 20, 4 << 20][rng.random_range(0..3)],
        compression: if rng.random_bool(0.5) {
            Compression::Auto { level: 3 }
        } else {
            Compression::Zstd { level: 1 }
        },
        ..InitOptions::default()
    };
    println!("store options: {opts:?}");
    Store::init(dir, &opts).unwrap_or_else(|e| panic!("init store {}: {e}", dir.display()))
}

/// Files left in the store's sandbox folder.
pub fn sandbox_leftovers(store_dir: &Path) -> Vec<PathBuf> {
    let sandbox = store_dir.join("sandbox");
    match std::fs::read_dir(&sandbox) {
        Ok(entries) => entries
            .map(|e| e.expect("read sandbox entry").path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", sandbox.display()),
    }
}

/// Reopens the store after its writers stopped (normally or by kill) and checks the crash
/// contract: acknowledged objects readable and correct before any repair; the maintenance
/// lock free; after `clean`, an empty sandbox, a clean `validate`, and the ledger still
/// honoured. Returns a failure description instead of panicking so callers can add context.
///
/// With `rebuild`, the index is then recreated from the packs alone and everything checked
/// again: the packs must carry the same truth as the index (no resurrected deletes).
pub fn check_store(store_dir: &Path, logs: &[PathBuf], rebuild: bool) -> Result<String, String> {
    let ledger = Ledger::read(logs).map_err(|e| format!("read ack logs: {e}"))?;
    let store = Store::open(store_dir).map_err(|e| format!("reopen store: {e}"))?;
    let before = audit(&store, &ledger);
    if !before.is_ok() {
        return Err(format!(
            "after reopening, before clean: {} problems:\n{}",
            before.problems.len(),
            before.summary(30)
        ));
    }
    let m = store
        .maintenance(LockWait::Fail)
        .map_err(|e| format!("maintenance lock with no other process alive: {e}"))?;
    // No writer is alive, so no sandbox entry can be in use: no grace period needed (the
    // default grace protects writers that created a file but have not locked it yet).
    let clean_opts = CleanOptions {
        sandbox_grace: Duration::ZERO,
        ..CleanOptions::default()
    };
    let cleaned = m
        .clean(&clean_opts, &NoProgress)
        .map_err(|e| format!("clean: {e}"))?;
    let leftovers = sandbox_leftovers(store_dir);
    if !leftovers.is_empty() {
        return Err(format!(
            "sandbox not empty after clean ({cleaned:?}): {leftovers:?}"
        ));
    }
    let validation = m
        .validate(&NoProgress)
        .map_err(|e| format!("validate: {e}"))?;
    if !validation.is_ok() {
        let problems: Vec<String> = validation
            .problems
            .iter()
            .take(30)
            .map(|p| p.to_string())
            .collect();
        return Err(format!(
            "validate after clean found {} problems:\n{}",
            validation.problems.len(),
            problems.join("\n")
        ));
    }
    let after = audit(&store, &ledger);
    if !after.is_ok() {
        return Err(format!(
            "after clean: {} problems:\n{}",
            after.problems.len(),
            after.summary(30)
        ));
    }
    if rebuild {
        let rebuilt = m
            .rebuild_index(&NoProgress)
            .map_err(|e| format!("rebuild_index: {e}"))?;
        let validation = m
            .validate(&NoProgress)
            .map_err(|e| format!("validate after rebuild_index: {e}"))?;
        if !validation.is_ok() {
            let problems: Vec<String> = validation
                .problems
                .iter()
                .take(30)
                .map(|p| p.to_string())
                .collect();
            return Err(format!(
                "validate after rebuild_index ({rebuilt:?}) found {} problems:\n{}",
                validation.problems.len(),
                problems.join("\n")
            ));
        }
        let again = audit(&store, &ledger);
        if !again.is_ok() {
            return Err(format!(
                "after rebuild_index ({rebuilt:?}): {} problems:\n{}",
                again.problems.len(),
                again.summary(30)
            ));
        }
    }
    drop(m);
    Ok(format!(
        "{} acknowledged objects ok, {} listed, {} bytes read; interrupted deletes kept/done {}/{}; clean: {cleaned:?}",
        after.objects_required,
        after.objects_listed,
        after.bytes_checked,
        after.interrupted_deletes_kept,
        after.interrupted_deletes_done
    ))
}
