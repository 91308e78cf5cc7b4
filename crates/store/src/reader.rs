//! `ObjectReader`: a `Read + Seek` stream over one object, loose or packed, compressed or not.
//!
//! Nothing is materialised on disk: compressed objects are read one frame at a time. Every byte
//! returned is checked: zstd frames carry their own checksum; raw packed payloads and loose files
//! are checked against the record checksum or the key when read through to the end, and reads
//! report an error there if the bytes were wrong.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{RecordChecksum, FRAME_RAW_BYTES, RECORD_HEADER_BYTES};
use crate::index::IndexRow;
use crate::key::{HashAlgorithm, Key, KeyHasher};

enum Source {
    Loose {
        file: File,
        path: PathBuf,
        hasher: Option<KeyHasher>,
        hash: HashAlgorithm,
    },
    Raw {
        file: Arc<File>,
        row: IndexRow,
        checksum: Option<RecordChecksum>,
    },
    Zstd {
        file: Arc<File>,
        row: IndexRow,
        frames: Vec<(u64, u32)>,
        cached: Option<(u64, Vec<u8>)>,
    },
}

/// A seekable stream over an object's content.
pub struct ObjectReader {
    key: Key,
    size: u64,
    pos: u64,
    /// Bytes checked sequentially from 0 so far (for the end-of-stream check).
    verified_to: u64,
    source: Source,
}

impl ObjectReader {
    pub(crate) fn loose(
        file: File,
        path: PathBuf,
        key: Key,
        hash: HashAlgorithm,
    ) -> Result<ObjectReader> {
        let size = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        Ok(ObjectReader {
            key,
            size,
            pos: 0,
            verified_to: 0,
            source: Source::Loose {
                file,
                path,
                hasher: Some(hash.hasher()),
                hash,
            },
        })
    }

    pub(crate) fn packed(file: Arc<File>, key: Key, row: IndexRow) -> Result<ObjectReader> {
        let header = crate::pack::read_header(&file, &key, &row)?;
        let source = if header.is_compressed() {
            let table_len = crate::format::frame_table_bytes(row.raw_len).min(row.stored_len);
            let mut tail = vec![0u8; table_len as usize];
            let at = row.offset + RECORD_HEADER_BYTES as u64 + row.stored_len - table_len;
            crate::pack::read_exact_at(&file, &mut tail, at, row.pack)?;
            let frames = crate::compress::frame_layout(&tail, row.stored_len, row.raw_len)
                .map_err(|reason| Error::CorruptRecord {
                    pack: row.pack,
                    offset: row.offset,
                    reason,
                })?;
            Source::Zstd {
                file,
                row,
                frames,
                cached: None,
            }
        } else {
            Source::Raw {
                file,
                row,
                checksum: Some(RecordChecksum::new(&header.encode())),
            }
        };
        Ok(ObjectReader {
            key,
            size: row.raw_len,
            pos: 0,
            verified_to: 0,
            source,
        })
    }

    /// Content length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Turns an I/O error from this reader into the store's error type.
    pub fn explain(&self, e: io::Error) -> Error {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<CorruptionNote>())
        {
            Some(note) => Error::CorruptObject {
                key: self.key,
                location: note.location.clone(),
                detail: note.detail.clone(),
            },
            None => Error::io("read object", self.key.to_hex(), e),
        }
    }

    fn corrupt(&self, location: String, detail: String) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CorruptionNote { location, detail },
        )
    }
}

/// The payload of an `InvalidData` error raised when a stream finds bad bytes.
#[derive(Debug)]
struct CorruptionNote {
    location: String,
    detail: String,
}

impl std::fmt::Display for CorruptionNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.detail)
    }
}
impl std::error::Error for CorruptionNote {}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            self.finish_check()?;
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.size - self.pos) as usize;
        let n = match &mut self.source {
            Source::Loose { file, .. } => file.read_at(&mut buf[..want], self.pos)?,
            Source::Raw { file, row, .. } => {
                let at = row.offset + RECORD_HEADER_BYTES as u64 + self.pos;
                file.read_at(&mut buf[..want], at)?
            }
            Source::Zstd {
                file,
                row,
                frames,
                cached,
            } => {
                let index = self.pos / FRAME_RAW_BYTES;
                if cached.as_ref().map(|(i, _)| *i) != Some(index) {
                    let Some(&(at, size)) = frames.get(index as usize) else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "frame index out of range",
                        ));
                    };
                    let mut frame = vec![0u8; size as usize];
                    let off = row.offset + RECORD_HEADER_BYTES as u64 + at;
                    file.read_exact_at(&mut frame, off)?;
                    let raw = crate::compress::decompress_frame(&frame, row.raw_len, index)
                        .map_err(|d| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                CorruptionNote {
                                    location: format!("pack {} offset {}", row.pack, row.offset),
                                    detail: d,
                                },
                            )
                        })?;
                    *cached = Some((index, raw));
                }
                let (_, raw) = cached
                    .as_ref()
                    .ok_or_else(|| io::Error::other("no frame"))?;
                let from = (self.pos - index * FRAME_RAW_BYTES) as usize;
                let n = want.min(raw.len() - from);
                buf[..n].copy_from_slice(&raw[from..from + n]);
                n
            }
        };
        if n == 0 {
            return Err(self.corrupt(
                format!("object {}", self.key),
                "object ends early (truncated)".into(),
            ));
        }
        // Sequential reads from 0 feed the end-of-stream check.
        if self.pos == self.verified_to {
            match &mut self.source {
                Source::Loose {
                    hasher: Some(h), ..
                } => h.update(&buf[..n]),
                Source::Raw {
                    checksum: Some(c), ..
                } => c.update(&buf[..n]),
                _ => {}
            }
            self.verified_to += n as u64;
        }
        self.pos += n as u64;
        if self.pos == self.size {
            self.finish_check()?;
        }
        Ok(n)
    }
}

impl ObjectReader {
    fn finish_check(&mut self) -> io::Result<()> {
        if self.verified_to != self.size {
            return Ok(());
        }
        match &mut self.source {
            Source::Loose {
                hasher, path, hash, ..
            } => {
                if let Some(h) = hasher.take() {
                    let actual = h.finish();
                    let _ = hash;
                    if actual != self.key {
                        let loc = path.display().to_string();
                        return Err(self.corrupt(loc, format!("content hashes to {actual}")));
                    }
                }
            }
            Source::Raw {
                file,
                row,
                checksum,
            } => {
                if let Some(c) = checksum.take() {
                    let mut trailer = [0u8; 4];
                    file.read_exact_at(
                        &mut trailer,
                        row.offset + RECORD_HEADER_BYTES as u64 + row.stored_len,
                    )?;
                    if c.finish() != trailer {
                        let loc = format!("pack {} offset {}", row.pack, row.offset);
                        return Err(self.corrupt(loc, "record checksum mismatch".into()));
                    }
                }
            }
            Source::Zstd { .. } => {}
        }
        Ok(())
    }
}

impl Seek for ObjectReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let target = match pos {
            SeekFrom::Start(x) => Some(x),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(t) if t <= self.size => {
                self.pos = t;
                Ok(t)
            }
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek outside object {} of {} bytes", self.key, self.size),
            )),
        }
    }
}
