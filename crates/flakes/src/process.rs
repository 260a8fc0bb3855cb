// SPDX-License-Identifier: MIT
//! The one wrapper through which flake-pilot runs external programs.
//!
//! Argv is built without a shell, the program is resolved to an absolute path up front (so a
//! missing engine is reported by name, not as a bare `ENOENT`), environment changes go on the
//! child only, and failures carry the command line and an excerpt of its stderr.
//!
//! A command line is shown to people (in errors, in logs, with `PILOT_DEBUG`) with the values
//! of its environment options masked (`-e KEY=***`): engine options carry secrets such as
//! tokens, and an error message ends up in terminals, logs and bug reports. In errors it is
//! also cut to [`ERROR_COMMAND_LIMIT`] characters; a flake's own options can make it pages
//! long, and the part that matters is the program and its first arguments.
//!
//! What a child prints is never collected without a bound: its output can carry data an
//! image or a download controls (an image's config, a file `debugfs` reads out of a pulled
//! rootfs, a listing), and a launcher running as root must not run out of memory on it.
//! Captured stdout stops at a limit ([`STDOUT_LIMIT`] unless the caller picks one), the
//! child is then killed and the call fails by name; of stderr only the last
//! [`STDERR_KEEP`] bytes are kept, which is all an error shows anyway.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

/// Longest command line an error message shows, in characters.
pub const ERROR_COMMAND_LIMIT: usize = 200;

/// Most bytes [`Cmd::stdout`] collects: far above any engine answer flake-pilot reads (an
/// image's config, a container list), far below what would strain memory.
pub const STDOUT_LIMIT: u64 = 16 << 20;

/// Bytes of a child's stderr kept for its error message: the tail, where tools say why
/// they failed.
pub const STDERR_KEEP: usize = 64 << 10;

/// The launcher name that prefixes traced commands; set once by [`trace_commands`].
static TRACE_PREFIX: OnceLock<&'static str> = OnceLock::new();

/// Prints every command this process runs from now on, masked, on stderr as
/// `PREFIX: running COMMAND` (the launchers' `PILOT_DEBUG`).
pub fn trace_commands(prefix: &'static str) {
    let _ = TRACE_PREFIX.set(prefix);
}

/// With `PILOT_DEBUG` (once [`trace_commands`] was called): prints the launcher's
/// debugging note `message` on stderr as `PREFIX: PILOT_DEBUG: MESSAGE`, beside the
/// commands it runs; otherwise nothing. The one place such notes are written.
pub fn debug_note(message: fmt::Arguments<'_>) {
    if let Some(prefix) = TRACE_PREFIX.get() {
        eprintln!("{prefix}: PILOT_DEBUG: {message}");
    }
}

