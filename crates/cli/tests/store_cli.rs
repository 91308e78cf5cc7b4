//! The store commands of the real `basin` binary, run in temporary folders: round trips, exit
//! codes, maintenance, corruption, locking and JSON output.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use basin_store::{HashAlgorithm, Key, LockWait, Store};

/// A temporary folder holding one store (at `<tmp>/store`, not yet created) and scratch files.
struct Harness {
    tmp: tempfile::TempDir,
}

/// What one run of `basin` printed and how it exited.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
    args: Vec<String>,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8(self.stdout.clone()).expect("stdout is UTF-8")
    }

    fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_string).collect()
    }

    /// Asserts the exit code, showing everything the command printed when it differs.
    fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code,
            code,
            "basin {:?} exited {} (expected {code})\nstdout:\n{}\nstderr:\n{}",
            self.args,
            self.code,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        );
        self
    }

    fn ok(self) -> Run {
        self.expect_code(0)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "basin {:?}: stdout is not one JSON document ({e}):\n{}",
                self.args,
                self.text()
            )
        })
    }

    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| {
                    panic!("basin {:?}: line {l:?} is not JSON: {e}", self.args)
                })
            })
            .collect()
    }
}

impl Harness {
    fn new() -> Harness {
        Harness {
            tmp: tempfile::tempdir().expect("create temp dir"),
        }
    }

    /// A harness whose store exists (default settings).
    fn with_store() -> Harness {
        let h = Harness::new();
        h.basin(&["init"]).ok();
        h
    }

    fn store(&self) -> PathBuf {
        self.tmp.path().join("store")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn write(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.path(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent");
        }
        fs::write(&path, content).expect("write test file");
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_basin"));
        cmd.arg("--store")
            .arg(self.store())
            .args(args)
            .env_remove("BASIN_STORE")
            .current_dir(self.tmp.path());
        cmd
    }

    fn basin(&self, args: &[&str]) -> Run {
        self.basin_stdin(args, b"")
    }

    fn basin_stdin(&self, args: &[&str], stdin: &[u8]) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn basin");
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = stdin.to_vec();
        // Fed from a thread so a large input cannot deadlock against a full stdout pipe.
        let feeder = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for basin");
        feeder.join().expect("stdin feeder");
        finish(args, out)
    }

    /// `basin put FILE`, returning the key.
    fn put(&self, name: &str, content: &[u8]) -> Key {
        let path = self.write(name, content);
        let run = self
            .basin(&["put", path.to_str().expect("utf-8 path")])
            .ok();
        parse_key(run.text().trim())
    }

    fn get(&self, key: &Key) -> Vec<u8> {
        self.basin(&["get", &key.to_hex()]).ok().stdout
    }
}

