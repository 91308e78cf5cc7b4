//! Verify against a catalog and against sums files; copy with read-back, recorded in the catalog.

use std::path::Path;

use basin_hash::{parse_algo_list, read::hash_slice, SumsFormat};
use basin_scan::catalog;
use basin_scan::copy::{copy_tree, CopyOptions};
use basin_scan::scan::{scan, FileOutcome, ScanObserver, ScanOptions};
use basin_scan::verify::{judge, verify, Expected, Verdict, VerifyOptions};
use basin_scan::{Filters, ScanRoot};

struct Quiet;
impl ScanObserver for Quiet {
    fn file_done(&mut self, _: &ScanRoot, _: &FileOutcome) -> std::io::Result<()> {
        Ok(())
    }
}

fn write(dir: &Path, rel: &str, data: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn verify_options() -> VerifyOptions {
    VerifyOptions {
        jobs: 2,
        read: Default::default(),
        filters: Filters::default(),
        walk_for_new: true,
        inside_archives: false,
    }
}

#[test]
fn judge_is_pure_and_names_what_differs() {
    let specs = parse_algo_list("md5,sha256").unwrap();
    let e = Expected {
        rel_path: "x".into(),
        size_bytes: Some(3),
        digests: hash_slice(b"abc", &specs, 1),
    };
    assert_eq!(judge(&e, 3, &hash_slice(b"abc", &specs, 1)), Verdict::Ok);
    assert_eq!(
        judge(&e, 4, &hash_slice(b"abcd", &specs, 1)),
        Verdict::Changed {
            reason: "size 3 -> 4 bytes".into()
        }
    );
    assert_eq!(
        judge(&e, 3, &hash_slice(b"abd", &specs, 1)),
        Verdict::Changed {
            reason: "md5, sha256 differs".into()
        }
    );
}

#[test]
fn verify_from_catalog_reports_changed_missing_new() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("t");
    for i in 0..20 {
        write(
            &tree,
            &format!("d{}/f{i}", i % 4),
            format!("file {i}").as_bytes(),
        );
    }
    let mut cat = catalog::open(tmp.path().join("c.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&tree).unwrap();
    scan(
        &root,
        Some(cat.as_mut()),
        &ScanOptions::new(parse_algo_list("crc32,sha256").unwrap()),
        &mut Quiet,
    )
    .unwrap();
    let expected = |cat: &mut Box<dyn catalog::CatalogStore>| -> Vec<Expected> {
        let id = cat.root_id(&root.key()).unwrap();
        cat.stored_rows(id)
            .unwrap()
            .into_iter()
            .map(|r| Expected {
                rel_path: r.rel_path,
                size_bytes: Some(r.size_bytes),
                digests: r.digests,
            })
            .collect()
    };
    let mut reports = Vec::new();
    let counts = verify(&root, expected(&mut cat), &verify_options(), &mut |o| {
        reports.push(o.clone())
    });
    assert_eq!((counts.ok, counts.failed()), (20, false), "{reports:?}");

    // Same size, different bytes: caught by digest, not by size.
    write(&tree, "d1/f1", b"FILE 1");
    std::fs::remove_file(tree.join("d2/f2")).unwrap();
    write(&tree, "d3/new", b"new");
    let mut reports = Vec::new();
    let counts = verify(&root, expected(&mut cat), &verify_options(), &mut |o| {
        reports.push(o.clone())
    });
    assert_eq!(
        (counts.ok, counts.changed, counts.missing, counts.new),
        (18, 1, 1, 1),
        "{reports:?}"
    );
    assert!(counts.failed());
    let find = |p: &str| {
        reports
            .iter()
            .find(|o| o.rel_path == p)
            .map(|o| o.verdict.clone())
    };
    assert_eq!(
        find("d1/f1"),
        Some(Verdict::Changed {
            reason: "crc32, sha256 differs".into()
        })
    );
    assert_eq!(find("d2/f2"), Some(Verdict::Missing));
    assert_eq!(find("d3/new"), Some(Verdict::New));
}

#[test]
fn verify_from_every_sums_format() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "a/one", b"one");
    write(tmp.path(), "two", b"two two");
    let specs = parse_algo_list("md5,sha256").unwrap();
    for format in [SumsFormat::Bsd, SumsFormat::Json, SumsFormat::Hashdeep] {
        let mut text = format.header(&specs, "/", "test");
        for (rel, data) in [("a/one", &b"one"[..]), ("two", b"two two"), ("gone", b"x")] {
            text.push_str(&format.format_entry(
                rel,
                data.len() as u64,
                &hash_slice(data, &specs, 1),
            ));
        }
        let entries = basin_hash::parse_sums(&text, None).unwrap();
        let expected: Vec<Expected> = entries
            .into_iter()
            .map(|s| Expected {
                rel_path: s.path,
                size_bytes: s.size_bytes,
                digests: s.digests,
            })
            .collect();
        let root = ScanRoot {
            dir: tmp.path().to_path_buf(),
            only: None,
            given: ".".into(),
        };
        let mut options = verify_options();
        options.walk_for_new = false;
        let counts = verify(&root, expected, &options, &mut |_| ());
        assert_eq!(
            (counts.ok, counts.missing, counts.changed, counts.new),
            (2, 1, 0, 0),
            "{format:?}"
        );
    }
}

#[test]
fn copy_tree_verifies_and_records_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
    write(&src, "big.bin", &big);
    write(&src, "sub/small.txt", b"small");
    let mut cat = catalog::open(tmp.path().join("c.db").to_str().unwrap()).unwrap();
    let root = ScanRoot::resolve(&src).unwrap();
    let specs = parse_algo_list("md5,sha256").unwrap();
    let options = CopyOptions {
        specs: specs.clone(),
        jobs: 2,
        read: basin_hash::ReadOptions {
            pipeline_min_bytes: 1 << 20,
            ..Default::default()
        },
        filters: Filters::default(),
        no_clobber: true,
        batch_rows: 1,
        command: "test".into(),
    };
    let dest = tmp.path().join("dest");
    let mut outcomes = Vec::new();
    let counters = copy_tree(&root, &dest, None, Some(cat.as_mut()), &options, &mut |o| {
        outcomes.push(o.clone())
    })
    .unwrap();
    assert_eq!(
        (counters.files_hashed, counters.files_failed),
        (2, 0),
        "{outcomes:?}"
    );
    assert_eq!(std::fs::read(dest.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(dest.join("sub/small.txt")).unwrap(), b"small");
    assert_eq!(
        std::fs::metadata(dest.join("big.bin"))
            .unwrap()
            .modified()
            .unwrap(),
        std::fs::metadata(src.join("big.bin"))
            .unwrap()
            .modified()
            .unwrap(),
        "mtime carried over"
    );
    let roots = cat.roots().unwrap();
    assert_eq!(roots.len(), 2, "{roots:?}");
    for (id, _) in roots {
        let rows = cat.stored_rows(id).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].digests, hash_slice(&big, &specs, 1));
    }
    // no-clobber: a second copy fails per file, leaves the files alone, and leaves no temp files.
    let counters = copy_tree(&root, &dest, None, None, &options, &mut |_| ()).unwrap();
    assert_eq!(counters.files_failed, 2);
    let leftovers: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("basin-copy"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
