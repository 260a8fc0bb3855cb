// SPDX-License-Identifier: MIT
//! Getting one file from an `https://`, `http://` (only when allowed), `file://` address or
//! a local path, streamed to disk, with a progress bar when stderr is a terminal.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::limited::{self, FileMode};
use super::{Policy, PullError};

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

/// Copies `source` to `dest` (a new file, mode 0644) within `policy`.
pub fn fetch(source: &Source, dest: &Path, policy: &Policy) -> Result<(), PullError> {
    match source {
        Source::File(path) => copy_file(path, dest, policy.max_size),
        Source::Url(url) => download(url, dest, policy),
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

fn too_large(what: String, limit: u64) -> PullError {
    PullError::TooLarge { what, limit }
}

/// The most redirects followed; a loop ends here.
const MAX_REDIRECTS: usize = 10;

fn download(url: &str, dest: &Path, policy: &Policy) -> Result<(), PullError> {
    let response = get(&agent(policy), url, policy)?;
    let total = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(total) = total.filter(|t| *t > policy.max_size) {
        return Err(too_large(format!("{url} ({total} bytes)"), policy.max_size));
    }
    let mut body = Paced {
        inner: response.into_body().into_reader(),
        window: policy.stall_timeout,
        started: Instant::now(),
        bytes: 0,
    };
    let bar = progress(total, dest);
    let written = limited::write_new(
        &mut body,
        dest,
        FileMode::Data,
        policy.max_size,
        bar.as_ref(),
    );
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let read = |e: std::io::Error| {
        if io_timed_out(&e) {
            stalled(url, policy, "no data")
        } else if e.get_ref().is_some_and(|inner| inner.is::<TooSlow>()) {
            stalled(url, policy, TOO_SLOW)
        } else {
            PullError::Download {
                address: url.into(),
                reason: e.to_string(),
            }
        }
    };
    written
        .map(|_| ())
        .map_err(|e| e.into_pull(dest, || too_large(url.to_string(), policy.max_size), read))
}

/// An agent whose every wait (resolving, connecting, sending, the response headers, each
/// read of the body) ends after the stall timeout, and which follows no redirect itself.
fn agent(policy: &Policy) -> ureq::Agent {
    let stall = Some(policy.stall_timeout);
    ureq::Agent::config_builder()
        .https_only(!policy.allow_http)
        .max_redirects(0)
        .timeout_resolve(stall)
        .timeout_connect(stall)
        .timeout_send_request(stall)
        .timeout_recv_response(stall)
        .timeout_per_read(stall)
        .build()
        .into()
}

/// GETs `url`, following at most [`MAX_REDIRECTS`] redirects, each checked by
/// [`redirect_target`] before it is followed.
fn get(
    agent: &ureq::Agent,
    url: &str,
    policy: &Policy,
) -> Result<ureq::http::Response<ureq::Body>, PullError> {
    let fail = |reason: String| PullError::Download {
        address: url.into(),
        reason,
    };
    let mut current = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let response = agent.get(&current).call().map_err(|e| {
            if ureq_timed_out(&e) {
                stalled(url, policy, "no data")
            } else {
                fail(e.to_string())
            }
        })?;
        if !response.status().is_redirection() {
            return Ok(response);
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| fail(format!("{current} redirects without a usable location")))?;
        current = redirect_target(&current, location, policy.allow_http).map_err(fail)?;
    }
    Err(fail(format!(
        "more than {MAX_REDIRECTS} redirects (a redirect loop?)"
    )))
}

/// Where a redirect from `current` to `location` leads, refused when it leaves https for
/// plain http (that would hand the download to anyone on the path) or goes to plain http
/// that is not allowed.
fn redirect_target(current: &str, location: &str, allow_http: bool) -> Result<String, String> {
    let (scheme, rest) = current
        .split_once("://")
        .ok_or_else(|| format!("cannot follow a redirect from {current}"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let next = if scheme_of(location).is_some() {
        location.to_string()
    } else if let Some(host_path) = location.strip_prefix("//") {
        format!("{scheme}://{host_path}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = &rest[authority.len()..];
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
        format!("{scheme}://{authority}{dir}{location}")
    };
    let next_scheme = scheme_of(&next).unwrap_or_default().to_ascii_lowercase();
    match next_scheme.as_str() {
        "https" => Ok(next),
        "http" if scheme.eq_ignore_ascii_case("https") => Err(format!(
            "redirected from https to plain http ({next}); refused"
        )),
        "http" if allow_http => Ok(next),
        "http" => Err(format!(
            "redirected to plain http ({next}); set FLAKE_ALLOW_INSECURE_TRANSPORT=1 to allow it"
        )),
        _ => Err(format!("redirected to {next}, which is not http(s)")),
    }
}

/// The scheme of an absolute address (`scheme://...`), `None` for a relative one.
fn scheme_of(address: &str) -> Option<&str> {
    let (scheme, _) = address.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn stalled(url: &str, policy: &Policy, what: &'static str) -> PullError {
    PullError::Stalled {
        address: url.into(),
        what,
        seconds: policy.stall_timeout.as_secs(),
    }
}

/// The slowest a body may arrive, on average over each stall window (bytes per second): a
/// server that trickles a byte now and then would otherwise never trip the stall timeout.
const MIN_RATE: u64 = 1024;

/// The slowest rate said in the error.
const TOO_SLOW: &str = "less than 1 KiB/s";

/// Marks a read that [`Paced`] failed.
#[derive(Debug)]
struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(TOO_SLOW)
    }
}

impl std::error::Error for TooSlow {}

/// A body that must bring [`MIN_RATE`] bytes a second, counted over each stall window.
struct Paced<R> {
    inner: R,
    window: Duration,
    started: Instant,
    bytes: u64,
}

impl<R: Read> Read for Paced<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes = self
            .bytes
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        if self.started.elapsed() >= self.window {
            if self.bytes < MIN_RATE.saturating_mul(self.window.as_secs()) {
                return Err(std::io::Error::other(TooSlow));
            }
            self.started = Instant::now();
            self.bytes = 0;
        }
        Ok(n)
    }
}

fn ureq_timed_out(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => io_timed_out(e),
        _ => false,
    }
}

