// SPDX-License-Identifier: MIT
//! Test harness: a private flake world per test (its own global config, flakes dir, app dir
//! and HOME) driving the real `flake-ctl` and `podman-pilot` binaries against real podman.
//!
//! Tests that need podman skip with a visible message when it is unusable, unless
//! `FLAKE_TEST_REQUIRE_PODMAN=1` (set by `make test`), which turns the skip into a failure.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod netns;
pub mod registry;
pub mod vm;

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The image every test runs: busybox-static imported by scripts/setup-host.sh.
pub const IMAGE: &str = "localhost/busybox:latest";

/// Directory of the built binaries.
pub fn bin_dir() -> PathBuf {
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_flake-ctl"));
    let dir = ctl.parent().unwrap().to_path_buf();
    assert!(
        dir.join("podman-pilot").is_file(),
        "podman-pilot is not built next to {}; run `cargo build --workspace --bins` first",
        ctl.display()
    );
    dir
}

/// True when podman and the test image are usable; otherwise explains why.
pub fn podman_ready() -> bool {
    let ok = rustix_is_root()
        && Command::new("podman")
            .args(["image", "exists", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        skip(&format!(
            "needs root and podman with {IMAGE} (run scripts/setup-host.sh)"
        ));
    }
    ok
}

/// Reports a skipped test, or fails it when `FLAKE_TEST_REQUIRE_PODMAN=1` (as in `make test`).
pub fn skip(why: &str) {
    let required = std::env::var("FLAKE_TEST_REQUIRE_PODMAN").is_ok_and(|v| v == "1");
    assert!(!required, "required test resource missing: {why}");
    note_skip(why);
}

/// Says that the calling test skips its checks, on stderr and, when `FLAKE_TEST_SKIPS`
/// names a file, in that file, whose lines `make test` prints after the run: cargo counts a
/// test that returned early as passed, so the skip must be visible elsewhere.
pub fn note_skip(why: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIP: {test}: {why}");
    if let Some(path) = std::env::var_os("FLAKE_TEST_SKIPS") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = writeln!(file, "{test}: {why}");
        }
    }
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    rustix_is_root()
}

