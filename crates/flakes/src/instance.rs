// SPDX-License-Identifier: MIT
//! Instance identity and private, lockable state directories.
//!
//! Layout (the original's, extended to one directory per instance):
//!
//! ```text
//! <ids_dir>/                  root's: /run/flakes (0700); a user's: $XDG_RUNTIME_DIR/flakes
//!                             (0700), else the shared /tmp/flakes (1777, sticky)
//!   <uid>/                    mode 0700, owned by the caller (or <uid>.<random>, below)
//!     <flake>[@<instance>]/   mode 0700: lock, agent (who the instance's agent is)
//!       run/                  mode 1777: agent.sock; the only part mounted into the instance
//! ```
//!
//! `run/` is open to every user *inside* the instance because the app (and so the agent)
//! may run as any user there (`--user`, the image's `USER`); on the host it stays behind
//! the 0700 directories above it. It is sticky, so one user in the instance cannot remove
//! the socket of another's agent; the launcher connects to the socket without following a
//! link put in its place (a user in the instance could point one at any socket of the
//! host) and then checks who serves it (see podman-pilot's `identity`).
//!
//! Every level is resolved once, by descriptor, from a checked base (see [`Dir`]): a
//! symlink, a foreign owner, or a directory others may write to without the sticky bit is
//! refused, so another local user can neither redirect nor read an instance's socket, not
//! even by swapping a level while a call runs.
//!
//! In a shared base another user may create `<uid>` first. That must not lock the owner
//! out for good: the owner then uses `<uid>.<16 random hex digits>`, a name nobody can
//! guess in advance, and finds it again on later calls as the directory of that pattern
//! that it owns with mode 0700 (others cannot rename or remove it in a sticky base). The
//! same holds one level up: when the base itself is another user's (or writable without
//! the sticky bit) and lies in a shared directory such as `/tmp`, the caller's base is
//! `<base>-<uid>` beside it (or that name's alternative).
//!
//! The per-instance `lock` file is taken with `flock`, which the kernel drops when its
//! holder dies: a `kill -9` at any point leaves no lock behind, unlike the original's
//! CID-file convention.

mod dir;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation, OFlags};

pub use dir::Dir;

use crate::names::{FlakeName, InstanceName};

/// Errors while preparing instance state.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// A state directory is unsafe to use.
    #[error("refusing to use {}: {reason}", path.display())]
    Unsafe {
        /// Directory involved.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Another user took the caller's directory name in a shared base, and no alternative
    /// could be made.
    #[error("refusing to use {}: {reason}; no other directory could be made either \
        ({alternative}); an admin should remove it, or set podman_ids_dir/firecracker_ids_dir \
        to a directory of your own", path.display())]
    Squatted {
        /// The taken directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// Why no alternative was made.
        alternative: String,
    },
    /// A filesystem operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted.
        action: &'static str,
        /// Path involved.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = InstanceError> = std::result::Result<T, E>;

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstanceError + 'a {
    move |source| InstanceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Which instance of which flake: `flake` or `flake@instance`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    /// The flake.
    pub flake: FlakeName,
    /// The `@NAME`, if any.
    pub instance: Option<InstanceName>,
}

impl InstanceKey {
    /// The key as written in file names and listings: `flake` or `flake@instance`.
    pub fn label(&self) -> String {
        match &self.instance {
            Some(instance) => format!("{}@{instance}", self.flake),
            None => self.flake.to_string(),
        }
    }

