//! BLAKE3 of many small objects in one pass: the SIMD lanes are filled across objects.
//!
//! `blake3::hash` fills its SIMD lanes (16 with AVX-512) with the 1 KiB chunks of one input, so
//! an object of a few KiB leaves most of them empty, and its last partial chunk and its parent
//! nodes are compressed one block at a time. Stores hold mostly such objects, and bulk paths
//! (imports, validate) hash thousands of them back to back: here the same chunk of many objects
//! goes through the crate's `hash_many` kernel at once, then the partial chunks, grouped by
//! shape, then the parent nodes, level by level. The digests are BLAKE3's, bit for bit (the
//! tests compare every length against `blake3::hash`).
//!
//! The kernels are the `blake3` crate's own (`blake3::platform`). That module is public but
//! hidden from its docs, which is why the workspace pins `blake3` to one exact version: a new
//! one is taken on purpose, with these tests run, not by a lock-file update.

use blake3::platform::Platform;
use blake3::IncrementCounter;

const CHUNK_LEN: usize = blake3::CHUNK_LEN;
const BLOCK_LEN: usize = blake3::BLOCK_LEN;
const OUT_LEN: usize = blake3::OUT_LEN;

/// BLAKE3's IV (the SHA-256 IV), the key of the unkeyed hash mode.
const IV: [u32; 8] = [
    0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19,
];
// Domain flags of the BLAKE3 specification (section 2.1).
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;

/// Objects longer than this are hashed alone: from 16 chunks on, `blake3::hash` fills every
/// lane with chunks of the one object.
pub(crate) const BATCHED_OBJECT_BYTES_MAX: usize = 16 * CHUNK_LEN;

/// The BLAKE3 digests of `contents`, in order.
pub(crate) fn hash_all(contents: &[&[u8]]) -> Vec<[u8; OUT_LEN]> {
    hash_all_on(Platform::detect(), contents)
}

/// [`hash_all`] through the kernels of `platform` (tests run every one this machine has).
fn hash_all_on(platform: Platform, contents: &[&[u8]]) -> Vec<[u8; OUT_LEN]> {
    let mut out = vec![[0u8; OUT_LEN]; contents.len()];
    let mut batch = Vec::with_capacity(contents.len());
    for (i, c) in contents.iter().enumerate() {
        if c.len() > BATCHED_OBJECT_BYTES_MAX {
            out[i] = *blake3::hash(c).as_bytes();
        } else {
            batch.push(i);
        }
    }
    if !batch.is_empty() {
        Batch::new(platform, contents, &batch).hash_into(&mut out);
    }
    out
}

/// Objects of at most [`BATCHED_OBJECT_BYTES_MAX`] bytes being hashed together.
struct Batch<'a> {
    platform: Platform,
    /// (input index, content) of each object.
    objects: Vec<(usize, &'a [u8])>,
    /// Chaining values of every object's nodes: object `j` owns `nodes[first[j]..][..chunks[j]]`,
    /// its chunks at first, then each level of parents in their place.
    nodes: Vec<[u8; OUT_LEN]>,
    first: Vec<usize>,
    /// Nodes each object has left at the current level (its chunk count at first).
    count: Vec<usize>,
    /// Scratch for the kernel's output.
    out: Vec<u8>,
}

