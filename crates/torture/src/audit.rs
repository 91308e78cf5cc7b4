//! Checks a store against a ledger through every read path.
//!
//! What a ledger demands: each acknowledged object whose delete has not begun is present and
//! byte-exact (via `get`, `has_many`, `meta_many`, `read_many`); each finished delete stayed
//! gone; keys of dropped batches never appeared; an object whose delete was cut short is
//! either gone or correct. Beyond the ledger, every object the store lists must be
//! self-consistent (its content matches its own seed and hashes to its key): the store must
//! never hold wrong bytes, logged or not.

use std::collections::BTreeMap;

use basin_store::{Key, Store};

use crate::content::ObjectSpec;
use crate::ledger::Ledger;

/// What an audit found. `problems` empty means the store honours the ledger.
#[derive(Debug, Default)]
pub struct AuditReport {
    pub problems: Vec<String>,
    /// Objects that must exist and were checked.
    pub objects_required: u64,
    /// Objects the store lists (each checked for self-consistency).
    pub objects_listed: u64,
    pub bytes_checked: u64,
    /// Interrupted deletes whose object survived / vanished.
    pub interrupted_deletes_kept: u64,
    pub interrupted_deletes_done: u64,
}

impl AuditReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems, one per line, at most `limit` of them.
    pub fn summary(&self, limit: usize) -> String {
        let mut text: Vec<String> = self.problems.iter().take(limit).cloned().collect();
        if self.problems.len() > limit {
            text.push(format!("... and {} more", self.problems.len() - limit));
        }
        text.join("\n")
    }
}

