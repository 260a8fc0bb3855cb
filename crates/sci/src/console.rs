// SPDX-License-Identifier: MIT
//! The plain virtio console (`hvc0`) as the channel of a one-shot call under QEMU.
//!
//! Without the multiport feature, the console's one port exists as soon as the kernel has
//! probed the device; named ports only appear after a round of control messages with the
//! VMM, which costs a software-emulated boot tens of milliseconds. The console is a
//! terminal, so it is switched to raw mode before anything is read or written: no echo,
//! no line editing, no signal characters, no newline translation, bytes as they are. The
//! kernel's own messages go to the serial console (`console=ttyS0`), never here.

use std::fs::File;
use std::time::{Duration, Instant};

use rustix::fs::{open as open_fd, Mode, OFlags};
use rustix::io::Errno;
use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};

/// The console device.
pub const DEVICE: &str = "/dev/hvc0";

/// Why the console cannot carry the call.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The device node never appeared.
    #[error(
        "{DEVICE} did not appear within {} s; the guest kernel needs the virtio console \
         (CONFIG_VIRTIO_CONSOLE) built in",
        waited.as_secs()
    )]
    Missing {
        /// How long `sci` waited.
        waited: Duration,
    },
    /// The device would not open.
    #[error("cannot open {DEVICE}: {source}")]
    Open {
        /// Underlying error.
        source: Errno,
    },
    /// The device would not switch to raw mode.
    #[error("cannot make {DEVICE} a raw terminal: {source}")]
    Raw {
        /// Underlying error.
        source: Errno,
    },
}

/// Opens the console in raw mode, waiting up to `timeout` for its device node.
pub fn open(timeout: Duration) -> Result<File, ConsoleError> {
    let deadline = Instant::now() + timeout;
    // Not the controlling terminal of `sci` (a session leader as PID 1): a hang-up of the
    // console must not signal init.
    let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file = loop {
        match open_fd(DEVICE, flags, Mode::empty()) {
            Ok(fd) => break File::from(fd),
            // Not probed yet.
            Err(Errno::NOENT | Errno::NXIO | Errno::NODEV) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Errno::NOENT) => return Err(ConsoleError::Missing { waited: timeout }),
            Err(source) => return Err(ConsoleError::Open { source }),
        }
    };
    make_raw(&file)?;
    Ok(file)
}

/// Switches the console to raw mode: bytes pass as they are.
fn make_raw(file: &File) -> Result<(), ConsoleError> {
    let raw = |source| ConsoleError::Raw { source };
    let mut mode = tcgetattr(file).map_err(raw)?;
    mode.make_raw();
    tcsetattr(file, OptionalActions::Now, &mode).map_err(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_errors_name_the_device_and_the_fix() {
        let missing = ConsoleError::Missing {
            waited: Duration::from_secs(10),
        };
        assert_eq!(
            missing.to_string(),
            "/dev/hvc0 did not appear within 10 s; the guest kernel needs the virtio console \
             (CONFIG_VIRTIO_CONSOLE) built in"
        );
        let raw = ConsoleError::Raw {
            source: Errno::NOTTY,
        };
        assert!(
            raw.to_string()
                .starts_with("cannot make /dev/hvc0 a raw terminal: "),
            "{raw}"
        );
    }

    #[test]
    fn a_file_that_is_no_terminal_is_refused_raw_mode() {
        let file = File::open("/dev/null").unwrap();
        assert!(matches!(make_raw(&file), Err(ConsoleError::Raw { .. })));
    }
}