impl<'a> Batch<'a> {
    fn new(platform: Platform, contents: &[&'a [u8]], which: &[usize]) -> Batch<'a> {
        let objects: Vec<(usize, &[u8])> = which.iter().map(|&i| (i, contents[i])).collect();
        let count: Vec<usize> = objects
            .iter()
            .map(|(_, c)| c.len().div_ceil(CHUNK_LEN).max(1))
            .collect();
        let mut first = Vec::with_capacity(count.len());
        let mut total = 0;
        for n in &count {
            first.push(total);
            total += n;
        }
        Batch {
            platform,
            nodes: vec![[0u8; OUT_LEN]; total],
            first,
            count,
            out: vec![0u8; OUT_LEN * objects.len().max(1)],
            objects,
        }
    }

    fn hash_into(mut self, digests: &mut [[u8; OUT_LEN]]) {
        self.full_chunks();
        self.last_chunks(digests);
        self.parents(digests);
    }

    /// Every whole chunk of an object of two chunks or more: the k-th chunks of all objects
    /// share the chunk counter k, so they go through the kernel together.
    fn full_chunks(&mut self) {
        let mut inputs: Vec<&[u8; CHUNK_LEN]> = Vec::with_capacity(self.objects.len());
        let mut owners: Vec<usize> = Vec::with_capacity(self.objects.len());
        let max_chunks = self.count.iter().copied().max().unwrap_or(0);
        for k in 0..max_chunks {
            inputs.clear();
            owners.clear();
            for (j, (_, c)) in self.objects.iter().enumerate() {
                if self.count[j] > 1 {
                    if let Some(chunk) = c.get(k * CHUNK_LEN..(k + 1) * CHUNK_LEN) {
                        // A slice of exactly CHUNK_LEN bytes always converts.
                        if let Ok(chunk) = chunk.try_into() {
                            inputs.push(chunk);
                            owners.push(self.first[j] + k);
                        }
                    }
                }
            }
            if inputs.is_empty() {
                continue;
            }
            let out = &mut self.out[..OUT_LEN * inputs.len()];
            self.platform.hash_many(
                &inputs,
                &IV,
                k as u64,
                IncrementCounter::No,
                0,
                CHUNK_START,
                CHUNK_END,
                out,
            );
            for (node, cv) in owners.iter().zip(out.chunks_exact(OUT_LEN)) {
                self.nodes[*node].copy_from_slice(cv);
            }
        }
    }

    /// The last chunk of each object that is partial, or its only chunk: the whole blocks
    /// before its last block go through the kernel with the other objects of the same chunk
    /// counter and block count, then the last block is compressed alone (with ROOT when it is
    /// the object's only chunk: then its output is the digest).
    fn last_chunks(&mut self, digests: &mut [[u8; OUT_LEN]]) {
        // (chunk counter, whole blocks before the last block, object) of every such chunk.
        let mut shapes: Vec<(usize, usize, usize)> = Vec::with_capacity(self.objects.len());
        for (j, (_, c)) in self.objects.iter().enumerate() {
            let n = self.count[j];
            let tail = c.len() - (n - 1) * CHUNK_LEN;
            if n > 1 && tail == CHUNK_LEN {
                continue; // hashed whole by `full_chunks`
            }
            // The last block keeps 1..=64 bytes (none only for the empty object).
            shapes.push((n - 1, tail.saturating_sub(1) / BLOCK_LEN, j));
        }
        shapes.sort_unstable();
        let mut states: Vec<[u32; 8]> = vec![IV; shapes.len()];
        let mut at = 0;
        while at < shapes.len() {
            let (counter, blocks, _) = shapes[at];
            let end = at + shapes[at..].partition_point(|s| (s.0, s.1) == (counter, blocks));
            if blocks > 0 {
                self.leading_blocks(&shapes[at..end], &mut states[at..end]);
            }
            at = end;
        }
        for ((counter, blocks, j), mut cv) in shapes.into_iter().zip(states) {
            let c = self.objects[j].1;
            let last = &c[counter * CHUNK_LEN + blocks * BLOCK_LEN..];
            let mut block = [0u8; BLOCK_LEN];
            block[..last.len()].copy_from_slice(last);
            let mut flags = CHUNK_END;
            if blocks == 0 {
                flags |= CHUNK_START;
            }
            let only_chunk = self.count[j] == 1;
            if only_chunk {
                flags |= ROOT;
            }
            self.platform.compress_in_place(
                &mut cv,
                &block,
                last.len() as u8,
                counter as u64,
                flags,
            );
            let bytes = le_bytes(&cv);
            if only_chunk {
                digests[self.objects[j].0] = bytes;
            } else {
                self.nodes[self.first[j] + counter] = bytes;
            }
        }
    }

    /// The first `shape.1` blocks of the given last chunks (all of one chunk counter and block
    /// count), through the kernel: their chaining values after those blocks go to `states`.
    fn leading_blocks(&mut self, group: &[(usize, usize, usize)], states: &mut [[u32; 8]]) {
        let (counter, blocks, _) = group[0];
        macro_rules! kernel {
            ($($b:literal)*) => {
                match blocks {
                    $($b => {
                        let inputs: Vec<&[u8; $b * BLOCK_LEN]> = group
                            .iter()
                            .filter_map(|&(_, _, j)| {
                                let start = counter * CHUNK_LEN;
                                self.objects[j].1.get(start..start + $b * BLOCK_LEN)?.try_into().ok()
                            })
                            .collect();
                        debug_assert_eq!(inputs.len(), group.len());
                        let out = &mut self.out[..OUT_LEN * inputs.len()];
                        self.platform.hash_many(
                            &inputs,
                            &IV,
                            counter as u64,
                            IncrementCounter::No,
                            0,
                            CHUNK_START,
                            0,
                            out,
                        );
                        for (state, cv) in states.iter_mut().zip(out.chunks_exact(OUT_LEN)) {
                            *state = le_words(cv);
                        }
                    })*
                    _ => unreachable!("a partial chunk has at most 15 whole blocks before its last"),
                }
            };
        }
        kernel!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
    }

    /// Parent nodes, one tree level at a time across all objects. Pairing neighbours from the
    /// left and carrying an odd last node up gives BLAKE3's tree (the left subtree holds the
    /// largest power of two of chunks below the total). The node that ends a tree is the root.
    fn parents(&mut self, digests: &mut [[u8; OUT_LEN]]) {
        let mut inner: Vec<[u8; BLOCK_LEN]> = Vec::new();
        let mut roots: Vec<[u8; BLOCK_LEN]> = Vec::new();
        let mut inner_to: Vec<usize> = Vec::new();
        let mut roots_to: Vec<usize> = Vec::new();
        loop {
            inner.clear();
            roots.clear();
            inner_to.clear();
            roots_to.clear();
            for j in 0..self.objects.len() {
                let n = self.count[j];
                if n < 2 {
                    continue;
                }
                let base = self.first[j];
                for pair in 0..n / 2 {
                    let mut block = [0u8; BLOCK_LEN];
                    block[..OUT_LEN].copy_from_slice(&self.nodes[base + 2 * pair]);
                    block[OUT_LEN..].copy_from_slice(&self.nodes[base + 2 * pair + 1]);
                    if n == 2 {
                        roots.push(block);
                        roots_to.push(self.objects[j].0);
                    } else {
                        inner.push(block);
                        inner_to.push(base + pair);
                    }
                }
                if n % 2 == 1 {
                    self.nodes[base + n / 2] = self.nodes[base + n - 1];
                }
                self.count[j] = n.div_ceil(2);
            }
            if inner.is_empty() && roots.is_empty() {
                return;
            }
            self.compress_parents(&inner, PARENT);
            for (node, cv) in inner_to.iter().zip(self.out.chunks_exact(OUT_LEN)) {
                self.nodes[*node].copy_from_slice(cv);
            }
            self.compress_parents(&roots, PARENT | ROOT);
            for (object, cv) in roots_to.iter().zip(self.out.chunks_exact(OUT_LEN)) {
                digests[*object].copy_from_slice(cv);
            }
        }
    }

    /// Compresses parent blocks through the kernel into `self.out`.
    fn compress_parents(&mut self, blocks: &[[u8; BLOCK_LEN]], flags: u8) {
        if blocks.is_empty() {
            return;
        }
        let inputs: Vec<&[u8; BLOCK_LEN]> = blocks.iter().collect();
        if self.out.len() < OUT_LEN * inputs.len() {
            self.out.resize(OUT_LEN * inputs.len(), 0);
        }
        let out = &mut self.out[..OUT_LEN * inputs.len()];
        self.platform
            .hash_many(&inputs, &IV, 0, IncrementCounter::No, flags, 0, 0, out);
    }
}

fn le_words(bytes: &[u8]) -> [u32; 8] {
    let mut words = [0u32; 8];
    for (w, b) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    words
}

fn le_bytes(words: &[u32; 8]) -> [u8; OUT_LEN] {
    let mut bytes = [0u8; OUT_LEN];
    for (b, w) in bytes.chunks_exact_mut(4).zip(words) {
        b.copy_from_slice(&w.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn content(len: usize, salt: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + salt * 7) % 251) as u8)
            .collect()
    }

    /// Every kernel this machine can run: the portable one, the best one (what `hash_all`
    /// uses), and on x86-64 each narrower one.
    fn platforms() -> Vec<Platform> {
        let mut all = vec![Platform::portable(), Platform::detect()];
        #[cfg(target_arch = "x86_64")]
        all.extend(
            [Platform::sse2(), Platform::sse41(), Platform::avx2()]
                .into_iter()
                .flatten(),
        );
        all
    }

    #[test]
    fn every_length_up_to_the_batch_limit_and_past_it_hashes_as_blake3_does() {
        // One batch holding every length from 0 to past the limit: each object meets objects
        // of every other shape in the same kernel calls.
        let objects: Vec<Vec<u8>> = (0..=BATCHED_OBJECT_BYTES_MAX + 2 * CHUNK_LEN + 3)
            .map(|len| content(len, len))
            .collect();
        let refs: Vec<&[u8]> = objects.iter().map(|o| o.as_slice()).collect();
        let platforms = platforms();
        assert!(!platforms.is_empty());
        for platform in platforms {
            let got = hash_all_on(platform, &refs);
            for (o, d) in objects.iter().zip(&got) {
                assert_eq!(
                    d,
                    blake3::hash(o).as_bytes(),
                    "length {} on {platform:?}",
                    o.len()
                );
            }
        }
    }

    #[test]
    fn each_length_alone_hashes_as_blake3_does() {
        for len in (0..=BATCHED_OBJECT_BYTES_MAX + 1).step_by(1) {
            let o = content(len, 3);
            assert_eq!(
                hash_all(&[&o]),
                vec![*blake3::hash(&o).as_bytes()],
                "length {len}"
            );
        }
    }

    #[test]
    fn random_batches_hash_as_blake3_does() {
        let seed: u64 = rand::rng().random();
        println!("seed {seed}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..40 {
            let n = rng.random_range(0..300);
            let objects: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    let len = match rng.random_range(0..4) {
                        0 => rng.random_range(0..=BLOCK_LEN * 2),
                        1 => rng.random_range(0..=CHUNK_LEN * 2),
                        2 => rng.random_range(0..=BATCHED_OBJECT_BYTES_MAX),
                        _ => rng.random_range(0..=BATCHED_OBJECT_BYTES_MAX * 3),
                    };
                    (0..len).map(|_| rng.random()).collect()
                })
                .collect();
            let refs: Vec<&[u8]> = objects.iter().map(|o| o.as_slice()).collect();
            let got = hash_all(&refs);
            assert_eq!(got.len(), objects.len());
            for (i, (o, d)) in objects.iter().zip(&got).enumerate() {
                assert_eq!(
                    d,
                    blake3::hash(o).as_bytes(),
                    "seed {seed}, round {round}, object {i} of length {}",
                    o.len()
                );
            }
        }
    }

    #[test]
    fn an_empty_list_gives_no_digests() {
        assert!(hash_all(&[]).is_empty());
    }
}
