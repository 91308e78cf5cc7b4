//! The algorithm registry: names, output lengths and relative costs of every digest basin computes.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A digest algorithm. Extendable-output functions (SHAKE, BLAKE3) take their length from [`AlgoSpec`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(non_camel_case_types)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha512_256,
    Sha3_224,
    Sha3_256,
    Sha3_384,
    Sha3_512,
    Blake2b512,
    Blake2s256,
    Blake3,
    Crc32,
    Crc32c,
    Xxh64,
    Xxh3_64,
    Xxh3_128,
    Shake128,
    Shake256,
}

/// Longest output an extendable-output function may be asked for, in bytes. A bound, so that a
/// typo like `shake256:6400000000` is refused instead of allocating gigabytes per file.
pub const XOF_OUTPUT_LEN_MAX_BYTES: usize = 1024;

impl Algorithm {
    /// Every algorithm, in the order `--list-algorithms` prints them.
    pub const ALL: [Algorithm; 21] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha224,
        Algorithm::Sha256,
        Algorithm::Sha384,
        Algorithm::Sha512,
        Algorithm::Sha512_256,
        Algorithm::Sha3_224,
        Algorithm::Sha3_256,
        Algorithm::Sha3_384,
        Algorithm::Sha3_512,
        Algorithm::Blake2b512,
        Algorithm::Blake2s256,
        Algorithm::Blake3,
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Xxh64,
        Algorithm::Xxh3_64,
        Algorithm::Xxh3_128,
        Algorithm::Shake128,
        Algorithm::Shake256,
    ];

    /// Canonical lower-case name, as printed and as stored in catalogs.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha224 => "sha224",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha384 => "sha384",
            Algorithm::Sha512 => "sha512",
            Algorithm::Sha512_256 => "sha512-256",
            Algorithm::Sha3_224 => "sha3-224",
            Algorithm::Sha3_256 => "sha3-256",
            Algorithm::Sha3_384 => "sha3-384",
            Algorithm::Sha3_512 => "sha3-512",
            Algorithm::Blake2b512 => "blake2b-512",
            Algorithm::Blake2s256 => "blake2s-256",
            Algorithm::Blake3 => "blake3",
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Xxh64 => "xxh64",
            Algorithm::Xxh3_64 => "xxh3-64",
            Algorithm::Xxh3_128 => "xxh3-128",
            Algorithm::Shake128 => "shake128",
            Algorithm::Shake256 => "shake256",
        }
    }

    /// Output length in bytes when none is asked for. For SHAKE this is twice the security level
    /// (the FIPS 202 convention also used by OpenSSL's `shake128`/`shake256` defaults).
    pub fn default_output_len_bytes(self) -> usize {
        match self {
            Algorithm::Md5 => 16,
            Algorithm::Sha1 => 20,
            Algorithm::Sha224 | Algorithm::Sha3_224 => 28,
            Algorithm::Sha256 | Algorithm::Sha512_256 | Algorithm::Sha3_256 => 32,
            Algorithm::Sha384 | Algorithm::Sha3_384 => 48,
            Algorithm::Sha512 | Algorithm::Sha3_512 | Algorithm::Blake2b512 => 64,
            Algorithm::Blake2s256 | Algorithm::Blake3 => 32,
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Xxh64 | Algorithm::Xxh3_64 => 8,
            Algorithm::Xxh3_128 => 16,
            Algorithm::Shake128 => 32,
            Algorithm::Shake256 => 64,
        }
    }

    /// Whether the output length may be chosen (`shake256:64`, `blake3:64`).
    pub fn is_xof(self) -> bool {
        matches!(
            self,
            Algorithm::Shake128 | Algorithm::Shake256 | Algorithm::Blake3
        )
    }

    /// Whether the algorithm resists deliberate collisions. Checksums (CRC, xxHash) only catch accidents.
    pub fn is_cryptographic(self) -> bool {
        !matches!(
            self,
            Algorithm::Crc32
                | Algorithm::Crc32c
                | Algorithm::Xxh64
                | Algorithm::Xxh3_64
                | Algorithm::Xxh3_128
        )
    }

    /// Relative single-core cost per byte (nanoseconds per KiB measured on a 2-core EPYC with
    /// SHA-NI, hashing.md §3.4). Used only to balance algorithms across lanes.
    pub fn cost_weight(self) -> u32 {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 50,
            Algorithm::Xxh64 | Algorithm::Xxh3_64 | Algorithm::Xxh3_128 => 70,
            Algorithm::Blake3 => 220,
            Algorithm::Sha1 => 530,
            Algorithm::Sha224 | Algorithm::Sha256 => 570,
            Algorithm::Blake2b512 => 900,
            Algorithm::Md5 => 1650,
            Algorithm::Blake2s256 => 1500,
            Algorithm::Sha384 | Algorithm::Sha512 | Algorithm::Sha512_256 => 1800,
            Algorithm::Shake128 => 2400,
            Algorithm::Sha3_224 => 2600,
            Algorithm::Sha3_256 | Algorithm::Shake256 => 2750,
            Algorithm::Sha3_384 => 3600,
            Algorithm::Sha3_512 => 5100,
        }
    }

    /// Tag used by BSD-style sums lines (`SHA256 (file) = ...`), matching coreutils where it has one.
    pub fn bsd_tag(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha224 => "SHA224",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha384 => "SHA384",
            Algorithm::Sha512 => "SHA512",
            Algorithm::Sha512_256 => "SHA512-256",
            Algorithm::Sha3_224 => "SHA3-224",
            Algorithm::Sha3_256 => "SHA3-256",
            Algorithm::Sha3_384 => "SHA3-384",
            Algorithm::Sha3_512 => "SHA3-512",
            Algorithm::Blake2b512 => "BLAKE2b",
            Algorithm::Blake2s256 => "BLAKE2s",
            Algorithm::Blake3 => "BLAKE3",
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Xxh64 => "XXH64",
            Algorithm::Xxh3_64 => "XXH3-64",
            Algorithm::Xxh3_128 => "XXH3-128",
            Algorithm::Shake128 => "SHAKE128",
            Algorithm::Shake256 => "SHAKE256",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algorithm {
    type Err = Error;

    /// Accepts the canonical name and the spellings other tools use (`SHA-256`, `sha512/256`,
    /// `sha3_256`, `blake2b`, `b3`, `xxh3`), case-insensitively.
    fn from_str(s: &str) -> Result<Self, Error> {
        let folded: String = s
            .trim()
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | '/' | ' '))
            .flat_map(char::to_lowercase)
            .collect();
        let algorithm = match folded.as_str() {
            "md5" => Algorithm::Md5,
            "sha1" => Algorithm::Sha1,
            "sha224" | "sha2224" => Algorithm::Sha224,
            "sha256" | "sha2256" => Algorithm::Sha256,
            "sha384" | "sha2384" => Algorithm::Sha384,
            "sha512" | "sha2512" => Algorithm::Sha512,
            "sha512256" | "sha2512256" => Algorithm::Sha512_256,
            "sha3224" => Algorithm::Sha3_224,
            "sha3256" => Algorithm::Sha3_256,
            "sha3384" => Algorithm::Sha3_384,
            "sha3512" => Algorithm::Sha3_512,
            "blake2b" | "blake2b512" | "b2" => Algorithm::Blake2b512,
            "blake2s" | "blake2s256" => Algorithm::Blake2s256,
            "blake3" | "b3" => Algorithm::Blake3,
            "crc32" | "crc" => Algorithm::Crc32,
            "crc32c" => Algorithm::Crc32c,
            "xxh64" | "xxhash64" => Algorithm::Xxh64,
            "xxh3" | "xxh364" | "xxh3_64" => Algorithm::Xxh3_64,
            "xxh3128" | "xxh128" => Algorithm::Xxh3_128,
            "shake128" => Algorithm::Shake128,
            "shake256" => Algorithm::Shake256,
            _ => {
                return Err(Error::UnknownAlgorithm {
                    name: s.to_string(),
                })
            }
        };
        Ok(algorithm)
    }
}

