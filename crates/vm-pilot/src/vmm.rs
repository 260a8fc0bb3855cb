// SPDX-License-Identifier: MIT
//! The two VMMs behind one trait, and what a started VM is made of.
//!
//! A [`Plan`] is everything one VM instance needs on the host: its private directory, its
//! overlay disk, how many guest channel ports it has, its TAP device and the settings for
//! the guest init. A [`Vmm`] turns a plan into a running VMM process and connects to the
//! guest channel; everything after the connection (the call itself) is the same for both
//! backends, because both channels end up as a unix stream on the host.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use flakes::config::vm::VmFlake;

use crate::error::{Result, VmError};
use crate::timing::Deadline;
use crate::vsock::Announcement;

/// Extra kernel command-line words of this instance, for the guest init (see sci's
/// `cmdline` module for their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// Serve many calls.
    pub resume: bool,
    /// Idle timeout in seconds (resume), `None` for never.
    pub idle: Option<u64>,
    /// Diagnostics on the guest console (`PILOT_DEBUG` on the host).
    pub debug: bool,
    /// The VM may be saved while it waits for its call (see [`crate::saved`]).
    pub resync: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn serial_words_quote_what_needs_it() {
        let argv: Vec<Vec<u8>> = ["/bin/sh", "-c", "echo a b", "it's", ""]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        assert_eq!(
            serial_run(&argv).unwrap(),
            r#"run="/bin/sh -c 'echo a b' 'it'\''s' ''""#
        );
    }

    #[test]
    fn an_argument_serial_mode_cannot_carry_is_named() {
        let quote = serial_run(&[b"say \"hi\"".to_vec()]).unwrap_err();
        assert_eq!(
            quote.to_string(),
            r#"the argument "say \"hi\"" (a double quote or control character)"#
        );
        let newline = serial_run(&[b"a\nb".to_vec()]).unwrap_err();
        assert!(matches!(newline, SerialError::Uncarried { ref arg } if arg == "a\nb"));
        let binary = serial_run(&[b"ok".to_vec(), b"x\xffy".to_vec()]).unwrap_err();
        assert_eq!(binary.to_string(), "argument 2 (\"x\u{fffd}y\", not UTF-8)");
    }

    #[test]
    fn sockets_are_reached_whatever_the_length_of_their_path() {
        use std::os::fd::AsRawFd;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("d".repeat(120));
        std::fs::create_dir(&dir).unwrap();
        let held = std::fs::File::open(&dir).unwrap();
        // Bound by name in the directory, as a VMM working there does.
        let by_name = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
        let _listener =
            std::os::unix::net::UnixListener::bind(by_name.join("channel-0.sock")).unwrap();
        let path = dir.join("channel-0.sock");
        assert!(
            UnixStream::connect(&path).is_err(),
            "too long to connect to"
        );
        connect_unix(&path).unwrap();
        assert!(connect_unix(&dir.join("missing.sock")).is_err());
    }

    #[test]
    fn only_the_recorded_vmm_is_connected_to() {
        let dir = tempfile::tempdir().unwrap();
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("channel-0.sock")).unwrap();
        assert!(
            connect_vmm(dir.path(), "channel-0.sock").is_err(),
            "no pid recorded"
        );
        let record = |text: String| {
            std::fs::write(dir.path().join(crate::instance::PID_FILE), text).unwrap();
        };
        let me = crate::instance::VmmId::of(std::process::id()).unwrap();
        record(format!("{} {}\n", me.pid + 1, me.start));
        let err = connect_vmm(dir.path(), "channel-0.sock").unwrap_err();
        assert!(err.to_string().contains("not by the VM's VMM"), "{err}");
        // The listener's pid, but it started at another time (a pid reused since), or a
        // record without the start time.
        for reused in [format!("{} {}\n", me.pid, me.start + 1), me.pid.to_string()] {
            record(reused.clone());
            assert!(
                connect_vmm(dir.path(), "channel-0.sock").is_err(),
                "{reused:?}"
            );
        }
        crate::instance::write_pid(dir.path(), std::process::id()).unwrap();
        connect_vmm(dir.path(), "channel-0.sock").unwrap();
    }

    /// A one-shot plan on the plain console, for tests.
    pub(crate) fn plan() -> Plan {
        Plan {
            flake: "app".into(),
            dir: "/i".into(),
            overlay: None,
            channel: Channel::Console,
            announces: false,
            tap: None,
            guest: GuestSettings {
                resume: false,
                idle: None,
                debug: false,
                resync: false,
            },
            serial: None,
        }
    }

    #[test]
    fn a_running_vm_is_called_on_the_channel_it_was_started_with() {
        let dir = tempfile::tempdir().unwrap();
        let plan = |channel| Plan {
            dir: dir.path().to_path_buf(),
            channel,
            ..plan()
        };
        // Started with ports: a caller who would choose vsock (or ports) takes ports.
        assert_eq!(plan(Channel::Vsock).as_running().channel, Channel::Ports(4));
        assert_eq!(
            plan(Channel::Ports(4)).as_running().channel,
            Channel::Ports(4)
        );
        // Started with vsock: every caller takes vsock.
        std::fs::write(dir.path().join(crate::vsock::SOCKET), "").unwrap();
        assert_eq!(plan(Channel::Ports(4)).as_running().channel, Channel::Vsock);
    }

    /// `wait_ready` on a stream whose guest end wrote `bytes` and then stayed or hung up.
    fn ready_after(bytes: &[u8], hang_up: bool) -> Result<()> {
        let (mut host, mut guest) = UnixStream::pair().unwrap();
        std::io::Write::write_all(&mut guest, bytes).unwrap();
        if hang_up {
            drop(guest);
            return wait_ready(&mut host, &plan(), Duration::from_secs(5), || true);
        }
        let result = wait_ready(&mut host, &plan(), Duration::from_secs(5), || true);
        drop(guest);
        result
    }

    #[test]
    fn the_call_waits_for_ready_and_a_guest_that_says_anything_else_is_an_error() {
        use flake_protocol::proto::{Frame, VERSION};
        assert!(ready_after(&Frame::Ready(VERSION).encode(), false).is_ok());
        let old = ready_after(&Frame::Ready(VERSION - 1).encode(), false).unwrap_err();
        assert!(old.to_string().contains("pull the image again"), "{old}");
        let noise = ready_after(b"[    0.1] kernel message\n", false).unwrap_err();
        assert!(
            noise.to_string().contains("other than its ready"),
            "{noise}"
        );
        let closed = ready_after(b"", true).unwrap_err();
        assert!(closed.to_string().contains("channel closed"), "{closed}");
    }

    #[test]
    fn a_resync_answer_is_told_from_ready_and_errors() {
        use flake_protocol::proto::Frame;
        let answer = |frames: &[Frame], hang_up: bool| {
            let (mut host, mut guest) = UnixStream::pair().unwrap();
            for frame in frames {
                frame.write_to(&mut guest).unwrap();
            }
            if hang_up {
                drop(guest);
                return wait_resynced(&mut host, &plan(), Duration::from_secs(5), || true);
            }
            let result = wait_resynced(&mut host, &plan(), Duration::from_secs(5), || true);
            drop(guest);
            result
        };
        let ready = Frame::Ready(flake_protocol::proto::VERSION);
        let taken = answer(
            &[ready.clone(), ready.clone(), Frame::Resynced(true)],
            false,
        );
        assert_eq!(
            taken.unwrap(),
            Resynced::Taken(true),
            "earlier Readys are passed over"
        );
        let kept = answer(&[Frame::Resynced(false)], false).unwrap();
        assert_eq!(kept, Resynced::Taken(false));
        let broken = || Frame::Error("sci: overlay broken".into());
        let exit = Frame::Exit(flake_protocol::proto::ExitStatus::Exited(125));
        let failed = answer(&[ready, broken(), exit], false).unwrap();
        let want = Resynced::Failed {
            message: "sci: overlay broken".into(),
            status: flake_protocol::proto::ExitStatus::Exited(125),
        };
        assert_eq!(failed, want);
        assert_eq!(
            answer(&[broken()], true).unwrap(),
            want,
            "the status was lost"
        );
        let closed = answer(&[], true).unwrap_err();
        assert!(
            closed.to_string().contains("instead of a resync"),
            "{closed}"
        );
        let (mut host, _guest) = UnixStream::pair().unwrap();
        let gone = wait_resynced(&mut host, &plan(), Duration::from_secs(30), || false);
        assert!(gone
            .unwrap_err()
            .to_string()
            .contains("before it was resynced"));
        let late = wait_resynced(&mut host, &plan(), Duration::from_millis(120), || true);
        assert!(late.unwrap_err().to_string().contains("within 0 s"));
    }

    #[test]
    fn waiting_for_ready_ends_when_the_vmm_does_or_time_is_up() {
        let (mut host, _guest) = UnixStream::pair().unwrap();
        let gone = wait_ready(&mut host, &plan(), Duration::from_secs(30), || false);
        assert!(gone.unwrap_err().to_string().contains("stopped before"));
        let started = Instant::now();
        let late = wait_ready(&mut host, &plan(), Duration::from_millis(120), || true);
        assert!(late.unwrap_err().to_string().contains("not ready within"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

/// One VM instance on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The flake name (for messages).
    pub flake: String,
    /// The instance's private directory; the VMM's working directory, in which it binds its
    /// sockets by name (see [`connect_unix`]).
    pub dir: PathBuf,
    /// Writable overlay disk (the guest's second drive).
    pub overlay: Option<PathBuf>,
    /// How the host reaches the guest init.
    pub channel: Channel,
    /// The guest init announces its vsock listener ([`crate::vsock::wait_up`]).
    pub announces: bool,
    /// TAP device of the guest's network interface.
    pub tap: Option<String>,
    /// Settings for the guest init.
    pub guest: GuestSettings,
    /// Serial mode (an image without the flake-pilot guest init): the `run="..."` word of
    /// the kernel command line; the guest console is the caller's terminal.
    pub serial: Option<String>,
}

/// What the guest init of an image can do, as far as the choice of its channel goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InitCan {
    /// Serve a one-shot call over the plain virtio console.
    pub console: bool,
    /// Announce its vsock listener ([`crate::vsock::wait_up`]).
    pub announce: bool,
}

/// The guest channel of a VM: how calls reach its guest init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// The plain virtio console, for the one call of a one-shot VM (QEMU; the image's guest
    /// init must know it): ready as soon as the kernel probed it, and the one channel a
    /// saved VM state can carry ([`crate::saved`]). The guest announces itself with `Ready`
    /// there, see [`wait_ready`].
    Console,
    /// This many virtio console ports, each serving one call at a time (QEMU without a
    /// vsock device).
    Ports(usize),
    /// vsock, every connection its own call ([`crate::vsock`]): Firecracker, and QEMU with
    /// `vhost-device-vsock`.
    Vsock,
}

