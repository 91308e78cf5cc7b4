//! Pack files: reading records at an offset, scanning a pack, and appending records (maintenance).
//!
//! A pack is append-only: records are only ever added past the committed end, and a sealed pack
//! (table + footer written) never changes again. Readers hold no locks; they trust nothing they
//! read until the record header (magic, checksum, key) and trailer checksum agree.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::direct::DirectRuns;
use crate::error::{Error, IoContext, Result};
use crate::format::{
    self, Footer, PackHeader, Position, RecordChecksum, RecordHeader, RecordKind, FLAG_ZSTD,
    FOOTER_BYTES, PACK_FORMAT_VERSION, PACK_HEADER_BYTES, RECORD_HEADER_BYTES,
    RECORD_TRAILER_BYTES,
};
use crate::fsutil;
use crate::index::{Index, IndexRow, PackRow, RowWrite, TombstoneRow};
use crate::key::{HashAlgorithm, Key};

/// Folder of the pack files inside a store.
pub const PACKS_DIR: &str = "packs";

pub(crate) fn pack_path(root: &Path, id: u64) -> PathBuf {
    root.join(PACKS_DIR).join(format!("{id}.pack"))
}

/// The pack id of a file name like `17.pack`.
pub(crate) fn parse_pack_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".pack")?;
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || (digits.len() > 1 && digits.starts_with('0'))
    {
        return None;
    }
    digits.parse().ok()
}

/// Ids of all pack files present in the packs folder.
pub(crate) fn pack_ids_on_disk(root: &Path) -> Result<Vec<u64>> {
    let dir = root.join(PACKS_DIR);
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(&dir).at("list", &dir)? {
        let entry = entry.at("list", &dir)?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_pack_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// A sealed pack's footer and its (key, record offset) table.
pub(crate) type SealedTable = (Footer, Vec<(Key, u64)>);
/// Where a streamed payload goes, chunk by chunk.
pub(crate) type Sink<'a> = dyn FnMut(&[u8]) -> Result<()> + 'a;
/// Writes a streamed payload through a sink; returns (key, raw length, compressed).
pub(crate) type StreamFill<'a> = dyn FnMut(&mut Sink<'_>) -> Result<(Key, u64, bool)> + 'a;
/// Receives one record's bytes during a span read.
pub(crate) type RecordVisit<'a> = dyn FnMut(&Key, &IndexRow, &[u8]) -> Result<()> + 'a;

/// Reads exactly `buf.len()` bytes at `offset`, reporting a short file as a truncated record.
pub(crate) fn read_exact_at(file: &File, buf: &mut [u8], offset: u64, pack: u64) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(Error::CorruptRecord {
                    pack,
                    offset,
                    reason: format::FormatError::Truncated {
                        need: buf.len() as u64,
                        have: done as u64,
                    },
                })
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Io {
                    op: "read pack",
                    path: PathBuf::from(format!("pack {pack}")),
                    cause: e,
                })
            }
        }
    }
    Ok(())
}

/// Lengths come from the index, which may be damaged: before allocating for a large record,
/// make sure the pack really holds that many bytes there.
pub(crate) fn check_fits(file: &File, row: &IndexRow, len: u64) -> Result<()> {
    if len > 1 << 20 {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat pack", format!("pack {}", row.pack), e))?
            .len();
        if row.offset.checked_add(len).is_none_or(|e| e > file_len) {
            return Err(Error::CorruptRecord {
                pack: row.pack,
                offset: row.offset,
                reason: format::FormatError::Truncated {
                    need: len,
                    have: file_len.saturating_sub(row.offset),
                },
            });
        }
    }
    Ok(())
}

/// Reads and fully verifies the record at `row` and returns the object's content.
pub(crate) fn read_object(file: &File, key: &Key, row: &IndexRow) -> Result<Vec<u8>> {
    let len = format::RECORD_OVERHEAD_BYTES + row.stored_len;
    check_fits(file, row, len)?;
    let mut buf = vec![0u8; len as usize];
    read_exact_at(file, &mut buf, row.offset, row.pack)?;
    object_from_record(&buf, key, row)
}

/// Verifies a whole record, `rec` (exactly its bytes, read or mapped), as the one `row` names,
/// and returns the object's content.
pub(crate) fn object_from_record(rec: &[u8], key: &Key, row: &IndexRow) -> Result<Vec<u8>> {
    let (header, payload) = format::decode_record(rec).map_err(|reason| Error::CorruptRecord {
        pack: row.pack,
        offset: row.offset,
        reason,
    })?;
    check_header(&header, key, row)?;
    if header.is_compressed() {
        compress_err(
            crate::compress::decompress_all(payload, header.raw_len),
            key,
            row,
        )
    } else {
        Ok(payload.to_vec())
    }
}

fn compress_err<T>(r: std::result::Result<T, String>, key: &Key, row: &IndexRow) -> Result<T> {
    r.map_err(|detail| Error::CorruptObject {
        key: *key,
        location: format!("pack {} offset {}", row.pack, row.offset),
        detail,
    })
}

/// Checks that a record header is the one the index row describes.
pub(crate) fn check_header(header: &RecordHeader, key: &Key, row: &IndexRow) -> Result<()> {
    if header.key != *key || header.kind != RecordKind::Object {
        return Err(Error::WrongRecord {
            pack: row.pack,
            offset: row.offset,
            expected: *key,
            found: header.key,
        });
    }
    if header.raw_len != row.raw_len
        || header.stored_len != row.stored_len
        || header.flags != row.flags
    {
        return Err(Error::CorruptRecord {
            pack: row.pack,
            offset: row.offset,
            reason: format::FormatError::BadLength(format!(
                "record says raw {} stored {} flags {}, index says raw {} stored {} flags {}",
                header.raw_len,
                header.stored_len,
                header.flags,
                row.raw_len,
                row.stored_len,
                row.flags
            )),
        });
    }
    Ok(())
}

/// Reads and checks only the record header at `row` (for range reads and streams).
pub(crate) fn read_header(file: &File, key: &Key, row: &IndexRow) -> Result<RecordHeader> {
    let mut buf = [0u8; RECORD_HEADER_BYTES];
    read_exact_at(file, &mut buf, row.offset, row.pack)?;
    let header = RecordHeader::decode(&buf).map_err(|reason| Error::CorruptRecord {
        pack: row.pack,
        offset: row.offset,
        reason,
    })?;
    check_header(&header, key, row)?;
    Ok(header)
}

/// Reads and checks a pack's header.
pub(crate) fn read_pack_header(file: &File, pack: u64) -> Result<PackHeader> {
    let mut buf = [0u8; PACK_HEADER_BYTES];
    read_exact_at(file, &mut buf, 0, pack)?;
    PackHeader::decode(&buf).map_err(|reason| Error::CorruptRecord {
        pack,
        offset: 0,
        reason,
    })
}

