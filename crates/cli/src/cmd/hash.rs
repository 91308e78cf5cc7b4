//! `basin hash`, `basin verify`, `basin copy`: argument parsing, output formats, progress and
//! exit codes around `basin_scan` (which does the walking, hashing and cataloguing).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use basin_hash::{parse_algo_list, AlgoSpec, Algorithm, ReadOptions, ReadStrategy, SumsFormat};
use basin_scan::catalog::{self, CatalogStore};
use basin_scan::failed::{self, FailedEntry};
use basin_scan::scan::{self, FileOutcome, ScanObserver, ScanProgress};
use basin_scan::verify::{self, Expected, Verdict, VerifyOptions, VerifyOutcome};
use basin_scan::{clock, Filters, ScanRoot};
use indicatif::ProgressBar;

use super::Global;
use crate::progress;

/// Which files a walk keeps.
#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// Skip hidden files and folders (names starting with '.').
    #[arg(long)]
    pub exclude_hidden: bool,
    /// Skip files smaller than this (bytes; K, M, G, T suffixes are powers of 1024).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub min_size: Option<u64>,
    /// Skip files larger than this.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_size: Option<u64>,
    /// Only files with these extensions (comma-separated, no dot).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub ext: Vec<String>,
    /// Skip files with these extensions.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub exclude_ext: Vec<String>,
    /// Only files modified at or after this time (YYYY-MM-DD, YYYY-MM-DDTHH:MM:SS[Z|+HH:MM], @unix).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub modified_since: Option<i64>,
    /// Only files modified before this time.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub modified_before: Option<i64>,
    /// Honour .gitignore, .ignore and .git/info/exclude files.
    #[arg(long)]
    pub gitignore: bool,
    /// Follow symbolic links (not followed by default).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Do not cross file-system boundaries.
    #[arg(long)]
    pub one_file_system: bool,
}

impl FilterArgs {
    fn to_filters(&self) -> Filters {
        let lower = |v: &[String]| {
            v.iter()
                .map(|e| e.trim_start_matches('.').to_lowercase())
                .filter(|e| !e.is_empty())
                .collect()
        };
        Filters {
            exclude_hidden: self.exclude_hidden,
            size_min_bytes: self.min_size,
            size_max_bytes: self.max_size,
            extensions_allow: lower(&self.ext),
            extensions_deny: lower(&self.exclude_ext),
            modified_since_ns: self.modified_since,
            modified_before_ns: self.modified_before,
            gitignore: self.gitignore,
            follow_symlinks: self.follow_symlinks,
            one_file_system: self.one_file_system,
        }
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("bad size {s:?}"))?;
    let shift = match unit
        .trim()
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("bad size unit in {s:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn parse_time(s: &str) -> Result<i64, String> {
    clock::parse_time_ns(s).ok_or_else(|| {
        format!("bad time {s:?}: use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or @unix-seconds")
    })
}

/// How digests are computed and where they go, shared by hash, verify and copy.
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// Algorithms, comma-separated (`md5,sha256,shake256:64,blake3:64`; `all` for every one).
    /// Default from the config (`hash.algorithms`), else sha256.
    #[arg(long, short = 'a', value_name = "LIST")]
    pub algo: Option<String>,
    /// Files hashed at once (default from the config, else one per core).
    #[arg(long, short = 'j', value_name = "N")]
    pub jobs: Option<usize>,
    /// Read files through mmap instead of read(2) (faster on some systems; a file truncated
    /// during the run then crashes the process, so it is off by default).
    #[arg(long)]
    pub mmap: bool,
}

