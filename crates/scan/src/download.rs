//! Downloading URLs to disk while hashing them, with retries and resume.
//!
//! A [`Downloader`] fetches each [`DownloadJob`] with a blocking HTTP client (ureq; no async
//! runtime) and streams the body into `<destination>.part` while feeding a [`MultiHasher`]; only a
//! complete body is fsynced and renamed to its final name, so a file with the final name is never
//! partial. Each URL ends in one [`DownloadOutcome`]: downloaded (size, digests), skipped
//! (`no_clobber` and the file exists) or failed (the last error and the attempt count).
//!
//! Retries: connect errors, timeouts, broken or truncated bodies, 5xx, 408 and 429 are retried up
//! to `retries_max` times with exponential backoff and jitter ([`backoff_delay`]); a `Retry-After`
//! is honoured up to `backoff_max`. Other 4xx answers are final at once.
//!
//! Resume: when a `.part` file exists (left by an interrupted run, or by a body that broke off in
//! this run), the request asks for the rest with `Range: bytes=<len>-`. A `206` whose
//! `Content-Range` starts exactly there is appended (the digests cover the old bytes too, re-read
//! from the part file); a `200` means the server ignores ranges, and the file restarts from zero.
//! A body shorter than its `Content-Length` is never a success. The part file stays under an
//! exclusive OS lock for the whole download, so two runs never write into one file
//! ([`DownloadError::PartLocked`]).
//!
//! Destinations never escape the destination folder: names come from URL path segments that are
//! percent-decoded and sanitised ([`destination_for`]), or from a user-given name that must be a
//! plain relative path ([`confine_relative`]).
//!
//! Deliberately absent: parallel transfers, cookies, authentication, proxies from the environment,
//! transparent decompression (bytes are hashed as the server sends them).

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use basin_hash::{AlgoSpec, Digest, MultiHasher};
use serde::Serialize;

use crate::config::DownloadConfig;

/// Settings of a [`Downloader`]. Build it from the configuration with [`DownloadOptions::from_config`].
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Digests computed over each downloaded body.
    pub algorithms: Vec<AlgoSpec>,
    pub user_agent: String,
    /// Retries after the first attempt.
    pub retries_max: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub connect_timeout: Duration,
    /// The longest silence while waiting for bytes (per read).
    pub read_timeout: Duration,
    pub response_bytes_max: Option<u64>,
    /// Leave existing destination files alone and report them as skipped.
    pub no_clobber: bool,
    /// Redirects followed per request.
    pub redirects_max: u32,
}

impl DownloadOptions {
    pub fn from_config(config: &DownloadConfig, algorithms: Vec<AlgoSpec>) -> DownloadOptions {
        DownloadOptions {
            algorithms,
            user_agent: config.user_agent.clone(),
            retries_max: config.retries_max,
            backoff_initial: Duration::from_millis(config.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.backoff_max_ms),
            connect_timeout: Duration::from_secs(config.connect_timeout_secs),
            read_timeout: Duration::from_secs(config.read_timeout_secs),
            response_bytes_max: config.response_bytes_max,
            no_clobber: false,
            redirects_max: 10,
        }
    }
}

/// One URL and the file it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadJob {
    pub url: String,
    pub destination: PathBuf,
}

/// How destination names are made from URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Layout {
    /// `DEST/<last path segment>` (`index.html` when the path ends in `/`).
    #[default]
    Flat,
    /// `DEST/<host>[_<port>]/<path segments...>`, which keeps URLs with equal file names apart.
    HostPath,
}

