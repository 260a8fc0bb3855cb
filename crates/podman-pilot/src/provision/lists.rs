// SPDX-License-Identifier: MIT
//! Reading an image's list files (`/removed`, `/systemfiles`) without trusting their size.
//!
//! A list is read out of a created container as the tar stream `podman cp ID:/LIST -`
//! writes, never into a file: the stream is read through a bound of [`MAX_LIST`] bytes plus
//! the tar headers, and the member's size is checked in its header before its content is
//! read. An image with a list of many gigabytes (a few megabytes compressed) or a directory
//! tree in its place is refused after a few kilobytes, and nothing of it is written to the
//! cache directory; podman is stopped as soon as the answer is known.

use std::io::Read;
use std::process::{Child, Stdio};

use flakes::process::{Cmd, ProcessError};

/// Largest list file read from an image.
pub const MAX_LIST: u64 = 16 << 20;

/// Room for the headers before the member's content: the tar header, a pax extension
/// header (long names, large sizes) and its records.
const HEADERS: u64 = 64 << 10;

/// Why a list cannot be used.
#[derive(Debug)]
pub enum ListError {
    /// The list is there but is no list (reason for the message).
    Refused(String),
    /// Podman could not be run.
    Engine(ProcessError),
}

/// The text of the list that `cp` (`podman cp -- ID:/LIST -`) streams, `None` when the
/// image has no such file.
pub fn read(cp: &Cmd) -> Result<Option<String>, ListError> {
    let mut child = cp
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| {
            ListError::Engine(ProcessError::Spawn {
                command: cp.summary(),
                source,
            })
        })?;
    let stderr = child.stderr.take().map(|stderr| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.take(STDERR_MAX).read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    });
    let result = match child.stdout.take() {
        Some(stdout) => {
            let mut stream = stdout.take(MAX_LIST + HEADERS);
            let result = parse(&mut stream);
            if matches!(result, Ok(Some(_))) {
                // The archive's end (padding), so that podman finishes without EPIPE.
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            }
            result
        }
        None => Ok(None),
    };
    let code = finish(&mut child);
    let succeeded = code == Some(0);
    let stderr = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    match result {
        // No member: the image has no such file, which podman says; any other failure
        // is the engine's, and an assembly must not go on as if the list were absent.
        Ok(None) if succeeded || is_missing(&stderr) => Ok(None),
        Ok(None) => Err(ListError::Engine(ProcessError::Failed {
            command: cp.summary(),
            code: code.unwrap_or(-1),
            stderr,
        })),
        Ok(Some(_)) if !succeeded => Err(ListError::Refused(
            "cannot be read completely from the image".into(),
        )),
        other => other.map_err(ListError::Refused),
    }
}

/// The most bytes of podman's error output kept.
const STDERR_MAX: u64 = 16 << 10;

/// Whether podman's error output says the path does not exist in the container.
fn is_missing(stderr: &str) -> bool {
    let stderr = stderr.to_ascii_lowercase();
    stderr.contains("no such file or directory") || stderr.contains("could not be found")
}

/// Stops podman if it is still writing, and gives its exit code (`None` when it was
/// stopped or ended by a signal).
fn finish(child: &mut Child) -> Option<i32> {
    if let Ok(Some(status)) = child.try_wait() {
        return status.code();
    }
    // The stream is closed: podman ends with EPIPE, or is stopped here.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The content of the single regular file at the start of tar stream `stream`.
fn parse(stream: impl Read) -> Result<Option<String>, String> {
    let mut archive = tar::Archive::new(stream);
    let mut entries = archive
        .entries()
        .map_err(|e| format!("cannot be read from the image ({e})"))?;
    let Some(entry) = entries.next() else {
        return Ok(None);
    };
    let entry = entry.map_err(|e| format!("cannot be read from the image ({e})"))?;
    let kind = entry.header().entry_type();
    if !kind.is_file() {
        return Err("is not a regular file".into());
    }
    let size = entry.size();
    if size > MAX_LIST {
        return Err(format!("is larger than {MAX_LIST} bytes ({size})"));
    }
    let mut bytes = Vec::new();
    entry
        .take(MAX_LIST + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read from the image ({e})"))?;
    if u64::try_from(bytes.len()).ok() != Some(size) {
        return Err("cannot be read completely from the image".into());
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| "is not UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        build(&mut builder);
        builder.into_inner().unwrap()
    }

    fn file(name: &str, size: u64, content: &[u8]) -> Vec<u8> {
        archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_size(size);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            b.append_data(&mut header, name, content).unwrap();
        })
    }

    #[test]
    fn a_small_list_is_read() {
        let tar = file("removed", 10, b"/etc/hosts");
        assert_eq!(parse(&tar[..]).unwrap().as_deref(), Some("/etc/hosts"));
        assert_eq!(parse(&[][..]).unwrap(), None);
    }

    #[test]
    fn a_huge_list_is_refused_by_its_header() {
        // Only the header: the claimed size alone must refuse it, before any content.
        let mut header = tar::Header::new_gnu();
        header.set_path("removed").unwrap();
        header.set_size(50 << 30);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let err = parse(header.as_bytes().as_slice()).unwrap_err();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn a_directory_or_link_is_no_list() {
        let tar = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            header.set_cksum();
            b.append_data(&mut header, "removed", &[][..]).unwrap();
        });
        assert!(parse(&tar[..]).unwrap_err().contains("not a regular file"));
        let tar = archive(|b| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            header.set_cksum();
            b.append_link(&mut header, "removed", "/etc/shadow")
                .unwrap();
        });
        assert!(parse(&tar[..]).unwrap_err().contains("not a regular file"));
    }

    #[test]
    fn a_stream_cut_by_the_bound_is_an_error() {
        let content = vec![b'a'; 4096];
        let tar = file("removed", 4096, &content);
        assert!(parse(&tar[..1024]).is_err());
    }
}
