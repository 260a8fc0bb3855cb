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

/// Opens the console in raw mode, waiting up to `timeout` for its device node.
pub fn open(timeout: Duration) -> Result<File, String> {
    let deadline = Instant::now() + timeout;
    let fail = |e: &dyn std::fmt::Display| format!("cannot open {DEVICE}: {e}");
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
            Err(Errno::NOENT) => return Err(format!("{DEVICE} did not appear")),
            Err(e) => return Err(fail(&e)),
        }
    };
    let mut mode = tcgetattr(&file).map_err(|e| fail(&e))?;
    mode.make_raw();
    tcsetattr(&file, OptionalActions::Now, &mode).map_err(|e| fail(&e))?;
    Ok(file)
}