    /// A podman container name for this key and caller: only `[A-Za-z0-9_.-]`, with a hash
    /// suffix whenever characters had to be replaced, so distinct keys never collide.
    pub fn container_name(&self, uid: u32) -> String {
        let label = self.label();
        let clean: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean == label {
            format!("flake-{clean}-u{uid}")
        } else {
            format!("flake-{clean}-{:08x}-u{uid}", fnv1a(label.as_bytes()))
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |hash, b| {
        (hash ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The private state directory of one instance, held open.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: Dir,
    parent: Dir,
    name: String,
    run: Option<Dir>,
}

/// File name of the agent socket in an instance's `run/` directory.
pub const SOCKET_NAME: &str = "agent.sock";

/// The agent socket of the instance whose state directory is `dir` (by path: for
/// listings; calls use [`StateDir::socket`]).
pub fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run").join(SOCKET_NAME)
}

/// Whether something listens on the agent socket of the instance whose state directory is
/// `dir` (for listings: it connects, sends nothing, and checks nobody's identity). The
/// socket is reached through its directory, so any instance name works.
///
/// The connection does not wait: root lists every user's instances, and a listener whose
/// queue is full (which its owner can arrange) would hold a blocking `connect` forever. A
/// full queue still means that something listens.
pub fn agent_listens(dir: &Path) -> bool {
    use rustix::net::{connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(run) = rustix::fs::open(dir.join("run"), flags, rustix::fs::Mode::empty()) else {
        return false;
    };
    let socket = format!("/proc/self/fd/{}/{SOCKET_NAME}", run.as_raw_fd());
    let (Ok(addr), Ok(fd)) = (
        SocketAddrUnix::new(socket),
        socket_with(
            AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            None,
        ),
    ) else {
        return false;
    };
    matches!(connect(&fd, &addr), Ok(()) | Err(rustix::io::Errno::AGAIN))
}

/// A held instance lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
}

impl StateDir {
    /// Creates (or checks) `<ids_dir>/<uid>/<key>/` for the calling user `uid`.
    pub fn prepare(ids_dir: &Path, uid: u32, key: &InstanceKey) -> Result<Self> {
        let parent = user_dir(ids_dir, uid)?;
        let name = key.label();
        let dir = parent.private_child(&name, 0o700, uid)?;
        let run = Some(dir.private_child("run", 0o1777, uid)?);
        Ok(StateDir {
            dir,
            parent,
            name,
            run,
        })
    }

    /// Creates (or checks) `<ids_dir>/<uid>/.vm/<label>/`, the private directory of a VM
    /// instance (hidden, so container listings never take it for a container instance).
    pub fn prepare_vm(ids_dir: &Path, uid: u32, label: &str) -> Result<Self> {
        let parent = user_dir(ids_dir, uid)?.private_child(".vm", 0o700, uid)?;
        let dir = parent.private_child(label, 0o700, uid)?;
        Ok(StateDir {
            dir,
            parent,
            name: label.to_string(),
            run: None,
        })
    }

    /// The directory's path: for messages and for programs that take a path (which stays
    /// valid, see [`Dir`]).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The held directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The held directory this one is in (`<uid>/`, or `.vm/` for a VM instance).
    pub fn parent(&self) -> &Dir {
        &self.parent
    }

    /// The directory shared with the instance (holds the agent socket), by path: the
    /// source of the instance's bind mount.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// The agent socket, through the held `run/` directory (`/proc/self/fd/N/agent.sock`):
    /// the very directory that was checked, and short whatever the instance's name.
    pub fn socket(&self) -> PathBuf {
        match &self.run {
            Some(run) => run.fd_path().join(SOCKET_NAME),
            None => socket_in(&self.dir.fd_path()),
        }
    }

    /// Connects to the agent socket in the held `run/` directory, never through a link
    /// planted in its place (see [`Dir::connect_socket`]).
    pub fn connect(&self) -> std::io::Result<std::os::unix::net::UnixStream> {
        match &self.run {
            Some(run) => run.connect_socket(SOCKET_NAME),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// Removes a socket left in `run/` (by a dead agent, or planted there).
    pub fn remove_socket(&self) -> Result<()> {
        match &self.run {
            Some(run) => run.remove_file(SOCKET_NAME),
            None => Ok(()),
        }
    }

    /// Takes the instance lock, waiting for a concurrent holder.
    pub fn lock(&self) -> Result<InstanceLock> {
        let flags = OFlags::RDWR | OFlags::CREATE;
        let file = self.dir.open_file("lock", flags, 0o600)?;
        flock(&file, FlockOperation::LockExclusive).map_err(|e| InstanceError::Io {
            action: "lock",
            path: self.dir.path().join("lock"),
            source: e.into(),
        })?;
        Ok(InstanceLock { _file: file })
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<()> {
        self.parent.remove_tree(&self.name)
    }
}

/// Opens (creating, mode 0600, never through a symlink) a file that is only ever `flock`ed.
pub fn lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(i32::try_from(OFlags::NOFOLLOW.bits()).unwrap_or(0))
        .open(path)
        .map_err(io("open", path))
}

/// `<ids_dir>/<uid>/`, created and checked: the caller's private directory (or its
/// alternative when another user took that name, see the module doc).
pub fn user_dir(ids_dir: &Path, uid: u32) -> Result<Dir> {
    let base = match Dir::open_base(ids_dir, uid) {
        Err(err @ InstanceError::Unsafe { .. }) => base_beside(ids_dir, uid).ok_or(err)?,
        other => other?,
    };
    own_dir(&base, &uid.to_string(), uid)
}

/// When the base itself is unusable (another user made `/tmp/flakes` first, or left it
/// writable without the sticky bit) and it lies in a shared directory such as `/tmp`:
/// the caller's own base beside it, `<base>-<uid>` (or its alternative), so that nobody
/// can deny another user their state by making the base first.
fn base_beside(ids_dir: &Path, uid: u32) -> Option<Dir> {
    let parent = Dir::open_base(ids_dir.parent()?, uid).ok()?;
    if !shared(&parent).ok()? {
        return None;
    }
    let name = format!("{}-{uid}", ids_dir.file_name()?.to_str()?);
    own_dir(&parent, &name, uid).ok()
}

/// `<parent>/<name>`, private to `uid`; if another user took that name in a shared
/// `parent`, `uid`'s own `<name>.<hex>`.
fn own_dir(parent: &Dir, name: &str, uid: u32) -> Result<Dir> {
    match parent.private_child(name, 0o700, uid) {
        Err(InstanceError::Unsafe { path, reason }) if shared(parent)? => {
            alternative_dir(parent, name, uid).map_err(|err| InstanceError::Squatted {
                path,
                reason,
                alternative: err.to_string(),
            })
        }
        other => other,
    }
}

/// `<ids_dir>/<uid>/.cache/`: records of assembled images (flake names never start with a
/// dot, so it cannot clash with an instance).
pub fn cache_dir(ids_dir: &Path, uid: u32) -> Result<PathBuf> {
    let dir = user_dir(ids_dir, uid)?.private_child(".cache", 0o700, uid)?;
    Ok(dir.path().to_path_buf())
}

/// Whether others may create entries in `base`.
fn shared(base: &Dir) -> Result<bool> {
    Ok(base.owner_and_mode()?.1 & 0o002 != 0)
}

/// Whether `name` is an alternative name of `uid`'s directory: `<uid>.<16 hex digits>`.
pub fn is_alternative_name(name: &str, uid: u32) -> bool {
    is_alternative_of(name, &uid.to_string())
}

/// Whether `entry` is `<name>.<16 hex digits>`.
fn is_alternative_of(entry: &str, name: &str) -> bool {
    entry
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|hex| hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The uid a per-user directory name stands for: `<uid>` or `<uid>.<16 hex digits>`.
pub fn uid_of_name(name: &str) -> Option<u32> {
    let uid: u32 = name.split('.').next()?.parse().ok()?;
    (name == uid.to_string() || is_alternative_name(name, uid)).then_some(uid)
}

/// Finds `uid`'s own `<name>.<hex>` in `base` (a directory it owns with mode 0700), or
/// makes one under a fresh random name.
fn alternative_dir(base: &Dir, name: &str, uid: u32) -> Result<Dir> {
    if let Some(dir) = find_alternative(base, name, uid)? {
        return Ok(dir);
    }
    make_alternative(base, name, uid)?;
    // Two first calls may each have made one: all of them take the first by name.
    find_alternative(base, name, uid)?.ok_or_else(|| InstanceError::Unsafe {
        path: base.path().into(),
        reason: "the directory made in it went away".into(),
    })
}

fn find_alternative(base: &Dir, name: &str, uid: u32) -> Result<Option<Dir>> {
    for entry in base.entries()? {
        if !is_alternative_of(&entry, name) {
            continue;
        }
        // Others may plant anything under such a name: only a directory of `uid`'s counts.
        if let Ok(Some(dir)) = base.open_child(&entry) {
            if dir
                .owner_and_mode()
                .is_ok_and(|found| found == (uid, 0o700))
            {
                return Ok(Some(dir));
            }
        }
    }
    Ok(None)
}

fn make_alternative(base: &Dir, name: &str, uid: u32) -> Result<()> {
    for _ in 0..8 {
        let fresh = format!("{name}.{:016x}", random_u64(base)?);
        if base.create_child(&fresh, 0o700)? {
            // The umask may have cut the mode.
            base.private_child(&fresh, 0o700, uid)?;
            return Ok(());
        }
    }
    Err(InstanceError::Unsafe {
        path: base.path().into(),
        reason: "no fresh name could be made in it".into(),
    })
}

fn random_u64(base: &Dir) -> Result<u64> {
    use std::io::Read;
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| InstanceError::Io {
            action: "make a name in",
            path: base.path().into(),
            source,
        })?;
    Ok(u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn key(flake: &str, instance: Option<&str>) -> InstanceKey {
        InstanceKey {
            flake: FlakeName::new(flake).unwrap(),
            instance: instance.map(|i| InstanceName::new(i).unwrap()),
        }
    }

    /// True when running as root; otherwise prints a `SKIP` line, and fails where the run
    /// must not skip (`FLAKE_TEST_REQUIRE_PODMAN=1`, which `make test` sets as root).
    fn as_root() -> bool {
        if uid() == 0 {
            return true;
        }
        let required = std::env::var("FLAKE_TEST_REQUIRE_PODMAN").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "this test needs root to hand a directory to another user"
        );
        eprintln!("SKIP: needs root to hand a directory to another user");
        false
    }

    fn uid() -> u32 {
        rustix::process::getuid().as_raw()
    }

    #[test]
    fn layout_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let state = StateDir::prepare(&ids, uid(), &key("app", Some("one"))).unwrap();
        assert_eq!(state.path(), ids.join(uid().to_string()).join("app@one"));
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&ids), 0o700, "made in a private directory");
        assert_eq!(mode(&ids.join(uid().to_string())), 0o700);
        assert_eq!(mode(state.path()), 0o700);
        assert_eq!(mode(&state.run_dir()), 0o1777);
        let socket = state.socket();
        assert!(socket.starts_with("/proc/self/fd/"), "{}", socket.display());
        assert_eq!(
            fs::canonicalize(socket.parent().unwrap()).unwrap(),
            state.run_dir()
        );
    }

    #[test]
    fn a_directory_swapped_after_it_was_resolved_is_not_followed() {
        // Whoever could rename a level (were the checks ever bypassed) swaps the instance
        // directory for a link to their own: the lock, the socket and the files of the
        // call must stay in the directory that was resolved and checked.
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let state = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        let user = ids.join(uid().to_string());
        let decoy = tmp.path().join("decoy");
        fs::create_dir_all(decoy.join("run")).unwrap();
        fs::rename(user.join("app"), user.join("moved")).unwrap();
        std::os::unix::fs::symlink(&decoy, user.join("app")).unwrap();
        let _lock = state.lock().unwrap();
        assert!(
            user.join("moved/lock").is_file(),
            "the lock of the resolved directory"
        );
        assert!(!decoy.join("lock").exists(), "nothing through the link");
        let listener = std::os::unix::net::UnixListener::bind(decoy.join("run/agent.sock"));
        assert!(listener.is_ok());
        assert!(
            state.connect().is_err(),
            "the decoy's socket is never reached"
        );
        assert_eq!(
            fs::canonicalize(state.socket().parent().unwrap()).unwrap(),
            user.join("moved/run")
        );
    }

    #[test]
    fn a_base_made_in_a_shared_directory_is_sticky() {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let ids = tmp.path().join("flakes");
        StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        assert_eq!(fs::metadata(&ids).unwrap().mode() & 0o7777, 0o1777);
    }

    #[test]
    fn the_socket_path_is_short_whatever_the_name() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp
            .path()
            .join("a-rather-long-directory-name-for-instance-state");
        let long = key(&"f".repeat(25), Some(&"i".repeat(63)));
        let state = StateDir::prepare(&ids, uid(), &long).unwrap();
        assert!(socket_in(state.path()).as_os_str().len() > 108);
        assert!(state.socket().as_os_str().len() < 40);
        assert!(!agent_listens(state.path()));
        let listener = std::os::unix::net::UnixListener::bind(state.socket()).unwrap();
        std::os::unix::net::UnixStream::connect(state.socket()).unwrap();
        assert!(agent_listens(state.path()));
        drop(listener);
        assert!(socket_in(state.path()).exists(), "bound in the real run/");
    }

    /// A listener whose queue is full (its owner's doing) is listed without a wait.
    #[test]
    fn a_listener_with_a_full_queue_does_not_hold_the_listing() {
        use rustix::net::{bind, connect, listen, socket_with, AddressFamily, SocketAddrUnix};
        use rustix::net::{SocketFlags, SocketType};
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::prepare(&tmp.path().join("ids"), uid(), &key("app", None)).unwrap();
        let stream = |flags| socket_with(AddressFamily::UNIX, SocketType::STREAM, flags, None);
        let listener = stream(SocketFlags::CLOEXEC).unwrap();
        let addr = SocketAddrUnix::new(state.socket()).unwrap();
        bind(&listener, &addr).unwrap();
        listen(&listener, 0).unwrap();
        let mut queued = Vec::new();
        loop {
            let client = stream(SocketFlags::NONBLOCK).unwrap();
            let full = connect(&client, &addr).is_err();
            queued.push(client);
            if full {
                break;
            }
        }
        let dir = state.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(agent_listens(&dir)));
        let listed = rx.recv_timeout(std::time::Duration::from_secs(5));
        assert_eq!(listed, Ok(true), "a blocking connect waits forever");
    }

