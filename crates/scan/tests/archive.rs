//! `basin_scan::archive`: real archives built in a temp dir, with the same crates basin reads them
//! with and with the system tools (`tar`, `gzip`, `bzip2`, `xz`, `zstd`, `zip`), compared against
//! hashing the original files directly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use basin_hash::{parse_algo_list, AlgoSpec, MultiHasher};
use basin_scan::archive::{
    archive_kind, hash_members, hash_members_with, ArchiveError, ArchiveKind, ArchiveLimits,
    ArchiveMember,
};

const SEED: u64 = 0x5eed_a2c4;

fn specs() -> Vec<AlgoSpec> {
    parse_algo_list("sha256,md5,crc32").unwrap()
}

/// Deterministic, poorly compressible bytes (xorshift).
fn noise(len: usize, seed: u64) -> Vec<u8> {
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

/// The source tree: member path → bytes.
fn sources() -> BTreeMap<String, Vec<u8>> {
    println!("seed {SEED:#x}");
    let mut files = BTreeMap::new();
    files.insert("a.txt".to_string(), b"hello archive\n".to_vec());
    files.insert("dir/b.bin".to_string(), noise(700_000, SEED));
    files.insert("dir/sub/empty".to_string(), Vec::new());
    files.insert("dir/sub/zeros".to_string(), vec![0u8; 300_000]);
    // Longer than tar's 100-byte name field: GNU long-name or PAX records carry it.
    files.insert(
        format!("dir/{}.txt", "long-name-".repeat(12)),
        b"long\n".to_vec(),
    );
    files
}

fn write_sources(root: &Path, files: &BTreeMap<String, Vec<u8>>) {
    for (name, bytes) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// What hashing each original file gives: member path → (size, hex digests).
fn expected(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, (u64, Vec<String>)> {
    files
        .iter()
        .map(|(name, bytes)| {
            let mut hasher = MultiHasher::new(&specs());
            hasher.update(bytes);
            (
                name.clone(),
                (
                    bytes.len() as u64,
                    hasher.finalize().iter().map(|d| d.to_hex()).collect(),
                ),
            )
        })
        .collect()
}

/// Members of `archive`, keyed by the part after `!`, checking the prefix is the archive path.
fn members_of(archive: &Path) -> BTreeMap<String, (u64, Vec<String>)> {
    let mut found = BTreeMap::new();
    let prefix = format!("{}!", archive.to_string_lossy());
    hash_members(archive, &specs(), &mut |m: ArchiveMember| {
        let member = m
            .path
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{} lacks {prefix}", m.path))
            .to_string();
        assert_eq!(m.digests.len(), 3);
        found.insert(
            member,
            (m.size, m.digests.iter().map(|d| d.to_hex()).collect()),
        );
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{}: {e}", archive.display()));
    found
}

fn tar_bytes(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_size(0);
    dir.set_mode(0o755);
    builder
        .append_data(&mut dir, "dir/", std::io::empty())
        .unwrap();
    for (name, bytes) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, name, bytes.as_slice())
            .unwrap();
    }
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Symlink);
    link.set_size(0);
    builder
        .append_link(&mut link, "dir/link-to-a", "../a.txt")
        .unwrap();
    builder.into_inner().unwrap()
}

fn zip_file(path: &Path, files: &BTreeMap<String, Vec<u8>>) {
    use zip::write::SimpleFileOptions;
    use zip::CompressionMethod;
    let mut writer = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let methods = [
        CompressionMethod::Deflated,
        CompressionMethod::Stored,
        CompressionMethod::Bzip2,
        CompressionMethod::Zstd,
    ];
    writer
        .add_directory("dir/", SimpleFileOptions::default())
        .unwrap();
    for (i, (name, bytes)) in files.iter().enumerate() {
        let options = SimpleFileOptions::default()
            .compression_method(methods[i % methods.len()])
            .large_file(false);
        writer.start_file(name.as_str(), options).unwrap();
        writer.write_all(bytes).unwrap();
    }
    writer
        .add_symlink("dir/link", "../a.txt", SimpleFileOptions::default())
        .unwrap();
    writer.finish().unwrap();
}

#[test]
fn crate_built_archives_match_the_original_files() {
    let files = sources();
    let want = expected(&files);
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_bytes(&files);

    let write = |name: &str, bytes: Vec<u8>| -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let gz = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let bz = |data: &[u8]| {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let xz = |data: &[u8]| {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let zst = |data: &[u8]| zstd::encode_all(data, 3).unwrap();

    let archives = [
        write("t.tar", tar.clone()),
        write("t.tar.gz", gz(&tar)),
        write("t.tgz", gz(&tar)),
        write("t.tar.bz2", bz(&tar)),
        write("t.tar.xz", xz(&tar)),
        write("t.tar.zst", zst(&tar)),
    ];
    for archive in &archives {
        assert_eq!(members_of(archive), want, "{}", archive.display());
    }
    let zip_path = dir.path().join("t.zip");
    zip_file(&zip_path, &files);
    assert_eq!(members_of(&zip_path), want);

    // Single compressed streams: the member is the file name without the suffix.
    let data = &files["dir/b.bin"];
    let single = [
        (write("b.bin.gz", gz(data)), ArchiveKind::Gz),
        (write("b.bin.bz2", bz(data)), ArchiveKind::Bz2),
        (write("b.bin.xz", xz(data)), ArchiveKind::Xz),
        (write("b.bin.zst", zst(data)), ArchiveKind::Zst),
    ];
    for (path, kind) in &single {
        assert_eq!(archive_kind(path), Some(*kind));
        let found = members_of(path);
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            ["b.bin"],
            "{}",
            path.display()
        );
        assert_eq!(found["b.bin"], want["dir/b.bin"], "{}", path.display());
    }
}

#[test]
fn concatenated_streams_are_read_whole() {
    // `cat a.gz b.gz > ab.gz` is a valid gzip file of both; so is the same for zstd.
    let dir = tempfile::tempdir().unwrap();
    let mut both = Vec::new();
    for part in [&b"first part, "[..], &b"second part"[..]] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).unwrap();
        both.extend(e.finish().unwrap());
    }
    let path = dir.path().join("ab.txt.gz");
    std::fs::write(&path, both).unwrap();
    let mut expected = BTreeMap::new();
    expected.insert("ab.txt".to_string(), b"first part, second part".to_vec());
    assert_eq!(members_of(&path), self::expected(&expected));

    let mut zboth = zstd::encode_all(&b"first part, "[..], 1).unwrap();
    zboth.extend(zstd::encode_all(&b"second part"[..], 1).unwrap());
    let zpath = dir.path().join("ab.txt.zst");
    std::fs::write(&zpath, zboth).unwrap();
    assert_eq!(members_of(&zpath), self::expected(&expected));
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new("which")
            .arg(name)
            .output()
            .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn system_tool_archives_match_the_original_files() {
    let files = sources();
    let want = expected(&files);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    write_sources(&src, &files);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut checked = Vec::new();

    // tar and gzip are part of every Debian/macOS base system; the rest are checked when present.
    assert!(
        tool("tar") && tool("gzip"),
        "tar and gzip are needed for this test"
    );
    run(Command::new("tar")
        .arg("-cf")
        .arg(out.join("s.tar"))
        .arg("-C")
        .arg(&src)
        .arg("a.txt")
        .arg("dir"));
    run(Command::new("tar")
        .arg("-czf")
        .arg(out.join("s.tar.gz"))
        .arg("-C")
        .arg(&src)
        .arg("a.txt")
        .arg("dir"));
    checked.extend(["s.tar", "s.tar.gz"]);
    for (tool_name, flag, name) in [("xz", "-J", "s.tar.xz"), ("bzip2", "-j", "s.tar.bz2")] {
        if tool(tool_name) {
            run(Command::new("tar")
                .arg(flag)
                .arg("-cf")
                .arg(out.join(name))
                .arg("-C")
                .arg(&src)
                .arg("a.txt")
                .arg("dir"));
            checked.push(name);
        }
    }
    if tool("zstd") {
        run(Command::new("tar")
            .arg("--zstd")
            .arg("-cf")
            .arg(out.join("s.tar.zst"))
            .arg("-C")
            .arg(&src)
            .arg("a.txt")
            .arg("dir"));
        checked.push("s.tar.zst");
    }
    if tool("zip") {
        run(Command::new("zip")
            .arg("-qr")
            .arg(out.join("s.zip"))
            .arg("a.txt")
            .arg("dir")
            .current_dir(&src));
        checked.push("s.zip");
    }
    for name in &checked {
        assert_eq!(members_of(&out.join(name)), want, "{name}");
    }

    // Single-file compressors, keeping the input (`-k`).
    let single_src = src.join("dir/b.bin");
    let mut singles = vec![("gzip", "b.bin.gz")];
    for (t, n) in [
        ("bzip2", "b.bin.bz2"),
        ("xz", "b.bin.xz"),
        ("zstd", "b.bin.zst"),
    ] {
        if tool(t) {
            singles.push((t, n));
        }
    }
    for (t, name) in singles {
        let compressed = src.join("dir").join(name);
        run(Command::new(t)
            .arg("-k")
            .arg("-q")
            .arg("-f")
            .arg(&single_src));
        let found = members_of(&compressed);
        assert_eq!(
            found.get("b.bin"),
            Some(&want["dir/b.bin"]),
            "{name}: {found:?}"
        );
        std::fs::remove_file(&compressed).unwrap();
        checked.push(name);
    }
    println!("checked: {checked:?}");
}

#[test]
fn hostile_member_names_are_normalised() {
    let dir = tempfile::tempdir().unwrap();
    // tar's builder refuses `..`, so the names are written into the header bytes directly.
    let mut builder = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("../../etc/passwd", &b"root"[..]),
        ("/abs/file", b"abs"),
        ("./a/./b/../c", b"c"),
    ] {
        let mut header = tar::Header::new_old();
        let field = &mut header.as_old_mut().name;
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, body).unwrap();
    }
    let tar_path = dir.path().join("evil.tar");
    std::fs::write(&tar_path, builder.into_inner().unwrap()).unwrap();
    let names: Vec<String> = members_of(&tar_path).into_keys().collect();
    assert_eq!(names, ["a/c", "abs/file", "etc/passwd"]);

    let zip_path = dir.path().join("evil.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
    writer
        .start_file("../../../tmp/x", zip::write::SimpleFileOptions::default())
        .unwrap();
    writer.write_all(b"x").unwrap();
    writer.finish().unwrap();
    let names: Vec<String> = members_of(&zip_path).into_keys().collect();
    assert_eq!(names, ["tmp/x"]);
}

#[test]
fn zip_bomb_member_is_stopped_by_the_member_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.zip");
    let mut writer = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    writer.start_file("zeros", options).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..16 {
        writer.write_all(&chunk).unwrap();
    }
    writer.finish().unwrap();
    assert!(
        std::fs::metadata(&path).unwrap().len() < 100_000,
        "a bomb is small on disk"
    );

    let limits = ArchiveLimits {
        member_bytes_max: 4 << 20,
        ..ArchiveLimits::default()
    };
    let err = hash_members_with(&path, &specs(), &limits, &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ArchiveError::MemberTooLarge { limit_bytes, .. } if limit_bytes == 4 << 20),
        "got {err:?}"
    );
    assert!(err.to_string().contains("bomb.zip!zeros"), "{err}");
}

