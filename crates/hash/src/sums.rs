//! Sums-file formats: writing lines (GNU, BSD tag, JSON Lines, hashdeep) and reading them back.
//!
//! GNU lines are what `sha256sum -c` checks; BSD lines are `cksum --tag`'s; hashdeep files carry
//! the `%%%% HASHDEEP-1.0` header that `hashdeep -a -k` audits against.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::str::FromStr;

use crate::{AlgoSpec, Algorithm, Digest, Error};

/// Output format of sums lines.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SumsFormat {
    /// `<hex>  <path>`: one algorithm per file, what `sha256sum -c` reads.
    Gnu,
    /// `SHA256 (<path>) = <hex>`: one line per algorithm.
    Bsd,
    /// One JSON object per file: `{"path":..,"size":..,"sha256":"<hex>"}`.
    Json,
    /// hashdeep's CSV with its header: `size,md5,sha256,filename`.
    Hashdeep,
}

impl FromStr for SumsFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.to_ascii_lowercase().as_str() {
            "gnu" | "sha256sum" | "coreutils" => Ok(SumsFormat::Gnu),
            "bsd" | "tag" => Ok(SumsFormat::Bsd),
            "json" | "jsonl" => Ok(SumsFormat::Json),
            "hashdeep" => Ok(SumsFormat::Hashdeep),
            _ => Err(Error::UnknownFormat {
                name: s.to_string(),
            }),
        }
    }
}

/// Algorithms hashdeep knows (besides tiger and whirlpool, which basin does not compute).
const HASHDEEP_ALGORITHMS: [Algorithm; 3] = [Algorithm::Md5, Algorithm::Sha1, Algorithm::Sha256];

