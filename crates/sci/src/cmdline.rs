// SPDX-License-Identifier: MIT
//! What the launcher tells `sci` on the kernel command line.
//!
//! Only settings of the VM itself travel this way, never the call: the program, its
//! arguments and environment arrive over the guest channel as a list (see
//! `flake_protocol::proto`), so no argument can be re-split or smuggle a kernel parameter.
//! The keys, all optional, are plain `key=value` words that the launcher generates from
//! validated values:
//!
//! | key            | value                 | meaning                                                      |
//! |----------------|-----------------------|--------------------------------------------------------------|
//! | `sci_channel`  | `virtio`, `console` or `vsock` | guest channel: virtio console ports named `flake*` (QEMU), the plain virtio console `hvc0` (a QEMU one-shot call), or vsock port 52 (Firecracker, the default) |
//! | `sci_ports`    | count                 | virtio: how many ports to wait for (default 1)                |
//! | `sci_resume`   | `1`                   | serve calls until told to stop or idle, instead of one call   |
//! | `sci_idle`     | seconds               | resume mode: power off after this long without a call (0: never) |
//! | `overlay_root` | a block device        | writable overlay disk: the root becomes an overlay with its upper layer there |
//! | `sci_debug`    | `1`                   | diagnostics on the guest console                              |
//! | `sci_resync`   | `1`                   | console: the VM may be saved while it waits for its call and restored many times, so the overlay disk is attached only after the host's `Resync` (each restored VM gets its own disk) |
//!
//! Serial mode, for launchers that cannot use a guest channel (the original's convention):
//! `run="WORDS"` holds the command as shell words (single quotes, backslash escapes); it
//! runs on the console and the VM powers off after it.
//!
//! `sci_resume` and `overlay_root` are the original guest init's names, so command lines
//! of Flake Pilot 3.1 images keep their meaning. Unknown words are the kernel's or the
//! image's business and are ignored.

use std::time::Duration;

/// Result alias of the command-line parser.
pub type Result<T, E = CmdlineError> = std::result::Result<T, E>;

/// Why the kernel command line cannot be used. The launcher writes these words, so each
/// message names the word and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// `sci_channel` names no channel.
    #[error("sci_channel={value} is unknown; use virtio, console or vsock")]
    Channel {
        /// The value given.
        value: String,
    },
    /// `sci_ports` is not a count.
    #[error("sci_ports={value} is not a count; give the number of ports named flake*")]
    Ports {
        /// The value given.
        value: String,
    },
    /// `sci_idle` is not a number of seconds.
    #[error("sci_idle={value} is not a number of seconds; use 0 for no idle timeout")]
    Idle {
        /// The value given.
        value: String,
    },
    /// `overlay_root` is not a device node.
    #[error(
        "overlay_root={value} is not a device under /dev; name the overlay disk, such as /dev/vdb"
    )]
    Overlay {
        /// The value given.
        value: String,
    },
    /// `run="` is never closed.
    #[error("run=\" has no closing quote; end the serial command with \"")]
    RunUnclosed,
    /// `run=""` holds no word.
    #[error("run=\"\" names no program; put the program and its arguments inside the quotes")]
    RunEmpty,
    /// A single quote in `run="..."` is never closed.
    #[error("run=: unterminated single quote; close it with ' before the ending \"")]
    RunQuote,
}

/// Which guest channel carries calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Virtio console ports named `flake*` (QEMU).
    Virtio,
    /// Vsock port [`VSOCK_PORT`] (Firecracker).
    Vsock,
    /// The virtio console `hvc0` without ports (QEMU, one call): it is there as soon as
    /// the kernel has probed it, while ports take a round of messages with the VMM.
    Console,
}

/// Every `key=value` word `sci` reads; any other word is the kernel's or the image's. The
/// parser takes only these, so a key is documented (`man/sci.8` is checked against this
/// list) before it can have an effect.
pub const KEYS: &[&str] = &[
    "sci_channel",
    "sci_ports",
    "sci_resume",
    "sci_idle",
    "overlay_root",
    "sci_debug",
    "sci_resync",
];

/// The vsock port `sci` listens on (the original's, so host tooling keeps working).
pub const VSOCK_PORT: u32 = 52;

/// Settings read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSettings {
    /// The guest channel.
    pub channel: Channel,
    /// Virtio ports to wait for.
    pub ports: usize,
    /// Serve many calls.
    pub resume: bool,
    /// Power off after this long without a call (resume mode).
    pub idle: Option<Duration>,
    /// Overlay disk.
    pub overlay: Option<String>,
    /// Diagnostics on the console.
    pub debug: bool,
    /// Attach the overlay after the host's `Resync` (the VM may be a restored copy).
    pub resync: bool,
}

impl BootSettings {
    /// Parses a kernel command line.
    pub fn parse(cmdline: &str) -> Result<Self> {
        let mut settings = BootSettings {
            channel: Channel::Vsock,
            ports: 1,
            resume: false,
            idle: None,
            overlay: None,
            debug: false,
            resync: false,
        };
        for word in without_run(cmdline).split_ascii_whitespace() {
            if let Some((key, value)) = word.split_once('=') {
                settings.set(key, value)?;
            }
        }
        Ok(settings)
    }

