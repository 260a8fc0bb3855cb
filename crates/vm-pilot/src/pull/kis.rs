// SPDX-License-Identifier: MIT
//! KIWI kis archives: a tar (plain, gzip, xz or zstd) holding the rootfs, `*.kernel`,
//! `*.sha256` and optionally `*.initrd` (and `*.append`, ignored). The compression is told
//! by the archive's first bytes, not by its name.
//!
//! Members are checked before anything is written: only regular files at the top level,
//! exactly one kernel, one checksum and one rootfs. A member without an extension or a
//! second candidate rootfs is reported by name (the original panicked on the former).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::fetch::{fetch, Source};
use super::{checksum, io, PullError};

/// Downloads and unpacks `source` into `dir` as `rootfs`, `kernel`, `checksum` (and
/// `initrd`), and verifies the checksum.
pub fn pull(source: &Source, dir: &Path, name: &str) -> Result<(), PullError> {
    let archive = dir.join(".kis-archive");
    fetch(source, &archive)?;
    let not_kis = |reason: String| PullError::NotKis {
        archive: source.describe(),
        reason,
    };
    unpack(&archive, dir).map_err(not_kis)?;
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

pub(crate) fn verify(dir: &Path, name: &str) -> Result<(), PullError> {
    let text =
        std::fs::read_to_string(dir.join("checksum")).map_err(io("read", &dir.join("checksum")))?;
    let Some(record) = checksum::parse(&text) else {
        return Err(PullError::Checksum {
            name: name.to_string(),
            expected: format!("a sha256 record, found '{}'", text.trim()),
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

/// What a member becomes, by its extension.
fn role(file: &str) -> Result<Option<&'static str>, String> {
    match Path::new(file).extension().and_then(|e| e.to_str()) {
        Some("sha256") => Ok(Some("checksum")),
        Some("kernel") => Ok(Some("kernel")),
        Some("initrd") => Ok(Some("initrd")),
        Some("append") => Ok(None),
        Some(_) => Ok(Some("rootfs")),
        None => Err(format!(
            "member '{file}' has no extension, so its role is unknown"
        )),
    }
}

fn decompressed(archive: &Path) -> Result<Box<dyn Read>, String> {
    let mut head = [0u8; 6];
    let mut file = File::open(archive).map_err(|e| e.to_string())?;
    let n = file.read(&mut head).map_err(|e| e.to_string())?;
    let file = BufReader::new(File::open(archive).map_err(|e| e.to_string())?);
    Ok(match &head[..n] {
        [0xfd, b'7', b'z', b'X', b'Z', 0x00] => Box::new(liblzma::read::XzDecoder::new(file)),
        [0x1f, 0x8b, ..] => Box::new(flate2::read::GzDecoder::new(file)),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            Box::new(ruzstd::decoding::StreamingDecoder::new(file).map_err(|e| e.to_string())?)
        }
        _ => Box::new(file),
    })
}

pub(crate) fn unpack(archive: &Path, dir: &Path) -> Result<(), String> {
    let mut tar = tar::Archive::new(decompressed(archive)?);
    for entry in tar.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        let path = entry.path().map_err(|e| e.to_string())?.into_owned();
        let parts: Vec<_> = path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if parts.is_empty() && entry.header().entry_type().is_dir() {
            continue;
        }
        let file = match parts.as_slice() {
            [std::path::Component::Normal(file)] => file.to_string_lossy().into_owned(),
            _ => {
                return Err(format!(
                    "member '{}' is not a file at the top level",
                    path.display()
                ))
            }
        };
        if !entry.header().entry_type().is_file() {
            return Err(format!("member '{file}' is not a regular file"));
        }
        let Some(role) = role(&file)? else { continue };
        let dest = dir.join(role);
        if dest.exists() {
            return Err(format!("member '{file}' is a second {role}"));
        }
        entry
            .unpack(&dest)
            .map_err(|e| format!("cannot unpack '{file}': {e}"))?;
    }
    Ok(())
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
        assert!(role("README").is_err());
    }
}