    #[test]
    fn symlinks_and_relative_bases_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        for base in [
            tmp.path().join("link/flakes"),
            tmp.path().join("real/../real/flakes"),
            PathBuf::from("relative/flakes"),
        ] {
            let err = StateDir::prepare(&base, uid(), &key("app", None)).unwrap_err();
            assert!(matches!(err, InstanceError::Unsafe { .. }), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
        }
    }

    /// Another user's base (or any level above it) could be swapped under a call.
    #[test]
    fn a_base_of_another_user_is_refused() {
        if !as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        fs::create_dir(&ids).unwrap();
        std::os::unix::fs::chown(&ids, Some(65534), None).unwrap();
        let err = StateDir::prepare(&ids, 0, &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        let above = tmp.path().join("above");
        fs::create_dir(&above).unwrap();
        std::os::unix::fs::chown(&above, Some(65534), None).unwrap();
        let err = StateDir::prepare(&above.join("flakes"), 0, &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
    }

    /// A `<uid>` taken by another user in a shared base costs the owner nothing: it gets a
    /// directory of its own under an unpredictable name, and finds it again.
    #[test]
    fn a_squatted_user_dir_is_replaced_by_an_own_one() {
        if !as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        fs::create_dir(&ids).unwrap();
        fs::set_permissions(&ids, fs::Permissions::from_mode(0o1777)).unwrap();
        let squat = ids.join("0");
        fs::create_dir(&squat).unwrap();
        std::os::unix::fs::chown(&squat, Some(65534), None).unwrap();
        // Decoys of the alternative pattern, the squatter's, are not taken.
        let decoy = ids.join("0.00000000000000ff");
        fs::create_dir(&decoy).unwrap();
        std::os::unix::fs::chown(&decoy, Some(65534), None).unwrap();
        std::os::unix::fs::symlink(&decoy, ids.join("0.0000000000000000")).unwrap();
        fs::write(ids.join("0.0000000000000001"), "").unwrap();
        let first = StateDir::prepare(&ids, 0, &key("app", None)).unwrap();
        let own = first.path().parent().unwrap().to_path_buf();
        let name = own.file_name().unwrap().to_str().unwrap();
        assert!(
            is_alternative_name(name, 0) && own != decoy,
            "{}",
            own.display()
        );
        assert_eq!(fs::metadata(&own).unwrap().uid(), 0);
        let again = StateDir::prepare(&ids, 0, &key("other", None)).unwrap();
        assert_eq!(again.path().parent().unwrap(), own);
        assert_eq!(fs::metadata(&squat).unwrap().uid(), 65534, "left alone");
        assert_eq!(uid_of_name(name), Some(0));
        assert_eq!(uid_of_name("0"), Some(0));
        assert_eq!(uid_of_name("0.x"), None);
    }

    /// Another user making the base first in a shared directory (`/tmp/flakes`) denies
    /// nobody: each user then gets a base of their own beside it.
    #[test]
    fn a_squatted_base_in_a_shared_directory_gives_an_own_one() {
        if !as_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let ids = tmp.path().join("flakes");
        fs::create_dir(&ids).unwrap();
        fs::set_permissions(&ids, fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::chown(&ids, Some(65534), None).unwrap();
        let state = StateDir::prepare(&ids, 0, &key("app", None)).unwrap();
        assert_eq!(state.path(), tmp.path().join("flakes-0/0/app"));
        // Taken as well: an alternative of it.
        fs::remove_dir_all(tmp.path().join("flakes-0")).unwrap();
        fs::create_dir(tmp.path().join("flakes-0")).unwrap();
        std::os::unix::fs::chown(tmp.path().join("flakes-0"), Some(65534), None).unwrap();
        let state = StateDir::prepare(&ids, 0, &key("app", None)).unwrap();
        let base = state.path().parent().unwrap().parent().unwrap();
        let name = base.file_name().unwrap().to_str().unwrap();
        assert!(is_alternative_of(name, "flakes-0"), "{}", base.display());
        // In a directory that is not shared, the refusal stands.
        let private = tempfile::tempdir().unwrap();
        let theirs = private.path().join("flakes");
        fs::create_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let err = StateDir::prepare(&theirs, 0, &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
    }

    #[test]
    fn missing_levels_are_made_and_group_writable_ones_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("a/b/flakes");
        StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&tmp.path().join("a")), 0o755);
        assert_eq!(mode(&tmp.path().join("a/b")), 0o755);
        assert_eq!(mode(&ids), 0o700);
        fs::set_permissions(tmp.path().join("a"), fs::Permissions::from_mode(0o775)).unwrap();
        let err = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("without the sticky bit"), "{err}");
    }