/// Errors from running an external program.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program is not on `PATH`.
    #[error("{program} not found on PATH; install it or fix PATH")]
    NotFound {
        /// Program name.
        program: String,
    },
    /// The program could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The program exited non-zero.
    #[error("{command} failed with exit code {code}{}", excerpt(stderr))]
    Failed {
        /// The command line.
        command: String,
        /// Its exit code.
        code: i32,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The program printed more than the caller reads; it was killed.
    #[error("{command} printed more than {limit} bytes, more than a valid answer; stopped it")]
    TooMuchOutput {
        /// The command line.
        command: String,
        /// The most bytes read.
        limit: u64,
    },
    /// Reading the program's output failed.
    #[error("cannot read the output of {command}: {source}")]
    Read {
        /// The command line.
        command: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The program was killed by a signal.
    #[error("{command} was killed by signal {signal}")]
    Killed {
        /// The command line.
        command: String,
        /// The signal.
        signal: i32,
    },
}

fn excerpt(stderr: &str) -> String {
    let text = stderr.trim();
    if text.is_empty() {
        return String::new();
    }
    let last: Vec<&str> = text.lines().rev().take(3).collect();
    let joined: Vec<&str> = last.into_iter().rev().collect();
    format!(": {}", joined.join(" | "))
}

/// Result alias for this module.
pub type Result<T, E = ProcessError> = std::result::Result<T, E>;

/// Finds `program` in the directories of `path_env` (a `PATH` value). Names containing a
/// slash are taken as they are.
pub fn resolve(program: &str, path_env: Option<&OsStr>) -> Result<PathBuf> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    let dirs = path_env.map(std::env::split_paths).into_iter().flatten();
    for dir in dirs.filter(|d| d.is_absolute()) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(ProcessError::NotFound {
        program: program.to_string(),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// An external command: program, arguments and extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

impl Cmd {
    /// A command running the program at `program` (already resolved).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the child only.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The program path.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The arguments.
    pub fn get_args(&self) -> &[OsString] {
        &self.args
    }

    /// The extra environment.
    pub fn get_env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// The `std` command, for callers that must set up the child's streams or process
    /// group themselves.
    pub fn command(&self) -> Command {
        tracing::debug!(command = %self, "running");
        if let Some(prefix) = TRACE_PREFIX.get() {
            eprintln!("{prefix}: running {self}");
        }
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs with inherited stdio and returns the exit status, whatever it is.
    pub fn status(&self) -> Result<ExitStatus> {
        self.command()
            .status()
            .map_err(|source| self.spawn_error(source))
    }

    /// Runs with stdin from `/dev/null` and stdout captured, at most [`STDOUT_LIMIT`]
    /// bytes of it; a non-zero exit is an error, with the tail of stderr.
    pub fn stdout(&self) -> Result<String> {
        self.stdout_limited(STDOUT_LIMIT)
    }

    /// [`Cmd::stdout`] reading at most `max` bytes: a child that prints more is killed and
    /// the call fails with [`ProcessError::TooMuchOutput`]. For output that an image or a
    /// download controls, with a limit that fits what the caller expects.
    pub fn stdout_limited(&self, max: u64) -> Result<String> {
        let mut child = self.spawn_piped(Stdio::piped())?;
        let stderr = child.stderr.take().map(collect_tail);
        let mut out = Vec::new();
        let read = match child.stdout.take() {
            Some(stdout) => stdout.take(max.saturating_add(1)).read_to_end(&mut out),
            None => Ok(0),
        };
        let too_much = u64::try_from(out.len()).unwrap_or(u64::MAX) > max;
        if too_much || read.is_err() {
            // The rest is not read: stop the child rather than wait for it to finish.
            let _ = child.kill();
            let _ = child.wait();
            return Err(match read {
                Err(source) => ProcessError::Read {
                    command: self.summary(),
                    source,
                },
                Ok(_) => ProcessError::TooMuchOutput {
                    command: self.summary(),
                    limit: max,
                },
            });
        }
        self.finish(child, stderr)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Runs with stdin from `/dev/null` and stdout discarded; a non-zero exit is an error,
    /// with the tail of stderr. For tools that only need to succeed.
    pub fn run(&self) -> Result<()> {
        let mut child = self.spawn_piped(Stdio::null())?;
        let stderr = child.stderr.take().map(collect_tail);
        self.finish(child, stderr)
    }

    fn spawn_piped(&self, stdout: Stdio) -> Result<Child> {
        self.command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))
    }

    /// Waits for `child` and checks its status against the stderr tail `stderr` collected.
    fn finish(&self, mut child: Child, stderr: Option<TailReader>) -> Result<()> {
        let status = child.wait().map_err(|source| ProcessError::Read {
            command: self.summary(),
            source,
        })?;
        let tail = stderr
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        self.check(status, &tail)
    }

    /// Runs with no output shown; returns whether it exited 0. For yes/no probes such as
    /// `podman image exists`.
    pub fn succeeds(&self) -> Result<bool> {
        let status = self
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| self.spawn_error(source))?;
        Ok(status.success())
    }

    /// Replaces the current process with this command. Returns only on failure.
    pub fn exec(&self) -> ProcessError {
        self.spawn_error(self.command().exec())
    }

    fn check(&self, status: ExitStatus, stderr: &[u8]) -> Result<()> {
        use std::os::unix::process::ExitStatusExt;
        if status.success() {
            return Ok(());
        }
        let command = self.summary();
        match (status.code(), status.signal()) {
            (Some(code), _) => Err(ProcessError::Failed {
                command,
                code,
                stderr: String::from_utf8_lossy(stderr).into_owned(),
            }),
            (None, signal) => Err(ProcessError::Killed {
                command,
                signal: signal.unwrap_or(0),
            }),
        }
    }

    fn spawn_error(&self, source: std::io::Error) -> ProcessError {
        ProcessError::Spawn {
            command: self.summary(),
            source,
        }
    }
}

/// A thread collecting the tail of a child's stderr.
type TailReader = std::thread::JoinHandle<Vec<u8>>;

/// Reads `stream` to its end on a thread, keeping its last [`STDERR_KEEP`] bytes.
fn collect_tail(stream: impl Read + Send + 'static) -> TailReader {
    std::thread::spawn(move || tail_of(stream, STDERR_KEEP))
}

/// The last `keep` bytes of `stream` (fewer when it ends early or fails).
fn tail_of(mut stream: impl Read, keep: usize) -> Vec<u8> {
    let mut tail = Vec::with_capacity(keep.min(8192));
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > keep.saturating_mul(2) {
                    tail.drain(..tail.len() - keep);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let cut = tail.len().saturating_sub(keep);
    tail.split_off(cut)
}

impl Cmd {
    /// The masked command line cut to [`ERROR_COMMAND_LIMIT`] characters, for errors.
    pub fn summary(&self) -> String {
        let full = self.to_string();
        match full.char_indices().nth(ERROR_COMMAND_LIMIT) {
            Some((cut, _)) => format!("{} ...", &full[..cut]),
            None => full,
        }
    }
}

/// How an option of an engine command line passes an environment variable, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvOption {
    /// `-e` or `--env`: the next argument is `KEY=VALUE`.
    Next,
    /// `-eKEY=VALUE`, `--env=KEY=VALUE`: the value follows at this byte offset.
    Inline(usize),
    /// Not an environment option.
    No,
}

/// `-e`, `--env`, `--env-merge` and their attached forms; a short cluster ending in `e` (`-ite`) also takes
/// the next argument, as podman's option parser reads it.
fn env_option(arg: &str) -> EnvOption {
    for long in ["--env", "--env-merge"] {
        if arg == long {
            return EnvOption::Next;
        }
        if arg
            .strip_prefix(long)
            .is_some_and(|rest| rest.starts_with('='))
        {
            return EnvOption::Inline(long.len() + 1);
        }
    }
    let Some(cluster) = arg.strip_prefix('-').filter(|c| !c.starts_with('-')) else {
        return EnvOption::No;
    };
    match cluster.find('e') {
        Some(at) if cluster[..at].chars().all(|c| c.is_ascii_alphabetic()) => {
            if at + 1 == cluster.len() {
                EnvOption::Next
            } else {
                EnvOption::Inline(1 + at + 1)
            }
        }
        _ => EnvOption::No,
    }
}

/// `KEY=VALUE` shown as `KEY=***`; a bare `KEY` (the value comes from the caller's
/// environment) stays as it is.
fn mask_assignment(text: &str) -> String {
    match text.split_once('=') {
        Some((key, _)) => format!("{key}=***"),
        None => text.to_string(),
    }
}

/// The arguments as shown to people: environment values masked.
fn masked_args(args: &[OsString]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut value_next = false;
    for arg in args {
        let text = arg.to_string_lossy();
        if std::mem::take(&mut value_next) {
            out.push(mask_assignment(&text));
            continue;
        }
        match env_option(&text) {
            EnvOption::Next => value_next = true,
            EnvOption::Inline(at) => {
                out.push(format!("{}{}", &text[..at], mask_assignment(&text[at..])));
                continue;
            }
            EnvOption::No => {}
        }
        out.push(text.into_owned());
    }
    out
}

/// Makes the child that `command` starts receive `signal` when the thread that started it
/// ends, even by `SIGKILL` (prctl(2) `PR_SET_PDEATHSIG`, set between fork and exec). A
/// child whose parent is already gone by then is not started: the spawn fails.
pub fn end_with_parent(command: &mut Command, signal: rustix::process::Signal) {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the child between fork and exec and makes only the
    // prctl(2) and getppid(2) system calls, which are async-signal-safe; it allocates
    // nothing and takes no lock.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(signal))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            Ok(())
        });
    }
}