/// An algorithm with its output length: what a catalog column or a sums line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlgoSpec {
    pub algorithm: Algorithm,
    pub output_len_bytes: usize,
}

impl AlgoSpec {
    /// The algorithm at its default output length.
    pub fn new(algorithm: Algorithm) -> AlgoSpec {
        AlgoSpec {
            algorithm,
            output_len_bytes: algorithm.default_output_len_bytes(),
        }
    }

    /// An extendable-output function at a chosen length; refused for fixed-length algorithms
    /// (unless the length is their own) and beyond [`XOF_OUTPUT_LEN_MAX_BYTES`].
    pub fn with_len(algorithm: Algorithm, output_len_bytes: usize) -> Result<AlgoSpec, Error> {
        if output_len_bytes == algorithm.default_output_len_bytes() {
            return Ok(AlgoSpec::new(algorithm));
        }
        if !algorithm.is_xof() {
            return Err(Error::FixedLength {
                algorithm,
                asked_bytes: output_len_bytes,
            });
        }
        if output_len_bytes == 0 || output_len_bytes > XOF_OUTPUT_LEN_MAX_BYTES {
            return Err(Error::OutputLength {
                algorithm,
                asked_bytes: output_len_bytes,
                max_bytes: XOF_OUTPUT_LEN_MAX_BYTES,
            });
        }
        Ok(AlgoSpec {
            algorithm,
            output_len_bytes,
        })
    }