fn finish(args: &[&str], out: Output) -> Run {
    Run {
        code: out.status.code().expect("basin exited by a signal"),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

fn parse_key(text: &str) -> Key {
    text.parse()
        .unwrap_or_else(|e| panic!("'{text}' is not a key: {e}"))
}

fn blake3(content: &[u8]) -> Key {
    HashAlgorithm::Blake3.hash(content)
}

/// Bytes that are not UTF-8 and contain every byte value, NULs and newlines included.
fn binary_content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// The loose file of `key` in a store created with the default prefix length (2).
fn loose_path(store: &Path, key: &Key) -> PathBuf {
    let hex = key.to_hex();
    store.join("loose").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn init_put_get_round_trip_stdin_and_files() {
    let h = Harness::with_store();
    let from_stdin = binary_content(300_000, 1);
    let run = h.basin_stdin(&["put"], &from_stdin).ok();
    let stdin_key = parse_key(run.text().trim());
    assert_eq!(
        stdin_key,
        blake3(&from_stdin),
        "key is the BLAKE3 of the content"
    );
    let dash = h.basin_stdin(&["put", "-"], &from_stdin).ok();
    assert_eq!(
        parse_key(dash.text().trim()),
        stdin_key,
        "`-` reads stdin too"
    );

    let a = h.write("a.bin", &binary_content(5000, 2));
    let b = h.write("b.txt", b"hello\n");
    let empty = h.write("empty", b"");
    let run = h
        .basin(&[
            "put",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            empty.to_str().unwrap(),
        ])
        .ok();
    let keys: Vec<Key> = run.lines().iter().map(|l| parse_key(l)).collect();
    assert_eq!(
        keys,
        vec![
            blake3(&binary_content(5000, 2)),
            blake3(b"hello\n"),
            blake3(b"")
        ],
        "keys in input order"
    );

    assert_eq!(h.get(&stdin_key), from_stdin);
    assert_eq!(h.get(&keys[0]), binary_content(5000, 2));
    assert_eq!(h.get(&keys[1]), b"hello\n");
    assert_eq!(h.get(&keys[2]), b"");

    let out = h.path("sub/out.bin");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    h.basin(&["get", &stdin_key.to_hex(), "-o", out.to_str().unwrap()])
        .ok();
    assert_eq!(fs::read(&out).expect("read -o output"), from_stdin);
    let leftovers: Vec<_> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("out.bin")],
        "no temporary file left beside the output"
    );
}

#[test]
fn put_batch_prints_keys_in_input_order() {
    let h = Harness::with_store();
    let mut args = vec!["put".to_string(), "--batch".to_string()];
    let mut contents = Vec::new();
    for i in 0..20 {
        let content = binary_content(100 + i * 37, i as u64);
        args.push(
            h.write(&format!("f{i}"), &content)
                .to_str()
                .unwrap()
                .to_string(),
        );
        contents.push(content);
    }
    // A duplicate in the batch gets its key printed twice.
    args.push(h.path("f3").to_str().unwrap().to_string());
    contents.push(contents[3].clone());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.basin(&argv).ok();
    let keys: Vec<Key> = run.lines().iter().map(|l| parse_key(l)).collect();
    let want: Vec<Key> = contents.iter().map(|c| blake3(c)).collect();
    assert_eq!(keys, want);
    for (key, content) in keys.iter().zip(&contents) {
        assert_eq!(&h.get(key), content, "object {key}");
    }
}

#[test]
fn has_and_meta_exit_codes() {
    let h = Harness::with_store();
    let key = h.put("x", b"some content");
    let missing = blake3(b"never stored");

    let run = h.basin(&["has", &key.to_hex()]).ok();
    assert_eq!(run.lines(), vec![format!("{key} yes")]);
    let run = h
        .basin(&["has", &key.to_hex(), &missing.to_hex()])
        .expect_code(1);
    assert_eq!(
        run.lines(),
        vec![format!("{key} yes"), format!("{missing} no")]
    );

    let run = h.basin(&["meta", &key.to_hex()]).ok();
    let line = run.text();
    assert!(
        line.starts_with(&key.to_hex()),
        "meta names the key: {line}"
    );
    assert!(
        line.contains("size=12") && line.contains("location=loose"),
        "meta line: {line}"
    );
    let run = h
        .basin(&["meta", &missing.to_hex(), &key.to_hex()])
        .expect_code(1);
    assert_eq!(run.lines().len(), 2, "one line per key: {}", run.text());
    assert_eq!(run.lines()[0], format!("{missing} missing"));
}

#[test]
fn pack_then_get_and_ls() {
    let h = Harness::with_store();
    let mut keys = Vec::new();
    for i in 0..30 {
        let content = binary_content(1000 + i * 100, 100 + i as u64);
        keys.push((h.put(&format!("o{i}"), &content), content));
    }
    h.basin(&["pack"]).ok();
    for (key, content) in &keys {
        assert_eq!(&h.get(key), content, "object {key} after packing");
        let meta = h.basin(&["meta", &key.to_hex()]).ok().text();
        assert!(
            meta.contains("location=packed pack="),
            "packed meta: {meta}"
        );
        assert!(
            !loose_path(&h.store(), key).exists(),
            "loose copy of {key} removed after packing"
        );
    }
    let mut want: Vec<String> = keys.iter().map(|(k, _)| k.to_hex()).collect();
    want.sort();
    assert_eq!(
        h.basin(&["ls"]).ok().lines(),
        want,
        "ls lists every key once, sorted"
    );
    h.basin(&["validate"]).ok();
}

#[test]
fn pack_by_prefix_and_by_key_list() {
    let h = Harness::with_store();
    let keys: Vec<Key> = (0..40)
        .map(|i| h.put(&format!("o{i}"), format!("object {i}").as_bytes()))
        .collect();
    let prefix = &keys[0].to_hex()[..1];
    h.basin(&["pack", "--prefix", prefix]).ok();
    for key in &keys {
        let packed = !loose_path(&h.store(), key).exists();
        assert_eq!(
            packed,
            key.to_hex().starts_with(prefix),
            "key {key} with prefix {prefix}"
        );
    }

    let chosen: Vec<&Key> = keys
        .iter()
        .filter(|k| !k.to_hex().starts_with(prefix))
        .take(3)
        .collect();
    let list: String = chosen.iter().map(|k| format!("{k}  some/path\n")).collect();
    let list_path = h.write("keys.txt", format!("# chosen keys\n\n{list}").as_bytes());
    h.basin(&["pack", "--keys-from", list_path.to_str().unwrap()])
        .ok();
    for key in &chosen {
        assert!(
            !loose_path(&h.store(), key).exists(),
            "listed key {key} packed"
        );
    }
    let still_loose = keys
        .iter()
        .filter(|k| loose_path(&h.store(), k).exists())
        .count();
    assert_eq!(
        still_loose,
        keys.iter()
            .filter(|k| !k.to_hex().starts_with(prefix))
            .count()
            - 3
    );

    let bad_list = h.write("bad.txt", format!("{}\nnot-a-key\n", keys[1]).as_bytes());
    let run = h
        .basin(&["pack", "--keys-from", bad_list.to_str().unwrap()])
        .expect_code(2);
    assert!(
        run.stderr.contains("bad.txt:2") && run.stderr.contains("not-a-key"),
        "names file and line: {}",
        run.stderr
    );
}

#[test]
fn import_a_tree_straight_into_packs() {
    let h = Harness::with_store();
    let mut files = Vec::new();
    for (i, name) in [
        "tree/a.txt",
        "tree/sub/b.bin",
        "tree/sub/deeper/c",
        "tree/z",
        "tree/dup",
    ]
    .iter()
    .enumerate()
    {
        let content = if *name == "tree/dup" {
            b"object 0".to_vec()
        } else {
            binary_content(2000 + i, i as u64 + 7)
        };
        h.write(name, &content);
        files.push((h.path(name), content));
    }
    h.write("tree/sub/dup-too", b"object 0");
    files.push((h.path("tree/sub/dup-too"), b"object 0".to_vec()));
    std::os::unix::fs::symlink(h.path("tree/z"), h.path("tree/link")).unwrap();
    let single = h.write("single", b"a single file");
    files.push((single.clone(), b"a single file".to_vec()));

    let run = h
        .basin(&[
            "import",
            h.path("tree").to_str().unwrap(),
            single.to_str().unwrap(),
        ])
        .ok();
    assert!(
        run.stderr.contains("link"),
        "skipped symlink is mentioned: {}",
        run.stderr
    );
    let printed: Vec<(Key, PathBuf)> = run
        .lines()
        .iter()
        .map(|l| {
            let (key, path) = l
                .split_once("  ")
                .unwrap_or_else(|| panic!("`KEY  PATH` line: {l}"));
            (parse_key(key), PathBuf::from(path))
        })
        .collect();
    assert_eq!(
        printed.len(),
        files.len(),
        "one line per file: {}",
        run.text()
    );
    for (path, content) in &files {
        let (key, _) = printed
            .iter()
            .find(|(_, p)| p == path)
            .unwrap_or_else(|| panic!("{} not printed", path.display()));
        assert_eq!(*key, blake3(content), "key of {}", path.display());
        assert_eq!(&h.get(key), content);
        let meta = h.basin(&["meta", &key.to_hex()]).ok().text();
        assert!(
            meta.contains("location=packed"),
            "imported straight into a pack: {meta}"
        );
    }
    h.basin(&["validate"]).ok();

    let run = h
        .basin(&["import", h.path("no-such-thing").to_str().unwrap()])
        .expect_code(2);
    assert!(
        run.stderr.contains("no-such-thing"),
        "names the missing path: {}",
        run.stderr
    );
}

#[test]
fn delete_then_repack() {
    let h = Harness::with_store();
    let tree: Vec<(PathBuf, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                h.write(&format!("t/{i:02}"), &binary_content(3000, i)),
                binary_content(3000, i),
            )
        })
        .collect();
    let run = h.basin(&["import", h.path("t").to_str().unwrap()]).ok();
    let keys: Vec<Key> = run
        .lines()
        .iter()
        .map(|l| parse_key(l.split_whitespace().next().unwrap()))
        .collect();
    assert_eq!(keys.len(), tree.len());
    let loose = h.put("loose-one", b"a loose object");
    let absent = blake3(b"absent");

    let mut args = vec!["delete".to_string(), loose.to_hex(), absent.to_hex()];
    args.extend(keys[..30].iter().map(Key::to_hex));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = h.basin(&argv).ok();
    assert_eq!(run.lines()[0], format!("{loose} deleted"));
    assert_eq!(run.lines()[1], format!("{absent} absent"));
    assert_eq!(run.lines().len(), 32);

    h.basin(&["has", &loose.to_hex()]).expect_code(1);
    h.basin(&["has", &keys[0].to_hex()]).expect_code(1);
    h.basin(&["get", &keys[0].to_hex()]).expect_code(2);

    let run = h.basin(&["repack", "--all", "--json"]).ok();
    assert!(
        run.json().is_object(),
        "repack --json is a report object: {}",
        run.text()
    );
    for (key, (_, content)) in keys.iter().zip(&tree).skip(30) {
        assert_eq!(&h.get(key), content, "kept object {key} after repack");
    }
    for key in &keys[..30] {
        h.basin(&["has", &key.to_hex()]).expect_code(1);
    }
    h.basin(&["validate"]).ok();
}

