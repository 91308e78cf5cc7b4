//! `basin_scan::download` against a real HTTP server on a loopback port, started per test.
//!
//! The server is hand-rolled on `std::net::TcpListener` so each test controls every byte: status,
//! headers, short bodies, ranges, and stalls. A stalled response waits on a condition variable
//! that the *next* request releases, so "the client gave up and retried" is observed directly,
//! without sleeps.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use basin_hash::{parse_algo_list, MultiHasher};
use basin_scan::download::{
    plan, DownloadError, DownloadJob, DownloadOptions, DownloadOutcome, Downloader, FailureReport,
    Layout, TransportKind,
};

// ---------------------------------------------------------------------------------------------
// The test server

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// The start of a `Range: bytes=<start>-` header.
    fn range_start(&self) -> Option<usize> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announced length when it differs from the body (a truncated response).
    content_length: Option<usize>,
    /// Send the headers, then wait until released before sending the body.
    stall: bool,
}

fn reply(status: u16, body: &[u8]) -> Reply {
    Reply {
        status,
        body: body.to_vec(),
        ..Reply::default()
    }
}

type Route = dyn Fn(&Request, usize) -> Reply + Send + Sync;

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Request>>,
    /// Bumped on every request; stalled responses wait for it to move.
    generation: Mutex<u64>,
    moved: Condvar,
}

struct Server {
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Server {
    /// Serves `route(request, hit)`, where `hit` counts requests to the same path from 1.
    fn start(route: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let route: Arc<Route> = Arc::new(route);
        let (shared2, stop2) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (shared, route) = (shared2.clone(), route.clone());
                std::thread::spawn(move || serve(stream, &shared, &*route));
            }
        });
        Server { addr, shared, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn requests(&self, path: &str) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        *self.shared.generation.lock().unwrap() += 1;
        self.shared.moved.notify_all();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, shared: &Shared, route: &Route) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let request = Request {
        path: path.clone(),
        headers,
    };
    let (hit, generation) = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(request.clone());
        let hit = requests.iter().filter(|r| r.path == path).count();
        let mut generation = shared.generation.lock().unwrap();
        *generation += 1;
        shared.moved.notify_all();
        (hit, *generation)
    };
    let reply = route(&request, hit);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        reply.status,
        reply.content_length.unwrap_or(reply.body.len())
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    if stream.write_all(head.as_bytes()).is_err() {
        return;
    }
    let _ = stream.flush();
    if reply.stall {
        let guard = shared.generation.lock().unwrap();
        let _unused = shared
            .moved
            .wait_while(guard, |g| *g == generation)
            .unwrap();
    }
    let _ = stream.write_all(&reply.body);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Deterministic bytes (xorshift) so bodies are not trivially compressible or repetitive.
fn body_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn options() -> DownloadOptions {
    DownloadOptions {
        algorithms: parse_algo_list("sha256,md5").unwrap(),
        user_agent: "basin-test/1".to_string(),
        retries_max: 3,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        response_bytes_max: None,
        no_clobber: false,
        redirects_max: 5,
    }
}

fn expected_hex(bytes: &[u8]) -> Vec<String> {
    let mut hasher = MultiHasher::new(&parse_algo_list("sha256,md5").unwrap());
    hasher.update(bytes);
    hasher.finalize().iter().map(|d| d.to_hex()).collect()
}

fn job(url: String, dest: &Path, name: &str) -> DownloadJob {
    DownloadJob {
        url,
        destination: dest.join(name),
    }
}

fn downloaded(outcome: DownloadOutcome) -> basin_scan::download::Downloaded {
    match outcome {
        DownloadOutcome::Downloaded(d) => d,
        other => panic!("expected a download, got {other:?}"),
    }
}

fn failure(outcome: DownloadOutcome) -> basin_scan::download::DownloadFailure {
    match outcome {
        DownloadOutcome::Failed(f) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn leftover_parts(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn downloads_body_with_digests_and_user_agent() {
    let body = body_bytes(700_000, 1);
    let served = body.clone();
    let server = Server::start(move |_, _| reply(200, &served));
    let dir = tempfile::tempdir().unwrap();
    let d = downloaded(Downloader::new(options()).download(
        &job(server.url("/f.bin"), dir.path(), "f.bin"),
        &mut |_, _| {},
    ));
    assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), body);
    assert_eq!(d.size, body.len() as u64);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.resumed_from_bytes, 0);
    assert_eq!(
        d.digests.iter().map(|x| x.to_hex()).collect::<Vec<_>>(),
        expected_hex(&body)
    );
    let requests = server.requests("/f.bin");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].header("user-agent"), Some("basin-test/1"));
    assert_eq!(requests[0].header("range"), None);
    assert!(leftover_parts(dir.path()).is_empty());
}

