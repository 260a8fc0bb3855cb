// SPDX-License-Identifier: MIT
//! Downloads over HTTP(S), streamed to disk, with a progress bar when stderr is a terminal.
//!
//! A download server is hostile until proven otherwise: every wait (resolving, connecting,
//! the response headers, each read of the body) ends after the stall timeout, a body must
//! bring 1 KiB/s on average over each stall window, a Content-Length over the size limit is
//! refused before anything is written, and redirects are followed here rather than by
//! ureq, so that each one is checked before it is followed: at most 10, and never from
//! https to plain http. Addresses in messages go through [`super::redact`]: a password or
//! a signed query in an address or a redirect is never printed.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use super::fetch::too_large;
use super::limited::{self, FileMode};
use super::{redact, Policy, PullError};

/// The most redirects followed; a loop ends here.
const MAX_REDIRECTS: usize = 10;

/// Downloads `url` into the new file `dest` within `policy`.
pub fn download(url: &str, dest: &Path, policy: &Policy) -> Result<(), PullError> {
    let response = get(&agent(policy), url, policy)?;
    let total = content_length(&response);
    if let Some(total) = total.filter(|t| *t > policy.max_size) {
        return Err(too_large(
            format!("{} ({total} bytes)", redact::address(url)),
            policy.max_size,
        ));
    }
    let mut body = Paced::new(response.into_body().into_reader(), policy.stall_timeout);
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
    written.map(|_| ()).map_err(|e| {
        e.into_pull(
            dest,
            || too_large(redact::address(url), policy.max_size),
            |e| read_error(url, policy, &e),
        )
    })
}

fn content_length(response: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// The error for a failed read of the body: a stall, a trickle, or what the transport says.
fn read_error(url: &str, policy: &Policy, e: &std::io::Error) -> PullError {
    if io_timed_out(e) {
        stalled(url, policy, "no data")
    } else if e.get_ref().is_some_and(|inner| inner.is::<TooSlow>()) {
        stalled(url, policy, TOO_SLOW)
    } else {
        PullError::Download {
            address: redact::address(url),
            reason: redact::text(&e.to_string()),
        }
    }
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
        address: redact::address(url),
        reason: redact::text(&reason),
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
        current = redirect_target(&current, location, policy.allow_http)
            .map_err(|e| fail(e.to_string()))?;
    }
    Err(fail(format!(
        "more than {MAX_REDIRECTS} redirects (a redirect loop?)"
    )))
}

/// Why a redirect is not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum RedirectError {
    /// The current address has no scheme to resolve the location against.
    #[error("cannot follow a redirect from {current}")]
    NoBase {
        /// The address redirecting.
        current: String,
    },
    /// From https to plain http.
    #[error("redirected from https to plain http ({next}); refused")]
    Downgrade {
        /// Where it leads.
        next: String,
    },
    /// To plain http, which is not allowed.
    #[error("redirected to plain http ({next}); set FLAKE_ALLOW_INSECURE_TRANSPORT=1 to allow it")]
    Insecure {
        /// Where it leads.
        next: String,
    },
    /// To something that is not http(s).
    #[error("redirected to {next}, which is not http(s)")]
    Scheme {
        /// Where it leads.
        next: String,
    },
}

/// Where a redirect from `current` to `location` leads, refused when it leaves https for
/// plain http (that would hand the download to anyone on the path) or goes to plain http
/// that is not allowed.
fn redirect_target(
    current: &str,
    location: &str,
    allow_http: bool,
) -> Result<String, RedirectError> {
    let (scheme, rest) = current
        .split_once("://")
        .ok_or_else(|| RedirectError::NoBase {
            current: current.to_string(),
        })?;
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
        "http" if scheme.eq_ignore_ascii_case("https") => Err(RedirectError::Downgrade { next }),
        "http" if allow_http => Ok(next),
        "http" => Err(RedirectError::Insecure { next }),
        _ => Err(RedirectError::Scheme { next }),
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
        address: redact::address(url),
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

impl<R> Paced<R> {
    fn new(inner: R, window: Duration) -> Self {
        Paced {
            inner,
            window,
            started: Instant::now(),
            bytes: 0,
        }
    }
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
                    got.as_ref().is_err_and(|e| e.to_string().contains(needle)),
                    "{current} {location}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_trickle_is_too_slow_and_a_steady_body_is_not() {
        struct Slow(u8);
        impl Read for Slow {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_millis(5));
                let n = usize::from(self.0).min(buf.len());
                buf[..n].fill(1);
                Ok(n)
            }
        }
        let mut trickle = Paced::new(Slow(1), Duration::from_secs(1));
        let err = std::io::copy(&mut trickle, &mut std::io::sink()).unwrap_err();
        assert!(err.get_ref().is_some_and(|e| e.is::<TooSlow>()), "{err}");
        // 100 bytes every 20 ms is 5 KB/s: two windows pass.
        let mut steady = Paced::new(Slow(100).take(10_000), Duration::from_secs(1));
        assert_eq!(
            std::io::copy(&mut steady, &mut std::io::sink()).unwrap(),
            10_000
        );
    }
}
