//! An ordered parallel map: one producer thread, `jobs` workers, results handed to the caller's
//! thread in the order the producer made them.
//!
//! Memory is bounded: at most `WINDOW_BATCHES_MAX` batches of at most `BATCH_ITEMS_MAX` items
//! are between the producer and the sink at any time (a big file being hashed holds back at most
//! that many finished small ones), and the channels are bounded too.

use std::collections::BTreeMap;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError};

/// Batches in flight (produced but not yet handed to the sink), at most.
pub const WINDOW_BATCHES_MAX: usize = 256;
/// A batch closes at this many items...
pub const BATCH_ITEMS_MAX: usize = 64;
/// ...or at this much work (bytes to hash, as the producer weighs items), whichever comes first.
/// Small files travel in batches so channel hand-offs stay rare; big files travel alone so the
/// workers share them.
pub const BATCH_WEIGHT_MAX: u64 = 4 << 20;

/// Runs `produce` on its own thread and `work` on `jobs` threads (each with a reusable buffer);
/// calls `sink(Some(output))` in production order on the calling thread, and `sink(None)` when
/// nothing arrived for `tick` (so the sink can flush). A sink returning `false` stops everything.
/// The producer emits `(item, weight)`; weights (bytes, usually) only shape the batches.
pub fn run_ordered<I, O, P, W>(
    jobs: usize,
    tick: Duration,
    produce: P,
    work: W,
    sink: &mut dyn FnMut(Option<O>) -> bool,
) where
    I: Send,
    O: Send,
    P: FnOnce(&mut dyn FnMut(I, u64) -> bool) + Send,
    W: Fn(I, &mut Vec<u8>) -> O + Sync,
{
    let jobs = jobs.max(1);
    std::thread::scope(|scope| {
        let (work_tx, work_rx) = bounded::<(u64, Vec<I>)>(jobs * 2);
        let (done_tx, done_rx) = bounded::<(u64, Vec<O>)>(jobs * 2);
        let (ticket_tx, ticket_rx) = bounded::<()>(WINDOW_BATCHES_MAX);
        scope.spawn(move || {
            let mut seq = 0u64;
            let mut batch: Vec<I> = Vec::with_capacity(BATCH_ITEMS_MAX);
            let mut weight = 0u64;
            let mut send = |batch: &mut Vec<I>| -> bool {
                let full = std::mem::replace(batch, Vec::with_capacity(BATCH_ITEMS_MAX));
                // The ticket is taken before the batch exists downstream, so the sink can always return one.
                if ticket_tx.send(()).is_err() || work_tx.send((seq, full)).is_err() {
                    return false;
                }
                seq += 1;
                true
            };
            let mut alive = true;
            produce(&mut |item, item_weight| {
                if !alive {
                    return false;
                }
                if !batch.is_empty() && weight.saturating_add(item_weight) > BATCH_WEIGHT_MAX {
                    alive = send(&mut batch);
                    weight = 0;
                }
                batch.push(item);
                weight = weight.saturating_add(item_weight);
                if alive && batch.len() >= BATCH_ITEMS_MAX {
                    alive = send(&mut batch);
                    weight = 0;
                }
                alive
            });
            if alive && !batch.is_empty() {
                send(&mut batch);
            }
        });
        let work = &work;
        for _ in 0..jobs {
            let rx = work_rx.clone();
            let tx = done_tx.clone();
            scope.spawn(move || {
                let mut buffer = Vec::new();
                for (seq, batch) in rx {
                    let out: Vec<O> = batch
                        .into_iter()
                        .map(|item| work(item, &mut buffer))
                        .collect();
                    if tx.send((seq, out)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        drop(work_rx);
        let mut next = 0u64;
        let mut pending: BTreeMap<u64, Vec<O>> = BTreeMap::new();
        'outer: loop {
            match done_rx.recv_timeout(tick) {
                Ok((seq, out)) => {
                    pending.insert(seq, out);
                    while let Some(outs) = pending.remove(&next) {
                        next += 1;
                        let _ = ticket_rx.try_recv();
                        for out in outs {
                            if !sink(Some(out)) {
                                break 'outer;
                            }
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !sink(None) {
                        break;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        // Dropping the receivers makes the producer's and workers' sends fail, so they stop.
        drop(done_rx);
        drop(ticket_rx);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_with_uneven_work_and_stops_on_request() {
        let mut got = Vec::new();
        run_ordered(
            4,
            Duration::from_millis(50),
            |emit| {
                for i in 0..10_000u32 {
                    if !emit(i, u64::from(i % 7) << 20) {
                        return;
                    }
                }
            },
            |i, _buf| {
                // Uneven work: every 97th item is much slower, so results arrive out of order.
                let spins = if i % 97 == 0 { 200_000u32 } else { 10 };
                let noise = (0..spins).fold(0u32, |a, b| std::hint::black_box(a.wrapping_add(b)));
                (i, noise)
            },
            &mut |out| {
                if let Some((v, _)) = out {
                    got.push(v);
                }
                true
            },
        );
        assert_eq!(got, (0..10_000u32).collect::<Vec<_>>());
        let mut stopped = 0;
        run_ordered(
            2,
            Duration::from_millis(50),
            |emit| {
                for i in 0..1_000_000u32 {
                    if !emit(i, 1) {
                        return;
                    }
                }
            },
            |i, _| i,
            &mut |out| {
                stopped += usize::from(out.is_some());
                stopped < 100
            },
        );
        assert_eq!(stopped, 100);
    }
}