#[test]
fn repack_merge_below_merges_batch_packs_into_one() {
    let h = Harness::with_store();
    let mut written: Vec<(Key, Vec<u8>)> = Vec::new();
    for batch in 0..3u64 {
        let files: Vec<(String, Vec<u8>)> = (0..4)
            .map(|i| {
                let content = binary_content(5000, batch * 10 + i);
                let path = h.write(&format!("b{batch}/{i}"), &content);
                (path.to_str().unwrap().to_string(), content)
            })
            .collect();
        let mut args = vec!["put", "--batch"];
        args.extend(files.iter().map(|(p, _)| p.as_str()));
        let run = h.basin(&args).ok();
        for (line, (_, content)) in run.lines().iter().zip(&files) {
            written.push((
                parse_key(line.split_whitespace().next().unwrap()),
                content.clone(),
            ));
        }
    }
    assert_eq!(written.len(), 12);
    let pack_files = |h: &Harness| h.basin(&["stats", "--json"]).ok().json()["pack_files"].clone();
    assert_eq!(pack_files(&h), 3);
    let plain = h.basin(&["repack", "--json"]).ok().json();
    assert_eq!(plain["packs_rewritten"], 0, "{plain}");
    let merged = h
        .basin(&["repack", "--merge-below", "1GiB", "--json"])
        .ok()
        .json();
    assert_eq!(merged["packs_rewritten"], 3, "{merged}");
    assert_eq!(pack_files(&h), 1);
    for (key, content) in &written {
        assert_eq!(&h.get(key), content, "object {key} after the merge");
    }
    h.basin(&["validate"]).ok();
    let run = h.basin(&["repack", "--merge-below", "lots"]).expect_code(2);
    assert!(run.stderr.contains("--merge-below"), "{}", run.stderr);
}