/// A body read that timed out: ureq wraps its own error in the `io::Error`.
fn io_timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    ) || e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ureq::Error>())
        .is_some_and(ureq_timed_out)
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

    #[test]
    fn redirects_resolve_and_never_downgrade() {
        let cases: &[(&str, &str, bool, Result<&str, &str>)] = &[
            ("https://a/b/c.tar", "d.tar", false, Ok("https://a/b/d.tar")),
            ("https://a/b/c?x=/y", "/d", false, Ok("https://a/d")),
            ("https://a:8/b", "//c/d", false, Ok("https://c/d")),
            ("https://a", "e", false, Ok("https://a/e")),
            ("https://a/b", "HTTPS://c/d", false, Ok("HTTPS://c/d")),
            ("http://a/b", "https://c/d", false, Ok("https://c/d")),
            ("http://a/b", "/c", true, Ok("http://a/c")),
            (
                "https://a/b",
                "http://c/d",
                true,
                Err("from https to plain http"),
            ),
            ("HTTPS://a/b", "//c/d", true, Ok("HTTPS://c/d")),
            (
                "https://a/b",
                "HTTP://c/d",
                true,
                Err("from https to plain http"),
            ),
            (
                "http://a/b",
                "/c",
                false,
                Err("FLAKE_ALLOW_INSECURE_TRANSPORT"),
            ),
            ("http://a/b", "file:///etc/passwd", true, Err("not http(s)")),
            (
                "http://a/b/c",
                "d?u=http://x",
                true,
                Ok("http://a/b/d?u=http://x"),
            ),
            (
                "https://a/b/c",
                "/d?u=http://x",
                false,
                Ok("https://a/d?u=http://x"),
            ),
        ];
        for (current, location, allow, expected) in cases {
            let got = redirect_target(current, location, *allow);
            match expected {
                Ok(url) => assert_eq!(got.as_deref(), Ok(*url), "{current} {location}"),
                Err(needle) => assert!(
                    got.as_ref().is_err_and(|e| e.contains(needle)),
                    "{current} {location}: {got:?}"
                ),
            }
        }
    }
}
