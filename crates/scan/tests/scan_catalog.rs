//! Scans into real catalogs (SQLite files and the PostgreSQL server on this machine): rows,
//! resume skipping, rehash, locks, errors, filters, and every read path giving equal digests.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use basin_hash::{parse_algo_list, read::hash_slice, AlgoSpec, ReadOptions, ReadStrategy};
use basin_scan::catalog::{self, CatalogStore, StoredRow};
use basin_scan::lock::{LockError, RootLock};
use basin_scan::scan::{scan, FileOutcome, ScanObserver, ScanOptions};
use basin_scan::{ScanError, ScanRoot};

#[derive(Default)]
struct Collect {
    outcomes: Vec<FileOutcome>,
}

impl ScanObserver for Collect {
    fn file_done(&mut self, _root: &ScanRoot, outcome: &FileOutcome) -> std::io::Result<()> {
        self.outcomes.push(outcome.clone());
        Ok(())
    }
}

/// A small tree with nested folders, an empty file, a hidden file and one 3 MB file.
fn make_tree(dir: &Path, seed: u64) -> BTreeMap<String, Vec<u8>> {
    println!("tree seed {seed}");
    let mut state = seed | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut files = BTreeMap::new();
    for i in 0..60 {
        let rel = format!("d{}/e{}/f{i}.bin", i % 3, i % 5);
        let len = (next() % 20_000) as usize;
        let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        files.insert(rel, data);
    }
    files.insert("empty.txt".into(), Vec::new());
    files.insert(".hidden/h.txt".into(), b"hidden".to_vec());
    files.insert(
        "big.dat".into(),
        (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect(),
    );
    for (rel, data) in &files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    files
}

fn options(algos: &str) -> ScanOptions {
    let mut o = ScanOptions::new(parse_algo_list(algos).unwrap());
    o.jobs = 3;
    o.batch_rows = 7;
    o
}

fn rows_without_run_info(c: &mut dyn CatalogStore, root: &ScanRoot) -> Vec<StoredRow> {
    let id = c.root_id(&root.key()).unwrap();
    c.stored_rows(id).unwrap()
}

fn check_rows_match_files(
    rows: &[StoredRow],
    files: &BTreeMap<String, Vec<u8>>,
    specs: &[AlgoSpec],
) {
    assert_eq!(rows.len(), files.len(), "one row per file");
    for row in rows {
        let data = files
            .get(&row.rel_path)
            .unwrap_or_else(|| panic!("unexpected row {}", row.rel_path));
        assert_eq!(row.size_bytes, data.len() as u64);
        assert_eq!(row.error, None);
        assert_eq!(row.digests, hash_slice(data, specs, 1), "{}", row.rel_path);
    }
}

#[test]
fn sqlite_scan_rerun_skips_and_changes_are_rehashed() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let files = make_tree(&tree, 0x5eed_0001);
    let mut cat = catalog::open(tmp.path().join("cat.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&tree).unwrap();
    let opts = options("crc32,md5,sha256");

    let mut seen = Collect::default();
    let first = scan(&root, Some(cat.as_mut()), &opts, &mut seen).unwrap();
    assert_eq!(first.counters.files_hashed, files.len() as u64);
    assert_eq!(first.counters.files_failed, 0);
    let walked: Vec<&str> = seen.outcomes.iter().map(|o| o.rel_path.as_str()).collect();
    let mut sorted = walked.clone();
    sorted.sort();
    assert_eq!(walked, sorted, "outcomes arrive in walk (sorted) order");
    check_rows_match_files(
        &rows_without_run_info(cat.as_mut(), &root),
        &files,
        &opts.specs,
    );

    // Unchanged rerun: nothing hashed.
    let second = scan(&root, Some(cat.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!(
        (second.counters.files_hashed, second.counters.files_skipped),
        (0, files.len() as u64)
    );

    // Change one file's content and size: only it is hashed again.
    let mut changed = files.clone();
    changed.insert("d0/e0/f0.bin".into(), b"new content".to_vec());
    std::fs::write(tree.join("d0/e0/f0.bin"), b"new content").unwrap();
    let third = scan(&root, Some(cat.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!(third.counters.files_hashed, 1);
    check_rows_match_files(
        &rows_without_run_info(cat.as_mut(), &root),
        &changed,
        &opts.specs,
    );

    // --rehash hashes everything again; a new algorithm makes rows incomplete, so they are rehashed.
    let mut rehash = opts.clone();
    rehash.rehash = true;
    assert_eq!(
        scan(&root, Some(cat.as_mut()), &rehash, &mut Collect::default())
            .unwrap()
            .counters
            .files_hashed,
        changed.len() as u64
    );
    let more = options("crc32,md5,sha256,blake3");
    assert_eq!(
        scan(&root, Some(cat.as_mut()), &more, &mut Collect::default())
            .unwrap()
            .counters
            .files_hashed,
        changed.len() as u64
    );
    check_rows_match_files(
        &rows_without_run_info(cat.as_mut(), &root),
        &changed,
        &more.specs,
    );
    // Hashing with sha1 only keeps the other digests of unchanged files.
    let sha1 = options("sha1");
    scan(&root, Some(cat.as_mut()), &sha1, &mut Collect::default()).unwrap();
    let all: Vec<AlgoSpec> = parse_algo_list("crc32,md5,sha256,blake3,sha1").unwrap();
    let rows = rows_without_run_info(cat.as_mut(), &root);
    for row in &rows {
        let mut want = hash_slice(&changed[&row.rel_path], &all, 1);
        want.sort_by_key(|d| d.spec.column_name());
        let mut got = row.digests.clone();
        got.sort_by_key(|d| d.spec.column_name());
        assert_eq!(got, want, "{}", row.rel_path);
    }
}

#[test]
fn every_read_path_through_the_walk_gives_equal_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let files = make_tree(tmp.path(), 0x5eed_0002);
    let root = ScanRoot::resolve(tmp.path()).unwrap();
    let specs = "crc32,md5,sha1,sha256,blake3,xxh3-128,shake256:40";
    let mut results = Vec::new();
    for (name, strategy, pipeline_min_bytes, jobs) in [
        ("buffered-1job", ReadStrategy::Buffered, u64::MAX, 1),
        ("pipelined-3jobs", ReadStrategy::Buffered, 0, 3),
        ("mmap-2jobs", ReadStrategy::Mmap, 0, 2),
    ] {
        let mut opts = options(specs);
        opts.jobs = jobs;
        opts.read = ReadOptions {
            strategy,
            pipeline_min_bytes,
            read_buffer_bytes: 256 * 1024,
            lanes_max: 3,
            ..ReadOptions::default()
        };
        let mut seen = Collect::default();
        scan(&root, None, &opts, &mut seen).unwrap();
        let digests: BTreeMap<String, Vec<String>> = seen
            .outcomes
            .iter()
            .map(|o| {
                (
                    o.rel_path.clone(),
                    o.result
                        .as_ref()
                        .unwrap()
                        .iter()
                        .map(|d| d.to_string())
                        .collect(),
                )
            })
            .collect();
        results.push((name, digests));
    }
    let expected: BTreeMap<String, Vec<String>> = files
        .iter()
        .map(|(rel, data)| {
            (
                rel.clone(),
                hash_slice(data, &parse_algo_list(specs).unwrap(), 1)
                    .iter()
                    .map(|d| d.to_string())
                    .collect(),
            )
        })
        .collect();
    for (name, got) in results {
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn filters_select_files() {
    let tmp = tempfile::tempdir().unwrap();
    make_tree(tmp.path(), 0x5eed_0003);
    std::fs::write(tmp.path().join("keep.TXT"), b"x").unwrap();
    let root = ScanRoot::resolve(tmp.path()).unwrap();
    let run = |f: &dyn Fn(&mut ScanOptions)| -> Vec<String> {
        let mut o = options("crc32");
        f(&mut o);
        let mut seen = Collect::default();
        scan(&root, None, &o, &mut seen).unwrap();
        seen.outcomes.into_iter().map(|o| o.rel_path).collect()
    };
    let hidden_out = run(&|o| o.filters.exclude_hidden = true);
    assert!(
        !hidden_out.iter().any(|p| p.starts_with(".hidden")),
        "{hidden_out:?}"
    );
    assert!(run(&|_| ()).iter().any(|p| p.starts_with(".hidden")));
    let txt = run(&|o| o.filters.extensions_allow = vec!["txt".into()]);
    let mut txt_sorted = txt.clone();
    txt_sorted.sort();
    assert_eq!(txt_sorted, [".hidden/h.txt", "empty.txt", "keep.TXT"]);
    assert!(
        run(&|o| o.filters.extensions_deny = vec!["bin".into(), "dat".into()])
            .iter()
            .all(|p| !p.ends_with(".bin") && !p.ends_with(".dat"))
    );
    assert_eq!(
        run(&|o| o.filters.size_min_bytes = Some(1_000_000)),
        ["big.dat"]
    );
    assert!(run(&|o| o.filters.size_max_bytes = Some(0)).contains(&"empty.txt".to_string()));
    assert_eq!(
        run(&|o| o.filters.modified_before_ns = Some(0)),
        Vec::<String>::new()
    );
    assert_eq!(
        run(&|o| o.filters.modified_since_ns = Some(0)).len(),
        run(&|_| ()).len()
    );
    std::fs::write(tmp.path().join(".gitignore"), "*.bin\n").unwrap();
    let ignored = run(&|o| o.filters.gitignore = true);
    assert!(
        ignored.iter().all(|p| !p.ends_with(".bin")) && ignored.contains(&"big.dat".to_string()),
        "{ignored:?}"
    );
}

#[test]
fn per_file_errors_are_outcomes_and_rows_and_retry_fixes_them() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.txt"), b"a").unwrap();
    #[cfg(unix)]
    {
        // Never opened: a FIFO (opening it would block forever) and a dangling symlink.
        let fifo = std::ffi::CString::new(tree.join("pipe").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::os::unix::fs::symlink(tree.join("nowhere"), tree.join("dangling")).unwrap();
    }
    let mut cat = catalog::open(tmp.path().join("c.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&tree).unwrap();
    let mut opts = options("sha256");
    let mut seen = Collect::default();
    let s = scan(&root, Some(cat.as_mut()), &opts, &mut seen).unwrap();
    assert_eq!(
        (s.counters.files_hashed, s.counters.files_failed),
        (1, 0),
        "FIFO and symlink are skipped"
    );

    // A retry list naming a file that vanished: an error row, counted, not fatal.
    opts.only_paths = Some(vec!["gone.txt".into(), "a.txt".into()]);
    let mut seen = Collect::default();
    let s = scan(&root, Some(cat.as_mut()), &opts, &mut seen).unwrap();
    assert_eq!((s.counters.files_hashed, s.counters.files_failed), (1, 1));
    let err = seen.outcomes[0].result.as_ref().unwrap_err();
    assert!(err.contains("vanished"), "{err}");
    let id = cat.root_id(&root.key()).unwrap();
    assert_eq!(cat.failed_paths(id).unwrap(), ["gone.txt"]);

    // The file appears; retrying the failed paths fixes the row.
    std::fs::write(tree.join("gone.txt"), b"back").unwrap();
    opts.only_paths = Some(cat.failed_paths(id).unwrap());
    let s = scan(&root, Some(cat.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!((s.counters.files_hashed, s.counters.files_failed), (1, 0));
    assert!(cat.failed_paths(id).unwrap().is_empty());

    // Walk errors (a symlink loop followed) are reported, not stored.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&tree, tree.join("loop")).unwrap();
        let mut follow = options("sha256");
        follow.filters.follow_symlinks = true;
        let mut seen = Collect::default();
        let s = scan(&root, None, &follow, &mut seen).unwrap();
        assert!(
            s.walk_errors >= 1,
            "loop or dangling link reported: {:?}",
            seen.outcomes
        );
    }
}

#[test]
fn a_held_lock_fails_the_scan_at_once_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"f").unwrap();
    let db = tmp.path().join("c.db");
    let mut cat = catalog::open(db.to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(tmp.path()).unwrap();
    // flock locks belong to an open file description, so this process can hold one against itself.
    let held = RootLock::acquire(&cat.lock_dir(), &root.key()).unwrap();
    let err = scan(
        &root,
        Some(cat.as_mut()),
        &options("sha256"),
        &mut Collect::default(),
    )
    .unwrap_err();
    match &err {
        ScanError::Lock(LockError::Held { holder, .. }) => {
            assert_eq!(holder.pid, std::process::id());
            assert!(
                err.to_string()
                    .contains(&format!("pid {}", std::process::id())),
                "{err}"
            );
        }
        other => panic!("expected a held lock, got {other:?}"),
    }
    drop(held);
    scan(
        &root,
        Some(cat.as_mut()),
        &options("sha256"),
        &mut Collect::default(),
    )
    .unwrap();
}

#[test]
fn archive_members_are_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    std::fs::create_dir_all(&tree).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"inside the gzip").unwrap();
    std::fs::write(tree.join("note.txt.gz"), gz.finish().unwrap()).unwrap();
    let mut cat = catalog::open(tmp.path().join("c.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&tree).unwrap();
    let mut opts = options("sha256");
    opts.inside_archives = true;
    let s = scan(&root, Some(cat.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!(s.members_hashed, 1);
    let rows = rows_without_run_info(cat.as_mut(), &root);
    let paths: Vec<&str> = rows.iter().map(|r| r.rel_path.as_str()).collect();
    assert_eq!(paths, ["note.txt.gz", "note.txt.gz!note.txt"]);
    assert_eq!(
        rows[1].digests,
        hash_slice(b"inside the gzip", &opts.specs, 1)
    );
    // Re-reading a changed archive replaces its member rows.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"other").unwrap();
    std::fs::write(tree.join("note.txt.gz"), gz.finish().unwrap()).unwrap();
    scan(&root, Some(cat.as_mut()), &opts, &mut Collect::default()).unwrap();
    let rows = rows_without_run_info(cat.as_mut(), &root);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].digests, hash_slice(b"other", &opts.specs, 1));
}

fn pg_url(schema: &str) -> String {
    let base = std::env::var("BASIN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}schema={schema}")
}

#[test]
fn postgres_catalog_matches_sqlite() {
    let schema = format!(
        "basin_scan_test_{}_{}",
        std::process::id(),
        basin_scan::clock::now_ns() % 1_000_000_007
    );
    let url = pg_url(&schema);
    let mut pg = catalog::open(&url)
        .unwrap_or_else(|e| panic!("PostgreSQL must be reachable at {url}: {e}"));
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let files = make_tree(&tree, 0x5eed_0004);
    let mut lite = catalog::open(tmp.path().join("c.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&tree).unwrap();
    let mut opts = options("md5,sha256,blake3:64");
    opts.batch_rows = 250; // several rows per multi-row statement
    let a = scan(&root, Some(pg.as_mut()), &opts, &mut Collect::default()).unwrap();
    scan(&root, Some(lite.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!(a.counters.files_hashed, files.len() as u64);
    let pg_rows = rows_without_run_info(pg.as_mut(), &root);
    check_rows_match_files(&pg_rows, &files, &opts.specs);
    assert_eq!(pg_rows, rows_without_run_info(lite.as_mut(), &root));
    let again = scan(&root, Some(pg.as_mut()), &opts, &mut Collect::default()).unwrap();
    assert_eq!(again.counters.files_skipped, files.len() as u64);
    let mut client = postgres::Client::connect(
        &std::env::var("BASIN_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        postgres::NoTls,
    )
    .unwrap();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
}