#[test]
fn validate_reports_a_corrupt_loose_object_by_key() {
    let h = Harness::with_store();
    let good = h.put("good", b"good content");
    let bad = h.put("bad", b"content that will be damaged");
    let run = h.basin(&["validate"]).ok();
    assert!(run.stdout.is_empty(), "no problems printed: {}", run.text());

    let path = loose_path(&h.store(), &bad);
    let mut bytes = fs::read(&path).expect("read loose file");
    bytes[3] ^= 0x40;
    fs::write(&path, &bytes).expect("damage loose file");

    let run = h.basin(&["validate"]).expect_code(1);
    assert!(
        run.text().contains(&bad.to_hex()),
        "the problem names the key {bad}: {}",
        run.text()
    );
    assert!(
        !run.text().contains(&good.to_hex()),
        "the good object is not reported: {}",
        run.text()
    );

    // Reads refuse the damaged bytes; `-o` leaves no partial file behind.
    let run = h.basin(&["get", &bad.to_hex()]).expect_code(2);
    assert!(
        run.stderr.contains(&bad.to_hex()),
        "error names the key: {}",
        run.stderr
    );
    let out = h.path("out");
    h.basin(&["get", &bad.to_hex(), "-o", out.to_str().unwrap()])
        .expect_code(2);
    assert!(!out.exists(), "no output file for a damaged object");
    let stray: Vec<_> = fs::read_dir(h.tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".basin-get-"))
        .collect();
    assert!(stray.is_empty(), "temporary files removed: {stray:?}");
}

