//! `basin download`: fetch URLs to a folder while hashing them. The work is
//! `basin_scan::download`; this module parses arguments, prints and picks the exit code.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use basin_hash::SumsFormat;
use basin_scan::config::LoadedConfig;
use basin_scan::download::{
    plan, DownloadOptions, DownloadOutcome, Downloader, FailureReport, Layout,
};

use super::Global;

/// Download URLs to disk while hashing them.
///
/// Each body is streamed to `<name>.part`, fsynced and renamed when complete; an interrupted
/// download resumes from its `.part` file where the server supports ranges. Digests are printed
/// as sums lines (GNU for one algorithm, BSD-tagged for several) or, with `--json`, one object
/// per URL. Exit status: 0 when every URL was downloaded or skipped, 1 when any failed.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// URLs to fetch (http or https).
    #[arg(value_name = "URL")]
    pub urls: Vec<String>,
    /// Also read URLs from FILE, one per line; blank lines and `#` comments are ignored; `-` is stdin.
    #[arg(long, value_name = "FILE")]
    pub from: Option<PathBuf>,
    /// Folder to save into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dest: PathBuf,
    /// Save the single URL under this name (a relative path inside DEST).
    #[arg(long, short = 'o', value_name = "NAME")]
    pub output: Option<String>,
    /// Save as DEST/<host>/<path...> instead of DEST/<last path segment>.
    #[arg(long)]
    pub tree: bool,
    /// Algorithms, comma-separated (default: config `hash.algorithms`).
    #[arg(long, short = 'a', value_name = "LIST")]
    pub algo: Option<String>,
    /// Leave existing files alone and report them as skipped.
    #[arg(long)]
    pub no_clobber: bool,
    /// Go on after a failed URL and write a JSON report of every failure.
    #[arg(long)]
    pub skip_failures: bool,
    /// Where the failure report goes (default: DEST/download-failures.json with --skip-failures).
    #[arg(long, value_name = "FILE")]
    pub failure_report: Option<PathBuf>,
    /// Retries per URL after the first attempt (default: config `download.retries_max`).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// User-Agent header (default: config `download.user_agent`, `basin/<version>`).
    #[arg(long, value_name = "TEXT")]
    pub user_agent: Option<String>,
    /// Read this config file instead of searching for basin.toml.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: DownloadArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let mut loaded = LoadedConfig::load(args.config.as_deref())?;
    if let Some(algo) = &args.algo {
        loaded.set("hash.algorithms", algo)?;
    }
    if let Some(retries) = args.retries {
        loaded.set("download.retries_max", &retries.to_string())?;
    }
    if let Some(agent) = &args.user_agent {
        loaded.set("download.user_agent", agent)?;
    }
    let config = loaded.config;
    let algorithms = basin_hash::parse_algo_list(&config.hash.algorithms.join(","))?;

    let mut urls = args.urls.clone();
    if let Some(from) = &args.from {
        urls.extend(read_url_list(from)?);
    }
    if urls.is_empty() {
        bail!("no URLs given (pass URLs or --from FILE)");
    }
    if args.output.is_some() && urls.len() != 1 {
        bail!(
            "--output names one file, but {} URLs were given",
            urls.len()
        );
    }
    std::fs::create_dir_all(&args.dest)
        .with_context(|| format!("creating {}", args.dest.display()))?;

    let mut options = DownloadOptions::from_config(&config.download, algorithms.clone());
    options.no_clobber = args.no_clobber;
    let downloader = Downloader::new(options);
    let layout = if args.tree {
        Layout::HostPath
    } else {
        Layout::Flat
    };
    let jobs = plan(&urls, &args.dest, args.output.as_deref(), layout);

    // One bar, reused per URL, in bytes; hidden unless stderr is a terminal.
    let bar = crate::progress::bar(0, "download", global.quiet);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24!} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let sums_format = if algorithms.len() == 1 {
        SumsFormat::Gnu
    } else {
        SumsFormat::Bsd
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut print_error = None;
    let mut current: Option<PathBuf> = None;
    let outcomes = downloader.download_all(
        jobs,
        args.skip_failures,
        &mut |job, bytes, total| {
            if current.as_deref() != Some(job.destination.as_path()) {
                current = Some(job.destination.clone());
                bar.reset();
                bar.set_message(
                    job.destination
                        .file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
            bar.set_length(total.unwrap_or(bytes));
            bar.set_position(bytes);
        },
        &mut |outcome| {
            // Lines go out while the bar is lifted, so they never interleave with its redraws.
            let printed = bar.suspend(|| {
                if global.json {
                    writeln!(out, "{}", outcome_json(outcome))
                } else {
                    print_outcome(&mut out, outcome, sums_format, global.quiet)
                }
                .and_then(|()| out.flush())
            });
            if let Err(e) = printed {
                print_error.get_or_insert(e);
            }
        },
    );
    bar.finish_and_clear();
    if let Some(e) = print_error {
        return Err(e).context("writing output");
    }

    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            DownloadOutcome::Failed(f) => Some(f),
            _ => None,
        })
        .collect();
    let report_path = match (&args.failure_report, args.skip_failures) {
        (Some(path), _) => Some(path.clone()),
        (None, true) => Some(args.dest.join("download-failures.json")),
        (None, false) => None,
    };
    if let Some(path) = &report_path {
        FailureReport::new(outcomes.len(), failures.iter().copied()).write(path)?;
    }
    if !global.quiet {
        let downloaded = outcomes
            .iter()
            .filter(|o| matches!(o, DownloadOutcome::Downloaded(_)))
            .count();
        let skipped = outcomes
            .iter()
            .filter(|o| matches!(o, DownloadOutcome::Skipped { .. }))
            .count();
        let not_tried = urls.len() - outcomes.len();
        let mut summary = format!(
            "basin download: {downloaded} downloaded, {skipped} skipped, {} failed",
            failures.len()
        );
        if not_tried > 0 {
            summary.push_str(&format!(
                ", {not_tried} not tried (use --skip-failures to go on)"
            ));
        }
        if let (Some(path), false) = (&report_path, failures.is_empty()) {
            summary.push_str(&format!("; failures in {}", path.display()));
        }
        eprintln!("{summary}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_outcome(
    out: &mut impl Write,
    outcome: &DownloadOutcome,
    format: SumsFormat,
    quiet: bool,
) -> std::io::Result<()> {
    match outcome {
        DownloadOutcome::Downloaded(d) => out.write_all(
            format
                .format_entry(&d.path.to_string_lossy(), d.size, &d.digests)
                .as_bytes(),
        ),
        DownloadOutcome::Skipped { path, .. } => {
            if !quiet {
                eprintln!("skipped {} (exists; --no-clobber)", path.display());
            }
            Ok(())
        }
        DownloadOutcome::Failed(f) => {
            // Failures are always reported, even with --quiet: they change the exit status.
            eprintln!("failed after {} attempt(s): {}", f.attempts, f.error);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn outcome_json(outcome: &DownloadOutcome) -> serde_json::Value {
    match outcome {
        DownloadOutcome::Downloaded(d) => {
            let digests: serde_json::Map<String, serde_json::Value> = d
                .digests
                .iter()
                .map(|x| (x.spec.to_string(), x.to_hex().into()))
                .collect();
            serde_json::json!({
                "status": "downloaded",
                "url": d.url,
                "path": d.path.to_string_lossy(),
                "size": d.size,
                "attempts": d.attempts,
                "resumed_from_bytes": d.resumed_from_bytes,
                "digests": digests,
            })
        }
        DownloadOutcome::Skipped { url, path } => serde_json::json!({
            "status": "skipped",
            "url": url,
            "path": path.to_string_lossy(),
            "reason": "exists",
        }),
        DownloadOutcome::Failed(f) => serde_json::json!({
            "status": "failed",
            "url": f.url,
            "path": f.path.as_ref().map(|p| p.to_string_lossy()),
            "kind": f.error.kind(),
            "http_status": f.error.status(),
            "error": f.error.to_string(),
            "attempts": f.attempts,
        }),
        other => serde_json::json!({ "status": "unknown", "url": other.url() }),
    }
}

/// The longest URL list read from a file; beyond it the file is surely not a URL list.
const URL_LIST_BYTES_MAX: u64 = 64 << 20;

fn read_url_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::Read::take(
            std::io::stdin(),
            URL_LIST_BYTES_MAX,
        )))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(std::io::Read::take(
            file,
            URL_LIST_BYTES_MAX,
        )))
    };
    let mut urls = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let line = line.trim();
        if !line.is_empty() && !line.starts_with('#') {
            urls.push(line.to_string());
        }
    }
    Ok(urls)
}
