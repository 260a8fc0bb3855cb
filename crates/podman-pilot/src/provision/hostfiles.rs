// SPDX-License-Identifier: MIT
//! Host dependencies: the host paths an image lists in `/removed` and `/systemfiles`.
//!
//! The lists come from images, so every entry is checked before it is used: absolute, and
//! normal (no `.`, `..` or empty components, no control characters). Anything else is
//! refused, with the image and the entry named, instead of being joined onto a directory
//! where it could name any file on the host. Which host files an image may have at all
//! (what any local user could read, no pseudo file systems, bounded sizes) is decided when
//! they are copied, see the `policy` module.
//!
//! The listed files are read once, when the flake is assembled, and recorded. Each launch
//! then only takes their identities (device, inode, mode, owner, size, modification and
//! change times; `lstat`, no engine process) and compares them with the identities the
//! assembled image was built from: a changed host file gives a new image, a removed one
//! stops the launch unless `%ignore_sync_error`.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{fnv, ProvisionError, Provisioner, FNV_OFFSET};

/// The two list files of an image, in the order they are read.
pub const LISTS: [&str; 2] = ["systemfiles", "removed"];

/// Why a listed entry is refused; `None` when it is an absolute, normal path.
pub fn entry_problem(entry: &str) -> Option<&'static str> {
    if entry.chars().any(char::is_control) {
        return Some("it contains a control character");
    }
    let Some(rest) = entry.strip_prefix('/') else {
        return Some("it is not an absolute path");
    };
    if rest.is_empty() {
        return Some("it names the root directory");
    }
    rest.split('/').find_map(|component| match component {
        "" => Some("it has an empty component (//, or a trailing /)"),
        "." => Some("it has a '.' component"),
        ".." => Some("it has a '..' component"),
        _ => None,
    })
}

/// The entries of one list file of `image`: blank lines and `#` comments are skipped,
/// every other line must be an absolute, normal path.
pub fn parse(
    p: &Provisioner<'_>,
    image: &str,
    list: &'static str,
    text: &str,
) -> Result<Vec<PathBuf>, ProvisionError> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(reason) = entry_problem(line) {
            return Err(ProvisionError::BadHostEntry {
                flake: p.name.to_string(),
                image: image.to_string(),
                list,
                entry: line.to_string(),
                reason,
            });
        }
        entries.push(PathBuf::from(line));
    }
    Ok(entries)
}

/// Digest of the identities of `listed` as they are now. A missing entry is an error
/// naming it, unless `%ignore_sync_error` (then its absence is part of the digest).
pub fn digest(p: &Provisioner<'_>, listed: &[PathBuf]) -> Result<u64, ProvisionError> {
    let mut text = String::with_capacity(listed.len() * 96);
    for path in listed {
        identity(p, path, &mut text)?;
    }
    Ok(fnv(FNV_OFFSET, text.as_bytes()))
}

fn identity(p: &Provisioner<'_>, path: &Path, out: &mut String) -> Result<(), ProvisionError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let _ = write!(
                out,
                "{}:{}:{}:{:o}:{}:{}:{}:{}.{}:{}.{};",
                path.display(),
                m.dev(),
                m.ino(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            );
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && p.ignore_sync_error => {
            let _ = write!(out, "{}:missing;", path.display());
            Ok(())
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            Err(ProvisionError::MissingHostFile {
                flake: p.name.to_string(),
                path: path.to_path_buf(),
            })
        }
        Err(source) => Err(ProvisionError::Io {
            action: "inspect",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_must_be_absolute_and_normal() {
        let cases: &[(&str, Option<&str>)] = &[
            ("/usr/lib/libfoo.so.1", None),
            ("/etc/ssl/certs/ca-certificates.crt", None),
            ("/a b/with space", None),
            ("/.hidden/..dots/...", None),
            ("/ünïcode", None),
            ("/../../../../tmp/victim", Some("'..'")),
            ("/usr/../etc/shadow", Some("'..'")),
            ("/usr/lib/..", Some("'..'")),
            ("/./etc/passwd", Some("'.'")),
            ("/etc/.", Some("'.'")),
            ("//etc/passwd", Some("empty")),
            ("/etc//passwd", Some("empty")),
            ("/etc/", Some("empty")),
            ("/", Some("root")),
            ("etc/passwd", Some("absolute")),
            ("../etc/passwd", Some("absolute")),
            (" /etc/passwd", Some("absolute")),
            ("", Some("absolute")),
            ("/etc/pass\nwd", Some("control")),
            ("/etc/pass\0wd", Some("control")),
            ("/etc/pass\twd", Some("control")),
            ("/etc/\u{1b}[2Jx", Some("control")),
            ("/etc/x\u{7f}", Some("control")),
        ];
        for (entry, want) in cases {
            let got = entry_problem(entry);
            match want {
                None => assert_eq!(got, None, "{entry:?}"),
                Some(needle) => assert!(
                    got.is_some_and(|r| r.contains(needle)),
                    "{entry:?}: {got:?}"
                ),
            }
        }
    }
}
