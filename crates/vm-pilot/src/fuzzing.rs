// SPDX-License-Identifier: MIT
//! Entry points for the fuzz targets under `fuzz/` into parsers of untrusted input that are
//! otherwise private: a downloaded kis archive and its checksum record. Hidden from the
//! docs and not an API: each function only forwards to the code a pull runs.

use std::path::Path;

use crate::pull::PullError;

/// Unpacks the kis archive at `archive` into `dir` as a pull does before verifying, with
/// the default policy but at most `max_size` bytes (a fuzz run writes many archives); the
/// error says why the archive is refused.
pub fn kis_unpack(archive: &Path, dir: &Path, max_size: u64) -> Result<(), PullError> {
    let policy = crate::pull::Policy {
        max_size,
        ..crate::pull::Policy::default()
    };
    crate::pull::kis::unpack(archive, "fuzz".into(), dir, &policy)
}

/// Verifies the rootfs in `dir` against the checksum record there, as a pull does after
/// unpacking; the error is the one a pull reports.
pub fn kis_verify(dir: &Path) -> Result<(), PullError> {
    crate::pull::kis::verify(dir, "fuzz")
}

/// Parses a checksum record: the expected SHA-256 and the number of bytes it covers.
pub fn checksum_record(text: &str) -> Option<(String, Option<u64>)> {
    crate::pull::checksum::parse(text).map(|record| (record.sha256, record.length))
}
