//! `basin hash`, `verify` and `copy` driven as a user would: the real binary in a temp dir, its
//! output checked by the real peers (`sha256sum -c`, `hashdeep -a -k`), and real `kill -9`s.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use basin_scan::catalog::{self, StoredRow};

fn basin(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_basin"))
        .args(args)
        .current_dir(cwd)
        .env_remove("BASIN_TEST_HOLD_AFTER_ROWS")
        .output()
        .expect("run basin")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "basin failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

/// `n` files of 0..3000 bytes in nested folders (deterministic content).
fn make_tree(dir: &Path, n: usize) {
    for i in 0..n {
        let data: Vec<u8> = (0..(i * 37 % 3000))
            .map(|j| (i * 31 + j * 7) as u8)
            .collect();
        write(dir, &format!("d{}/e{}/f{i:04}.bin", i % 4, i % 7), &data);
    }
}

fn rows(catalog_path: &Path, root: &Path) -> Vec<StoredRow> {
    let mut c = catalog::open(catalog_path.to_str().unwrap()).unwrap();
    let key = std::fs::canonicalize(root)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let id = c.root_id(&key).unwrap();
    c.stored_rows(id).unwrap()
}

#[test]
fn list_algorithms_names_all_21() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(&basin(tmp.path(), &["hash", "--list-algorithms"]));
    for name in [
        "md5",
        "sha512-256",
        "sha3-384",
        "blake2s-256",
        "blake3",
        "crc32c",
        "xxh3-128",
        "shake128",
        "shake256",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{out}"
        );
    }
    assert_eq!(out.lines().count(), 22, "{out}");
}