/// Errors of one download, or of naming its destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    #[error("invalid URL `{url}`: {message}")]
    InvalidUrl { url: String, message: String },
    #[error("unsupported URL scheme `{scheme}` in {url} (only http and https)")]
    UnsupportedScheme { url: String, scheme: String },
    #[error("invalid destination name `{name}`: {message}")]
    InvalidDestination { name: String, message: String },
    #[error("destination {path} is already used by {other_url} in this run")]
    DestinationCollision { path: PathBuf, other_url: String },
    #[error("{url}: server answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("{url}: {kind}: {message}")]
    Transport {
        url: String,
        kind: TransportKind,
        message: String,
    },
    #[error("{url}: body ended after {received_bytes} of {expected_bytes} bytes")]
    Truncated {
        url: String,
        expected_bytes: u64,
        received_bytes: u64,
    },
    #[error("{url}: response is larger than the limit of {limit_bytes} bytes")]
    TooLarge { url: String, limit_bytes: u64 },
    #[error("{url}: asked for bytes from {expected_start}, got Content-Range `{content_range}`")]
    BadContentRange {
        url: String,
        expected_start: u64,
        content_range: String,
    },
    #[error("{path} is locked: another download is writing it")]
    PartLocked { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The family of a network failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TransportKind {
    Dns,
    Connect,
    Timeout,
    /// The connection broke while sending or receiving.
    Io,
    TooManyRedirects,
    /// The server's answer was not valid HTTP.
    Protocol,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Dns => "name resolution failed",
            TransportKind::Connect => "connection failed",
            TransportKind::Timeout => "timed out",
            TransportKind::Io => "connection broken",
            TransportKind::TooManyRedirects => "too many redirects",
            TransportKind::Protocol => "invalid HTTP response",
        })
    }
}

impl DownloadError {
    /// Whether another attempt may succeed: network trouble, 5xx, 408, 429 and short bodies.
    pub fn is_retryable(&self) -> bool {
        match self {
            DownloadError::HttpStatus { status, .. } => {
                *status >= 500 || *status == 408 || *status == 429
            }
            DownloadError::Transport { kind, .. } => *kind != TransportKind::TooManyRedirects,
            DownloadError::Truncated { .. } | DownloadError::BadContentRange { .. } => true,
            _ => false,
        }
    }

    /// The HTTP status, when the failure was the server's answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            DownloadError::HttpStatus { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A stable one-word kind for reports: `http_status`, `timeout`, `truncated`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            DownloadError::InvalidUrl { .. } => "invalid_url",
            DownloadError::UnsupportedScheme { .. } => "unsupported_scheme",
            DownloadError::InvalidDestination { .. } => "invalid_destination",
            DownloadError::DestinationCollision { .. } => "destination_collision",
            DownloadError::HttpStatus { .. } => "http_status",
            DownloadError::Transport { kind, .. } => match kind {
                TransportKind::Dns => "dns",
                TransportKind::Connect => "connect",
                TransportKind::Timeout => "timeout",
                TransportKind::Io => "connection_broken",
                TransportKind::TooManyRedirects => "too_many_redirects",
                TransportKind::Protocol => "protocol",
            },
            DownloadError::Truncated { .. } => "truncated",
            DownloadError::TooLarge { .. } => "too_large",
            DownloadError::BadContentRange { .. } => "bad_content_range",
            DownloadError::PartLocked { .. } => "part_locked",
            DownloadError::Io { .. } => "local_io",
        }
    }
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub url: String,
    pub path: PathBuf,
    pub size: u64,
    /// One per [`DownloadOptions::algorithms`], over the whole file.
    pub digests: Vec<Digest>,
    pub attempts: u32,
    /// Bytes that were already on disk in a `.part` file and kept (0 when downloaded whole).
    pub resumed_from_bytes: u64,
}

/// A URL that could not be downloaded.
#[derive(Debug)]
pub struct DownloadFailure {
    pub url: String,
    pub path: Option<PathBuf>,
    pub attempts: u32,
    pub error: DownloadError,
}

/// What became of one URL.
#[derive(Debug)]
#[non_exhaustive]
pub enum DownloadOutcome {
    Downloaded(Downloaded),
    /// `no_clobber` and the destination existed.
    Skipped {
        url: String,
        path: PathBuf,
    },
    Failed(DownloadFailure),
}

impl DownloadOutcome {
    pub fn url(&self) -> &str {
        match self {
            DownloadOutcome::Downloaded(d) => &d.url,
            DownloadOutcome::Skipped { url, .. } => url,
            DownloadOutcome::Failed(f) => &f.url,
        }
    }
}