#[test]
fn not_found_is_final_without_retry() {
    let server = Server::start(|_, _| reply(404, b"nope"));
    let dir = tempfile::tempdir().unwrap();
    let f = failure(Downloader::new(options()).download(
        &job(server.url("/missing"), dir.path(), "m"),
        &mut |_, _| {},
    ));
    assert!(
        matches!(f.error, DownloadError::HttpStatus { status: 404, .. }),
        "got {:?}",
        f.error
    );
    assert_eq!(f.attempts, 1);
    assert_eq!(server.requests("/missing").len(), 1);
    assert!(!dir.path().join("m").exists());
    assert!(leftover_parts(dir.path()).is_empty());
}

#[test]
fn server_error_then_success_is_retried() {
    let server = Server::start(|_, hit| {
        if hit == 1 {
            reply(500, b"oops")
        } else {
            reply(200, b"fine")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/flaky"), dir.path(), "f"), &mut |_, _| {}),
    );
    assert_eq!(d.attempts, 2);
    assert_eq!(server.requests("/flaky").len(), 2);
    assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"fine");
}

#[test]
fn persistent_server_error_gives_up_after_retries_max() {
    let server = Server::start(|_, _| reply(503, b"busy"));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retries_max = 2;
    let f = failure(
        Downloader::new(opts).download(&job(server.url("/down"), dir.path(), "d"), &mut |_, _| {}),
    );
    assert_eq!(f.attempts, 3);
    assert_eq!(server.requests("/down").len(), 3);
    assert_eq!(f.error.status(), Some(503));
}

#[test]
fn too_many_requests_with_retry_after_is_retried() {
    let server = Server::start(|_, hit| {
        if hit == 1 {
            Reply {
                headers: vec![("Retry-After".into(), "0".into())],
                ..reply(429, b"slow down")
            }
        } else {
            reply(200, b"ok")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/rate"), dir.path(), "r"), &mut |_, _| {}),
    );
    assert_eq!(d.attempts, 2);
}

/// Serves `body` honouring `Range: bytes=N-` with a 206 (and the first hit cut short when `truncate_first`).
fn ranged(body: Vec<u8>, truncate_first: bool) -> impl Fn(&Request, usize) -> Reply + Send + Sync {
    move |request, hit| {
        if hit == 1 && truncate_first {
            let half = body.len() / 2;
            return Reply {
                content_length: Some(body.len()),
                ..reply(200, &body[..half])
            };
        }
        match request.range_start() {
            Some(start) if start < body.len() => Reply {
                headers: vec![(
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", body.len() - 1, body.len()),
                )],
                ..reply(206, &body[start..])
            },
            _ => reply(200, &body),
        }
    }
}

#[test]
fn truncated_body_is_resumed_with_a_range_request() {
    let body = body_bytes(400_000, 2);
    let server = Server::start(ranged(body.clone(), true));
    let dir = tempfile::tempdir().unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/t"), dir.path(), "t"), &mut |_, _| {}),
    );
    assert_eq!(std::fs::read(dir.path().join("t")).unwrap(), body);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.resumed_from_bytes, 200_000);
    assert_eq!(
        d.digests.iter().map(|x| x.to_hex()).collect::<Vec<_>>(),
        expected_hex(&body)
    );
    let requests = server.requests("/t");
    assert_eq!(requests[1].header("range"), Some("bytes=200000-"));
}

#[test]
fn truncated_body_without_retries_is_a_failure_not_a_success() {
    let body = body_bytes(10_000, 3);
    let server = Server::start(ranged(body, true));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retries_max = 0;
    let f = failure(
        Downloader::new(opts).download(&job(server.url("/t"), dir.path(), "t"), &mut |_, _| {}),
    );
    assert!(
        matches!(
            f.error,
            DownloadError::Truncated { .. } | DownloadError::Transport { .. }
        ),
        "got {:?}",
        f.error
    );
    assert!(
        !dir.path().join("t").exists(),
        "a short body must never get the final name"
    );
    // The partial bytes are kept for a later resume.
    assert_eq!(
        std::fs::metadata(dir.path().join("t.part")).unwrap().len(),
        5_000
    );
}

#[test]
fn truncated_body_restarts_when_the_server_ignores_ranges() {
    let body = body_bytes(50_000, 4);
    let served = body.clone();
    let server = Server::start(move |_, hit| {
        if hit == 1 {
            Reply {
                content_length: Some(served.len()),
                ..reply(200, &served[..1000])
            }
        } else {
            reply(200, &served)
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/n"), dir.path(), "n"), &mut |_, _| {}),
    );
    assert_eq!(std::fs::read(dir.path().join("n")).unwrap(), body);
    assert_eq!(d.resumed_from_bytes, 0);
    assert_eq!(
        d.digests.iter().map(|x| x.to_hex()).collect::<Vec<_>>(),
        expected_hex(&body)
    );
    assert_eq!(
        server.requests("/n")[1].header("range"),
        Some("bytes=1000-")
    );
}

#[test]
fn part_file_from_an_earlier_run_is_resumed() {
    let body = body_bytes(30_000, 5);
    let server = Server::start(ranged(body.clone(), false));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.part"), &body[..12_345]).unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/r"), dir.path(), "r"), &mut |_, _| {}),
    );
    assert_eq!(d.resumed_from_bytes, 12_345);
    assert_eq!(d.attempts, 1);
    assert_eq!(std::fs::read(dir.path().join("r")).unwrap(), body);
    assert_eq!(
        d.digests.iter().map(|x| x.to_hex()).collect::<Vec<_>>(),
        expected_hex(&body)
    );
    assert!(leftover_parts(dir.path()).is_empty());
}

