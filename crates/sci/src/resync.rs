// SPDX-License-Identifier: MIT
//! What a guest restored from a saved VM state takes from its host before the call.
//!
//! A one-shot VM may be saved once while it waits for its call and then restored for every
//! launch. Each restored copy would otherwise start with the saved clock, which is as old
//! as the state, and the saved state of the kernel's random generator, which every copy
//! would share: two launches would draw the same "random" numbers. So the host's `Resync`
//! sets the wall clock and adds 256 bits of host entropy, and the generator is reseeded at
//! once rather than at its next scheduled reseed. Then the block device cache is dropped
//! for the overlay disk: the saved kernel read the start of the disk it was saved with
//! (partition probing), and this copy has a disk of its own.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use flake_agent::proto::Resync;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::Ioctl = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::Ioctl = 0x5207;
/// `BLKFLSBUF`: `_IO(0x12, 97)`.
const BLKFLSBUF: libc::Ioctl = 0x1261;

/// `struct rand_pool_info` with the entropy of one `Resync`.
#[repr(C)]
struct PoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; 32],
}
const _: () = assert!(std::mem::size_of::<PoolInfo>() == 40);

/// The first kernel whose reseed also renews the per-CPU batches behind
/// `get_random_u32` (which place a new program in memory): older ones would keep handing
/// every restored copy the same saved values.
const RESEEDS_BATCHES: (u32, u32) = (5, 18);

/// Takes the host's clock and entropy; an error says why the guest cannot be a restored
/// copy (the clock may have been set).
pub fn apply(resync: &Resync) -> Result<(), String> {
    let time = rustix::time::Timespec {
        tv_sec: i64::try_from(resync.realtime.as_secs())
            .map_err(|_| "the host's clock is out of range".to_string())?,
        tv_nsec: resync.realtime.subsec_nanos().into(),
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, time)
        .map_err(|e| format!("cannot set the clock: {e}"))?;
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    if kernel_version(&release).is_none_or(|version| version < RESEEDS_BATCHES) {
        return Err(format!(
            "kernel {release} cannot renew all of its random state (5.18 or newer can): \
             this VM is not restored from saved states"
        ));
    }
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("cannot open /dev/urandom: {e}"))?;
    let info = PoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: resync.entropy,
    };
    add_entropy(&random, &info).map_err(|e| format!("cannot add the host's entropy: {e}"))?;
    // A generator that is not yet initialised has just been, by the credit above; only an
    // initialised one is reseeded (the kernel refuses the others with ENODATA).
    match no_arg_ioctl(&random, RNDRESEEDCRNG) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        Err(e) => Err(format!("cannot reseed the random generator: {e}")),
    }
}

/// The major and minor version of a kernel release (`6.1.192-3`).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Drops what the kernel has cached of block device `device`.
pub fn forget_cached(device: &str) -> Result<(), String> {
    let file = File::open(device).map_err(|e| format!("cannot open {device}: {e}"))?;
    no_arg_ioctl(&file, BLKFLSBUF).map_err(|e| format!("cannot drop the cache of {device}: {e}"))
}

#[allow(unsafe_code)]
fn add_entropy(random: &File, info: &PoolInfo) -> std::io::Result<()> {
    // SAFETY: `info` is a live `struct rand_pool_info` whose `buf_size` matches its buffer;
    // the kernel only reads it during the call.
    let rc = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, info as *const PoolInfo) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[allow(unsafe_code)]
fn no_arg_ioctl(file: &File, request: libc::Ioctl) -> std::io::Result<()> {
    // SAFETY: `file` is open for the call, and `request` is one that takes no argument and
    // touches no memory of ours.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_are_read_from_releases() {
        assert_eq!(kernel_version("6.1.192-3"), Some((6, 1)));
        assert_eq!(kernel_version("5.18.0"), Some((5, 18)));
        assert_eq!(kernel_version("4.19-rc1"), Some((4, 19)));
        assert_eq!(kernel_version("unknown"), None);
        assert!(kernel_version("5.17.9").unwrap() < RESEEDS_BATCHES);
        assert!(kernel_version("6.1.192-3").unwrap() >= RESEEDS_BATCHES);
    }
}