/// Audits `store` against `ledger` (see the module doc).
pub fn audit(store: &Store, ledger: &Ledger) -> AuditReport {
    let mut report = AuditReport::default();
    let hash = store.config().hash;
    let required = ledger.must_exist_objects();
    report.objects_required = required.len() as u64;

    let problem = |report: &mut AuditReport, text: String| report.problems.push(text);

    // get, one by one.
    for (key, spec) in &required {
        match store.get(key) {
            Ok(bytes) => {
                report.bytes_checked += bytes.len() as u64;
                if let Err(e) = check(hash, key, spec, &bytes) {
                    problem(&mut report, format!("get {key}: {e}"));
                }
            }
            Err(e) => problem(&mut report, format!("get {key} (acknowledged): {e}")),
        }
    }

    let keys: Vec<Key> = required.iter().map(|(k, _)| *k).collect();
    match store.has_many(&keys) {
        Ok(found) => {
            for (key, found) in keys.iter().zip(found) {
                if !found {
                    problem(&mut report, format!("has_many: acknowledged {key} missing"));
                }
            }
        }
        Err(e) => problem(
            &mut report,
            format!("has_many over {} keys: {e}", keys.len()),
        ),
    }
    match store.meta_many(&keys) {
        Ok(metas) => {
            for ((key, spec), meta) in required.iter().zip(metas) {
                match meta {
                    Some(meta) if meta.key == *key && meta.size == spec.len => {}
                    Some(meta) => problem(
                        &mut report,
                        format!("meta_many {key}: got {meta:?}, expected size {}", spec.len),
                    ),
                    None => problem(
                        &mut report,
                        format!("meta_many: acknowledged {key} missing"),
                    ),
                }
            }
        }
        Err(e) => problem(
            &mut report,
            format!("meta_many over {} keys: {e}", keys.len()),
        ),
    }

    // read_many: each found key visited once, with the right bytes.
    let expected: BTreeMap<Key, ObjectSpec> = required.iter().copied().collect();
    let mut visits: BTreeMap<Key, u32> = BTreeMap::new();
    let mut visit_problems = Vec::new();
    let outcome = store.read_many(&keys, &mut |key, bytes| {
        *visits.entry(key).or_default() += 1;
        match (bytes, expected.get(&key)) {
            (Ok(bytes), Some(spec)) => {
                if let Err(e) = check(hash, &key, spec, bytes) {
                    visit_problems.push(format!("read_many {key}: {e}"));
                }
            }
            (Err(e), _) => visit_problems.push(format!("read_many {key} (acknowledged): {e}")),
            (Ok(_), None) => {
                visit_problems.push(format!("read_many visited {key}, which was not asked for"))
            }
        }
        Ok(())
    });
    if let Err(e) = outcome {
        problem(
            &mut report,
            format!("read_many over {} keys: {e}", keys.len()),
        );
    }
    report.problems.extend(visit_problems);
    for key in &keys {
        match visits.get(key) {
            Some(1) => {}
            Some(n) => problem(&mut report, format!("read_many visited {key} {n} times")),
            None => problem(&mut report, format!("read_many never visited {key}")),
        }
    }

    // Finished deletes and dropped batches: gone for good.
    for (what, set) in [
        ("deleted", &ledger.deleted),
        ("aborted batch", &ledger.aborted),
    ] {
        for key in set {
            match store.get(key) {
                Err(e) if e.is_not_found() => {}
                Err(e) => problem(
                    &mut report,
                    format!("get {key} ({what}): expected not found, got {e}"),
                ),
                Ok(bytes) => problem(
                    &mut report,
                    format!("{what} key {key} is readable ({} bytes)", bytes.len()),
                ),
            }
            match store.has(key) {
                Ok(false) => {}
                Ok(true) => problem(&mut report, format!("has({key}) is true for a {what} key")),
                Err(e) => problem(&mut report, format!("has({key}) ({what}): {e}")),
            }
        }
    }

    // Interrupted deletes: gone, or intact.
    for key in &ledger.deleting {
        let Some(spec) = ledger.acked.get(key) else {
            problem(
                &mut report,
                format!("delete of {key} begun, but it was never acknowledged"),
            );
            continue;
        };
        match store.get(key) {
            Err(e) if e.is_not_found() => report.interrupted_deletes_done += 1,
            Err(e) => problem(&mut report, format!("get {key} (interrupted delete): {e}")),
            Ok(bytes) => {
                report.interrupted_deletes_kept += 1;
                if let Err(e) = check(hash, key, spec, &bytes) {
                    problem(&mut report, format!("get {key} (interrupted delete): {e}"));
                }
            }
        }
    }

    // Everything listed: sorted, unique, self-consistent; acknowledged objects among them.
    match store.list() {
        Err(e) => problem(&mut report, format!("list: {e}")),
        Ok(listed) => {
            report.objects_listed = listed.len() as u64;
            if let Some(pair) = listed.windows(2).find(|w| w[0] >= w[1]) {
                problem(
                    &mut report,
                    format!("list not sorted/unique at {} then {}", pair[0], pair[1]),
                );
            }
            let listed_set: std::collections::BTreeSet<Key> = listed.iter().copied().collect();
            for key in &keys {
                if !listed_set.contains(key) {
                    problem(&mut report, format!("list lacks acknowledged {key}"));
                }
            }
            for key in ledger.deleted.iter().chain(&ledger.aborted) {
                if listed_set.contains(key) {
                    problem(&mut report, format!("list holds {key}, which must be gone"));
                }
            }
            let mut listed_problems = Vec::new();
            let mut listed_visits = 0u64;
            let outcome = store.read_many(&listed, &mut |key, bytes| {
                listed_visits += 1;
                match bytes {
                    Ok(bytes) => match ObjectSpec::check_self(bytes) {
                        Ok(_) if hash.hash(bytes) == key => {}
                        Ok(_) => listed_problems.push(format!(
                            "listed {key}: content hashes to {}",
                            hash.hash(bytes)
                        )),
                        Err(e) => listed_problems.push(format!("listed {key}: {e}")),
                    },
                    Err(e) => listed_problems.push(format!("listed {key} unreadable: {e}")),
                }
                Ok(())
            });
            if let Err(e) = outcome {
                problem(
                    &mut report,
                    format!("read_many over the {} listed keys: {e}", listed.len()),
                );
            }
            if listed_visits != listed.len() as u64 {
                problem(
                    &mut report,
                    format!(
                        "read_many visited {listed_visits} of {} listed keys",
                        listed.len()
                    ),
                );
            }
            report.problems.extend(listed_problems);
        }
    }
    report
}

/// Checks one object's bytes against its spec and its key.
pub fn check(
    hash: basin_store::HashAlgorithm,
    key: &Key,
    spec: &ObjectSpec,
    bytes: &[u8],
) -> Result<(), String> {
    spec.check(bytes)?;
    let actual = hash.hash(bytes);
    if actual != *key {
        return Err(format!(
            "content is right for seed {} but hashes to {actual}",
            spec.seed
        ));
    }
    Ok(())
}
