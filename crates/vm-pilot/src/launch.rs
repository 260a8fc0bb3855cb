// SPDX-License-Identifier: MIT
//! One call of a VM flake, from the instance to the exit status: what every call needs
//! (the request, the instance's plan, its overlay and TAP device, starting the VMM and
//! making the call over the guest channel) is here; each way of launching has its module:
//! `oneshot` (a fresh VM per call, or serial mode for images with the original init),
//! `restore` (one-shot VMs from saved states, and saving them), `resume` (one VM per
//! flake and `@NAME`, serving many calls) and `remove` (`%remove`). Each step's outcome is
//! a named enum, so a caller matches on what happened instead of nested results.

use std::path::PathBuf;
use std::time::Duration;

use flake_agent::client::{self, Request, Streams};
use flake_protocol::proto::ExitStatus;
use flakes::callargs::Terminal;
use flakes::config::vm::VmFlake;
use flakes::config::{Include, LaunchMode};
use flakes::fault::{pause_at, Step};
use flakes::instance::{InstanceKey, StateDir};
use flakes::{CallArgs, PilotExit};

use crate::entry::GuestCommand;
use crate::error::{Result, VmError};
use crate::instance;
use crate::vmm::{Channel, GuestSettings, InitCan, Plan, StateFile, Vmm};
use crate::{overlay, tap};

mod oneshot;
mod remove;
mod restore;
mod resume;

/// In a resume instance's directory: its guest has answered a call or announced itself
/// (the VM is up). Removed with the rest of the state when the VM starts again.
const GUEST_UP_FILE: &str = crate::vsock::GUEST_UP;
/// How often a resume call is made at most when VMs powering off refuse it.
const CALL_ATTEMPTS: u32 = 3;

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
    /// What the call runs in the guest ([`GuestCommand::for_flake`]).
    pub command: GuestCommand,
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
        let streams = if self.terminal.wants_tty(self.call) {
            Streams::Terminal
        } else {
            Streams::Frames
        };
        Request {
            argv: self.command.argv(&self.call.app_args),
            streams,
            term: self.term.clone(),
            env: self.command.env().to_vec(),
            cwd: self.command.cwd().to_vec(),
            user: self.command.user().to_vec(),
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
            // The guest's writable layer lies over its root: held to the rule of its
            // rootfs (an overlay of an older release may carry a loose umask's mode).
            crate::trust::check("overlay", path)?;
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
            // Asked for by the call (`%progress`): output of the call, not a notice.
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
}

#[cfg(test)]
mod tests;