#[test]
fn total_and_count_limits_apply_across_members() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    for i in 0..3 {
        files.insert(format!("m{i}"), vec![i as u8; 600_000]);
    }
    let path = dir.path().join("many.tar.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar_bytes(&files)).unwrap();
    std::fs::write(&path, e.finish().unwrap()).unwrap();

    let total = ArchiveLimits {
        total_bytes_max: 1_000_000,
        ..ArchiveLimits::default()
    };
    let mut seen = 0;
    let err = hash_members_with(&path, &specs(), &total, &mut |_| {
        seen += 1;
        Ok(())
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::TotalTooLarge {
                limit_bytes: 1_000_000,
                ..
            }
        ),
        "got {err:?}"
    );
    assert_eq!(
        seen, 1,
        "the first member fits, the second crosses the total"
    );

    // Entries of every type count: the directory entry, three files, the symlink.
    let count = ArchiveLimits {
        members_max: 3,
        ..ArchiveLimits::default()
    };
    let err = hash_members_with(&path, &specs(), &count, &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ArchiveError::TooManyMembers { limit: 3, .. }),
        "got {err:?}"
    );

    let single = dir.path().join("zeros.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 3 << 20]).unwrap();
    std::fs::write(&single, e.finish().unwrap()).unwrap();
    let small = ArchiveLimits {
        member_bytes_max: 1 << 20,
        ..ArchiveLimits::default()
    };
    let err = hash_members_with(&single, &specs(), &small, &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ArchiveError::MemberTooLarge { .. }),
        "got {err:?}"
    );
}