fn rustix_is_root() -> bool {
    // `id -u` keeps the test crate free of extra dependencies.
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// Skips the calling test when podman is not usable.
#[macro_export]
macro_rules! require_podman {
    () => {
        if !$crate::util::podman_ready() {
            return;
        }
    };
}

/// A private flake world.
pub struct World {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub flakes: PathBuf,
    pub bin: PathBuf,
    pub home: PathBuf,
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("flake-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let (config, flakes, bin, home) = (
            root.join("flakes.yml"),
            root.join("flakes"),
            root.join("bin"),
            root.join("home"),
        );
        std::fs::create_dir_all(&home).unwrap();
        let ids = root.join("ids");
        let text = format!(
            "generic:\n  flakes_dir: {}\n  podman_ids_dir: {}\n  firecracker_ids_dir: {}\n",
            flakes.display(),
            ids.display(),
            ids.display()
        );
        std::fs::write(&config, text).unwrap();
        World {
            dir,
            config,
            flakes,
            bin,
            home,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A command with this world's environment.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        // Registration templates come from the world, never from the host's /etc/flakes.
        cmd.env("FLAKES_CONFIG", &self.config)
            .env("FLAKES_TEMPLATE_DIR", self.dir.path().join("templates"))
            .env("HOME", &self.home)
            .current_dir(self.dir.path());
        // The caller's diagnostics settings would change what the launchers print and
        // keep (`PILOT_DEBUG` keeps every VM's directory).
        cmd.env_remove("FLAKE_LOG_LEVEL").env_remove("PILOT_DEBUG");
        // QEMU's vsock device of the VM fixtures is found as an installed one is.
        if let Some(fixtures) = std::env::var_os("FLAKE_VM_FIXTURES") {
            let mut path = PathBuf::from(fixtures).join("vhost-user").into_os_string();
            path.push(":");
            path.push(std::env::var_os("PATH").unwrap_or_default());
            cmd.env("PATH", path);
        }
        cmd
    }

    /// Runs flake-ctl with `args`.
    pub fn ctl(&self, args: &[&str]) -> Run {
        let mut cmd = self.command(bin_dir().join("flake-ctl"));
        cmd.args(args);
        Run::new(cmd, None)
    }

    /// Registers app `name` in this world's bin dir on the test image.
    pub fn register(&self, name: &str, target: &str, opts: &[&str]) -> PathBuf {
        let app = self.bin.join(name);
        let app_s = app.display().to_string();
        let mut args = vec![
            "podman",
            "register",
            "--container",
            IMAGE,
            "--app",
            &app_s,
            "--target",
            target,
        ];
        for opt in opts {
            args.extend(["--opt", opt]);
        }
        self.ctl(&args).success();
        app
    }

    /// Registers a resume flake `name` running `/bin/sh`, removed again when the guard drops.
    pub fn register_resume(&self, name: &str) -> (PathBuf, Containers) {
        let app = self.bin.join(name);
        let app_s = app.display().to_string();
        let args = [
            "podman",
            "register",
            "--container",
            IMAGE,
            "--app",
            &app_s,
            "--target",
            "/bin/sh",
            "--resume",
            "--opt",
            r"\--network none",
        ];
        self.ctl(&args).success();
        (app, Containers(name.to_string()))
    }

    /// Runs the app at `app` with `args` and optional stdin bytes.
    pub fn app(&self, app: &Path, args: &[&str], stdin: Option<&[u8]>) -> Run {
        let mut cmd = self.command(app);
        cmd.args(args);
        Run::new(cmd, stdin)
    }

    /// Every path below the world's root, sorted, relative.
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.strip_prefix(root).unwrap().display().to_string());
        if path.is_dir() && !path.is_symlink() {
            walk(root, &path, out);
        }
    }
}

/// How long one command of a test may run: a hang fails its test in minutes, not when the
/// whole run is cut off.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Kills a command (its process group) that runs longer than [`RUN_LIMIT`].
struct Watchdog {
    stop: std::sync::mpsc::Sender<()>,
    fired: std::thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(pid: u32) -> Self {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let fired = std::thread::spawn(move || {
            match stopped.recv_timeout(RUN_LIMIT) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    // Still waited for (unless it ended this very moment), so the
                    // group is the command's; all of it, as any of it may hold the pipes.
                    let _ = Command::new("kill")
                        .args(["-KILL", "--", &format!("-{pid}")])
                        .status();
                    true
                }
                _ => false,
            }
        });
        Watchdog { stop, fired }
    }

    /// Whether the command had to be killed.
    fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.fired.join().unwrap_or(true)
    }
}

/// A finished command with everything needed to explain a failure.
pub struct Run {
    pub description: String,
    pub output: Output,
    pub elapsed: Duration,
}

impl Run {
    /// Runs a prepared command with no stdin.
    pub fn from_command(cmd: Command) -> Self {
        Run::new(cmd, None)
    }

    fn new(mut cmd: Command, stdin: Option<&[u8]>) -> Self {
        let description = format!("{cmd:?}");
        let started = Instant::now();
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        // A group of its own, for the watchdog.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        // Feed stdin from a thread: the app may fill its stdout pipe before it has read all of
        // its input, and nobody reads stdout until wait_with_output.
        let feeder = stdin.map(|bytes| {
            let mut pipe = child.stdin.take().unwrap();
            let bytes = bytes.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            })
        });
        let watchdog = Watchdog::start(child.id());
        let output = child.wait_with_output().unwrap();
        let overran = watchdog.stop();
        assert!(
            !overran,
            "{description} ran longer than {RUN_LIMIT:?} and was killed: {:?}\nstdout:\n{}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if let Some(feeder) = feeder {
            feeder.join().unwrap();
        }
        Run {
            description,
            output,
            elapsed: started.elapsed(),
        }
    }

    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Panics with the full story unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), code, "{self}");
        self
    }

    pub fn success(&self) -> &Self {
        self.expect_code(0)
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "\ncommand: {}\nstatus: {:?} after {:?}\nstdout:\n{}\nstderr:\n{}",
            self.description,
            self.output.status,
            self.elapsed,
            self.stdout(),
            self.stderr()
        )
    }
}

