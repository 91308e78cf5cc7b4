//! basin-hash: the digest registry behind `basin hash`, `verify` and `copy`.
//!
//! Twenty-one algorithms — MD5, SHA-1, SHA-2 (224/256/384/512, 512/256), SHA-3, BLAKE2b/2s,
//! BLAKE3, CRC-32, CRC-32C, xxHash64, XXH3-64/128 and the extendable-output functions SHAKE128,
//! SHAKE256 and BLAKE3 at a chosen length — fed from one read of the input.
//!
//! Main types:
//! - [`Algorithm`] and [`AlgoSpec`] (an algorithm plus its output length; parses `shake256:64`),
//!   [`parse_algo_list`] for `md5,sha256,blake3:64`;
//! - [`MultiHasher`]: one stream feeding every selected algorithm on the calling thread;
//! - [`read`]: whole-file hashing — buffered, pipelined (a reader thread plus cost-balanced lanes
//!   of algorithms on other cores) and mmap — which all give the same [`Digest`]s;
//! - [`sums`]: GNU, BSD, JSON Lines and hashdeep lines, written and read back.
//!
//! ```
//! use basin_hash::{parse_algo_list, read::hash_slice};
//! let specs = parse_algo_list("md5,shake128:16").unwrap();
//! let digests = hash_slice(b"abc", &specs, 2);
//! assert_eq!(digests[0].to_hex(), "900150983cd24fb0d6963f7d28e17f72");
//! assert_eq!(digests[1].bytes.len(), 16);
//! ```
//!
//! This crate knows nothing of catalogs, walking or the object store.

mod algorithm;
mod engine;
pub mod read;
pub mod sums;

use std::path::PathBuf;

pub use algorithm::{parse_algo_list, AlgoSpec, Algorithm, XOF_OUTPUT_LEN_MAX_BYTES};
pub use engine::{Digest, MultiHasher};
pub use read::{ReadOptions, ReadStrategy};
pub use sums::{parse_sums, SumsEntry, SumsFormat};

/// Errors of algorithm parsing, file reading and sums-file parsing.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown algorithm {name:?} (see `basin hash --list-algorithms`)")]
    UnknownAlgorithm { name: String },
    #[error("no algorithm in {list:?}")]
    EmptyAlgorithmList { list: String },
    #[error("bad output length in {spec:?}: expected <algorithm>:<bytes>")]
    BadLength { spec: String },
    #[error("{algorithm} has a fixed output length; {asked_bytes} bytes cannot be chosen")]
    FixedLength {
        algorithm: Algorithm,
        asked_bytes: usize,
    },
    #[error("{algorithm}: output length {asked_bytes} bytes is outside 1..={max_bytes}")]
    OutputLength {
        algorithm: Algorithm,
        asked_bytes: usize,
        max_bytes: usize,
    },
    #[error("unknown sums format {name:?} (gnu, bsd, json, hashdeep)")]
    UnknownFormat { name: String },
    #[error("{format} format: {reason}")]
    FormatAlgorithms {
        format: &'static str,
        reason: String,
    },
    #[error("sums file line {line}: {reason}")]
    SumsLine { line: usize, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
