// SPDX-License-Identifier: MIT
//! KIWI kis archives: a tar (plain, gzip, xz or zstd) holding the rootfs, `*.kernel`,
//! `*.sha256` and optionally `*.initrd` (and `*.append`, ignored). The compression is told
//! by the archive's first bytes, not by its name.
//!
//! Members are checked before anything is written: only regular files at the top level,
//! exactly one kernel, one checksum and one rootfs. A member without an extension or a
//! second candidate rootfs is reported by name (the original panicked on the former).
//!
//! Nothing in an archive is trusted to be small: the members together stop at the size
//! limit while they are written, a compressed archive at its expansion ratio
//! ([`super::expansion`]), the rootfs at the size its checksum record declares when the
//! record comes before it, a checksum record at 4 KiB, the archive at 64 members, its tar
//! records at 64 KiB ([`super::framing`]) and the xz decoder at 1 GiB of memory; the modes
//! of the archive are not kept ([`super::limited`]). The record only ever lowers a bound:
//! it comes from the same hostile archive.

use std::cell::Cell;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use super::expansion::{Counted, Expansion, Ratio};
use super::fetch::{fetch, Source};
use super::framing::{Framing, Violation};
use super::limited::{self, CopyError, FileMode};
use super::{checksum, io, Policy, PullError};

/// Most entries an archive may have (a kis has four or five).
const MAX_MEMBERS: usize = 64;
/// Most bytes of a checksum record (`<sha256> <blocks> <blocksize>` is under 100).
const RECORD_MAX: u64 = 4096;
/// Tar headers, padding and skipped data allowed on top of the members' bytes.
const FRAMING_ALLOWANCE: u64 = 64 << 20;
/// Memory the xz decoder may use (`xz -9` archives need 65 MiB).
const XZ_MEMLIMIT: u64 = 1 << 30;
/// Bytes a rootfs may have past the `blocks * blocksize` its record covers (KIWI pads the
/// image file; the padding is not checked, so it is kept small).
const PADDING_MAX: u64 = 1 << 20;

/// Downloads and unpacks `source` into `dir` as `rootfs`, `kernel`, `checksum` (and
/// `initrd`) within `policy`, and verifies the checksum.
pub fn pull(source: &Source, dir: &Path, name: &str, policy: &Policy) -> Result<(), PullError> {
    let archive = dir.join(".kis-archive");
    fetch(source, &archive, policy)?;
    unpack(&archive, source.describe(), dir, policy)?;
    std::fs::remove_file(&archive).map_err(io("remove", &archive))?;
    for required in ["rootfs", "kernel", "checksum"] {
        if !dir.join(required).is_file() {
            return Err(PullError::NotKis {
                archive: source.describe(),
                reason: format!("it has no {required}"),
            });
        }
    }
    verify(dir, name)
}

/// Unpacks the downloaded `archive` (from `origin`, as errors name it) into `dir` within
/// `policy`.
pub(crate) fn unpack(
    archive: &Path,
    origin: String,
    dir: &Path,
    policy: &Policy,
) -> Result<(), PullError> {
    Unpack {
        dir,
        origin,
        limit: policy.max_size,
        ratio: (policy.max_ratio > 0).then_some(Ratio {
            ratio: policy.max_ratio,
            floor: Policy::EXPANSION_FLOOR,
        }),
        declared: Cell::new(None),
    }
    .run(archive)
}

pub(crate) fn verify(dir: &Path, name: &str) -> Result<(), PullError> {
    let path = dir.join("checksum");
    let mut text = String::new();
    File::open(&path)
        .and_then(|f| f.take(RECORD_MAX).read_to_string(&mut text))
        .map_err(io("read", &path))?;
    let Some(record) = checksum::parse(&text) else {
        let shown: String = text.trim().chars().take(80).collect();
        return Err(PullError::Checksum {
            name: name.to_string(),
            expected: format!("a sha256 record, found '{shown}'"),
            actual: "nothing to compare".into(),
        });
    };
    let actual = checksum::digest(&dir.join("rootfs"), record.length)?;
    if actual != record.sha256 {
        return Err(PullError::Checksum {
            name: name.to_string(),
            expected: record.sha256,
            actual,
        });
    }
    Ok(())
}

