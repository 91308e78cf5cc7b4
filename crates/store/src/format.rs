//! The pack format: byte layouts of the pack header, records and the sealed footer.
//!
//! Everything here is pure: functions from bytes to values and back, no I/O. Every parser
//! returns an error for any input it does not fully understand — these bytes come from disk and
//! are never trusted. `docs/format.md` is the prose version of this module with byte diagrams;
//! change both together and bump [`PACK_FORMAT_VERSION`].

use crate::key::{HashAlgorithm, Key, KEY_BYTES};

/// Version of the pack format written by this library (header field `version`).
pub const PACK_FORMAT_VERSION: u16 = 2;
/// Oldest pack format version this library still reads (version 1 had no pack flags).
pub const PACK_FORMAT_VERSION_MIN: u16 = 1;
/// Version of the sealed footer's layout (unchanged since pack format 1).
pub const FOOTER_FORMAT_VERSION: u16 = 1;
/// Pack header flag: a batch pack, written whole and sealed by one [`crate::WriteBatch`] commit
/// rather than appended by maintenance; the next `pack` merges it into a maintenance pack.
pub const PACK_FLAG_BATCH: u8 = 1;

/// First bytes of every pack file.
pub const PACK_MAGIC: [u8; 8] = *b"BASNPACK";
/// First bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"BREC";
/// Magic of the sealed-pack footer (stands at the very end of a sealed pack).
pub const FOOTER_MAGIC: [u8; 8] = *b"BASNSEAL";

/// Size of the pack header in bytes.
pub const PACK_HEADER_BYTES: usize = 48;
/// Size of a record header (magic .. header checksum), before the payload.
pub const RECORD_HEADER_BYTES: usize = 24 + KEY_BYTES + 4;
/// Size of the record trailer (checksum over header and payload).
pub const RECORD_TRAILER_BYTES: usize = 4;
/// Bytes a record adds around its payload.
pub const RECORD_OVERHEAD_BYTES: u64 = (RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES) as u64;
/// Size of one entry of the sealed table: key then record offset.
pub const TABLE_ENTRY_BYTES: usize = KEY_BYTES + 8;
/// Size of the sealed footer.
pub const FOOTER_BYTES: usize = 40;
/// Size of a tombstone payload: the position the deletion applies before.
pub const TOMBSTONE_PAYLOAD_BYTES: u64 = 16;

/// Raw bytes per independent zstd frame in a compressed payload. Fixed by the format (v1) so that
/// a reader can find the frame holding any raw offset without decompressing the ones before it.
pub const FRAME_RAW_BYTES: u64 = 1 << 20;

/// Largest payload a record may declare; guards allocations driven by lengths read from disk.
pub const RECORD_PAYLOAD_BYTES_MAX: u64 = 1 << 46;

/// Record kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// An object's content.
    Object = 1,
    /// A deletion marker: records of the key stored before a position are dead.
    Tombstone = 2,
}

/// Record flag: the payload is zstd frames followed by a frame table.
pub const FLAG_ZSTD: u8 = 0b0000_0001;
const KNOWN_FLAGS: u8 = FLAG_ZSTD;

/// Why bytes failed to parse. Carries no location: the caller adds pack and offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u16),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("record checksum mismatch")]
    RecordChecksum,
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    #[error("unknown record flags {0:#04x}")]
    UnknownFlags(u8),
    #[error("unknown hash algorithm id {0}")]
    UnknownHash(u8),
    #[error("implausible length: {0}")]
    BadLength(String),
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: u64, have: u64 },
    #[error("table checksum mismatch")]
    TableChecksum,
    #[error("table not sorted by key and offset at entry {0}")]
    TableOrder(u64),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// The fixed header at offset 0 of every pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    pub version: u16,
    pub hash: HashAlgorithm,
    /// [`PACK_FLAG_BATCH`] or zero.
    pub flags: u8,
    pub pack_id: u64,
    pub container_id: [u8; 16],
}

