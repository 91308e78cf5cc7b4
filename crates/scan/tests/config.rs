//! `basin_scan::config`: layering (defaults < file < environment < flags), file discovery, strict
//! validation, and the printed forms. The environment is injected, so tests never touch the
//! process environment and run in parallel safely.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use basin_scan::config::{default_user_agent, Config, ConfigError, LoadedConfig, Origin, SETTINGS};

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn load(
    explicit: Option<&Path>,
    env: &[(&str, &str)],
    cwd: &Path,
) -> Result<LoadedConfig, ConfigError> {
    LoadedConfig::load_with(explicit, &env_of(env), cwd)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn no_file_no_env_gives_defaults() {
    let cwd = tempfile::tempdir().unwrap();
    let loaded = load(None, &[], cwd.path()).unwrap();
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.config.hash.algorithms, ["sha256"]);
    assert_eq!(loaded.config.download.user_agent, default_user_agent());
    assert!(
        default_user_agent().starts_with("basin/"),
        "{}",
        default_user_agent()
    );
    for setting in SETTINGS {
        assert_eq!(
            loaded.origin(setting.key),
            Some(&Origin::Default),
            "{}",
            setting.key
        );
    }
}

#[test]
fn file_in_working_directory_then_environment_on_top() {
    let cwd = tempfile::tempdir().unwrap();
    let file = write(
        cwd.path(),
        "basin.toml",
        "catalog = \"cat.db\"\n[hash]\nalgorithms = [\"md5\", \"shake256:64\"]\njobs = 2\n\
         [download]\nretries_max = 9\nuser_agent = \"from-file\"\n",
    );
    let loaded = load(
        None,
        &[("BASIN_JOBS", "7"), ("BASIN_USER_AGENT", "")],
        cwd.path(),
    )
    .unwrap();
    let c = &loaded.config;
    assert_eq!(loaded.file.as_deref(), Some(file.as_path()));
    assert_eq!(c.catalog.as_deref(), Some("cat.db"));
    assert_eq!(c.hash.algorithms, ["md5", "shake256:64"]);
    assert_eq!(c.hash.jobs, Some(7), "environment beats the file");
    assert_eq!(c.download.retries_max, 9);
    assert_eq!(
        c.download.user_agent, "from-file",
        "an empty variable counts as unset"
    );
    assert_eq!(loaded.origin("hash.jobs"), Some(&Origin::Env("BASIN_JOBS")));
    assert_eq!(
        loaded.origin("hash.algorithms"),
        Some(&Origin::File(file.clone()))
    );
    assert_eq!(
        loaded.origin("download.backoff_max_ms"),
        Some(&Origin::Default)
    );
}

#[test]
fn explicit_file_beats_basin_config_which_beats_cwd_which_beats_xdg() {
    let root = tempfile::tempdir().unwrap();
    let cwd = root.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let xdg = root.path().join("xdg");
    let xdg_file = write(&xdg, "basin/basin.toml", "[hash]\njobs = 1\n");
    let env_file = write(root.path(), "env.toml", "[hash]\njobs = 2\n");
    let explicit = write(root.path(), "explicit.toml", "[hash]\njobs = 3\n");
    let xdg_s = xdg.to_str().unwrap();
    let env_s = env_file.to_str().unwrap();

    let only_xdg = load(None, &[("XDG_CONFIG_HOME", xdg_s)], &cwd).unwrap();
    assert_eq!(
        (only_xdg.config.hash.jobs, only_xdg.file),
        (Some(1), Some(xdg_file))
    );

    let cwd_file = write(&cwd, "basin.toml", "[hash]\njobs = 4\n");
    let with_cwd = load(None, &[("XDG_CONFIG_HOME", xdg_s)], &cwd).unwrap();
    assert_eq!(
        (with_cwd.config.hash.jobs, with_cwd.file),
        (Some(4), Some(cwd_file))
    );

    let with_env = load(
        None,
        &[("XDG_CONFIG_HOME", xdg_s), ("BASIN_CONFIG", env_s)],
        &cwd,
    )
    .unwrap();
    assert_eq!(with_env.config.hash.jobs, Some(2));

    let with_explicit = load(Some(&explicit), &[("BASIN_CONFIG", env_s)], &cwd).unwrap();
    assert_eq!(with_explicit.config.hash.jobs, Some(3));

    // HOME/.config is the XDG fallback.
    let home = root.path().join("home");
    write(&home, ".config/basin/basin.toml", "[hash]\njobs = 5\n");
    let empty_cwd = root.path().join("empty");
    std::fs::create_dir(&empty_cwd).unwrap();
    let from_home = load(None, &[("HOME", home.to_str().unwrap())], &empty_cwd).unwrap();
    assert_eq!(from_home.config.hash.jobs, Some(5));
}