#[test]
fn held_lock_fails_fast_and_wait_blocks_until_released() {
    let h = Harness::with_store();
    let key = h.put("x", b"to be packed");
    let store = Store::open(&h.store()).expect("open store in the test");
    let lock = store
        .maintenance(LockWait::Fail)
        .expect("take the maintenance lock");

    let run = h.basin(&["pack"]).expect_code(3);
    assert!(
        run.stderr.contains("lock") && run.stderr.contains("--wait"),
        "clear message: {}",
        run.stderr
    );
    assert!(
        loose_path(&h.store(), &key).exists(),
        "nothing packed while locked"
    );

    let mut waiting = h
        .command(&["pack", "--wait"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_until_blocked_on_a_lock(&mut waiting);
    assert!(
        loose_path(&h.store(), &key).exists(),
        "nothing packed while locked"
    );
    drop(lock);
    let run = finish(
        &["pack", "--wait"],
        waiting.wait_with_output().expect("wait"),
    )
    .ok();
    assert!(!run.stdout.is_empty(), "report printed after waiting");
    assert!(
        !loose_path(&h.store(), &key).exists(),
        "packed once the lock was released"
    );
}

/// Returns once the kernel lists `child` as waiting for a file lock (`->` lines of /proc/locks),
/// failing if the child exits first or never blocks.
fn wait_until_blocked_on_a_lock(child: &mut std::process::Child) {
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let locks = fs::read_to_string("/proc/locks").expect("read /proc/locks");
        let blocked = locks.lines().any(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1) == Some(&"->") && fields.get(5) == Some(&pid.as_str())
        });
        if blocked {
            return;
        }
        if let Some(status) = child.try_wait().expect("poll child") {
            panic!("`basin pack --wait` exited ({status}) instead of waiting for the lock");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`basin pack --wait` never blocked on the lock:\n{locks}"
        );
        std::thread::yield_now();
    }
}

#[test]
fn bad_key_argument_is_named() {
    let h = Harness::with_store();
    for cmd in ["get", "has", "meta", "delete"] {
        let run = h.basin(&[cmd, "abc123"]).expect_code(2);
        assert!(
            run.stderr.contains("abc123") && run.stderr.contains("KEY"),
            "{cmd}: names the bad argument: {}",
            run.stderr
        );
    }
    let good = blake3(b"x").to_hex();
    let run = h
        .basin(&["has", &good, &format!("{good}00")])
        .expect_code(2);
    assert!(
        run.stderr.contains(&format!("{good}00")),
        "second key named: {}",
        run.stderr
    );
}

#[test]
fn not_a_store_names_the_path() {
    let h = Harness::new();
    fs::create_dir_all(h.store()).unwrap();
    for args in [&["ls"][..], &["put"], &["pack"], &["stats"]] {
        let run = h.basin(args).expect_code(2);
        assert!(
            run.stderr.contains(h.store().to_str().unwrap())
                && run.stderr.contains("not a basin store"),
            "{args:?}: {}",
            run.stderr
        );
    }
    let run = h.basin(&["init"]).ok();
    assert!(run.stderr.contains("created store"), "{}", run.stderr);
    let run = h.basin(&["init"]).expect_code(2);
    assert!(
        run.stderr.contains(h.store().to_str().unwrap()),
        "init twice names the folder: {}",
        run.stderr
    );

    let run = Command::new(env!("CARGO_BIN_EXE_basin"))
        .arg("ls")
        .env_remove("BASIN_STORE")
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("--store"),
        "says how to name a store"
    );
}