impl PackHeader {
    pub fn encode(&self) -> [u8; PACK_HEADER_BYTES] {
        let mut b = [0u8; PACK_HEADER_BYTES];
        b[0..8].copy_from_slice(&PACK_MAGIC);
        b[8..10].copy_from_slice(&self.version.to_le_bytes());
        b[10] = self.hash.id();
        b[11] = KEY_BYTES as u8;
        b[12] = self.flags;
        // 13..16 reserved, zero.
        b[16..24].copy_from_slice(&self.pack_id.to_le_bytes());
        b[24..40].copy_from_slice(&self.container_id);
        // 40..44 reserved, zero.
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<PackHeader, FormatError> {
        if b.len() < PACK_HEADER_BYTES {
            return Err(FormatError::Truncated {
                need: PACK_HEADER_BYTES as u64,
                have: b.len() as u64,
            });
        }
        if b[0..8] != PACK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&b[..44]) != u32_at(b, 44) {
            return Err(FormatError::HeaderChecksum);
        }
        let version = u16_at(b, 8);
        if !(PACK_FORMAT_VERSION_MIN..=PACK_FORMAT_VERSION).contains(&version) {
            return Err(FormatError::UnsupportedVersion(version));
        }
        // Version 1 had no flags byte; version 2 knows one flag.
        let flags_known = if version >= 2 { PACK_FLAG_BATCH } else { 0 };
        if b[12] & !flags_known != 0 || b[13..16] != [0; 3] || b[40..44] != [0; 4] {
            return Err(FormatError::BadLength(
                "reserved header bytes are not zero".into(),
            ));
        }
        let hash = HashAlgorithm::from_id(b[10]).ok_or(FormatError::UnknownHash(b[10]))?;
        if b[11] as usize != KEY_BYTES {
            return Err(FormatError::BadLength(format!("key length {}", b[11])));
        }
        let mut container_id = [0u8; 16];
        container_id.copy_from_slice(&b[24..40]);
        Ok(PackHeader {
            version,
            hash,
            flags: b[12],
            pack_id: u64_at(b, 16),
            container_id,
        })
    }
}

/// A parsed record header (everything before the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub flags: u8,
    pub hash: HashAlgorithm,
    /// Length of the object's content (uncompressed).
    pub raw_len: u64,
    /// Length of the payload as stored.
    pub stored_len: u64,
    pub key: Key,
}

impl RecordHeader {
    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// Bytes the whole record occupies in the pack.
    pub fn record_len(&self) -> u64 {
        RECORD_OVERHEAD_BYTES + self.stored_len
    }