impl Channel {
    /// The `sci_channel` word the guest init reads it from.
    pub fn word(self) -> &'static str {
        match self {
            Channel::Console => "console",
            Channel::Ports(_) => "virtio",
            Channel::Vsock => "vsock",
        }
    }

    /// The ports calls claim one each; 0 where connections are the calls' own.
    pub fn ports(self) -> usize {
        match self {
            Channel::Ports(ports) => ports,
            Channel::Console | Channel::Vsock => 0,
        }
    }
}

impl Plan {
    /// The guest's console log (kernel messages never reach the caller's terminal).
    pub fn log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The kernel command line: the flake's words, then the instance's.
    pub fn kernel_args(&self, flake: &VmFlake) -> Vec<String> {
        let mut args = flake.runtime.boot_args.clone();
        args.extend(self.instance_args());
        args
    }

    /// The words this instance adds to the flake's kernel command line.
    pub fn instance_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["ro".into(), "panic=-1".into(), "reboot=t".into()];
        if self.overlay.is_some() {
            args.push("overlay_root=/dev/vdb".into());
        }
        if let Some(run) = &self.serial {
            args.push(run.clone());
            return args;
        }
        args.push(format!("sci_channel={}", self.channel.word()));
        if self.channel.ports() > 1 {
            args.push(format!("sci_ports={}", self.channel.ports()));
        }
        if self.guest.debug {
            args.push("sci_debug=1".into());
        }
        if self.guest.resync {
            args.push("sci_resync=1".into());
        }
        if self.guest.resume {
            args.push("sci_resume=1".into());
            args.push(format!("sci_idle={}", self.guest.idle.unwrap_or(0)));
        }
        args
    }

    /// This plan with the channel its running VM was started with, as its instance
    /// directory shows it: the vsock socket, or ports (QEMU's resume VMs have
    /// [`crate::qemu::RESUME_PORTS`]).
    pub fn as_running(&self) -> Plan {
        let vsock = self.dir.join(crate::vsock::SOCKET).exists();
        let channel = match (vsock, self.channel) {
            (true, _) => Channel::Vsock,
            (false, Channel::Ports(ports)) => Channel::Ports(ports),
            (false, _) => Channel::Ports(crate::qemu::RESUME_PORTS),
        };
        Plan {
            channel,
            ..self.clone()
        }
    }

    /// The guest error `what` for this instance.
    pub fn guest_error(&self, what: impl Into<String>) -> VmError {
        VmError::Guest {
            flake: self.flake.clone(),
            what: what.into(),
            dir: self.dir.clone(),
        }
    }

    /// Where the VMM's own messages go.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
}

