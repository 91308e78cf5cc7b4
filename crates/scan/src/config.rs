//! The layered configuration of the hashing and download commands.
//!
//! Values come from four layers, later ones winning:
//!
//! 1. built-in defaults ([`Config::default`]);
//! 2. one optional TOML file, `basin.toml`: the explicit path if one is given, else `$BASIN_CONFIG`,
//!    else `./basin.toml`, else `$XDG_CONFIG_HOME/basin/basin.toml` (`~/.config/...` without XDG);
//! 3. environment variables (`BASIN_ALGORITHMS`, `BASIN_JOBS`, `BASIN_CATALOG`, `BASIN_USER_AGENT`, ...,
//!    one per setting, listed in [`SETTINGS`]);
//! 4. command-line flags, applied by the binary through [`LoadedConfig::set`].
//!
//! No file is ever required. A file that exists must be valid: an unknown key, a value of the wrong
//! type or out of bounds is an error naming the key and the file, so a typo never silently falls
//! back to a default. [`LoadedConfig`] remembers where each value came from, which is what
//! `basin config show` prints.
//!
//! ```
//! use basin_scan::config::{LoadedConfig, Origin};
//! let env = |name: &str| (name == "BASIN_JOBS").then(|| "3".to_string());
//! // A working directory without a basin.toml; the injected environment has no HOME or XDG.
//! let cwd = std::path::Path::new("/nonexistent");
//! let loaded = LoadedConfig::load_with(None, &env, cwd).unwrap();
//! assert_eq!(loaded.config.hash.jobs, Some(3));
//! assert_eq!(loaded.origin("hash.jobs"), Some(&Origin::Env("BASIN_JOBS")));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The name of the configuration file searched for in the working directory and the XDG folder.
pub const FILE_NAME: &str = "basin.toml";

/// The longest configuration file read; a bigger one is surely not a config file.
const FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Everything the hashing and download commands can be configured with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub hash: HashConfig,
    pub download: DownloadConfig,
    /// Catalog location: a SQLite file path or a `postgres://` URL. `None`: the command's default.
    pub catalog: Option<String>,
}

/// Settings of `basin hash`, `verify` and `copy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashConfig {
    /// Algorithm names as `basin_hash::AlgoSpec` parses them (`sha256`, `shake256:64`).
    pub algorithms: Vec<String>,
    /// Worker threads; `None` means one per core.
    pub jobs: Option<usize>,
}

/// Settings of `basin download`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadConfig {
    /// The `User-Agent` header sent with every request.
    pub user_agent: String,
    /// Retries after the first attempt of one URL (so `retries_max + 1` attempts at most).
    pub retries_max: u32,
    /// The first backoff delay; it doubles per retry up to `backoff_max_ms`, with jitter.
    pub backoff_initial_ms: u64,
    /// The longest wait between two attempts, also the cap on a server's `Retry-After`.
    pub backoff_max_ms: u64,
    pub connect_timeout_secs: u64,
    /// The longest silence while waiting for response bytes (per read, not for the whole body).
    pub read_timeout_secs: u64,
    /// Refuse responses longer than this; `None`: no limit.
    pub response_bytes_max: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hash: HashConfig {
                algorithms: vec!["sha256".to_string()],
                jobs: None,
            },
            download: DownloadConfig::default(),
            catalog: None,
        }
    }
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            user_agent: default_user_agent(),
            retries_max: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
            response_bytes_max: None,
        }
    }
}

/// `basin/<version>`: names the product, not the HTTP library, so server operators know who calls.
pub fn default_user_agent() -> String {
    format!("basin/{}", env!("CARGO_PKG_VERSION"))
}

impl Config {
    /// Loads defaults, the config file and the process environment (see the module docs).
    ///
    /// `explicit` is a file the user named (e.g. `--config`); it must exist.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        Ok(LoadedConfig::load(explicit)?.config)
    }
}