/// The bytes the checksum record at `path` covers, when it says (`<sha> <blocks> <size>`).
fn declared_length(path: &Path) -> Option<u64> {
    let mut text = String::new();
    File::open(path)
        .and_then(|f| f.take(RECORD_MAX).read_to_string(&mut text))
        .ok()?;
    checksum::parse(&text)?.length
}

/// A member whose name does not say what it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("member '{file}' has no extension, so its role is unknown")]
struct NoRole {
    /// The member's name.
    file: String,
}

/// What a member becomes, by its extension.
fn role(file: &str) -> Result<Option<&'static str>, NoRole> {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("sha256") => Ok(Some("checksum")),
        Some("kernel") => Ok(Some("kernel")),
        Some("initrd") => Ok(Some("initrd")),
        Some("append") => Ok(None),
        Some(_) => Ok(Some("rootfs")),
        None => Err(NoRole {
            file: file.to_string(),
        }),
    }
}

/// The archive's content, decompressed when its first bytes name a compression; `count`
/// then counts the compressed bytes read. Returns whether it is compressed; a decoder
/// that cannot start is an I/O error with the decoder's message.
fn decompressed(archive: &Path, count: Rc<Cell<u64>>) -> std::io::Result<(Box<dyn Read>, bool)> {
    let mut head = [0u8; 6];
    let mut file = File::open(archive)?;
    let n = file.read(&mut head)?;
    let file = BufReader::new(Counted::new(File::open(archive)?, count));
    let reader: Box<dyn Read> = match &head[..n] {
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::CONCATENATED,
            )
            .map_err(std::io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(file, stream))
        }
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(file).map_err(std::io::Error::other)?)
        }
        _ => return Ok((Box::new(file), false)),
    };
    Ok((reader, true))
}

/// The decompressed archive behind its guard.
type Guarded = Framing<Box<dyn Read>>;

/// One archive being unpacked into `dir`, its members together within `limit` bytes and,
/// when it is compressed, within `ratio`.
struct Unpack<'a> {
    dir: &'a Path,
    origin: String,
    limit: u64,
    ratio: Option<Ratio>,
    /// The rootfs size the checksum record declares, once the record is unpacked.
    declared: Cell<Option<u64>>,
}

