//! Reading files into the digest states: a buffered single-thread path for small inputs, a
//! pipelined path (one reader thread, algorithms split over lanes) for large ones, and an mmap path.
//!
//! All three produce the same digests for the same bytes; tests hold them to that.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use crate::engine::{MultiHasher, Running};
use crate::{AlgoSpec, Digest, Error};

/// How file bytes reach the hashers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadStrategy {
    /// `read(2)` into reusable buffers. Safe when another process truncates the file meanwhile.
    #[default]
    Buffered,
    /// Map the file. Fewer copies; a concurrent truncation raises SIGBUS, so it is opt-in.
    Mmap,
}

/// Tuning for [`hash_file`]. Every bound is named, so memory per file is `read_buffer_bytes * buffers_in_flight`.
#[derive(Debug, Clone, Copy)]
pub struct ReadOptions {
    pub strategy: ReadStrategy,
    /// Most threads one file's algorithms may be spread over (1 = all on the reader's thread).
    pub lanes_max: usize,
    /// Size of one read buffer.
    pub read_buffer_bytes: usize,
    /// Buffers filled ahead of the slowest lane.
    pub buffers_in_flight: usize,
    /// Files at least this large use the pipelined (reader thread + lanes) path.
    pub pipeline_min_bytes: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            strategy: ReadStrategy::Buffered,
            lanes_max: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            read_buffer_bytes: 4 << 20,
            buffers_in_flight: 4,
            pipeline_min_bytes: 16 << 20,
        }
    }
}

/// Groups algorithm indexes into at most `lanes_max` lanes of roughly equal cost (longest
/// processing time first), so the slowest lane bounds the wall time.
pub fn plan_lanes(specs: &[AlgoSpec], lanes_max: usize) -> Vec<Vec<usize>> {
    let lane_count = lanes_max.clamp(1, specs.len().max(1));
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(specs[i].algorithm.cost_weight()));
    let mut lanes: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); lane_count];
    for i in order {
        let lightest = lanes
            .iter_mut()
            .min_by_key(|(cost, _)| *cost)
            .expect("lane_count >= 1");
        lightest.0 += u64::from(specs[i].algorithm.cost_weight());
        lightest.1.push(i);
    }
    lanes
        .into_iter()
        .map(|(_, members)| members)
        .filter(|m| !m.is_empty())
        .collect()
}

/// Hashes everything `reader` yields on the calling thread, reusing `buffer` (grown to 1 MiB if smaller).
pub fn hash_reader<R: Read>(
    mut reader: R,
    specs: &[AlgoSpec],
    buffer: &mut Vec<u8>,
) -> io::Result<(u64, Vec<Digest>)> {
    if buffer.len() < 1 << 20 {
        buffer.resize(1 << 20, 0);
    }
    let mut hasher = MultiHasher::new(specs);
    let mut total_bytes = 0u64;
    loop {
        let n = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        total_bytes += n as u64;
    }
    Ok((total_bytes, hasher.finalize()))
}

