//! Self-checking object content.
//!
//! An object is `seed (8 bytes, little endian) ++ stream(seed)`. The stream is counter based
//! (word `i` is a mix of the seed and `i`), so any range can be produced or checked without the
//! bytes before it, and a streamed writer needs constant memory. A quarter of the seeds give a
//! low-entropy stream (four letters), so compressed paths of the store get exercised too.

use std::io::{self, Read};

/// Bytes at the front of every object that hold its seed.
pub const SEED_BYTES: u64 = 8;

/// Seeds of the shared pool start here: content that several writers write on purpose, to make
/// same-content writes race. Random seeds land in this range with negligible probability.
pub const SHARED_SEED_BASE: u64 = 0x5348_4152_4544_0000;

/// How many distinct objects the shared pool holds.
pub const SHARED_POOL_OBJECTS: u64 = 48;

/// SplitMix64's output function: a fast, well-mixed bijection on u64.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Everything needed to produce an object's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectSpec {
    pub seed: u64,
    /// Total length in bytes, seed included; at least [`SEED_BYTES`].
    pub len: u64,
}

impl ObjectSpec {
    /// Object number `index` of the shared pool (same bytes in every process).
    pub fn shared(index: u64) -> ObjectSpec {
        let index = index % SHARED_POOL_OBJECTS;
        let seed = SHARED_SEED_BASE + index;
        ObjectSpec {
            seed,
            len: SEED_BYTES + splitmix64(seed) % 3000,
        }
    }

    /// True when `seed` names a shared-pool object.
    pub fn is_shared_seed(seed: u64) -> bool {
        (SHARED_SEED_BASE..SHARED_SEED_BASE + SHARED_POOL_OBJECTS).contains(&seed)
    }

    /// Low-entropy objects: zstd shrinks them, so compressed records get written and read.
    pub fn compressible(&self) -> bool {
        self.seed & 3 == 0
    }

    /// The whole object.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; usize::try_from(self.len).expect("object length fits in memory")];
        self.fill(0, &mut out);
        out
    }

    /// A reader producing the object in constant memory.
    pub fn reader(&self) -> ContentReader {
        ContentReader {
            spec: *self,
            position: 0,
        }
    }

    /// Writes the object's bytes `[offset, offset + out.len())` into `out`. Past the end of the
    /// object the stream simply continues; callers bound `out` by `len`.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let seed_bytes = self.seed.to_le_bytes();
        let compressible = self.compressible();
        let mut position = offset;
        let mut i = 0usize;
        while i < out.len() {
            if position < SEED_BYTES {
                out[i] = seed_bytes[position as usize];
                position += 1;
                i += 1;
                continue;
            }
            let stream_position = position - SEED_BYTES;
            let word_index = stream_position / 8;
            let within = (stream_position % 8) as usize;
            let word = splitmix64(self.seed ^ splitmix64(word_index)).to_le_bytes();
            let n = (8 - within).min(out.len() - i);
            let dest = &mut out[i..i + n];
            dest.copy_from_slice(&word[within..within + n]);
            if compressible {
                for b in dest.iter_mut() {
                    *b = b'a' + (*b & 3);
                }
            }
            position += n as u64;
            i += n;
        }
    }

    /// Checks that `bytes` are exactly this object.
    pub fn check(&self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() as u64 != self.len {
            return Err(format!(
                "length {} but {} was written",
                bytes.len(),
                self.len
            ));
        }
        self.check_range(0, bytes)
    }

    /// Checks that `bytes` are the object's bytes starting at `offset`.
    pub fn check_range(&self, offset: u64, bytes: &[u8]) -> Result<(), String> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .ok_or("range end overflows")?;
        if end > self.len {
            return Err(format!(
                "range {offset}..{end} runs past the object's {} bytes",
                self.len
            ));
        }
        let mut expected = [0u8; 4096];
        for (chunk_index, chunk) in bytes.chunks(expected.len()).enumerate() {
            let chunk_offset = offset + (chunk_index * expected.len()) as u64;
            let expected = &mut expected[..chunk.len()];
            self.fill(chunk_offset, expected);
            if chunk != expected {
                let at = chunk
                    .iter()
                    .zip(expected.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                return Err(format!(
                    "byte {} is {:#04x}, expected {:#04x} (seed {}, length {})",
                    chunk_offset + at as u64,
                    chunk[at],
                    expected[at],
                    self.seed,
                    self.len
                ));
            }
        }
        Ok(())
    }

    /// Reads the seed from the object's own first bytes and checks the rest against it: works
    /// on any object a torture worker wrote, logged or not.
    pub fn check_self(bytes: &[u8]) -> Result<ObjectSpec, String> {
        let Some(seed_bytes) = bytes.get(..SEED_BYTES as usize) else {
            return Err(format!(
                "{} bytes is shorter than the {SEED_BYTES}-byte seed",
                bytes.len()
            ));
        };
        let seed = u64::from_le_bytes(seed_bytes.try_into().expect("slice of 8"));
        let spec = ObjectSpec {
            seed,
            len: bytes.len() as u64,
        };
        spec.check(bytes)?;
        Ok(spec)
    }
}

/// Streams one object's bytes.
pub struct ContentReader {
    spec: ObjectSpec,
    position: u64,
}

impl Read for ContentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.spec.len - self.position;
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        self.spec.fill(self.position, &mut buf[..n]);
        self.position += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_and_ranges_agree_with_bytes() {
        for seed in [0u64, 1, 4, 99, u64::MAX] {
            let spec = ObjectSpec { seed, len: 10_007 };
            let whole = spec.bytes();
            let mut streamed = Vec::new();
            spec.reader()
                .read_to_end(&mut streamed)
                .expect("in-memory read");
            assert_eq!(streamed, whole, "seed {seed}");
            for offset in [0u64, 3, 8, 9, 17, 5000] {
                let mut part = vec![0u8; 777];
                spec.fill(offset, &mut part);
                assert_eq!(
                    &part[..],
                    &whole[offset as usize..offset as usize + 777],
                    "seed {seed} offset {offset}"
                );
                assert_eq!(spec.check_range(offset, &part), Ok(()));
            }
            assert_eq!(ObjectSpec::check_self(&whole), Ok(spec));
        }
    }

    #[test]
    fn damage_is_detected() {
        let spec = ObjectSpec { seed: 7, len: 300 };
        let mut bytes = spec.bytes();
        bytes[200] ^= 1;
        let err = spec.check(&bytes).expect_err("flipped bit must be seen");
        assert!(err.contains("byte 200"), "got {err}");
        assert!(
            ObjectSpec::check_self(&bytes).is_err(),
            "self check must see the flip too"
        );
        assert!(spec.check(&bytes[..299]).is_err(), "short object must fail");
        assert!(
            ObjectSpec::check_self(&[1, 2, 3]).is_err(),
            "too short for a seed"
        );
    }

    #[test]
    fn compressible_objects_are_low_entropy() {
        let spec = ObjectSpec { seed: 8, len: 4096 };
        assert!(spec.compressible());
        assert!(spec.bytes()[8..].iter().all(|b| (b'a'..=b'd').contains(b)));
        assert!(ObjectSpec::is_shared_seed(ObjectSpec::shared(5).seed));
        assert!(!ObjectSpec::is_shared_seed(5));
    }
}
