//! Hashing the contents of compressed files and archives without extracting them.
//!
//! [`hash_members`] streams each member of a `.zip` or `.tar` (plain, `.gz`, `.bz2`, `.xz`, `.zst`),
//! or the single decompressed stream of a `.gz`/`.bz2`/`.xz`/`.zst` file, through one
//! [`MultiHasher`], in constant memory: nothing is written to disk and no member is buffered whole.
//!
//! Invariants:
//! - Decompressed bytes are bounded ([`ArchiveLimits`]): per member, per archive and in member count,
//!   so a decompression bomb ends with [`ArchiveError::MemberTooLarge`] or
//!   [`ArchiveError::TotalTooLarge`] instead of spinning for hours.
//! - Reported member paths are normalised: `/`-separated, no empty, `.` or `..` components, never
//!   absolute (`../../etc/passwd` is reported as `etc/passwd`).
//! - Only regular file members are hashed. Directories, symlinks, hard links and device entries
//!   have no content of their own and are skipped.
//!
//! Deliberately absent: archives nested in archives are hashed as members, not opened; encrypted
//! zip members are an error; formats are chosen by file name, not sniffed.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use basin_hash::{AlgoSpec, Digest, MultiHasher};

/// The kinds of file [`hash_members`] can look into, chosen by file name suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveKind {
    Gz,
    Bz2,
    Xz,
    Zst,
    Zip,
    Tar,
    TarGz,
    TarBz2,
    TarXz,
    TarZst,
}

/// Suffixes, longest first so `.tar.gz` wins over `.gz`.
const SUFFIXES: &[(&str, ArchiveKind)] = &[
    (".tar.gz", ArchiveKind::TarGz),
    (".tar.bz2", ArchiveKind::TarBz2),
    (".tar.xz", ArchiveKind::TarXz),
    (".tar.zst", ArchiveKind::TarZst),
    (".tgz", ArchiveKind::TarGz),
    (".tbz2", ArchiveKind::TarBz2),
    (".tbz", ArchiveKind::TarBz2),
    (".txz", ArchiveKind::TarXz),
    (".tzst", ArchiveKind::TarZst),
    (".tar", ArchiveKind::Tar),
    (".zip", ArchiveKind::Zip),
    (".gz", ArchiveKind::Gz),
    (".bz2", ArchiveKind::Bz2),
    (".xz", ArchiveKind::Xz),
    (".zst", ArchiveKind::Zst),
];

/// The archive kind of `path` by its name (case-insensitive), or `None` for other files.
pub fn archive_kind(path: &Path) -> Option<ArchiveKind> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    SUFFIXES
        .iter()
        .find(|(suffix, _)| name.len() > suffix.len() && name.ends_with(suffix))
        .map(|&(_, kind)| kind)
}

/// Bounds on what one archive may expand to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Decompressed bytes of one member.
    pub member_bytes_max: u64,
    /// Decompressed bytes of all members of one archive together.
    pub total_bytes_max: u64,
    /// Entries (of any type) in one archive.
    pub members_max: u64,
}

impl Default for ArchiveLimits {
    /// Generous for real data (64 GiB a member, 1 TiB an archive, ten million entries) yet finite,
    /// so a bomb ends with an error.
    fn default() -> Self {
        ArchiveLimits {
            member_bytes_max: 64 << 30,
            total_bytes_max: 1 << 40,
            members_max: 10_000_000,
        }
    }
}

/// One hashed member of an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMember {
    /// `<archive path as given>!<member path>`; for a single compressed stream the member is the
    /// archive's file name without its compression suffix.
    pub path: String,
    /// Decompressed size in bytes.
    pub size: u64,
    /// One digest per requested spec, in the order of the specs.
    pub digests: Vec<Digest>,
}

/// Errors while reading an archive.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    #[error("{path} is not a supported archive or compressed file")]
    NotAnArchive { path: PathBuf },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot read {archive}{}: {source}", member_suffix(member))]
    Read {
        archive: PathBuf,
        member: Option<String>,
        source: io::Error,
    },
    #[error("{archive} is not a valid zip archive: {message}")]
    Zip {
        archive: PathBuf,
        member: Option<String>,
        message: String,
    },
    #[error("{archive}!{member} is encrypted; encrypted members are not hashed")]
    Encrypted { archive: PathBuf, member: String },
    #[error("{archive}!{member} expands to more than {limit_bytes} bytes")]
    MemberTooLarge {
        archive: PathBuf,
        member: String,
        limit_bytes: u64,
    },
    #[error("{archive} expands to more than {limit_bytes} bytes in total")]
    TotalTooLarge { archive: PathBuf, limit_bytes: u64 },
    #[error("{archive} has more than {limit} entries")]
    TooManyMembers { archive: PathBuf, limit: u64 },
    /// An error raised by the caller's visitor, passed through unchanged.
    #[error("{0}")]
    Visit(Box<dyn std::error::Error + Send + Sync>),
}