/// An argument the kernel command line of serial mode cannot carry ([`serial_run`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerialError {
    /// The argument is not UTF-8.
    #[error("argument {number} ({lossy:?}, not UTF-8)")]
    NotUtf8 {
        /// Its place among the arguments, from 1.
        number: usize,
        /// It, with what is not UTF-8 replaced.
        lossy: String,
    },
    /// The argument holds a double quote or a control character.
    #[error("the argument {arg:?} (a double quote or control character)")]
    Uncarried {
        /// The argument.
        arg: String,
    },
    /// The image records an environment, a working directory or a user (see
    /// [`crate::entry`]): the kernel command line carries only the argv.
    #[error("the image's environment, working directory and user")]
    ImageSettings,
}

/// The `run="..."` word of serial mode for `argv`: each argument a shell word, quoted
/// when it needs to be. A double quote or a control character cannot be carried on a
/// kernel command line, so such an argument is refused (naming it) rather than mangled.
pub fn serial_run(argv: &[Vec<u8>]) -> std::result::Result<String, SerialError> {
    let mut words = Vec::new();
    for (index, arg) in argv.iter().enumerate() {
        let text = String::from_utf8(arg.clone()).map_err(|e| SerialError::NotUtf8 {
            number: index + 1,
            lossy: String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })?;
        if text.chars().any(|c| c == '"' || c.is_control()) {
            return Err(SerialError::Uncarried { arg: text });
        }
        let plain = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c));
        words.push(if plain {
            text
        } else {
            format!("'{}'", text.replace('\'', r"'\''"))
        });
    }
    Ok(format!("run=\"{}\"", words.join(" ")))
}

