// SPDX-License-Identifier: MIT
//! A guard on the decompressed tar stream, between the decompressor and the `tar` reader.
//!
//! The `tar` crate reads a GNU long name, long link or pax record whole into memory before it
//! hands out the member it describes, however large the header says it is: a few MB of
//! compressed archive could make it allocate gigabytes. This reader follows the archive's
//! framing header by header as the bytes pass (parsing each header with the `tar` crate's
//! own code, and applying a pax `size` exactly where the `tar` crate does) and fails the
//! read that would deliver such a header when its record is over [`EXTENSION_MAX`], when
//! the archive has more than its allowed number of members, or when it uses GNU sparse
//! members (refused later anyway; their extra headers would break the framing). It also
//! caps the total number of bytes read. Every refusal is recorded in a shared cell so that
//! the unpacker can report it by name rather than as the tar reader's wrapped I/O error.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

/// Largest long name, long link or pax record accepted (paths are at most 4 KiB on Linux).
pub const EXTENSION_MAX: u64 = 64 * 1024;
const BLOCK: u64 = 512;

/// Why the stream was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// More bytes than the budget.
    TooLarge,
    /// A long name, long link or pax record over [`EXTENSION_MAX`].
    Extension(u64),
    /// More members than allowed.
    TooManyMembers(usize),
    /// A GNU sparse member.
    Sparse,
    /// A header whose size field cannot be read.
    Malformed,
    /// The compressed archive unpacks to more than this many times its size
    /// ([`super::expansion`]).
    Expansion(u64),
}

impl Violation {
    /// What is wrong, for the error line.
    pub fn message(self) -> String {
        match self {
            Violation::TooLarge => "the archive exceeds the size limit".into(),
            Violation::Extension(size) => format!(
                "it has a long name or pax record of {size} bytes (at most {EXTENSION_MAX})"
            ),
            Violation::TooManyMembers(max) => format!("it has more than {max} members"),
            Violation::Sparse => "it has a sparse member".into(),
            Violation::Malformed => "it has a malformed tar header".into(),
            Violation::Expansion(ratio) => {
                format!("it unpacks to more than {ratio} times its compressed size")
            }
        }
    }
}

/// A pax record being collected, ending at stream offset `end`.
struct Pax {
    end: u64,
    data: Vec<u8>,
}

/// The guarded stream.
pub struct Framing<R> {
    inner: R,
    pos: u64,
    next_header: u64,
    header: Vec<u8>,
    pax: Option<Pax>,
    members: usize,
    max_members: usize,
    ended: bool,
    left: u64,
    violation: Rc<Cell<Option<Violation>>>,
}

impl<R: Read> Framing<R> {
    /// Guards `inner`: at most `budget` bytes and `max_members` members; a refusal is
    /// recorded in `violation`.
    pub fn new(
        inner: R,
        budget: u64,
        max_members: usize,
        violation: Rc<Cell<Option<Violation>>>,
    ) -> Self {
        Framing {
            inner,
            pos: 0,
            next_header: 0,
            header: Vec::with_capacity(512),
            pax: None,
            members: 0,
            max_members,
            ended: false,
            left: budget,
            violation,
        }
    }

    fn refuse(&self, violation: Violation) -> std::io::Error {
        self.violation.set(Some(violation));
        std::io::Error::other(violation.message())
    }

    /// Follows the framing through `bytes`, which start at stream offset `self.pos`.
    fn observe(&mut self, bytes: &[u8]) -> Result<(), Violation> {
        let mut i = 0usize;
        while i < bytes.len() && !self.ended {
            let at = self.pos + to_u64(i);
            let rest = &bytes[i..];
            if at < self.next_header {
                let take = rest.len().min(to_usize(self.next_header - at));
                if let Some(pax) = self.pax.as_mut().filter(|p| at < p.end) {
                    let k = take.min(to_usize(pax.end - at));
                    pax.data.extend_from_slice(&rest[..k]);
                }
                i += take;
            } else {
                let take = rest.len().min(512 - self.header.len());
                self.header.extend_from_slice(&rest[..take]);
                i += take;
                if self.header.len() == 512 {
                    self.on_header(self.pos + to_u64(i))?;
                    self.header.clear();
                }
            }
        }
        self.pos += to_u64(bytes.len());
        Ok(())
    }

    /// A complete header whose data starts at `data_start`.
    fn on_header(&mut self, data_start: u64) -> Result<(), Violation> {
        if self.header.iter().all(|b| *b == 0) {
            // The tar reader stops at the first zero block.
            self.ended = true;
            return Ok(());
        }
        let header = tar::Header::from_byte_slice(&self.header);
        let mut size = header.entry_size().map_err(|_| Violation::Malformed)?;
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let extension = kind.is_gnu_longname()
            || kind.is_gnu_longlink()
            || kind.is_pax_local_extensions()
            || kind.is_pax_global_extensions();
        if extension {
            if size > EXTENSION_MAX {
                return Err(Violation::Extension(size));
            }
            if recognized && kind.is_pax_local_extensions() {
                self.pax = Some(Pax {
                    end: data_start + size,
                    data: Vec::new(),
                });
            }
        } else {
            if let Some(pax_size) = self.pax.take().and_then(|p| pax_size(&p.data)) {
                size = pax_size;
            }
            self.members += 1;
            if self.members > self.max_members {
                return Err(Violation::TooManyMembers(self.max_members));
            }
            if kind.is_gnu_sparse() {
                return Err(Violation::Sparse);
            }
        }
        self.next_header = size
            .checked_add(BLOCK - 1)
            .map(|s| s & !(BLOCK - 1))
            .and_then(|s| data_start.checked_add(s))
            .ok_or(Violation::Malformed)?;
        Ok(())
    }
}

