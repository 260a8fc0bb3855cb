// SPDX-License-Identifier: MIT
//! One call of a VM flake, from the instance to the exit status.
//!
//! - **One-shot**: a fresh instance directory (with the launcher's pid in its name), a fresh
//!   overlay disk with the includes when the flake has `overlay_size`, the VMM, one call,
//!   then the VM is stopped and everything removed. The VM's root is read-only and its
//!   overlay thrown away, so stopping it at once loses nothing and keeps the launch as
//!   short as the boot.
//! - **Resume**: one VM per flake and `@NAME`, started by the first call under the
//!   instance lock (so concurrent first calls start one VM), with an overlay disk that
//!   persists across calls and restarts. Every call claims a free guest channel port and
//!   runs without any VMM process being started. The guest powers off after the flake's
//!   idle timeout; `%remove` shuts it down at once and removes its state and overlay.
//!
//! A one-shot VM whose VMM and guest init allow it starts from a saved state when there is
//! one ([`crate::saved`]); the first launch boots it and saves it on the way.

use std::path::PathBuf;
use std::time::Duration;

use flake_agent::client::{self, Request, Streams};
use flake_agent::proto::{ExitStatus, Frame, ProtoError};
use flakes::callargs::Terminal;
use flakes::config::vm::VmFlake;
use flakes::config::{Include, LaunchMode};
use flakes::fault::{pause_at, Step};
use flakes::instance::{InstanceKey, StateDir};
use flakes::{CallArgs, PilotExit};

use crate::error::{Result, VmError};
use crate::instance::{self, claim_port};
use crate::vmm::{
    wait_connect, wait_ready, wait_resynced, Channel, GuestSettings, InitCan, Plan, Resynced,
    StateFile, Vmm,
};
use crate::{overlay, saved, tap};

/// How long a guest may take to open its channel (software emulation is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a VM restored from a saved state may take to answer its `Resync`; one that
/// does not is booted instead.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a guest that is up may take to answer a call (generous: a guest starved of CPU
/// on a loaded host under software emulation is slow, not hung).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// In a resume instance's directory: its guest has answered a call or announced itself
/// (the VM is up). Removed with the rest of the state when the VM starts again.
const GUEST_UP_FILE: &str = crate::vsock::GUEST_UP;
/// How often a resume call is made at most when VMs powering off refuse it.
const CALL_ATTEMPTS: u32 = 3;
/// How soon a VMM that closed a call without a word must end for the call to be made again
/// (a guest powering off ends within its 300 ms grace).
const UNANSWERED_END: Duration = Duration::from_secs(3);

/// How one attempt at a resume call failed.
#[derive(Debug)]
enum Attempt {
    /// Refused whole by the VM (its VMM's pid) powering off, or met that VMM ending: it
    /// may be made again.
    Refused(VmError, u32),
    /// Anything else.
    Failed(VmError),
}

impl From<VmError> for Attempt {
    fn from(err: VmError) -> Self {
        Attempt::Failed(err)
    }
}

/// The guest init of an image, as far as the launcher needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestInit {
    /// Not flake-pilot's (the original's): serial mode.
    Original,
    /// Speaks the protocol over virtio console ports or vsock.
    Protocol,
    /// Also serves a one-shot call over the plain virtio console.
    Console,
    /// Also takes a `Resync`: its one-shot VMs may be saved and restored.
    Resync,
}

impl GuestInit {
    /// What the guest init of `flake`'s image speaks (`pull` wrote it down); images with
    /// the original init run in serial mode. Read once per launch.
    pub fn of(flake: &VmFlake) -> Self {
        let Ok(features) = std::fs::read_to_string(Self::marker(flake)) else {
            return GuestInit::Original;
        };
        let has = |feature: &str| features.lines().any(|l| l == feature);
        match (
            has(crate::pull::CONSOLE_FEATURE),
            has(crate::pull::RESYNC_FEATURE),
        ) {
            (true, true) => GuestInit::Resync,
            (true, false) => GuestInit::Console,
            (false, _) => GuestInit::Protocol,
        }
    }

