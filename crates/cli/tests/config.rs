//! `basin config show` end to end with the real binary: defaults, basin.toml, environment and
//! flags, in TOML and JSON, and the errors for bad files.

use std::path::Path;
use std::process::{Command, Output};

fn basin(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_basin"));
    cmd.args(args).current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("BASIN_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("XDG_CONFIG_HOME", dir.join("no-xdg"))
        .env("HOME", dir.join("no-home"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn defaults_need_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = basin(dir.path(), &["config", "show"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("# config file: none"), "{stdout}");
    assert!(
        stdout.contains("algorithms = [\"sha256\"]  # default"),
        "{stdout}"
    );
    assert!(stdout.contains("user_agent = \"basin/"), "{stdout}");
    assert!(
        stdout.contains("[download]") && stdout.contains("[hash]"),
        "{stdout}"
    );
}

#[test]
fn every_layer_shows_its_origin() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("basin.toml"),
        "[download]\nretries_max = 2\n[hash]\njobs = 3\n",
    )
    .unwrap();
    let out = basin(
        dir.path(),
        &["config", "show", "--set", "hash.algorithms=md5,blake3"],
        &[
            ("BASIN_JOBS", "5"),
            ("BASIN_CATALOG", "postgres://postgres@127.0.0.1/test"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("retries_max = 2  # file "), "{stdout}");
    assert!(stdout.contains("jobs = 5  # env BASIN_JOBS"), "{stdout}");
    assert!(
        stdout.contains("catalog = \"postgres://postgres@127.0.0.1/test\"  # env BASIN_CATALOG"),
        "{stdout}"
    );
    assert!(
        stdout.contains("algorithms = [\"md5\", \"blake3\"]  # flag"),
        "{stdout}"
    );

    let out = basin(
        dir.path(),
        &["--json", "config", "show"],
        &[("BASIN_JOBS", "5")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["settings"]["hash.jobs"]["value"], 5);
    assert_eq!(json["settings"]["hash.jobs"]["origin"], "env");
    assert_eq!(json["settings"]["download.retries_max"]["origin"], "file");
    assert!(
        json["config_file"]
            .as_str()
            .unwrap()
            .ends_with("basin.toml"),
        "{json}"
    );
}

#[test]
fn printed_config_is_a_valid_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = basin(
        dir.path(),
        &["config", "show", "--set", "download.user_agent=me/1"],
        &[("BASIN_JOBS", "2")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(dir.path().join("copy.toml"), &out.stdout).unwrap();
    let again = basin(
        dir.path(),
        &["config", "show", "--config", "copy.toml"],
        &[],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    let stdout = text(&again.stdout);
    assert!(stdout.contains("jobs = 2  # file copy.toml"), "{stdout}");
    assert!(
        stdout.contains("user_agent = \"me/1\"  # file copy.toml"),
        "{stdout}"
    );
}

#[test]
fn bad_files_and_flags_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("basin.toml"), "[download]\nretry = 3\n").unwrap();
    let out = basin(dir.path(), &["config", "show"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("download.retry") && stderr.contains("basin.toml"),
        "{stderr}"
    );

    let other = tempfile::tempdir().unwrap();
    let out = basin(
        other.path(),
        &["config", "show", "--set", "hash.jobs=many"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("hash.jobs"),
        "{}",
        text(&out.stderr)
    );
    let out = basin(
        other.path(),
        &["config", "show", "--config", "missing.toml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("missing.toml"),
        "{}",
        text(&out.stderr)
    );
}
