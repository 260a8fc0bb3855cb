// SPDX-License-Identifier: MIT
//! The two VMMs behind one trait, and what a started VM is made of.
//!
//! A [`Plan`] is everything one VM instance needs on the host: its private directory, its
//! overlay disk, how many guest channel ports it has, its TAP device and the settings for
//! the guest init. A [`Vmm`] turns a plan into a running VMM process and connects to the
//! guest channel; everything after the connection (the call itself) is the same for both
//! backends, because both channels end up as a unix stream on the host.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use flakes::config::vm::VmFlake;

use crate::error::{Result, VmError};

/// Extra kernel command-line words of this instance, for the guest init (see sci's
/// `cmdline` module for their meaning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSettings {
    /// Serve many calls.
    pub resume: bool,
    /// Idle timeout in seconds (resume), `None` for never.
    pub idle: Option<u64>,
    /// Diagnostics on the guest console (`PILOT_DEBUG` on the host).
    pub debug: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_words_quote_what_needs_it() {
        let argv: Vec<Vec<u8>> = ["/bin/sh", "-c", "echo a b", "it's", ""]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect();
        assert_eq!(
            serial_run(&argv).unwrap(),
            r#"run="/bin/sh -c 'echo a b' 'it'\''s' ''""#
        );
        let quote = vec![b"say \"hi\"".to_vec()];
        assert!(serial_run(&quote).unwrap_err().contains("say"));
        assert!(serial_run(&[b"a\nb".to_vec()]).is_err());
    }
}

/// One VM instance on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The flake name (for messages).
    pub flake: String,
    /// The instance's private directory.
    pub dir: PathBuf,
    /// Writable overlay disk (the guest's second drive).
    pub overlay: Option<PathBuf>,
    /// Guest channel ports, each serving one call at a time (QEMU); 0 for a channel that
    /// takes any number of connections (Firecracker's vsock).
    pub ports: usize,
    /// TAP device of the guest's network interface.
    pub tap: Option<String>,
    /// Settings for the guest init.
    pub guest: GuestSettings,
    /// Serial mode (an image without the flake-pilot guest init): the `run="..."` word of
    /// the kernel command line; the guest console is the caller's terminal.
    pub serial: Option<String>,
}

impl Plan {
    /// The guest's console log (kernel messages never reach the caller's terminal).
    pub fn log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The kernel command line: the flake's words, then the instance's.
    pub fn kernel_args(&self, flake: &VmFlake, channel: &str) -> Vec<String> {
        let mut args = flake.runtime.boot_args.clone();
        args.extend(self.instance_args(channel));
        args
    }

    /// The words this instance adds to the flake's kernel command line.
    pub fn instance_args(&self, channel: &str) -> Vec<String> {
        let mut args: Vec<String> = vec!["ro".into(), "panic=-1".into(), "reboot=t".into()];
        if self.overlay.is_some() {
            args.push("overlay_root=/dev/vdb".into());
        }
        if let Some(run) = &self.serial {
            args.push(run.clone());
            return args;
        }
        args.push(format!("sci_channel={channel}"));
        if self.ports > 1 {
            args.push(format!("sci_ports={}", self.ports));
        }
        if self.guest.debug {
            args.push("sci_debug=1".into());
        }
        if self.guest.resume {
            args.push("sci_resume=1".into());
            args.push(format!("sci_idle={}", self.guest.idle.unwrap_or(0)));
        }
        args
    }

    /// The guest error `what` for this instance.
    pub fn guest_error(&self, what: impl Into<String>) -> VmError {
        VmError::Guest {
            flake: self.flake.clone(),
            what: what.into(),
            dir: self.dir.clone(),
        }
    }

    /// Where the VMM's own messages go.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }
}

/// The `run="..."` word of serial mode for `argv`: each argument a shell word, quoted
/// when it needs to be. A double quote or a control character cannot be carried on a
/// kernel command line, so such an argument is refused (naming it) rather than mangled.
pub fn serial_run(argv: &[Vec<u8>]) -> std::result::Result<String, String> {
    let mut words = Vec::new();
    for arg in argv {
        let text = String::from_utf8(arg.clone())
            .map_err(|_| "an argument that is not UTF-8".to_string())?;
        if text.chars().any(|c| c == '"' || c.is_control()) {
            return Err(format!("the argument {text:?}"));
        }
        let plain = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-=:,+@%".contains(c));
        words.push(if plain {
            text
        } else {
            format!("'{}'", text.replace('\'', r"'\''"))
        });
    }
    Ok(format!("run=\"{}\"", words.join(" ")))
}

/// A virtual machine monitor.
pub trait Vmm: std::fmt::Debug {
    /// How many guest channel ports a VM gets (`resume`: it serves several calls at once);
    /// 0 when every connection is its own channel.
    fn ports(&self, resume: bool) -> usize;
    /// Starts the VMM of `plan`; it runs until the guest ends.
    fn start(&self, flake: &VmFlake, plan: &Plan) -> Result<Child>;
    /// One attempt to open guest channel `port`; fails while the guest is not ready.
    fn connect(&self, plan: &Plan, port: usize) -> std::io::Result<UnixStream>;
}

/// Connects to guest channel `port`, waiting up to `timeout` while the VMM (`alive`) runs.
pub fn wait_connect(
    vmm: &dyn Vmm,
    plan: &Plan,
    port: usize,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(stream) = vmm.connect(plan, port) {
            return Ok(stream);
        }
        if !alive() {
            return Err(plan.guest_error("stopped before its guest channel opened"));
        }
        if Instant::now() > deadline {
            return Err(plan.guest_error(format!(
                "did not open its guest channel within {} s",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(3));
    }
}

/// The log file of a VMM process, created empty (Firecracker requires it to exist).
pub fn create_log(path: &Path) -> Result<std::fs::File> {
    std::fs::File::create(path).map_err(crate::error::io(path))
}
