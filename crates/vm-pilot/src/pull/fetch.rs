// SPDX-License-Identifier: MIT
//! Getting one file from an `https://`, `http://` (only when allowed), `file://` address or
//! a local path, streamed to disk, with a progress bar when stderr is a terminal.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use super::{io, PullError};

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
            address: address.into(),
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

    /// The address as given.
    pub fn describe(&self) -> String {
        match self {
            Source::Url(url) => url.clone(),
            Source::File(path) => path.display().to_string(),
        }
    }
}

/// Copies `source` to `dest`.
pub fn fetch(source: &Source, dest: &Path) -> Result<(), PullError> {
    match source {
        Source::File(path) => {
            std::fs::copy(path, dest)
                .map(|_| ())
                .map_err(|e| PullError::Download {
                    address: path.display().to_string(),
                    reason: e.to_string(),
                })
        }
        Source::Url(url) => download(url, dest),
    }
}

fn download(url: &str, dest: &Path) -> Result<(), PullError> {
    let fail = |reason: String| PullError::Download {
        address: url.into(),
        reason,
    };
    let insecure = std::env::var_os(INSECURE_ENV).is_some();
    let config = ureq::Agent::config_builder().https_only(!insecure).build();
    let agent: ureq::Agent = config.into();
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body().into_reader();
    let mut file = std::fs::File::create(dest).map_err(io("create", dest))?;
    let bar = progress(total, dest);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(io("write", dest))?;
        if let Some(bar) = &bar {
            bar.inc(u64::try_from(n).unwrap_or(0));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    file.sync_all().map_err(io("write", dest))
}

/// A progress bar on stderr when it is a terminal; none otherwise (logs stay clean).
fn progress(total: Option<u64>, dest: &Path) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(total) => indicatif::ProgressBar::new(total),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{elapsed}] [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
    );
    if let Ok(style) = style {
        bar.set_style(style);
    }
    bar.set_message(format!(
        "downloading {}",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    Some(bar)
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
