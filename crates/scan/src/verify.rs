//! Verify: re-hash files and compare with what a catalog or a sums file expects; report changed,
//! missing, new and unreadable files. The comparison itself ([`judge`]) is a pure function.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use basin_hash::{AlgoSpec, Digest, ReadOptions};

use crate::pipeline::run_ordered;
use crate::scan::{hash_archive_members, hash_one};
use crate::walk::{walk, Filters, ScanRoot, WalkItem};

/// What one file is expected to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Relative to the root; archive members are `archive!member`.
    pub rel_path: String,
    pub size_bytes: Option<u64>,
    pub digests: Vec<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Changed {
        reason: String,
    },
    Missing,
    /// On disk, not expected.
    New,
    Unreadable {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOutcome {
    pub rel_path: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyCounts {
    pub ok: u64,
    pub changed: u64,
    pub missing: u64,
    pub new: u64,
    pub unreadable: u64,
    pub bytes_hashed: u64,
}

impl VerifyCounts {
    /// Changed, missing or unreadable files make a verify fail; new files alone do not.
    pub fn failed(&self) -> bool {
        self.changed + self.missing + self.unreadable > 0
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub jobs: usize,
    pub read: ReadOptions,
    pub filters: Filters,
    /// Walk the root to find new files (else only the expected paths are looked at).
    pub walk_for_new: bool,
    /// Check archive member rows by re-reading the archives.
    pub inside_archives: bool,
}

/// Compares fresh digests with the expected ones. Pure.
pub fn judge(expected: &Expected, size_bytes: u64, got: &[Digest]) -> Verdict {
    if let Some(want) = expected.size_bytes {
        if want != size_bytes {
            return Verdict::Changed {
                reason: format!("size {want} -> {size_bytes} bytes"),
            };
        }
    }
    let differing: Vec<String> = expected
        .digests
        .iter()
        .filter(|want| !got.iter().any(|g| g == *want))
        .map(|want| want.spec.to_string())
        .collect();
    if differing.is_empty() {
        Verdict::Ok
    } else {
        Verdict::Changed {
            reason: format!("{} differs", differing.join(", ")),
        }
    }
}

fn specs_of(digests: &[Digest]) -> Vec<AlgoSpec> {
    let mut specs: Vec<AlgoSpec> = digests.iter().map(|d| d.spec).collect();
    specs.dedup();
    specs
}

/// Weight of an item whose size is unknown: enough to travel alone.
const BATCH_WEIGHT_UNKNOWN: u64 = 1 << 20;

/// A member's size and digests (or why it could not be read), keyed by its `archive!member` path.
type MemberResult = (u64, Result<Vec<Digest>, String>);

enum Task {
    Check {
        expected: Expected,
        members: Vec<Expected>,
    },
    New {
        rel_path: String,
    },
    Unreadable {
        rel_path: String,
        reason: String,
    },
}

/// Verifies `root` against `expected`, calling `report` for every file in walk order (then the
/// expected files the walk did not reach, in path order).
pub fn verify(
    root: &ScanRoot,
    expected: Vec<Expected>,
    options: &VerifyOptions,
    report: &mut dyn FnMut(&VerifyOutcome),
) -> VerifyCounts {
    let mut files: HashMap<String, Expected> = HashMap::new();
    let mut members: HashMap<String, Vec<Expected>> = HashMap::new();
    for e in expected {
        match e.rel_path.split_once('!') {
            Some((archive, _)) if !files.contains_key(&e.rel_path) => {
                members.entry(archive.to_string()).or_default().push(e)
            }
            _ => {
                files.insert(e.rel_path.clone(), e);
            }
        }
    }
    if !options.inside_archives {
        members.clear();
    }
    let mut counts = VerifyCounts::default();
    let produce = |emit: &mut dyn FnMut(Task, u64) -> bool| {
        let mut files = files;
        let mut members = members;
        if options.walk_for_new {
            let mut keep_going = true;
            walk(root, &options.filters, &mut |item| {
                keep_going = match item {
                    WalkItem::File { rel_path, meta } => match files.remove(&rel_path) {
                        Some(expected) => {
                            let m = members.remove(&rel_path).unwrap_or_default();
                            emit(
                                Task::Check {
                                    expected,
                                    members: m,
                                },
                                meta.size_bytes,
                            )
                        }
                        None => emit(Task::New { rel_path }, 0),
                    },
                    WalkItem::Error { rel_path, message } => emit(
                        Task::Unreadable {
                            rel_path,
                            reason: message,
                        },
                        0,
                    ),
                };
                keep_going
            });
            if !keep_going {
                return;
            }
        }
        // Expected files the walk did not see (missing, filtered out, or no walk at all), in path order.
        let rest: BTreeMap<String, Expected> = files.into_iter().collect();
        for (rel_path, expected) in rest {
            let m = members.remove(&rel_path).unwrap_or_default();
            let weight = expected.size_bytes.unwrap_or(BATCH_WEIGHT_UNKNOWN);
            if !emit(
                Task::Check {
                    expected,
                    members: m,
                },
                weight,
            ) {
                return;
            }
        }
        // Members whose archive has no row of its own.
        let orphans: BTreeMap<String, Vec<Expected>> = members.into_iter().collect();
        for (archive, m) in orphans {
            let expected = Expected {
                rel_path: archive,
                size_bytes: None,
                digests: Vec::new(),
            };
            let weight = expected.size_bytes.unwrap_or(BATCH_WEIGHT_UNKNOWN);
            if !emit(
                Task::Check {
                    expected,
                    members: m,
                },
                weight,
            ) {
                return;
            }
        }
    };
    let work = |task: Task, buffer: &mut Vec<u8>| -> (Vec<VerifyOutcome>, u64) {
        match task {
            Task::New { rel_path } => (
                vec![VerifyOutcome {
                    rel_path,
                    verdict: Verdict::New,
                }],
                0,
            ),
            Task::Unreadable { rel_path, reason } => (
                vec![VerifyOutcome {
                    rel_path,
                    verdict: Verdict::Unreadable { reason },
                }],
                0,
            ),
            Task::Check { expected, members } => {
                let path = root.abs_path(&expected.rel_path);
                let mut out = Vec::new();
                let mut bytes = 0;
                match hash_one(
                    &path,
                    None,
                    &specs_of(&expected.digests),
                    &options.read,
                    buffer,
                ) {
                    Ok((meta, digests)) => {
                        bytes = meta.size_bytes;
                        if !expected.digests.is_empty() || expected.size_bytes.is_some() {
                            out.push(VerifyOutcome {
                                rel_path: expected.rel_path.clone(),
                                verdict: judge(&expected, meta.size_bytes, &digests),
                            });
                        }
                        if !members.is_empty() {
                            let mut specs: Vec<AlgoSpec> =
                                members.iter().flat_map(|m| specs_of(&m.digests)).collect();
                            specs.sort();
                            specs.dedup();
                            let mut found: HashMap<String, MemberResult> =
                                hash_archive_members(&path, &expected.rel_path, &specs)
                                    .into_iter()
                                    .map(|m| (m.rel_path, (m.size_bytes, m.result)))
                                    .collect();
                            for m in members {
                                let verdict = match found.remove(&m.rel_path) {
                                    Some((size, Ok(digests))) => judge(&m, size, &digests),
                                    Some((_, Err(reason))) => Verdict::Unreadable { reason },
                                    None => Verdict::Missing,
                                };
                                out.push(VerifyOutcome {
                                    rel_path: m.rel_path,
                                    verdict,
                                });
                            }
                            let mut extra: Vec<(String, MemberResult)> =
                                found.into_iter().collect();
                            extra.sort_by(|a, b| a.0.cmp(&b.0));
                            for (rel_path, (_, result)) in extra {
                                let verdict = match result {
                                    Ok(_) => Verdict::New,
                                    Err(reason) => Verdict::Unreadable { reason },
                                };
                                out.push(VerifyOutcome { rel_path, verdict });
                            }
                        }
                    }
                    Err(reason) => {
                        let gone = !path.exists() && std::fs::symlink_metadata(&path).is_err();
                        let verdict = if gone {
                            Verdict::Missing
                        } else {
                            Verdict::Unreadable { reason }
                        };
                        out.push(VerifyOutcome {
                            rel_path: expected.rel_path.clone(),
                            verdict: verdict.clone(),
                        });
                        for m in members {
                            out.push(VerifyOutcome {
                                rel_path: m.rel_path,
                                verdict: verdict.clone(),
                            });
                        }
                    }
                }
                (out, bytes)
            }
        }
    };
    let mut sink = |result: Option<(Vec<VerifyOutcome>, u64)>| -> bool {
        if let Some((outcomes, bytes)) = result {
            counts.bytes_hashed += bytes;
            for o in &outcomes {
                match o.verdict {
                    Verdict::Ok => counts.ok += 1,
                    Verdict::Changed { .. } => counts.changed += 1,
                    Verdict::Missing => counts.missing += 1,
                    Verdict::New => counts.new += 1,
                    Verdict::Unreadable { .. } => counts.unreadable += 1,
                }
                report(o);
            }
        }
        true
    };
    run_ordered(
        options.jobs,
        Duration::from_millis(250),
        produce,
        work,
        &mut sink,
    );
    counts
}
