//! Progress hooks for long operations. The library reports; callers (the CLI) draw.

/// Receives progress of one long operation. Calls come from the operation's own threads, so an
/// implementation must be cheap and thread-safe.
pub trait Progress: Sync {
    /// A phase starts: `total` units (objects or bytes, as `unit` says), when known.
    fn start(&self, phase: &str, total: Option<u64>, unit: Unit);
    /// `n` more units of the current phase are done.
    fn advance(&self, n: u64);
    /// The current phase ended.
    fn finish(&self);
}

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Objects,
    Bytes,
    Packs,
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: Option<u64>, _unit: Unit) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