/// Fetches URLs to files. Cheap to share across threads; one connection pool.
pub struct Downloader {
    agent: ureq::Agent,
    options: DownloadOptions,
}

const READ_BUFFER_BYTES: usize = 256 * 1024;

impl Downloader {
    pub fn new(options: DownloadOptions) -> Downloader {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(options.connect_timeout)
            .timeout_read(options.read_timeout)
            .timeout_write(options.read_timeout)
            .redirects(options.redirects_max)
            .user_agent(&options.user_agent)
            .build();
        Downloader { agent, options }
    }

    pub fn options(&self) -> &DownloadOptions {
        &self.options
    }

    /// Downloads planned jobs in order (see [`plan`]); a job that could not be planned counts as
    /// a failure in its place. After a failure the rest are left alone unless `keep_going`.
    /// `on_progress(job, bytes_on_disk, total)` follows each transfer; `on_outcome` sees each
    /// outcome as it happens (for printing); all outcomes are also returned.
    pub fn download_all(
        &self,
        jobs: impl IntoIterator<Item = Result<DownloadJob, DownloadFailure>>,
        keep_going: bool,
        on_progress: &mut dyn FnMut(&DownloadJob, u64, Option<u64>),
        on_outcome: &mut dyn FnMut(&DownloadOutcome),
    ) -> Vec<DownloadOutcome> {
        let mut outcomes = Vec::new();
        for job in jobs {
            let outcome = match job {
                Ok(job) => self.download(&job, &mut |bytes, total| on_progress(&job, bytes, total)),
                Err(failure) => DownloadOutcome::Failed(failure),
            };
            on_outcome(&outcome);
            let failed = matches!(outcome, DownloadOutcome::Failed(_));
            outcomes.push(outcome);
            if failed && !keep_going {
                break;
            }
        }
        outcomes
    }

