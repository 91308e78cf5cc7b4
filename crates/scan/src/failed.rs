//! The failed-files list: one JSON object per line, `{"root":..,"path":..,"error":..}`, written
//! as failures happen and read back by `--retry-failed`.

use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedEntry {
    /// Canonical root folder.
    pub root: String,
    /// Relative to `root`.
    pub path: String,
    pub error: String,
}

/// Longest line accepted from a failed list; anything longer is not one of ours.
const FAILED_LINE_MAX_BYTES: usize = 256 * 1024;

pub fn write_entry(out: &mut dyn Write, entry: &FailedEntry) -> io::Result<()> {
    let line = serde_json::to_string(entry).map_err(io::Error::other)?;
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Reads a failed list; a missing file is an empty list. Malformed lines are errors naming the line.
pub fn read_list(path: &Path) -> io::Result<Vec<FailedEntry>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut entries = Vec::new();
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > FAILED_LINE_MAX_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: line too long", path.display(), n + 1),
            ));
        }
        let entry: FailedEntry = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?;
        entries.push(entry);
    }
    Ok(entries)
}