#[derive(Debug, clap::Args)]
pub struct HashArgs {
    /// Files and folders to hash.
    #[arg(required_unless_present = "list_algorithms")]
    pub paths: Vec<PathBuf>,
    /// Print the supported algorithms and exit.
    #[arg(long)]
    pub list_algorithms: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Catalog to record results in: a SQLite file, or a postgres:// URL (`?schema=NAME` picks a schema).
    #[arg(long, short = 'c', value_name = "FILE|URL")]
    pub catalog: Option<String>,
    /// Print sums: gnu (`sha256sum -c` reads it), bsd, json, hashdeep (`hashdeep -a -k` reads it).
    /// Default: gnu for one algorithm, bsd for several; nothing when a catalog is given.
    #[arg(long, short = 'f', value_name = "FORMAT")]
    pub format: Option<String>,
    /// Write sums to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Hash files even if the catalog says they are unchanged (same size, mtime and inode).
    #[arg(long)]
    pub rehash: bool,
    /// Also hash the decompressed contents of .gz/.bz2/.xz/.zst files and the members of
    /// .zip/.tar(.gz/.bz2/.xz/.zst), recorded as `archive.zip!member/path`.
    #[arg(long)]
    pub inside_archives: bool,
    /// Write files that could not be hashed to this list (JSON lines); `--retry-failed` reads it.
    #[arg(long, value_name = "FILE")]
    pub failed_list: Option<PathBuf>,
    /// Hash only the files that failed last time (from --failed-list, else the catalog).
    #[arg(long)]
    pub retry_failed: bool,
    /// Catalog rows per transaction.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub filters: FilterArgs,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// With --catalog: the roots to verify (default: every root in the catalog). With --sums:
    /// the folder the sums file's relative paths start from (default: the current folder).
    pub paths: Vec<PathBuf>,
    /// Catalog written by `basin hash`.
    #[arg(long, short = 'c', value_name = "FILE|URL", conflicts_with = "sums")]
    pub catalog: Option<String>,
    /// A sums file: GNU (`sha256sum`), BSD tag, basin JSON lines or hashdeep.
    #[arg(long, value_name = "FILE")]
    pub sums: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Also check archive members recorded by `hash --inside-archives`.
    #[arg(long)]
    pub inside_archives: bool,
    /// Print files that verified fine too (default: only problems).
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub filters: FilterArgs,
}

#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// Sources, then the destination.
    #[arg(required = true, num_args = 2..)]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Catalog to record both the sources and the copies in.
    #[arg(long, short = 'c', value_name = "FILE|URL")]
    pub catalog: Option<String>,
    /// Fail a file instead of overwriting an existing destination.
    #[arg(long, short = 'n')]
    pub no_clobber: bool,
    /// Catalog rows per transaction.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub filters: FilterArgs,
}

/// Settings after config file, environment and flags (flags win).
struct Engine {
    specs: Vec<AlgoSpec>,
    jobs: usize,
    read: ReadOptions,
    catalog: Option<String>,
}

fn engine(args: &EngineArgs, catalog_flag: Option<&String>) -> anyhow::Result<Engine> {
    let config = basin_scan::config::Config::load(None).context("loading configuration")?;
    let algo_text = match &args.algo {
        Some(a) => a.clone(),
        None if config.hash.algorithms.is_empty() => "sha256".to_string(),
        None => config.hash.algorithms.join(","),
    };
    let specs = parse_algo_list(&algo_text)?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let jobs = args.jobs.or(config.hash.jobs).unwrap_or(cores).max(1);
    let read = ReadOptions {
        strategy: if args.mmap {
            ReadStrategy::Mmap
        } else {
            ReadStrategy::Buffered
        },
        lanes_max: cores,
        ..ReadOptions::default()
    };
    Ok(Engine {
        specs,
        jobs,
        read,
        catalog: catalog_flag.cloned().or(config.catalog),
    })
}

fn open_catalog(location: &Option<String>) -> anyhow::Result<Option<Box<dyn CatalogStore>>> {
    location
        .as_deref()
        .map(catalog::open)
        .transpose()
        .context("opening the catalog")
}

/// Borrows the catalog for one call (the trait object's lifetime shortened, which `Option` will not do by itself).
fn borrow(catalog: &mut Option<Box<dyn CatalogStore>>) -> Option<&mut dyn CatalogStore> {
    match catalog {
        Some(c) => Some(c.as_mut()),
        None => None,
    }
}