/// Reads a sealed pack's footer and table, or `None` if the pack does not end in a footer.
pub(crate) fn read_sealed_table(
    file: &File,
    pack: u64,
    file_len: u64,
) -> Result<Option<SealedTable>> {
    if file_len < (PACK_HEADER_BYTES + FOOTER_BYTES) as u64 {
        return Ok(None);
    }
    let mut fb = [0u8; FOOTER_BYTES];
    read_exact_at(file, &mut fb, file_len - FOOTER_BYTES as u64, pack)?;
    if fb[32..40] != format::FOOTER_MAGIC {
        return Ok(None);
    }
    let footer = Footer::decode(&fb, file_len).map_err(|reason| Error::CorruptRecord {
        pack,
        offset: file_len - FOOTER_BYTES as u64,
        reason,
    })?;
    let mut tb = vec![0u8; (footer.entry_count as usize).saturating_mul(format::TABLE_ENTRY_BYTES)];
    read_exact_at(file, &mut tb, footer.table_offset, pack)?;
    let table = format::decode_table(&tb, &footer).map_err(|reason| Error::CorruptRecord {
        pack,
        offset: footer.table_offset,
        reason,
    })?;
    Ok(Some((footer, table)))
}

/// Payloads up to this size are handed to scan visitors; larger ones are checked and skipped.
const SCAN_PAYLOAD_IN_MEMORY_BYTES_MAX: u64 = 16 << 20;

/// One record met while scanning a pack sequentially.
pub(crate) struct ScannedRecord<'a> {
    pub offset: u64,
    pub header: RecordHeader,
    /// The stored payload (possibly compressed); empty for payloads over 16 MiB.
    pub payload: &'a [u8],
}

/// Walks the records of a pack from `start` to `end` (exclusive), verifying every record's
/// checksums. Stops with `Ok(offset)` at the first place that does not hold a valid record.
fn scan_records_from(
    file: &File,
    pack: u64,
    start: u64,
    end: u64,
    visit: &mut dyn FnMut(ScannedRecord<'_>) -> Result<()>,
) -> Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut reader = BufReader::with_capacity(4 << 20, file);
    reader
        .seek(SeekFrom::Start(start))
        .at("seek pack", format!("pack {pack}"))?;
    let mut offset = start;
    let mut buf = Vec::new();
    while offset + format::RECORD_OVERHEAD_BYTES <= end {
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        if reader.read_exact(&mut hb).is_err() {
            break;
        }
        let Ok(header) = RecordHeader::decode(&hb) else {
            break;
        };
        let len = header.record_len();
        if offset + len > end {
            break;
        }
        let mut sum = RecordChecksum::new(&hb);
        let mut trailer = [0u8; RECORD_TRAILER_BYTES];
        if header.stored_len > SCAN_PAYLOAD_IN_MEMORY_BYTES_MAX {
            // Checked in passing, never held whole; such payloads are handed over empty.
            let mut left = header.stored_len;
            buf.resize(crate::loose::STREAM_CHUNK_BYTES, 0);
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if reader.read_exact(&mut buf[..n]).is_err() {
                    return Ok(offset);
                }
                sum.update(&buf[..n]);
                left -= n as u64;
            }
            if reader.read_exact(&mut trailer).is_err() || sum.finish() != trailer {
                break;
            }
            visit(ScannedRecord {
                offset,
                header,
                payload: &[],
            })?;
        } else {
            buf.clear();
            buf.resize(
                (header.stored_len + RECORD_TRAILER_BYTES as u64) as usize,
                0,
            );
            if reader.read_exact(&mut buf).is_err() {
                break;
            }
            let (payload, trailer) = buf.split_at(header.stored_len as usize);
            sum.update(payload);
            if sum.finish() != trailer {
                break;
            }
            visit(ScannedRecord {
                offset,
                header,
                payload,
            })?;
        }
        offset += len;
    }
    Ok(offset)
}

/// Like [`scan_records`], but damage does not end the walk: a record whose header is intact
/// but whose payload or trailer is not is skipped by its (checksummed) length; after a damaged
/// header the walk resumes at the next offset where a valid record header starts. Returns the
/// end of the last valid record and the offsets of damaged regions.
pub(crate) fn scan_records_resilient(
    file: &File,
    pack: u64,
    end: u64,
    visit: &mut dyn FnMut(ScannedRecord<'_>) -> Result<()>,
) -> Result<(u64, Vec<u64>)> {
    let mut offset = PACK_HEADER_BYTES as u64;
    let mut valid_end = offset;
    let mut damaged = Vec::new();
    while offset + format::RECORD_OVERHEAD_BYTES <= end {
        let stop = scan_records_from(file, pack, offset, end, &mut |rec| {
            valid_end = rec.offset + rec.header.record_len();
            visit(rec)
        })?;
        if stop + format::RECORD_OVERHEAD_BYTES > end {
            break;
        }
        damaged.push(stop);
        // Skip the damaged record by its header's length when the header itself is intact.
        let mut hb = [0u8; RECORD_HEADER_BYTES];
        let next = match read_exact_at(file, &mut hb, stop, pack)
            .ok()
            .and_then(|_| RecordHeader::decode(&hb).ok())
        {
            Some(h) if stop + h.record_len() <= end => stop + h.record_len(),
            _ => match find_next_header(file, pack, stop + 1, end)? {
                Some(at) => at,
                None => break,
            },
        };
        offset = next;
    }
    Ok((valid_end, damaged))
}

/// The next offset in `[from, end)` where a record header with a valid checksum starts.
fn find_next_header(file: &File, pack: u64, from: u64, end: u64) -> Result<Option<u64>> {
    let mut at = from;
    let mut buf = vec![0u8; 1 << 20];
    while at + RECORD_HEADER_BYTES as u64 <= end {
        let n = ((end - at) as usize).min(buf.len());
        read_exact_at(file, &mut buf[..n], at, pack)?;
        let mut i = 0;
        while i + RECORD_HEADER_BYTES <= n {
            if buf[i..i + 4] == format::RECORD_MAGIC
                && RecordHeader::decode(&buf[i..i + RECORD_HEADER_BYTES]).is_ok()
            {
                return Ok(Some(at + i as u64));
            }
            i += 1;
        }
        // Overlap by a header so one straddling the chunk boundary is not missed.
        at += (n - RECORD_HEADER_BYTES + 1).max(1) as u64;
    }
    Ok(None)
}

fn no_open_pack() -> Error {
    Error::InvalidArgument("no open pack".into())
}

/// A record to append, already encoded.
pub(crate) struct NewRecord<'a> {
    pub key: Key,
    pub raw_len: u64,
    pub compressed: bool,
    pub payload: &'a [u8],
}

struct OpenPack {
    id: u64,
    /// Shared with the write-behind thread while it writes buffers of this pack.
    file: std::sync::Arc<File>,
    path: PathBuf,
    /// End of everything written (buffered bytes included).
    len: u64,
    /// Start of the write buffer in the file.
    buf_at: u64,
    buf: Vec<u8>,
}

