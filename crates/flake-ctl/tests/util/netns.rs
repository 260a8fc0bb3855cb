// SPDX-License-Identifier: MIT
//! A network namespace of a test's own, so that VM networking is tested with real devices,
//! addresses and packets without touching the host's network: every device, address and
//! listener lives in the namespace, and deleting it (when the guard drops, also after a
//! failed assertion) takes the devices made in it along.
//!
//! Needs root (`ip netns add`).

use std::ffi::OsStr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::World;

/// How a launcher is put into the namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `ip netns exec`, which also mounts a sysfs of the namespace for the program.
    Exec,
    /// `nsenter --net` (as `unshare --net` or a service manager's private network): the
    /// program's `/sys/class/net` still shows the devices of the namespace sysfs was
    /// mounted in, not its own.
    Enter,
}

/// A network namespace made by the test, deleted when dropped.
pub struct Netns(String);

impl Netns {
    /// Makes the namespace `flake-TAG-PID` (unique among concurrent test runs).
    pub fn new(tag: &str) -> Self {
        let name = format!("flake-{tag}-{}", std::process::id());
        let made = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(made.success(), "ip netns add {name}");
        Netns(name)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// Runs `ip ARGS` in the namespace; fails the test when it fails.
    pub fn ip(&self, args: &[&str]) {
        let status = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip -n {} {args:?}", self.0);
    }

    /// Whether network device `dev` exists in the namespace.
    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.0, "link", "show", "dev", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits up to `within` for device `dev` to appear while `going` says the process that
    /// makes it still runs; whether it appeared.
    pub fn wait_link(&self, dev: &str, within: Duration, mut going: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && going() {
            if self.has_link(dev) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.has_link(dev)
    }

    /// Gives device `dev` the address `cidr` and sets it up.
    pub fn address(&self, dev: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", dev]);
        self.ip(&["link", "set", dev, "up"]);
    }

    /// Packets the host side of device `dev` has received (those the guest sent).
    pub fn rx_packets(&self, dev: &str) -> u64 {
        let path = format!("/sys/class/net/{dev}/statistics/rx_packets");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0, "cat", &path])
            .output()
            .unwrap();
        assert!(out.status.success(), "{path} in {}", self.0);
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }

    /// `program` run in the namespace, entered the `entry` way, with the world's
    /// environment.
    pub fn command(&self, w: &World, entry: Entry, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match entry {
            Entry::Exec => {
                let mut cmd = w.command("ip");
                cmd.args(["netns", "exec", &self.0]);
                cmd
            }
            Entry::Enter => {
                let mut cmd = w.command("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.0));
                cmd
            }
        };
        cmd.arg(program);
        cmd
    }

    /// A TCP listener on `port` of every address of the namespace, for one connection.
    pub fn listen(&self, port: u16) -> Listener {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "busybox", "nc", "-l", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Held open: the listener then keeps its side of the connection until the peer
        // has sent everything and closed its side.
        let stdin = child.stdin.take();
        Listener { child, stdin }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A `busybox nc -l` in a namespace, killed when dropped.
pub struct Listener {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Listener {
    /// What the connection brought, once its peer closed it (waits up to `within`; an
    /// empty string when no connection came).
    pub fn received(mut self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        drop(self.stdin.take());
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut out, &mut text);
        }
        text
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