#[test]
fn named_files_must_exist() {
    let cwd = tempfile::tempdir().unwrap();
    let missing = cwd.path().join("nope.toml");
    let err = load(Some(&missing), &[], cwd.path()).unwrap_err();
    assert!(
        matches!(err, ConfigError::Read { ref path, .. } if path == &missing),
        "got {err:?}"
    );
    let err = load(
        None,
        &[("BASIN_CONFIG", missing.to_str().unwrap())],
        cwd.path(),
    )
    .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "got {err:?}");
}

#[test]
fn unknown_keys_name_the_key_and_the_file() {
    let cwd = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[download]\nretries = 3\n", "download.retries"),
        ("algorithms = [\"md5\"]\n", "algorithms"),
        ("[hash.extra]\nx = 1\n", "hash.extra"),
        ("[database]\ndb_string = \"x\"\n", "database"),
    ] {
        let file = write(cwd.path(), "basin.toml", text);
        let err = load(None, &[], cwd.path()).unwrap_err();
        match &err {
            ConfigError::UnknownKey { key: got, path, .. } => {
                assert_eq!(got, key);
                assert_eq!(path, &file);
            }
            other => panic!("{text:?}: got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(key) && message.contains(&file.display().to_string()),
            "{message}"
        );
    }
}

#[test]
fn invalid_values_are_errors_with_their_origin() {
    let cwd = tempfile::tempdir().unwrap();
    let cases = [
        ("[hash]\njobs = \"four\"\n", "hash.jobs"),
        ("[hash]\njobs = 0\n", "hash.jobs"),
        (
            "[hash]\nalgorithms = [\"sha256\", \"nosuch\"]\n",
            "hash.algorithms",
        ),
        ("[hash]\nalgorithms = []\n", "hash.algorithms"),
        ("[hash]\nalgorithms = [1]\n", "hash.algorithms"),
        ("[download]\nretries_max = -1\n", "download.retries_max"),
        (
            "[download]\nread_timeout_secs = 0\n",
            "download.read_timeout_secs",
        ),
        (
            "[download]\nuser_agent = \"a\\r\\nX-Injected: 1\"\n",
            "download.user_agent",
        ),
        ("catalog = 5\n", "catalog"),
    ];
    for (text, key) in cases {
        let file = write(cwd.path(), "basin.toml", text);
        let err = load(None, &[], cwd.path()).unwrap_err();
        match &err {
            ConfigError::InvalidValue {
                key: got, origin, ..
            } => {
                assert_eq!(got, key, "{text:?}");
                assert_eq!(origin, &Origin::File(file.clone()), "{text:?}");
            }
            other => panic!("{text:?}: got {other:?}"),
        }
    }
    std::fs::remove_file(cwd.path().join("basin.toml")).unwrap();
    let err = load(None, &[("BASIN_DOWNLOAD_RETRIES_MAX", "lots")], cwd.path()).unwrap_err();
    assert!(
        matches!(err, ConfigError::InvalidValue { ref origin, .. } if origin == &Origin::Env("BASIN_DOWNLOAD_RETRIES_MAX")),
        "got {err:?}"
    );
    assert!(
        err.to_string().contains("BASIN_DOWNLOAD_RETRIES_MAX"),
        "{err}"
    );

    write(cwd.path(), "basin.toml", "[hash\n");
    let err = load(None, &[], cwd.path()).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "got {err:?}");
}

