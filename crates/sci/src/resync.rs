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

use flake_protocol::proto::Resync;

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

/// Why a guest could not take its host's clock and entropy, or drop a disk's cache.
#[derive(Debug, thiserror::Error)]
pub enum ResyncError {
    /// The host's clock does not fit the guest's.
    #[error("the host's clock ({secs} s since 1970) is out of range")]
    ClockRange {
        /// The host's clock.
        secs: u64,
    },
    /// The wall clock could not be set.
    #[error("cannot set the clock: {source}")]
    SetClock {
        /// Underlying error.
        source: rustix::io::Errno,
    },
    /// The kernel is too old to renew all of its random state.
    #[error(
        "kernel {release} cannot renew all of its random state (5.18 or newer can): this VM \
         is not restored from saved states; boot the image with a newer kernel to restore it"
    )]
    OldKernel {
        /// The kernel's release.
        release: String,
    },
    /// `/dev/urandom` refused an ioctl or would not open.
    #[error("cannot {what} /dev/urandom: {source}")]
    Random {
        /// What was asked of it.
        what: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The overlay disk refused to drop its cache or would not open.
    #[error("overlay {device}: cannot {what}: {source}")]
    Overlay {
        /// The overlay disk.
        device: String,
        /// What was asked of it.
        what: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// The first kernel whose reseed also renews the per-CPU batches behind
/// `get_random_u32` (which place a new program in memory): older ones would keep handing
/// every restored copy the same saved values.
const RESEEDS_BATCHES: (u32, u32) = (5, 18);

/// Takes the host's clock and entropy; an error says why the guest cannot be a restored
/// copy (the clock may have been set).
pub fn apply(resync: &Resync) -> Result<(), ResyncError> {
    set_clock(resync.realtime)?;
    let uname = rustix::system::uname();
    check_kernel(&uname.release().to_string_lossy())?;
    let random = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(urandom("open"))?;
    let info = PoolInfo {
        entropy_count: 256,
        buf_size: 32,
        buf: resync.entropy,
    };
    add_entropy(&random, &info).map_err(urandom("add the host's entropy to"))?;
    // A generator that is not yet initialised has just been, by the credit above; only an
    // initialised one is reseeded (the kernel refuses the others with ENODATA).
    match no_arg_ioctl(&random, RNDRESEEDCRNG) {
        Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(urandom("reseed")(e)),
        _ => Ok(()),
    }
}

/// Sets the wall clock to the host's `realtime` (since the epoch).
fn set_clock(realtime: std::time::Duration) -> Result<(), ResyncError> {
    let secs = realtime.as_secs();
    let time = rustix::time::Timespec {
        tv_sec: i64::try_from(secs).map_err(|_| ResyncError::ClockRange { secs })?,
        tv_nsec: realtime.subsec_nanos().into(),
    };
    rustix::time::clock_settime(rustix::time::ClockId::Realtime, time)
        .map_err(|source| ResyncError::SetClock { source })
}

/// Refuses kernels older than [`RESEEDS_BATCHES`] (by their `release`).
fn check_kernel(release: &str) -> Result<(), ResyncError> {
    if kernel_version(release).is_none_or(|version| version < RESEEDS_BATCHES) {
        return Err(ResyncError::OldKernel {
            release: release.to_string(),
        });
    }
    Ok(())
}

/// The error of asking `what` of `/dev/urandom`.
fn urandom(what: &'static str) -> impl Fn(std::io::Error) -> ResyncError {
    move |source| ResyncError::Random { what, source }
}

/// The major and minor version of a kernel release (`6.1.192-3`).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Drops what the kernel has cached of block device `device` (the overlay disk).
pub fn forget_cached(device: &str) -> Result<(), ResyncError> {
    let fail = |what| {
        move |source| ResyncError::Overlay {
            device: device.to_string(),
            what,
            source,
        }
    };
    let file = File::open(device).map_err(fail("open it"))?;
    no_arg_ioctl(&file, BLKFLSBUF).map_err(fail("drop its cache"))
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

    #[test]
    fn old_or_unknown_kernels_are_refused_by_release() {
        for old in ["5.17.9", "4.19-rc1", "unknown"] {
            let err = check_kernel(old).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "kernel {old} cannot renew all of its random state (5.18 or newer can): \
                     this VM is not restored from saved states; boot the image with a newer \
                     kernel to restore it"
                )
            );
        }
        check_kernel("5.18.0").unwrap();
        check_kernel("6.1.192-3").unwrap();
    }

    #[test]
    fn a_clock_beyond_the_guests_range_is_named() {
        let far = std::time::Duration::from_secs(u64::MAX);
        let err = set_clock(far).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "the host's clock ({} s since 1970) is out of range",
                u64::MAX
            )
        );
    }

    #[test]
    fn a_disk_whose_cache_cannot_be_dropped_is_named() {
        let missing = forget_cached("/dev/sci-test-no-disk").unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("overlay /dev/sci-test-no-disk: cannot open it: "),
            "{missing}"
        );
        // Not a block device: the kernel refuses the ioctl.
        let file = tempfile_path();
        let refused = forget_cached(&file).unwrap_err();
        assert!(
            refused
                .to_string()
                .starts_with(&format!("overlay {file}: cannot drop its cache: ")),
            "{refused}"
        );
        std::fs::remove_file(&file).unwrap();
    }

    /// A fresh regular file of this test process.
    fn tempfile_path() -> String {
        let path = std::env::temp_dir().join(format!("sci-resync-{}", std::process::id()));
        std::fs::write(&path, b"not a disk").unwrap();
        path.display().to_string()
    }

    #[test]
    fn urandom_errors_say_what_was_asked() {
        let err = urandom("reseed")(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            err.to_string(),
            "cannot reseed /dev/urandom: Operation not permitted (os error 1)"
        );
    }
}
