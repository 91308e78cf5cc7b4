//! Ack logs (one per worker process) and the ledger that folds them together.
//!
//! A log line is written only after the store call it reports has returned, and is fsynced
//! before the worker goes on, so whatever a killed worker's log says was acknowledged really
//! was. A line without its newline (the worker died while writing it) acknowledges nothing.
//!
//! Lines: `ack KEY SEED LEN`, `aborted KEY` (put into a batch that was dropped, never
//! committed), `deleting KEY` (a delete of it is about to start), `deleted KEY` (the delete
//! returned), `done` (the worker finished its count).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use basin_store::Key;

use crate::content::ObjectSpec;
use crate::{Error, IoContext, Result};

/// The writing end of one ack log.
pub struct AckLog {
    path: PathBuf,
    file: File,
}

impl AckLog {
    /// Creates (or appends to) the log at `path` and makes its directory entry durable.
    pub fn create(path: &Path) -> Result<AckLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .at("open ack log", path)?;
        file.sync_all().at("fsync ack log", path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .at("fsync ack log folder", parent)?;
        }
        Ok(AckLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records objects whose write call has returned.
    pub fn ack(&mut self, objects: &[(Key, ObjectSpec)]) -> Result<()> {
        let text: String = objects
            .iter()
            .map(|(key, spec)| format!("ack {key} {} {}\n", spec.seed, spec.len))
            .collect();
        self.append(&text)
    }

    /// Records keys put into a batch that was dropped: they must never become visible.
    pub fn aborted(&mut self, keys: &[Key]) -> Result<()> {
        self.append_keys("aborted", keys)
    }

    /// Records that a delete of `keys` is about to start: from here on they may be gone.
    pub fn deleting(&mut self, keys: &[Key]) -> Result<()> {
        self.append_keys("deleting", keys)
    }

    /// Records that the delete of `keys` returned: they must stay gone.
    pub fn deleted(&mut self, keys: &[Key]) -> Result<()> {
        self.append_keys("deleted", keys)
    }

    /// Records that the worker finished its work.
    pub fn done(&mut self) -> Result<()> {
        self.append("done\n")
    }

    fn append_keys(&mut self, verb: &str, keys: &[Key]) -> Result<()> {
        let text: String = keys.iter().map(|key| format!("{verb} {key}\n")).collect();
        self.append(&text)
    }

    fn append(&mut self, text: &str) -> Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(text.as_bytes())
            .at("append to ack log", &self.path)?;
        self.file.sync_data().at("fsync ack log", &self.path)
    }
}

/// Reads one log incrementally: only whole lines, each once.
struct LogTail {
    path: PathBuf,
    consumed_bytes: u64,
    lines_read: usize,
    done: bool,
}

/// What a set of ack logs says a store must (and must not) hold.
#[derive(Default)]
pub struct Ledger {
    tails: Vec<LogTail>,
    /// Every acknowledged object, deleted or not.
    pub acked: BTreeMap<Key, ObjectSpec>,
    /// Acknowledged keys in the order they were first seen (for random picks).
    pub acked_order: Vec<Key>,
    /// Deletes begun but not known to have returned: the object may or may not exist.
    pub deleting: BTreeSet<Key>,
    /// Deletes that returned: the object must be gone.
    pub deleted: BTreeSet<Key>,
    /// Keys of dropped batches: must never be visible.
    pub aborted: BTreeSet<Key>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// A ledger over `paths`, read once.
    pub fn read(paths: &[PathBuf]) -> Result<Ledger> {
        let mut ledger = Ledger::new();
        for path in paths {
            ledger.watch(path);
        }
        ledger.refresh()?;
        Ok(ledger)
    }

    /// Adds a log to follow. It need not exist yet.
    pub fn watch(&mut self, path: &Path) {
        self.tails.push(LogTail {
            path: path.to_path_buf(),
            consumed_bytes: 0,
            lines_read: 0,
            done: false,
        });
    }

    /// True when every followed log has its `done` line.
    pub fn all_done(&self) -> bool {
        self.tails.iter().all(|t| t.done)
    }

    /// True when the key was acknowledged and no delete of it has begun.
    pub fn must_exist(&self, key: &Key) -> bool {
        self.acked.contains_key(key) && !self.deleting.contains(key) && !self.deleted.contains(key)
    }