    /// Downloads one URL, retrying as configured. `progress(bytes_on_disk, total)` is called as
    /// bytes arrive.
    pub fn download(
        &self,
        job: &DownloadJob,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> DownloadOutcome {
        let fail = |attempts, error| {
            DownloadOutcome::Failed(DownloadFailure {
                url: job.url.clone(),
                path: Some(job.destination.clone()),
                attempts,
                error,
            })
        };
        if self.options.no_clobber && job.destination.exists() {
            return DownloadOutcome::Skipped {
                url: job.url.clone(),
                path: job.destination.clone(),
            };
        }
        if let Some(parent) = job
            .destination
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            if let Err(source) = fs::create_dir_all(parent) {
                return fail(
                    0,
                    DownloadError::Io {
                        path: parent.to_path_buf(),
                        source,
                    },
                );
            }
        }
        let part = part_path(&job.destination);
        // The part file is held open and locked for the whole download, so two runs writing
        // into the same folder never interleave their bytes into one file.
        let mut file = match open_locked(&part) {
            Ok(file) => file,
            Err(error) => return fail(0, error),
        };
        let mut state = AttemptState { validator: None };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let failed = match self.attempt(job, &mut file, &part, &mut state, progress) {
                Ok(done) => match publish(file, &part, &job.destination) {
                    Ok(()) => {
                        return DownloadOutcome::Downloaded(Downloaded {
                            url: job.url.clone(),
                            path: job.destination.clone(),
                            size: done.size,
                            digests: done.digests,
                            attempts,
                            resumed_from_bytes: done.resumed_from_bytes,
                        })
                    }
                    Err(error) => return fail(attempts, error),
                },
                Err(failed) => failed,
            };
            if !failed.error.is_retryable() || attempts > self.options.retries_max {
                // An empty part file holds nothing worth resuming.
                if file.metadata().map(|m| m.len() == 0).unwrap_or(false) {
                    let _ = remove_part(&part);
                }
                return fail(attempts, failed.error);
            }
            let delay = if failed.retry_now {
                Duration::ZERO
            } else {
                backoff_delay(
                    attempts,
                    self.options.backoff_initial,
                    self.options.backoff_max,
                    failed.retry_after,
                    rand::random::<f64>(),
                )
            };
            std::thread::sleep(delay);
        }
    }

    /// One request. A `.part` file is kept on retryable body errors so the next attempt resumes.
    fn attempt(
        &self,
        job: &DownloadJob,
        file: &mut File,
        part: &Path,
        state: &mut AttemptState,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Done, AttemptFailure> {
        let url = job.url.as_str();
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AttemptFailure::from(DownloadError::Io { path, source })
        };
        let offset = file.metadata().map_err(io_err(part))?.len();
        let mut request = self.agent.get(url);
        if offset > 0 {
            request = request.set("Range", &format!("bytes={offset}-"));
            if let Some(validator) = &state.validator {
                // Only resume onto bytes of the same version of the resource.
                request = request.set("If-Range", validator);
            }
        }
        let response = match request.call() {
            Ok(response) => response,
            Err(ureq::Error::Status(416, _)) if offset > 0 => {
                // The part is as long as (or longer than) the resource: it cannot be trusted.
                file.set_len(0).map_err(io_err(part))?;
                return Err(AttemptFailure {
                    error: DownloadError::BadContentRange {
                        url: url.to_string(),
                        expected_start: offset,
                        content_range: "(416 Range Not Satisfiable)".to_string(),
                    },
                    retry_after: None,
                    retry_now: true,
                });
            }
            Err(ureq::Error::Status(status, response)) => {
                return Err(AttemptFailure {
                    error: DownloadError::HttpStatus {
                        url: url.to_string(),
                        status,
                    },
                    retry_after: response.header("Retry-After").and_then(parse_retry_after),
                    retry_now: false,
                })
            }
            Err(ureq::Error::Transport(transport)) => {
                return Err(transport_error(url, &transport).into())
            }
        };
        let status = response.status();
        let content_length = response
            .header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        let (start, total) = if status == 206 {
            let content_range = response.header("Content-Range").unwrap_or("").to_string();
            match parse_content_range(&content_range) {
                Some((first, _, total)) if first == offset && offset > 0 => (offset, total),
                _ => {
                    // Not the bytes we asked for: start again from zero without a range.
                    file.set_len(0).map_err(io_err(part))?;
                    return Err(AttemptFailure {
                        error: DownloadError::BadContentRange {
                            url: url.to_string(),
                            expected_start: offset,
                            content_range,
                        },
                        retry_after: None,
                        retry_now: true,
                    });
                }
            }
        } else {
            (0, content_length)
        };
        if let (Some(limit), Some(total)) = (self.options.response_bytes_max, total) {
            if total > limit {
                file.set_len(0).map_err(io_err(part))?;
                return Err(DownloadError::TooLarge {
                    url: url.to_string(),
                    limit_bytes: limit,
                }
                .into());
            }
        }
        state.validator = strong_validator(&response);

        let mut hasher = MultiHasher::new(&self.options.algorithms);
        if start > 0 {
            // The digests must cover the whole file, so the kept bytes are hashed first.
            file.seek(SeekFrom::Start(0)).map_err(io_err(part))?;
            let kept_bytes =
                feed(&mut Read::by_ref(file).take(start), &mut hasher).map_err(io_err(part))?;
            if kept_bytes != start {
                file.set_len(0).map_err(io_err(part))?;
                return Err(AttemptFailure {
                    error: DownloadError::BadContentRange {
                        url: url.to_string(),
                        expected_start: start,
                        content_range: format!("(part file shrank to {kept_bytes} bytes)"),
                    },
                    retry_after: None,
                    retry_now: true,
                });
            }
        } else {
            file.set_len(0).map_err(io_err(part))?;
        }
        file.seek(SeekFrom::Start(start)).map_err(io_err(part))?;
        progress(start, total);

        let mut reader = response.into_reader();
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut received = 0u64;
        loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Keep what arrived; the next attempt asks for the rest.
                    file.sync_data().map_err(io_err(part))?;
                    return Err(body_error(url, e, content_length, received).into());
                }
            };
            if let Some(limit) = self.options.response_bytes_max {
                if start + received + n as u64 > limit {
                    file.set_len(0).map_err(io_err(part))?;
                    return Err(DownloadError::TooLarge {
                        url: url.to_string(),
                        limit_bytes: limit,
                    }
                    .into());
                }
            }
            file.write_all(&buffer[..n]).map_err(io_err(part))?;
            hasher.update(&buffer[..n]);
            received += n as u64;
            progress(start + received, total);
        }
        // The whole file must be there: the resource size from `Content-Range` when resuming,
        // else this response's `Content-Length`. Without either, the body ended cleanly (chunked
        // encoding detects a cut itself).
        let expected_size = total.or(content_length.map(|length| start + length));
        if let Some(expected) = expected_size {
            if start + received != expected {
                file.sync_data().map_err(io_err(part))?;
                return Err(DownloadError::Truncated {
                    url: url.to_string(),
                    expected_bytes: expected,
                    received_bytes: start + received,
                }
                .into());
            }
        }
        Ok(Done {
            size: start + received,
            digests: hasher.finalize(),
            resumed_from_bytes: start,
        })
    }
}

