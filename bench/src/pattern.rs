//! A deterministic, incompressible byte stream of any length that costs almost no CPU, so a
//! multi-GiB `put_reader` measures the store and not the generator, and the read-back can be
//! checked byte for byte without keeping the object anywhere.
//!
//! The stream is one 1 MiB block of pseudo-random bytes repeated, with each block's first 8 bytes
//! replaced by its block number, so no two blocks are equal. Byte `p` depends only on `p`.

use std::io::Read;

const BLOCK_BYTES: usize = 1 << 20;
const STAMP_BYTES: usize = 8;

pub struct PatternReader {
    block: Vec<u8>,
    len_bytes: u64,
    pos: u64,
}

impl PatternReader {
    pub fn new(len_bytes: u64) -> PatternReader {
        // splitmix64: fast and good enough to defeat any compressor
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = Vec::with_capacity(BLOCK_BYTES);
        while block.len() < BLOCK_BYTES {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            block.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        PatternReader {
            block,
            len_bytes,
            pos: 0,
        }
    }

    /// Writes the stream's bytes `[pos, pos + out.len())` into `out` (the caller keeps it in range).
    pub fn fill_at(&self, mut pos: u64, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let block_no = pos / BLOCK_BYTES as u64;
            let within = (pos % BLOCK_BYTES as u64) as usize;
            let take = (BLOCK_BYTES - within).min(out.len() - done);
            let dst = &mut out[done..done + take];
            dst.copy_from_slice(&self.block[within..within + take]);
            if within < STAMP_BYTES {
                let stamp = block_no.to_le_bytes();
                let stamp_end = STAMP_BYTES.min(within + take);
                dst[..stamp_end - within].copy_from_slice(&stamp[within..stamp_end]);
            }
            done += take;
            pos += take as u64;
        }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len_bytes - self.pos;
        let take = (buf.len() as u64).min(left) as usize;
        self.fill_at(self.pos, &mut buf[..take]);
        self.pos += take as u64;
        Ok(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_whatever_the_read_sizes() {
        let len = 3 * BLOCK_BYTES as u64 + 12_345;
        let mut whole = Vec::new();
        PatternReader::new(len).read_to_end(&mut whole).unwrap();
        assert_eq!(whole.len() as u64, len);
        let mut pieces = Vec::new();
        let mut reader = PatternReader::new(len);
        let mut step = 1usize;
        loop {
            let mut buf = vec![0u8; step];
            let got = reader.read(&mut buf).unwrap();
            if got == 0 {
                break;
            }
            pieces.extend_from_slice(&buf[..got]);
            step = step * 7 % 1_000_003 + 3;
        }
        assert_eq!(pieces, whole);
        let mut mid = vec![0u8; 20];
        PatternReader::new(len).fill_at(BLOCK_BYTES as u64 - 6, &mut mid);
        assert_eq!(mid[..], whole[BLOCK_BYTES - 6..BLOCK_BYTES + 14]);
    }

    #[test]
    fn blocks_differ() {
        let r = PatternReader::new(4 * BLOCK_BYTES as u64);
        let (mut a, mut b) = (vec![0u8; BLOCK_BYTES], vec![0u8; BLOCK_BYTES]);
        r.fill_at(BLOCK_BYTES as u64, &mut a);
        r.fill_at(2 * BLOCK_BYTES as u64, &mut b);
        assert_ne!(a, b);
        assert_eq!(a[STAMP_BYTES..], b[STAMP_BYTES..]);
    }
}
