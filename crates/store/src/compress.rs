//! Compressed payloads: independent zstd frames of [`FRAME_RAW_BYTES`] raw bytes each, followed by
//! a frame table, so a reader can seek anywhere in a large object and decompress one frame.

use crate::config::Compression;
use crate::format::{self, FormatError, FRAME_RAW_BYTES};

/// What to store for one object: the payload bytes and whether they are compressed.
pub(crate) struct Encoded {
    pub payload: Vec<u8>,
    pub compressed: bool,
}

/// Minimum saving for `auto` to keep the compressed form: compressed ≤ 90 % of raw.
const AUTO_KEEP_RATIO: f64 = 0.9;
/// Raw bytes `auto` compresses as a sample before deciding for a large object.
const AUTO_SAMPLE_BYTES: usize = 256 << 10;

pub(crate) fn compressor(level: i32) -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut c = zstd::bulk::Compressor::new(level)?;
    // A per-frame checksum makes every range read into a compressed object verified.
    c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    Ok(c)
}

/// Compresses `raw` into frames + table.
pub(crate) fn compress_frames(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    let mut c = compressor(level)?;
    let mut out = Vec::with_capacity(raw.len() / 2 + 64);
    let mut sizes = Vec::new();
    let chunks: Vec<&[u8]> = if raw.is_empty() {
        vec![raw]
    } else {
        raw.chunks(FRAME_RAW_BYTES as usize).collect()
    };
    for chunk in chunks {
        let frame = c.compress(chunk)?;
        sizes.push(frame.len() as u32);
        out.extend_from_slice(&frame);
    }
    format::encode_frame_table(&sizes, &mut out);
    Ok(out)
}

/// Encodes `raw` under a compression policy. Empty objects are never compressed.
pub(crate) fn encode(raw: &[u8], policy: Compression) -> std::io::Result<Encoded> {
    match policy {
        Compression::None => Ok(Encoded {
            payload: raw.to_vec(),
            compressed: false,
        }),
        _ if raw.is_empty() => Ok(Encoded {
            payload: Vec::new(),
            compressed: false,
        }),
        Compression::Zstd { level } => Ok(Encoded {
            payload: compress_frames(raw, level)?,
            compressed: true,
        }),
        Compression::Auto { level } => {
            if raw.len() > AUTO_SAMPLE_BYTES * 2 {
                // Decide on a sample from the middle: headers often compress better than the body.
                let mid = raw.len() / 2 - AUTO_SAMPLE_BYTES / 2;
                let sample = &raw[mid..mid + AUTO_SAMPLE_BYTES];
                let c = zstd::bulk::compress(sample, level)?;
                if (c.len() as f64) > AUTO_KEEP_RATIO * sample.len() as f64 {
                    return Ok(Encoded {
                        payload: raw.to_vec(),
                        compressed: false,
                    });
                }
            }
            let payload = compress_frames(raw, level)?;
            if (payload.len() as f64) <= AUTO_KEEP_RATIO * raw.len() as f64 {
                Ok(Encoded {
                    payload,
                    compressed: true,
                })
            } else {
                Ok(Encoded {
                    payload: raw.to_vec(),
                    compressed: false,
                })
            }
        }
    }
}

/// Decompresses a whole framed payload of an object with `raw_len` raw bytes.
pub(crate) fn decompress_all(payload: &[u8], raw_len: u64) -> Result<Vec<u8>, String> {
    let frames = format::decode_frame_table(payload, payload.len() as u64, raw_len)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(raw_len as usize);
    let mut d = zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?;
    for (i, (at, size)) in frames.iter().enumerate() {
        let frame = &payload[*at as usize..(*at + *size as u64) as usize];
        let expect = frame_raw_len(raw_len, i as u64);
        let got = d
            .decompress(frame, expect as usize)
            .map_err(|e| format!("frame {i}: {e}"))?;
        if got.len() as u64 != expect {
            return Err(format!(
                "frame {i} holds {} bytes, expected {expect}",
                got.len()
            ));
        }
        out.extend_from_slice(&got);
    }
    Ok(out)
}

/// Decompresses one frame, checking its raw length.
pub(crate) fn decompress_frame(frame: &[u8], raw_len: u64, index: u64) -> Result<Vec<u8>, String> {
    let expect = frame_raw_len(raw_len, index);
    let got = zstd::bulk::decompress(frame, expect as usize)
        .map_err(|e| format!("frame {index}: {e}"))?;
    if got.len() as u64 != expect {
        return Err(format!(
            "frame {index} holds {} bytes, expected {expect}",
            got.len()
        ));
    }
    Ok(got)
}

/// Raw bytes held by frame `index` of an object of `raw_len` bytes.
pub(crate) fn frame_raw_len(raw_len: u64, index: u64) -> u64 {
    raw_len
        .saturating_sub(index * FRAME_RAW_BYTES)
        .min(FRAME_RAW_BYTES)
}

/// Reads the frame layout from the tail of a payload.
pub(crate) fn frame_layout(
    tail: &[u8],
    stored_len: u64,
    raw_len: u64,
) -> Result<Vec<(u64, u32)>, FormatError> {
    format::decode_frame_table(tail, stored_len, raw_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_across_frame_boundaries() {
        let raw: Vec<u8> = (0..(FRAME_RAW_BYTES * 2 + 12345))
            .map(|i| (i % 251) as u8)
            .collect();
        let enc = encode(&raw, Compression::Zstd { level: 1 }).expect("compress");
        assert!(enc.compressed);
        assert!(
            enc.payload.len() < raw.len() / 10,
            "repetitive data must shrink"
        );
        assert_eq!(
            decompress_all(&enc.payload, raw.len() as u64).expect("decompress"),
            raw
        );
    }

    #[test]
    fn auto_keeps_random_data_raw() {
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let raw: Vec<u8> = (0..100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let enc = encode(&raw, Compression::Auto { level: 3 }).expect("encode");
        assert!(
            !enc.compressed,
            "incompressible data must stay raw under auto"
        );
        let text = b"hello hello hello ".repeat(1000);
        assert!(
            encode(&text, Compression::Auto { level: 3 })
                .expect("encode")
                .compressed
        );
    }
}
