//! The store's config file (`basin-store.toml`): written once at init, read at every open.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::key::HashAlgorithm;

/// Name of the config file inside a store folder.
pub const CONFIG_FILE: &str = "basin-store.toml";

/// Store layout version this library writes and reads. Bump on any change of the folder layout,
/// index schema or pack format, and add a line to docs/format.md's version log.
pub const STORE_FORMAT_VERSION: u32 = 3;
/// The first format whose index has `gone` (deleted keys whose rows remain until maintenance).
pub(crate) const GONE_FORMAT_VERSION: u32 = 3;

/// Default pack size target: a pack is sealed once it reaches this size.
pub const PACK_SIZE_TARGET_BYTES_DEFAULT: u64 = 4 << 30;

/// How objects are compressed when they are written into packs. Loose objects are never compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Store raw bytes.
    None,
    /// zstd at this level (1..=22), always.
    Zstd { level: i32 },
    /// zstd at this level when a sample says it saves at least 10 %; raw otherwise.
    Auto { level: i32 },
}

impl Compression {
    pub const DEFAULT_LEVEL: i32 = 3;
}

impl FromStr for Compression {
    type Err = String;
    /// `none`, `zstd`, `zstd:LEVEL`, `auto`, `auto:LEVEL`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, level) = match s.split_once(':') {
            Some((n, l)) => {
                let level: i32 = l
                    .parse()
                    .map_err(|_| format!("bad compression level '{l}' in '{s}'"))?;
                if !(1..=22).contains(&level) {
                    return Err(format!("compression level {level} out of range 1..=22"));
                }
                (n, Some(level))
            }
            None => (s, None),
        };
        let level = level.unwrap_or(Compression::DEFAULT_LEVEL);
        match name {
            "none" if s == "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd { level }),
            "auto" => Ok(Compression::Auto { level }),
            _ => Err(format!(
                "unknown compression '{s}' (expected none, zstd[:LEVEL] or auto[:LEVEL])"
            )),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
            Compression::Auto { level } => write!(f, "auto:{level}"),
        }
    }
}

/// Options for creating a store. Everything is explicit; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub hash: HashAlgorithm,
    /// Hex digits of the key used as a subfolder of `loose/` (0 = flat).
    pub loose_prefix_len: u8,
    pub pack_size_target_bytes: u64,
    pub compression: Compression,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            hash: HashAlgorithm::Blake3,
            loose_prefix_len: 2,
            pack_size_target_bytes: PACK_SIZE_TARGET_BYTES_DEFAULT,
            compression: Compression::None,
        }
    }
}

/// The settings of an existing store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub format_version: u32,
    /// Random id given at init (32 lowercase hex digits).
    pub container_id: String,
    pub hash: HashAlgorithm,
    pub loose_prefix_len: u8,
    pub pack_size_target_bytes: u64,
    pub compression: Compression,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    format_version: u32,
    container_id: String,
    hash: String,
    loose_prefix_len: u8,
    pack_size_target_bytes: u64,
    compression: String,
}

impl StoreConfig {
    pub(crate) fn new(opts: &InitOptions) -> Result<StoreConfig> {
        if opts.loose_prefix_len > 8 {
            return Err(Error::InvalidArgument(format!(
                "loose prefix length {} is too long (0..=8)",
                opts.loose_prefix_len
            )));
        }
        if opts.pack_size_target_bytes == 0 {
            return Err(Error::InvalidArgument(
                "pack size target must be > 0".into(),
            ));
        }
        Ok(StoreConfig {
            format_version: STORE_FORMAT_VERSION,
            container_id: uuid::Uuid::new_v4().simple().to_string(),
            hash: opts.hash,
            loose_prefix_len: opts.loose_prefix_len,
            pack_size_target_bytes: opts.pack_size_target_bytes,
            compression: opts.compression,
        })
    }

    /// The container id as 16 bytes (stored in every pack header).
    pub fn container_id_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        // Validated at load time; a failure here would be a bug in `load`.
        let _ = hex::decode_to_slice(&self.container_id, &mut b);
        b
    }

    pub(crate) fn to_toml(&self) -> String {
        let f = ConfigFile {
            format_version: self.format_version,
            container_id: self.container_id.clone(),
            hash: self.hash.name().to_string(),
            loose_prefix_len: self.loose_prefix_len,
            pack_size_target_bytes: self.pack_size_target_bytes,
            compression: self.compression.to_string(),
        };
        let body = toml::to_string(&f).unwrap_or_default();
        format!("# basin object store. Written once at init; do not edit.\n{body}")
    }

    pub(crate) fn load(dir: &Path) -> Result<StoreConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAStore {
                    path: dir.to_path_buf(),
                    reason: format!("no {CONFIG_FILE}"),
                })
            }
            Err(e) => return Err(Error::io("read", &path, e)),
        };
        // Check the version before the rest so a newer store says "newer", not "unknown key".
        let raw: toml::Table = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Some(v) = raw.get("format_version").and_then(|v| v.as_integer()) {
            if v > STORE_FORMAT_VERSION as i64 {
                return Err(Error::NewerFormat {
                    path,
                    found: v as u32,
                    supported: STORE_FORMAT_VERSION,
                });
            }
        }
        let f: ConfigFile = toml::from_str(&text).map_err(|e| Error::Config {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let bad = |message: String| Error::Config {
            path: path.clone(),
            message,
        };
        let hash = f.hash.parse().map_err(bad)?;
        let compression = f.compression.parse().map_err(bad)?;
        let mut id = [0u8; 16];
        if f.container_id.len() != 32 || hex::decode_to_slice(&f.container_id, &mut id).is_err() {
            return Err(bad(format!(
                "container_id '{}' is not 32 hex digits",
                f.container_id
            )));
        }
        if f.pack_size_target_bytes == 0 || f.loose_prefix_len > 8 {
            return Err(bad(
                "pack_size_target_bytes must be > 0 and loose_prefix_len <= 8".into(),
            ));
        }
        Ok(StoreConfig {
            format_version: f.format_version,
            container_id: f.container_id,
            hash,
            loose_prefix_len: f.loose_prefix_len,
            pack_size_target_bytes: f.pack_size_target_bytes,
            compression,
        })
    }

    pub(crate) fn write_new(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        crate::fsutil::write_durable(&path, self.to_toml().as_bytes())?;
        Ok(())
    }
}

pub(crate) fn ensure_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).at("create folder", path)
}