/// The longest path a unix socket address holds (`sun_path`, with its terminating NUL).
const SOCKET_PATH_MAX: usize = 108;

/// Connects to the unix socket at `path`, whatever its length. A VMM binds its sockets by
/// name in the instance directory, its working directory (see [`Plan::dir`]), because the
/// longest valid names make the full path too long for a socket address; such a path is
/// reached here through its directory, opened on its own (`/proc/self/fd/N/NAME`).
pub fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path);
    };
    if path.as_os_str().len() < SOCKET_PATH_MAX {
        return UnixStream::connect(path);
    }
    let held = open_dir_path(dir)?;
    UnixStream::connect(held.1.join(name))
}

/// Binds a unix socket at `path`, whatever its length (see [`connect_unix`]).
pub fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::net::UnixListener;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    if path.as_os_str().len() < SOCKET_PATH_MAX {
        return UnixListener::bind(path);
    }
    let held = open_dir_path(dir)?;
    UnixListener::bind(held.1.join(name))
}

/// `dir` opened on its own (`O_PATH`), and its name through the descriptor.
fn open_dir_path(dir: &Path) -> std::io::Result<(std::os::fd::OwnedFd, PathBuf)> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let held = rustix::fs::open(dir, flags, Mode::empty())?;
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&held)
    ));
    Ok((held, short))
}

