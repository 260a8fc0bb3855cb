// SPDX-License-Identifier: MIT
//! The launch's decisions against a recording fake of the [`Vmm`] trait: which VMM starts
//! are asked for, in which order, and what the launch does when a VM ends early, refuses a
//! saved state or refuses a call while it powers off. The fake's "VMMs" are short shell
//! processes whose command line names the instance directory (as a VMM's does, which is
//! how liveness is told), and its guest channel is a socket pair with a scripted guest.
//! Real QEMU runs the same paths in the integration tests; these run in milliseconds.

use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Mutex;

use flake_protocol::proto::{ExitStatus, Frame};
use flakes::callargs::{CallArgs, Terminal};
use flakes::config::vm::VmFlake;
use flakes::config::{Include, LaunchMode};
use flakes::instance::InstanceKey;

use super::{GuestInit, Launch};
use crate::error::{Result, VmError};
use crate::vmm::{Channel, InitCan, Plan, StateFile, Vmm};

/// How one started fake VM behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guest {
    /// The VMM ends at once; its channel never opens.
    EndsAtOnce,
    /// The VMM runs; its calls are answered in turn from the fake's answers.
    Runs,
}

/// How the guest answers one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// It refuses the call as it powers off, and its VMM ends.
    Refuses,
    /// It runs the call, which exits with this code.
    Serves(u8),
}

/// A VMM that records what it is asked and plays the guests and answers it is given, in
/// turn.
#[derive(Debug)]
struct FakeVmm {
    channel: Channel,
    saves: bool,
    guests: Mutex<VecDeque<Guest>>,
    answers: Mutex<VecDeque<Answer>>,
    running: Mutex<Option<u32>>,
    asked: Mutex<Vec<&'static str>>,
    started: Mutex<Vec<u32>>,
}

impl FakeVmm {
    fn new(channel: Channel, saves: bool, guests: &[Guest], answers: &[Answer]) -> Self {
        FakeVmm {
            channel,
            saves,
            guests: Mutex::new(guests.iter().copied().collect()),
            answers: Mutex::new(answers.iter().copied().collect()),
            running: Mutex::new(None),
            asked: Mutex::new(Vec::new()),
            started: Mutex::new(Vec::new()),
        }
    }

    fn asked(&self) -> Vec<&'static str> {
        self.asked.lock().unwrap().clone()
    }

    fn spawn(&self, what: &'static str, plan: &Plan) -> Result<Child> {
        self.asked.lock().unwrap().push(what);
        let guest = self
            .guests
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Guest::EndsAtOnce);
        let script = match guest {
            Guest::EndsAtOnce => "exit 0",
            Guest::Runs => "sleep 30; true",
        };
        // The directory on the command line: how a VMM is told running (see `instance`).
        let named = format!("{}/", plan.dir.display());
        let child = Command::new("sh")
            .args(["-c", script])
            .arg(named)
            .spawn()
            .map_err(crate::error::io(&plan.dir))?;
        self.started.lock().unwrap().push(child.id());
        *self.running.lock().unwrap() = (guest == Guest::Runs).then_some(child.id());
        Ok(child)
    }
}

fn kill(pid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}

impl Drop for FakeVmm {
    fn drop(&mut self) {
        for pid in self.started.lock().unwrap().iter() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
    }
}

impl Vmm for FakeVmm {
    fn channel(&self, _resume: bool, _init: InitCan) -> Channel {
        self.channel
    }

    fn start(&self, _flake: &VmFlake, plan: &Plan) -> Result<Child> {
        self.spawn("start", plan)
    }

