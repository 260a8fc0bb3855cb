// SPDX-License-Identifier: MIT
//! Runs a probe program for at most a given time: a doctor must answer even when podman
//! waits on a lock or a guest never comes up, so a program still running at the bound is
//! killed, and what it printed until then is kept.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a bounded run ended.
#[derive(Debug)]
pub enum Ended {
    /// The program exited (or was killed by a signal) on its own.
    Exited(ExitStatus),
    /// It was still running at the bound and was killed.
    TimedOut,
}

/// The outcome of a bounded run: how it ended, what it printed, and how long it took.
#[derive(Debug)]
pub struct Outcome {
    /// How it ended.
    pub ended: Ended,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Time from spawn to exit or kill.
    pub elapsed: Duration,
}

impl Outcome {
    /// True when it exited with status 0 within the bound.
    pub fn succeeded(&self) -> bool {
        matches!(self.ended, Ended::Exited(status) if status.success())
    }

    /// The first non-empty line of stderr, for messages.
    pub fn said(&self) -> Option<String> {
        self.stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}

/// Runs `command` (stdin closed) for at most `bound`.
pub fn run(mut command: Command, bound: Duration) -> std::io::Result<Outcome> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let ended = wait(&mut child, start + bound)?;
    let elapsed = start.elapsed();
    Ok(Outcome {
        ended,
        stdout: joined(stdout),
        stderr: joined(stderr),
        elapsed,
    })
}

/// Waits for `child` until `deadline`, then kills and reaps it.
fn wait(child: &mut Child, deadline: Instant) -> std::io::Result<Ended> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Ended::Exited(status));
        }
        if Instant::now() >= deadline {
            // Kill fails only when it has just exited; reaping it is what matters.
            let _ = child.kill();
            child.wait()?;
            return Ok(Ended::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a pipe to its end on a thread, so a chatty program never blocks on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<JoinHandle<String>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }))
}

fn joined(reader: Option<JoinHandle<String>>) -> String {
    reader.and_then(|r| r.join().ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_past_its_bound_is_killed_in_time() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; exec sleep 30"]);
        let out = run(cmd, Duration::from_millis(300)).unwrap();
        assert!(matches!(out.ended, Ended::TimedOut), "{out:?}");
        assert!(out.elapsed < Duration::from_secs(3), "{out:?}");
        assert_eq!(out.stdout, "started\n");
    }

    #[test]
    fn a_quick_program_reports_its_status_and_output() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let out = run(cmd, Duration::from_secs(10)).unwrap();
        assert!(!out.succeeded());
        assert!(matches!(out.ended, Ended::Exited(s) if s.code() == Some(3)));
        assert_eq!(
            (out.stdout.as_str(), out.said()),
            ("out\n", Some("err".into()))
        );
    }
}