#[test]
fn flags_override_everything_and_unknown_flags_are_refused() {
    let cwd = tempfile::tempdir().unwrap();
    write(cwd.path(), "basin.toml", "[hash]\nalgorithms = [\"md5\"]\n");
    let mut loaded = load(None, &[("BASIN_ALGORITHMS", "sha1")], cwd.path()).unwrap();
    assert_eq!(loaded.config.hash.algorithms, ["sha1"]);
    loaded.set("hash.algorithms", "blake3, sha256").unwrap();
    assert_eq!(loaded.config.hash.algorithms, ["blake3", "sha256"]);
    assert_eq!(loaded.origin("hash.algorithms"), Some(&Origin::Flag));
    let err = loaded.set("hash.threads", "3").unwrap_err();
    assert!(
        matches!(err, ConfigError::UnknownSetting { .. }),
        "got {err:?}"
    );
    let err = loaded.set("download.retries_max", "1001").unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::InvalidValue {
                origin: Origin::Flag,
                ..
            }
        ),
        "got {err:?}"
    );
}

#[test]
fn printed_toml_reads_back_as_the_same_config() {
    let cwd = tempfile::tempdir().unwrap();
    write(
        cwd.path(),
        "basin.toml",
        "catalog = \"postgres://u@h/db\"\n[hash]\nalgorithms = [\"md5\", \"sha3-256\"]\n[download]\nresponse_bytes_max = 1000\n",
    );
    let loaded = load(
        None,
        &[("BASIN_USER_AGENT", "agent \"quoted\" \\ x")],
        cwd.path(),
    )
    .unwrap();
    let printed = loaded.to_toml();
    assert!(printed.contains("jobs is unset"), "{printed}");
    assert!(printed.contains("# env BASIN_USER_AGENT"), "{printed}");
    assert!(
        printed.contains("algorithms = [\"md5\", \"sha3-256\"]  # file "),
        "{printed}"
    );

    let other = tempfile::tempdir().unwrap();
    write(other.path(), "basin.toml", &printed);
    let reread = load(None, &[], other.path()).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(reread.config, loaded.config);
}

#[test]
fn json_form_names_value_origin_and_source() {
    let cwd = tempfile::tempdir().unwrap();
    let file = write(cwd.path(), "basin.toml", "[download]\nretries_max = 2\n");
    let json = load(None, &[("BASIN_JOBS", "6")], cwd.path())
        .unwrap()
        .to_json();
    assert_eq!(json["config_file"], file.display().to_string());
    let s = &json["settings"];
    assert_eq!(s["hash.jobs"]["value"], 6);
    assert_eq!(s["hash.jobs"]["origin"], "env");
    assert_eq!(s["hash.jobs"]["source"], "BASIN_JOBS");
    assert_eq!(s["download.retries_max"]["origin"], "file");
    assert_eq!(
        s["download.retries_max"]["source"],
        file.display().to_string()
    );
    assert_eq!(s["catalog"]["value"], serde_json::Value::Null);
    assert_eq!(s["catalog"]["origin"], "default");
    assert_eq!(s.as_object().unwrap().len(), SETTINGS.len());
}

#[test]
fn config_load_reads_the_process_environment_without_requiring_a_file() {
    // The process may have BASIN_* set by whoever runs the tests; only check that loading works
    // and yields a valid configuration.
    let config = Config::load(None).unwrap();
    assert!(!config.hash.algorithms.is_empty());
    assert!(!config.download.user_agent.is_empty());
}
