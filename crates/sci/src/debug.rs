// SPDX-License-Identifier: MIT
//! Diagnostics on the guest console, off unless the kernel command line has `sci_debug=1`
//! (the launcher adds it when `PILOT_DEBUG` is set). The console is the instance's
//! `console.log` on the host, never the caller's terminal.

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);

/// Turns diagnostics on.
pub fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Prints one diagnostic line when enabled, stamped with the guest's uptime
/// (microseconds: the boot-time budget is counted in milliseconds).
pub fn log(message: impl FnOnce() -> String) {
    if ON.load(Ordering::Relaxed) {
        eprintln!("sci [{}]: {}", uptime(), message());
    }
}

/// The guest's uptime in seconds, to the microsecond.
pub fn uptime() -> String {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    format!("{}.{:06}", now.tv_sec, now.tv_nsec / 1000)
}