/// Appends records to packs for one maintenance session, committing index rows only after the
/// pack bytes are durable. Only the maintenance-lock holder creates one.
pub(crate) struct Appender<'a> {
    root: &'a Path,
    hash: HashAlgorithm,
    container_id: [u8; 16],
    pack_size_target_bytes: u64,
    open: Option<OpenPack>,
    /// Packs this session must not append to (being rewritten by repack).
    exclude: HashSet<u64>,
    pending_rows: Vec<(Key, IndexRow)>,
    pending_tombstones: Vec<TombstoneRow>,
    /// Packs that filled up during this batch; sealed at the next commit.
    full: Vec<OpenPack>,
    /// Writes full write buffers while the next one fills.
    behind: fsutil::WriteBehind,
    /// Rows committed by this appender replace the key's row (records moved by repack; see
    /// [`RowWrite::Replace`] for why that is a move); by default a row already in the index
    /// wins, because a write batch may have committed the same key meanwhile and its record
    /// must stay the one live copy.
    moves: bool,
    /// The index's staged transaction this appender wrote rows into (see
    /// [`Appender::stage`]), and the range of `pending_rows` it holds.
    staged: Option<(u64, std::ops::Range<usize>)>,
    /// Where in `pending_rows` the next staging starts: rows of a staged transaction that was
    /// rolled back are left to the commit, not staged again.
    stage_next: usize,
}

/// Size of each write buffer. Three are in use at once (one filling, two with the write-behind
/// thread), and each is fresh memory the first time: 1 MiB each touches less of it than one
/// 4 MiB buffer did, which matters where the host charges for first touches (see
/// bench/store/README.md, "Noise"), and the write calls stay large.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

impl<'a> Appender<'a> {
    pub(crate) fn new(
        root: &'a Path,
        hash: HashAlgorithm,
        container_id: [u8; 16],
        pack_size_target_bytes: u64,
        exclude: HashSet<u64>,
    ) -> Self {
        Appender {
            root,
            hash,
            container_id,
            pack_size_target_bytes,
            open: None,
            exclude,
            pending_rows: Vec::new(),
            pending_tombstones: Vec::new(),
            full: Vec::new(),
            behind: fsutil::WriteBehind::new(WRITE_BUFFER_BYTES),
            moves: false,
            staged: None,
            stage_next: 0,
        }
    }

    /// Makes this appender's rows replace existing ones (it moves records, as repack does).
    pub(crate) fn set_moves(&mut self) {
        self.moves = true;
    }

    /// Writes appended bytes past the first `cached_bytes_max` with `O_DIRECT` (see
    /// [`fsutil::WriteBehind::write_direct_after`]).
    pub(crate) fn write_direct_after(&mut self, cached_bytes_max: u64) {
        self.behind.write_direct_after(cached_bytes_max);
    }

    /// Number of records waiting for the next commit.
    pub(crate) fn pending(&self) -> usize {
        self.pending_rows.len() + self.pending_tombstones.len()
    }

    /// The range of `pending_rows` the index's staged transaction holds: none when it holds
    /// none of this appender's (another transaction on the connection rolled it back).
    fn staged_rows(&self, index: &Index) -> Option<std::ops::Range<usize>> {
        match (&self.staged, index.staged()) {
            (Some((ours, rows)), Some(open)) if *ours == open => Some(rows.clone()),
            _ => None,
        }
    }

    /// Rows appended since the last staging (see [`Appender::stage`]).
    pub(crate) fn unstaged_rows(&self) -> usize {
        self.pending_rows.len() - self.stage_next
    }

    /// Writes the rows of records moved since the last call into the index's staged
    /// transaction (see [`Index::stage`]): the next commit then has only the rest to write,
    /// and still makes none of them durable before their bytes. For an appender that moves
    /// records ([`Appender::set_moves`]), whose caller waits on its writes meanwhile; the
    /// index stays locked for writers until that commit.
    pub(crate) fn stage(&mut self, index: &mut Index) -> Result<()> {
        if !self.moves {
            return Err(Error::InvalidArgument(
                "only an appender that moves records stages its rows".into(),
            ));
        }
        // A staged transaction that is not this appender's holds none of its rows (the
        // caller's own staged writes, if any): these go in with them.
        let start = self
            .staged_rows(index)
            .map_or(self.stage_next, |rows| rows.start);
        let batch = &mut self.pending_rows[self.stage_next..];
        if batch.is_empty() {
            return Ok(());
        }
        // In key order, as at the commit. A repack moves each key once, so the order in which
        // batches reach the index decides nothing.
        batch.sort_unstable_by_key(|(key, row)| (*key, row.position()));
        let stage = index.stage(|tx| tx.write_rows(RowWrite::Replace, batch))?;
        self.stage_next = self.pending_rows.len();
        self.staged = Some((stage, start..self.stage_next));
        Ok(())
    }

    fn ensure_open(&mut self, index: &mut Index) -> Result<()> {
        if let Some(open) = &self.open {
            if open.len < self.pack_size_target_bytes {
                return Ok(());
            }
            let full = self.open.take().ok_or_else(no_open_pack)?;
            self.full.push(full);
        }
        // Only ever append to the newest pack: positions (pack id, offset) must follow write
        // order, because a tombstone kills exactly the records positioned before it. An older
        // pack left unsealed by a crash is never written again (repack retires it).
        let packs = index.packs()?;
        let on_disk_max = pack_ids_on_disk(self.root)?.into_iter().max();
        let index_max = packs.iter().map(|p| p.id).max();
        let full_max = self.full.iter().map(|p| p.id).max();
        let high_water = Some(index.pack_id_high_water()?);
        let newest = [on_disk_max, index_max, full_max, high_water]
            .into_iter()
            .flatten()
            .max();
        let reusable = newest
            .and_then(|id| packs.iter().find(|p| p.id == id))
            .filter(|p| {
                !p.sealed
                    && !self.exclude.contains(&p.id)
                    && p.end_bytes < self.pack_size_target_bytes
                    && !self.full.iter().any(|f| f.id == p.id)
            });
        let (id, len) = match reusable {
            Some(p) => (p.id, p.end_bytes),
            None => {
                // Register first, create the file second: a crash in between leaves an index
                // row with no file (created on next use, or dropped by clean), never a pack
                // file the index does not know. The id is taken inside the write transaction:
                // write batches of other processes take ids too.
                let tx = index.begin()?;
                let id = newest.unwrap_or(0).max(tx.pack_id_high_water()?) + 1;
                tx.put_pack(&PackRow {
                    id,
                    sealed: false,
                    end_bytes: PACK_HEADER_BYTES as u64,
                })?;
                tx.set_pack_id_high_water(id)?;
                tx.commit()?;
                (id, PACK_HEADER_BYTES as u64)
            }
        };
        let path = pack_path(self.root, id);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => {
                let header = read_pack_header(&file, id)?;
                if header.hash != self.hash || header.pack_id != id {
                    return Err(Error::CorruptPack {
                        pack: id,
                        reason: "pack header does not match the store".into(),
                    });
                }
                // Bytes past the committed end are a crash tail nobody points at: drop them.
                let on_disk = file.metadata().at("stat", &path)?.len();
                if on_disk < len {
                    return Err(Error::CorruptPack {
                        pack: id,
                        reason: format!("file is {on_disk} bytes, index says {len} are committed"),
                    });
                }
                if on_disk > len {
                    file.set_len(len).at("truncate crash tail of", &path)?;
                    fsutil::datasync(&file, &path)?;
                }
                file
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound && len == PACK_HEADER_BYTES as u64 =>
            {
                // Header written under a temporary name, then renamed: a pack file always
                // starts with a whole header (a crash leaves a `.tmp`, which clean removes).
                let tmp = path.with_extension("pack.tmp");
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
                    .at("create pack", &tmp)?;
                let header = PackHeader {
                    version: PACK_FORMAT_VERSION,
                    hash: self.hash,
                    flags: 0,
                    pack_id: id,
                    container_id: self.container_id,
                };
                file.write_all_at(&header.encode(), 0)
                    .at("write pack header", &tmp)?;
                fsutil::datasync(&file, &tmp)?;
                std::fs::rename(&tmp, &path).at("rename into", &path)?;
                fsutil::fsync_dir(&self.root.join(PACKS_DIR))?;
                file
            }
            Err(e) => return Err(Error::io("open pack", &path, e)),
        };
        self.open = Some(OpenPack {
            id,
            file: std::sync::Arc::new(file),
            path,
            len,
            buf_at: len,
            buf: self.behind.empty_buffer(),
        });
        Ok(())
    }