/// Connects to socket `name` of the VM whose instance directory is `dir`, and keeps the
/// connection only if the VMM the instance records (pid and start time) or a child it
/// started (QEMU's vsock device) listens on it (`SO_PEERCRED`), before anything is sent.
/// The directory is the caller's own, so only root or the caller could plant another
/// listener there; this makes sure a call never goes to one.
pub fn connect_vmm(dir: &Path, name: &str) -> std::io::Result<UnixStream> {
    let stream = connect_unix(&dir.join(name))?;
    let peer = flake_agent::transport::peer_credentials(&stream)?;
    if served_by_vmm(dir, peer.pid) {
        return Ok(stream);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "{name} is served by pid {} (uid {}), not by the VM's VMM; nothing was sent to it",
            peer.pid, peer.uid
        ),
    ))
}

/// Whether process `pid` is the running VMM the instance in `dir` records (pid and start
/// time: a process that got the VMM's pid later is not the VMM), or a child it started.
pub fn served_by_vmm(dir: &Path, pid: u32) -> bool {
    crate::instance::recorded(dir)
        .filter(crate::instance::VmmId::is_alive)
        .is_some_and(|vmm| vmm.pid == pid || crate::instance::is_child(pid, &vmm))
}

/// A virtual machine monitor.
pub trait Vmm: std::fmt::Debug {
    /// The guest channel of a VM (`resume`: it serves many calls, maybe at once) whose
    /// guest init can do what `init` says.
    fn channel(&self, resume: bool, init: InitCan) -> Channel;
    /// Starts the VMM of `plan`; it runs until the guest ends.
    fn start(&self, flake: &VmFlake, plan: &Plan) -> Result<Child>;
    /// One attempt to open guest channel `port`; fails while the guest is not ready.
    fn connect(&self, plan: &Plan, port: usize) -> std::io::Result<UnixStream>;
    /// Whether this VMM can save a one-shot VM and start others from its state.
    fn saves_states(&self) -> bool {
        false
    }
    /// The key a saved state of `plan`'s VM is valid for (see [`crate::saved::key`]);
    /// `None` when it cannot have one.
    fn state_key(&self, _flake: &VmFlake, _plan: &Plan) -> Option<String> {
        None
    }
    /// Starts the VMM of `plan` restoring `state`, or ready to save to it
    /// ([`Vmm::save_state`]).
    fn start_with_state(&self, _flake: &VmFlake, plan: &Plan, _state: &StateFile) -> Result<Child> {
        Err(plan.guest_error("this VMM cannot start from saved states"))
    }
    /// Saves the running VM of `plan` (started with [`StateFile::Save`]) into the file
    /// `to`, then lets it run on. The error: the VM does not run again.
    fn save_state(&self, _plan: &Plan, _to: &std::fs::File) -> Result<Saved> {
        Ok(Saved::Not(crate::saved::SavedError::Unsupported))
    }
}

/// Whether a running VM was saved ([`Vmm::save_state`]); it runs on either way.
#[derive(Debug)]
pub enum Saved {
    /// Its state is in the file.
    Saved,
    /// It was not saved, for this reason.
    Not(crate::saved::SavedError),
}

/// What a VMM started with a saved state does with it.
#[derive(Debug)]
pub enum StateFile {
    /// Restore the VM from this open state.
    Restore(std::fs::File),
    /// Be ready to save the VM.
    Save,
}

