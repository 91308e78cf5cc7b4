//! Importing a real disk-objectstore container. The fixture under `tests/fixtures/dos-container`
//! was written by disk-objectstore 1.5.0 itself (loose objects, plain and zlib-compressed packed
//! objects, one object both loose and packed); `dos-container.expected.json` maps each of its
//! keys to the content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use basin_store::{HashAlgorithm, InitOptions, Key, LockWait, NoProgress, Store};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dos-container")
}

fn expected() -> BTreeMap<String, String> {
    let text =
        std::fs::read_to_string(fixture().with_extension("expected.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest json")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("list") {
        let e = e.expect("entry");
        let dest = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).expect("copy");
        }
    }
}

#[test]
fn imports_every_object_with_the_same_keys_into_a_sha256_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = InitOptions {
        hash: HashAlgorithm::Sha256,
        ..InitOptions::default()
    };
    let store = Store::init(&dir.path().join("s"), &opts).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let report = m.import_dos(&fixture(), &NoProgress).expect("import");
    let want = expected();
    assert_eq!(report.objects, want.len() as u64, "{report:?}");
    assert!(report.corrupt.is_empty(), "{report:?}");
    for (hex, content) in &want {
        let key: Key = hex.parse().expect("key");
        assert_eq!(
            store.get(&key).expect("imported object"),
            content.as_bytes(),
            "{hex}"
        );
    }
    let again = m.import_dos(&fixture(), &NoProgress).expect("import again");
    assert_eq!(
        again.already_present,
        want.len() as u64,
        "a second import reads nothing: {again:?}"
    );
    assert!(m.validate(&NoProgress).expect("validate").is_ok());
}

#[test]
fn imports_into_a_blake3_store_by_content() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&dir.path().join("s"), &InitOptions::default()).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    m.import_dos(&fixture(), &NoProgress).expect("import");
    for content in expected().values() {
        let key = HashAlgorithm::Blake3.hash(content.as_bytes());
        assert_eq!(
            store.get(&key).expect("imported object"),
            content.as_bytes()
        );
    }
}

#[test]
fn damaged_source_objects_are_reported_and_skipped_not_imported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("dos");
    copy_dir(&fixture(), &src);
    // Damage one loose object and the last bytes of the pack (a zlib stream or a raw object).
    // The one object that is only loose (the others are also packed, and packed copies win).
    let only_loose = HashAlgorithm::Sha256.hash(b"loose after packing").to_hex();
    let loose_victim = src
        .join("loose")
        .join(&only_loose[..2])
        .join(&only_loose[2..]);
    let mut bytes = std::fs::read(&loose_victim).expect("read");
    bytes[0] ^= 0xff;
    std::fs::write(&loose_victim, bytes).expect("write");
    let pack = src.join("packs/0");
    let mut pack_bytes = std::fs::read(&pack).expect("read pack");
    let n = pack_bytes.len();
    pack_bytes[n / 2] ^= 0xff;
    std::fs::write(&pack, pack_bytes).expect("write pack");

    let opts = InitOptions {
        hash: HashAlgorithm::Sha256,
        ..InitOptions::default()
    };
    let store = Store::init(&dir.path().join("s"), &opts).expect("init");
    let m = store.maintenance(LockWait::Fail).expect("lock");
    let report = m
        .import_dos(&src, &NoProgress)
        .expect("import goes on past damaged objects");
    assert!(
        report.corrupt.len() >= 2,
        "both damaged objects reported: {report:?}"
    );
    assert!(
        report.corrupt.iter().any(|c| c.contains(&only_loose)),
        "the loose victim is named: {report:?}"
    );
    // Nothing wrong was imported: every object the store has matches its key.
    for key in store.list().expect("list") {
        let content = store.get(&key).expect("get");
        assert_eq!(HashAlgorithm::Sha256.hash(&content), key);
    }
    assert_eq!(
        store.list().expect("list").len() as u64 + report.corrupt.len() as u64,
        report.objects
    );
}