    /// Hands the write buffer of `open` to the write-behind thread (see [`fsutil::WriteBehind`]).
    fn flush_buf(behind: &mut fsutil::WriteBehind, open: &mut OpenPack) -> Result<()> {
        behind.submit(&open.file, &open.path, &mut open.buf, &mut open.buf_at)
    }

    /// The pack being appended to (an internal error if none is open).
    fn open_pack(&mut self) -> Result<&mut OpenPack> {
        self.open.as_mut().ok_or_else(no_open_pack)
    }

    /// The open pack, its write buffer first handed to the write-behind thread if `len` more
    /// bytes would not fit in it.
    fn open_with_room(&mut self, len: usize) -> Result<&mut OpenPack> {
        let open = self.open.as_mut().ok_or_else(no_open_pack)?;
        if open.buf.len() + len > WRITE_BUFFER_BYTES {
            Self::flush_buf(&mut self.behind, open)?;
        }
        Ok(open)
    }

    /// The open pack with its write buffer written, for writes that bypass the buffer. The
    /// buffer is written on this thread: handing a part-filled buffer to the write-behind
    /// thread and waiting for it costs a round trip between threads per direct write, which
    /// made repack (a direct write every few records) a third slower.
    fn open_for_direct_write(&mut self, index: &mut Index) -> Result<&mut OpenPack> {
        self.ensure_open(index)?;
        let open = self.open_pack()?;
        fsutil::reserve_ahead(&open.file, open.buf_at, open.buf.len() as u64);
        fsutil::flush_write_buffer(&open.file, &open.path, &mut open.buf, &mut open.buf_at)?;
        Ok(open)
    }

    /// Truncates the open pack back to `len`, after the writes in flight have landed (one
    /// landing later would extend the file again).
    fn truncate_open(&mut self, len: u64) -> Result<()> {
        self.behind.drain()?;
        let open = self.open_pack()?;
        open.file.set_len(len).at("truncate pack", &open.path)
    }

    /// Appends an object encoded by [`crate::compress::encode`].
    pub(crate) fn append_encoded(
        &mut self,
        index: &mut Index,
        key: Key,
        raw_len: u64,
        enc: &crate::compress::Encoded,
    ) -> Result<Position> {
        self.append(
            index,
            &NewRecord {
                key,
                raw_len,
                compressed: enc.compressed,
                payload: &enc.payload,
            },
        )
    }

    /// Appends an object record; visible to readers only after [`Appender::commit`].
    pub(crate) fn append(&mut self, index: &mut Index, rec: &NewRecord<'_>) -> Result<Position> {
        let header = RecordHeader {
            kind: RecordKind::Object,
            flags: if rec.compressed { FLAG_ZSTD } else { 0 },
            hash: self.hash,
            raw_len: rec.raw_len,
            stored_len: rec.payload.len() as u64,
            key: rec.key,
        };
        let hb = header.encode();
        let mut sum = RecordChecksum::new(&hb);
        sum.update(rec.payload);
        self.append_object_bytes(index, &header, &[&hb, rec.payload, &sum.finish()])
    }

    /// Writes the bytes of one object record (given in `parts`, in order) at the end of the
    /// open pack and keeps its row for the next commit. Records that do not fit the write
    /// buffer go straight to the file.
    fn append_object_bytes(
        &mut self,
        index: &mut Index,
        header: &RecordHeader,
        parts: &[&[u8]],
    ) -> Result<Position> {
        self.ensure_open(index)?;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let open = self.open_with_room(len)?;
        let offset = open.len;
        if len > WRITE_BUFFER_BYTES {
            let mut at = offset;
            for part in parts {
                open.file
                    .write_all_at(part, at)
                    .at("write pack", &open.path)?;
                at += part.len() as u64;
            }
            open.buf_at = at;
        } else {
            for part in parts {
                open.buf.extend_from_slice(part);
            }
        }
        open.len += len as u64;
        let row = IndexRow {
            pack: open.id,
            offset,
            raw_len: header.raw_len,
            stored_len: header.stored_len,
            flags: header.flags,
        };
        self.pending_rows.push((header.key, row));
        Ok(row.position())
    }

    /// Appends a record whose payload is streamed from `fill`, which writes the payload through
    /// the given sink and returns (key, raw_len, compressed). The header is written last, so the
    /// key need not be known in advance. Returns the key, and no position (nothing kept) when
    /// `keep` says the key is not wanted (already stored).
    pub(crate) fn append_streamed(
        &mut self,
        index: &mut Index,
        fill: &mut StreamFill<'_>,
        keep: &mut dyn FnMut(&Key, &mut Index) -> Result<bool>,
    ) -> Result<(Key, Option<Position>)> {
        let open = self.open_for_direct_write(index)?;
        let offset = open.len;
        let payload_at = offset + RECORD_HEADER_BYTES as u64;
        let mut written = 0u64;
        let mut crc = crc32fast::Hasher::new();
        let (key, raw_len, compressed) = {
            let file = &open.file;
            let path = &open.path;
            let mut sink = |chunk: &[u8]| -> Result<()> {
                fsutil::reserve_ahead(file, payload_at + written, chunk.len() as u64);
                file.write_all_at(chunk, payload_at + written)
                    .at("write pack", path)?;
                crc.update(chunk);
                written += chunk.len() as u64;
                Ok(())
            };
            fill(&mut sink)?
        };
        if !keep(&key, index)? {
            // Nobody points at these bytes: give them back rather than leave a hole.
            self.truncate_open(offset)?;
            return Ok((key, None));
        }
        let flags = if compressed { FLAG_ZSTD } else { 0 };
        let header = RecordHeader {
            kind: RecordKind::Object,
            flags,
            hash: self.hash,
            raw_len,
            stored_len: written,
            key,
        };
        let hb = header.encode();
        // Checksum = crc(header ‖ payload); combine by recomputing over header then the payload crc state.
        let mut full = crc32fast::Hasher::new();
        full.update(&hb);
        full.combine(&crc);
        let open = self.open_pack()?;
        open.file
            .write_all_at(&hb, offset)
            .at("write pack", &open.path)?;
        open.file
            .write_all_at(&full.finalize().to_le_bytes(), payload_at + written)
            .at("write pack", &open.path)?;
        open.len = payload_at + written + RECORD_TRAILER_BYTES as u64;
        open.buf_at = open.len;
        let row = IndexRow {
            pack: open.id,
            offset,
            raw_len,
            stored_len: written,
            flags,
        };
        self.pending_rows.push((key, row));
        Ok((key, Some(row.position())))
    }