    #[test]
    fn records_are_replaced_whole_and_missing_ones_are_none() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::prepare(&tmp.path().join("ids"), uid(), &key("app", None)).unwrap();
        assert_eq!(state.dir().read_file("agent").unwrap(), None);
        state.dir().write_file("agent", b"one").unwrap();
        state.dir().write_file("agent", b"two").unwrap();
        assert_eq!(state.dir().read_file("agent").unwrap().unwrap(), b"two");
        let mut names = fs::read_dir(state.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect::<Vec<_>>();
        names.sort();
        assert_eq!(names, ["agent", "run"]);
        std::os::unix::fs::symlink("/etc/passwd", state.path().join("other")).unwrap();
        assert!(
            state.dir().read_file("other").is_err(),
            "never through a symlink"
        );
        // A FIFO is refused at once (its open would wait for a writer), a huge file too.
        let fifo = state.path().join("fifo");
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        let err = state.dir().read_file("fifo").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let big = vec![b'x'; 64 * 1024 + 1];
        fs::write(state.path().join("big"), &big).unwrap();
        let err = state.dir().read_file("big").unwrap_err();
        assert!(err.to_string().contains("larger than a record"), "{err}");
        fs::write(state.path().join("big"), &big[1..]).unwrap();
        assert_eq!(
            state.dir().read_file("big").unwrap().unwrap().len(),
            64 * 1024
        );
    }

