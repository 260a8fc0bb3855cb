// SPDX-License-Identifier: MIT
//! Calls over virtio console ports (the QEMU guest channel).
//!
//! QEMU backs each port named `flake*` with a unix socket on the host; a launcher connects,
//! runs one call and disconnects. A port is one byte stream that knows no connections, so
//! this module and `serve` add them, from what the virtio console driver reports:
//!
//! - while no host is connected, `read` returns 0 and `poll` returns `POLLHUP` at once, so
//!   waiting for the next caller cannot block on the port; the driver sends `SIGIO` when
//!   the host side opens or closes (with `O_ASYNC` and `F_SETOWN`), which wakes the waiter;
//! - one thread reads a port; a `Call` frame starts a call, so a host that hung up and a
//!   next one that connected between two reads (which the port does not tell apart) still
//!   get separate calls;
//! - every call writes through its own [`PortWriter`] generation: when its caller has
//!   gone, writes fail, so nothing of an ended call reaches the next caller;
//! - the port is non-blocking and writes wait with `poll` (or, for a call relayed by one
//!   thread, fail with `WouldBlock` and the relay polls): a blocking write while no host
//!   is connected would wait for the *next* caller and hand it stale output;
//! - the driver may take a new host's data before the news that it connected: a call read
//!   while the port still says no host waits for that news ([`Port::await_host`]) before
//!   it answers;
//! - a frame cut short by a caller that died while writing it (QEMU drops what it had not
//!   read) ends when the port says the host is gone; the launchers keep the next caller
//!   from connecting before that (see `firecracker-pilot`'s port claims).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;
use rustix::io::Errno;

/// Ports whose name starts with this carry calls.
pub const PORT_PREFIX: &str = "flake";

/// Why the ports cannot carry calls.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A port's device would not open or take its flags.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The port's device.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The `SIGIO` handler could not be set up.
    #[error("cannot handle SIGIO, which tells that a host connected to a port: {source}")]
    Sigio {
        /// Underlying error.
        source: std::io::Error,
    },
    /// No port appeared in time.
    #[error(
        "no virtio console port named '{PORT_PREFIX}*' appeared within {} s; the guest kernel \
         needs the virtio console (CONFIG_VIRTIO_CONSOLE) built in",
        waited.as_secs()
    )]
    NoPorts {
        /// How long `sci` waited.
        waited: Duration,
    },
}

/// One virtio console port.
#[derive(Debug)]
pub struct Port {
    file: File,
    /// The writer generation allowed to write now (0: none).
    writing: Mutex<u64>,
    last: std::sync::atomic::AtomicU64,
}

/// The write half of one call on a port.
#[derive(Debug, Clone)]
pub struct PortWriter {
    port: Arc<Port>,
    generation: u64,
    /// A write waits for room (else it fails with `WouldBlock`).
    waits: bool,
}

/// The read half of a port (one reader per port).
#[derive(Debug, Clone)]
pub struct PortReader(pub Arc<Port>);

impl Port {
    /// Opens the port at `path`, non-blocking, with connection changes signalled.
    pub fn open(path: &Path) -> Result<Arc<Self>, PortError> {
        let fail = |source| PortError::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(fail)?;
        Self::from_file(file).map_err(fail)
    }