impl<R: Read> Read for Framing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let len = to_u64(n);
        if len > self.left {
            return Err(self.refuse(Violation::TooLarge));
        }
        self.left -= len;
        if let Err(violation) = self.observe(&buf[..n]) {
            return Err(self.refuse(violation));
        }
        Ok(n)
    }
}

/// The `size` of a pax record, read as the `tar` crate reads it (the first malformed
/// record ends the search).
fn pax_size(data: &[u8]) -> Option<u64> {
    for extension in tar::PaxExtensions::new(data) {
        let extension = extension.ok()?;
        if extension.key() == Ok("size") {
            return extension.value().ok()?.parse().ok();
        }
    }
    None
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar built by the `tar` crate: `members` (name, size) as ustar or GNU.
    fn archive(members: &[(&str, usize)], gnu: bool) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, size) in members {
            let mut header = if gnu {
                tar::Header::new_gnu()
            } else {
                tar::Header::new_ustar()
            };
            header.set_size(u64::try_from(*size).unwrap());
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            builder
                .append_data(&mut header, name, std::io::repeat(7).take(*size as u64))
                .unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Reads `bytes` through the guard in chunks of `chunk` with the tar reader, returning
    /// the member names and sizes, or the violation.
    fn walk(bytes: &[u8], chunk: usize, max: usize) -> Result<Vec<(String, u64)>, Violation> {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let violation = Rc::new(Cell::new(None));
        let guard = Framing::new(Chunked(bytes, chunk), 1 << 30, max, Rc::clone(&violation));
        let mut tar = tar::Archive::new(guard);
        let mut out = Vec::new();
        let entries = tar.entries().unwrap();
        for entry in entries {
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(_) => return Err(violation.get().unwrap_or(Violation::Malformed)),
            };
            let name = entry.path().unwrap().display().to_string();
            let mut sink = Vec::new();
            if entry.read_to_end(&mut sink).is_err() {
                return Err(violation.get().unwrap_or(Violation::Malformed));
            }
            out.push((name, u64::try_from(sink.len()).unwrap()));
        }
        Ok(out)
    }

    #[test]
    fn ordinary_archives_pass_in_any_chunking() {
        let long = "l".repeat(300);
        for gnu in [true, false] {
            let bytes = archive(&[("a.raw", 1000), (&long, 5), ("c.kernel", 0)], gnu);
            for chunk in [1, 7, 511, 512, 513, 4096, 1 << 20] {
                let got = walk(&bytes, chunk, 64).unwrap();
                assert_eq!(got.len(), 3, "gnu={gnu} chunk={chunk}");
                assert_eq!(got[1], (long.clone(), 5));
            }
        }
    }

    #[test]
    fn pax_sizes_are_followed() {
        // A pax record that gives the size, as tar does for members over 8 GiB.
        let line = "size=700";
        let record = format!("{} {line}\n", line.len() + 4);
        let mut pax = tar::Header::new_ustar();
        pax.set_entry_type(tar::EntryType::XHeader);
        pax.set_size(u64::try_from(record.len()).unwrap());
        pax.set_path("pax").unwrap();
        pax.set_cksum();
        let mut bytes = pax.as_bytes().to_vec();
        bytes.extend_from_slice(record.as_bytes());
        bytes.resize(1024, 0);
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(0);
        header.set_mode(0o644);
        header.set_path("big.raw").unwrap();
        header.set_cksum();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(9u8, 700));
        bytes.resize(bytes.len().div_ceil(512) * 512, 0);
        bytes.extend(archive(&[("after.kernel", 3)], false));
        let got = walk(&bytes, 100, 64).unwrap();
        assert_eq!(
            got,
            [("big.raw".to_string(), 700), ("after.kernel".into(), 3)]
        );
    }

    #[test]
    fn huge_long_names_and_member_floods_are_cut() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::GNULongName);
        header.set_size(1 << 40);
        header.set_path("././@LongLink").unwrap();
        header.set_cksum();
        let bytes = header.as_bytes().to_vec();
        assert_eq!(walk(&bytes, 512, 64), Err(Violation::Extension(1 << 40)));
        let many: Vec<(String, usize)> = (0..10).map(|i| (format!("{i}.append"), 1)).collect();
        let many: Vec<(&str, usize)> = many.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        assert_eq!(
            walk(&archive(&many, true), 4096, 5),
            Err(Violation::TooManyMembers(5))
        );
    }

    #[test]
    fn the_budget_is_counted() {
        let bytes = archive(&[("a.raw", 100_000)], true);
        let violation = Rc::new(Cell::new(None));
        let mut guard = Framing::new(&bytes[..], 50_000, 64, Rc::clone(&violation));
        assert!(std::io::copy(&mut guard, &mut std::io::sink()).is_err());
        assert_eq!(violation.get(), Some(Violation::TooLarge));
    }
}
