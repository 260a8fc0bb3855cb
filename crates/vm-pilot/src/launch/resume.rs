// SPDX-License-Identifier: MIT
//! Resume calls: one VM per flake and `@NAME`, started by the first call under the
//! instance lock (so concurrent first calls start one VM), with an overlay disk that
//! persists across calls and restarts. Every call takes its own connection (vsock) or claims
//! a free guest channel port, and runs without any VMM process being started. A call that
//! meets a VM powering off for idleness is made again on a new one.

use std::time::Duration;

use flake_protocol::proto::{ExitStatus, ProtoError};
use flakes::fault::{pause_at, Step};
use flakes::instance::StateDir;

use super::{Launch, CALL_ATTEMPTS, GUEST_UP_FILE};
use crate::error::{Result, VmError};
use crate::instance::{self, claim_port};
use crate::tap;
use crate::timing::{Deadline, ANSWER_TIMEOUT, BOOT_TIMEOUT, END_POLL, STOP_WAIT, UNANSWERED_END};
use crate::vmm::{wait_connect, Plan};

/// How one attempt at a resume call failed.
#[derive(Debug)]
enum Attempt {
    /// Refused whole by the VM powering off, or met its VMM ending: it may be made again.
    Refused {
        /// Why.
        err: VmError,
        /// The pid of the VMM that refused it.
        vmm: u32,
    },
    /// Anything else.
    Failed(VmError),
}

impl From<VmError> for Attempt {
    fn from(err: VmError) -> Self {
        Attempt::Failed(err)
    }
}

impl Launch<'_> {
    pub(super) fn resume(&self) -> Result<ExitStatus> {
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
                Err(Attempt::Refused { err, vmm }) if attempts < CALL_ATTEMPTS => {
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
                        stop(vmm, &plan.dir);
                    } else if !ends_within(vmm, &plan.dir, UNANSWERED_END) {
                        return Err(err);
                    }
                    flakes::process::debug_note(format_args!(
                        "the VM powering off refused the call; making it again"
                    ));
                    attempts += 1;
                }
                Err(Attempt::Refused { err, .. } | Attempt::Failed(err)) => return Err(err),
                Ok(status) => return Ok(status),
            }
        }
    }

    /// One call into the resume VM of `plan`, starting the VM when it is not running.
    fn resume_call(&self, state: &StateDir, plan: &Plan) -> Result<ExitStatus, Attempt> {
        let (mut started, running_vmm) = {
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
        // A running VM keeps the channel it was started with, whatever this caller's
        // environment would choose for a new one.
        let running;
        let plan = match running_vmm {
            Some(_) => {
                running = plan.as_running();
                &running
            }
            None => plan,
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
        let stream = match (
            wait_connect(self.vmm, plan, port, answer, alive),
            running_vmm,
        ) {
            (Ok(stream), _) => stream,
            // The running VM ended (it powered off for idleness) before its channel took
            // the call: nothing of the call was sent, so it is made again (on the VM another
            // launcher may have started meanwhile).
            (Err(err), Some(pid)) if instance::running(&plan.dir) != Some(pid) => {
                return Err(Attempt::Refused { err, vmm: pid })
            }
            (Err(err), _) => return Err(Attempt::Failed(err)),
        };
        let status = self.call_over(stream, plan, answer, claim.as_ref());
        if status.is_ok() && answer == BOOT_TIMEOUT {
            let _ = crate::state_file::write(&up, b"");
        }
        drop(claim);
        let repeatable = self.guest.console();
        status.map_err(|err| match (err, running_vmm) {
            (
                err @ VmError::Call {
                    source: ProtoError::Refused { stdin_read: false } | ProtoError::Unanswered,
                    ..
                },
                Some(pid),
            ) if repeatable => Attempt::Refused { err, vmm: pid },
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
        // `spawn` returns once the child has exec'd (or failed to), so the VMM's command
        // line already names the instance: a concurrent first call waiting for the lock
        // sees the VM running as soon as the lock is let go.
        Ok(vmm)
    }
}

/// Whether the VMM `pid` of `dir` ends within `timeout` (it is left alone either way).
fn ends_within(pid: u32, dir: &std::path::Path, timeout: Duration) -> bool {
    Deadline::after(timeout).wait_for(END_POLL, || instance::running(dir) != Some(pid))
}

/// Waits up to [`STOP_WAIT`] for the VMM `pid` of `dir` to end (after a shutdown, or
/// powering off), then kills it; a VMM another launcher has started since is left alone.
pub(super) fn stop(pid: u32, dir: &std::path::Path) {
    let ended =
        Deadline::after(STOP_WAIT).wait_for(END_POLL, || instance::running(dir) != Some(pid));
    if !ended && instance::running(dir) == Some(pid) {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}
