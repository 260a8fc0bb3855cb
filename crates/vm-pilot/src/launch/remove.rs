// SPDX-License-Identifier: MIT
//! `%remove`: the resume VM is asked to power off (on a free port, or a connection of its
//! own over vsock), stopped if it does not, and its state, overlay and TAP device removed.

use std::time::Duration;

use flake_protocol::proto::Frame;
use flakes::instance::StateDir;

use super::resume::stop;
use super::Launch;
use crate::error::Result;
use crate::instance;
use crate::tap;
use crate::vmm::Plan;

impl Launch<'_> {
    /// Shuts the resume VM down, then removes its state, overlay and TAP device.
    pub(super) fn remove(&self, state: StateDir, plan: &Plan) -> Result<()> {
        let lock = state.lock()?;
        let plan = &plan.as_running();
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