    fn connect(&self, _plan: &Plan, _port: usize) -> std::io::Result<UnixStream> {
        let Some(vmm) = *self.running.lock().unwrap() else {
            return Err(std::io::ErrorKind::ConnectionRefused.into());
        };
        self.asked.lock().unwrap().push("connect");
        let answer = self
            .answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Serves(0));
        if answer == Answer::Refuses {
            *self.running.lock().unwrap() = None;
        }
        let (host, mut end) = UnixStream::pair()?;
        std::thread::spawn(move || {
            // The call, then the scripted answer.
            let _ = Frame::read_from(&mut end);
            let frame = match answer {
                Answer::Refuses => Frame::Closing,
                Answer::Serves(code) => Frame::Exit(ExitStatus::Exited(code)),
            };
            let _ = frame.write_to(&mut end);
            if answer == Answer::Refuses {
                // It powers off.
                kill(vmm);
            }
            let _ = Frame::read_from(&mut end);
        });
        Ok(host)
    }

    fn saves_states(&self) -> bool {
        self.saves
    }

    fn state_key(&self, _flake: &VmFlake, _plan: &Plan) -> Option<String> {
        self.saves.then(|| "k".to_string())
    }

    fn start_with_state(&self, _flake: &VmFlake, plan: &Plan, state: &StateFile) -> Result<Child> {
        match state {
            StateFile::Restore(_) => self.spawn("restore", plan),
            StateFile::Save => self.spawn("save", plan),
        }
    }
}

/// A world for one launch: its directories and the launch's fixed parts.
struct World {
    _dir: tempfile::TempDir,
    ids: PathBuf,
    storage: PathBuf,
    states: PathBuf,
    flake: VmFlake,
    include: Include,
    call: CallArgs,
}

