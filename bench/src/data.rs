//! The shared workload file written by `bench/store/dos_workload.py gen`, so basin and
//! disk-objectstore run on byte-identical objects in identical random orders.
//!
//! Layout (little-endian): `b"BNBDATA1" | u32 set_count | set_count × (u64 count | count × (u32 len |
//! bytes)) | u32 list_count | list_count × (u64 count | count × u32)`. Objects stay in the one buffer
//! the file was read into; sets hold their ranges.

use std::ops::Range;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"BNBDATA1";

/// Why a workload file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("cannot read workload file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("workload file {path} is malformed at byte {offset}: {reason}")]
    Malformed {
        path: PathBuf,
        offset: usize,
        reason: &'static str,
    },
}

/// One workload file: object sets and index lists, in file order.
pub struct Workload {
    raw: Vec<u8>,
    sets: Vec<Vec<Range<usize>>>,
    lists: Vec<Vec<u32>>,
}

impl Workload {
    pub fn load(path: &Path) -> Result<Workload, DataError> {
        let raw = std::fs::read(path).map_err(|source| DataError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cursor = Cursor {
            raw: &raw,
            pos: 0,
            path,
        };
        if cursor.take(MAGIC.len(), "magic")? != MAGIC {
            return Err(cursor.malformed("not a benchmark data file"));
        }
        let set_count = cursor.u32()?;
        let mut sets = Vec::new();
        for _ in 0..set_count {
            let count = cursor.len_u64()?;
            let mut ranges = Vec::with_capacity(count.min(raw.len()));
            for _ in 0..count {
                let len = cursor.u32()? as usize;
                let start = cursor.pos;
                cursor.take(len, "object bytes")?;
                ranges.push(start..start + len);
            }
            sets.push(ranges);
        }
        let list_count = cursor.u32()?;
        let mut lists = Vec::new();
        for _ in 0..list_count {
            let count = cursor.len_u64()?;
            let mut items = Vec::with_capacity(count.min(raw.len() / 4));
            for _ in 0..count {
                items.push(cursor.u32()?);
            }
            lists.push(items);
        }
        if cursor.pos != raw.len() {
            return Err(cursor.malformed("trailing bytes"));
        }
        Ok(Workload { raw, sets, lists })
    }

    pub fn set_len(&self, set: usize) -> usize {
        self.sets.get(set).map_or(0, Vec::len)
    }

    /// Object `i` of object set `set`.
    pub fn object(&self, set: usize, i: usize) -> &[u8] {
        &self.raw[self.sets[set][i].clone()]
    }

    pub fn objects(&self, set: usize) -> impl Iterator<Item = &[u8]> + '_ {
        self.sets[set].iter().map(|r| &self.raw[r.clone()])
    }

    pub fn set_bytes(&self, set: usize) -> u64 {
        self.sets[set].iter().map(|r| r.len() as u64).sum()
    }

    pub fn list(&self, list: usize) -> &[u32] {
        self.lists.get(list).map_or(&[], Vec::as_slice)
    }

    pub fn set_count(&self) -> usize {
        self.sets.len()
    }

    pub fn list_count(&self) -> usize {
        self.lists.len()
    }
}

struct Cursor<'a> {
    raw: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn malformed(&self, reason: &'static str) -> DataError {
        DataError::Malformed {
            path: self.path.to_owned(),
            offset: self.pos,
            reason,
        }
    }

    fn take(&mut self, len: usize, what: &'static str) -> Result<&[u8], DataError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.raw.len())
            .ok_or_else(|| self.malformed(what))?;
        let bytes = &self.raw[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, DataError> {
        let b = self.take(4, "u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A u64 count, bounded by the file size so a corrupt count cannot reserve unbounded memory.
    fn len_u64(&mut self) -> Result<usize, DataError> {
        let b = self.take(8, "count")?;
        let mut le = [0u8; 8];
        le.copy_from_slice(b);
        usize::try_from(u64::from_le_bytes(le))
            .ok()
            .filter(|&count| count <= self.raw.len())
            .ok_or_else(|| self.malformed("count larger than the file"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(sets: &[Vec<Vec<u8>>], lists: &[Vec<u32>]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend((sets.len() as u32).to_le_bytes());
        for set in sets {
            out.extend((set.len() as u64).to_le_bytes());
            for obj in set {
                out.extend((obj.len() as u32).to_le_bytes());
                out.extend(obj);
            }
        }
        out.extend((lists.len() as u32).to_le_bytes());
        for list in lists {
            out.extend((list.len() as u64).to_le_bytes());
            for item in list {
                out.extend(item.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn round_trips_sets_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let sets = vec![vec![b"abc".to_vec(), Vec::new()], vec![vec![7u8; 300]]];
        let lists = vec![vec![1, 0], vec![]];
        std::fs::write(&path, encode(&sets, &lists)).unwrap();
        let w = Workload::load(&path).unwrap();
        assert_eq!((w.set_count(), w.list_count()), (2, 2));
        assert_eq!(w.object(0, 0), b"abc");
        assert_eq!(w.object(0, 1), b"");
        assert_eq!(w.objects(1).collect::<Vec<_>>(), vec![&[7u8; 300][..]]);
        assert_eq!(w.set_bytes(0), 3);
        assert_eq!(w.list(0), &[1, 0]);
    }

    #[test]
    fn rejects_truncated_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let mut bytes = encode(&[vec![b"hello".to_vec()]], &[vec![0]]);
        bytes.truncate(bytes.len() - 9);
        std::fs::write(&path, &bytes).unwrap();
        let err = Workload::load(&path)
            .err()
            .expect("truncated file accepted");
        assert!(matches!(err, DataError::Malformed { .. }), "got {err:?}");
        std::fs::write(&path, b"NOTDATA!\0\0\0\0").unwrap();
        let err = Workload::load(&path).err().expect("foreign file accepted");
        assert!(
            matches!(err, DataError::Malformed { offset: 8, .. }),
            "got {err:?}"
        );
    }
}