    /// Whether the guest init of `flake`'s image announces its vsock listener (see
    /// [`crate::vsock`]); with `init`, read by [`GuestInit::of`] from the same file.
    pub fn announces(flake: &VmFlake) -> bool {
        std::fs::read_to_string(Self::marker(flake))
            .is_ok_and(|f| f.lines().any(|l| l == crate::pull::ANNOUNCE_FEATURE))
    }

    fn marker(flake: &VmFlake) -> PathBuf {
        flake
            .runtime
            .rootfs
            .with_file_name(crate::pull::GUEST_CHANNEL_FILE)
    }

    /// Serves a one-shot call over the plain console, acknowledging stdin from the start.
    pub fn console(self) -> bool {
        matches!(self, GuestInit::Console | GuestInit::Resync)
    }
}

/// Everything one call needs, resolved once by the launcher.
#[derive(Debug)]
pub struct Launch<'a> {
    /// Which instance.
    pub key: InstanceKey,
    /// The flake.
    pub flake: &'a VmFlake,
    /// Host files for the overlay.
    pub include: &'a Include,
    /// The call's arguments and options.
    pub call: &'a CallArgs,
    /// The VMM backend.
    pub vmm: &'a dyn Vmm,
    /// `firecracker_ids_dir`.
    pub ids_dir: PathBuf,
    /// Where resume overlays persist.
    pub storage_dir: PathBuf,
    /// Where saved one-shot VM states live; `None` when they are turned off.
    pub states_dir: Option<PathBuf>,
    /// The caller's uid.
    pub uid: u32,
    /// Whether stdin and stdout are terminals.
    pub terminal: Terminal,
    /// The caller's `TERM`.
    pub term: Option<Vec<u8>>,
    /// `mkfs.ext4` and `ip`, for overlays and TAP devices.
    pub tools: crate::tools::Tools,
    /// `PILOT_DEBUG` is set: the guest init logs to the console log.
    pub debug: bool,
    /// What the image's guest init speaks ([`GuestInit::of`]).
    pub guest: GuestInit,
    /// The image's guest init announces its vsock listener ([`GuestInit::announces`]).
    pub announces: bool,
}