fn member_suffix(member: &Option<String>) -> String {
    member.as_ref().map(|m| format!("!{m}")).unwrap_or_default()
}

/// Hashes every regular-file member of the archive or compressed file at `path` with default
/// limits, calling `visit` once per member in archive order.
pub fn hash_members(
    path: &Path,
    specs: &[AlgoSpec],
    visit: &mut dyn FnMut(ArchiveMember) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    hash_members_with(path, specs, &ArchiveLimits::default(), visit)
}

/// [`hash_members`] with explicit limits.
pub fn hash_members_with(
    path: &Path,
    specs: &[AlgoSpec],
    limits: &ArchiveLimits,
    visit: &mut dyn FnMut(ArchiveMember) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let kind = archive_kind(path).ok_or_else(|| ArchiveError::NotAnArchive {
        path: path.to_path_buf(),
    })?;
    let file = File::open(path).map_err(|source| ArchiveError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut walk = Walk {
        archive: path,
        specs,
        limits,
        visit,
        total_bytes: 0,
        entries: 0,
    };
    match kind {
        ArchiveKind::Zip => walk.zip(file),
        ArchiveKind::Tar => walk.tar(BufReader::new(file)),
        ArchiveKind::TarGz => walk.tar(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        ArchiveKind::TarBz2 => walk.tar(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        ArchiveKind::TarXz => walk.tar(liblzma::read::XzDecoder::new_multi_decoder(
            BufReader::new(file),
        )),
        ArchiveKind::TarZst => walk.tar(zstd_reader(path, file)?),
        ArchiveKind::Gz => walk.stream(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        ArchiveKind::Bz2 => walk.stream(bzip2::read::MultiBzDecoder::new(BufReader::new(file))),
        ArchiveKind::Xz => walk.stream(liblzma::read::XzDecoder::new_multi_decoder(
            BufReader::new(file),
        )),
        ArchiveKind::Zst => walk.stream(zstd_reader(path, file)?),
    }
}

fn zstd_reader(path: &Path, file: File) -> Result<impl Read, ArchiveError> {
    zstd::stream::read::Decoder::new(file).map_err(|source| ArchiveError::Read {
        archive: path.to_path_buf(),
        member: None,
        source,
    })
}

/// State of one pass over an archive: the limits and what has been spent of them.
struct Walk<'a> {
    archive: &'a Path,
    specs: &'a [AlgoSpec],
    limits: &'a ArchiveLimits,
    visit: &'a mut dyn FnMut(ArchiveMember) -> Result<(), ArchiveError>,
    total_bytes: u64,
    entries: u64,
}

/// Why hashing one member stopped early.
enum HashStop {
    Io(io::Error),
    MemberTooLarge,
    TotalTooLarge,
}

const READ_BUFFER_BYTES: usize = 256 * 1024;

impl Walk<'_> {
    fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.members_max {
            return Err(ArchiveError::TooManyMembers {
                archive: self.archive.to_path_buf(),
                limit: self.limits.members_max,
            });
        }
        Ok(())
    }

    /// Hashes one member's bytes under the limits, then hands it to the visitor.
    fn member(&mut self, member: String, reader: &mut dyn Read) -> Result<(), ArchiveError> {
        let mut hasher = MultiHasher::new(self.specs);
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        let mut size = 0u64;
        let stop = loop {
            let n = match reader.read(&mut buffer) {
                Ok(0) => break None,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Some(HashStop::Io(e)),
            };
            size += n as u64;
            self.total_bytes += n as u64;
            if size > self.limits.member_bytes_max {
                break Some(HashStop::MemberTooLarge);
            }
            if self.total_bytes > self.limits.total_bytes_max {
                break Some(HashStop::TotalTooLarge);
            }
            hasher.update(&buffer[..n]);
        };
        let archive = self.archive.to_path_buf();
        match stop {
            None => {}
            Some(HashStop::Io(source)) => {
                return Err(ArchiveError::Read {
                    archive,
                    member: Some(member),
                    source,
                })
            }
            Some(HashStop::MemberTooLarge) => {
                return Err(ArchiveError::MemberTooLarge {
                    archive,
                    member,
                    limit_bytes: self.limits.member_bytes_max,
                })
            }
            Some(HashStop::TotalTooLarge) => {
                return Err(ArchiveError::TotalTooLarge {
                    archive,
                    limit_bytes: self.limits.total_bytes_max,
                })
            }
        }
        let path = format!("{}!{}", self.archive.to_string_lossy(), member);
        (self.visit)(ArchiveMember {
            path,
            size,
            digests: hasher.finalize(),
        })
    }

    /// A single compressed stream: one member named after the file without its suffix.
    fn stream(&mut self, mut reader: impl Read) -> Result<(), ArchiveError> {
        self.count_entry()?;
        let name = self
            .archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = match name.rfind('.') {
            Some(dot) if dot > 0 => &name[..dot],
            _ => name.as_str(),
        };
        let member = normalise_member_path(stem).unwrap_or_else(|| "data".to_string());
        self.member(member, &mut reader)
    }

    fn tar(&mut self, reader: impl Read) -> Result<(), ArchiveError> {
        let archive_path = self.archive.to_path_buf();
        let read_err = |member: Option<String>, source: io::Error| ArchiveError::Read {
            archive: archive_path.clone(),
            member,
            source,
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| read_err(None, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| read_err(None, e))?;
            self.count_entry()?;
            let kind = entry.header().entry_type();
            if !(kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse()) {
                continue;
            }
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(member) = normalise_member_path(&raw_name) else {
                continue;
            };
            self.member(member, &mut entry)?;
        }
        Ok(())
    }

    fn zip(&mut self, file: File) -> Result<(), ArchiveError> {
        let archive_path = self.archive.to_path_buf();
        let zip_err = |member: Option<String>, e: zip::result::ZipError| match e {
            zip::result::ZipError::Io(source) => ArchiveError::Read {
                archive: archive_path.clone(),
                member,
                source,
            },
            other => ArchiveError::Zip {
                archive: archive_path.clone(),
                member,
                message: other.to_string(),
            },
        };
        let mut archive =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|e| zip_err(None, e))?;
        for index in 0..archive.len() {
            self.count_entry()?;
            let raw_name = archive
                .name_for_index(index)
                .and_then(Result::ok)
                .map(|name| name.into_owned());
            let entry = match archive.by_index(index) {
                Ok(entry) => entry,
                Err(zip::result::ZipError::UnsupportedArchive(message))
                    if message == zip::result::ZipError::PASSWORD_REQUIRED =>
                {
                    let member = raw_name.unwrap_or_default();
                    return Err(ArchiveError::Encrypted {
                        archive: archive_path.clone(),
                        member,
                    });
                }
                Err(e) => return Err(zip_err(raw_name, e)),
            };
            if !entry.is_file() || entry.is_symlink() {
                continue;
            }
            let Some(member) = raw_name.as_deref().and_then(normalise_member_path) else {
                continue;
            };
            let mut entry = entry;
            // The zip reader checks each member's CRC-32 when it reaches the end, so a corrupt
            // member surfaces as a read error here rather than as a wrong digest.
            self.member(member, &mut entry)?;
        }
        Ok(())
    }
}