impl World {
    fn new(mode: LaunchMode) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut flake = crate::firecracker::tests::flake(false, "/k".into(), root.join("rootfs"));
        flake.runtime.mode = mode;
        let states = root.join("states");
        std::fs::create_dir_all(&states).unwrap();
        World {
            _dir: dir,
            ids: root.join("ids"),
            storage: root.join("storage"),
            states,
            flake,
            include: Include::default(),
            call: CallArgs::parse(Vec::<std::ffi::OsString>::new()).unwrap(),
        }
    }

    fn launch<'a>(&'a self, vmm: &'a dyn Vmm, guest: GuestInit) -> Launch<'a> {
        Launch {
            key: InstanceKey {
                flake: flakes::FlakeName::new("app").unwrap(),
                instance: None,
            },
            flake: &self.flake,
            include: &self.include,
            call: &self.call,
            command: crate::entry::GuestCommand::program("/bin/sh"),
            vmm,
            ids_dir: self.ids.clone(),
            storage_dir: self.storage.clone(),
            states_dir: Some(self.states.clone()),
            uid: rustix::process::geteuid().as_raw(),
            terminal: Terminal {
                stdin: false,
                stdout: false,
            },
            term: None,
            tools: crate::tools::Tools::new("/usr/sbin:/usr/bin:/sbin:/bin".into()),
            debug: false,
            guest,
            announces: false,
        }
    }

    /// The instance directories left under the caller's `.vm`.
    fn instances(&self) -> Vec<String> {
        let uid = rustix::process::geteuid().as_raw();
        let vms = self.ids.join(uid.to_string()).join(".vm");
        let mut names: Vec<String> = std::fs::read_dir(vms)
            .map(|dir| {
                dir.filter_map(std::result::Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn guest_error(result: Result<flakes::PilotExit>) -> String {
    match result {
        Err(err @ VmError::Guest { .. }) => err.to_string(),
        other => panic!("a guest error, not {other:?}"),
    }
}

#[test]
fn a_one_shot_vmm_that_ends_before_its_channel_opens_fails_and_keeps_its_logs() {
    let w = World::new(LaunchMode::OneShot);
    let vmm = FakeVmm::new(Channel::Vsock, false, &[Guest::EndsAtOnce], &[]);
    let err = guest_error(w.launch(&vmm, GuestInit::Protocol).run());
    assert!(
        err.contains("stopped before its guest channel opened"),
        "{err}"
    );
    assert_eq!(vmm.asked(), ["start"]);
    let kept = w.instances();
    assert!(
        kept.len() == 1 && kept[0].starts_with("app#"),
        "the failed VM's directory stays for its logs: {kept:?}"
    );
}

#[test]
fn a_one_shot_call_that_ran_removes_its_instance() {
    let w = World::new(LaunchMode::OneShot);
    let vmm = FakeVmm::new(Channel::Vsock, false, &[Guest::Runs], &[Answer::Serves(7)]);
    let exit = w.launch(&vmm, GuestInit::Protocol).run().unwrap();
    assert_eq!(exit, flakes::PilotExit::App(7));
    assert_eq!(vmm.asked(), ["start", "connect"]);
    assert!(w.instances().is_empty(), "{:?}", w.instances());
}

#[test]
fn a_saved_state_that_fails_is_refused_and_the_call_boots_instead() {
    let w = World::new(LaunchMode::OneShot);
    let state = crate::saved::path(&w.states, "app", "k");
    std::fs::write(&state, "a state").unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The restored VM ends at once; so does the booted one (it is saved on the way).
    let vmm = FakeVmm::new(
        Channel::Console,
        true,
        &[Guest::EndsAtOnce, Guest::EndsAtOnce],
        &[],
    );
    let err = guest_error(w.launch(&vmm, GuestInit::Resync).run());
    assert!(
        err.contains("stopped before its guest channel opened"),
        "{err}"
    );
    assert_eq!(vmm.asked(), ["restore", "start"], "booted, without saving");
    assert!(!state.exists(), "the state that failed is gone");
    assert!(
        crate::saved::refused(&state),
        "and its key refused for a while"
    );
}

#[test]
fn a_resume_call_refused_by_a_vm_powering_off_is_made_again_on_a_new_vm() {
    let w = World::new(LaunchMode::Resume);
    let vmm = FakeVmm::new(
        Channel::Vsock,
        false,
        &[Guest::Runs, Guest::Runs],
        &[Answer::Serves(0), Answer::Refuses, Answer::Serves(3)],
    );
    // Only an init that acknowledges stdin from a call's start has its calls made again.
    let launch = w.launch(&vmm, GuestInit::Console);
    assert_eq!(launch.run().unwrap(), flakes::PilotExit::App(0));
    assert_eq!(launch.run().unwrap(), flakes::PilotExit::App(3));
    let want = ["start", "connect", "connect", "start", "connect"];
    assert_eq!(vmm.asked(), want, "the warm call met the VM powering off");
}

#[test]
fn a_refused_resume_call_of_an_older_init_is_not_made_again() {
    let w = World::new(LaunchMode::Resume);
    let vmm = FakeVmm::new(
        Channel::Vsock,
        false,
        &[Guest::Runs, Guest::Runs],
        &[Answer::Serves(0), Answer::Refuses],
    );
    let launch = w.launch(&vmm, GuestInit::Protocol);
    launch.run().unwrap();
    let err = launch.run().unwrap_err();
    assert!(matches!(err, VmError::Call { .. }), "{err}");
    assert_eq!(vmm.asked(), ["start", "connect", "connect"]);
}

#[test]
fn a_resume_call_that_started_the_vm_is_never_made_again() {
    // Its refusal cannot be a VM that idled out under it.
    let w = World::new(LaunchMode::Resume);
    let vmm = FakeVmm::new(Channel::Vsock, false, &[Guest::Runs], &[Answer::Refuses]);
    let err = w.launch(&vmm, GuestInit::Console).run().unwrap_err();
    assert!(matches!(err, VmError::Call { .. }), "{err}");
    assert_eq!(vmm.asked(), ["start", "connect"]);
}

/// Serial mode carries only an argv on the kernel command line: a call that needs the
/// image's environment, working directory or user is refused before a VM starts, rather
/// than run without them.
#[test]
fn serial_mode_refuses_a_call_that_needs_the_images_settings() {
    let w = World::new(LaunchMode::OneShot);
    let image_dir = w.flake.runtime.rootfs.parent().unwrap();
    let record = crate::oci::OciRecord {
        rootfs: crate::oci::Origin {
            reference: "localhost/app".into(),
            digest: None,
            image_id: "a".repeat(64),
        },
        kernel: None,
        config: crate::oci::ImageConfig {
            user: Some("app".into()),
            ..crate::oci::ImageConfig::default()
        },
    };
    crate::oci::write(image_dir, &record).unwrap();
    let vmm = FakeVmm::new(Channel::Vsock, false, &[Guest::Runs], &[]);
    let mut launch = w.launch(&vmm, GuestInit::Original);
    launch.command =
        crate::entry::GuestCommand::for_flake(&w.flake, "app", Path::new("/x.yaml")).unwrap();
    let err = launch.run().unwrap_err();
    assert!(
        matches!(err, VmError::Serial { .. }) && err.to_string().contains("user"),
        "{err}"
    );
    assert!(vmm.asked().is_empty(), "no VM started: {:?}", vmm.asked());
}