    pub fn encode(&self) -> [u8; RECORD_HEADER_BYTES] {
        let mut b = [0u8; RECORD_HEADER_BYTES];
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[6] = KEY_BYTES as u8;
        b[7] = self.hash.id();
        b[8..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.stored_len.to_le_bytes());
        b[24..24 + KEY_BYTES].copy_from_slice(self.key.as_bytes());
        let crc = crc32fast::hash(&b[..24 + KEY_BYTES]);
        b[24 + KEY_BYTES..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks a record header: magic, header checksum, kind, flags, plausible lengths.
    pub fn decode(b: &[u8]) -> Result<RecordHeader, FormatError> {
        if b.len() < RECORD_HEADER_BYTES {
            return Err(FormatError::Truncated {
                need: RECORD_HEADER_BYTES as u64,
                have: b.len() as u64,
            });
        }
        if b[0..4] != RECORD_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&b[..24 + KEY_BYTES]) != u32_at(b, 24 + KEY_BYTES) {
            return Err(FormatError::HeaderChecksum);
        }
        let kind = match b[4] {
            1 => RecordKind::Object,
            2 => RecordKind::Tombstone,
            k => return Err(FormatError::UnknownKind(k)),
        };
        let flags = b[5];
        if flags & !KNOWN_FLAGS != 0 {
            return Err(FormatError::UnknownFlags(flags));
        }
        if b[6] as usize != KEY_BYTES {
            return Err(FormatError::BadLength(format!("key length {}", b[6])));
        }
        let hash = HashAlgorithm::from_id(b[7]).ok_or(FormatError::UnknownHash(b[7]))?;
        let raw_len = u64_at(b, 8);
        let stored_len = u64_at(b, 16);
        if raw_len > RECORD_PAYLOAD_BYTES_MAX || stored_len > RECORD_PAYLOAD_BYTES_MAX {
            return Err(FormatError::BadLength(format!(
                "raw {raw_len}, stored {stored_len}"
            )));
        }
        if flags & FLAG_ZSTD == 0 && kind == RecordKind::Object && raw_len != stored_len {
            return Err(FormatError::BadLength(format!(
                "uncompressed record with raw {raw_len} != stored {stored_len}"
            )));
        }
        if kind == RecordKind::Tombstone && stored_len != TOMBSTONE_PAYLOAD_BYTES {
            return Err(FormatError::BadLength(format!(
                "tombstone payload {stored_len}"
            )));
        }
        let mut key = [0u8; KEY_BYTES];
        key.copy_from_slice(&b[24..24 + KEY_BYTES]);
        Ok(RecordHeader {
            kind,
            flags,
            hash,
            raw_len,
            stored_len,
            key: Key::from_bytes(key),
        })
    }
}

/// Running checksum of a record: header bytes then payload bytes; the trailer stores the result.
pub struct RecordChecksum(crc32fast::Hasher);

impl RecordChecksum {
    pub fn new(header: &[u8; RECORD_HEADER_BYTES]) -> Self {
        let mut h = crc32fast::Hasher::new();
        h.update(header);
        RecordChecksum(h)
    }
    pub fn update(&mut self, payload: &[u8]) {
        self.0.update(payload);
    }
    pub fn finish(self) -> [u8; RECORD_TRAILER_BYTES] {
        self.0.finalize().to_le_bytes()
    }
}

/// Encodes a complete record (header, payload, trailer) into `out`.
pub fn encode_record(header: &RecordHeader, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert_eq!(header.stored_len, payload.len() as u64);
    let h = header.encode();
    let mut sum = RecordChecksum::new(&h);
    sum.update(payload);
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    out.extend_from_slice(&sum.finish());
}

/// Checks a complete record's bytes (as read from `offset` .. `offset + record_len`) and returns
/// its header and payload slice. Verifies magic, both checksums and the lengths.
pub fn decode_record(b: &[u8]) -> Result<(RecordHeader, &[u8]), FormatError> {
    let header = RecordHeader::decode(b)?;
    let payload = check_record_checksum(b, &header)?;
    Ok((header, payload))
}

/// [`decode_record`] for a record whose header was decoded (and so checked) from these same
/// bytes already: checks the lengths and the record checksum, and returns the payload.
pub fn check_record_checksum<'b>(
    b: &'b [u8],
    header: &RecordHeader,
) -> Result<&'b [u8], FormatError> {
    let total = header.record_len();
    if (b.len() as u64) < total {
        return Err(FormatError::Truncated {
            need: total,
            have: b.len() as u64,
        });
    }
    let payload_end = RECORD_HEADER_BYTES + header.stored_len as usize;
    let mut sum = crc32fast::Hasher::new();
    sum.update(&b[..payload_end]);
    if sum.finalize() != u32_at(b, payload_end) {
        return Err(FormatError::RecordChecksum);
    }
    Ok(&b[RECORD_HEADER_BYTES..payload_end])
}

/// Position in the store's write order: records written later have larger positions, because
/// pack ids only grow and packs are append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub pack: u64,
    pub offset: u64,
}

/// Payload of a tombstone: the deletion kills records of its key stored before `before`.
pub fn encode_tombstone(before: Position) -> [u8; TOMBSTONE_PAYLOAD_BYTES as usize] {
    let mut b = [0u8; TOMBSTONE_PAYLOAD_BYTES as usize];
    b[0..8].copy_from_slice(&before.pack.to_le_bytes());
    b[8..16].copy_from_slice(&before.offset.to_le_bytes());
    b
}

pub fn decode_tombstone(payload: &[u8]) -> Result<Position, FormatError> {
    if payload.len() != TOMBSTONE_PAYLOAD_BYTES as usize {
        return Err(FormatError::BadLength(format!(
            "tombstone payload {}",
            payload.len()
        )));
    }
    Ok(Position {
        pack: u64_at(payload, 0),
        offset: u64_at(payload, 8),
    })
}

/// The footer that ends a sealed pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Offset of the sorted key table (= end of the last record).
    pub table_offset: u64,
    pub entry_count: u64,
    pub table_crc: u32,
}