#[test]
fn json_outputs_parse() {
    let h = Harness::new();
    let init = h
        .basin(&[
            "init",
            "--json",
            "--compression",
            "zstd:3",
            "--pack-size-target",
            "64MiB",
        ])
        .ok()
        .json();
    assert_eq!(init["hash"], "blake3");
    assert_eq!(init["compression"], "zstd:3");
    assert_eq!(init["pack_size_target_bytes"], 64 << 20);

    let a = h.write("a", &vec![b'a'; 10_000]);
    let put = h
        .basin(&["put", "--json", a.to_str().unwrap()])
        .ok()
        .json_lines();
    assert_eq!(put.len(), 1);
    let key = put[0]["key"].as_str().expect("key string").to_string();
    assert_eq!(key, blake3(&vec![b'a'; 10_000]).to_hex());
    let missing = blake3(b"missing").to_hex();

    let has = h
        .basin(&["has", "--json", &key, &missing])
        .expect_code(1)
        .json_lines();
    assert_eq!(has[0]["present"], true);
    assert_eq!(has[1]["present"], false);
    let meta = h.basin(&["meta", "--json", &key]).ok().json_lines();
    assert_eq!(meta[0]["size"], 10_000);
    assert_eq!(meta[0]["location"], "loose");

    let ls = h.basin(&["ls", "--json"]).ok().json_lines();
    assert_eq!(ls, vec![serde_json::json!({ "key": key })]);
    assert!(
        h.basin(&["pack", "--json"]).ok().json().is_object(),
        "pack report"
    );
    let meta = h.basin(&["meta", "--json", &key]).ok().json_lines();
    assert_eq!(meta[0]["location"], "packed");
    assert_eq!(
        meta[0]["compression"], "zstd",
        "10 000 equal bytes compress: {}",
        meta[0]
    );
    assert!(meta[0]["stored_size"].as_u64().expect("stored size") < 10_000);
    assert!(
        meta[0]["pack"].is_u64() && meta[0]["offset"].is_u64(),
        "pack and offset: {}",
        meta[0]
    );

    let stats = h.basin(&["stats", "--json"]).ok().json();
    assert_eq!(stats["packed_objects"], 1);
    assert_eq!(stats["loose_objects"], 0);
    let validate = h.basin(&["validate", "--json"]).ok().json();
    assert_eq!(validate["problems"], serde_json::json!([]));
    for cmd in [&["clean", "--json"][..], &["rebuild-index", "--json"]] {
        assert!(h.basin(cmd).ok().json().is_object(), "{cmd:?} report");
    }
    let t = h.write("t/f", b"file");
    let import = h
        .basin(&["import", "--json", t.parent().unwrap().to_str().unwrap()])
        .ok()
        .json_lines();
    assert_eq!(import[0]["path"], t.to_str().unwrap());
    assert_eq!(import[0]["key"], blake3(b"file").to_hex());
}