/// `/`-separated, relative, without `.`/`..`/empty components; `..` pops (never above the root).
/// `None` when nothing is left (a name like `/` or `..`).
pub fn normalise_member_path(raw: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in raw.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            // A Windows drive prefix (`C:`) would make the path absolute on Windows.
            p if parts.is_empty() && p.len() == 2 && p.ends_with(':') => {}
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_suffix() {
        let cases = [
            ("a.tar.gz", Some(ArchiveKind::TarGz)),
            ("A.TGZ", Some(ArchiveKind::TarGz)),
            ("a.tar.zst", Some(ArchiveKind::TarZst)),
            ("a.tar", Some(ArchiveKind::Tar)),
            ("a.gz", Some(ArchiveKind::Gz)),
            ("a.zip", Some(ArchiveKind::Zip)),
            ("a.txt", None),
            (".gz", None),
            ("dir.zip/file", None),
        ];
        for (name, want) in cases {
            assert_eq!(archive_kind(Path::new(name)), want, "{name}");
        }
    }

    #[test]
    fn member_paths_are_confined() {
        assert_eq!(
            normalise_member_path("../../etc/passwd").as_deref(),
            Some("etc/passwd")
        );
        assert_eq!(
            normalise_member_path("/abs/./x//y").as_deref(),
            Some("abs/x/y")
        );
        assert_eq!(normalise_member_path("a/b/../c").as_deref(), Some("a/c"));
        assert_eq!(
            normalise_member_path("C:\\win\\file").as_deref(),
            Some("win/file")
        );
        assert_eq!(normalise_member_path("../"), None);
        assert_eq!(normalise_member_path("/"), None);
    }
}
