//! Running digest states and [`MultiHasher`]: one stream of bytes feeding every selected algorithm.

use std::fmt;

use digest::{Digest as _, ExtendableOutput, Update, XofReader};

use crate::{AlgoSpec, Algorithm};

/// A finished digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest {
    pub spec: AlgoSpec,
    pub bytes: Vec<u8>,
}

impl Digest {
    /// Lower-case hex. Checksums print big-endian (`crc32("123456789")` = `cbf43926`), as zlib,
    /// rhash, cksum and xxhsum do.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.bytes)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.spec, self.to_hex())
    }
}

/// Blake3 inputs at least this long are hashed with all cores (`update_rayon`); below it the
/// thread hand-off costs more than it saves (blake3's docs suggest ~128 KiB).
const BLAKE3_RAYON_MIN_BYTES: usize = 128 * 1024;

/// One algorithm's running state. An enum rather than `Box<dyn DynDigest>` so the hot loop is a
/// direct call and XOFs and checksums fit the same shape.
#[allow(clippy::large_enum_variant)]
pub(crate) enum State {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha224(sha2::Sha224),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
    Sha512(sha2::Sha512),
    Sha512_256(sha2::Sha512_256),
    Sha3_224(sha3::Sha3_224),
    Sha3_256(sha3::Sha3_256),
    Sha3_384(sha3::Sha3_384),
    Sha3_512(sha3::Sha3_512),
    Blake2b512(blake2::Blake2b512),
    Blake2s256(blake2::Blake2s256),
    Blake3(Box<blake3::Hasher>),
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Xxh64(xxhash_rust::xxh64::Xxh64),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
    Shake128(sha3::Shake128),
    Shake256(sha3::Shake256),
}

pub(crate) struct Running {
    pub(crate) spec: AlgoSpec,
    state: State,
}

impl Running {
    pub(crate) fn new(spec: AlgoSpec) -> Running {
        let state = match spec.algorithm {
            Algorithm::Md5 => State::Md5(md5::Md5::new()),
            Algorithm::Sha1 => State::Sha1(sha1::Sha1::new()),
            Algorithm::Sha224 => State::Sha224(sha2::Sha224::new()),
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha384 => State::Sha384(sha2::Sha384::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            Algorithm::Sha512_256 => State::Sha512_256(sha2::Sha512_256::new()),
            Algorithm::Sha3_224 => State::Sha3_224(sha3::Sha3_224::new()),
            Algorithm::Sha3_256 => State::Sha3_256(sha3::Sha3_256::new()),
            Algorithm::Sha3_384 => State::Sha3_384(sha3::Sha3_384::new()),
            Algorithm::Sha3_512 => State::Sha3_512(sha3::Sha3_512::new()),
            Algorithm::Blake2b512 => State::Blake2b512(blake2::Blake2b512::new()),
            Algorithm::Blake2s256 => State::Blake2s256(blake2::Blake2s256::new()),
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Crc32 => State::Crc32(crc32fast::Hasher::new()),
            Algorithm::Crc32c => State::Crc32c(0),
            Algorithm::Xxh64 => State::Xxh64(xxhash_rust::xxh64::Xxh64::new(0)),
            Algorithm::Xxh3_64 | Algorithm::Xxh3_128 => {
                State::Xxh3(Box::new(xxhash_rust::xxh3::Xxh3::new()))
            }
            Algorithm::Shake128 => State::Shake128(sha3::Shake128::default()),
            Algorithm::Shake256 => State::Shake256(sha3::Shake256::default()),
        };
        Running { spec, state }
    }

    #[inline]
    pub(crate) fn update(&mut self, buf: &[u8]) {
        match &mut self.state {
            State::Md5(h) => digest::Digest::update(h, buf),
            State::Sha1(h) => digest::Digest::update(h, buf),
            State::Sha224(h) => digest::Digest::update(h, buf),
            State::Sha256(h) => digest::Digest::update(h, buf),
            State::Sha384(h) => digest::Digest::update(h, buf),
            State::Sha512(h) => digest::Digest::update(h, buf),
            State::Sha512_256(h) => digest::Digest::update(h, buf),
            State::Sha3_224(h) => digest::Digest::update(h, buf),
            State::Sha3_256(h) => digest::Digest::update(h, buf),
            State::Sha3_384(h) => digest::Digest::update(h, buf),
            State::Sha3_512(h) => digest::Digest::update(h, buf),
            State::Blake2b512(h) => digest::Digest::update(h, buf),
            State::Blake2s256(h) => digest::Digest::update(h, buf),
            State::Blake3(h) => {
                if buf.len() >= BLAKE3_RAYON_MIN_BYTES {
                    h.update_rayon(buf);
                } else {
                    h.update(buf);
                }
            }
            State::Crc32(h) => h.update(buf),
            State::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, buf),
            State::Xxh64(h) => h.update(buf),
            State::Xxh3(h) => h.update(buf),
            State::Shake128(h) => Update::update(h, buf),
            State::Shake256(h) => Update::update(h, buf),
        }
    }

    pub(crate) fn finalize(self) -> Digest {
        let len = self.spec.output_len_bytes;
        let bytes: Vec<u8> = match self.state {
            State::Md5(h) => h.finalize().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Sha224(h) => h.finalize().to_vec(),
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha384(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
            State::Sha512_256(h) => h.finalize().to_vec(),
            State::Sha3_224(h) => h.finalize().to_vec(),
            State::Sha3_256(h) => h.finalize().to_vec(),
            State::Sha3_384(h) => h.finalize().to_vec(),
            State::Sha3_512(h) => h.finalize().to_vec(),
            State::Blake2b512(h) => h.finalize().to_vec(),
            State::Blake2s256(h) => h.finalize().to_vec(),
            State::Blake3(h) => {
                let mut out = vec![0u8; len];
                h.finalize_xof().fill(&mut out);
                out
            }
            State::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            State::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            State::Xxh64(h) => h.digest().to_be_bytes().to_vec(),
            State::Xxh3(h) => match self.spec.algorithm {
                Algorithm::Xxh3_128 => h.digest128().to_be_bytes().to_vec(),
                _ => h.digest().to_be_bytes().to_vec(),
            },
            State::Shake128(h) => {
                let mut out = vec![0u8; len];
                h.finalize_xof().read(&mut out);
                out
            }
            State::Shake256(h) => {
                let mut out = vec![0u8; len];
                h.finalize_xof().read(&mut out);
                out
            }
        };
        debug_assert_eq!(
            bytes.len(),
            len,
            "{} produced a digest of the wrong length",
            self.spec
        );
        Digest {
            spec: self.spec,
            bytes,
        }
    }
}

/// Feeds one stream of bytes to several algorithms, on the calling thread.
///
/// ```
/// use basin_hash::{parse_algo_list, MultiHasher};
/// let mut hasher = MultiHasher::new(&parse_algo_list("crc32,sha256").unwrap());
/// hasher.update(b"123456789");
/// let digests = hasher.finalize();
/// assert_eq!(digests[0].to_hex(), "cbf43926");
/// ```
pub struct MultiHasher {
    states: Vec<Running>,
}

impl MultiHasher {
    pub fn new(specs: &[AlgoSpec]) -> Self {
        MultiHasher {
            states: specs.iter().copied().map(Running::new).collect(),
        }
    }

    pub fn update(&mut self, buf: &[u8]) {
        for state in &mut self.states {
            state.update(buf);
        }
    }

    /// The digests, in the order of the specs given to [`MultiHasher::new`].
    pub fn finalize(self) -> Vec<Digest> {
        self.states.into_iter().map(Running::finalize).collect()
    }
}