impl Footer {
    pub fn encode(&self) -> [u8; FOOTER_BYTES] {
        let mut b = [0u8; FOOTER_BYTES];
        b[0..8].copy_from_slice(&self.table_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.entry_count.to_le_bytes());
        b[16..20].copy_from_slice(&self.table_crc.to_le_bytes());
        b[20..22].copy_from_slice(&FOOTER_FORMAT_VERSION.to_le_bytes());
        // 22..28 reserved, zero.
        let crc = crc32fast::hash(&b[..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b[32..40].copy_from_slice(&FOOTER_MAGIC);
        b
    }

    /// Parses the last [`FOOTER_BYTES`] of a pack of `file_len` bytes.
    pub fn decode(b: &[u8], file_len: u64) -> Result<Footer, FormatError> {
        if b.len() != FOOTER_BYTES {
            return Err(FormatError::Truncated {
                need: FOOTER_BYTES as u64,
                have: b.len() as u64,
            });
        }
        if b[32..40] != FOOTER_MAGIC {
            return Err(FormatError::BadMagic);
        }
        if crc32fast::hash(&b[..28]) != u32_at(b, 28) {
            return Err(FormatError::HeaderChecksum);
        }
        let version = u16_at(b, 20);
        if version != FOOTER_FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        if b[22..28] != [0; 6] {
            return Err(FormatError::BadLength(
                "reserved footer bytes are not zero".into(),
            ));
        }
        let footer = Footer {
            table_offset: u64_at(b, 0),
            entry_count: u64_at(b, 8),
            table_crc: u32_at(b, 16),
        };
        let table_bytes = footer
            .entry_count
            .checked_mul(TABLE_ENTRY_BYTES as u64)
            .ok_or_else(|| FormatError::BadLength(format!("entry count {}", footer.entry_count)))?;
        let expect_len = footer
            .table_offset
            .checked_add(table_bytes)
            .and_then(|x| x.checked_add(FOOTER_BYTES as u64))
            .ok_or_else(|| FormatError::BadLength("table offset overflows".into()))?;
        if expect_len != file_len || footer.table_offset < PACK_HEADER_BYTES as u64 {
            return Err(FormatError::BadLength(format!(
                "footer says table at {} with {} entries, file is {} bytes",
                footer.table_offset, footer.entry_count, file_len
            )));
        }
        Ok(footer)
    }
}

/// Encodes the key table of a sealed pack. `entries` must be sorted by (key, offset), no repeats
/// (a key may appear twice: an object and a later tombstone of it).
pub fn encode_table(entries: &[(Key, u64)]) -> Vec<u8> {
    debug_assert!(
        entries.windows(2).all(|w| w[0] < w[1]),
        "table must be sorted and unique"
    );
    let mut out = Vec::with_capacity(entries.len() * TABLE_ENTRY_BYTES);
    for (key, offset) in entries {
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

/// Parses a sealed table, checking its checksum and order.
pub fn decode_table(b: &[u8], footer: &Footer) -> Result<Vec<(Key, u64)>, FormatError> {
    let need = footer.entry_count.saturating_mul(TABLE_ENTRY_BYTES as u64);
    if b.len() as u64 != need {
        return Err(FormatError::Truncated {
            need,
            have: b.len() as u64,
        });
    }
    if crc32fast::hash(b) != footer.table_crc {
        return Err(FormatError::TableChecksum);
    }
    let mut out: Vec<(Key, u64)> = Vec::with_capacity(footer.entry_count as usize);
    for (i, e) in b.chunks_exact(TABLE_ENTRY_BYTES).enumerate() {
        let mut k = [0u8; KEY_BYTES];
        k.copy_from_slice(&e[..KEY_BYTES]);
        let key = Key::from_bytes(k);
        let offset = u64_at(e, KEY_BYTES);
        if let Some(last) = out.last() {
            if *last >= (key, offset) {
                return Err(FormatError::TableOrder(i as u64));
            }
        }
        out.push((key, offset));
    }
    Ok(out)
}

/// The frame table that ends a compressed payload: compressed size of each frame, then count.
pub fn encode_frame_table(frame_sizes: &[u32], out: &mut Vec<u8>) {
    for s in frame_sizes {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out.extend_from_slice(&(frame_sizes.len() as u32).to_le_bytes());
}

/// Frame layout of a compressed payload: (offset within payload, compressed size) per frame.
pub fn decode_frame_table(
    payload_tail: &[u8],
    stored_len: u64,
    raw_len: u64,
) -> Result<Vec<(u64, u32)>, FormatError> {
    // `payload_tail` is the end of the payload; it must hold at least the count.
    if payload_tail.len() < 4 {
        return Err(FormatError::Truncated {
            need: 4,
            have: payload_tail.len() as u64,
        });
    }
    let count = u32_at(payload_tail, payload_tail.len() - 4) as u64;
    let expect_frames = raw_len.div_ceil(FRAME_RAW_BYTES).max(1);
    if count != expect_frames {
        return Err(FormatError::BadLength(format!(
            "{count} frames for {raw_len} raw bytes"
        )));
    }
    let table_bytes = 4 * count + 4;
    if (payload_tail.len() as u64) < table_bytes || table_bytes > stored_len {
        return Err(FormatError::Truncated {
            need: table_bytes,
            have: payload_tail.len() as u64,
        });
    }
    let start = payload_tail.len() - table_bytes as usize;
    let mut frames = Vec::with_capacity(count as usize);
    let mut at = 0u64;
    for i in 0..count as usize {
        let size = u32_at(payload_tail, start + 4 * i);
        frames.push((at, size));
        at += size as u64;
    }
    if at + table_bytes != stored_len {
        return Err(FormatError::BadLength(format!(
            "frames cover {at} bytes + table {table_bytes}, payload is {stored_len}"
        )));
    }
    Ok(frames)
}

/// Size of the frame table for a payload with `raw_len` raw bytes.
pub fn frame_table_bytes(raw_len: u64) -> u64 {
    4 * raw_len.div_ceil(FRAME_RAW_BYTES).max(1) + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key::from_bytes([n; KEY_BYTES])
    }

    #[test]
    fn record_round_trip_and_every_flipped_byte_is_caught() {
        let header = RecordHeader {
            kind: RecordKind::Object,
            flags: 0,
            hash: HashAlgorithm::Blake3,
            raw_len: 5,
            stored_len: 5,
            key: key(7),
        };
        let mut rec = Vec::new();
        encode_record(&header, b"hello", &mut rec);
        assert_eq!(rec.len() as u64, header.record_len());
        let (h, payload) = decode_record(&rec).expect("round trip");
        assert_eq!(h, header);
        assert_eq!(payload, b"hello");
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(
                decode_record(&bad).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn footer_and_table_round_trip() {
        let entries = vec![(key(1), 48u64), (key(2), 200), (key(9), 4000)];
        let table = encode_table(&entries);
        let footer = Footer {
            table_offset: 5000,
            entry_count: 3,
            table_crc: crc32fast::hash(&table),
        };
        let fb = footer.encode();
        let file_len = 5000 + table.len() as u64 + FOOTER_BYTES as u64;
        assert_eq!(Footer::decode(&fb, file_len).expect("footer"), footer);
        assert_eq!(decode_table(&table, &footer).expect("table"), entries);
        assert!(
            Footer::decode(&fb, file_len + 1).is_err(),
            "length mismatch must be caught"
        );
        let mut unsorted = encode_table(&[(key(1), 2)]);
        unsorted.extend_from_slice(&encode_table(&[(key(1), 2)]));
        let f2 = Footer {
            table_offset: 48,
            entry_count: 2,
            table_crc: crc32fast::hash(&unsorted),
        };
        let err = decode_table(&unsorted, &f2).expect_err("duplicate keys");
        assert_eq!(err, FormatError::TableOrder(1));
    }

    #[test]
    fn pack_header_round_trip() {
        let h = PackHeader {
            version: 1,
            hash: HashAlgorithm::Sha256,
            flags: 0,
            pack_id: 42,
            container_id: [3; 16],
        };
        assert_eq!(PackHeader::decode(&h.encode()).expect("decode"), h);
        let mut b = h.encode();
        b[17] ^= 1;
        assert_eq!(PackHeader::decode(&b), Err(FormatError::HeaderChecksum));
        // Version 2 carries the batch flag; version 1 had no flags, and no version knows bit 1.
        let batch = PackHeader {
            version: 2,
            flags: PACK_FLAG_BATCH,
            ..h
        };
        assert_eq!(PackHeader::decode(&batch.encode()).expect("decode"), batch);
        for bad in [
            PackHeader {
                version: 1,
                ..batch
            },
            PackHeader { flags: 2, ..batch },
        ] {
            assert!(
                PackHeader::decode(&bad.encode()).is_err(),
                "{bad:?} must be refused"
            );
        }
    }
}