fn rate(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64().max(1e-9)
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn list_algorithms() -> ExitCode {
    println!("{:<12} {:>5}  {:<14} length", "algorithm", "bits", "kind");
    for a in Algorithm::ALL {
        let kind = if a.is_cryptographic() {
            "cryptographic"
        } else {
            "checksum"
        };
        let length = if a.is_xof() {
            format!("choose with {}:<bytes>", a.name())
        } else {
            "fixed".into()
        };
        println!(
            "{:<12} {:>5}  {:<14} {length}",
            a.name(),
            a.default_output_len_bytes() * 8,
            kind
        );
    }
    ExitCode::SUCCESS
}

/// Prints sums, errors, the failed list and progress as results arrive.
struct HashPrinter<'a> {
    format: Option<SumsFormat>,
    out: &'a mut dyn Write,
    failed_out: Option<&'a mut BufWriter<File>>,
    failed: &'a mut Vec<String>,
    bar: &'a ProgressBar,
    started: Instant,
    done_before: (u64, u64),
    last_message: Instant,
}

impl ScanObserver for HashPrinter<'_> {
    fn file_done(&mut self, root: &ScanRoot, outcome: &FileOutcome) -> io::Result<()> {
        // hashdeep writes and audits absolute paths (unless -l); so do we in its format.
        let absolute = self.format == Some(SumsFormat::Hashdeep);
        let show = |rel: &str| {
            if absolute {
                root.abs_path(rel).to_string_lossy().into_owned()
            } else {
                root.display_path(rel)
            }
        };
        let shown = show(&outcome.rel_path);
        let mut record_failure = |rel_path: &str, shown: &str, message: &str| -> io::Result<()> {
            self.bar.suspend(|| eprintln!("basin: {shown}: {message}"));
            self.failed.push(shown.to_string());
            if let Some(out) = self.failed_out.as_deref_mut() {
                failed::write_entry(
                    out,
                    &FailedEntry {
                        root: root.key(),
                        path: rel_path.to_string(),
                        error: message.to_string(),
                    },
                )?;
            }
            Ok(())
        };
        match &outcome.result {
            Ok(digests) => {
                if let Some(format) = self.format {
                    self.out.write_all(
                        format
                            .format_entry(&shown, outcome.meta.size_bytes, digests)
                            .as_bytes(),
                    )?;
                }
            }
            Err(message) => record_failure(&outcome.rel_path, &shown, message)?,
        }
        for m in &outcome.members {
            let member_shown = show(&m.rel_path);
            match &m.result {
                Ok(digests) => {
                    if let Some(format) = self.format {
                        self.out.write_all(
                            format
                                .format_entry(&member_shown, m.size_bytes, digests)
                                .as_bytes(),
                        )?;
                    }
                }
                Err(message) => record_failure(&m.rel_path, &member_shown, message)?,
            }
        }
        Ok(())
    }

    fn progress(&mut self, p: &ScanProgress) {
        self.bar.set_length(self.done_before.1 + p.bytes_discovered);
        self.bar
            .set_position(self.done_before.1 + p.bytes_done + p.bytes_skipped);
        if self.last_message.elapsed() >= Duration::from_millis(200) {
            self.last_message = Instant::now();
            let files = self.done_before.0 + p.files_done + p.files_skipped;
            let total = if p.walk_finished {
                format!("/{}", self.done_before.0 + p.files_discovered)
            } else {
                String::new()
            };
            self.bar.set_message(format!(
                "{files}{total} files ({:.0} files/s)",
                rate(files as f64, self.started.elapsed())
            ));
        }
    }
}

