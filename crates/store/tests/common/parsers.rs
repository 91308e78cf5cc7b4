//! The parser oracle shared by `tests/fuzz_records.rs` and the cargo-fuzz target
//! `fuzz/fuzz_targets/records.rs` (which includes this file by path): feed bytes to the public
//! pack-format parsers and check the one property that holds for every input — a parser either
//! rejects the bytes or accepts bytes that re-encode to exactly themselves (no silent
//! normalisation, so what validate approves is what is on disk). A panic is the other failure;
//! callers catch it. This file depends on `basin_store` and `std` only.

use basin_store::format::{
    decode_frame_table, decode_record, decode_table, decode_tombstone, encode_frame_table,
    encode_record, encode_table, encode_tombstone, Footer, PackHeader, RecordHeader, RecordKind,
    FOOTER_BYTES, PACK_HEADER_BYTES, RECORD_HEADER_BYTES,
};

/// Which parsers an input is meant for. The corpus file name prefix (`record-`, `header-`,
/// `pack-`, `frames-`) selects it; the fuzz target uses the first input byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// One record at offset 0: `RecordHeader::decode`, `decode_record`, then the frame table of a
    /// compressed payload or the tombstone payload.
    Record,
    /// `PackHeader::decode` on the first bytes.
    Header,
    /// A whole pack file: header, records walked from the header, and, when the footer parses,
    /// the sealed table.
    Pack,
    /// `decode_frame_table`: an 8-byte little-endian raw length, then a compressed payload.
    Frames,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Record, Target::Header, Target::Pack, Target::Frames];

    pub fn from_file_name(name: &str) -> Option<Target> {
        let prefix = name.split('-').next()?;
        Target::ALL.into_iter().find(|t| t.prefix() == prefix)
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Target::Record => "record",
            Target::Header => "header",
            Target::Pack => "pack",
            Target::Frames => "frames",
        }
    }
}

/// How far an input got: how many parser calls accepted it. Lets the fuzz test check that its
/// mutations reach past the checksum gates instead of only ever being rejected at the door.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub record_headers: u64,
    pub records: u64,
    pub frame_tables: u64,
    pub tombstones: u64,
    pub pack_headers: u64,
    pub footers: u64,
    pub tables: u64,
}

impl Accepted {
    pub fn add(&mut self, o: &Accepted) {
        self.record_headers += o.record_headers;
        self.records += o.records;
        self.frame_tables += o.frame_tables;
        self.tombstones += o.tombstones;
        self.pack_headers += o.pack_headers;
        self.footers += o.footers;
        self.tables += o.tables;
    }
}

/// Feeds `bytes` to the parsers of `target`. `Err` describes an accepted input that did not
/// re-encode to the same bytes (or is otherwise inconsistent); rejections are fine.
pub fn check(target: Target, bytes: &[u8]) -> Result<Accepted, String> {
    let mut acc = Accepted::default();
    match target {
        Target::Record => {
            check_record(bytes, &mut acc)?;
        }
        Target::Header => check_pack_header(bytes, &mut acc)?,
        Target::Pack => check_pack(bytes, &mut acc)?,
        Target::Frames => {
            if bytes.len() >= 8 {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(&bytes[..8]);
                let payload = &bytes[8..];
                check_frames(
                    payload,
                    payload.len() as u64,
                    u64::from_le_bytes(raw),
                    &mut acc,
                )?;
            }
        }
    }
    Ok(acc)
}

fn check_pack_header(b: &[u8], acc: &mut Accepted) -> Result<(), String> {
    if let Ok(h) = PackHeader::decode(b) {
        acc.pack_headers += 1;
        let again = h.encode();
        if b.get(..PACK_HEADER_BYTES) != Some(&again[..]) {
            return Err(format!(
                "PackHeader accepted {h:?} but re-encodes differently"
            ));
        }
    }
    Ok(())
}