#[test]
fn stale_part_file_is_replaced_when_the_server_answers_200() {
    let body = body_bytes(8_000, 6);
    let served = body.clone();
    let server = Server::start(move |_, _| reply(200, &served));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("s.part"), b"garbage from another version").unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/s"), dir.path(), "s"), &mut |_, _| {}),
    );
    assert_eq!(d.resumed_from_bytes, 0);
    assert_eq!(std::fs::read(dir.path().join("s")).unwrap(), body);
}

#[test]
fn wrong_content_range_restarts_from_zero() {
    let body = body_bytes(5_000, 7);
    let served = body.clone();
    let server = Server::start(move |request, _| match request.range_start() {
        // Claims to resume from the wrong offset.
        Some(_) => Reply {
            headers: vec![(
                "Content-Range".into(),
                format!("bytes 0-{}/{}", served.len() - 1, served.len()),
            )],
            ..reply(206, &served)
        },
        None => reply(200, &served),
    });
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.part"), &body[..100]).unwrap();
    let d = downloaded(
        Downloader::new(options())
            .download(&job(server.url("/w"), dir.path(), "w"), &mut |_, _| {}),
    );
    assert_eq!(std::fs::read(dir.path().join("w")).unwrap(), body);
    assert_eq!(d.resumed_from_bytes, 0);
    assert_eq!(d.attempts, 2);
    let requests = server.requests("/w");
    assert_eq!(requests[0].header("range"), Some("bytes=100-"));
    assert_eq!(requests[1].header("range"), None);
}

#[test]
fn slow_response_times_out_and_the_retry_succeeds() {
    let server = Server::start(|_, hit| Reply {
        stall: hit == 1,
        ..reply(200, b"late but whole")
    });
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.read_timeout = Duration::from_millis(300);
    let d = downloaded(Downloader::new(opts).download(
        &job(server.url("/slow"), dir.path(), "slow"),
        &mut |_, _| {},
    ));
    assert_eq!(d.attempts, 2);
    assert_eq!(server.requests("/slow").len(), 2);
    assert_eq!(
        std::fs::read(dir.path().join("slow")).unwrap(),
        b"late but whole"
    );
}