#[test]
fn gnu_output_passes_sha256sum_check_and_bsd_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 40);
    write(tmp.path(), "tree/name with spaces.txt", b"spaces");
    let sums = ok(&basin(tmp.path(), &["hash", "tree"]));
    assert_eq!(sums.lines().count(), 41);
    std::fs::write(tmp.path().join("SHA256SUMS"), &sums).unwrap();
    let check = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum -c rejected our output:\n{}{}",
        text(&check.stdout),
        text(&check.stderr)
    );

    let bsd = ok(&basin(
        tmp.path(),
        &[
            "hash",
            "--algo",
            "md5,sha256,blake3",
            "--format",
            "bsd",
            "-o",
            "sums.bsd",
            "tree",
        ],
    ));
    assert!(bsd.is_empty(), "sums went to the file");
    ok(&basin(tmp.path(), &["verify", "--sums", "sums.bsd"]));
    write(tmp.path(), "tree/d0/e0/f0000.bin", b"tampered");
    let out = basin(tmp.path(), &["verify", "--sums", "sums.bsd"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("CHANGED tree/d0/e0/f0000.bin"),
        "{}",
        text(&out.stdout)
    );
    // GNU sums verify too (algorithm from the digest length).
    let out = basin(tmp.path(), &["verify", "--sums", "SHA256SUMS"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn hashdeep_accepts_our_hashdeep_output_in_audit_mode() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 30);
    let known = ok(&basin(
        tmp.path(),
        &[
            "hash",
            "--algo",
            "md5,sha256",
            "--format",
            "hashdeep",
            "tree",
        ],
    ));
    assert!(
        known.starts_with("%%%% HASHDEEP-1.0\n%%%% size,md5,sha256,filename\n"),
        "{known}"
    );
    std::fs::write(tmp.path().join("known.txt"), &known).unwrap();
    let audit = Command::new("hashdeep")
        .args(["-c", "md5,sha256", "-a", "-k", "known.txt", "-r", "tree"])
        .current_dir(tmp.path())
        .output()
        .expect("running hashdeep, which this test needs installed (.ci/run installs it)");
    assert!(
        audit.status.success(),
        "hashdeep -a rejected our file:\n{}{}",
        text(&audit.stdout),
        text(&audit.stderr)
    );
    assert!(
        text(&audit.stdout).contains("Audit passed"),
        "{}",
        text(&audit.stdout)
    );
    write(tmp.path(), "tree/d1/e1/f0001.bin", b"changed");
    let audit = Command::new("hashdeep")
        .args(["-c", "md5,sha256", "-a", "-k", "known.txt", "-r", "tree"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        !audit.status.success(),
        "hashdeep must fail the audit after a change"
    );
    // And basin reads hashdeep files.
    let out = basin(tmp.path(), &["verify", "--sums", "known.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("/tree/d1/e1/f0001.bin (size 37 -> 7 bytes)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn catalog_rerun_skips_verify_reports_and_piped_stderr_is_one_summary_line() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 120);
    let out = basin(
        tmp.path(),
        &[
            "hash",
            "--catalog",
            "c.db",
            "--algo",
            "crc32,md5,sha1,sha256",
            "tree",
        ],
    );
    assert!(ok(&out).is_empty(), "no sums printed with a catalog");
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr.lines().count(),
        1,
        "piped: no progress bar, one summary line:\n{stderr}"
    );
    assert!(stderr.starts_with("hash: 120 files hashed"), "{stderr}");
    assert_eq!(
        rows(&tmp.path().join("c.db"), &tmp.path().join("tree")).len(),
        120
    );

    let out = basin(
        tmp.path(),
        &[
            "hash",
            "--catalog",
            "c.db",
            "--algo",
            "crc32,md5,sha1,sha256",
            "tree",
        ],
    );
    ok(&out);
    assert!(
        text(&out.stderr).starts_with("hash: 0 files hashed")
            && text(&out.stderr).contains("120 unchanged"),
        "{}",
        text(&out.stderr)
    );

    ok(&basin(tmp.path(), &["verify", "--catalog", "c.db"]));
    std::fs::remove_file(tmp.path().join("tree/d2/e2/f0002.bin")).unwrap();
    write(tmp.path(), "tree/extra.txt", b"extra");
    let out = basin(
        tmp.path(),
        &["--json", "verify", "--catalog", "c.db", "tree"],
    );
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(|v| v["status"] == "missing"
            && v["path"].as_str().unwrap().ends_with("d2/e2/f0002.bin")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|v| v["status"] == "new" && v["path"].as_str().unwrap().ends_with("extra.txt")),
        "{lines:?}"
    );
}

/// Starts `basin hash` that stops making progress after `hold_rows` committed rows; returns once it says so.
fn spawn_holding(cwd: &Path, args: &[&str], hold_rows: u64) -> std::process::Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_basin"))
        .args(args)
        .current_dir(cwd)
        .env("BASIN_TEST_HOLD_AFTER_ROWS", hold_rows.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("basin-test: holding") => break,
            Some(Ok(_)) => continue,
            other => panic!(
                "child ended before holding: {other:?} status {:?}",
                child.wait()
            ),
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    child
}

fn kill9(child: &mut std::process::Child) {
    let status = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = child.wait();
}

#[test]
fn kill_9_mid_run_then_rerun_ends_with_the_same_catalog() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 600);
    let args = [
        "hash",
        "--catalog",
        "killed.db",
        "--batch-rows",
        "50",
        "--algo",
        "md5,sha256",
        "tree",
    ];
    let mut child = spawn_holding(tmp.path(), &args, 200);
    kill9(&mut child);
    let committed = rows(&tmp.path().join("killed.db"), &tmp.path().join("tree")).len();
    assert!(
        (200..600).contains(&committed),
        "rows committed before the kill: {committed}"
    );

    let out = basin(tmp.path(), &args);
    ok(&out);
    let summary = text(&out.stderr);
    assert!(
        summary.starts_with(&format!("hash: {} files hashed", 600 - committed)),
        "rerun hashes only the rest: {summary}"
    );
    assert!(
        summary.contains(&format!("{committed} unchanged")),
        "{summary}"
    );

    let clean = basin(
        tmp.path(),
        &[
            "hash",
            "--catalog",
            "clean.db",
            "--algo",
            "md5,sha256",
            "tree",
        ],
    );
    ok(&clean);
    let strip = |rows: Vec<StoredRow>| {
        rows.into_iter()
            .map(|r| {
                (
                    r.rel_path,
                    r.size_bytes,
                    r.mtime_ns,
                    r.inode,
                    r.error,
                    r.digests,
                )
            })
            .collect::<Vec<_>>()
    };
    let killed_rows = strip(rows(
        &tmp.path().join("killed.db"),
        &tmp.path().join("tree"),
    ));
    assert_eq!(killed_rows.len(), 600);
    assert_eq!(
        killed_rows,
        strip(rows(&tmp.path().join("clean.db"), &tmp.path().join("tree")))
    );
}

