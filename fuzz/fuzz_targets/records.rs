//! Fuzz target for the pack-format parsers (`basin_store::format`): record headers, whole
//! records, frame tables, tombstones, pack headers, sealed footers and tables.
//!
//! The first input byte picks what the rest is fed to (a record, a pack header, a whole pack, a
//! frame-table payload); the oracle is shared with the in-tree test `crates/store/tests/
//! fuzz_records.rs`: parsers return Ok or Err, never panic, and whatever they accept re-encodes
//! to the same bytes. Seed corpus: `fuzz/corpus/records/` (the test corpus with the selector
//! byte prepended). Run: `cargo +nightly fuzz run records`.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Helpers the in-tree test uses but this target does not.
#[allow(dead_code)]
#[path = "../../crates/store/tests/common/parsers.rs"]
mod parsers;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let target = parsers::Target::ALL[usize::from(selector) % parsers::Target::ALL.len()];
    if let Err(finding) = parsers::check(target, input) {
        panic!("{target:?}: {finding}");
    }
});