#[test]
fn slow_response_without_retries_fails_with_a_timeout() {
    let server = Server::start(|_, _| Reply {
        stall: true,
        ..reply(200, b"never")
    });
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.read_timeout = Duration::from_millis(300);
    opts.retries_max = 0;
    let f = failure(
        Downloader::new(opts).download(&job(server.url("/stuck"), dir.path(), "x"), &mut |_, _| {}),
    );
    assert!(
        matches!(
            f.error,
            DownloadError::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "got {:?}",
        f.error
    );
    assert_eq!(f.error.kind(), "timeout");
    assert!(!dir.path().join("x").exists());
}

#[test]
fn redirect_is_followed() {
    let body = body_bytes(1_000, 8);
    let served = body.clone();
    let server = Server::start(move |request, _| match request.path.as_str() {
        "/old" => Reply {
            headers: vec![("Location".into(), "/new/file".into())],
            ..reply(302, b"")
        },
        _ => reply(200, &served),
    });
    let dir = tempfile::tempdir().unwrap();
    let jobs = plan(&[server.url("/old")], dir.path(), None, Layout::Flat);
    let job = jobs.into_iter().next().unwrap().unwrap();
    assert_eq!(job.destination, dir.path().join("old"));
    let d = downloaded(Downloader::new(options()).download(&job, &mut |_, _| {}));
    assert_eq!(std::fs::read(&d.path).unwrap(), body);
    assert_eq!(server.requests("/new/file").len(), 1);
    assert_eq!(
        server.requests("/new/file")[0].header("user-agent"),
        Some("basin-test/1")
    );
}

#[test]
fn no_clobber_skips_existing_files_and_default_overwrites() {
    let server = Server::start(|_, _| reply(200, b"new content"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep"), b"old").unwrap();
    let mut opts = options();
    opts.no_clobber = true;
    let outcome = Downloader::new(opts).download(
        &job(server.url("/keep"), dir.path(), "keep"),
        &mut |_, _| {},
    );
    assert!(
        matches!(outcome, DownloadOutcome::Skipped { .. }),
        "got {outcome:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("keep")).unwrap(), b"old");
    assert_eq!(server.requests("/keep").len(), 0);

    downloaded(Downloader::new(options()).download(
        &job(server.url("/keep"), dir.path(), "keep"),
        &mut |_, _| {},
    ));
    assert_eq!(
        std::fs::read(dir.path().join("keep")).unwrap(),
        b"new content"
    );
}

#[test]
fn responses_over_the_limit_are_refused() {
    let server = Server::start(|_, _| reply(200, &[7u8; 4096]));
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.response_bytes_max = Some(1000);
    let f = failure(
        Downloader::new(opts).download(&job(server.url("/big"), dir.path(), "big"), &mut |_, _| {}),
    );
    assert!(
        matches!(
            f.error,
            DownloadError::TooLarge {
                limit_bytes: 1000,
                ..
            }
        ),
        "got {:?}",
        f.error
    );
    assert_eq!(f.attempts, 1);
    assert!(leftover_parts(dir.path()).is_empty());
    assert!(!dir.path().join("big").exists());
}

#[test]
fn connection_refused_is_retried_then_reported() {
    // A port that was just free: nothing listens there any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retries_max = 1;
    let f = failure(Downloader::new(opts).download(
        &job(format!("http://{addr}/x"), dir.path(), "x"),
        &mut |_, _| {},
    ));
    assert_eq!(f.attempts, 2);
    assert!(
        matches!(
            f.error,
            DownloadError::Transport {
                kind: TransportKind::Connect,
                ..
            }
        ),
        "got {:?}",
        f.error
    );
}

#[test]
fn keep_going_collects_failures_into_a_report() {
    let server = Server::start(|request, _| match request.path.as_str() {
        "/a" => reply(200, b"a"),
        "/gone" => reply(410, b""),
        _ => reply(500, b""),
    });
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![server.url("/gone"), server.url("/a"), server.url("/broken")];
    let jobs = plan(&urls, dir.path(), None, Layout::Flat);
    let mut opts = options();
    opts.retries_max = 1;
    let mut seen = Vec::new();
    let mut progress = Vec::new();
    let outcomes = Downloader::new(opts).download_all(
        jobs,
        true,
        &mut |job, bytes, total| progress.push((job.url.clone(), bytes, total)),
        &mut |o| seen.push(o.url().to_string()),
    );
    assert_eq!(seen, urls);
    assert_eq!(
        progress.last(),
        Some(&(urls[1].clone(), 1, Some(1))),
        "{progress:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"a");
    let failures: Vec<_> = outcomes
        .iter()
        .filter_map(|o| match o {
            DownloadOutcome::Failed(f) => Some(f),
            _ => None,
        })
        .collect();
    let report_path = dir.path().join("report.json");
    FailureReport::new(outcomes.len(), failures)
        .write(&report_path)
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["attempted"], 3);
    assert_eq!(report["failed"], 2);
    let entries = report["failures"].as_array().unwrap();
    assert_eq!(entries[0]["url"], urls[0]);
    assert_eq!(entries[0]["status"], 410);
    assert_eq!(entries[0]["attempts"], 1);
    assert_eq!(entries[0]["kind"], "http_status");
    assert_eq!(entries[1]["url"], urls[2]);
    assert_eq!(entries[1]["status"], 500);
    assert_eq!(entries[1]["attempts"], 2);
    assert!(
        entries[1]["error"].as_str().unwrap().contains("500"),
        "{report}"
    );
}

#[test]
fn without_keep_going_the_first_failure_stops_the_run() {
    let server = Server::start(|request, _| {
        if request.path == "/bad" {
            reply(404, b"")
        } else {
            reply(200, b"x")
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![server.url("/bad"), server.url("/good")];
    let outcomes = Downloader::new(options()).download_all(
        plan(&urls, dir.path(), None, Layout::Flat),
        false,
        &mut |_, _, _| {},
        &mut |_| {},
    );
    assert_eq!(outcomes.len(), 1);
    assert_eq!(server.requests("/good").len(), 0);

    // A URL that cannot even be planned is a failure in its place, too.
    let urls = vec!["ftp://127.0.0.1/x".to_string(), server.url("/good")];
    let outcomes = Downloader::new(options()).download_all(
        plan(&urls, dir.path(), None, Layout::Flat),
        false,
        &mut |_, _, _| {},
        &mut |_| {},
    );
    assert_eq!(outcomes.len(), 1);
    assert!(
        matches!(&outcomes[0], DownloadOutcome::Failed(f) if f.attempts == 0),
        "got {outcomes:?}"
    );
    assert_eq!(server.requests("/good").len(), 0);
}

#[test]
fn host_path_layout_creates_folders_inside_dest() {
    let server = Server::start(|_, _| reply(200, b"deep"));
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![
        server.url("/a/b/%2e%2e/c.txt"),
        server.url("/x/..%2f..%2fescape"),
    ];
    let jobs: Vec<DownloadJob> = plan(&urls, dir.path(), None, Layout::HostPath)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let downloader = Downloader::new(options());
    for job in &jobs {
        assert!(job.destination.starts_with(dir.path()), "{job:?}");
        downloaded(downloader.download(job, &mut |_, _| {}));
    }
    let host = format!("127.0.0.1_{}", server.addr.port());
    assert_eq!(
        std::fs::read(dir.path().join(&host).join("a/c.txt")).unwrap(),
        b"deep"
    );
    assert!(dir.path().join(&host).join("x/.._.._escape").is_file());
}

#[test]
fn short_ranges_are_stitched_into_the_whole_file() {
    // A server that never sends more than 10,000 bytes per response, announcing the full size.
    let body = body_bytes(45_000, 9);
    let served = body.clone();
    let server = Server::start(move |request, _| {
        let start = request.range_start().unwrap_or(0);
        let end = (start + 10_000).min(served.len());
        match request.range_start() {
            None => Reply {
                content_length: Some(served.len()),
                ..reply(200, &served[..end])
            },
            Some(_) => Reply {
                headers: vec![(
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", end - 1, served.len()),
                )],
                ..reply(206, &served[start..end])
            },
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options();
    opts.retries_max = 5;
    let d = downloaded(
        Downloader::new(opts)
            .download(&job(server.url("/pieces"), dir.path(), "p"), &mut |_, _| {}),
    );
    assert_eq!(d.attempts, 5);
    assert_eq!(d.resumed_from_bytes, 40_000);
    assert_eq!(std::fs::read(dir.path().join("p")).unwrap(), body);
    assert_eq!(
        d.digests.iter().map(|x| x.to_hex()).collect::<Vec<_>>(),
        expected_hex(&body)
    );
}

#[test]
fn a_part_file_locked_by_another_download_is_left_alone() {
    use fs4::fs_std::FileExt;
    let server = Server::start(|_, _| reply(200, b"new bytes"));
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("busy.part");
    std::fs::write(&part, b"another run's bytes").unwrap();
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&part)
        .unwrap();
    assert!(other.try_lock_exclusive().unwrap());

    let f = failure(Downloader::new(options()).download(
        &job(server.url("/busy"), dir.path(), "busy"),
        &mut |_, _| {},
    ));
    assert!(
        matches!(f.error, DownloadError::PartLocked { .. }),
        "got {:?}",
        f.error
    );
    assert_eq!(server.requests("/busy").len(), 0);
    assert_eq!(std::fs::read(&part).unwrap(), b"another run's bytes");

    // Once the other run is gone (its lock dies with its file handle), the part is resumed.
    drop(other);
    let d = downloaded(Downloader::new(options()).download(
        &job(server.url("/busy"), dir.path(), "busy"),
        &mut |_, _| {},
    ));
    assert_eq!(
        d.resumed_from_bytes, 0,
        "the server ignores ranges, so the download restarted"
    );
    assert_eq!(
        std::fs::read(dir.path().join("busy")).unwrap(),
        b"new bytes"
    );
}
