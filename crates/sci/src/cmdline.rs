// SPDX-License-Identifier: MIT
//! What the launcher tells `sci` on the kernel command line.
//!
//! Only settings of the VM itself travel this way, never the call: the program, its
//! arguments and environment arrive over the guest channel as a list (see
//! `flake_agent::proto`), so no argument can be re-split or smuggle a kernel parameter.
//! The keys, all optional, are plain `key=value` words that the launcher generates from
//! validated values:
//!
//! | key            | value                 | meaning                                                      |
//! |----------------|-----------------------|--------------------------------------------------------------|
//! | `sci_channel`  | `virtio` or `vsock`   | guest channel: virtio console ports named `flake*` (QEMU), or vsock port 52 (Firecracker, the default) |
//! | `sci_resume`   | `1`                   | serve calls until told to stop or idle, instead of one call   |
//! | `sci_idle`     | seconds               | resume mode: power off after this long without a call (0: never) |
//! | `overlay_root` | a block device        | writable overlay disk: the root becomes an overlay with its upper layer there |
//! | `sci_debug`    | `1`                   | diagnostics on the guest console                              |
//!
//! `sci_resume` and `overlay_root` are the original guest init's names, so command lines
//! of Flake Pilot 3.1 images keep their meaning. Unknown words are the kernel's or the
//! image's business and are ignored.

use std::time::Duration;

/// Which guest channel carries calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Virtio console ports named `flake*` (QEMU).
    Virtio,
    /// Vsock port [`VSOCK_PORT`] (Firecracker).
    Vsock,
}

/// The vsock port `sci` listens on (the original's, so host tooling keeps working).
pub const VSOCK_PORT: u32 = 52;

/// Settings read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// The guest channel.
    pub channel: Channel,
    /// Serve many calls.
    pub resume: bool,
    /// Power off after this long without a call (resume mode).
    pub idle: Option<Duration>,
    /// Overlay disk.
    pub overlay: Option<String>,
    /// Diagnostics on the console.
    pub debug: bool,
}

impl BootSettings {
    /// Parses a kernel command line.
    pub fn parse(cmdline: &str) -> Result<Self, String> {
        let mut settings = BootSettings {
            channel: Channel::Vsock,
            resume: false,
            idle: None,
            overlay: None,
            debug: false,
        };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                "sci_channel" => {
                    settings.channel = match value {
                        "virtio" => Channel::Virtio,
                        "vsock" => Channel::Vsock,
                        other => return Err(format!("sci_channel={other} is unknown")),
                    }
                }
                "sci_resume" => settings.resume = !matches!(value, "0" | "" | "false"),
                "sci_debug" => settings.debug = value == "1",
                "sci_idle" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| format!("sci_idle={value} is not a number of seconds"))?;
                    settings.idle = (secs > 0).then(|| Duration::from_secs(secs));
                }
                "overlay_root" if value.starts_with("/dev/") => {
                    settings.overlay = Some(value.to_string());
                }
                "overlay_root" => {
                    return Err(format!("overlay_root={value} is not a device under /dev"))
                }
                _ => {}
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_defaults() {
        let plain = BootSettings::parse("console=ttyS0 root=/dev/vda ro quiet").unwrap();
        assert_eq!(
            plain,
            BootSettings {
                channel: Channel::Vsock,
                resume: false,
                idle: None,
                overlay: None,
                debug: false
            }
        );
        let all = BootSettings::parse(
            "init=/usr/sbin/sci sci_channel=virtio sci_resume=1 sci_idle=90 overlay_root=/dev/vdb",
        )
        .unwrap();
        assert_eq!(all.channel, Channel::Virtio);
        assert!(all.resume);
        assert_eq!(all.idle, Some(Duration::from_secs(90)));
        assert_eq!(all.overlay.as_deref(), Some("/dev/vdb"));
        assert_eq!(BootSettings::parse("sci_idle=0").unwrap().idle, None);
        assert!(!BootSettings::parse("sci_resume=0").unwrap().resume);
    }

    #[test]
    fn bad_values_are_errors() {
        for bad in ["sci_channel=serial", "sci_idle=soon", "overlay_root=vdb"] {
            assert!(BootSettings::parse(bad).is_err(), "{bad}");
        }
    }
}