impl Unpack<'_> {
    fn run(&self, archive: &Path) -> Result<(), PullError> {
        let violation = Rc::new(Cell::new(None));
        let compressed = Rc::new(Cell::new(0));
        let (mut content, is_compressed) = decompressed(archive, Rc::clone(&compressed))
            .map_err(|e| self.not_kis(e.to_string()))?;
        if let Some(ratio) = self.ratio.filter(|_| is_compressed) {
            content = Box::new(Expansion::new(
                content,
                compressed,
                ratio,
                Rc::clone(&violation),
            ));
        }
        let guarded = Framing::new(
            content,
            self.limit.saturating_add(FRAMING_ALLOWANCE),
            MAX_MEMBERS,
            Rc::clone(&violation),
        );
        let mut tar = tar::Archive::new(guarded);
        let entries = tar.entries().map_err(|e| self.not_kis(e.to_string()))?;
        let mut used = 0u64;
        for entry in entries {
            let mut entry = entry.map_err(|e| match violation.get() {
                Some(v) => self.refused(v, None),
                None => self.unreadable("archive", &e),
            })?;
            used += self.member(&mut entry, self.limit.saturating_sub(used), &violation)?;
        }
        Ok(())
    }

    /// The error for a refusal of the guard, while reading `member` if given.
    fn refused(&self, violation: Violation, member: Option<&str>) -> PullError {
        match (violation, member) {
            (Violation::TooLarge, Some(file)) => {
                self.too_large(format!("member '{file}' of {}", self.origin))
            }
            (Violation::TooLarge, None) => {
                self.too_large(format!("the unpacked archive {}", self.origin))
            }
            (Violation::Expansion(ratio), Some(file)) => PullError::Expansion {
                what: format!("member '{file}' of {}", self.origin),
                ratio,
            },
            (Violation::Expansion(ratio), None) => PullError::Expansion {
                what: format!("the archive {}", self.origin),
                ratio,
            },
            (other, _) => self.not_kis(other.message()),
        }
    }

    /// Unpacks one member within `budget` bytes; returns the bytes it took.
    fn member(
        &self,
        entry: &mut tar::Entry<'_, Guarded>,
        budget: u64,
        violation: &Cell<Option<Violation>>,
    ) -> Result<u64, PullError> {
        let path = entry
            .path()
            .map_err(|e| self.not_kis(e.to_string()))?
            .into_owned();
        let parts: Vec<_> = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if parts.is_empty() && entry.header().entry_type().is_dir() {
            return Ok(0);
        }
        let file = match parts.as_slice() {
            [std::path::Component::Normal(file)] => file.to_string_lossy().into_owned(),
            _ => {
                return Err(self.not_kis(format!(
                    "member '{}' is not a file at the top level",
                    path.display()
                )))
            }
        };
        if !entry.header().entry_type().is_file() {
            return Err(self.not_kis(format!("member '{file}' is not a regular file")));
        }
        let role = role(&file).map_err(|e| self.not_kis(e.to_string()))?;
        if let Some(role) = role.filter(|r| self.dir.join(r).symlink_metadata().is_ok()) {
            return Err(self.not_kis(format!("member '{file}' is a second {role}")));
        }
        let written = match role {
            None => limited::copy(entry, &mut std::io::sink(), budget, None),
            Some(role) => self.write(entry, role, budget),
        };
        let declared = self.declared.get().filter(|_| role == Some("rootfs"));
        let too_large = || {
            match (role, declared) {
            (Some("checksum"), _) => self.not_kis(format!(
                "member '{file}' is larger than {RECORD_MAX} bytes, too large for a checksum record"
            )),
            (_, Some(length)) if length.saturating_add(PADDING_MAX) < budget => {
                self.not_kis(format!(
                    "member '{file}' is larger than the {length} bytes its checksum record declares (with {PADDING_MAX} bytes of padding)"
                ))
            }
            _ => self.too_large(format!("member '{file}' of {}", self.origin)),
        }
        };
        let read = |e: std::io::Error| match violation.get() {
            Some(v) => self.refused(v, Some(&file)),
            None => self.unreadable(&format!("member '{file}'"), &e),
        };
        let dest = self.dir.join(role.unwrap_or_default());
        let written = written.map_err(|e| e.into_pull(&dest, too_large, read))?;
        if role == Some("checksum") {
            self.declared.set(declared_length(&dest));
        }
        Ok(written)
    }

    /// Writes a member as `role` (0644, or 0755 when the archive marks it executable).
    fn write(
        &self,
        entry: &mut tar::Entry<'_, Guarded>,
        role: &str,
        budget: u64,
    ) -> Result<u64, CopyError> {
        let dest = self.dir.join(role);
        let budget = match (role, self.declared.get()) {
            ("checksum", _) => budget.min(RECORD_MAX),
            ("rootfs", Some(length)) => budget.min(length.saturating_add(PADDING_MAX)),
            _ => budget,
        };
        let mode = FileMode::from_source(entry.header().mode().unwrap_or(0));
        limited::write_new(entry, &dest, mode, budget, None)
    }

    /// A read of `what` failed: the xz memory limit by name, anything else as it is.
    fn unreadable(&self, what: &str, e: &std::io::Error) -> PullError {
        let memlimit = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<liblzma::stream::Error>())
            .is_some_and(|e| matches!(e, liblzma::stream::Error::MemLimit));
        if memlimit {
            return self.not_kis(format!(
                "its xz compression needs more than {} MiB of memory to unpack; recompress it with a smaller dictionary",
                XZ_MEMLIMIT >> 20
            ));
        }
        self.not_kis(format!("cannot read {what}: {e}"))
    }

    fn not_kis(&self, reason: String) -> PullError {
        PullError::NotKis {
            archive: self.origin.clone(),
            reason,
        }
    }

    fn too_large(&self, what: String) -> PullError {
        PullError::TooLarge {
            what,
            limit: self.limit,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_extension() {
        assert_eq!(role("leap.x86_64-1.2.raw"), Ok(Some("rootfs")));
        assert_eq!(role("leap.kernel"), Ok(Some("kernel")));
        assert_eq!(role("leap.initrd"), Ok(Some("initrd")));
        assert_eq!(role("leap.sha256"), Ok(Some("checksum")));
        assert_eq!(role("leap.append"), Ok(None));
        assert_eq!(
            role("README").unwrap_err().to_string(),
            "member 'README' has no extension, so its role is unknown"
        );
    }
}