/// Connects to guest channel `port`, waiting up to `timeout` while the VMM (`alive`) runs.
pub fn wait_connect(
    vmm: &dyn Vmm,
    plan: &Plan,
    port: usize,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<UnixStream> {
    let deadline = Deadline::after(timeout);
    if plan.channel == Channel::Vsock && plan.announces {
        match crate::vsock::wait_up(&plan.dir, timeout, &mut alive) {
            Announcement::Up => {}
            Announcement::VmmEnded => {
                return Err(plan.guest_error(
                    "stopped before its guest init was ready (it never listened on vsock)",
                ))
            }
            Announcement::TimedOut => {
                return Err(plan.guest_error(format!(
                    "did not listen on vsock within {} s",
                    timeout.as_secs()
                )))
            }
        }
        return connect_announced(plan, deadline, timeout, alive);
    }
    loop {
        if let Ok(stream) = vmm.connect(plan, port) {
            return Ok(stream);
        }
        if !alive() {
            return Err(plan.guest_error("stopped before its guest channel opened"));
        }
        if deadline.passed() {
            // A guest that is up takes a vsock connection only when it answers.
            let up = plan.dir.join(crate::vsock::GUEST_UP).exists();
            let what = if up {
                "did not answer the call"
            } else {
                "did not open its guest channel"
            };
            return Err(plan.guest_error(format!("{what} within {} s", timeout.as_secs())));
        }
        std::thread::sleep(crate::timing::POLL);
    }
}

/// Connects over vsock to a guest that announced itself (it listens). A connection the
/// guest does not take in time (a guest that is stopped or starved) is given up, not
/// followed by more (see [`crate::vsock::connect_within`]); one it refuses at once (it is
/// powering off) is made again while the VMM runs.
fn connect_announced(
    plan: &Plan,
    deadline: Deadline,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<UnixStream> {
    loop {
        let remaining = deadline.remaining();
        let err = match crate::vsock::connect_within(&plan.dir, remaining) {
            Ok(stream) => return Ok(stream),
            Err(err) => err,
        };
        if matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) || deadline.passed()
        {
            return Err(plan.guest_error(format!(
                "did not answer the call within {} s",
                timeout.as_secs()
            )));
        }
        if !alive() {
            return Err(plan.guest_error("stopped before its guest channel opened"));
        }
        std::thread::sleep(crate::timing::POLL);
    }
}

/// Waits for the guest init's `Ready` on a channel that cannot tell the host that the guest
/// reads it (the plain virtio console): the call must not be sent before, and a guest that
/// never gets there (a kernel that hangs, an init that fails) is noticed instead of
/// hanging the caller.
pub fn wait_ready(
    stream: &mut UnixStream,
    plan: &Plan,
    timeout: Duration,
    alive: impl FnMut() -> bool,
) -> Result<()> {
    match wait_readable(stream, Instant::now() + timeout, alive) {
        Waited::Readable => {}
        Waited::Stopped => {
            return Err(plan.guest_error("stopped before its guest init was ready"));
        }
        Waited::TimedOut => {
            return Err(plan.guest_error(format!(
                "guest init was not ready within {} s",
                timeout.as_secs()
            )));
        }
    }
    // The frame is 7 bytes written at once: once any arrived, the rest follows.
    let frame = read_arrived(stream, plan)?;
    match frame {
        Ok(Some(flake_protocol::proto::Frame::Ready(flake_protocol::proto::VERSION))) => Ok(()),
        Ok(Some(flake_protocol::proto::Frame::Ready(other))) => Err(plan.guest_error(format!(
            "guest init speaks protocol {other}, this launcher {}: pull the image again with this flake-pilot, or update flake-pilot",
            flake_protocol::proto::VERSION
        ))),
        Ok(None) => {
            Err(plan
                .guest_error("stopped before its guest init was ready (the guest channel closed)"))
        }
        Ok(Some(_)) | Err(_) => {
            Err(plan
                .guest_error("sent something other than its ready message on the guest channel"))
        }
    }
}

/// How waiting for a guest's bytes ended.
enum Waited {
    /// There are bytes to read (or the channel closed).
    Readable,
    /// The VMM ended.
    Stopped,
    /// The deadline passed.
    TimedOut,
}

/// Waits until `stream` has bytes to read, while the VMM (`alive`) runs and `deadline` is
/// ahead.
fn wait_readable(
    stream: &UnixStream,
    deadline: Instant,
    mut alive: impl FnMut() -> bool,
) -> Waited {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let step = Timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    loop {
        let mut fds = [PollFd::new(stream, PollFlags::IN)];
        if poll(&mut fds, Some(&step)).is_ok_and(|n| n > 0) {
            return Waited::Readable;
        }
        if !alive() {
            return Waited::Stopped;
        }
        if Instant::now() > deadline {
            return Waited::TimedOut;
        }
    }
}

/// Reads the frame whose first bytes have arrived on `stream` (its rest follows at once,
/// so a guest that stops halfway is an error after 5 s rather than a hang).
fn read_arrived(
    stream: &mut UnixStream,
    plan: &Plan,
) -> Result<flake_protocol::proto::Result<Option<flake_protocol::proto::Frame>>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(crate::error::io(&plan.dir))?;
    let frame = flake_protocol::proto::Frame::read_from(stream);
    stream
        .set_read_timeout(None)
        .map_err(crate::error::io(&plan.dir))?;
    Ok(frame)
}

