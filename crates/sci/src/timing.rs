// SPDX-License-Identifier: MIT
//! Every wait of the guest init. The ones the launcher relies on are in
//! `flake_protocol::timing`, checked there against the launcher's at compile time; the
//! guest's own are here.

use std::time::Duration;

pub use flake_protocol::timing::{CLOSING_GRACE, FIRST_CALL_TIMEOUT, HOST_NEWS_WAIT};

/// How often `Ready` is said until the call comes: the console drops what is written
/// while no host is connected.
pub const READY_EVERY: Duration = Duration::from_millis(100);
/// How long the VM stays up after the exit status, for it to reach the host (which stops
/// the VMM itself as soon as it has it).
pub const LINGER: Duration = Duration::from_secs(2);
/// The first wait before the vsock announcement is made again.
pub const ANNOUNCE_FIRST_PAUSE: Duration = Duration::from_millis(20);
/// The longest wait between two announcements.
pub const ANNOUNCE_MAX_PAUSE: Duration = Duration::from_secs(1);
/// How long the plain console may take to appear.
pub const CONSOLE_WAIT: Duration = Duration::from_secs(10);

// The announcement is made again well within the launcher's wait for a booting guest.
const _: () =
    assert!(ANNOUNCE_MAX_PAUSE.as_millis() < flake_protocol::timing::BOOT_TIMEOUT.as_millis());