/// Hashes bytes already in memory, spreading the algorithms over up to `lanes_max` threads.
pub fn hash_slice(data: &[u8], specs: &[AlgoSpec], lanes_max: usize) -> Vec<Digest> {
    let lanes = plan_lanes(specs, lanes_max);
    if lanes.len() <= 1 {
        let mut hasher = MultiHasher::new(specs);
        hasher.update(data);
        return hasher.finalize();
    }
    let mut out: Vec<Option<Digest>> = vec![None; specs.len()];
    let results: Vec<Vec<(usize, Digest)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = lanes
            .iter()
            .map(|members| {
                scope.spawn(move || {
                    let mut states: Vec<(usize, Running)> = members
                        .iter()
                        .map(|&i| (i, Running::new(specs[i])))
                        .collect();
                    // Chunked so the lanes touch the same pages at about the same time.
                    for chunk in data.chunks(8 << 20) {
                        for (_, s) in &mut states {
                            s.update(chunk);
                        }
                    }
                    states.into_iter().map(|(i, s)| (i, s.finalize())).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    for (i, digest) in results.into_iter().flatten() {
        out[i] = Some(digest);
    }
    out.into_iter()
        .map(|d| d.expect("every spec is in exactly one lane"))
        .collect()
}

/// One filled read buffer shared by every lane; the last lane to drop it sends it back for reuse.
struct Chunk {
    buffer: Vec<u8>,
    len: usize,
}

/// Reads on the calling thread while lanes of algorithms hash on their own threads.
pub fn hash_reader_pipelined<R: Read>(
    mut reader: R,
    specs: &[AlgoSpec],
    options: &ReadOptions,
) -> io::Result<(u64, Vec<Digest>)> {
    let lanes = plan_lanes(specs, options.lanes_max);
    let buffers_in_flight = options.buffers_in_flight.max(2);
    let buffer_bytes = options.read_buffer_bytes.max(64 * 1024);
    let mut out: Vec<Option<Digest>> = vec![None; specs.len()];
    let mut total_bytes = 0u64;
    let lane_results: Vec<Vec<(usize, Digest)>> = std::thread::scope(|scope| -> io::Result<_> {
        let (recycle_tx, recycle_rx) = crossbeam_channel::bounded::<Vec<u8>>(buffers_in_flight);
        let mut senders = Vec::with_capacity(lanes.len());
        let mut handles = Vec::with_capacity(lanes.len());
        for members in &lanes {
            let (tx, rx) = crossbeam_channel::bounded::<Arc<Chunk>>(buffers_in_flight);
            senders.push(tx);
            let recycle_tx = recycle_tx.clone();
            handles.push(scope.spawn(move || {
                let mut states: Vec<(usize, Running)> = members
                    .iter()
                    .map(|&i| (i, Running::new(specs[i])))
                    .collect();
                for chunk in rx {
                    for (_, s) in &mut states {
                        s.update(&chunk.buffer[..chunk.len]);
                    }
                    if let Ok(chunk) = Arc::try_unwrap(chunk) {
                        // The reader may already be gone (EOF or error): then the buffer is just freed.
                        let _ = recycle_tx.try_send(chunk.buffer);
                    }
                }
                states
                    .into_iter()
                    .map(|(i, s)| (i, s.finalize()))
                    .collect::<Vec<_>>()
            }));
        }
        drop(recycle_tx);
        let mut allocated = 0usize;
        let read_result: io::Result<()> = (|| loop {
            let mut buffer = match recycle_rx.try_recv() {
                Ok(b) => b,
                Err(_) if allocated < buffers_in_flight => {
                    allocated += 1;
                    vec![0u8; buffer_bytes]
                }
                Err(_) => match recycle_rx.recv() {
                    Ok(b) => b,
                    Err(_) => return Ok(()),
                },
            };
            let mut len = 0;
            while len < buffer.len() {
                match reader.read(&mut buffer[len..]) {
                    Ok(0) => break,
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            if len == 0 {
                return Ok(());
            }
            total_bytes += len as u64;
            // The reader keeps no reference: whichever lane drops the chunk last recycles its buffer.
            let mut chunk = Some(Arc::new(Chunk { buffer, len }));
            for (i, tx) in senders.iter().enumerate() {
                let share = if i + 1 == senders.len() {
                    chunk.take()
                } else {
                    chunk.clone()
                };
                if let Some(share) = share {
                    // A lane only disconnects by panicking, which the join below reports.
                    let _ = tx.send(share);
                }
            }
            if len < buffer_bytes {
                return Ok(());
            }
        })();
        drop(senders);
        let results = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();
        read_result.map(|()| results)
    })?;
    for (i, digest) in lane_results.into_iter().flatten() {
        out[i] = Some(digest);
    }
    Ok((
        total_bytes,
        out.into_iter()
            .map(|d| d.expect("every spec is in exactly one lane"))
            .collect(),
    ))
}

/// Hashes an open file with the strategy in `options`; `size_hint_bytes` (from a stat) picks the
/// single-thread or the pipelined path. Returns the bytes actually hashed (the single-thread path
/// reads at most `size_hint_bytes`), which the caller compares with the size it expected, and
/// re-stats, to detect files changing underneath.
pub fn hash_file(
    file: &mut File,
    size_hint_bytes: u64,
    specs: &[AlgoSpec],
    options: &ReadOptions,
    buffer: &mut Vec<u8>,
) -> io::Result<(u64, Vec<Digest>)> {
    match options.strategy {
        ReadStrategy::Mmap if size_hint_bytes > 0 => {
            // SAFETY: the map is read-only and dropped before returning. A concurrent truncation
            // would fault (SIGBUS); that risk is why Mmap is opt-in and Buffered the default.
            let map = unsafe { memmap2::Mmap::map(&*file)? };
            #[cfg(unix)]
            let _ = map.advise(memmap2::Advice::Sequential);
            let digests = hash_slice(&map, specs, options.lanes_max);
            Ok((map.len() as u64, digests))
        }
        _ if size_hint_bytes >= options.pipeline_min_bytes => {
            hash_reader_pipelined(file, specs, options)
        }
        // Reading exactly the expected size saves the EOF read per small file; a file that grew
        // or shrank meanwhile is caught by the caller comparing sizes before and after. Size 0 is
        // read to the end: pseudo-files (procfs) report 0 whatever they hold.
        _ if size_hint_bytes > 0 => hash_reader(Read::take(file, size_hint_bytes), specs, buffer),
        _ => hash_reader(file, specs, buffer),
    }
}

/// Opens and hashes one file: the convenience entry point for library users.
pub fn hash_path(
    path: &Path,
    specs: &[AlgoSpec],
    options: &ReadOptions,
) -> Result<(u64, Vec<Digest>), Error> {
    let wrap = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(wrap)?;
    let size = file.metadata().map_err(wrap)?.len();
    hash_file(&mut file, size, specs, options, &mut Vec::new()).map_err(wrap)
}