/// Checks one record at the start of `b`; returns its length when `decode_record` accepted it.
fn check_record(b: &[u8], acc: &mut Accepted) -> Result<Option<u64>, String> {
    if let Ok(h) = RecordHeader::decode(b) {
        acc.record_headers += 1;
        let again = h.encode();
        if b.get(..RECORD_HEADER_BYTES) != Some(&again[..]) {
            return Err(format!(
                "RecordHeader accepted {h:?} but re-encodes differently"
            ));
        }
    }
    let (h, payload) = match decode_record(b) {
        Ok(x) => x,
        Err(_) => return Ok(None),
    };
    acc.records += 1;
    if payload.len() as u64 != h.stored_len {
        return Err(format!(
            "decode_record returned {} payload bytes for stored_len {}",
            payload.len(),
            h.stored_len
        ));
    }
    let mut again = Vec::new();
    encode_record(&h, payload, &mut again);
    if b.get(..again.len()) != Some(&again[..]) || again.len() as u64 != h.record_len() {
        return Err(format!(
            "decode_record accepted {h:?} but re-encodes differently"
        ));
    }
    match h.kind {
        RecordKind::Object if h.is_compressed() => {
            check_frames(payload, h.stored_len, h.raw_len, acc)?
        }
        RecordKind::Tombstone => {
            if let Ok(pos) = decode_tombstone(payload) {
                acc.tombstones += 1;
                if encode_tombstone(pos)[..] != *payload {
                    return Err(format!(
                        "tombstone {pos:?} accepted but re-encodes differently"
                    ));
                }
            }
        }
        _ => {}
    }
    Ok(Some(h.record_len()))
}

fn check_frames(
    payload: &[u8],
    stored_len: u64,
    raw_len: u64,
    acc: &mut Accepted,
) -> Result<(), String> {
    let frames = match decode_frame_table(payload, stored_len, raw_len) {
        Ok(f) => f,
        Err(_) => return Ok(()),
    };
    acc.frame_tables += 1;
    let sizes: Vec<u32> = frames.iter().map(|f| f.1).collect();
    let mut table = Vec::new();
    encode_frame_table(&sizes, &mut table);
    if !payload.ends_with(&table) {
        return Err(format!(
            "frame table {frames:?} accepted but re-encodes differently"
        ));
    }
    // The frames must tile the payload before the table: a reader seeks by these numbers.
    let mut at = 0u64;
    for &(offset, size) in &frames {
        if offset != at {
            return Err(format!(
                "frame table {frames:?}: frame at {offset}, expected {at}"
            ));
        }
        at += u64::from(size);
    }
    if at + table.len() as u64 != stored_len {
        return Err(format!(
            "frame table {frames:?} covers {at} + {} bytes of {stored_len}",
            table.len()
        ));
    }
    Ok(())
}

fn check_pack(b: &[u8], acc: &mut Accepted) -> Result<(), String> {
    check_pack_header(b, acc)?;
    let len = b.len() as u64;
    let mut records_end = len;
    if b.len() >= FOOTER_BYTES {
        let footer_bytes = &b[b.len() - FOOTER_BYTES..];
        if let Ok(f) = Footer::decode(footer_bytes, len) {
            acc.footers += 1;
            if f.encode()[..] != *footer_bytes {
                return Err(format!("Footer accepted {f:?} but re-encodes differently"));
            }
            // decode accepted table_offset + table + footer == len, so this slice exists; a
            // footer that lies about it is a parser bug, reported rather than panicking here.
            let table = usize::try_from(f.table_offset)
                .ok()
                .and_then(|start| b.get(start..b.len() - FOOTER_BYTES))
                .ok_or_else(|| {
                    format!("footer {f:?} accepted for a {len}-byte pack but its table is outside")
                })?;
            if let Ok(entries) = decode_table(table, &f) {
                acc.tables += 1;
                if encode_table(&entries) != table {
                    return Err(format!(
                        "table of {} entries accepted but re-encodes differently",
                        entries.len()
                    ));
                }
            }
            records_end = f.table_offset;
        }
    }
    // Walk the records the way rebuild_index would: from the header to the table (or EOF).
    let mut offset = PACK_HEADER_BYTES as u64;
    while offset < records_end {
        let Some(rest) = b.get(offset as usize..records_end as usize) else {
            break;
        };
        match check_record(rest, acc)? {
            Some(n) => offset += n,
            None => break,
        }
    }
    Ok(())
}