struct AttemptState {
    /// A strong ETag (or Last-Modified) of the resource, sent as `If-Range` when resuming.
    validator: Option<String>,
}

struct Done {
    size: u64,
    digests: Vec<Digest>,
    resumed_from_bytes: u64,
}

struct AttemptFailure {
    error: DownloadError,
    retry_after: Option<Duration>,
    /// Retry without waiting: the failure was ours to fix (a part file thrown away), not the server's load.
    retry_now: bool,
}

impl From<DownloadError> for AttemptFailure {
    fn from(error: DownloadError) -> Self {
        AttemptFailure {
            error,
            retry_after: None,
            retry_now: false,
        }
    }
}

/// The wait before retry number `retry` (1 = the first retry): `initial * 2^(retry-1)` capped at
/// `max`, scaled by a jitter factor in `[0.5, 1.0]` from `unit_random` in `[0, 1)` so that many
/// clients do not retry in lockstep. A server's `Retry-After` replaces the computed wait, still
/// capped at `max`.
pub fn backoff_delay(
    retry: u32,
    initial: Duration,
    max: Duration,
    retry_after: Option<Duration>,
    unit_random: f64,
) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(max);
    }
    let factor = 2u32.saturating_pow(retry.saturating_sub(1));
    let exponential = initial.saturating_mul(factor).min(max);
    exponential.mul_f64(0.5 + 0.5 * unit_random.clamp(0.0, 1.0))
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// `bytes <first>-<last>/<total|*>` → (first, last, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse::<u64>().ok()?),
    };
    if last < first || total.is_some_and(|t| last >= t) {
        return None;
    }
    Some((first, last, total))
}

fn strong_validator(response: &ureq::Response) -> Option<String> {
    match response.header("ETag") {
        Some(etag) if !etag.starts_with("W/") => Some(etag.to_string()),
        _ => response.header("Last-Modified").map(str::to_string),
    }
}

fn transport_error(url: &str, transport: &ureq::Transport) -> DownloadError {
    use ureq::ErrorKind as K;
    let message = transport.to_string();
    let kind = match transport.kind() {
        K::InvalidUrl | K::UnknownScheme | K::InsecureRequestHttpsOnly | K::InvalidProxyUrl => {
            return DownloadError::InvalidUrl {
                url: url.to_string(),
                message,
            }
        }
        K::Dns => TransportKind::Dns,
        K::ConnectionFailed | K::ProxyConnect | K::ProxyUnauthorized => TransportKind::Connect,
        K::TooManyRedirects => TransportKind::TooManyRedirects,
        K::BadStatus | K::BadHeader | K::HTTP => TransportKind::Protocol,
        _ => {
            let timed_out = std::error::Error::source(transport)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .is_some_and(|e| {
                    matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    )
                });
            if timed_out {
                TransportKind::Timeout
            } else {
                TransportKind::Io
            }
        }
    };
    DownloadError::Transport {
        url: url.to_string(),
        kind,
        message,
    }
}

