// SPDX-License-Identifier: MIT
//! Getting one file from an `https://`, `http://` (only when allowed), `file://` address or
//! a local path ([`super::http`] does the downloads), always into a new file with a fixed
//! mode and within the size limit.

use std::path::{Path, PathBuf};

use super::limited::{self, FileMode};
use super::{http, redact, Policy, PullError};

/// Environment variable that allows plain `http://` downloads.
pub const INSECURE_ENV: &str = "FLAKE_ALLOW_INSECURE_TRANSPORT";

/// Where a file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Downloaded over HTTP(S).
    Url(String),
    /// A host file.
    File(PathBuf),
}

impl Source {
    /// Parses an address given for option `what`; `insecure_ok` allows `http://`.
    pub fn parse(address: &str, what: &'static str, insecure_ok: bool) -> Result<Self, PullError> {
        let refuse = |reason: &str| PullError::Source {
            what,
            address: redact::address(address),
            reason: reason.into(),
        };
        if let Some(path) = address.strip_prefix("file://") {
            return Ok(Source::File(PathBuf::from(path)));
        }
        if address.starts_with("https://") {
            return Ok(Source::Url(address.into()));
        }
        if address.starts_with("http://") {
            if insecure_ok {
                return Ok(Source::Url(address.into()));
            }
            return Err(refuse(
                "plain http is refused; use https, or set FLAKE_ALLOW_INSECURE_TRANSPORT=1",
            ));
        }
        if address.contains("://") {
            return Err(refuse(
                "only https://, http:// (when allowed) and file:// are supported",
            ));
        }
        Ok(Source::File(PathBuf::from(address)))
    }

    /// The address as shown to people: without userinfo or query (see the `redact` module).
    pub fn describe(&self) -> String {
        match self {
            Source::Url(url) => redact::address(url),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// Copies `source` to `dest` (a new file, mode 0644) within `policy`.
pub fn fetch(source: &Source, dest: &Path, policy: &Policy) -> Result<(), PullError> {
    match source {
        Source::File(path) => copy_file(path, dest, policy.max_size),
        Source::Url(url) => http::download(url, dest, policy),
    }
}

/// A host file: its mode is not taken over (a 0777 rootfs must not stay world-writable in
/// the registry), and its size is bounded like a download's (`/dev/zero` is a file too).
fn copy_file(path: &Path, dest: &Path, max_size: u64) -> Result<(), PullError> {
    let fail = |e: std::io::Error| PullError::Download {
        address: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let size = file.metadata().map_err(fail)?.len();
    if size > max_size {
        return Err(too_large(
            format!("{} ({size} bytes)", path.display()),
            max_size,
        ));
    }
    limited::write_new(&mut file, dest, FileMode::Data, max_size, None)
        .map(|_| ())
        .map_err(|e| {
            e.into_pull(
                dest,
                || too_large(path.display().to_string(), max_size),
                fail,
            )
        })
}

/// The error for `what` over `limit` bytes.
pub(super) fn too_large(what: String, limit: u64) -> PullError {
    PullError::TooLarge { what, limit }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_rules() {
        assert_eq!(
            Source::parse("https://x/y", "--rootfs", false).unwrap(),
            Source::Url("https://x/y".into())
        );
        assert!(Source::parse("http://x/y", "--rootfs", false)
            .unwrap_err()
            .to_string()
            .contains("FLAKE_ALLOW_INSECURE_TRANSPORT"));
        assert_eq!(
            Source::parse("http://x/y", "--rootfs", true).unwrap(),
            Source::Url("http://x/y".into())
        );
        assert_eq!(
            Source::parse("file:///srv/a", "--kernel", false).unwrap(),
            Source::File("/srv/a".into())
        );
        assert_eq!(
            Source::parse("/srv/a", "--kernel", false).unwrap(),
            Source::File("/srv/a".into())
        );
        assert!(Source::parse("ftp://x", "--kernel", true).is_err());
    }
}
