//! Object keys: the hash of an object's uncompressed content, and the hash algorithms that make them.

use std::fmt;
use std::str::FromStr;

/// Length of every key in bytes (BLAKE3 and SHA-256 both give 32).
pub const KEY_BYTES: usize = 32;

/// The hash that names objects in a store. Chosen at init, fixed for the store's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    /// BLAKE3 (default): fastest, parallel, 256-bit.
    Blake3,
    /// SHA-256: keys match disk-objectstore, git-lfs and friends.
    Sha256,
}

/// Objects at most in one run of [`HashAlgorithm::hash_groups`].
const HASH_GROUP_OBJECTS: usize = 128;
/// A run of [`HashAlgorithm::hash_groups`] closes past this many bytes.
const HASH_GROUP_BYTES: usize = 1 << 20;

impl HashAlgorithm {
    /// The id stored in pack and record headers.
    pub fn id(self) -> u8 {
        match self {
            HashAlgorithm::Blake3 => 1,
            HashAlgorithm::Sha256 => 2,
        }
    }

    pub fn from_id(id: u8) -> Option<HashAlgorithm> {
        match id {
            1 => Some(HashAlgorithm::Blake3),
            2 => Some(HashAlgorithm::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Blake3 => "blake3",
            HashAlgorithm::Sha256 => "sha256",
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> KeyHasher {
        match self {
            HashAlgorithm::Blake3 => KeyHasher::Blake3(Box::new(blake3::Hasher::new())),
            HashAlgorithm::Sha256 => KeyHasher::Sha256(<sha2::Sha256 as sha2::Digest>::new()),
        }
    }

    /// Splits objects of these lengths, in order, into the runs that one task should hash with
    /// one [`HashAlgorithm::hash_all`] call: up to [`HASH_GROUP_OBJECTS`] objects (enough to
    /// fill 16 SIMD lanes with the same chunk of different objects, while 512 objects still
    /// make a task per core), a run closing past [`HASH_GROUP_BYTES`] (so that large objects
    /// still spread over the cores).
    pub(crate) fn hash_groups(
        lens: impl IntoIterator<Item = usize>,
    ) -> Vec<std::ops::Range<usize>> {
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let mut group_bytes = 0usize;
        for (i, len) in lens.into_iter().enumerate() {
            match groups.last_mut() {
                Some(g) if g.len() < HASH_GROUP_OBJECTS && group_bytes < HASH_GROUP_BYTES => {
                    g.end = i + 1;
                    group_bytes += len;
                }
                _ => {
                    groups.push(i..i + 1);
                    group_bytes = len;
                }
            }
        }
        groups
    }

    /// The keys of many objects, in order: the same as [`HashAlgorithm::hash`] of each, but
    /// BLAKE3 hashes small objects together, several times faster than one by one.
    pub fn hash_all(self, contents: &[&[u8]]) -> Vec<Key> {
        match self {
            HashAlgorithm::Blake3 => crate::blake3_batch::hash_all(contents)
                .into_iter()
                .map(Key)
                .collect(),
            HashAlgorithm::Sha256 => contents.iter().map(|c| self.hash(c)).collect(),
        }
    }

    /// The key of `content`.
    pub fn hash(self, content: &[u8]) -> Key {
        match self {
            HashAlgorithm::Blake3 => Key(*blake3::hash(content).as_bytes()),
            HashAlgorithm::Sha256 => {
                let out = <sha2::Sha256 as sha2::Digest>::digest(content);
                let mut k = [0u8; KEY_BYTES];
                k.copy_from_slice(&out);
                Key(k)
            }
        }
    }
}

impl FromStr for HashAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "blake3" => Ok(HashAlgorithm::Blake3),
            "sha256" | "sha-256" => Ok(HashAlgorithm::Sha256),
            other => Err(format!(
                "unknown hash algorithm '{other}' (expected blake3 or sha256)"
            )),
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Incremental hashing of an object's content while it streams.
pub enum KeyHasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(sha2::Sha256),
}

impl KeyHasher {
    pub fn update(&mut self, buf: &[u8]) {
        match self {
            KeyHasher::Blake3(h) => {
                h.update(buf);
            }
            KeyHasher::Sha256(h) => sha2::Digest::update(h, buf),
        }
    }

    pub fn finish(self) -> Key {
        match self {
            KeyHasher::Blake3(h) => Key(*h.finalize().as_bytes()),
            KeyHasher::Sha256(h) => {
                let out = sha2::Digest::finalize(h);
                let mut k = [0u8; KEY_BYTES];
                k.copy_from_slice(&out);
                Key(k)
            }
        }
    }
}

/// The name of an object: the hash of its uncompressed content. Ordered as its bytes are.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; KEY_BYTES]);

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        // Keys are hashes: their first eight bytes nearly always differ, and compared as one
        // big-endian word they give the bytes' order without a call to `memcmp` (sorting rows
        // by key spent 5-7 % of a repack's CPU time in it).
        let head = |k: &Key| {
            let [a, b, c, d, e, f, g, h, ..] = k.0;
            u64::from_be_bytes([a, b, c, d, e, f, g, h])
        };
        head(self)
            .cmp(&head(other))
            .then_with(|| self.0[8..].cmp(&other.0[8..]))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Key {
    pub const fn from_bytes(b: [u8; KEY_BYTES]) -> Key {
        Key(b)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Key from a byte slice of exactly [`KEY_BYTES`].
    pub fn from_slice(b: &[u8]) -> Option<Key> {
        <[u8; KEY_BYTES]>::try_from(b).ok().map(Key)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// Why a string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{text}' is not a key: expected {} lowercase or uppercase hex digits", KEY_BYTES * 2)]
pub struct KeyParseError {
    pub text: String,
}

impl FromStr for Key {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Key, KeyParseError> {
        let mut k = [0u8; KEY_BYTES];
        hex::decode_to_slice(s, &mut k).map_err(|_| KeyParseError {
            text: s.chars().take(80).collect(),
        })?;
        Ok(Key(k))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_hex())
    }
}

/// A set of keys hashed cheaply: a key is already a uniform hash, so its first 8 bytes, mixed
/// with a per-process random seed, are as good as SipHash over all 32 (which was a few percent
/// of a million-object import). The seed and the final multiply keep the bucket of a key
/// unpredictable, so crafted contents cannot pile keys into one bucket.
pub(crate) type KeySet = std::collections::HashSet<Key, KeyHashing>;

/// A map from keys, hashed as [`KeySet`] hashes them.
pub(crate) type KeyMap<V> = std::collections::HashMap<Key, V, KeyHashing>;

/// The [`std::hash::BuildHasher`] of [`KeySet`].
#[derive(Clone, Copy)]
pub(crate) struct KeyHashing {
    seed: u64,
}

impl Default for KeyHashing {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| std::hash::RandomState::new().build_hasher().finish());
        KeyHashing { seed }
    }
}

impl std::hash::BuildHasher for KeyHashing {
    type Hasher = KeySetHasher;
    fn build_hasher(&self) -> KeySetHasher {
        KeySetHasher { state: self.seed }
    }
}

/// See [`KeySet`]. Folds every written byte in (so it is correct for any input), but a key's
/// 32 bytes cost one step.
pub(crate) struct KeySetHasher {
    state: u64,
}

impl std::hash::Hasher for KeySetHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state =
                (self.state ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if bytes.len() >= KEY_BYTES {
                // A whole key: its first 8 bytes are already uniform.
                break;
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // Only slice length prefixes come here, and every key has the same length.
    }

    fn finish(&self) -> u64 {
        // The high bits of the product depend on every input bit: move them where hash tables
        // take the bucket from.
        self.state.rotate_left(32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys order as their bytes do, including keys that share their first eight bytes or
    /// more (where the word compared first ties).
    #[test]
    fn keys_order_as_their_bytes() {
        let mut keys = Vec::new();
        for first in [0u8, 1, 0x7f, 0x80, 0xff] {
            for at in [0usize, 7, 8, 9, 31] {
                for v in [0u8, 1, 0xfe, 0xff] {
                    let mut b = [first; KEY_BYTES];
                    b[at] = v;
                    keys.push(Key::from_bytes(b));
                }
            }
        }
        keys.extend((0..64u8).map(|i| HashAlgorithm::Blake3.hash(&[i])));
        for a in &keys {
            for b in &keys {
                assert_eq!(a.cmp(b), a.as_bytes().cmp(b.as_bytes()), "{a} against {b}");
                assert_eq!(a.partial_cmp(b), Some(a.as_bytes().cmp(b.as_bytes())));
            }
        }
    }

    /// Runs cover every object once, in order; they hold at most 128 objects, and close once
    /// past 1 MiB.
    #[test]
    fn hash_groups_cover_every_object_in_runs_bounded_by_count_and_bytes() {
        let small = HashAlgorithm::hash_groups(vec![100; 300]);
        assert_eq!(small, vec![0..128, 128..256, 256..300]);
        // 600 KiB each: the second takes a run past 1 MiB, so every run holds two.
        let large = HashAlgorithm::hash_groups(vec![600 << 10; 5]);
        assert_eq!(large, vec![0..2, 2..4, 4..5]);
        let one_huge = HashAlgorithm::hash_groups([10, 8 << 20, 10, 10]);
        assert_eq!(one_huge, vec![0..2, 2..4]);
        assert!(HashAlgorithm::hash_groups(Vec::new()).is_empty());
    }

    #[test]
    fn known_vectors() {
        // Published digests of the empty string.
        assert_eq!(
            HashAlgorithm::Blake3.hash(b"").to_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(
            HashAlgorithm::Sha256.hash(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = HashAlgorithm::Sha256.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), HashAlgorithm::Sha256.hash(b"abc"));
    }

    #[test]
    fn parse_rejects_bad_text() {
        assert!("xyz".parse::<Key>().is_err(), "short non-hex must fail");
        let k = HashAlgorithm::Blake3.hash(b"x");
        assert_eq!(k.to_hex().parse::<Key>().expect("round trip"), k);
        assert_eq!(k.to_hex().to_uppercase().parse::<Key>().expect("upper"), k);
    }
}