/// Where a setting's effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    Default,
    File(PathBuf),
    /// The environment variable that set it.
    Env(&'static str),
    /// A command-line flag.
    Flag,
}

impl Origin {
    /// A one-word kind: `default`, `file`, `env` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Origin::Default => "default",
            Origin::File(_) => "file",
            Origin::Env(_) => "env",
            Origin::Flag => "flag",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file {}", path.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag => f.write_str("flag"),
        }
    }
}

/// One configurable setting: its dotted key in the file and its environment variable.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub env: &'static str,
    pub help: &'static str,
}

/// Every setting, in the order `basin config show` prints them.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "catalog",
        env: "BASIN_CATALOG",
        help: "catalog: SQLite file or postgres:// URL",
    },
    Setting {
        key: "hash.algorithms",
        env: "BASIN_ALGORITHMS",
        help: "algorithms, e.g. [\"sha256\", \"shake256:64\"]; env: comma-separated",
    },
    Setting {
        key: "hash.jobs",
        env: "BASIN_JOBS",
        help: "worker threads (unset: one per core)",
    },
    Setting {
        key: "download.user_agent",
        env: "BASIN_USER_AGENT",
        help: "User-Agent header",
    },
    Setting {
        key: "download.retries_max",
        env: "BASIN_DOWNLOAD_RETRIES_MAX",
        help: "retries after the first attempt",
    },
    Setting {
        key: "download.backoff_initial_ms",
        env: "BASIN_DOWNLOAD_BACKOFF_INITIAL_MS",
        help: "first retry delay, doubled per retry",
    },
    Setting {
        key: "download.backoff_max_ms",
        env: "BASIN_DOWNLOAD_BACKOFF_MAX_MS",
        help: "longest retry delay and Retry-After cap",
    },
    Setting {
        key: "download.connect_timeout_secs",
        env: "BASIN_DOWNLOAD_CONNECT_TIMEOUT_SECS",
        help: "TCP/TLS connect timeout",
    },
    Setting {
        key: "download.read_timeout_secs",
        env: "BASIN_DOWNLOAD_READ_TIMEOUT_SECS",
        help: "longest silence while reading a response",
    },
    Setting {
        key: "download.response_bytes_max",
        env: "BASIN_DOWNLOAD_RESPONSE_BYTES_MAX",
        help: "refuse longer responses (unset: no limit)",
    },
];

/// Upper bounds on numbers from files and the environment: beyond them a value is a mistake.
const JOBS_MAX: u64 = 4096;
const RETRIES_MAX_MAX: u64 = 1000;
const DELAY_MS_MAX: u64 = 24 * 3600 * 1000;
const TIMEOUT_SECS_MAX: u64 = 24 * 3600;
const USER_AGENT_CHARS_MAX: usize = 512;
const ALGORITHMS_MAX: usize = 64;

/// Errors while finding, reading or validating configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is {size_bytes} bytes; the limit is {limit_bytes}")]
    TooLarge {
        path: PathBuf,
        size_bytes: u64,
        limit_bytes: u64,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown key `{key}` in config file {path} (known keys: {known})")]
    UnknownKey {
        key: String,
        path: PathBuf,
        known: String,
    },
    #[error("unknown setting `{key}` (known keys: {known})")]
    UnknownSetting { key: String, known: String },
    #[error("invalid value for `{key}` from {origin}: {message}")]
    InvalidValue {
        key: String,
        origin: Origin,
        message: String,
    },
}

/// A [`Config`] plus where each value came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub config: Config,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
    origins: BTreeMap<&'static str, Origin>,
}

impl LoadedConfig {
    /// Built-in defaults only.
    pub fn defaults() -> LoadedConfig {
        LoadedConfig {
            config: Config::default(),
            file: None,
            origins: SETTINGS.iter().map(|s| (s.key, Origin::Default)).collect(),
        }
    }

