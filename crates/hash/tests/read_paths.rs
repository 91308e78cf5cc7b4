//! The same bytes through every read path — single-thread reader, pipelined lanes, in-memory
//! lanes and mmap — give the same digests (STYLE #13).

use std::io::Write;

use basin_hash::read::{hash_file, hash_reader, hash_reader_pipelined, hash_slice, plan_lanes};
use basin_hash::{AlgoSpec, MultiHasher, ReadOptions, ReadStrategy};
use proptest::prelude::*;

fn all_specs() -> Vec<AlgoSpec> {
    let mut specs = AlgoSpec::all_default();
    specs.push("shake128:100".parse().unwrap());
    specs.push("blake3:48".parse().unwrap());
    specs
}

fn reference(data: &[u8], specs: &[AlgoSpec]) -> Vec<String> {
    let mut hasher = MultiHasher::new(specs);
    for byte in data.chunks(7) {
        hasher.update(byte);
    }
    hasher.finalize().iter().map(|d| d.to_string()).collect()
}

fn strings(digests: Vec<basin_hash::Digest>) -> Vec<String> {
    digests.iter().map(|d| d.to_string()).collect()
}

fn every_path(
    data: &[u8],
    specs: &[AlgoSpec],
    buffer_bytes: usize,
) -> Vec<(&'static str, Vec<String>)> {
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(data).unwrap();
    std::io::Seek::rewind(&mut file).unwrap();
    let mut out = Vec::new();
    let small = ReadOptions {
        read_buffer_bytes: buffer_bytes,
        buffers_in_flight: 2,
        pipeline_min_bytes: 0,
        lanes_max: 3,
        ..Default::default()
    };
    out.push((
        "reader",
        strings(hash_reader(data, specs, &mut Vec::new()).unwrap().1),
    ));
    out.push((
        "pipelined",
        strings(hash_reader_pipelined(data, specs, &small).unwrap().1),
    ));
    out.push(("slice-lanes", strings(hash_slice(data, specs, 3))));
    for (name, strategy, min) in [
        ("file-buffered", ReadStrategy::Buffered, u64::MAX),
        ("file-pipelined", ReadStrategy::Buffered, 0),
        ("file-mmap", ReadStrategy::Mmap, 0),
    ] {
        let options = ReadOptions {
            strategy,
            pipeline_min_bytes: min,
            ..small
        };
        let (bytes, digests) = hash_file(
            &mut file.try_clone().unwrap(),
            data.len() as u64,
            specs,
            &options,
            &mut Vec::new(),
        )
        .unwrap();
        assert_eq!(bytes, data.len() as u64, "{name}");
        out.push((name, strings(digests)));
        std::io::Seek::rewind(&mut file).unwrap();
    }
    out
}

#[test]
fn all_paths_agree_on_a_multi_buffer_file() {
    let data: Vec<u8> = (0..3_000_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let specs = all_specs();
    let expected = reference(&data, &specs);
    for (name, got) in every_path(&data, &specs, 64 * 1024) {
        assert_eq!(got, expected, "path {name} disagrees");
    }
}

#[test]
fn empty_file_through_every_path() {
    let specs = all_specs();
    let expected = reference(b"", &specs);
    for (name, got) in every_path(b"", &specs, 64 * 1024) {
        assert_eq!(got, expected, "path {name} disagrees");
    }
}

#[test]
fn lanes_cover_every_algorithm_once_and_balance_md5() {
    let specs = basin_hash::parse_algo_list("crc32,md5,sha1,sha256").unwrap();
    let lanes = plan_lanes(&specs, 2);
    assert_eq!(lanes.len(), 2);
    let mut seen: Vec<usize> = lanes.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3]);
    // md5 is the costliest: it runs alone.
    assert!(lanes.iter().any(|l| l == &vec![1]), "lanes {lanes:?}");
    assert_eq!(plan_lanes(&specs, 1).len(), 1);
    assert_eq!(plan_lanes(&specs, 16).len(), 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_inputs_agree(data in proptest::collection::vec(any::<u8>(), 0..200_000), buffer_kib in 64usize..200) {
        let specs = basin_hash::parse_algo_list("crc32,md5,sha256,blake3,xxh3-128,shake256:20").unwrap();
        let expected = reference(&data, &specs);
        for (name, got) in every_path(&data, &specs, buffer_kib * 1024) {
            prop_assert_eq!(&got, &expected, "path {}", name);
        }
    }
}

/// Regression: the reader kept its own reference to each chunk, so a lane finishing first could
/// not recycle the buffer; once every buffer was lost that way the reader waited forever.
#[test]
fn pipelined_reader_does_not_lose_buffers_when_lanes_are_fast() {
    let data = vec![7u8; 40 << 20];
    let specs = basin_hash::parse_algo_list("crc32").unwrap();
    let expected = reference(&data[..], &specs);
    for lanes_max in [1, 2] {
        let options = ReadOptions {
            read_buffer_bytes: 64 * 1024,
            buffers_in_flight: 2,
            pipeline_min_bytes: 0,
            lanes_max,
            ..Default::default()
        };
        let (bytes, digests) = hash_reader_pipelined(&data[..], &specs, &options).unwrap();
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(strings(digests), expected);
    }
}