    /// Takes one `key=value` word; keys that are not `sci`'s are left alone.
    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if !KEYS.contains(&key) {
            return Ok(());
        }
        let owned = || value.to_string();
        match key {
            "sci_channel" => self.channel = Channel::parse(value)?,
            "sci_resume" => self.resume = !matches!(value, "0" | "" | "false"),
            "sci_ports" => {
                self.ports = value
                    .parse()
                    .map_err(|_| CmdlineError::Ports { value: owned() })?;
            }
            "sci_debug" => self.debug = value == "1",
            "sci_resync" => self.resync = value == "1",
            "sci_idle" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| CmdlineError::Idle { value: owned() })?;
                self.idle = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "overlay_root" if value.starts_with("/dev/") => self.overlay = Some(owned()),
            "overlay_root" => return Err(CmdlineError::Overlay { value: owned() }),
            _ => {}
        }
        Ok(())
    }
}

impl Channel {
    /// The channel `sci_channel` names.
    fn parse(value: &str) -> Result<Self> {
        match value {
            "virtio" => Ok(Channel::Virtio),
            "vsock" => Ok(Channel::Vsock),
            "console" => Ok(Channel::Console),
            other => Err(CmdlineError::Channel {
                value: other.to_string(),
            }),
        }
    }
}

/// The command line without its `run="..."` part, whose words are the command's.
fn without_run(cmdline: &str) -> String {
    match run_span(cmdline) {
        Some((start, end)) => format!("{} {}", &cmdline[..start], &cmdline[end..]),
        None => cmdline.to_string(),
    }
}

/// Byte range of `run="..."` (closing quote included), if present and closed.
fn run_span(cmdline: &str) -> Option<(usize, usize)> {
    let start = if cmdline.starts_with("run=\"") {
        0
    } else {
        cmdline.find(" run=\"")? + 1
    };
    let value = start + 5;
    let close = cmdline[value..].find('"')?;
    Some((start, value + close + 1))
}

/// The command of serial mode: the words of `run="..."`, if the command line has one.
pub fn run_command(cmdline: &str) -> Result<Option<Vec<String>>> {
    let start = match cmdline.find("run=\"") {
        Some(0) => 5,
        Some(_) => match cmdline.find(" run=\"") {
            Some(at) => at + 6,
            None => return Ok(None),
        },
        None => return Ok(None),
    };
    let rest = &cmdline[start..];
    let value = rest
        .find('"')
        .map(|end| &rest[..end])
        .ok_or(CmdlineError::RunUnclosed)?;
    let words = split_words(value)?;
    if words.is_empty() {
        return Err(CmdlineError::RunEmpty);
    }
    Ok(Some(words))
}