    /// True when a delete of the key has begun (finished or not).
    pub fn delete_begun(&self, key: &Key) -> bool {
        self.deleting.contains(key) || self.deleted.contains(key)
    }

    /// Objects that must exist, with their content.
    pub fn must_exist_objects(&self) -> Vec<(Key, ObjectSpec)> {
        self.acked
            .iter()
            .filter(|(k, _)| self.must_exist(k))
            .map(|(k, s)| (*k, *s))
            .collect()
    }

    /// Reads lines appended since the last call.
    pub fn refresh(&mut self) -> Result<()> {
        let mut tails = std::mem::take(&mut self.tails);
        let outcome = tails.iter_mut().try_for_each(|tail| self.refresh_one(tail));
        self.tails = tails;
        outcome
    }

    fn refresh_one(&mut self, tail: &mut LogTail) -> Result<()> {
        let mut file = match File::open(&tail.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(Error::Io {
                    op: "open ack log",
                    path: tail.path.clone(),
                    source: e,
                })
            }
        };
        file.seek(SeekFrom::Start(tail.consumed_bytes))
            .at("seek ack log", &tail.path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)
            .at("read ack log", &tail.path)?;
        // A trailing fragment without newline is a line still being written (or cut by a
        // kill): it acknowledges nothing yet.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => return Ok(()),
        };
        for line in complete.lines() {
            tail.lines_read += 1;
            self.apply(line).map_err(|detail| Error::Log {
                path: tail.path.clone(),
                line: tail.lines_read,
                detail,
            })?;
            if line == "done" {
                tail.done = true;
            }
        }
        tail.consumed_bytes += complete.len() as u64;
        Ok(())
    }

    fn apply(&mut self, line: &str) -> std::result::Result<(), String> {
        let mut words = line.split(' ');
        let verb = words.next().unwrap_or("");
        let mut key = || -> std::result::Result<Key, String> {
            let text = words.next().ok_or("missing key")?;
            text.parse::<Key>().map_err(|e| e.to_string())
        };
        match verb {
            "done" => {}
            "ack" => {
                let key = key()?;
                let mut number = |what: &str| -> std::result::Result<u64, String> {
                    let text = words.next().ok_or_else(|| format!("missing {what}"))?;
                    text.parse().map_err(|_| format!("bad {what} {text:?}"))
                };
                let spec = ObjectSpec {
                    seed: number("seed")?,
                    len: number("length")?,
                };
                if let Some(previous) = self.acked.insert(key, spec) {
                    if previous != spec {
                        return Err(format!(
                            "key {key} acknowledged with {previous:?} and {spec:?}"
                        ));
                    }
                } else {
                    self.acked_order.push(key);
                }
            }
            "aborted" => {
                self.aborted.insert(key()?);
            }
            "deleting" => {
                self.deleting.insert(key()?);
            }
            "deleted" => {
                let key = key()?;
                self.deleting.remove(&key);
                self.deleted.insert(key);
            }
            other => return Err(format!("unknown line kind {other:?}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_lines_acknowledge_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.log");
        let spec = ObjectSpec { seed: 1, len: 20 };
        let key = basin_store::HashAlgorithm::Blake3.hash(&spec.bytes());
        let mut log = AckLog::create(&path).expect("create log");
        let mut ledger = Ledger::new();
        ledger.watch(&path);
        ledger.refresh().expect("empty log");
        assert!(ledger.acked.is_empty());

        let line = format!("ack {key} 1 20\n");
        std::fs::write(&path, &line[..10]).expect("write fragment");
        ledger.refresh().expect("fragment");
        assert!(ledger.acked.is_empty(), "a cut line must not count");

        std::fs::write(&path, "").expect("truncate");
        log.ack(&[(key, spec)]).expect("ack");
        log.deleting(&[key]).expect("deleting");
        ledger.refresh().expect("refresh");
        assert_eq!(ledger.acked.get(&key), Some(&spec));
        assert!(!ledger.must_exist(&key), "delete begun");
        assert!(!ledger.all_done());
        log.deleted(&[key]).expect("deleted");
        log.done().expect("done");
        ledger.refresh().expect("refresh");
        assert!(ledger.deleted.contains(&key) && ledger.deleting.is_empty());
        assert!(ledger.all_done());
        assert_eq!(ledger.acked_order, vec![key], "each key once");
    }
}