impl Launch<'_> {
    /// Runs the call and returns the launcher's exit status.
    pub fn run(&self) -> Result<PilotExit> {
        let status = match self.flake.runtime.mode {
            LaunchMode::Resume => self.resume()?,
            _ => self.one_shot()?,
        };
        Ok(PilotExit::App(status.code()))
    }

    fn request(&self, output_acks: bool) -> Request {
        let program = match &self.flake.target {
            flakes::config::Target::Program(path) => path.clone(),
            _ => self.key.flake.to_string(),
        };
        let mut argv = vec![program.into_bytes()];
        argv.extend(
            self.call
                .app_args
                .iter()
                .map(|a| std::os::unix::ffi::OsStrExt::as_bytes(a.as_os_str()).to_vec()),
        );
        let streams = if self.terminal.wants_tty(self.call) {
            Streams::Terminal
        } else {
            Streams::Frames
        };
        Request {
            argv,
            streams,
            term: self.term.clone(),
            launcher: "firecracker-pilot",
            output_acks,
            // An init that knows the console acknowledges stdin from the start of a call.
            stdin_on_ack: self.guest.console(),
            answer_within: None,
        }
    }

    fn plan(&self, state: &StateDir, label: &str, resume: bool, tap: Option<String>) -> Plan {
        let overlay = self.flake.runtime.overlay_size.map(|_| {
            if resume {
                self.storage_dir.join(format!("{label}.ext4"))
            } else {
                state.path().join("overlay.ext4")
            }
        });
        let init = InitCan {
            console: self.guest.console(),
            announce: self.announces,
        };
        let channel = self.vmm.channel(resume, init);
        Plan {
            flake: self.key.flake.to_string(),
            dir: state.path().to_path_buf(),
            overlay,
            channel,
            announces: self.announces,
            tap,
            guest: GuestSettings {
                resume,
                idle: self.flake.runtime.idle_timeout.map(|d| d.as_secs()),
                debug: self.debug,
                resync: channel == Channel::Console
                    && self.guest == GuestInit::Resync
                    && self.states_dir.is_some()
                    && self.vmm.saves_states()
                    && !self.flake.runtime.network,
            },
            serial: None,
        }
    }

    /// Claims the TAP device of the one-shot call `label` (see [`tap`] for who waits).
    fn claim_tap(&self, state: &StateDir, label: &str) -> Result<Option<tap::TapClaim>> {
        if !self.flake.runtime.network {
            return Ok(None);
        }
        let vms_dir = state.path().parent().unwrap_or(state.path());
        let claim = tap::claim(tap::ClaimFor {
            vms_dir,
            name: tap::name(&self.key.label()),
            per_call: tap::name(label),
            root: rustix::process::geteuid().is_root(),
            wait: tap::WAIT,
            progress: self.call.options.progress,
        })?;
        Ok(Some(claim))
    }

    /// Whether the image's guest init speaks the protocol.
    fn guest_channel(&self) -> bool {
        self.guest != GuestInit::Original
    }

    /// Creates the overlay (when missing) and the TAP device the plan needs (noting in the
    /// one-shot call's `claim` whether it created the device).
    fn provide(&self, plan: &Plan, claim: Option<&tap::TapClaim>) -> Result<()> {
        if let (Some(path), Some(size)) = (&plan.overlay, self.flake.runtime.overlay_size) {
            if !path.exists() {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(crate::error::io(parent))?;
                }
                overlay::create(path, size, self.include, self.tools.mkfs()?)?;
            }
        }
        if let Some(name) = &plan.tap {
            let created = tap::ensure(name, &plan.dir, self.tools.ip()?, self.uid)?;
            if let Some(claim) = claim {
                claim.created(created);
            }
        }
        Ok(())
    }

    /// Makes a one-shot plan's overlay afresh.
    fn renew_overlay(&self, plan: &Plan) -> Result<()> {
        if let Some(path) = &plan.overlay {
            let _ = std::fs::remove_file(path);
        }
        self.provide(plan, None)
    }

    fn one_shot(&self) -> Result<ExitStatus> {
        let label = instance::one_shot_label(&self.key.label(), std::process::id());
        let state = StateDir::prepare_vm(&self.ids_dir, self.uid, &label)?;
        instance::collect_orphans(state.parent(), &self.tools);
        let claim = match self.claim_tap(&state, &label) {
            Ok(claim) => claim,
            Err(err) => {
                let _ = state.remove();
                return Err(err);
            }
        };
        pause_at(Step::Locked);
        let mut plan = self.plan(
            &state,
            &label,
            false,
            claim.as_ref().map(|c| c.name.clone()),
        );
        let serial = !self.guest_channel() && !self.flake.runtime.force_vsock;
        let result = self
            .serial_word(serial)
            .and_then(|word| {
                plan.serial = word;
                self.provide(&plan, claim.as_ref())
            })
            .and_then(|()| match plan.serial {
                Some(_) => self.boot_serial(&plan),
                None => self.start_and_call(&plan),
            });
        // The device goes before the claim on it: a waiting call then finds it missing.
        tap::release(&plan.dir, &self.tools);
        drop(claim);
        // A VM that failed keeps its logs for the error message to point at, and so does
        // every VM with `PILOT_DEBUG`; the next launch collects the directory (its launcher
        // is gone by then).
        let failed = matches!(result, Err(VmError::Guest { .. } | VmError::Call { .. }));
        if self.debug {
            eprintln!(
                "firecracker-pilot: PILOT_DEBUG: the logs stay in {} until the next call",
                state.path().display()
            );
        } else if !failed {
            let _ = state.remove();
        }
        result
    }

    /// The `run="..."` word when the call runs in serial mode.
    fn serial_word(&self, serial: bool) -> Result<Option<String>> {
        if !serial {
            return Ok(None);
        }
        crate::vmm::serial_run(&self.request(false).argv)
            .map(Some)
            .map_err(|what| VmError::Serial {
                flake: self.key.flake.to_string(),
                what,
            })
    }

    /// Serial mode: the VM's console is the caller's terminal; the status is the VMM's.
    fn boot_serial(&self, plan: &Plan) -> Result<ExitStatus> {
        let mut vmm = self.start_vmm(plan)?;
        if let Err(err) = instance::write_pid(&plan.dir, vmm.id()) {
            let _ = vmm.kill();
            let _ = vmm.wait();
            return Err(err);
        }
        let status = vmm.wait().map_err(crate::error::io(&plan.dir))?;
        let code = PilotExit::from_status(status).code();
        Ok(ExitStatus::Exited(code))
    }

    /// Starts the VMM (with `state`), saying so on stderr when the call asked for
    /// `%progress`.
    fn start_vmm_with(
        &self,
        plan: &Plan,
        state: Option<&StateFile>,
    ) -> Result<std::process::Child> {
        if self.call.options.progress {
            let how = match state {
                Some(StateFile::Restore(_)) => "restoring",
                _ => "starting",
            };
            eprintln!(
                "firecracker-pilot: {how} the VM of flake '{}' ({})",
                plan.flake,
                plan.dir.display()
            );
        }
        match state {
            Some(state) => self.vmm.start_with_state(self.flake, plan, state),
            None => self.vmm.start(self.flake, plan),
        }
    }

    /// Starts the VMM, saying so on stderr when the call asked for `%progress`.
    fn start_vmm(&self, plan: &Plan) -> Result<std::process::Child> {
        self.start_vmm_with(plan, None)
    }

    /// A one-shot VM from its saved state when there is one; else booted, and saved on the
    /// way when it may be.
    fn start_and_call(&self, plan: &Plan) -> Result<ExitStatus> {
        let key = plan
            .guest
            .resync
            .then(|| self.vmm.state_key(self.flake, plan))
            .flatten();
        let (Some(key), Some(dir)) = (key, &self.states_dir) else {
            return self.boot_and_call(plan, None);
        };
        let path = saved::path(dir, &plan.flake, &key);
        if saved::refused(&path) {
            return self.boot_and_call(plan, None);
        }
        match saved::open(&path) {
            None => {}
            Some(Ok(state)) => match self.restore_and_call(plan, &state) {
                Ok(status) => return status,
                Err(err) => {
                    // Not restored, nothing of the call made: boot, and no more states
                    // for this VM for a while.
                    saved::refuse(&path, Some(&state));
                    // The guest may have had the overlay before it failed: a fresh one.
                    self.renew_overlay(plan)?;
                    eprintln!(
                        "firecracker-pilot: the saved state {} of flake '{}' was not restored \
                         ({err}); booting, and this VM is not saved again for a day (a change \
                         to the flake or image, or removing the .refused file beside it, tries \
                         again sooner)",
                        path.display(),
                        plan.flake
                    );
                    return self.boot_and_call(plan, None);
                }
            },
            Some(Err(why)) => {
                if self.debug {
                    eprintln!("firecracker-pilot: PILOT_DEBUG: not restored: {why}");
                }
                return self.boot_and_call(plan, None);
            }
        }
        let saving = match saved::Saving::new(path.clone()) {
            Ok(saving) => Some(saving),
            Err(why) => {
                self.not_saved(plan, &path, &why);
                None
            }
        };
        self.boot_and_call(plan, saving)
    }

    /// Says once that the VM of `plan` could not be saved as `path` (for `why`), and marks
    /// its key so that later launches boot without trying; where not even the mark can be
    /// written, only `PILOT_DEBUG` says it.
    fn not_saved(&self, plan: &Plan, path: &std::path::Path, why: &str) {
        saved::refuse(path, None);
        if saved::refused(path) {
            eprintln!(
                "firecracker-pilot: the VM of flake '{}' was not saved as {} ({why}); it \
                 boots without saving for a day (removing the .refused file beside it tries \
                 again sooner)",
                plan.flake,
                path.display()
            );
        } else if self.debug {
            eprintln!("firecracker-pilot: PILOT_DEBUG: not saved: {why}");
        }
    }

    /// Runs `body` with the started VMM of the one-shot `plan` (its pid recorded) and
    /// whether it still runs; the VMM is stopped after.
    fn with_vmm<T>(
        &self,
        plan: &Plan,
        state: Option<&StateFile>,
        body: impl FnOnce(&mut dyn FnMut() -> bool) -> Result<T>,
    ) -> Result<T> {
        let mut vmm = self.start_vmm_with(plan, state)?;
        let result = instance::write_pid(&plan.dir, vmm.id()).and_then(|()| {
            pause_at(Step::Started);
            let mut alive = || matches!(vmm.try_wait(), Ok(None));
            body(&mut alive)
        });
        let _ = vmm.kill();
        let _ = vmm.wait();
        result
    }

    /// Restores the VM of `plan` from `state` and makes the call. The outer error: the VM
    /// was not restored (the VMM refused the state, the guest never answered its `Resync`
    /// or could not reseed), and nothing of the call has been made.
    fn restore_and_call(
        &self,
        plan: &Plan,
        state: &std::fs::File,
    ) -> std::result::Result<Result<ExitStatus>, VmError> {
        let state = state.try_clone().map_err(crate::error::io(&plan.dir))?;
        self.with_vmm(plan, Some(&StateFile::Restore(state)), |alive| {
            let mut stream = wait_connect(self.vmm, plan, 0, RESTORE_TIMEOUT, &mut *alive)?;
            match self.resync(&mut stream, plan, RESTORE_TIMEOUT, alive)? {
                Ok(true) => Ok(self.call_over(stream, plan, ANSWER_TIMEOUT, None)),
                Ok(false) => Err(plan.guest_error("could not take a random state of its own")),
                // The overlay failed: that is the call's outcome, not the state's.
                Err(status) => Ok(Ok(status)),
            }
        })
    }

    /// Saves the VM of `plan` (waiting for its call) with `saving`, giving the state. A VM
    /// that cannot be saved goes on, and its key is marked refused (a failure that would
    /// come again must not cost every launch a migration); the error: the VM does not run
    /// again.
    fn save(&self, plan: &Plan, saving: saved::Saving) -> Result<Option<PathBuf>> {
        let path = saving.path.clone();
        let saved = self.vmm.save_state(plan, &saving.file)?.and_then(|()| {
            saving
                .finish(&plan.flake)
                .map_err(|e| format!("cannot put it in place: {e}"))
        });
        match saved {
            Ok(path) => {
                if self.debug {
                    eprintln!("firecracker-pilot: PILOT_DEBUG: saved {}", path.display());
                }
                Ok(Some(path))
            }
            Err(why) => {
                self.not_saved(plan, &path, &why);
                Ok(None)
            }
        }
    }

    /// Sends the guest its `Resync` and takes the answer: whether it reseeded, or (`Err`)
    /// the status the call ends with when its overlay failed (its message said the way a
    /// call says it).
    fn resync(
        &self,
        stream: &mut std::os::unix::net::UnixStream,
        plan: &Plan,
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<std::result::Result<bool, ExitStatus>> {
        send_resync(stream, plan)?;
        Ok(match wait_resynced(stream, plan, timeout, alive)? {
            Resynced::Taken(reseeded) => Ok(reseeded),
            Resynced::Failed(message, status) => {
                eprintln!("firecracker-pilot: {message}");
                Err(status)
            }
        })
    }

    fn boot_and_call(&self, plan: &Plan, saving: Option<saved::Saving>) -> Result<ExitStatus> {
        let state = saving.as_ref().map(|_| StateFile::Save);
        self.with_vmm(plan, state.as_ref(), |alive| {
            let mut stream = wait_connect(self.vmm, plan, 0, BOOT_TIMEOUT, &mut *alive)?;
            if plan.channel == Channel::Console {
                wait_ready(&mut stream, plan, BOOT_TIMEOUT, &mut *alive)?;
            }
            let saved = match saving {
                Some(saving) => self.save(plan, saving)?,
                None => None,
            };
            if plan.guest.resync {
                match self.resync(&mut stream, plan, ANSWER_TIMEOUT, alive)? {
                    Ok(true) => {}
                    // Copies of this guest would share its random state.
                    Ok(false) => saved.iter().for_each(|path| saved::refuse(path, None)),
                    Err(status) => return Ok(status),
                }
            }
            // The guest said `Ready` (over the console) or is booting (over ports).
            let answer = if plan.channel == Channel::Console {
                ANSWER_TIMEOUT
            } else {
                BOOT_TIMEOUT
            };
            self.call_over(stream, plan, answer, None)
        })
    }

    /// Makes the call over `stream`; an init that acknowledges calls at once must answer
    /// within `answer` (QEMU accepts a port's connection before the guest is up). On a
    /// port of a resume VM (`claim`), which later calls use too, the claim's mark is
    /// cleared once the call has hung up cleanly.
    fn call_over(
        &self,
        stream: std::os::unix::net::UnixStream,
        plan: &Plan,
        answer: Duration,
        claim: Option<&instance::PortClaim>,
    ) -> Result<ExitStatus> {
        pause_at(Step::Connected);
        let mut request = self.request(plan.channel == Channel::Console);
        if request.stdin_on_ack {
            request.answer_within = Some(answer);
        }
        let status = match claim {
            Some(claim) => {
                let (status, clean) = client::run_shared(stream, &request);
                if clean {
                    claim.ended_cleanly();
                }
                status
            }
            None => client::run(stream, &request),
        };
        status.map_err(|source| VmError::Call {
            flake: plan.flake.clone(),
            source,
            dir: plan.dir.clone(),
        })
    }

    fn resume(&self) -> Result<ExitStatus> {
        if !self.guest_channel() {
            return Err(VmError::NoGuestChannel {
                flake: self.key.flake.to_string(),
            });
        }
        let label = self.key.label();
        let state = StateDir::prepare_vm(&self.ids_dir, self.uid, &label)?;
        let tap = self.flake.runtime.network.then(|| tap::name(&label));
        let plan = self.plan(&state, &label, true, tap);
        let status = self.resume_call_until_served(&state, &plan)?;
        if self.call.options.remove {
            self.remove(state, &plan)?;
        }
        Ok(status)
    }

    /// A call that comes as a running VM powers off for idleness is refused whole (nothing
    /// of it ran, none of the caller's input was taken) or meets a VMM that is ending: it
    /// is made again once that VM is gone, which starts a new one. Only with an init that
    /// acknowledges stdin from a call's start (else input may have been taken already).
    fn resume_call_until_served(&self, state: &StateDir, plan: &Plan) -> Result<ExitStatus> {
        let mut attempts = 1;
        loop {
            match self.resume_call(state, plan) {
                Err(Attempt::Refused(err, pid)) if attempts < CALL_ATTEMPTS => {
                    // A VM that said it powers off is waited for (and stopped, if it
                    // hangs); one that just went quiet only counts as ending if it does.
                    let closing = matches!(
                        err,
                        VmError::Call {
                            source: ProtoError::Refused { .. },
                            ..
                        }
                    );
                    if closing {
                        stop(pid, &plan.dir);
                    } else if !ends_within(pid, &plan.dir, UNANSWERED_END) {
                        return Err(err);
                    }
                    if self.debug {
                        eprintln!(
                            "firecracker-pilot: PILOT_DEBUG: the VM powering off refused the \
                             call; making it again"
                        );
                    }
                    attempts += 1;
                }
                Err(Attempt::Refused(err, _) | Attempt::Failed(err)) => return Err(err),
                Ok(status) => return Ok(status),
            }
        }
    }

    /// One call into the resume VM of `plan`, starting the VM when it is not running.
    fn resume_call(&self, state: &StateDir, plan: &Plan) -> Result<ExitStatus, Attempt> {
        let (mut started, warm) = {
            let _lock = state.lock().map_err(VmError::from)?;
            pause_at(Step::Locked);
            match instance::running(&plan.dir) {
                Some(pid) => {
                    instance::keep_pid(&plan.dir, pid);
                    (None, Some(pid))
                }
                None => (Some(self.start_resume_vm(plan)?), None),
            }
        };
        // A channel with ports serves one call per port; vsock takes any number.
        let claim = match plan.channel.ports() {
            0 => None,
            ports => Some(claim_port(&plan.dir, ports)?),
        };
        let port = claim.as_ref().map_or(0, |c| c.port);
        // The launcher that started the VMM asks its child: right after the fork, the
        // child's command line is still the launcher's, so `running` would say no.
        let alive = || match started.as_mut() {
            Some(vmm) => matches!(vmm.try_wait(), Ok(None)),
            None => instance::running(&plan.dir).is_some(),
        };
        // A VM may still be booting (this call or another started it) until it has
        // answered a call once or announced itself.
        let up = plan.dir.join(GUEST_UP_FILE);
        let answer = if up.exists() {
            ANSWER_TIMEOUT
        } else {
            BOOT_TIMEOUT
        };
        let stream = match (wait_connect(self.vmm, plan, port, answer, alive), warm) {
            (Ok(stream), _) => stream,
            // The running VM ended (it powered off for idleness) before its channel took
            // the call: nothing of the call was sent, so it is made again (on the VM another
            // launcher may have started meanwhile).
            (Err(err), Some(pid)) if instance::running(&plan.dir) != Some(pid) => {
                return Err(Attempt::Refused(err, pid))
            }
            (Err(err), _) => return Err(Attempt::Failed(err)),
        };
        let status = self.call_over(stream, plan, answer, claim.as_ref());
        if status.is_ok() && answer == BOOT_TIMEOUT {
            let _ = crate::state_file::write(&up, b"");
        }
        drop(claim);
        let repeatable = self.guest.console();
        status.map_err(|err| match (err, warm) {
            (
                err @ VmError::Call {
                    source: ProtoError::Refused { stdin_read: false } | ProtoError::Unanswered,
                    ..
                },
                Some(pid),
            ) if repeatable => Attempt::Refused(err, pid),
            (err, _) => Attempt::Failed(err),
        })
    }

    /// Starts the VM of a resume instance; the VMM outlives this launcher.
    fn start_resume_vm(&self, plan: &Plan) -> Result<std::process::Child> {
        instance::clear_stale(&plan.dir);
        tap::release(&plan.dir, &self.tools);
        self.provide(plan, None)?;
        let mut vmm = self.start_vmm(plan)?;
        if let Err(err) = instance::write_pid(&plan.dir, vmm.id()) {
            // Without its pid recorded the VM would be invisible and a second one could
            // start on the same overlay.
            let _ = vmm.kill();
            let _ = vmm.wait();
            return Err(err);
        }
        pause_at(Step::Started);
        // Until the child has exec'd, its command line is still this launcher's and
        // `running` says no: the lock is held until a concurrent first call can see the VM.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while instance::running(&plan.dir).is_none()
            && matches!(vmm.try_wait(), Ok(None))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(vmm)
    }

    /// Shuts the resume VM down, then removes its state, overlay and TAP device.
    fn remove(&self, state: StateDir, plan: &Plan) -> Result<()> {
        let lock = state.lock()?;
        if let Some(pid) = instance::running(&plan.dir) {
            // Ask the guest to power off on a free port; with every port busy, or no
            // answer, `stop` ends the VMM.
            let ports = plan.channel.ports();
            let claim = match ports {
                0 => None,
                ports => instance::try_claim_port(&plan.dir, ports)?,
            };
            let reachable = ports == 0 || claim.is_some();
            let port = claim.as_ref().map_or(0, |c| c.port);
            if let Some(mut stream) = reachable
                .then(|| self.vmm.connect(plan, port).ok())
                .flatten()
            {
                // A guest that does not answer is stopped by `stop` below.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = Frame::Shutdown.write_to(&mut stream);
                let _ = Frame::read_from(&mut stream);
            }
            stop(pid, &plan.dir);
        }
        tap::release(&plan.dir, &self.tools);
        if let Some(overlay) = &plan.overlay {
            let _ = std::fs::remove_file(overlay);
        }
        // Removed while locked: a launcher waiting for the lock then finds no instance
        // and makes a new directory.
        let removed = state.remove();
        drop(lock);
        Ok(removed?)
    }
}

/// Sends the guest of `plan` the host's clock and fresh entropy.
fn send_resync(stream: &mut std::os::unix::net::UnixStream, plan: &Plan) -> Result<()> {
    use std::io::Read as _;
    let realtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut entropy = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut entropy))
        .map_err(crate::error::io(std::path::Path::new("/dev/urandom")))?;
    let resync = flake_agent::proto::Resync { realtime, entropy };
    Frame::Resync(resync)
        .write_to(stream)
        .map_err(|e| plan.guest_error(format!("cannot resync it: {e}")))
}

/// Whether the VMM `pid` of `dir` ends within `timeout` (it is left alone either way).
fn ends_within(pid: u32, dir: &std::path::Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while instance::running(dir) == Some(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits up to 10 s for the VMM `pid` of `dir` to end (after a shutdown, or powering off),
/// then kills it; a VMM another launcher has started since is left alone.
fn stop(pid: u32, dir: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while instance::running(dir) == Some(pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if instance::running(dir) == Some(pid) {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