    /// Appends object records that [`format::decode_record`] already checked and that lie next
    /// to each other in `span[run]` (`headers` in order), byte for byte: a record holds no
    /// position of its own, so its moved copy is the same bytes, and neither its header nor its
    /// checksum needs computing again. The run gets its place at the end of the pack here and
    /// is pushed onto `deferred`, for the caller to write straight from `span` (no copy into
    /// the write buffer), on another thread and together with the runs next to it: every
    /// deferred write must have landed before the next [`Appender::commit`].
    pub(crate) fn append_verified_records(
        &mut self,
        index: &mut Index,
        headers: &[RecordHeader],
        span: &[u8],
        run: std::ops::Range<usize>,
        deferred: &mut Vec<SpanWrite>,
    ) -> Result<()> {
        let total: u64 = headers.iter().map(|h| h.record_len()).sum();
        let bytes = span.get(run.clone()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "run {run:?} outside a span of {} bytes",
                span.len()
            ))
        })?;
        if total != bytes.len() as u64 {
            return Err(Error::InvalidArgument(format!(
                "{} records of {total} bytes given as {} bytes",
                headers.len(),
                bytes.len()
            )));
        }
        // Every byte before the run's place lands first: the run is written from the start of
        // the block it begins in (see [`crate::direct`]), and no other write may touch that
        // block meanwhile. In a repack the write buffer is empty here (tombstones follow the
        // runs of a pack), so this costs nothing.
        self.behind.drain()?;
        let open = self.open_for_direct_write(index)?;
        let mut offset = open.len;
        deferred.push(SpanWrite {
            file: open.file.clone(),
            path: open.path.clone(),
            at: offset,
            range: run,
        });
        open.len += bytes.len() as u64;
        open.buf_at = open.len;
        let pack = open.id;
        for h in headers {
            let row = IndexRow {
                pack,
                offset,
                raw_len: h.raw_len,
                stored_len: h.stored_len,
                flags: h.flags,
            };
            self.pending_rows.push((h.key, row));
            offset += h.record_len();
        }
        Ok(())
    }

    /// Copies the record at `row` of `src` verbatim in constant memory, checking its header
    /// and checksum on the way (for records too large to hold in memory).
    pub(crate) fn copy_record(
        &mut self,
        index: &mut Index,
        src: &File,
        key: &Key,
        row: &IndexRow,
    ) -> Result<Position> {
        let header = read_header(src, key, row)?;
        let open = self.open_for_direct_write(index)?;
        let offset = open.len;
        let body = RECORD_HEADER_BYTES as u64 + row.stored_len;
        let mut crc = crc32fast::Hasher::new();
        let mut buf = vec![0u8; crate::loose::STREAM_CHUNK_BYTES];
        let mut done = 0u64;
        while done < body {
            let n = (body - done).min(buf.len() as u64) as usize;
            read_exact_at(src, &mut buf[..n], row.offset + done, row.pack)?;
            crc.update(&buf[..n]);
            open.file
                .write_all_at(&buf[..n], offset + done)
                .at("write pack", &open.path)?;
            done += n as u64;
        }
        let mut trailer = [0u8; RECORD_TRAILER_BYTES];
        read_exact_at(src, &mut trailer, row.offset + body, row.pack)?;
        if crc.finalize().to_le_bytes() != trailer {
            self.truncate_open(offset)?;
            return Err(Error::CorruptRecord {
                pack: row.pack,
                offset: row.offset,
                reason: format::FormatError::RecordChecksum,
            });
        }
        open.file
            .write_all_at(&trailer, offset + body)
            .at("write pack", &open.path)?;
        open.len = offset + body + RECORD_TRAILER_BYTES as u64;
        open.buf_at = open.len;
        let new_row = IndexRow {
            pack: open.id,
            offset,
            raw_len: header.raw_len,
            stored_len: header.stored_len,
            flags: header.flags,
        };
        self.pending_rows.push((*key, new_row));
        Ok(new_row.position())
    }

    /// Appends a copy of a tombstone that kills records before `before`.
    pub(crate) fn append_tombstone(
        &mut self,
        index: &mut Index,
        key: Key,
        before: Position,
    ) -> Result<Position> {
        self.append_tombstone_with(index, key, &|_| before)
    }

    fn append_tombstone_with(
        &mut self,
        index: &mut Index,
        key: Key,
        before_of: &dyn Fn(Position) -> Position,
    ) -> Result<Position> {
        self.ensure_open(index)?;
        self.push_tombstone(key, before_of)
    }

    /// Opens the pack to append to now (registering a new one if needed), so that
    /// [`Appender::append_delete_tombstone_to_open`] needs no index access.
    pub(crate) fn open_now(&mut self, index: &mut Index) -> Result<()> {
        self.ensure_open(index)
    }

    /// Appends a tombstone deleting `key`, whose live record is at `live`, to the pack
    /// [`Appender::open_now`] opened, without asking the index (the caller holds it in a write
    /// transaction). It kills every record of the key before its own position or just past
    /// `live`, whichever is later: a write batch may have published the record in a pack newer
    /// than the one appended to. The pack may end up past its size target by these tombstones:
    /// the target is where the next pack starts, not a limit.
    pub(crate) fn append_delete_tombstone_to_open(
        &mut self,
        key: Key,
        live: Position,
    ) -> Result<Position> {
        self.push_tombstone(key, &|at| {
            at.max(Position {
                pack: live.pack,
                offset: live.offset + 1,
            })
        })
    }

    /// Appends a tombstone record to the open pack.
    fn push_tombstone(
        &mut self,
        key: Key,
        before_of: &dyn Fn(Position) -> Position,
    ) -> Result<Position> {
        let hash = self.hash;
        let open = self.open_pack()?;
        let at = Position {
            pack: open.id,
            offset: open.len,
        };
        let before = before_of(at);
        let payload = format::encode_tombstone(before);
        let header = RecordHeader {
            kind: RecordKind::Tombstone,
            flags: 0,
            hash,
            raw_len: 0,
            stored_len: payload.len() as u64,
            key,
        };
        let mut rec = Vec::with_capacity(header.record_len() as usize);
        format::encode_record(&header, &payload, &mut rec);
        let open = self.open_with_room(rec.len())?;
        open.buf.extend_from_slice(&rec);
        open.len += rec.len() as u64;
        self.pending_tombstones
            .push(TombstoneRow { key, at, before });
        Ok(at)
    }

    /// Makes everything appended so far durable, then commits the index rows pointing at it
    /// (plus whatever `extra` does in the same transaction). Seals packs that filled up. The
    /// index's staged transaction, when one is open, is the one that commits: with the rows of
    /// this appender it holds, and whatever the caller staged in it besides.
    pub(crate) fn commit(
        &mut self,
        index: &mut Index,
        extra: &mut dyn FnMut(&crate::index::IndexTx<'_>) -> Result<()>,
    ) -> Result<()> {
        let staged = self.staged_rows(index);
        let tx = index.continue_staged()?;
        self.commit_rows_in(tx, staged.unwrap_or(0..0), extra)?;
        self.seal_filled(index)
    }

    /// [`Appender::commit`] inside a write transaction the caller began (and may have written
    /// to already), without sealing packs that filled up: call [`Appender::seal_filled`] after.
    pub(crate) fn commit_in(
        &mut self,
        tx: crate::index::IndexTx<'_>,
        extra: &mut dyn FnMut(&crate::index::IndexTx<'_>) -> Result<()>,
    ) -> Result<()> {
        self.commit_rows_in(tx, 0..0, extra)
    }

    /// [`Appender::commit_in`], where `tx` already holds the `staged` range of the pending
    /// rows.
    fn commit_rows_in(
        &mut self,
        tx: crate::index::IndexTx<'_>,
        staged: std::ops::Range<usize>,
        extra: &mut dyn FnMut(&crate::index::IndexTx<'_>) -> Result<()>,
    ) -> Result<()> {
        self.staged = None;
        self.stage_next = 0;
        for p in self.full.iter_mut().chain(self.open.iter_mut()) {
            Self::flush_buf(&mut self.behind, p)?;
        }
        self.behind.drain()?;
        // In key order, each B-tree page is visited once per commit instead of once per row.
        // Ties (the same key appended twice) keep append order, as a stable sort would: the
        // unstable sort moves less memory, which mattered at a million rows. Many rows sort on
        // every core: a million took 60 ms of the import's tail, where nothing else runs.
        let (before, rest) = self.pending_rows.split_at_mut(staged.start);
        let after = &mut rest[staged.len()..];
        let order = |(key, row): &(Key, IndexRow)| (*key, row.position());
        for rows in [&mut *before, &mut *after] {
            if rows.len() >= crate::store::PARALLEL_SORT_ITEMS_MIN {
                rayon::slice::ParallelSliceMut::par_sort_unstable_by_key(rows, order);
            } else {
                rows.sort_unstable_by_key(order);
            }
        }
        let packs: Vec<&OpenPack> = self.full.iter().chain(self.open.iter()).collect();
        let (pending_rows, pending_tombstones, moves) =
            ([&*before, &*after], &self.pending_tombstones, self.moves);
        // The rows go into the (uncommitted) transaction while the pack bytes are synced on
        // another thread; the commit waits for the sync, so no row is durable before its bytes.
        std::thread::scope(|scope| -> Result<()> {
            let synced = scope.spawn(|| -> Result<()> {
                for p in &packs {
                    fsutil::datasync(&p.file, &p.path)?;
                }
                Ok(())
            });
            let staged = {
                let mut stage = || -> Result<()> {
                    let how = if moves {
                        RowWrite::Replace
                    } else {
                        RowWrite::New
                    };
                    for rows in pending_rows.into_iter().filter(|r| !r.is_empty()) {
                        tx.write_rows(how, rows)?;
                    }
                    tx.put_tombstones(pending_tombstones)?;
                    for p in &packs {
                        tx.put_pack(&PackRow {
                            id: p.id,
                            sealed: false,
                            end_bytes: p.len,
                        })?;
                    }
                    extra(&tx)
                };
                stage().map(|()| tx)
            };
            let synced = synced.join().unwrap_or_else(|_| {
                Err(Error::InvalidArgument("pack sync thread panicked".into()))
            });
            // A failed sync drops the transaction: nothing points at bytes that may be lost.
            synced?;
            staged?.commit()
        })?;
        self.pending_rows.clear();
        self.pending_tombstones.clear();
        Ok(())
    }

    /// Seals the packs that filled up (after a commit made their rows durable).
    pub(crate) fn seal_filled(&mut self, index: &mut Index) -> Result<()> {
        for p in std::mem::take(&mut self.full) {
            seal(index, &p.file, p.id, &p.path, p.len)?;
        }
        Ok(())
    }

    /// Commits, then seals the open pack if `seal_open` (repack output) and releases it.
    pub(crate) fn finish(mut self, index: &mut Index, seal_open: bool) -> Result<()> {
        // Most callers committed everything already: another commit would only sync the pack
        // and commit to the index once more, for nothing.
        if self.pending() > 0 || !self.full.is_empty() {
            self.commit(index, &mut |_| Ok(()))?;
        }
        if let Some(p) = self.open.take() {
            if p.len == PACK_HEADER_BYTES as u64 {
                // Opened but never written (every object was a duplicate): leave no empty pack.
                let tx = index.begin()?;
                tx.remove_pack(p.id)?;
                tx.commit()?;
                drop(p.file);
                std::fs::remove_file(&p.path).at("remove empty pack", &p.path)?;
                return Ok(());
            }
            if seal_open || p.len >= self.pack_size_target_bytes {
                seal(index, &p.file, p.id, &p.path, p.len)?;
            }
        }
        Ok(())
    }

    /// Drops uncommitted records (on error): truncates the open pack back to its committed end.
    pub(crate) fn abandon(mut self, index: &mut Index) {
        // Rows staged for records about to be dropped.
        index.drop_staged();
        // Writes still in flight would land past the truncation.
        let _ = self.behind.drain();
        let packs = index.packs().unwrap_or_default();
        for p in self.full.drain(..).chain(self.open.take()) {
            if let Some(row) = packs.iter().find(|r| r.id == p.id) {
                let _ = p.file.set_len(row.end_bytes);
            }
        }
    }
}

/// Seals a pack: writes its table (from the committed index rows) and footer, fdatasyncs it,
/// and records it as sealed.
pub(crate) fn seal(index: &mut Index, file: &File, id: u64, path: &Path, len: u64) -> Result<()> {
    let mut entries: Vec<(Key, u64)> = index
        .rows_in_pack(id)?
        .into_iter()
        .map(|(k, r)| (k, r.offset))
        .collect();
    entries.extend(
        index
            .tombstones()?
            .into_iter()
            .filter(|t| t.at.pack == id)
            .map(|t| (t.key, t.at.offset)),
    );
    entries.sort_unstable();
    entries.dedup();
    let table = format::encode_table(&entries);
    let footer = Footer {
        table_offset: len,
        entry_count: entries.len() as u64,
        table_crc: crc32fast::hash(&table),
    };
    file.set_len(len).at("truncate before sealing", path)?;
    file.write_all_at(&table, len)
        .at("write pack table", path)?;
    file.write_all_at(&footer.encode(), len + table.len() as u64)
        .at("write pack footer", path)?;
    fsutil::datasync(file, path)?;
    let end = len + table.len() as u64 + FOOTER_BYTES as u64;
    let tx = index.begin()?;
    tx.put_pack(&PackRow {
        id,
        sealed: true,
        end_bytes: end,
    })?;
    tx.commit()
}

/// Groups records (all in one pack, sorted by offset) into runs read with one call each: a run
/// ends where the next record would take it past `span_bytes_max` (a single larger record is a
/// run of its own). Returns (first row, end row, first byte, end byte) per run.
pub(crate) fn plan_spans(
    rows: &[(Key, IndexRow)],
    span_bytes_max: u64,
) -> Vec<(usize, usize, u64, u64)> {
    let len_of = |r: &IndexRow| format::RECORD_OVERHEAD_BYTES + r.stored_len;
    let mut spans = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let start = rows[i].1.offset;
        let mut end_i = i + 1;
        let mut span_end = start + len_of(&rows[i].1);
        while end_i < rows.len() {
            let r = &rows[end_i].1;
            if r.offset < span_end || r.offset + len_of(r) - start > span_bytes_max {
                break;
            }
            span_end = r.offset + len_of(r);
            end_i += 1;
        }
        spans.push((i, end_i, start, span_end));
        i = end_i;
    }
    spans
}

/// Reads the records at `rows` (all in `pack`, sorted by offset) with few large reads (see
/// [`for_each_span_read_ahead`]) and hands each one's bytes (header, payload, trailer; not yet
/// verified) to `visit`.
pub(crate) fn for_each_record(
    file: &File,
    pack: u64,
    rows: &[(Key, IndexRow)],
    span_bytes_max: u64,
    visit: &mut RecordVisit<'_>,
) -> Result<()> {
    for_each_span_read_ahead(
        file,
        pack,
        rows,
        span_bytes_max,
        &mut Vec::new(),
        false,
        &mut |span_rows, start, buf, _| {
            for (key, row) in span_rows {
                let at = (row.offset - start) as usize;
                visit(
                    key,
                    row,
                    &buf[at..at + (format::RECORD_OVERHEAD_BYTES + row.stored_len) as usize],
                )?;
            }
            Ok(())
        },
    )
}

/// Bytes of a span to write to a pack once its visitor is done with them: `range` of the span's
/// buffer, at `at` in `file` (see [`for_each_span_read_ahead`]).
pub(crate) struct SpanWrite {
    pub file: std::sync::Arc<File>,
    pub path: PathBuf,
    pub at: u64,
    pub range: std::ops::Range<usize>,
}

/// Receives one span of [`for_each_span_read_ahead`]: its rows (sorted by offset), the pack
/// offset of its first byte, its bytes (records not yet verified), and a list to push writes
/// of those bytes onto.
pub(crate) type SpanVisit<'a> =
    dyn FnMut(&[(Key, IndexRow)], u64, &[u8], &mut Vec<SpanWrite>) -> Result<()> + 'a;

/// Span buffers in use at once: one being read into, one being visited, and the rest queued
/// for or with the writer. More than three so that the writer keeps the device busy while the
/// visiting thread does something slower for a moment (a repack staging its rows takes 2-3
/// ms); many small ones rather than three large ones because a buffer's memory is fresh the
/// first time, and on these VMs the first touch of a page costs more than the copy into it
/// (a repack of 92 MB packs went from 3 x 8 MiB to 8 x 1 MiB at 0.92-0.95x the time).
const SPAN_BUFFERS: usize = 8;

/// Reads the records at `rows` (all in `pack`, sorted by offset) span by span (see
/// [`plan_spans`]) and hands each span to `visit`, as a pipeline over three threads: one reads
/// the next span while `visit` looks at this one, and one does the writes `visit` asked for
/// from the span before. Reading (the kernel's copy out of the page cache) and writing were the
/// largest costs of a repack; here they leave the thread that checks records and keeps the
/// index rows, and the two cores share them. With `bypass_page_cache` the writes go through
/// [`DirectRuns`]: each write should start where the one before it ended, in the same file, for
/// the staging to go on (it starts over otherwise), and nothing else may write to those files
/// until this returns. Without, consecutive writes go in one vectored call through the page
/// cache.
///
/// Every write has landed (or failed, and the error is returned) when this returns. The
/// buffers come from `pool` and go back to it, so that a caller visiting several packs touches
/// their memory once (fresh pages cost more than the copy into them on these VMs).
///
/// Each span read leaves the page cache: callers read packs that they remove once the moved
/// records are committed, and freeing the pages here, on the reader thread while the writes
/// wait for the device, takes that part out of the unlink (4 of 16 ms for a 92 MB pack here).
pub(crate) fn for_each_span_read_ahead(
    file: &File,
    pack: u64,
    rows: &[(Key, IndexRow)],
    span_bytes_max: u64,
    pool: &mut Vec<Vec<u8>>,
    bypass_page_cache: bool,
    visit: &mut SpanVisit<'_>,
) -> Result<()> {
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
    let spans = plan_spans(rows, span_bytes_max);
    let read_span = |i: usize, start: u64, end: u64, mut buf: Vec<u8>| -> Result<Vec<u8>> {
        check_fits(file, &rows[i].1, end - start)?;
        buf.resize((end - start) as usize, 0);
        read_exact_at(file, &mut buf, start, pack)?;
        fsutil::drop_cached(file, start, end - start);
        Ok(buf)
    };
    type Job = (Vec<u8>, Vec<SpanWrite>);
    let write_failed = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        // Room for every buffer in every channel: a send never waits, so a stage that stops
        // (an error) never leaves another blocked on it.
        let (filled_tx, filled) = sync_channel::<Result<Vec<u8>>>(SPAN_BUFFERS);
        let (emptied, empty_rx) = sync_channel::<Vec<u8>>(SPAN_BUFFERS);
        let (to_writer, jobs): (SyncSender<Job>, Receiver<Job>) = sync_channel(SPAN_BUFFERS);
        let spans_read = &spans;
        let read_span = &read_span;
        // The reader ends with the buffers handed back after its last read, for the pool.
        let reader = scope.spawn(move || {
            for &(i, _, start, end) in spans_read {
                let Ok(buf) = empty_rx.recv() else {
                    return Vec::new();
                };
                if filled_tx.send(read_span(i, start, end, buf)).is_err() {
                    return Vec::new();
                }
            }
            drop(filled_tx);
            empty_rx.iter().collect::<Vec<_>>()
        });
        let writer_emptied = emptied.clone();
        let failed = &write_failed;
        // After a failed write the writer still hands every buffer back (unwritten): a buffer
        // it kept could be the one the reader waits for while this thread waits for the reader.
        let windows = if bypass_page_cache {
            crate::direct::take_windows(pool)
        } else {
            Vec::new()
        };
        let writer = scope.spawn(move || -> (Result<()>, Vec<Vec<u8>>) {
            let mut runs = DirectRuns::new(windows);
            let mut result = Ok(());
            for (buf, writes) in jobs {
                if result.is_ok() {
                    result = if bypass_page_cache {
                        write_span_direct(&mut runs, &buf, &writes)
                    } else {
                        write_span_cached(&buf, &writes)
                    };
                    failed.store(result.is_err(), std::sync::atomic::Ordering::Relaxed);
                }
                let _ = writer_emptied.send(buf);
            }
            if result.is_ok() {
                result = runs.finish();
            }
            (result, runs.into_buffers())
        });
        for _ in 0..SPAN_BUFFERS {
            let _ = emptied.send(pool.pop().unwrap_or_default());
        }
        let visited = (|| -> Result<()> {
            for &(i, end_i, start, _) in &spans {
                if write_failed.load(std::sync::atomic::Ordering::Relaxed) {
                    // The writer's join below returns its error.
                    break;
                }
                let buf = filled.recv().map_err(|_| {
                    Error::InvalidArgument("pack read-ahead thread ended early".into())
                })??;
                let mut writes = Vec::new();
                visit(&rows[i..end_i], start, &buf, &mut writes)?;
                if writes.is_empty() {
                    let _ = emptied.send(buf);
                } else if to_writer.send((buf, writes)).is_err() {
                    break;
                }
            }
            Ok(())
        })();
        // Closing the channels ends the writer after its last job and the reader after it.
        drop(to_writer);
        drop(emptied);
        drop(filled);
        let written = match writer.join() {
            Ok((written, windows)) => {
                pool.extend(windows);
                written
            }
            Err(_) => Err(Error::InvalidArgument("pack write thread panicked".into())),
        };
        if let Ok(buffers) = reader.join() {
            pool.extend(buffers);
        }
        written?;
        visited
    })
}