/// Splits shell words: blanks separate, `'...'` is literal, `\x` is `x`.
fn split_words(text: &str) -> Result<Vec<String>> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => word.push(q),
                        None => return Err(CmdlineError::RunQuote),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            other => {
                in_word = true;
                word.push(other);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_mode_command() {
        assert_eq!(run_command("console=ttyS0 quiet").unwrap(), None);
        let words =
            run_command(r#"init=/usr/sbin/sci run="/bin/sh -c 'echo a  b' it\'s \-x" quiet"#)
                .unwrap()
                .unwrap();
        assert_eq!(words, ["/bin/sh", "-c", "echo a  b", "it's", "-x"]);
        assert_eq!(
            run_command(r#"run="'' x""#).unwrap().unwrap(),
            ["", "x"],
            "an empty argument survives"
        );
        assert!(run_command(r#"run="""#).is_err());
        assert!(run_command(r#"run="'open""#).is_err());
        assert_eq!(run_command(r#"xrun="a""#).unwrap(), None);
    }

    #[test]
    fn keys_and_defaults() {
        let plain = BootSettings::parse("console=ttyS0 root=/dev/vda ro quiet").unwrap();
        assert_eq!(
            plain,
            BootSettings {
                channel: Channel::Vsock,
                resume: false,
                ports: 1,
                idle: None,
                overlay: None,
                debug: false,
                resync: false,
            }
        );
        assert!(BootSettings::parse("sci_resync=1").unwrap().resync);
        let all = BootSettings::parse(
            "init=/usr/sbin/sci sci_channel=virtio sci_resume=1 sci_idle=90 overlay_root=/dev/vdb",
        )
        .unwrap();
        assert_eq!(all.channel, Channel::Virtio);
        assert_eq!(
            BootSettings::parse("sci_channel=console").unwrap().channel,
            Channel::Console
        );

        assert!(all.resume);
        assert_eq!(all.idle, Some(Duration::from_secs(90)));
        assert_eq!(all.overlay.as_deref(), Some("/dev/vdb"));
        assert_eq!(BootSettings::parse("sci_idle=0").unwrap().idle, None);
        assert!(!BootSettings::parse("sci_resume=0").unwrap().resume);
    }

    #[test]
    fn every_listed_key_is_read_and_no_other() {
        let default = BootSettings::parse("").unwrap();
        let takes = |key: &str| {
            ["1", "3"].iter().any(|value| {
                BootSettings::parse(&format!("{key}={value}")).map_or(true, |s| s != default)
            })
        };
        for key in KEYS {
            assert!(takes(key), "{key} is listed but has no effect");
        }
        assert!(!takes("sci_unknown") && !takes("run") && !takes("init"));
    }

    #[test]
    fn words_of_the_serial_command_are_not_settings() {
        let settings =
            BootSettings::parse(r#"quiet run="env sci_idle=x prog" sci_ports=4"#).unwrap();
        assert_eq!(settings.ports, 4);
        assert_eq!(settings.idle, None);
    }

    #[test]
    fn bad_values_are_errors_that_name_the_word_and_the_fix() {
        let cases = [
            (
                "sci_channel=serial",
                "sci_channel=serial is unknown; use virtio, console or vsock",
            ),
            (
                "sci_ports=two",
                "sci_ports=two is not a count; give the number of ports named flake*",
            ),
            (
                "sci_ports=-1",
                "sci_ports=-1 is not a count; give the number of ports named flake*",
            ),
            (
                "sci_idle=soon",
                "sci_idle=soon is not a number of seconds; use 0 for no idle timeout",
            ),
            (
                "overlay_root=vdb",
                "overlay_root=vdb is not a device under /dev; name the overlay disk, such as /dev/vdb",
            ),
        ];
        for (bad, message) in cases {
            let err = BootSettings::parse(&format!("console=ttyS0 {bad} quiet")).unwrap_err();
            assert_eq!(err.to_string(), message, "{bad}");
        }
    }

    #[test]
    fn bad_serial_commands_are_errors_that_say_how_to_write_them() {
        let cases = [
            (
                r#"run="/bin/true"#,
                CmdlineError::RunUnclosed,
                r#"run=" has no closing quote; end the serial command with ""#,
            ),
            (
                r#"quiet run="" ro"#,
                CmdlineError::RunEmpty,
                r#"run="" names no program; put the program and its arguments inside the quotes"#,
            ),
            (
                r#"run="  ""#,
                CmdlineError::RunEmpty,
                r#"run="" names no program; put the program and its arguments inside the quotes"#,
            ),
            (
                r#"run="echo 'open""#,
                CmdlineError::RunQuote,
                r#"run=: unterminated single quote; close it with ' before the ending ""#,
            ),
        ];
        for (cmdline, want, message) in cases {
            let err = run_command(cmdline).unwrap_err();
            assert_eq!(err, want, "{cmdline}");
            assert_eq!(err.to_string(), message, "{cmdline}");
        }
    }

    #[test]
    fn messages_are_one_lower_case_line_without_a_trailing_period() {
        let all = [
            CmdlineError::Channel { value: "x".into() },
            CmdlineError::Ports { value: "x".into() },
            CmdlineError::Idle { value: "x".into() },
            CmdlineError::Overlay { value: "x".into() },
            CmdlineError::RunUnclosed,
            CmdlineError::RunEmpty,
            CmdlineError::RunQuote,
        ];
        for err in all {
            let message = err.to_string();
            assert!(
                !message.contains('\n') && !message.ends_with('.'),
                "{message}"
            );
            assert!(!message.starts_with(char::is_uppercase), "{message}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;
    use vm_pilot::vmm::serial_run;

    use super::*;

    /// Arguments of a serial-mode call: anything, with the shell's and the kernel's special
    /// characters often.
    fn arg() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            r#"[a-z '\\$;&|*?=_"-]{0,10}"#,
            "(sci_[a-z]{2,8}|overlay_root|run)=[a-z/\"]{0,6}",
        ]
    }

    /// The launcher's flake words around the `run="..."` word, as on a real command line.
    fn with_boot_args(run: &str) -> String {
        format!("init=/usr/sbin/sci console=ttyS0 root=/dev/vda {run} ro panic=-1")
    }

    proptest! {
        #[test]
        fn serial_arguments_reach_the_guest_unchanged(argv in vec(arg(), 1..6)) {
            let raw: Vec<Vec<u8>> = argv.iter().map(|a| a.as_bytes().to_vec()).collect();
            match serial_run(&raw) {
                Ok(run) => {
                    let cmdline = with_boot_args(&run);
                    prop_assert_eq!(run_command(&cmdline).unwrap(), Some(argv));
                    // Nothing in the arguments becomes a setting of the guest init.
                    prop_assert_eq!(
                        BootSettings::parse(&cmdline).unwrap(),
                        BootSettings::parse(&with_boot_args("")).unwrap()
                    );
                }
                Err(named) => prop_assert!(argv
                    .iter()
                    .any(|a| a.contains('"') || a.chars().any(char::is_control)), "{named}"),
            }
        }
    }
}
