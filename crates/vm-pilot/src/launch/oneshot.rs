// SPDX-License-Identifier: MIT
//! One-shot calls: a fresh instance directory (with the launcher's pid in its name), a
//! fresh overlay disk with the includes when the flake has `overlay_size`, the VMM, one
//! call, then the VM is stopped and everything removed. The VM's root is read-only and its
//! overlay thrown away, so stopping it at once loses nothing and keeps the launch as short
//! as the boot. Images with the original guest init run in serial mode.

use flake_protocol::proto::ExitStatus;
use flakes::fault::{pause_at, Step};
use flakes::instance::StateDir;
use flakes::PilotExit;

use super::restore::Resync;
use super::Launch;
use crate::error::{Result, VmError};
use crate::instance;
use crate::saved;
use crate::tap;
use crate::timing::{ANSWER_TIMEOUT, BOOT_TIMEOUT};
use crate::vmm::{wait_connect, wait_ready, Channel, Plan, StateFile};

impl Launch<'_> {
    pub(super) fn one_shot(&self) -> Result<ExitStatus> {
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
            flakes::process::debug_note(format_args!(
                "the logs stay in {} until the next call",
                state.path().display()
            ));
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
        let word = match self.command.has_image_settings() {
            true => Err(crate::vmm::SerialError::ImageSettings),
            false => crate::vmm::serial_run(&self.request(false).argv),
        };
        word.map(Some).map_err(|what| VmError::Serial {
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

    pub(super) fn boot_and_call(
        &self,
        plan: &Plan,
        saving: Option<saved::Saving>,
    ) -> Result<ExitStatus> {
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
                    Resync::Reseeded => {}
                    // Copies of this guest would share its random state.
                    Resync::NotReseeded => {
                        saved.iter().for_each(|path| saved::refuse(path, None));
                    }
                    Resync::CallFailed(status) => return Ok(status),
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
}
