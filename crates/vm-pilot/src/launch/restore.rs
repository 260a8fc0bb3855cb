// SPDX-License-Identifier: MIT
//! Saved one-shot VM states ([`crate::saved`]): a VM whose VMM and guest init allow it
//! starts from its saved state when there is one, and the first launch boots it and saves
//! it on the way. A state that fails is refused for a while, and the call boots instead:
//! nothing of the call is made before the restored guest took its `Resync`.

use std::path::PathBuf;
use std::time::Duration;

use flake_protocol::proto::{ExitStatus, Frame};

use super::Launch;
use crate::error::{Result, VmError};
use crate::saved;
use crate::timing::{ANSWER_TIMEOUT, RESTORE_TIMEOUT};
use crate::vmm::{wait_connect, wait_resynced, Plan, Resynced, Saved, StateFile};

/// How restoring a VM for a call ended.
#[derive(Debug)]
enum Restore {
    /// The VM was restored and the call made, with this outcome.
    Called(Result<ExitStatus>),
    /// The VM was not restored (the VMM refused the state, the guest never answered its
    /// `Resync` or could not reseed): nothing of the call has been made.
    Refused(VmError),
}

/// What a guest did with its `Resync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resync {
    /// It took the host's clock and fresh entropy.
    Reseeded,
    /// It runs, but could not take a random state of its own.
    NotReseeded,
    /// Its overlay failed: the call ends with this status.
    CallFailed(ExitStatus),
}

impl Launch<'_> {
    /// A one-shot VM from its saved state when there is one; else booted, and saved on the
    /// way when it may be.
    pub(super) fn start_and_call(&self, plan: &Plan) -> Result<ExitStatus> {
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
            saved::SavedState::None => {}
            saved::SavedState::Open(state) => match self.restore_and_call(plan, &state) {
                Restore::Called(status) => return status,
                Restore::Refused(err) => {
                    // Not restored, nothing of the call made: boot, and no more states
                    // for this VM for a while.
                    saved::refuse(&path, Some(&state));
                    // The guest may have had the overlay before it failed: a fresh one.
                    self.renew_overlay(plan)?;
                    tracing::warn!(
                        "the saved state {} of flake '{}' was not restored ({err}); booting, \
                         and this VM is not saved again for a day (a change to the flake or \
                         image, or removing the .refused file beside it, tries again sooner)",
                        path.display(),
                        plan.flake
                    );
                    return self.boot_and_call(plan, None);
                }
            },
            saved::SavedState::Unusable(why) => {
                flakes::process::debug_note(format_args!("not restored: {why}"));
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
    fn not_saved(&self, plan: &Plan, path: &std::path::Path, why: &saved::SavedError) {
        saved::refuse(path, None);
        if saved::refused(path) {
            tracing::warn!(
                "the VM of flake '{}' was not saved as {} ({why}); it boots without saving for \
                 a day (removing the .refused file beside it tries again sooner)",
                plan.flake,
                path.display()
            );
        } else {
            flakes::process::debug_note(format_args!("not saved: {why}"));
        }
    }

    /// Restores the VM of `plan` from `state` and makes the call.
    fn restore_and_call(&self, plan: &Plan, state: &std::fs::File) -> Restore {
        let state = match state.try_clone() {
            Ok(state) => state,
            Err(err) => return Restore::Refused(crate::error::io(&plan.dir)(err)),
        };
        let restored = self.with_vmm(plan, Some(&StateFile::Restore(state)), |alive| {
            let mut stream = wait_connect(self.vmm, plan, 0, RESTORE_TIMEOUT, &mut *alive)?;
            Ok(
                match self.resync(&mut stream, plan, RESTORE_TIMEOUT, alive)? {
                    Resync::Reseeded => {
                        Restore::Called(self.call_over(stream, plan, ANSWER_TIMEOUT, None))
                    }
                    Resync::NotReseeded => Restore::Refused(
                        plan.guest_error("could not take a random state of its own"),
                    ),
                    // The overlay failed: that is the call's outcome, not the state's.
                    Resync::CallFailed(status) => Restore::Called(Ok(status)),
                },
            )
        });
        restored.unwrap_or_else(Restore::Refused)
    }

    /// Saves the VM of `plan` (waiting for its call) with `saving`, giving the state. A VM
    /// that cannot be saved goes on, and its key is marked refused (a failure that would
    /// come again must not cost every launch a migration); the error: the VM does not run
    /// again.
    pub(super) fn save(&self, plan: &Plan, saving: saved::Saving) -> Result<Option<PathBuf>> {
        let path = saving.path.clone();
        let saved = match self.vmm.save_state(plan, &saving.file)? {
            Saved::Saved => saving.finish(&plan.flake),
            Saved::Not(why) => Err(why),
        };
        match saved {
            Ok(path) => {
                flakes::process::debug_note(format_args!("saved {}", path.display()));
                Ok(Some(path))
            }
            Err(why) => {
                self.not_saved(plan, &path, &why);
                Ok(None)
            }
        }
    }

    /// Sends the guest its `Resync` and takes the answer (a failed overlay's message is
    /// said the way a call says it).
    pub(super) fn resync(
        &self,
        stream: &mut std::os::unix::net::UnixStream,
        plan: &Plan,
        timeout: Duration,
        alive: &mut dyn FnMut() -> bool,
    ) -> Result<Resync> {
        send_resync(stream, plan)?;
        Ok(match wait_resynced(stream, plan, timeout, alive)? {
            Resynced::Taken(true) => Resync::Reseeded,
            Resynced::Taken(false) => Resync::NotReseeded,
            Resynced::Failed { message, status } => {
                // The guest's own message about the call, said as a call's `Error` frame is
                // (`flake_agent::client`): it is the call's output, not a notice.
                eprintln!("firecracker-pilot: {message}");
                Resync::CallFailed(status)
            }
        })
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
    let resync = flake_protocol::proto::Resync { realtime, entropy };
    Frame::Resync(resync)
        .write_to(stream)
        .map_err(|e| plan.guest_error(format!("cannot resync it: {e}")))
}