/// The guest init's answer to `Resync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resynced {
    /// It took the host's clock and (`true`) reseeded its random generator; the call may
    /// come.
    Taken(bool),
    /// Its overlay disk failed.
    Failed {
        /// What the guest said.
        message: String,
        /// The status the call ends with.
        status: flake_protocol::proto::ExitStatus,
    },
}

/// Waits for the guest init's answer to `Resync`. `Ready`s it said before it read the
/// `Resync` are passed over; a closed channel, another frame or no answer until `timeout`
/// are errors.
pub fn wait_resynced(
    stream: &mut UnixStream,
    plan: &Plan,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<Resynced> {
    use flake_protocol::proto::{ExitStatus, Frame};
    let deadline = Instant::now() + timeout;
    let mut failed: Option<String> = None;
    loop {
        match wait_readable(stream, deadline, &mut alive) {
            Waited::Readable => {}
            Waited::Stopped => return Err(plan.guest_error("stopped before it was resynced")),
            Waited::TimedOut => {
                return Err(plan.guest_error(format!(
                    "did not answer its resync within {} s",
                    timeout.as_secs()
                )))
            }
        }
        let frame = read_arrived(stream, plan)?;
        match (frame, &mut failed) {
            (Ok(Some(Frame::Ready(_))), _) => {}
            (Ok(Some(Frame::Resynced(reseeded))), None) => return Ok(Resynced::Taken(reseeded)),
            (Ok(Some(Frame::Error(message))), failed @ None) => *failed = Some(message),
            (Ok(Some(Frame::Exit(status))), Some(message)) => {
                return Ok(Resynced::Failed {
                    message: std::mem::take(message),
                    status,
                })
            }
            // The exit status of a failure was lost: the one the guest init gives.
            (Ok(None), Some(message)) => {
                return Ok(Resynced::Failed {
                    message: std::mem::take(message),
                    status: ExitStatus::Exited(125),
                })
            }
            (Ok(None), None) => {
                return Err(plan.guest_error("closed its channel instead of a resync"))
            }
            (Ok(Some(_)) | Err(_), _) => {
                return Err(plan.guest_error("answered its resync with something else"))
            }
        }
    }
}

/// Makes the VMM of a one-shot call end with its launcher: with a launcher killed
/// mid-call (even by `SIGKILL`), nothing would stop the VM otherwise, and a guest on the
/// plain virtio console cannot see its caller hang up.
pub fn end_with_launcher(command: &mut std::process::Command) {
    flakes::process::end_with_parent(command, rustix::process::Signal::KILL);
}

/// The log file of a VMM process, created empty (Firecracker requires it to exist).
pub fn create_log(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(crate::error::io(path))
}