#[test]
fn corrupt_member_is_an_error_not_a_wrong_digest() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = BTreeMap::new();
    files.insert("data".to_string(), noise(200_000, SEED ^ 1));
    let path = dir.path().join("c.zip");
    zip_file(&path, &files);
    let mut bytes = std::fs::read(&path).unwrap();
    // Flip bytes in the middle of the compressed data of the one member.
    for b in &mut bytes[50_000..50_016] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    let err = hash_members(&path, &specs(), &mut |m| {
        panic!("corrupt member reported as {m:?}")
    })
    .unwrap_err();
    assert!(
        matches!(err, ArchiveError::Read { .. } | ArchiveError::Zip { .. }),
        "got {err:?}"
    );

    let gz_path = dir.path().join("cut.gz");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&noise(100_000, SEED)).unwrap();
    let gz = e.finish().unwrap();
    std::fs::write(&gz_path, &gz[..gz.len() / 2]).unwrap();
    let err = hash_members(&gz_path, &specs(), &mut |m| {
        panic!("truncated stream reported as {m:?}")
    })
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Read { .. }), "got {err:?}");
}

#[test]
fn encrypted_zip_member_is_refused() {
    assert!(
        tool("zip"),
        "the zip tool is needed to make an encrypted archive"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), b"secret").unwrap();
    run(Command::new("zip")
        .args(["-q", "-P", "pw", "enc.zip", "secret.txt"])
        .current_dir(dir.path()));
    let err = hash_members(&dir.path().join("enc.zip"), &specs(), &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Encrypted { ref member, .. } if member == "secret.txt"),
        "got {err:?}"
    );
}

#[test]
fn visitor_errors_stop_the_walk_and_pass_through() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.tar");
    std::fs::write(&path, tar_bytes(&sources())).unwrap();
    let mut calls = 0;
    let err = hash_members(&path, &specs(), &mut |_| {
        calls += 1;
        Err(ArchiveError::Visit("catalog is full".into()))
    })
    .unwrap_err();
    assert_eq!(calls, 1);
    assert_eq!(err.to_string(), "catalog is full");
}

#[test]
fn non_archives_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.txt");
    std::fs::write(&path, b"x").unwrap();
    let err = hash_members(&path, &specs(), &mut |_| Ok(())).unwrap_err();
    assert!(
        matches!(err, ArchiveError::NotAnArchive { .. }),
        "got {err:?}"
    );
    let missing = dir.path().join("missing.zip");
    let err = hash_members(&missing, &specs(), &mut |_| Ok(())).unwrap_err();
    assert!(matches!(err, ArchiveError::Open { .. }), "got {err:?}");
}