/// Does the writes of one span with [`DirectRuns`] (see [`for_each_span_read_ahead`]).
fn write_span_direct(runs: &mut DirectRuns, buf: &[u8], writes: &[SpanWrite]) -> Result<()> {
    for w in writes {
        runs.write(&w.file, &w.path, w.at, span_bytes(buf, w)?)?;
    }
    Ok(())
}

/// Does the writes of one span through the page cache, then starts their writeback so that the
/// commit's fdatasync finds the bytes already on their way.
fn write_span_cached(buf: &[u8], writes: &[SpanWrite]) -> Result<()> {
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut i = 0;
    while i < writes.len() {
        // Writes that follow each other in one pack (a pack filling up starts another) go in
        // one vectored call, then get their writeback started together.
        let (file, path, from) = (&writes[i].file, &writes[i].path, writes[i].at);
        let mut to = from;
        parts.clear();
        while i < writes.len()
            && std::sync::Arc::ptr_eq(&writes[i].file, file)
            && writes[i].at == to
        {
            let bytes = span_bytes(buf, &writes[i])?;
            parts.push(bytes);
            to += bytes.len() as u64;
            i += 1;
        }
        fsutil::reserve_ahead(file, from, to - from);
        fsutil::write_all_vectored_at(file, &parts, from).at("write pack", path)?;
        fsutil::start_writeback(file, from, to - from);
    }
    Ok(())
}