    /// A port on an open device (or, in tests, any stream).
    fn from_file(file: File) -> std::io::Result<Arc<Self>> {
        let fail = |e: rustix::io::Errno| std::io::Error::from(e);
        let flags = rustix::fs::fcntl_getfl(&file).map_err(fail)?;
        rustix::fs::fcntl_setfl(&file, flags | OFlags::NONBLOCK | OFlags::ASYNC).map_err(fail)?;
        set_owner(&file)?;
        Ok(Arc::new(Port {
            file,
            writing: Mutex::new(0),
            last: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    fn revents(&self, wanted: PollFlags, timeout: Option<Duration>) -> PollFlags {
        let timeout = timeout.and_then(|t| Timespec::try_from(t).ok());
        let mut fds = [PollFd::new(&self.file, wanted)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(_) => fds[0].revents(),
            Err(_) => PollFlags::empty(),
        }
    }

    /// Waits until a host is connected (or has sent data).
    pub fn wait_for_host(&self) {
        loop {
            let seen = sigio_generation();
            if !self
                .revents(PollFlags::IN, Some(Duration::ZERO))
                .contains(PollFlags::HUP)
            {
                return;
            }
            // The signal is the wake-up; the timeout only guards against a lost one.
            wait_for_sigio(seen, Duration::from_secs(1));
        }
    }

    /// Waits up to `limit` until the port says a host is connected.
    ///
    /// The driver may take a new host's data (its call) before the news that the host
    /// connected, and until then writes fail as if no host were there: a call read in that
    /// moment would be dropped at its first answer.
    pub fn await_host(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let seen = sigio_generation();
            let revents = self.revents(PollFlags::IN, Some(Duration::ZERO));
            let left = deadline.saturating_duration_since(Instant::now());
            if !revents.contains(PollFlags::HUP) || left.is_zero() {
                return;
            }
            wait_for_sigio(seen, left.min(Duration::from_millis(100)));
        }
    }

    /// The writer of a new call; writers of earlier calls fail from now on.
    pub fn writer(self: &Arc<Self>) -> PortWriter {
        let generation = self.last.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        *lock(&self.writing) = generation;
        PortWriter {
            port: Arc::clone(self),
            generation,
            waits: true,
        }
    }

    /// Ends all writing: the host has hung up.
    pub fn end_writes(&self) {
        *lock(&self.writing) = 0;
    }
}

impl Read for PortReader {
    /// Reads what the host sent; 0 once it has hung up.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            self.0
                .revents(PollFlags::IN, Some(Duration::from_millis(500)));
            match rustix::io::read(&self.0.file, &mut *buf) {
                Ok(n) => return Ok(n),
                Err(Errno::AGAIN | Errno::INTR) => {}
                Err(err) => return Err(err.into()),
            }
        }
    }
}

impl PortWriter {
    /// This writer with writes that never wait (one the port cannot take now fails with
    /// `WouldBlock`), and the port to poll for room, for a call relayed by one thread.
    pub fn never_waiting(mut self) -> std::io::Result<(Self, OwnedFd)> {
        let ready = OwnedFd::from(self.port.file.try_clone()?);
        self.waits = false;
        Ok((self, ready))
    }
}

impl Write for PortWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            {
                let current = lock(&self.port.writing);
                if *current != self.generation {
                    return Err(std::io::ErrorKind::BrokenPipe.into());
                }
                match rustix::io::write(&self.port.file, buf) {
                    Ok(n) => return Ok(n),
                    Err(Errno::AGAIN) if !self.waits => {
                        return Err(std::io::ErrorKind::WouldBlock.into())
                    }
                    Err(Errno::AGAIN | Errno::INTR) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            let revents = self
                .port
                .revents(PollFlags::OUT, Some(Duration::from_millis(500)));
            if revents.contains(PollFlags::HUP) && !revents.contains(PollFlags::OUT) {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Makes this process the receiver of the port's `SIGIO`.
///
/// rustix has no `F_SETOWN`, so this is the one direct `fcntl` call.
#[allow(unsafe_code)]
fn set_owner(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: `file` is an open descriptor for the duration of the call; F_SETOWN takes an
    // int argument and touches no memory of ours.
    let rc = unsafe { libc::fcntl(file.as_fd().as_raw_fd(), libc::F_SETOWN, pid) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Counts `SIGIO`s; waiters sleep on the condition variable.
fn sigio() -> &'static (Mutex<u64>, Condvar) {
    static STATE: OnceLock<(Mutex<u64>, Condvar)> = OnceLock::new();
    STATE.get_or_init(|| (Mutex::new(0), Condvar::new()))
}

fn sigio_generation() -> u64 {
    *lock(&sigio().0)
}

fn wait_for_sigio(seen: u64, timeout: Duration) {
    let (count, changed) = sigio();
    let deadline = Instant::now() + timeout;
    let mut current = lock(count);
    while *current == seen {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        current = changed
            .wait_timeout(current, left)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// Catches `SIGIO` (whose default action would end `sci`) and wakes the waiters. Must run
/// before any port is opened.
pub fn handle_sigio() -> Result<(), PortError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGIO])
        .map_err(|source| PortError::Sigio { source })?;
    std::thread::spawn(move || {
        for _ in signals.forever() {
            let (count, changed) = sigio();
            *lock(count) += 1;
            changed.notify_all();
        }
    });
    Ok(())
}

/// The devices of the ports named `flake*`, waiting up to `timeout` for `expected` of
/// them (they appear one by one); after the timeout, whatever has appeared.
pub fn find_ports(expected: usize, timeout: Duration) -> Result<Vec<PathBuf>, PortError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.filter_map(Result::ok) {
                let name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                let device = Path::new("/dev").join(entry.file_name());
                if name.trim().starts_with(PORT_PREFIX) && device.exists() {
                    found.push(device);
                }
            }
        }
        let late = Instant::now() > deadline;
        if found.len() >= expected.max(1) || (late && !found.is_empty()) {
            found.sort();
            return Ok(found);
        }
        if late {
            return Err(PortError::NoPorts { waited: timeout });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn port() -> (Arc<Port>, UnixStream) {
        handle_sigio().unwrap();
        let (guest, host) = UnixStream::pair().unwrap();
        let port = Port::from_file(File::from(OwnedFd::from(guest))).unwrap();
        (port, host)
    }

    #[test]
    fn only_the_newest_call_writes() {
        let (port, mut host) = port();
        let mut first = port.writer();
        let mut second = port.writer();
        assert!(
            first.write(b"stale").is_err(),
            "an earlier call cannot write"
        );
        second.write_all(b"fresh").unwrap();
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"fresh");
        port.end_writes();
        assert!(
            second.write(b"x").is_err(),
            "nothing is written once the host hung up"
        );
        let mut third = port.writer();
        third.write_all(b"next").unwrap();
    }

    #[test]
    fn a_writer_that_never_waits_says_so_and_still_fails_once_replaced() {
        let (port, host) = port();
        let (mut writer, ready) = port.writer().never_waiting().unwrap();
        let chunk = [0u8; 4096];
        let full = loop {
            if let Err(err) = writer.write_all(&chunk) {
                break err;
            }
        };
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock, "{full}");
        let mut fds = [PollFd::new(&ready, PollFlags::OUT)];
        poll(&mut fds, Some(&Timespec::default())).unwrap();
        assert!(!fds[0].revents().contains(PollFlags::OUT), "no room yet");
        drop(host);
        let _next = port.writer();
        let replaced = writer.write(b"x").unwrap_err();
        assert_eq!(replaced.kind(), std::io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn port_errors_name_the_device_and_the_fix() {
        let missing = Port::open(Path::new("/dev/sci-test-no-port")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot open /dev/sci-test-no-port: "),
            "{missing}"
        );
        let none = PortError::NoPorts {
            waited: Duration::from_secs(10),
        };
        assert_eq!(
            none.to_string(),
            "no virtio console port named 'flake*' appeared within 10 s; the guest kernel \
             needs the virtio console (CONFIG_VIRTIO_CONSOLE) built in"
        );
    }

    #[test]
    fn the_reader_sees_what_the_host_sent() {
        let (port, mut host) = port();
        host.write_all(b"call").unwrap();
        let mut buf = [0u8; 8];
        let n = PortReader(Arc::clone(&port)).read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"call");
    }
}
