//! Known-answer tests: every algorithm against published vectors (FIPS 180-4 / 202 examples,
//! RFC 1321, RFC 7693, the BLAKE3 and xxHash reference vectors, the CRC catalogue check value).

use basin_hash::{parse_algo_list, AlgoSpec, Algorithm, MultiHasher};

fn hex_of(spec: &str, input: &[u8]) -> String {
    let specs = parse_algo_list(spec).expect("spec parses");
    let mut hasher = MultiHasher::new(&specs);
    hasher.update(input);
    hasher.finalize()[0].to_hex()
}

const ABC: &[u8] = b"abc";
const ABC448: &[u8] = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";

#[test]
fn md5_rfc1321() {
    assert_eq!(hex_of("md5", b""), "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(hex_of("md5", ABC), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(hex_of("md5", ABC448), "8215ef0796a20bcaaae116d3876c664a");
}

#[test]
fn sha1_fips180() {
    assert_eq!(
        hex_of("sha1", ABC),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        hex_of("sha1", ABC448),
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1"
    );
}

#[test]
fn sha2_fips180() {
    assert_eq!(
        hex_of("sha224", ABC),
        "23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7"
    );
    assert_eq!(
        hex_of("sha256", b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex_of("sha256", ABC),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex_of("sha256", ABC448),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
    assert_eq!(
        hex_of("sha384", ABC),
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
    );
    assert_eq!(
        hex_of("sha512", ABC),
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    );
    assert_eq!(
        hex_of("sha512/256", ABC),
        "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23"
    );
}

#[test]
fn sha3_fips202() {
    assert_eq!(
        hex_of("sha3-224", ABC),
        "e642824c3f8cf24ad09234ee7d3c766fc9a3a5168d0c94ad73b46fdf"
    );
    assert_eq!(
        hex_of("sha3-256", b""),
        "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    );
    assert_eq!(
        hex_of("sha3-256", ABC),
        "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
    );
    assert_eq!(
        hex_of("sha3-384", ABC),
        "ec01498288516fc926459f58e2c6ad8df9b473cb0fc08c2596da7cf0e49be4b298d88cea927ac7f539f1edf228376d25"
    );
    assert_eq!(
        hex_of("sha3-512", ABC),
        "b751850b1a57168a5693cd924b6b096e08f621827444f70d884f5d0240d2712e10e116e9192af3c91a7ec57647e3934057340b4cf408d5a56592f8274eec53f0"
    );
}

#[test]
fn shake_fips202_with_lengths() {
    assert_eq!(
        hex_of("shake128", b""),
        "7f9c2ba4e88f827d616045507605853ed73b8093f6efbc88eb1a6eacfa66ef26"
    );
    assert_eq!(
        hex_of("shake128", ABC),
        "5881092dd818bf5cf8a3ddb793fbcba74097d5c526a6d35f97b83351940f2cc8"
    );
    assert_eq!(
        hex_of("shake256", b""),
        "46b9dd2b0ba88d13233b3feb743eeb243fcd52ea62b81b82b50c27646ed5762fd75dc4ddd8c0f200cb05019d67b592f6fc821c49479ab48640292eacb3b7c4be"
    );
    assert_eq!(
        hex_of("shake256:16", ABC),
        "483366601360a8771c6863080cc4114d"
    );
    assert_eq!(
        hex_of("shake256:16", ABC448),
        "4d8c2dd2435a0128eefbb8c36f6f8713"
    );
}

#[test]
fn blake2_rfc7693() {
    assert_eq!(
        hex_of("blake2b-512", ABC),
        "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
    );
    assert_eq!(
        hex_of("blake2s-256", ABC),
        "508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982"
    );
}

#[test]
fn blake3_reference_vectors_and_xof_prefix() {
    let empty = "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262";
    assert_eq!(hex_of("blake3", b""), empty);
    let extended = hex_of("blake3:64", b"");
    assert_eq!(
        extended,
        format!("{empty}e00f03e7b69af26b7faaf09fcd333050338ddfe085b8cc869ca98b206c08243a")
    );
    // Official vector for input_len 1 (bytes are i % 251).
    assert_eq!(
        hex_of("blake3", &[0u8]),
        "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
    );
    // Large input crosses the rayon threshold; must equal feeding it in small pieces.
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let whole = hex_of("blake3", &data);
    let specs = parse_algo_list("blake3").unwrap();
    let mut pieces = MultiHasher::new(&specs);
    for chunk in data.chunks(1000) {
        pieces.update(chunk);
    }
    assert_eq!(pieces.finalize()[0].to_hex(), whole);
}

#[test]
fn checksums_check_values() {
    // The CRC catalogue "check" value is the CRC of "123456789", printed big-endian.
    assert_eq!(hex_of("crc32", b"123456789"), "cbf43926");
    assert_eq!(hex_of("crc32", ABC), "352441c2");
    assert_eq!(hex_of("crc32c", b"123456789"), "e3069283");
    assert_eq!(hex_of("xxh64", b""), "ef46db3751d8e999");
    assert_eq!(hex_of("xxh3-64", b""), "2d06800538d394c2");
    assert_eq!(hex_of("xxh3-128", b""), "99aa06d3014798d86001c324468d497f");
}

#[test]
fn every_algorithm_has_a_vector_above_and_the_right_length() {
    // Guard: a new algorithm must get a vector; digests have their declared length.
    assert_eq!(Algorithm::ALL.len(), 21);
    for spec in AlgoSpec::all_default() {
        let mut hasher = MultiHasher::new(&[spec]);
        hasher.update(ABC);
        let digest = hasher.finalize().remove(0);
        assert_eq!(digest.bytes.len(), spec.output_len_bytes, "{spec}");
    }
}

#[test]
fn spec_parsing_and_display() {
    let specs =
        parse_algo_list("MD5, sha-256,shake256:64,blake3:64,sha512/256,sha3_256,md5").unwrap();
    let names: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        [
            "md5",
            "sha256",
            "shake256",
            "blake3:64",
            "sha512-256",
            "sha3-256"
        ]
    );
    assert_eq!(specs[3].column_name(), "blake3_64");
    for spec in &specs {
        assert_eq!(
            AlgoSpec::from_column_name(&spec.column_name()).unwrap(),
            *spec
        );
        assert_eq!(spec.to_string().parse::<AlgoSpec>().unwrap(), *spec);
    }
    let err = "sha256:64".parse::<AlgoSpec>().unwrap_err();
    assert!(
        matches!(err, basin_hash::Error::FixedLength { .. }),
        "got {err:?}"
    );
    let err = "shake128:0".parse::<AlgoSpec>().unwrap_err();
    assert!(
        matches!(err, basin_hash::Error::OutputLength { .. }),
        "got {err:?}"
    );
    let err = parse_algo_list("sha256,whirlpool").unwrap_err();
    assert!(
        matches!(err, basin_hash::Error::UnknownAlgorithm { ref name } if name == "whirlpool"),
        "got {err:?}"
    );
    assert_eq!(parse_algo_list("all").unwrap().len(), 21);
}
