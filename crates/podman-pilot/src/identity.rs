// SPDX-License-Identifier: MIT
//! Who a resume instance's agent is, as the host sees it, so that a call only ever talks
//! to that process.
//!
//! The agent's socket lives in the instance's `run/` directory, which every user inside the
//! instance may write to (the app may run as any user there). A process of the instance
//! could therefore put its own listener where the agent's was, and a launcher that trusted
//! the socket's place would hand it the caller's stdin, stdout and stderr. So after
//! connecting, the launcher asks the kernel who listens (`SO_PEERCRED`: the pid and
//! effective uid of the process that called `listen`, in the launcher's namespaces, which
//! are the host's).
//!
//! The agent is the process podman reports as the container's PID 1 (`State.Pid`), or,
//! when the flake adds `--init`, that init's first child. Its
//! uid as the host sees it is the container user's: rootful, the container uid itself (0
//! unless `--user` or the image's `USER` say otherwise); rootless, the caller's uid for
//! container root and `subuid start + n - 1` for container uid `n`. Rather than predict
//! it, the launcher reads it from that very process.
//!
//! The cold path (under the instance lock) learns the identity from podman and records
//! pid, start time and uid in the state directory (file `agent`, written by the launcher
//! in the caller's private directory); the warm path compares the peer with that record,
//! with no engine process. A listener that is not the agent is refused with one line and
//! never served by a fallback.

use std::os::unix::net::UnixStream;

use flake_agent::transport::{peer_credentials, PeerCred};
use flakes::instance::{InstanceError, StateDir};

/// The file in the state directory holding the agent's identity.
pub const FILE: &str = "agent";

/// The agent's process as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentId {
    /// Host pid.
    pub pid: u32,
    /// Host uid (effective, as `SO_PEERCRED` reports it).
    pub uid: u32,
    /// Start time (clock ticks after boot), so that a reused pid is not taken for it.
    pub start: u64,
}

impl AgentId {
    /// The recorded identity of the instance's agent, if any.
    pub fn load(state: &StateDir) -> Option<AgentId> {
        let bytes = state.dir().read_file(FILE).ok()??;
        AgentId::parse(std::str::from_utf8(&bytes).ok()?)
    }

    /// Records this identity for the warm path.
    pub fn save(&self, state: &StateDir) -> Result<(), InstanceError> {
        let text = format!("{} {} {}\n", self.pid, self.start, self.uid);
        state.dir().write_file(FILE, text.as_bytes())
    }

    fn parse(text: &str) -> Option<AgentId> {
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        let (pid, start, uid) = (
            fields.next()?.ok()?,
            fields.next()?.ok()?,
            fields.next()?.ok()?,
        );
        Some(AgentId {
            pid: u32::try_from(pid).ok()?,
            uid: u32::try_from(uid).ok()?,
            start,
        })
    }

    /// The identity of the process behind `peer`, while it runs.
    pub fn of_peer(peer: PeerCred) -> Option<AgentId> {
        Some(AgentId {
            pid: peer.pid,
            uid: peer.uid,
            start: start_time(peer.pid)?,
        })
    }

    /// Whether `stream`'s listener is this very process.
    pub fn serves(&self, stream: &UnixStream) -> bool {
        peer_credentials(stream)
            .ok()
            .and_then(AgentId::of_peer)
            .is_some_and(|peer| peer == *self)
    }
}

/// Whether process `pid` is the agent of the container whose PID 1 is `init` on the host:
/// `init` itself, or, under an init podman added (`--init`), that init's first child.
/// Processes that later end up as the init's children (orphans of the apps) started after
/// the agent, which started them.
pub fn is_agent_of(pid: u32, init: u32) -> bool {
    pid != 0 && (pid == init || first_child(init) == Some(pid))
}

/// The child of `pid` that started first (`pid` being single-threaded, as an init is).
fn first_child(pid: u32) -> Option<u32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|child| child.parse().ok())
        .filter_map(|child: u32| Some((start_time(child)?, child)))
        .min()
        .map(|(_, child)| child)
}

/// `/proc/PID/stat` fields after the command name (field 3 on), which may hold anything.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Field 22 of `/proc/PID/stat`: the start time.
fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_garbage() {
        let id = AgentId {
            pid: 42,
            uid: 100_000,
            start: 123_456,
        };
        let text = format!("{} {} {}\n", id.pid, id.start, id.uid);
        assert_eq!(AgentId::parse(&text), Some(id));
        for bad in ["", "1 2", "x 2 3", "1 2 99999999999", "-1 2 3"] {
            assert_eq!(AgentId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_listener_is_known_by_pid_uid_and_start() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_credentials(&a).unwrap();
        let me = AgentId::of_peer(peer).unwrap();
        assert!(me.serves(&a));
        let reused = AgentId {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.serves(&a), "same pid, another start: a reused pid");
        let other_user = AgentId {
            uid: me.uid + 1,
            ..me
        };
        assert!(!other_user.serves(&a));
    }

    #[test]
    fn only_init_or_its_first_child_is_the_agent() {
        let mut init = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 0.2; sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = init.id();
        let children = || -> Vec<u32> {
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(|c| c.parse().unwrap())
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while children().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let mut kids = children();
        kids.sort_by_key(|c| start_time(*c));
        assert_eq!(kids.len(), 2, "{kids:?}");
        assert!(is_agent_of(pid, pid));
        assert!(is_agent_of(kids[0], pid), "the first child");
        assert!(!is_agent_of(kids[1], pid), "a later one");
        assert!(!is_agent_of(0, 0));
        for kid in kids {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(i32::try_from(kid).unwrap()).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        init.kill().unwrap();
        init.wait().unwrap();
    }
}