/// The bytes of `buf` that `w` writes.
fn span_bytes<'b>(buf: &'b [u8], w: &SpanWrite) -> Result<&'b [u8]> {
    buf.get(w.range.clone()).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "write of {:?} outside a span of {} bytes",
            w.range,
            buf.len()
        ))
    })
}

/// Where valid records end in a sealed pack: the table offset.
pub(crate) fn records_end(row: &PackRow, file: &File) -> Result<u64> {
    if row.sealed {
        match read_sealed_table(file, row.id, row.end_bytes)? {
            Some((footer, _)) => Ok(footer.table_offset),
            None => Err(Error::CorruptPack {
                pack: row.id,
                reason: "sealed pack has no valid footer".into(),
            }),
        }
    } else {
        Ok(row.end_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of records of `record_bytes` each (overhead included), back to back in one file.
    fn back_to_back_rows(count: u64, record_bytes: u64) -> Vec<(Key, IndexRow)> {
        (0..count)
            .map(|i| {
                let mut key = [0u8; crate::key::KEY_BYTES];
                key[..8].copy_from_slice(&i.to_be_bytes());
                let row = IndexRow {
                    pack: 1,
                    offset: i * record_bytes,
                    raw_len: record_bytes - format::RECORD_OVERHEAD_BYTES,
                    stored_len: record_bytes - format::RECORD_OVERHEAD_BYTES,
                    flags: 0,
                };
                (Key::from_bytes(key), row)
            })
            .collect()
    }

    #[test]
    fn span_pipeline_writes_every_span_and_keeps_its_buffers() {
        for bypass_page_cache in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let src_path = dir.path().join("src");
            let record_bytes = 1000u64;
            let rows = back_to_back_rows(50, record_bytes);
            let src: Vec<u8> = (0..50 * record_bytes)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            std::fs::write(&src_path, &src).unwrap();
            // The destination already holds bytes ending mid-block, as a pack does.
            let dst_path = dir.path().join("dst");
            let mut expected = vec![9u8; 1234];
            std::fs::write(&dst_path, &expected).unwrap();
            let dst = std::sync::Arc::new(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&dst_path)
                    .unwrap(),
            );
            let mut pool = Vec::new();
            let mut spans = 0;
            // Spans of 4 records; the second half of each is appended.
            for_each_span_read_ahead(
                &File::open(&src_path).unwrap(),
                1,
                &rows,
                4 * record_bytes,
                &mut pool,
                bypass_page_cache,
                &mut |span_rows, start, buf, writes| {
                    assert_eq!(buf.len() as u64, span_rows.len() as u64 * record_bytes);
                    assert_eq!(buf, &src[start as usize..start as usize + buf.len()]);
                    let half = buf.len() / 2;
                    writes.push(SpanWrite {
                        file: dst.clone(),
                        path: dst_path.clone(),
                        at: expected.len() as u64,
                        range: half..buf.len(),
                    });
                    expected.extend_from_slice(&buf[half..]);
                    spans += 1;
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(spans, 13, "50 records in spans of 4");
            assert!(
                std::fs::read(&dst_path).unwrap() == expected,
                "bypass_page_cache {bypass_page_cache}: the file holds what was written"
            );
            // The writer stages only for direct writes (one window here: none fills up).
            assert_eq!(
                pool.len(),
                SPAN_BUFFERS + usize::from(bypass_page_cache),
                "every buffer (and the writer's staging window) comes back to the pool"
            );
        }
    }

    #[test]
    fn span_pipeline_returns_a_failed_write_instead_of_waiting_forever() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        let rows = back_to_back_rows(40, 100);
        std::fs::write(&src_path, vec![5u8; 4000]).unwrap();
        let dst_path = dir.path().join("read-only");
        std::fs::write(&dst_path, b"x").unwrap();
        // Opened for reading only: every write fails, and every span asks for one, so the
        // writer fails while the reader and the visitor are still going.
        let dst = std::sync::Arc::new(File::open(&dst_path).unwrap());
        let mut pool = Vec::new();
        let err = for_each_span_read_ahead(
            &File::open(&src_path).unwrap(),
            1,
            &rows,
            100,
            &mut pool,
            false,
            &mut |_, start, buf, writes| {
                writes.push(SpanWrite {
                    file: dst.clone(),
                    path: dst_path.clone(),
                    at: start,
                    range: 0..buf.len(),
                });
                Ok(())
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("read-only"), "the error names the file: {err}");
        assert_eq!(std::fs::read(&dst_path).unwrap(), b"x");
    }

    #[test]
    fn pack_names() {
        assert_eq!(parse_pack_name("17.pack"), Some(17));
        assert_eq!(parse_pack_name("017.pack"), None);
        assert_eq!(parse_pack_name("x.pack"), None);
        assert_eq!(parse_pack_name("17.pack.tmp"), None);
    }
}
