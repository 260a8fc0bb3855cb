// SPDX-License-Identifier: MIT
//! The kis checksum record: `<sha256> [<blocks> <blocksize>]`. With blocks and block size,
//! only the first `blocks * blocksize` bytes of the rootfs are covered (KIWI appends
//! padding). Hashing happens in-process.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{io, PullError};

/// A parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Expected SHA-256, lower-case hex.
    pub sha256: String,
    /// Number of bytes covered, when limited.
    pub length: Option<u64>,
}

/// Parses a record; `None` for an empty or malformed one.
pub fn parse(text: &str) -> Option<Record> {
    let mut words = text.split_whitespace();
    let sha256 = words.next()?.to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let blocks = words.next().and_then(|w| w.parse::<u64>().ok());
    let size = words.next().and_then(|w| w.parse::<u64>().ok());
    let length = blocks.zip(size).and_then(|(b, s)| b.checked_mul(s));
    Some(Record { sha256, length })
}

/// SHA-256 of `path`, limited to `length` bytes when given.
pub fn digest(path: &Path, length: Option<u64>) -> Result<String, PullError> {
    let file = std::fs::File::open(path).map_err(io("open", path))?;
    let mut reader: Box<dyn Read> = match length {
        Some(length) => Box::new(file.take(length)),
        None => Box::new(file),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn records() {
        assert_eq!(
            parse(EMPTY),
            Some(Record {
                sha256: EMPTY.into(),
                length: None
            })
        );
        let limited = parse(&format!("{} 4 512\n", EMPTY.to_uppercase())).unwrap();
        assert_eq!(limited.length, Some(2048));
        assert_eq!(limited.sha256, EMPTY);
        assert_eq!(parse(""), None);
        assert_eq!(parse("abc"), None);
    }

    #[test]
    fn digests_whole_or_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"abcdef").unwrap();
        assert_eq!(digest(&file, Some(0)).unwrap(), EMPTY);
        assert_eq!(
            digest(&file, Some(3)).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