pub fn run_hash(a: HashArgs, g: &Global) -> anyhow::Result<ExitCode> {
    if a.list_algorithms {
        return Ok(list_algorithms());
    }
    let started = Instant::now();
    let e = engine(&a.engine, a.catalog.as_ref())?;
    let format = match (&a.format, g.json, &e.catalog) {
        (Some(f), _, _) => Some(f.parse::<SumsFormat>()?),
        (None, true, _) => Some(SumsFormat::Json),
        (None, false, Some(_)) => None,
        (None, false, None) if e.specs.len() == 1 => Some(SumsFormat::Gnu),
        (None, false, None) => Some(SumsFormat::Bsd),
    };
    if let Some(format) = format {
        format.check_algorithms(&e.specs)?;
    }
    let mut catalog = open_catalog(&e.catalog)?;
    if a.retry_failed && a.failed_list.is_none() && catalog.is_none() {
        bail!("--retry-failed needs --failed-list FILE or --catalog to know what failed");
    }
    let roots: Vec<ScanRoot> = a
        .paths
        .iter()
        .map(|p| ScanRoot::resolve(p))
        .collect::<Result<_, _>>()?;
    // Read the old failed list before this run truncates it.
    let previous_failures = match (&a.failed_list, a.retry_failed) {
        (Some(path), true) => {
            Some(failed::read_list(path).with_context(|| format!("reading {}", path.display()))?)
        }
        _ => None,
    };
    let mut failed_out = match &a.failed_list {
        Some(path) => Some(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let stdout = io::stdout();
    let mut out: Box<dyn Write> = match &a.output {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(BufWriter::with_capacity(256 * 1024, stdout.lock())),
    };
    if let Some(format) = format {
        let cwd = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
        let command: Vec<String> = std::env::args().collect();
        out.write_all(format.header(&e.specs, &cwd, &command.join(" ")).as_bytes())?;
    }
    let bar = progress::bytes_bar(g.quiet);
    let mut failures: Vec<String> = Vec::new();
    let mut totals = basin_scan::catalog::RunCounters::default();
    let mut members = 0u64;
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let mut done_before = (0u64, 0u64);
    for root in &roots {
        let mut options = scan::ScanOptions::new(e.specs.clone());
        options.jobs = e.jobs;
        options.read = e.read;
        options.filters = a.filters.to_filters();
        options.rehash = a.rehash;
        options.batch_rows = a.batch_rows.max(1);
        options.inside_archives = a.inside_archives;
        options.command = command_line.clone();
        if a.retry_failed {
            let paths = match (&previous_failures, borrow(&mut catalog)) {
                (Some(list), _) => list
                    .iter()
                    .filter(|f| f.root == root.key())
                    .map(|f| f.path.clone())
                    .collect(),
                (None, Some(c)) => {
                    let id = c.root_id(&root.key())?;
                    c.failed_paths(id)?
                }
                (None, None) => Vec::new(),
            };
            // Archive member failures are retried by re-reading their archive.
            let mut paths: Vec<String> = paths
                .into_iter()
                .map(|p| p.split('!').next().unwrap_or_default().to_string())
                .collect();
            paths.dedup();
            options.only_paths = Some(paths);
        }
        let mut printer = HashPrinter {
            format,
            out: &mut out,
            failed_out: failed_out.as_mut(),
            failed: &mut failures,
            bar: &bar,
            started,
            done_before,
            last_message: Instant::now() - Duration::from_secs(1),
        };
        let summary = scan::scan(root, borrow(&mut catalog), &options, &mut printer)?;
        totals.files_hashed += summary.counters.files_hashed;
        totals.files_skipped += summary.counters.files_skipped;
        totals.files_failed += summary.counters.files_failed + summary.walk_errors;
        totals.bytes_hashed += summary.counters.bytes_hashed;
        members += summary.members_hashed;
        done_before = (bar.position(), bar.length().unwrap_or(0));
        done_before = (
            totals.files_hashed + totals.files_skipped + totals.files_failed,
            done_before.1,
        );
    }
    out.flush()?;
    if let Some(f) = failed_out.as_mut() {
        f.flush()?;
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let mut line = format!(
        "hash: {} files hashed ({:.1} MB, {:.0} MB/s, {:.0} files/s), {} unchanged, {} failed",
        totals.files_hashed,
        mb(totals.bytes_hashed),
        rate(mb(totals.bytes_hashed), elapsed),
        rate(totals.files_hashed as f64, elapsed),
        totals.files_skipped,
        totals.files_failed
    );
    if a.inside_archives {
        line.push_str(&format!(", {members} archive members"));
    }
    line.push_str(&format!(" in {:.2}s", elapsed.as_secs_f64()));
    if totals.files_failed > 0 {
        if let Some(path) = &a.failed_list {
            line.push_str(&format!("; failed files listed in {}", path.display()));
        }
    }
    eprintln!("{line}");
    Ok(if totals.files_failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn verdict_line(shown: &str, verdict: &Verdict) -> String {
    match verdict {
        Verdict::Ok => format!("OK {shown}"),
        Verdict::Changed { reason } => format!("CHANGED {shown} ({reason})"),
        Verdict::Missing => format!("MISSING {shown}"),
        Verdict::New => format!("NEW {shown}"),
        Verdict::Unreadable { reason } => format!("UNREADABLE {shown}: {reason}"),
    }
}

fn verdict_json(shown: &str, verdict: &Verdict) -> String {
    let (status, reason) = match verdict {
        Verdict::Ok => ("ok", None),
        Verdict::Changed { reason } => ("changed", Some(reason.as_str())),
        Verdict::Missing => ("missing", None),
        Verdict::New => ("new", None),
        Verdict::Unreadable { reason } => ("unreadable", Some(reason.as_str())),
    };
    let mut object = serde_json::json!({ "path": shown, "status": status });
    if let Some(reason) = reason {
        object["reason"] = reason.into();
    }
    object.to_string()
}

pub fn run_verify(a: VerifyArgs, g: &Global) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let e = engine(&a.engine, a.catalog.as_ref())?;
    let options = VerifyOptions {
        jobs: e.jobs,
        read: e.read,
        filters: a.filters.to_filters(),
        walk_for_new: a.sums.is_none(),
        inside_archives: a.inside_archives,
    };
    let mut jobs: Vec<(ScanRoot, Vec<Expected>)> = Vec::new();
    if let Some(sums) = &a.sums {
        let text =
            std::fs::read_to_string(sums).with_context(|| format!("reading {}", sums.display()))?;
        let gnu_algorithm = match &a.engine.algo {
            Some(list) => match parse_algo_list(list)?.as_slice() {
                [one] => Some(*one),
                _ => bail!("--algo with --sums names the one algorithm of a GNU sums file"),
            },
            None => None,
        };
        let entries = basin_hash::parse_sums(&text, gnu_algorithm)
            .with_context(|| format!("reading {}", sums.display()))?;
        let base = match a.paths.as_slice() {
            [] => PathBuf::from("."),
            [one] => one.clone(),
            _ => bail!(
                "with --sums, give at most one folder (where the sums file's relative paths start)"
            ),
        };
        let dir =
            std::fs::canonicalize(&base).with_context(|| format!("opening {}", base.display()))?;
        let root = ScanRoot {
            dir,
            only: None,
            given: base,
        };
        let expected = entries
            .into_iter()
            .map(|s| Expected {
                rel_path: s.path,
                size_bytes: s.size_bytes,
                digests: s.digests,
            })
            .collect();
        jobs.push((root, expected));
    } else {
        let Some(mut catalog) = open_catalog(&e.catalog)? else {
            bail!("basin verify needs --catalog FILE|URL or --sums FILE");
        };
        let roots = catalog.roots()?;
        let wanted: Vec<(i64, ScanRoot)> = if a.paths.is_empty() {
            roots
                .iter()
                .map(|(id, path)| {
                    (
                        *id,
                        ScanRoot {
                            dir: PathBuf::from(path),
                            only: None,
                            given: PathBuf::from(path),
                        },
                    )
                })
                .collect()
        } else {
            let mut wanted = Vec::new();
            for p in &a.paths {
                let root = ScanRoot::resolve(p)?;
                let Some((id, _)) = roots.iter().find(|(_, path)| *path == root.key()) else {
                    let known: Vec<&str> = roots.iter().map(|(_, p)| p.as_str()).collect();
                    bail!(
                        "{} is not a root in {} (roots: {})",
                        p.display(),
                        catalog.location(),
                        known.join(", ")
                    );
                };
                wanted.push((*id, root));
            }
            wanted
        };
        for (id, root) in wanted {
            let rows = catalog.stored_rows(id)?;
            let expected = rows
                .into_iter()
                .filter(|r| r.error.is_none())
                .map(|r| Expected {
                    rel_path: r.rel_path,
                    size_bytes: Some(r.size_bytes),
                    digests: r.digests,
                })
                .collect();
            jobs.push((root, expected));
        }
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut totals = verify::VerifyCounts::default();
    let mut write_error: Option<io::Error> = None;
    for (root, expected) in jobs {
        let mut report = |o: &VerifyOutcome| {
            if o.verdict == Verdict::Ok && !a.verbose {
                return;
            }
            let shown = root.display_path(&o.rel_path);
            let line = if g.json {
                verdict_json(&shown, &o.verdict)
            } else {
                verdict_line(&shown, &o.verdict)
            };
            if let Err(err) = writeln!(out, "{line}") {
                write_error.get_or_insert(err);
            }
        };
        let counts = verify::verify(&root, expected, &options, &mut report);
        totals.ok += counts.ok;
        totals.changed += counts.changed;
        totals.missing += counts.missing;
        totals.new += counts.new;
        totals.unreadable += counts.unreadable;
        totals.bytes_hashed += counts.bytes_hashed;
    }
    out.flush()?;
    if let Some(err) = write_error {
        return Err(err).context("writing the report");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "verify: {} ok, {} changed, {} missing, {} new, {} unreadable ({:.1} MB in {:.2}s, {:.0} MB/s)",
        totals.ok,
        totals.changed,
        totals.missing,
        totals.new,
        totals.unreadable,
        mb(totals.bytes_hashed),
        elapsed.as_secs_f64(),
        rate(mb(totals.bytes_hashed), elapsed)
    );
    Ok(if totals.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn run_copy(a: CopyArgs, g: &Global) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let e = engine(&a.engine, a.catalog.as_ref())?;
    let (dest, sources) = a.paths.split_last().context("copy needs SRC... DEST")?;
    let dest_is_dir = dest.is_dir();
    if sources.len() > 1 && dest.exists() && !dest_is_dir {
        bail!(
            "{} is not a folder; several sources need a folder to copy into",
            dest.display()
        );
    }
    let mut catalog = open_catalog(&e.catalog)?;
    let options = basin_scan::copy::CopyOptions {
        specs: e.specs.clone(),
        jobs: e.jobs,
        read: e.read,
        filters: a.filters.to_filters(),
        no_clobber: a.no_clobber,
        batch_rows: a.batch_rows.max(1),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let mut totals = basin_scan::catalog::RunCounters::default();
    for source in sources {
        let root = ScanRoot::resolve(source)?;
        let base = || -> anyhow::Result<String> {
            let name = root
                .dir
                .file_name()
                .context("cannot copy the file-system root")?;
            Ok(name.to_string_lossy().into_owned())
        };
        // Like cp -r: into DEST/<name> when DEST is a folder or there are several sources.
        let into_dir = dest_is_dir || sources.len() > 1;
        let (dest_dir, dest_name): (PathBuf, Option<String>) = match (&root.only, into_dir) {
            (None, true) => (dest.join(base()?), None),
            (None, false) => (dest.clone(), None),
            (Some(only), true) => (dest.clone(), Some(only.clone())),
            (Some(_), false) => {
                let parent = dest
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let name = dest
                    .file_name()
                    .context("destination has no file name")?
                    .to_string_lossy()
                    .into_owned();
                (parent.to_path_buf(), Some(name))
            }
        };
        let bar = progress::bar(0, "copy", g.quiet);
        let mut report = |o: &basin_scan::copy::CopyOutcome| {
            bar.inc(1);
            if let Err(message) = &o.result {
                bar.suspend(|| eprintln!("basin: {}: {message}", root.display_path(&o.rel_path)));
            }
        };
        let counters = basin_scan::copy::copy_tree(
            &root,
            &dest_dir,
            dest_name.as_deref(),
            borrow(&mut catalog),
            &options,
            &mut report,
        )?;
        bar.finish_and_clear();
        totals.files_hashed += counters.files_hashed;
        totals.files_failed += counters.files_failed;
        totals.bytes_hashed += counters.bytes_hashed;
    }
    let elapsed = started.elapsed();
    eprintln!(
        "copy: {} files ({:.1} MB) copied and verified, {} failed in {:.2}s ({:.0} MB/s)",
        totals.files_hashed,
        mb(totals.bytes_hashed),
        totals.files_failed,
        elapsed.as_secs_f64(),
        rate(mb(totals.bytes_hashed), elapsed)
    );
    Ok(if totals.files_failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