impl fmt::Display for Cmd {
    /// Shell-like rendering for messages: quotes arguments that need it and masks the values
    /// of environment options.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.display())?;
        for text in masked_args(&self.args) {
            let plain = !text.is_empty()
                && text
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%,+*".contains(c));
            if plain {
                write!(f, " {text}")?;
            } else {
                write!(f, " '{}'", text.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_finds_programs_on_path() {
        let path = OsString::from("/nonexistent:/bin:/usr/bin");
        assert!(resolve("sh", Some(&path)).unwrap().is_absolute());
        assert!(matches!(
            resolve("no-such-prog-x", Some(&path)),
            Err(ProcessError::NotFound { .. })
        ));
        assert_eq!(resolve("./x", None).unwrap(), PathBuf::from("./x"));
        assert!(resolve("sh", None).is_err());
    }

    #[test]
    fn display_quotes_what_needs_it() {
        let cmd = Cmd::new("/usr/bin/podman").args(["run", "a b", "it's", "--x=1"]);
        assert_eq!(
            cmd.to_string(),
            r"/usr/bin/podman run 'a b' 'it'\''s' --x=1"
        );
    }

    #[test]
    fn environment_values_are_masked_in_every_spelling() {
        let cases: &[(&[&str], &str)] = &[
            (&["-e", "TOKEN=s3cret"], "-e TOKEN=***"),
            (&["--env", "TOKEN=s3cret"], "--env TOKEN=***"),
            (&["--env=TOKEN=s3cret"], "--env=TOKEN=***"),
            (&["-eTOKEN=s3cret"], "-eTOKEN=***"),
            (&["-ite", "TOKEN=s3cret"], "-ite TOKEN=***"),
            (&["-iteTOKEN=a=b"], "-iteTOKEN=***"),
            (&["-e", "HOME"], "-e HOME"),
            (
                &["--env", "A=1", "-e", "B=2", "img"],
                "--env A=*** -e B=*** img",
            ),
            (&["--entrypoint", "/x", "-i"], "--entrypoint /x -i"),
            (
                &["-v", "/a:/b", "--network=none"],
                "-v /a:/b --network=none",
            ),
            (&["--env-file", "/etc/e"], "--env-file /etc/e"),
            (&["--env-merge", "P=s3cret"], "--env-merge P=***"),
            (&["--env-merge=P=s3cret"], "--env-merge=P=***"),
            (&["-e"], "-e"),
        ];
        for (args, shown) in cases {
            let cmd = Cmd::new("/p").args(args.iter());
            assert_eq!(cmd.to_string(), format!("/p {shown}"), "{args:?}");
            assert!(!cmd.summary().contains("s3cret"), "{args:?}");
        }
    }

    #[test]
    fn errors_show_a_cut_command_line() {
        let sh = resolve("sh", Some(OsStr::new("/bin:/usr/bin"))).unwrap();
        let long = "x".repeat(5000);
        let err = Cmd::new(&sh)
            .args(["-c", "exit 2", "-e", "KEY=hidden", &long])
            .stdout()
            .unwrap_err()
            .to_string();
        assert!(err.contains("KEY=***") && !err.contains("hidden"), "{err}");
        assert!(err.len() < ERROR_COMMAND_LIMIT + 100, "{err}");
        assert!(err.contains(" ...") && err.contains("exit code 2"), "{err}");
        let err = Cmd::new("/nonexistent/x")
            .args(["--env=K=hidden", &long])
            .status()
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hidden") && err.len() < ERROR_COMMAND_LIMIT + 100,
            "{err}"
        );
    }

    #[test]
    fn stdout_and_failures() {
        let sh = resolve("sh", Some(OsStr::new("/bin:/usr/bin"))).unwrap();
        let out = Cmd::new(&sh)
            .args(["-c", "echo $X"])
            .env("X", "hi")
            .stdout()
            .unwrap();
        assert_eq!(out, "hi\n");
        let err = Cmd::new(&sh)
            .args(["-c", "echo bad >&2; exit 3"])
            .stdout()
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit code 3") && text.contains("bad"),
            "{text}"
        );
        let err = Cmd::new(&sh)
            .args(["-c", "kill -9 $$"])
            .stdout()
            .unwrap_err();
        assert!(matches!(err, ProcessError::Killed { signal: 9, .. }));
        assert!(!Cmd::new(&sh).args(["-c", "exit 1"]).succeeds().unwrap());
        assert!(matches!(
            Cmd::new("/nonexistent/x").status(),
            Err(ProcessError::Spawn { .. })
        ));
    }

    #[test]
    fn captured_output_is_bounded_and_the_child_stopped() {
        let sh = resolve("sh", Some(OsStr::new("/bin:/usr/bin"))).unwrap();
        // Endless output: without the bound this would fill memory.
        let err = Cmd::new(&sh)
            .args([
                "-c",
                "while :; do echo aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa; done",
            ])
            .stdout_limited(1 << 20)
            .unwrap_err();
        assert!(
            matches!(err, ProcessError::TooMuchOutput { limit, .. } if limit == 1 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
        // The default bound of `stdout`.
        let err = Cmd::new(&sh)
            .args(["-c", "head -c 20000000 /dev/zero"])
            .stdout()
            .unwrap_err();
        assert!(
            matches!(err, ProcessError::TooMuchOutput { limit, .. } if limit == STDOUT_LIMIT),
            "{err}"
        );
        let exact = Cmd::new(&sh)
            .args(["-c", "printf 1234"])
            .stdout_limited(4)
            .unwrap();
        assert_eq!(exact, "1234");
    }

    #[test]
    fn only_the_tail_of_stderr_is_kept() {
        let sh = resolve("sh", Some(OsStr::new("/bin:/usr/bin"))).unwrap();
        let script = "head -c 8000000 /dev/zero | tr '\\0' x >&2; echo the-reason >&2; exit 3";
        for result in [
            Cmd::new(&sh).args(["-c", script]).stdout().map(|_| ()),
            Cmd::new(&sh).args(["-c", script]).run(),
        ] {
            let Err(ProcessError::Failed { stderr, code, .. }) = result else {
                panic!("{result:?}");
            };
            assert_eq!(code, 3);
            assert!(stderr.len() <= STDERR_KEEP, "{}", stderr.len());
            assert!(stderr.trim_end().ends_with("the-reason"), "{stderr:.40}");
        }
    }

    #[test]
    fn run_discards_stdout() {
        let sh = resolve("sh", Some(OsStr::new("/bin:/usr/bin"))).unwrap();
        Cmd::new(&sh)
            .args(["-c", "head -c 50000000 /dev/zero"])
            .run()
            .unwrap();
        assert!(matches!(
            Cmd::new(&sh).args(["-c", "exit 4"]).run(),
            Err(ProcessError::Failed { code: 4, .. })
        ));
    }

    #[test]
    fn tails() {
        assert_eq!(tail_of(&b"abcdef"[..], 3), b"def");
        assert_eq!(tail_of(&b"ab"[..], 3), b"ab");
        let long = vec![7u8; 100_000];
        assert_eq!(tail_of(&long[..], 10).len(), 10);
    }
}