#[test]
fn second_run_fails_naming_the_holder_and_a_dead_holder_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 300);
    let args = ["hash", "--catalog", "c.db", "--batch-rows", "20", "tree"];
    let mut holder = spawn_holding(tmp.path(), &args, 20);
    let started = std::time::Instant::now();
    let second = basin(tmp.path(), &args);
    assert_eq!(second.status.code(), Some(2), "{}", text(&second.stderr));
    let message = text(&second.stderr);
    assert!(
        message.contains(&format!("pid {}", holder.id())) && message.contains(" since "),
        "names the holder: {message}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "fails at once, does not wait"
    );
    kill9(&mut holder);
    let third = basin(tmp.path(), &args);
    ok(&third);
    assert_eq!(
        rows(&tmp.path().join("c.db"), &tmp.path().join("tree")).len(),
        300
    );
}

#[cfg(target_os = "linux")]
#[test]
fn unreadable_file_is_counted_listed_and_retried() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("tree"), 10);
    // Reading /proc/self/mem at offset 0 fails with EIO even for root: a real per-file read error.
    std::os::unix::fs::symlink("/proc/self/mem", tmp.path().join("tree/bad")).unwrap();
    let args = [
        "hash",
        "--catalog",
        "c.db",
        "--follow-symlinks",
        "--failed-list",
        "failed.jsonl",
        "tree",
    ];
    let out = basin(tmp.path(), &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tree/bad: read failed") && stderr.contains("1 failed"),
        "{stderr}"
    );
    let list = std::fs::read_to_string(tmp.path().join("failed.jsonl")).unwrap();
    assert_eq!(list.lines().count(), 1, "{list}");
    let entry: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(entry["path"], "bad");

    std::fs::remove_file(tmp.path().join("tree/bad")).unwrap();
    write(tmp.path(), "tree/bad", b"fine now");
    let retry = [
        "hash",
        "--catalog",
        "c.db",
        "--retry-failed",
        "--failed-list",
        "failed.jsonl",
        "tree",
    ];
    let out = basin(tmp.path(), &retry);
    ok(&out);
    assert!(
        text(&out.stderr).starts_with("hash: 1 files hashed"),
        "only the failed file: {}",
        text(&out.stderr)
    );
    let row = rows(&tmp.path().join("c.db"), &tmp.path().join("tree"))
        .into_iter()
        .find(|r| r.rel_path == "bad")
        .unwrap();
    assert_eq!((row.size_bytes, row.error), (8, None));
}

#[test]
fn copy_verifies_and_records_source_and_destination() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(&tmp.path().join("src"), 50);
    write(tmp.path(), "single.txt", b"one file");
    let out = basin(
        tmp.path(),
        &[
            "copy",
            "--catalog",
            "c.db",
            "--algo",
            "sha256,blake3",
            "src",
            "dest",
        ],
    );
    ok(&out);
    assert!(
        text(&out.stderr).starts_with("copy: 50 files"),
        "{}",
        text(&out.stderr)
    );
    let src_rows = rows(&tmp.path().join("c.db"), &tmp.path().join("src"));
    let dest_rows = rows(&tmp.path().join("c.db"), &tmp.path().join("dest"));
    assert_eq!(src_rows.len(), 50);
    let digests = |rows: &[StoredRow]| {
        rows.iter()
            .map(|r| (r.rel_path.clone(), r.digests.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(digests(&src_rows), digests(&dest_rows));
    for r in &src_rows {
        assert_eq!(
            std::fs::read(tmp.path().join("src").join(&r.rel_path)).unwrap(),
            std::fs::read(tmp.path().join("dest").join(&r.rel_path)).unwrap()
        );
    }
    // Verify the copy from the catalog: the destination root is in it.
    ok(&basin(tmp.path(), &["verify", "--catalog", "c.db", "dest"]));
    // A file into an existing folder keeps its name.
    ok(&basin(tmp.path(), &["copy", "single.txt", "dest"]));
    assert_eq!(
        std::fs::read(tmp.path().join("dest/single.txt")).unwrap(),
        b"one file"
    );
}

#[test]
fn inside_archives_prints_member_lines() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "t/a.txt", b"abc");
    let gzip = Command::new("gzip")
        .arg("t/a.txt")
        .current_dir(tmp.path())
        .status()
        .unwrap();
    assert!(gzip.success());
    let out = ok(&basin(
        tmp.path(),
        &["hash", "--algo", "md5", "--inside-archives", "t"],
    ));
    assert!(
        out.contains("900150983cd24fb0d6963f7d28e17f72  t/a.txt.gz!a.txt"),
        "{out}"
    );
}
