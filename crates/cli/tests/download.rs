//! `basin download` end to end: the real binary against an HTTP server this test starts on a
//! loopback port (hand-rolled on `TcpListener`, one thread per connection, `Connection: close`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

type Route = dyn Fn(&str, usize) -> (u16, Vec<u8>) + Send + Sync;
/// Each request's path and headers (names lower-cased), in arrival order.
type Seen = Mutex<Vec<(String, HashMap<String, String>)>>;

/// A server answering `route(path, hit)` (`hit` counts requests to that path from 1); it records
/// each request's path and headers.
struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Server {
    fn start(route: impl Fn(&str, usize) -> (u16, Vec<u8>) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let route: Arc<Route> = Arc::new(route);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (seen, route) = (seen2.clone(), route.clone());
                std::thread::spawn(move || serve(stream, &seen, &*route));
            }
        });
        Server { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn hits(&self, path: &str) -> Vec<HashMap<String, String>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .collect()
    }
}

fn serve(mut stream: TcpStream, seen: &Seen, route: &Route) {
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
    let hit = {
        let mut seen = seen.lock().unwrap();
        seen.push((path.clone(), headers));
        seen.iter().filter(|(p, _)| *p == path).count()
    };
    let (status, body) = route(&path, hit);
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}

fn basin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basin"));
    cmd.args(args).current_dir(dir);
    // A clean configuration: no user file, no inherited BASIN_* settings.
    for (name, _) in std::env::vars() {
        if name.starts_with("BASIN_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("XDG_CONFIG_HOME", dir.join("no-xdg"))
        .env("HOME", dir.join("no-home"));
    cmd.env("BASIN_DOWNLOAD_BACKOFF_INITIAL_MS", "1")
        .env("BASIN_DOWNLOAD_BACKOFF_MAX_MS", "5");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = basin_hash::MultiHasher::new(&basin_hash::parse_algo_list("sha256").unwrap());
    h.update(bytes);
    h.finalize()[0].to_hex()
}

fn files_server() -> Server {
    Server::start(|path, hit| match path {
        "/one.txt" => (200, b"first file\n".to_vec()),
        "/dir/two.bin" => (200, vec![42u8; 100_000]),
        "/flaky" if hit == 1 => (503, b"busy".to_vec()),
        "/flaky" => (200, b"flaky".to_vec()),
        _ => (404, b"not here".to_vec()),
    })
}

#[test]
fn downloads_print_sums_that_sha256sum_accepts() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &[
            "download",
            "--dest",
            "got",
            &server.url("/one.txt"),
            &server.url("/dir/two.bin"),
        ],
        &[("BASIN_USER_AGENT", "archivist/2.0 (+mailto:me@example.org)")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(dir.path().join("got/one.txt")).unwrap(),
        b"first file\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("got/two.bin")).unwrap(),
        vec![42u8; 100_000]
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{}  got/one.txt", sha256_hex(b"first file\n"))),
        "{stdout}"
    );
    assert_eq!(
        server.hits("/one.txt")[0]["user-agent"],
        "archivist/2.0 (+mailto:me@example.org)"
    );
    assert!(
        text(&out.stderr).contains("2 downloaded, 0 skipped, 0 failed"),
        "{}",
        text(&out.stderr)
    );

    // The printed lines are a valid sums file.
    if Command::new("sha256sum").arg("--version").output().is_ok() {
        std::fs::write(dir.path().join("SUMS"), &out.stdout).unwrap();
        let check = Command::new("sha256sum")
            .args(["-c", "SUMS"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(check.status.success(), "{}", text(&check.stdout));
    }
}

#[test]
fn default_user_agent_names_basin() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &["download", "-q", &server.url("/one.txt")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let agent = &server.hits("/one.txt")[0]["user-agent"];
    assert!(agent.starts_with("basin/"), "{agent}");
    assert_eq!(text(&out.stderr), "", "--quiet prints nothing on success");
}

#[test]
fn json_lines_carry_every_digest() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &[
            "--json",
            "download",
            "--algo",
            "md5,sha256",
            "--output",
            "renamed.txt",
            &server.url("/one.txt"),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(line["status"], "downloaded");
    assert_eq!(line["size"], 11);
    assert_eq!(line["path"], "./renamed.txt");
    assert_eq!(line["digests"]["sha256"], sha256_hex(b"first file\n"));
    assert_eq!(line["digests"]["md5"].as_str().unwrap().len(), 32);
    assert!(dir.path().join("renamed.txt").is_file());
}

#[test]
fn skip_failures_goes_on_and_writes_the_report() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let list = "# my list\n\n".to_string()
        + &server.url("/missing")
        + "\n"
        + &server.url("/one.txt")
        + "\n";
    std::fs::write(dir.path().join("urls.txt"), list).unwrap();
    let out = basin(
        dir.path(),
        &[
            "download",
            "--from",
            "urls.txt",
            "--dest",
            "d",
            "--skip-failures",
        ],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failure still shows in the exit status"
    );
    assert!(dir.path().join("d/one.txt").is_file());
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("d/download-failures.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["attempted"], 2);
    assert_eq!(report["failures"][0]["url"], server.url("/missing"));
    assert_eq!(report["failures"][0]["status"], 404);
    assert_eq!(report["failures"][0]["attempts"], 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("HTTP 404") && stderr.contains("download-failures.json"),
        "{stderr}"
    );
}

#[test]
fn without_skip_failures_the_first_failure_stops() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &["download", &server.url("/missing"), &server.url("/one.txt")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        server.hits("/one.txt").is_empty(),
        "nothing after the failure is fetched"
    );
    assert!(!dir.path().join("download-failures.json").exists());
    assert!(
        text(&out.stderr).contains("1 not tried"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_clobber_keeps_existing_files() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one.txt"), b"mine").unwrap();
    let out = basin(
        dir.path(),
        &["download", "--no-clobber", &server.url("/one.txt")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(dir.path().join("one.txt")).unwrap(), b"mine");
    assert!(
        text(&out.stderr).contains("skipped"),
        "{}",
        text(&out.stderr)
    );
    assert!(server.hits("/one.txt").is_empty());
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &[
            "download",
            "--output",
            "x",
            "http://127.0.0.1:9/a",
            "http://127.0.0.1:9/b",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = basin(dir.path(), &["download"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = basin(
        dir.path(),
        &["download", "--algo", "nosuch", "http://127.0.0.1:9/a"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = basin(
        dir.path(),
        &["download", "--output", "../escape", "http://127.0.0.1:9/a"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("must not contain `..`"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().parent().unwrap().join("escape").exists());
}

#[test]
fn retries_follow_flags_over_config() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("basin.toml"),
        "[download]\nretries_max = 3\n",
    )
    .unwrap();
    let out = basin(
        dir.path(),
        &["download", "--retries", "0", &server.url("/flaky")],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("HTTP 503"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(server.hits("/flaky").len(), 1);

    // The config file's retries let the second attempt succeed.
    let out = basin(dir.path(), &["download", &server.url("/flaky")], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(server.hits("/flaky").len(), 2);
    assert_eq!(std::fs::read(dir.path().join("flaky")).unwrap(), b"flaky");
}

#[test]
fn urls_from_stdin_with_the_tree_layout() {
    let server = files_server();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_basin"))
        .args(["download", "--from", "-", "--tree", "--dest", "mirror"])
        .current_dir(dir.path())
        .env("XDG_CONFIG_HOME", dir.path().join("no-xdg"))
        .env("HOME", dir.path().join("no-home"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let list = format!(
        "{}\n  # comment\n{}\n",
        server.url("/one.txt"),
        server.url("/dir/two.bin")
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(list.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let host = dir
        .path()
        .join("mirror")
        .join(format!("127.0.0.1_{}", server.addr.port()));
    assert_eq!(
        std::fs::read(host.join("one.txt")).unwrap(),
        b"first file\n"
    );
    assert_eq!(
        std::fs::read(host.join("dir/two.bin")).unwrap().len(),
        100_000
    );
}