    /// Loads from the process environment and working directory.
    pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::load_with(explicit, &|name| std::env::var(name).ok(), &cwd)
    }

    /// Loads with an injected environment lookup and working directory (for tests and embedders).
    pub fn load_with(
        explicit: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
        cwd: &Path,
    ) -> Result<LoadedConfig, ConfigError> {
        let mut loaded = LoadedConfig::defaults();
        if let Some(path) = find_file(explicit, env, cwd) {
            loaded.apply_file(&path)?;
            loaded.file = Some(path);
        }
        for setting in SETTINGS {
            // An empty variable is treated as unset, as shells make "unset" awkward in scripts.
            if let Some(value) = env(setting.env).filter(|v| !v.is_empty()) {
                loaded.apply_str(setting.key, &value, Origin::Env(setting.env))?;
            }
        }
        Ok(loaded)
    }

    /// Sets a value from a command-line flag, parsed like the environment variable of `key`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let setting =
            SETTINGS
                .iter()
                .find(|s| s.key == key)
                .ok_or_else(|| ConfigError::UnknownSetting {
                    key: key.to_string(),
                    known: known_keys(),
                })?;
        self.apply_str(setting.key, value, Origin::Flag)
    }

    /// Where the value of `key` came from; `None` for an unknown key.
    pub fn origin(&self, key: &str) -> Option<&Origin> {
        self.origins.get(key)
    }

    fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
        if size_bytes > FILE_BYTES_MAX {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
                size_bytes,
                limit_bytes: FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        let mut flat = Vec::new();
        flatten("", &table, &mut flat);
        for (key, value) in flat {
            let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
                return Err(ConfigError::UnknownKey {
                    key,
                    path: path.to_path_buf(),
                    known: known_keys(),
                });
            };
            self.apply_toml(setting.key, value, Origin::File(path.to_path_buf()))?;
        }
        Ok(())
    }

    fn apply_toml(
        &mut self,
        key: &'static str,
        value: &toml::Value,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::InvalidValue {
            key: key.to_string(),
            origin: origin.clone(),
            message,
        };
        let parsed = match (key, value) {
            ("hash.algorithms", toml::Value::Array(items)) => {
                let mut names = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        toml::Value::String(s) => names.push(s.clone()),
                        other => {
                            return Err(invalid(format!(
                                "expected a string, got {}",
                                other.type_str()
                            )))
                        }
                    }
                }
                Value::List(names)
            }
            ("hash.algorithms", toml::Value::String(s)) => Value::List(split_list(s)),
            (_, toml::Value::String(s)) => Value::Text(s.clone()),
            (_, toml::Value::Integer(n)) => {
                let n = u64::try_from(*n).map_err(|_| invalid(format!("{n} is negative")))?;
                Value::Number(n)
            }
            (_, other) => return Err(invalid(format!("unexpected {}", other.type_str()))),
        };
        self.assign(key, parsed, origin)
    }

    fn apply_str(
        &mut self,
        key: &'static str,
        value: &str,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let parsed = match key {
            "hash.algorithms" => Value::List(split_list(value)),
            "catalog" | "download.user_agent" => Value::Text(value.to_string()),
            _ => match value.trim().parse::<u64>() {
                Ok(n) => Value::Number(n),
                Err(_) => {
                    return Err(ConfigError::InvalidValue {
                        key: key.to_string(),
                        origin,
                        message: format!("`{value}` is not a non-negative integer"),
                    })
                }
            },
        };
        self.assign(key, parsed, origin)
    }

    /// Validates a parsed value for `key` and stores it with its origin.
    fn assign(
        &mut self,
        key: &'static str,
        value: Value,
        origin: Origin,
    ) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::InvalidValue {
            key: key.to_string(),
            origin: origin.clone(),
            message,
        };
        let c = &mut self.config;
        match (key, value) {
            ("catalog", Value::Text(s)) => {
                if s.trim().is_empty() {
                    return Err(invalid("must not be empty".into()));
                }
                c.catalog = Some(s);
            }
            ("hash.algorithms", Value::List(names)) => {
                if names.is_empty() {
                    return Err(invalid("needs at least one algorithm".into()));
                }
                if names.len() > ALGORITHMS_MAX {
                    return Err(invalid(format!(
                        "{} algorithms; the limit is {ALGORITHMS_MAX}",
                        names.len()
                    )));
                }
                for name in &names {
                    // Through the list parser so `all` is accepted as it is on the command line.
                    basin_hash::parse_algo_list(name)
                        .map_err(|e| invalid(format!("`{name}`: {e}")))?;
                }
                c.hash.algorithms = names;
            }
            ("hash.jobs", Value::Number(n)) => {
                c.hash.jobs = Some(bounded(n, 1, JOBS_MAX, &invalid)? as usize)
            }
            ("download.user_agent", Value::Text(s)) => {
                // A header value: printable ASCII only, so nothing can inject another header.
                if s.is_empty()
                    || s.len() > USER_AGENT_CHARS_MAX
                    || !s.bytes().all(|b| (0x20..0x7f).contains(&b))
                {
                    return Err(invalid(format!(
                        "must be 1 to {USER_AGENT_CHARS_MAX} printable ASCII characters"
                    )));
                }
                c.download.user_agent = s;
            }
            ("download.retries_max", Value::Number(n)) => {
                c.download.retries_max = bounded(n, 0, RETRIES_MAX_MAX, &invalid)? as u32
            }
            ("download.backoff_initial_ms", Value::Number(n)) => {
                c.download.backoff_initial_ms = bounded(n, 0, DELAY_MS_MAX, &invalid)?
            }
            ("download.backoff_max_ms", Value::Number(n)) => {
                c.download.backoff_max_ms = bounded(n, 0, DELAY_MS_MAX, &invalid)?
            }
            ("download.connect_timeout_secs", Value::Number(n)) => {
                c.download.connect_timeout_secs = bounded(n, 1, TIMEOUT_SECS_MAX, &invalid)?
            }
            ("download.read_timeout_secs", Value::Number(n)) => {
                c.download.read_timeout_secs = bounded(n, 1, TIMEOUT_SECS_MAX, &invalid)?
            }
            ("download.response_bytes_max", Value::Number(n)) => {
                c.download.response_bytes_max = Some(bounded(n, 1, u64::MAX, &invalid)?)
            }
            (_, value) => {
                return Err(invalid(format!(
                    "expected {}, got {}",
                    expected_kind(key),
                    value.kind()
                )))
            }
        }
        self.origins.insert(key, origin);
        Ok(())
    }

    /// The effective configuration as TOML, each value followed by a comment naming its origin.
    /// Settings without a value are printed commented out, so the output is itself a valid file.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        match &self.file {
            Some(path) => out.push_str(&format!("# config file: {}\n", path.display())),
            None => out.push_str("# config file: none\n"),
        }
        let mut section = "";
        for setting in SETTINGS {
            let (table, name) = setting.key.split_once('.').unwrap_or(("", setting.key));
            if table != section {
                out.push_str(&format!("\n[{table}]\n"));
                section = table;
            }
            let origin = self
                .origins
                .get(setting.key)
                .cloned()
                .unwrap_or(Origin::Default);
            match self.value_toml(setting.key) {
                Some(value) => out.push_str(&format!("{name} = {value}  # {origin}\n")),
                None => out.push_str(&format!(
                    "# {name} is unset  # {origin}; {}\n",
                    setting.help
                )),
            }
        }
        out
    }

    /// The effective configuration as JSON:
    /// `{"config_file": path|null, "settings": {"hash.jobs": {"value": .., "origin": "env", "source": "BASIN_JOBS"}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut settings = serde_json::Map::new();
        for setting in SETTINGS {
            let origin = self
                .origins
                .get(setting.key)
                .cloned()
                .unwrap_or(Origin::Default);
            let source = match &origin {
                Origin::File(path) => serde_json::Value::String(path.display().to_string()),
                Origin::Env(name) => serde_json::Value::String((*name).to_string()),
                Origin::Default | Origin::Flag => serde_json::Value::Null,
            };
            settings.insert(
                setting.key.to_string(),
                serde_json::json!({
                    "value": self.value_json(setting.key),
                    "origin": origin.kind(),
                    "source": source,
                    "env": setting.env,
                }),
            );
        }
        serde_json::json!({
            "config_file": self.file.as_ref().map(|p| p.display().to_string()),
            "settings": settings,
        })
    }

    fn value_json(&self, key: &str) -> serde_json::Value {
        let c = &self.config;
        match key {
            "catalog" => serde_json::json!(c.catalog),
            "hash.algorithms" => serde_json::json!(c.hash.algorithms),
            "hash.jobs" => serde_json::json!(c.hash.jobs),
            "download.user_agent" => serde_json::json!(c.download.user_agent),
            "download.retries_max" => serde_json::json!(c.download.retries_max),
            "download.backoff_initial_ms" => serde_json::json!(c.download.backoff_initial_ms),
            "download.backoff_max_ms" => serde_json::json!(c.download.backoff_max_ms),
            "download.connect_timeout_secs" => serde_json::json!(c.download.connect_timeout_secs),
            "download.read_timeout_secs" => serde_json::json!(c.download.read_timeout_secs),
            "download.response_bytes_max" => serde_json::json!(c.download.response_bytes_max),
            _ => serde_json::Value::Null,
        }
    }

    fn value_toml(&self, key: &str) -> Option<String> {
        // serde_json's rendering of strings, integers and arrays of strings is valid TOML too.
        match self.value_json(key) {
            serde_json::Value::Null => None,
            value => Some(value.to_string().replace("\",\"", "\", \"")),
        }
    }
}