    /// A name safe as an SQL identifier suffix: `sha3-256` → `sha3_256`, `shake256:64` → `shake256_64`.
    pub fn column_name(&self) -> String {
        self.to_string().replace(['-', ':'], "_")
    }

    /// Inverse of [`AlgoSpec::column_name`].
    pub fn from_column_name(column: &str) -> Result<AlgoSpec, Error> {
        AlgoSpec::all_default()
            .into_iter()
            .find(|spec| spec.column_name() == column)
            .map(Ok)
            .unwrap_or_else(|| {
                // XOF at a chosen length: "<name>_<len>".
                let (name, len) =
                    column
                        .rsplit_once('_')
                        .ok_or_else(|| Error::UnknownAlgorithm {
                            name: column.into(),
                        })?;
                let len: usize = len.parse().map_err(|_| Error::UnknownAlgorithm {
                    name: column.into(),
                })?;
                let algorithm = Algorithm::ALL
                    .into_iter()
                    .find(|a| a.is_xof() && AlgoSpec::new(*a).column_name() == name)
                    .ok_or_else(|| Error::UnknownAlgorithm {
                        name: column.into(),
                    })?;
                AlgoSpec::with_len(algorithm, len)
            })
    }

    /// Every algorithm at its default length.
    pub fn all_default() -> Vec<AlgoSpec> {
        Algorithm::ALL.into_iter().map(AlgoSpec::new).collect()
    }
}

impl fmt::Display for AlgoSpec {
    /// The canonical name; `:<bytes>` follows only when an XOF length differs from the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.output_len_bytes == self.algorithm.default_output_len_bytes() {
            f.write_str(self.algorithm.name())
        } else {
            write!(f, "{}:{}", self.algorithm.name(), self.output_len_bytes)
        }
    }
}

impl FromStr for AlgoSpec {
    type Err = Error;

    /// `sha256`, `shake256:64` (length in bytes), `blake3:64`.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.split_once(':') {
            None => Ok(AlgoSpec::new(s.parse()?)),
            Some((name, len)) => {
                let algorithm: Algorithm = name.parse()?;
                let output_len_bytes = len.trim().parse().map_err(|_| Error::BadLength {
                    spec: s.to_string(),
                })?;
                AlgoSpec::with_len(algorithm, output_len_bytes)
            }
        }
    }
}

/// Parses a comma-separated list (`md5,sha256,shake256:64`); `all` stands for every algorithm.
/// Duplicates are dropped, first occurrence kept.
pub fn parse_algo_list(s: &str) -> Result<Vec<AlgoSpec>, Error> {
    let mut specs: Vec<AlgoSpec> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = if part.eq_ignore_ascii_case("all") {
            AlgoSpec::all_default()
        } else {
            vec![part.parse()?]
        };
        for spec in parsed {
            if !specs.contains(&spec) {
                specs.push(spec);
            }
        }
    }
    if specs.is_empty() {
        return Err(Error::EmptyAlgorithmList {
            list: s.to_string(),
        });
    }
    Ok(specs)
}