fn body_error(
    url: &str,
    error: io::Error,
    content_length: Option<u64>,
    received: u64,
) -> DownloadError {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => DownloadError::Transport {
            url: url.to_string(),
            kind: TransportKind::Timeout,
            message: error.to_string(),
        },
        io::ErrorKind::UnexpectedEof if content_length.is_some() => DownloadError::Truncated {
            url: url.to_string(),
            expected_bytes: content_length.unwrap_or(0),
            received_bytes: received,
        },
        _ => DownloadError::Transport {
            url: url.to_string(),
            kind: TransportKind::Io,
            message: error.to_string(),
        },
    }
}

fn feed(reader: &mut dyn Read, hasher: &mut MultiHasher) -> io::Result<u64> {
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buffer) {
            Ok(0) => return Ok(total),
            Ok(n) => {
                hasher.update(&buffer[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The temporary file a download is written to: `<destination>.part`, beside it so the final
/// rename stays on one file system.
pub fn part_path(destination: &Path) -> PathBuf {
    let mut name = destination
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".part");
    destination.with_file_name(name)
}

/// Opens (creating if needed, never truncating) and exclusively locks the part file.
fn open_locked(part: &Path) -> Result<File, DownloadError> {
    use fs4::fs_std::FileExt;
    let io_err = |source| DownloadError::Io {
        path: part.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(part)
        .map_err(io_err)?;
    if !file.try_lock_exclusive().map_err(io_err)? {
        return Err(DownloadError::PartLocked {
            path: part.to_path_buf(),
        });
    }
    Ok(file)
}

/// Makes a complete part file the destination: fsync, rename, fsync the folder. The lock is
/// held until the new name is in place.
fn publish(file: File, part: &Path, destination: &Path) -> Result<(), DownloadError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DownloadError::Io { path, source }
    };
    file.sync_all().map_err(io_err(part))?;
    fs::rename(part, destination).map_err(io_err(destination))?;
    drop(file);
    sync_parent(destination).map_err(io_err(destination))
}

fn remove_part(part: &Path) -> io::Result<()> {
    match fs::remove_file(part) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Makes the rename durable: fsync the folder that holds the new name.
fn sync_parent(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(parent)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The longest file or folder name produced from a URL segment, in bytes.
const SEGMENT_BYTES_MAX: usize = 200;

/// The destination of `url` below `dest` for `layout`.
pub fn destination_for(url: &str, dest: &Path, layout: Layout) -> Result<PathBuf, DownloadError> {
    let parsed = parse_url(url)?;
    let segments: Vec<Option<String>> = parsed
        .path_segments()
        .map(|s| s.map(sanitise_segment).collect())
        .unwrap_or_default();
    // The last segment names the file; an empty one (a path ending in `/`) means an index page.
    let (dirs, last) = match segments.split_last() {
        Some((last, dirs)) => (dirs, last.clone()),
        None => (&[][..], None::<String>),
    };
    let file_name = last.unwrap_or_else(|| "index.html".to_string());
    let mut path = dest.to_path_buf();
    if layout == Layout::HostPath {
        let host = parsed.host_str().unwrap_or("host").to_ascii_lowercase();
        let host = match parsed.port() {
            Some(port) => format!("{host}_{port}"),
            None => host,
        };
        path.push(sanitise_segment(&host).unwrap_or_else(|| "host".to_string()));
        for dir in dirs.iter().flatten() {
            path.push(dir);
        }
    }
    path.push(file_name);
    Ok(path)
}

/// `name` as a path below `dest`: relative, no `..`, no root or prefix, not empty.
pub fn confine_relative(name: &str, dest: &Path) -> Result<PathBuf, DownloadError> {
    let invalid = |message: &str| DownloadError::InvalidDestination {
        name: name.to_string(),
        message: message.to_string(),
    };
    let mut path = dest.to_path_buf();
    let mut parts = 0;
    for component in Path::new(name).components() {
        match component {
            Component::Normal(part) => {
                path.push(part);
                parts += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(invalid("must not contain `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid("must be a relative path"))
            }
        }
    }
    if parts == 0 || name.ends_with('/') {
        return Err(invalid("must name a file"));
    }
    Ok(path)
}

fn parse_url(url: &str) -> Result<url::Url, DownloadError> {
    let parsed = url::Url::parse(url).map_err(|e| DownloadError::InvalidUrl {
        url: url.to_string(),
        message: e.to_string(),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(DownloadError::UnsupportedScheme {
            url: url.to_string(),
            scheme: parsed.scheme().to_string(),
        });
    }
    match parsed.host_str() {
        Some(host) if !host.is_empty() => {}
        _ => {
            return Err(DownloadError::InvalidUrl {
                url: url.to_string(),
                message: "no host".to_string(),
            })
        }
    }
    Ok(parsed)
}

/// A URL path segment as a safe file name: percent-decoded, separators and control characters
/// replaced by `_`, length bounded; `None` for segments that name nothing (``, `.`, `..`).
fn sanitise_segment(segment: &str) -> Option<String> {
    let decoded = percent_decode(segment);
    let mut name: String = decoded
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    name = name.trim().to_string();
    if name.is_empty() || name == "." || name == ".." {
        return None;
    }
    if name.len() > SEGMENT_BYTES_MAX {
        let mut cut = SEGMENT_BYTES_MAX;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    Some(name)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Jobs for `urls` below `dest`: named by `output` (one URL only) or by `layout`. URLs that cannot
/// be named, or that would land on a file another URL of this run already uses, fail here.
pub fn plan(
    urls: &[String],
    dest: &Path,
    output: Option<&str>,
    layout: Layout,
) -> Vec<Result<DownloadJob, DownloadFailure>> {
    let mut taken: HashMap<PathBuf, String> = HashMap::new();
    urls.iter()
        .map(|url| {
            let fail = |error| DownloadFailure {
                url: url.clone(),
                path: None,
                attempts: 0,
                error,
            };
            parse_url(url).map_err(fail)?;
            let destination = match output {
                Some(name) => confine_relative(name, dest),
                None => destination_for(url, dest, layout),
            }
            .map_err(fail)?;
            if let Some(other) = taken.get(&destination) {
                return Err(fail(DownloadError::DestinationCollision {
                    path: destination,
                    other_url: other.clone(),
                }));
            }
            taken.insert(destination.clone(), url.clone());
            Ok(DownloadJob {
                url: url.clone(),
                destination,
            })
        })
        .collect()
}

/// One line of the failure report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureRecord {
    pub url: String,
    pub destination: Option<String>,
    /// The HTTP status when the server answered with an error.
    pub status: Option<u16>,
    /// A stable kind (`http_status`, `timeout`, `truncated`, `connect`, ...).
    pub kind: String,
    /// The error for people.
    pub error: String,
    pub attempts: u32,
}

impl From<&DownloadFailure> for FailureRecord {
    fn from(f: &DownloadFailure) -> Self {
        FailureRecord {
            url: f.url.clone(),
            destination: f.path.as_ref().map(|p| p.display().to_string()),
            status: f.error.status(),
            kind: f.error.kind().to_string(),
            error: f.error.to_string(),
            attempts: f.attempts,
        }
    }
}

/// The JSON document `--skip-failures` writes: `{"failures": [...], "attempted": n, "failed": n}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReport {
    pub attempted: usize,
    pub failed: usize,
    pub failures: Vec<FailureRecord>,
}

impl FailureReport {
    pub fn new<'a>(
        attempted: usize,
        failures: impl IntoIterator<Item = &'a DownloadFailure>,
    ) -> FailureReport {
        let failures: Vec<FailureRecord> = failures.into_iter().map(FailureRecord::from).collect();
        FailureReport {
            attempted,
            failed: failures.len(),
            failures,
        }
    }

    /// Writes the report atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), DownloadError> {
        let io_err = |source| DownloadError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| io_err(io::Error::other(e)))?;
        let tmp = part_path(path);
        let mut file = File::create(&tmp).map_err(io_err)?;
        file.write_all(text.as_bytes()).map_err(io_err)?;
        file.write_all(b"\n").map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        assert_eq!(
            backoff_delay(1, initial, max, None, 0.999_999).as_millis(),
            99
        );
        assert_eq!(
            backoff_delay(1, initial, max, None, 0.0),
            Duration::from_millis(50)
        );
        assert_eq!(
            backoff_delay(3, initial, max, None, 0.0),
            Duration::from_millis(200)
        );
        assert_eq!(
            backoff_delay(30, initial, max, None, 0.0),
            Duration::from_millis(500)
        );
        assert_eq!(
            backoff_delay(2, initial, max, Some(Duration::from_secs(7)), 0.5),
            max
        );
        assert_eq!(
            backoff_delay(2, initial, max, Some(Duration::from_millis(300)), 0.5),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn content_range_parsing() {
        assert_eq!(
            parse_content_range("bytes 10-19/20"),
            Some((10, 19, Some(20)))
        );
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19, None)));
        assert_eq!(parse_content_range("bytes 10-9/20"), None);
        assert_eq!(parse_content_range("bytes 10-20/20"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn destinations_stay_inside() {
        let dest = Path::new("/d");
        let flat = |u: &str| destination_for(u, dest, Layout::Flat).unwrap();
        let tree = |u: &str| destination_for(u, dest, Layout::HostPath).unwrap();
        assert_eq!(flat("http://h/a/b.txt?x=1"), Path::new("/d/b.txt"));
        assert_eq!(flat("http://h/"), Path::new("/d/index.html"));
        assert_eq!(flat("http://h"), Path::new("/d/index.html"));
        assert_eq!(flat("http://h/a/%2e%2e"), Path::new("/d/index.html"));
        assert_eq!(
            flat("http://h/a/..%2f..%2fetc%2fpasswd"),
            Path::new("/d/.._.._etc_passwd")
        );
        assert_eq!(flat("http://h/x/../../y"), Path::new("/d/y"));
        assert_eq!(
            tree("http://H:8080/a/%2e%2e/b/c%20d"),
            Path::new("/d/h_8080/b/c d")
        );
        let long = format!("http://h/{}", "é".repeat(300));
        let name = flat(&long);
        assert!(
            name.file_name().unwrap().len() <= SEGMENT_BYTES_MAX,
            "{name:?}"
        );
        for bad in ["ftp://h/x", "not a url", "mailto:a@b", "http://"] {
            assert!(destination_for(bad, dest, Layout::Flat).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_names_are_confined() {
        let dest = Path::new("d");
        assert_eq!(
            confine_relative("a/b.bin", dest).unwrap(),
            Path::new("d/a/b.bin")
        );
        for bad in ["../x", "/etc/passwd", "", ".", "a/../../x", "dir/"] {
            let err = confine_relative(bad, dest).unwrap_err();
            assert!(
                matches!(err, DownloadError::InvalidDestination { .. }),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn plan_reports_collisions() {
        let urls = vec![
            "http://a/x/f.bin".to_string(),
            "http://b/y/f.bin".to_string(),
            "gopher://z".to_string(),
        ];
        let jobs = plan(&urls, Path::new("d"), None, Layout::Flat);
        assert!(jobs[0].is_ok());
        let second = jobs[1].as_ref().unwrap_err();
        assert!(
            matches!(second.error, DownloadError::DestinationCollision { .. }),
            "got {second:?}"
        );
        let third = jobs[2].as_ref().unwrap_err();
        assert!(
            matches!(third.error, DownloadError::UnsupportedScheme { .. }),
            "got {third:?}"
        );
        let tree = plan(&urls[..2], Path::new("d"), None, Layout::HostPath);
        assert!(tree.iter().all(Result::is_ok), "{tree:?}");
    }
}