/// A value parsed from a file or the environment, before validation.
enum Value {
    Text(String),
    Number(u64),
    List(Vec<String>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Text(_) => "a string",
            Value::Number(_) => "an integer",
            Value::List(_) => "a list",
        }
    }
}

fn expected_kind(key: &str) -> &'static str {
    match key {
        "catalog" | "download.user_agent" => "a string",
        "hash.algorithms" => "a list of strings",
        _ => "a non-negative integer",
    }
}

fn bounded(
    n: u64,
    min: u64,
    max: u64,
    invalid: &dyn Fn(String) -> ConfigError,
) -> Result<u64, ConfigError> {
    if n < min || n > max {
        return Err(invalid(format!("{n} is outside {min}..={max}")));
    }
    Ok(n)
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn known_keys() -> String {
    SETTINGS
        .iter()
        .map(|s| s.key)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Flattens tables into dotted keys; non-table values are leaves (arrays included).
fn flatten<'a>(prefix: &str, table: &'a toml::Table, out: &mut Vec<(String, &'a toml::Value)>) {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            // Only known sections are descended into, so `[catalog]` as a table reports `catalog`.
            toml::Value::Table(inner)
                if SETTINGS
                    .iter()
                    .any(|s| s.key.starts_with(&format!("{key}."))) =>
            {
                flatten(&key, inner, out)
            }
            other => out.push((key, other)),
        }
    }
}

/// The config file to read, if any: explicit, `$BASIN_CONFIG`, `./basin.toml`, XDG.
fn find_file(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Option<PathBuf> {
    // Named files are returned even when missing, so reading them fails loudly.
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = env("BASIN_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = cwd.join(FILE_NAME);
    if local.is_file() {
        return Some(local);
    }
    let config_home = env("XDG_CONFIG_HOME")
        .filter(|p| Path::new(p).is_absolute())
        .map(PathBuf::from)
        .or_else(|| {
            env("HOME")
                .filter(|p| !p.is_empty())
                .map(|home| Path::new(&home).join(".config"))
        })?;
    let user = config_home.join("basin").join(FILE_NAME);
    user.is_file().then_some(user)
}
