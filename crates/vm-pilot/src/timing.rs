// SPDX-License-Identifier: MIT
//! Every wait of the host side of a VM call, and the one way to wait for something.
//!
//! The waits the guest relies on (and the guest's own) are in `flake_protocol::timing`, where
//! the inequalities between them are checked at compile time; the host-only ones are here,
//! with theirs.

use std::time::{Duration, Instant};

pub use flake_protocol::timing::{BOOT_TIMEOUT, PORT_SETTLE, UNANSWERED_END};

/// How long a VM restored from a saved state may take to answer its `Resync`; one that
/// does not is booted instead.
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a guest that is up may take to answer a call (generous: a guest starved of CPU
/// on a loaded host under software emulation is slow, not hung).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a VMM asked to end (or powering off) may take before it is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);
/// How long a started VMM may take to be seen running by other launchers.
pub const START_SEEN: Duration = Duration::from_secs(5);
/// How often a wait for a VMM or a guest looks again.
pub const POLL: Duration = Duration::from_millis(3);
/// How often a wait for a VMM to end looks again.
pub const END_POLL: Duration = Duration::from_millis(20);
/// How long the VMM may take to answer a vsock `CONNECT`: it answers once the guest
/// accepted or refused, which a guest that is still booting may not do at once.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long saving a VM may take (a migration of the guest's memory into a local file).
pub const SAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a migration's progress is asked for (each question costs the emulated guest
/// a little CPU).
pub const SAVE_POLL: Duration = Duration::from_millis(10);
/// How long QEMU may take to end a migration, or to let the VM run again after one.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a one-shot call waits for the TAP device another call holds.
pub const TAP_WAIT: Duration = Duration::from_secs(60);

const _: () = assert!(RESTORE_TIMEOUT.as_millis() < BOOT_TIMEOUT.as_millis());
const _: () = assert!(ANSWER_TIMEOUT.as_millis() <= BOOT_TIMEOUT.as_millis());
const _: () = assert!(UNANSWERED_END.as_millis() < STOP_WAIT.as_millis());

/// The moment a wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(Instant);

impl Deadline {
    /// `timeout` from now.
    pub fn after(timeout: Duration) -> Self {
        Deadline(Instant::now() + timeout)
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.0
    }

    /// The time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// Looks at `done` every `every` until it says yes (`true`) or the deadline passes
    /// (`false`, after one last look).
    pub fn wait_for(&self, every: Duration, mut done: impl FnMut() -> bool) -> bool {
        loop {
            if done() {
                return true;
            }
            if self.passed() {
                return false;
            }
            std::thread::sleep(every.min(self.remaining().max(Duration::from_millis(1))));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_ends_when_done_or_after_its_deadline_with_one_last_look() {
        let started = Instant::now();
        assert!(Deadline::after(Duration::from_secs(5)).wait_for(POLL, || true));
        let mut looks = 0;
        let done = Deadline::after(Duration::from_secs(5)).wait_for(POLL, || {
            looks += 1;
            looks == 3
        });
        assert!(done && looks == 3);
        assert!(started.elapsed() < Duration::from_secs(1));
        let deadline = Deadline::after(Duration::from_millis(50));
        assert!(!deadline.wait_for(POLL, || false));
        assert!(deadline.passed() && deadline.remaining() == Duration::ZERO);
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