#[test]
fn sha256_store_and_human_stats() {
    let h = Harness::new();
    h.basin(&["init", "--hash", "sha256", "--loose-prefix-len", "2"])
        .ok();
    let key = h.put("x", b"abc");
    assert_eq!(
        key.to_hex(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "SHA-256 of 'abc'"
    );
    let stats = h.basin(&["stats"]).ok().text();
    assert!(
        stats.contains("sha256") && stats.contains("bytes per object"),
        "{stats}"
    );

    let run = h
        .basin(&["init", h.path("other").to_str().unwrap(), "--hash", "md5"])
        .expect_code(2);
    assert!(run.stderr.contains("md5"), "bad hash named: {}", run.stderr);
    let run = h
        .basin(&[
            "init",
            h.path("other").to_str().unwrap(),
            "--pack-size-target",
            "4 parsecs",
        ])
        .expect_code(2);
    assert!(
        run.stderr.contains("parsecs"),
        "bad size named: {}",
        run.stderr
    );
}

#[test]
fn backup_clean_rebuild_and_import_store() {
    let h = Harness::with_store();
    let packed: Vec<Key> = (0..10)
        .map(|i| h.put(&format!("p{i}"), &binary_content(500, i)))
        .collect();
    h.basin(&["pack"]).ok();
    let loose = h.put("l", b"loose after packing");

    let dest = h.path("backup");
    h.basin(&["backup", dest.to_str().unwrap()]).ok();
    // Incremental: a second run into the same folder succeeds and the result is a store.
    h.basin(&["backup", dest.to_str().unwrap()]).ok();
    let backup = Store::open(&dest).expect("backup is a store");
    for key in packed.iter().chain([&loose]) {
        assert_eq!(
            backup.get(key).expect("object in backup"),
            h.get(key),
            "object {key} in backup"
        );
    }

    h.basin(&["clean"]).ok();
    h.basin(&["clean", "--no-vacuum"]).ok();
    fs::remove_file(h.store().join("index.sqlite")).expect("remove index");
    for suffix in ["-wal", "-shm"] {
        let _ = fs::remove_file(h.store().join(format!("index.sqlite{suffix}")));
    }
    h.basin(&["rebuild-index"]).ok();
    for (i, key) in packed.iter().enumerate() {
        assert_eq!(
            h.get(key),
            binary_content(500, i as u64),
            "{key} after rebuild-index"
        );
    }
    h.basin(&["validate"]).ok();

    let other = Harness::with_store();
    let own = other.put("own", b"only in the other store");
    other
        .basin(&["import-store", h.store().to_str().unwrap()])
        .ok();
    for key in packed.iter().chain([&loose, &own]) {
        other.basin(&["has", &key.to_hex()]).ok();
    }
    other.basin(&["validate"]).ok();
}

#[test]
fn pack_leaves_a_damaged_loose_file_and_exits_1() {
    let h = Harness::with_store();
    let good = h.put("good", b"good content");
    let bad = h.put("bad", b"content that will be damaged");
    let path = loose_path(&h.store(), &bad);
    let mut bytes = fs::read(&path).expect("read loose file");
    bytes[0] ^= 1;
    fs::write(&path, &bytes).expect("damage loose file");

    let run = h.basin(&["pack"]).expect_code(1);
    assert!(
        run.stderr.contains(&bad.to_hex()[2..]),
        "damaged file named: {}",
        run.stderr
    );
    assert!(path.exists(), "damaged loose file left in place");
    assert!(
        !loose_path(&h.store(), &good).exists(),
        "the good object was packed"
    );
    assert_eq!(h.get(&good), b"good content");
}

#[test]
fn import_dos_container() {
    // A container written by disk-objectstore 1.5.0 itself (see crates/store/tests/import_dos.rs),
    // copied because opening its SQLite index may touch the -wal/-shm files.
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../store/tests/fixtures/dos-container");
    let expected: std::collections::BTreeMap<String, String> = serde_json::from_slice(
        &fs::read(fixture.with_extension("expected.json")).expect("manifest"),
    )
    .expect("json");
    let h = Harness::new();
    copy_tree(&fixture, &h.path("dos"));
    h.basin(&["init", "--hash", "sha256"]).ok();
    let report = h
        .basin(&["import-dos", "--json", h.path("dos").to_str().unwrap()])
        .ok()
        .json();
    assert_eq!(report["objects"], expected.len(), "{report}");
    for (hex, content) in &expected {
        assert_eq!(h.get(&parse_key(hex)), content.as_bytes(), "object {hex}");
    }
    let again = h
        .basin(&["import-dos", h.path("dos").to_str().unwrap()])
        .ok()
        .text();
    assert!(again.contains("already present"), "human report: {again}");
    h.basin(&["validate"]).ok();

    let run = h
        .basin(&["import-dos", h.path("nothing-here").to_str().unwrap()])
        .expect_code(2);
    assert!(
        run.stderr.contains("nothing-here"),
        "names the path: {}",
        run.stderr
    );
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("list fixture") {
        let entry = entry.expect("entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), dest).expect("copy fixture file");
        }
    }
}

#[test]
fn large_object_streams_and_a_damaged_pack_record_is_an_error() {
    let h = Harness::with_store();
    // Above the 16 MiB that `get` verifies in memory, so stdout is streamed.
    let content = binary_content((17 << 20) + 123, 99);
    let key = parse_key(h.basin_stdin(&["put"], &content).ok().text().trim());
    assert!(h.get(&key) == content, "loose large object round trip");
    h.basin(&["pack"]).ok();
    assert!(h.get(&key) == content, "packed large object round trip");

    let meta = h
        .basin(&["meta", "--json", &key.to_hex()])
        .ok()
        .json_lines();
    let (pack, offset) = (
        meta[0]["pack"].as_u64().expect("pack"),
        meta[0]["offset"].as_u64().expect("offset"),
    );
    let pack_path = h.store().join("packs").join(format!("{pack}.pack"));
    let mut bytes = fs::read(&pack_path).expect("read pack");
    let damaged_at = (offset + (8 << 20)) as usize;
    bytes[damaged_at] ^= 0x01;
    fs::write(&pack_path, &bytes).expect("damage pack");

    let run = h.basin(&["get", &key.to_hex()]).expect_code(2);
    assert!(
        run.stderr.contains(&key.to_hex()) || run.stderr.contains(&format!("offset {offset}")),
        "{}",
        run.stderr
    );
    let out = h.path("big.out");
    h.basin(&["get", &key.to_hex(), "-o", out.to_str().unwrap()])
        .expect_code(2);
    assert!(!out.exists(), "no output file for a damaged object");
    let run = h.basin(&["validate"]).expect_code(1);
    assert!(
        run.text().contains(&format!("pack {pack}")),
        "problem names the pack: {}",
        run.text()
    );
}