/// Containers carrying the flake label `name`, as podman reports them.
pub fn containers_of(name: &str) -> Vec<String> {
    let out = Command::new("podman")
        .args(["ps", "-a", "--format", "{{.ID}}", "--filter"])
        .arg(format!("label=io.flake-pilot.flake={name}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Removes every container of a flake when dropped, so failed tests leave nothing running.
pub struct Containers(pub String);

impl Drop for Containers {
    fn drop(&mut self) {
        for id in containers_of(&self.0) {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", &id])
                .output();
        }
    }
}

/// A flake name unique to this test process, so parallel tests never share containers.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// True when the static agent that resume flakes need is available (`FLAKE_AGENT`).
pub fn agent_ready() -> bool {
    let ok = std::env::var_os("FLAKE_AGENT").is_some_and(|p| Path::new(&p).is_file());
    if !ok {
        skip("FLAKE_AGENT must name the static flake-agent (run make agent)");
    }
    ok
}

/// Skips the calling test unless podman and the static agent are usable.
#[macro_export]
macro_rules! require_resume {
    () => {
        if !$crate::util::podman_ready() || !$crate::util::agent_ready() {
            return;
        }
    };
}

/// Runs `app args` on a fresh pseudo-terminal and returns everything it printed there.
pub fn in_pty(w: &World, app: &Path, args: &[&str]) -> String {
    let driver = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
"#;
    let out = w
        .command("python3")
        .args(["-c", driver])
        .arg(app)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What [`pty_session`] saw.
#[derive(Debug)]
pub struct PtySession {
    /// Everything the app printed on its terminal.
    pub output: String,
    /// The app's exit code (128 + N for a signal N).
    pub code: i32,
    /// The terminal's modes after the app were those it had before.
    pub restored: bool,
}

/// Runs `app args` on a fresh pseudo-terminal in cooked mode; once its output contains
/// `mark`, types `input`. Reports the output, the exit code, and whether the terminal's
/// modes were restored (a launcher puts it in raw mode for a terminal call).
pub fn pty_session(w: &World, app: &Path, args: &[&str], mark: &str, input: &[u8]) -> PtySession {
    let driver = r#"
import os, sys, termios, time, json, select
mark, data = sys.argv[1].encode(), bytes.fromhex(sys.argv[2])
master, slave = os.openpty()
before = termios.tcgetattr(slave)
pid = os.fork()
if pid == 0:
    os.setsid()
    import fcntl
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.execv(sys.argv[3], sys.argv[3:])
out, sent, deadline = b"", not data, time.time() + 120
while time.time() < deadline:
    ready, _, _ = select.select([master], [], [], 0.2)
    if ready:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        out += chunk
    if not sent and mark in out:
        os.write(master, data)
        sent = True
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
else:
    os.kill(pid, 9)
    done, status = os.waitpid(pid, 0)
try:
    while select.select([master], [], [], 0.2)[0]:
        out += os.read(master, 4096)
except OSError:
    pass
after = termios.tcgetattr(slave)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({"out": out.decode(errors="replace"), "code": code if code >= 0 else 128 - code,
                  "restored": before == after}))
"#;
    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
    let out = w
        .command("python3")
        .args(["-c", driver, mark, &hex])
        .arg(app)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    PtySession {
        output: seen["out"].as_str().unwrap_or_default().to_string(),
        code: i32::try_from(seen["code"].as_i64().unwrap_or(-1)).unwrap_or(-1),
        restored: seen["restored"].as_bool().unwrap_or(false),
    }
}