    #[test]
    fn remove_takes_the_directory_it_holds() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let state = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        fs::write(state.run_dir().join("x"), "").unwrap();
        let path = state.path().to_path_buf();
        state.remove().unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn loose_private_dir_is_tightened_and_unsafe_base_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        let private = ids.join(uid().to_string());
        fs::create_dir_all(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        StateDir::prepare(&ids, uid(), &key("app", None)).unwrap();
        assert_eq!(fs::metadata(&private).unwrap().mode() & 0o777, 0o700);

        fs::set_permissions(&ids, fs::Permissions::from_mode(0o777)).unwrap();
        let err = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap_err();
        assert!(err.to_string().contains("chmod 1777"), "{err}");
    }

    #[test]
    fn symlinked_state_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let ids = tmp.path().join("flakes");
        fs::create_dir_all(ids.join(uid().to_string())).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, ids.join(uid().to_string()).join("app")).unwrap();
        let err = StateDir::prepare(&ids, uid(), &key("app", None)).unwrap_err();
        assert!(matches!(err, InstanceError::Unsafe { .. }), "{err}");
    }

    #[test]
    fn lock_excludes_a_second_holder_until_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::prepare(&tmp.path().join("ids"), uid(), &key("app", None)).unwrap();
        let held = state.lock().unwrap();
        let other = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let _lock = other.lock().unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "lock not exclusive"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn container_names_are_valid_and_distinct() {
        let plain = key("aws", None).container_name(0);
        assert_eq!(plain, "flake-aws-u0");
        let a = key("a", Some("b=c")).container_name(1000);
        let b = key("a", Some("b@c")).container_name(1000);
        assert_ne!(a, b);
        for name in [a, b, key("x+y", None).container_name(0)] {
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
                "{name}"
            );
        }
    }
}