impl SumsFormat {
    /// Refuses algorithm sets a format cannot carry, before any file is read.
    pub fn check_algorithms(self, specs: &[AlgoSpec]) -> Result<(), Error> {
        match self {
            SumsFormat::Gnu if specs.len() != 1 => Err(Error::FormatAlgorithms {
                format: "gnu",
                reason: "a GNU sums file holds one algorithm; use --format bsd, json or hashdeep for several".into(),
            }),
            SumsFormat::Hashdeep => {
                for spec in specs {
                    if !HASHDEEP_ALGORITHMS.contains(&spec.algorithm) {
                        return Err(Error::FormatAlgorithms {
                            format: "hashdeep",
                            reason: format!("hashdeep files hold md5, sha1 and sha256 only, not {spec}"),
                        });
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Lines printed before the first file (hashdeep's header), empty for the other formats.
    pub fn header(self, specs: &[AlgoSpec], invoked_from: &str, command_line: &str) -> String {
        match self {
            SumsFormat::Hashdeep => {
                let mut s = String::from("%%%% HASHDEEP-1.0\n%%%% size,");
                for spec in specs {
                    s.push_str(spec.algorithm.name());
                    s.push(',');
                }
                s.push_str("filename\n");
                let _ = writeln!(s, "## Invoked from: {invoked_from}");
                let _ = writeln!(s, "## $ {command_line}");
                s.push_str("##\n");
                s
            }
            _ => String::new(),
        }
    }

    /// The line(s) for one file, newline-terminated.
    pub fn format_entry(self, path: &str, size_bytes: u64, digests: &[Digest]) -> String {
        let mut s = String::new();
        match self {
            SumsFormat::Gnu => {
                for d in digests {
                    let (escaped, name) = gnu_escape(path);
                    let _ = writeln!(
                        s,
                        "{}{}  {}",
                        if escaped { "\\" } else { "" },
                        d.to_hex(),
                        name
                    );
                }
            }
            SumsFormat::Bsd => {
                for d in digests {
                    let (escaped, name) = gnu_escape(path);
                    let _ = writeln!(
                        s,
                        "{}{} ({}) = {}",
                        if escaped { "\\" } else { "" },
                        bsd_tag(&d.spec),
                        name,
                        d.to_hex()
                    );
                }
            }
            SumsFormat::Json => {
                let mut object = serde_json::Map::new();
                object.insert("path".into(), path.into());
                object.insert("size".into(), size_bytes.into());
                for d in digests {
                    object.insert(d.spec.to_string(), d.to_hex().into());
                }
                s = serde_json::Value::Object(object).to_string();
                s.push('\n');
            }
            SumsFormat::Hashdeep => {
                let _ = write!(s, "{size_bytes},");
                for d in digests {
                    let _ = write!(s, "{},", d.to_hex());
                }
                s.push_str(path);
                s.push('\n');
            }
        }
        s
    }
}

fn bsd_tag(spec: &AlgoSpec) -> String {
    if spec.output_len_bytes == spec.algorithm.default_output_len_bytes() {
        spec.algorithm.bsd_tag().to_string()
    } else {
        format!("{}:{}", spec.algorithm.bsd_tag(), spec.output_len_bytes)
    }
}

/// GNU coreutils' escaping: a name holding `\` or a newline is printed with those escaped and the
/// line prefixed by `\`.
fn gnu_escape(path: &str) -> (bool, String) {
    if !path.contains(['\\', '\n', '\r']) {
        return (false, path.to_string());
    }
    (
        true,
        path.replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    )
}

fn gnu_unescape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// One file's expected digests, as read from a sums file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SumsEntry {
    pub path: String,
    pub size_bytes: Option<u64>,
    pub digests: Vec<Digest>,
}

/// Longest sums line accepted: paths are bounded by PATH_MAX-like limits, digests by the XOF limit.
const SUMS_LINE_MAX_BYTES: usize = 64 * 1024;

/// Reads a sums file in any format basin writes (detected from its content). GNU lines carry no
/// algorithm name, so their algorithm is `gnu_algorithm` or, if absent, guessed from the digest
/// length (md5, sha1, sha224, sha256, sha384, sha512). Entries keep file order; lines for the same
/// path (BSD files with several algorithms) are merged.
pub fn parse_sums(text: &str, gnu_algorithm: Option<AlgoSpec>) -> Result<Vec<SumsEntry>, Error> {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.starts_with("%%%% HASHDEEP") {
        return parse_hashdeep(text);
    }
    let mut entries: Vec<SumsEntry> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |reason: &str| Error::SumsLine {
            line: line_no,
            reason: reason.to_string(),
        };
        if raw.len() > SUMS_LINE_MAX_BYTES {
            return Err(bad("line too long"));
        }
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (path, size_bytes, digests) = if line.starts_with('{') {
            parse_json_line(line).map_err(|r| bad(&r))?
        } else {
            let (escaped, body) = match line.strip_prefix('\\') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            let unescape = |s: &str| {
                if escaped {
                    gnu_unescape(s)
                } else {
                    s.to_string()
                }
            };
            let bsd = body.split_once(" (").and_then(|(tag, rest)| {
                Some((tag.parse::<AlgoSpec>().ok()?, rest.rsplit_once(") = ")?))
            });
            if let Some((spec, (name, hex_digest))) = bsd {
                let bytes = decode_hex(hex_digest, spec).map_err(|r| bad(&r))?;
                (unescape(name), None, vec![Digest { spec, bytes }])
            } else {
                let (hex_digest, rest) = body
                    .split_once(' ')
                    .ok_or_else(|| bad("expected '<hex>  <path>'"))?;
                let name = rest
                    .strip_prefix(' ')
                    .or_else(|| rest.strip_prefix('*'))
                    .ok_or_else(|| bad("expected two spaces or ' *' after the digest"))?;
                let spec = match gnu_algorithm {
                    Some(spec) => spec,
                    None => guess_by_length(hex_digest.len() / 2).ok_or_else(|| {
                        bad("cannot tell the algorithm from the digest length; pass --algo")
                    })?,
                };
                let bytes = decode_hex(hex_digest, spec).map_err(|r| bad(&r))?;
                (unescape(name), None, vec![Digest { spec, bytes }])
            }
        };
        match index.get(&path) {
            Some(&i) => {
                let entry = &mut entries[i];
                entry.size_bytes = entry.size_bytes.or(size_bytes);
                for d in digests {
                    if !entry.digests.iter().any(|e| e.spec == d.spec) {
                        entry.digests.push(d);
                    }
                }
            }
            None => {
                index.insert(path.clone(), entries.len());
                entries.push(SumsEntry {
                    path,
                    size_bytes,
                    digests,
                });
            }
        }
    }
    Ok(entries)
}

fn guess_by_length(len_bytes: usize) -> Option<AlgoSpec> {
    let algorithm = match len_bytes {
        16 => Algorithm::Md5,
        20 => Algorithm::Sha1,
        28 => Algorithm::Sha224,
        32 => Algorithm::Sha256,
        48 => Algorithm::Sha384,
        64 => Algorithm::Sha512,
        _ => return None,
    };
    Some(AlgoSpec::new(algorithm))
}

fn decode_hex(hex_digest: &str, spec: AlgoSpec) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(hex_digest.trim()).map_err(|e| format!("bad hex digest: {e}"))?;
    if bytes.len() != spec.output_len_bytes {
        return Err(format!(
            "{spec} digest has {} bytes, expected {}",
            bytes.len(),
            spec.output_len_bytes
        ));
    }
    Ok(bytes)
}

type ParsedLine = (String, Option<u64>, Vec<Digest>);

fn parse_json_line(line: &str) -> Result<ParsedLine, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("bad JSON: {e}"))?;
    let object = value.as_object().ok_or("JSON line is not an object")?;
    let path = object
        .get("path")
        .and_then(|p| p.as_str())
        .ok_or("JSON line without \"path\"")?
        .to_string();
    let size_bytes = object.get("size").and_then(|s| s.as_u64());
    let mut digests = Vec::new();
    for (key, value) in object {
        if matches!(key.as_str(), "path" | "size" | "error") {
            continue;
        }
        let Ok(spec) = key.parse::<AlgoSpec>() else {
            continue;
        };
        let hex_digest = value
            .as_str()
            .ok_or_else(|| format!("{key} is not a string"))?;
        digests.push(Digest {
            spec,
            bytes: decode_hex(hex_digest, spec)?,
        });
    }
    Ok((path, size_bytes, digests))
}

fn parse_hashdeep(text: &str) -> Result<Vec<SumsEntry>, Error> {
    let mut columns: Option<Vec<AlgoSpec>> = None;
    let mut entries = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line_no = n + 1;
        let bad = |reason: &str| Error::SumsLine {
            line: line_no,
            reason: reason.to_string(),
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() || line.starts_with("##") || line.starts_with("%%%% HASHDEEP") {
            continue;
        }
        if let Some(header) = line.strip_prefix("%%%% ") {
            let names: Vec<&str> = header.split(',').collect();
            if names.first() != Some(&"size") || names.last() != Some(&"filename") {
                return Err(bad("hashdeep header must be size,...,filename"));
            }
            let specs = names[1..names.len() - 1]
                .iter()
                .map(|n| {
                    n.parse::<AlgoSpec>()
                        .map_err(|_| bad(&format!("hashdeep algorithm {n:?} is not supported")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            columns = Some(specs);
            continue;
        }
        let specs = columns
            .as_ref()
            .ok_or_else(|| bad("hashdeep line before the %%%% header"))?;
        let fields: Vec<&str> = line.splitn(specs.len() + 2, ',').collect();
        if fields.len() != specs.len() + 2 {
            return Err(bad("wrong number of hashdeep fields"));
        }
        let size_bytes: u64 = fields[0].parse().map_err(|_| bad("bad size"))?;
        let digests = specs
            .iter()
            .zip(&fields[1..])
            .map(|(spec, hex_digest)| {
                decode_hex(hex_digest, *spec).map(|bytes| Digest { spec: *spec, bytes })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|r| bad(&r))?;
        entries.push(SumsEntry {
            path: fields[specs.len() + 1].to_string(),
            size_bytes: Some(size_bytes),
            digests,
        });
    }
    Ok(entries)
}
