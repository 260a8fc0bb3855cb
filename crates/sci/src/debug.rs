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

/// Prints one diagnostic line when enabled, stamped with the guest's uptime.
pub fn log(message: impl FnOnce() -> String) {
    if ON.load(Ordering::Relaxed) {
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
        let stamp = uptime.split_whitespace().next().unwrap_or("?");
        eprintln!("sci [{stamp}]: {}", message());
    }
}
