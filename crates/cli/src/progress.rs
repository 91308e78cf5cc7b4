//! Progress bars drawn from library progress hooks; silent when stderr is not a terminal.

use std::io::IsTerminal;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Bars are drawn only for a person watching: stderr is a terminal and `--quiet` was not given.
pub fn bars_visible(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

/// A bar on stderr when it is a terminal and not `--quiet`; hidden otherwise.
pub fn bar(total: u64, message: &str, quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(total);
    if !bars_visible(quiet) {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb.set_message(message.to_string());
    pb
}

/// Draws the phases of one long store operation (`basin_store::Progress`) as indicatif bars,
/// one line per phase. When bars are not visible every hook returns at once, so operations that
/// report per object pay nothing.
pub struct StoreProgress {
    /// `None` when hidden. The bar is replaced at each phase start; the mutex is uncontended in
    /// practice (one `inc` per object or per buffer) and keeps `start` and `advance` coherent.
    bar: Option<Mutex<ProgressBar>>,
}

impl StoreProgress {
    pub fn new(quiet: bool) -> StoreProgress {
        let bar = bars_visible(quiet).then(|| Mutex::new(ProgressBar::hidden()));
        StoreProgress { bar }
    }

    fn lock(bar: &Mutex<ProgressBar>) -> MutexGuard<'_, ProgressBar> {
        // A panic while drawing must not stop the operation; the bar is only decoration.
        bar.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn style_for(total: Option<u64>, unit: basin_store::Unit) -> ProgressStyle {
    let counts = match unit {
        basin_store::Unit::Bytes => "{bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        basin_store::Unit::Objects => "{human_pos}/{human_len} objects ({rate}, eta {eta})",
        basin_store::Unit::Packs => "{human_pos}/{human_len} packs ({rate}, eta {eta})",
    };
    let template = match (total, unit) {
        (Some(_), _) => format!("{{msg:14}} [{{elapsed_precise}}] {{wide_bar}} {counts}"),
        (None, basin_store::Unit::Bytes) => {
            "{spinner} {msg:14} [{elapsed_precise}] {bytes} ({bytes_per_sec})".into()
        }
        (None, basin_store::Unit::Objects) => {
            "{spinner} {msg:14} [{elapsed_precise}] {human_pos} objects ({rate})".into()
        }
        (None, basin_store::Unit::Packs) => {
            "{spinner} {msg:14} [{elapsed_precise}] {human_pos} packs ({rate})".into()
        }
    };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        // Whole units per second: indicatif's `{per_sec}` prints four decimals.
        .with_key(
            "rate",
            |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}/s", state.per_sec());
            },
        )
}

impl basin_store::Progress for StoreProgress {
    fn start(&self, phase: &str, total: Option<u64>, unit: basin_store::Unit) {
        let Some(bar) = &self.bar else { return };
        let pb = match total {
            Some(total) => ProgressBar::new(total),
            None => {
                let pb = ProgressBar::new_spinner();
                pb.enable_steady_tick(Duration::from_millis(120));
                pb
            }
        };
        pb.set_style(style_for(total, unit));
        pb.set_message(phase.to_string());
        let previous = std::mem::replace(&mut *Self::lock(bar), pb);
        if !previous.is_finished() {
            previous.finish();
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            Self::lock(bar).inc(n);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            Self::lock(bar).finish();
        }
    }
}

impl Drop for StoreProgress {
    fn drop(&mut self) {
        // An operation that failed mid-phase leaves its bar where it stopped, so the error
        // printed next reads as the end of that line of work.
        if let Some(bar) = &self.bar {
            let pb = Self::lock(bar);
            if !pb.is_finished() {
                pb.abandon();
            }
        }
    }
}

/// A byte-counting bar (MB/s and ETA from bytes) whose message the caller keeps updated with
/// file counts; hidden when stderr is not a terminal or with `--quiet`.
pub fn bytes_bar(quiet: bool) -> ProgressBar {
    let pb = ProgressBar::new(0);
    if quiet || !std::io::stderr().is_terminal() {
        pb.set_draw_target(ProgressDrawTarget::hidden());
    }
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}
