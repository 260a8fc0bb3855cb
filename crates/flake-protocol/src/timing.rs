// SPDX-License-Identifier: MIT
//! The waits of the VM guest channel that the two sides rely on of each other, in one
//! place: the guest init (`sci`) and the launcher each wait for what the other does, so
//! each inequality between a guest wait and a host wait is checked here when the crates
//! are compiled, not remembered.

use std::time::Duration;

/// Guest: how long the guest waits for a port's caller to show up before it ends a frame
/// that caller cut short (its launcher died in the middle of it).
pub const HOST_NEWS_WAIT: Duration = Duration::from_secs(1);
/// Guest: how long a guest powering off for idleness goes on refusing calls, so the
/// refusal reaches a caller that came at that moment.
pub const CLOSING_GRACE: Duration = Duration::from_millis(300);
/// Guest: how long a one-shot guest waits for its call (a launcher killed while the VM
/// booted never calls).
pub const FIRST_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Host: how long the claimer of a port whose last call ended uncleanly waits before it
/// connects, so that the guest has ended the cut frame ([`HOST_NEWS_WAIT`]) and the new
/// call is never taken for its rest.
pub const PORT_SETTLE: Duration = Duration::from_secs(3);
/// Host: how soon a VMM that closed a call without a word must end for the call to be made
/// again (a guest powering off ends within [`CLOSING_GRACE`]).
pub const UNANSWERED_END: Duration = Duration::from_secs(3);
/// Host: how long a guest may take to open its channel (software emulation is slow).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const _: () = assert!(HOST_NEWS_WAIT.as_millis() < PORT_SETTLE.as_millis());
const _: () = assert!(CLOSING_GRACE.as_millis() < UNANSWERED_END.as_millis());
// A one-shot guest waits for its call longer than nothing, and the launcher that boots it
// calls as soon as the channel is open: the boot wait is the host's to bound.
const _: () = assert!(FIRST_CALL_TIMEOUT.as_millis() <= BOOT_TIMEOUT.as_millis());
