//! Parsers for command-line values (keys, sizes, compression) and for key lists read from files.
//! clap wraps their errors with the name of the offending argument.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::Context;
use basin_store::{Compression, HashAlgorithm, Key};

/// Bytes in the largest size accepted for a pack size target (1 PiB): beyond it a typo is likelier
/// than intent.
const SIZE_BYTES_MAX: u64 = 1 << 50;

pub fn key(text: &str) -> Result<Key, String> {
    text.trim().parse::<Key>().map_err(|e| e.to_string())
}

pub fn hash_algorithm(text: &str) -> Result<HashAlgorithm, String> {
    text.parse()
}

pub fn compression(text: &str) -> Result<Compression, String> {
    text.parse()
}

/// A hex key prefix, lowercased; at most a whole key.
pub fn key_prefix(text: &str) -> Result<String, String> {
    let prefix = text.trim().to_ascii_lowercase();
    if prefix.is_empty() {
        return Err("empty prefix (omit --prefix to pack everything)".into());
    }
    if prefix.len() > basin_store::KEY_BYTES * 2 {
        return Err(format!(
            "prefix of {} digits is longer than a key ({})",
            prefix.len(),
            basin_store::KEY_BYTES * 2
        ));
    }
    if let Some(bad) = prefix.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("'{bad}' is not a hex digit"));
    }
    Ok(prefix)
}

/// A fraction in 0.0..=1.0.
pub fn ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{value} is outside 0.0..=1.0"));
    }
    Ok(value)
}

/// A size such as `4GiB`, `512MiB`, `1.5G`, `100MB`, `64k` or `1048576`. Binary units (KiB, K,
/// k) are powers of 1024, decimal units (KB, MB) powers of 1000, as in `dd` and `du`.
pub fn size_bytes(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" | "kiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
            "unknown size unit '{other}' in '{text}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
        ))
        }
    };
    let bad_number = || format!("'{text}' is not a size (examples: 4GiB, 512MiB, 1048576)");
    let bytes = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad_number())?;
        (value * multiplier as f64).round()
    } else {
        let value: u64 = number.parse().map_err(|_| bad_number())?;
        value
            .checked_mul(multiplier)
            .map_or(f64::INFINITY, |b| b as f64)
    };
    if bytes < 1.0 {
        return Err(format!("size '{text}' must be at least 1 byte"));
    }
    if bytes > SIZE_BYTES_MAX as f64 {
        return Err(format!("size '{text}' is larger than the 1 PiB limit"));
    }
    Ok(bytes as u64)
}

/// Keys listed one per line in `path` (`-` = stdin). Only the first word of a line counts, so the
/// output of `basin put`, `basin import` and `basin ls` can be fed back; blank lines and lines
/// starting with `#` are skipped. A bad line is an error naming the file and line number.
pub fn keys_from(path: &Path) -> anyhow::Result<Vec<Key>> {
    let reader: Box<dyn Read> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(path)
                .with_context(|| format!("open key list {}", path.display()))?,
        )
    };
    let mut keys = Vec::new();
    for (index, line) in BufReader::new(reader).lines().enumerate() {
        let line = line.with_context(|| format!("read key list {}", path.display()))?;
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        if word.starts_with('#') {
            continue;
        }
        let key = word
            .parse::<Key>()
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), index + 1))?;
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(size_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(size_bytes("4G"), Ok(4 << 30));
        assert_eq!(size_bytes("1.5KiB"), Ok(1536));
        assert_eq!(size_bytes("100MB"), Ok(100_000_000));
        assert_eq!(size_bytes("1048576"), Ok(1 << 20));
        assert_eq!(size_bytes(" 64k "), Ok(65536));
        for bad in [
            "",
            "GiB",
            "0",
            "4 parsecs",
            "1.2.3M",
            "2PiB",
            "99999999999999999999999",
        ] {
            assert!(size_bytes(bad).is_err(), "'{bad}' should be rejected");
        }
    }

    #[test]
    fn prefixes_and_ratios() {
        assert_eq!(key_prefix("AB0").as_deref(), Ok("ab0"));
        assert!(key_prefix("").is_err(), "empty prefix");
        assert!(key_prefix("xz").is_err(), "non-hex prefix");
        assert!(key_prefix(&"a".repeat(65)).is_err(), "too long");
        assert_eq!(ratio("0.25"), Ok(0.25));
        assert!(ratio("1.5").is_err(), "above 1");
        assert!(ratio("-0.1").is_err(), "below 0");
    }
}
