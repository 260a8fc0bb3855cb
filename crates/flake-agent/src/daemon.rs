// SPDX-License-Identifier: MIT
//! The agent: PID 1 of a resumable instance, serving calls on a unix socket.
//!
//! Each connection is one call (see [`crate::proto`]) handled on its own thread, so a long
//! running app never delays the next call. On the host the socket sits behind the caller's
//! 0700 state directory; it is 0666 itself so that a launcher can reach an agent that runs
//! as another user inside the instance (`--user`, rootless id mapping). Inside the instance,
//! the peer's credentials are checked on every connection: only root and the agent's own
//! user may call. SIGTERM (from `podman stop`) ends the running apps and the
//! agent; as PID 1 it would otherwise be ignored.

mod piped;
pub mod reaper;
pub(crate) mod session;
pub(crate) mod terminal;

pub use session::{signal_group, Writer};

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reaper::Reaper;

use crate::transport::recv_call;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket cannot be created.
    #[error("cannot listen on {}: {source}", path.display())]
    Listen {
        /// Socket path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Signal handling cannot be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Serves calls on `socket` until the agent is terminated.
pub fn serve(socket: &Path) -> Result<Infallible, ServeError> {
    let listener = listen(socket)?;
    let reaper = Reaper::start();
    handle_termination(Arc::clone(&reaper))?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let reaper = Arc::clone(&reaper);
        std::thread::spawn(move || handle(&stream, &reaper));
    }
    // `incoming` never ends; keep serving if it somehow does.
    loop {
        std::thread::park();
    }
}

fn listen(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |source| ServeError::Listen {
        path: socket.to_path_buf(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(socket) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

fn handle_termination(reaper: Arc<Reaper>) -> Result<(), ServeError> {
    use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(ServeError::Signals)?;
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            for pid in reaper.running() {
                signal_group(pid, signal);
            }
            std::process::exit(0);
        }
    });
    Ok(())
}

/// One call, from credentials check to exit status.
fn handle(stream: &UnixStream, reaper: &Reaper) {
    let Ok(clone) = stream.try_clone() else {
        return;
    };
    let writer = Writer::new(clone);
    if !peer_allowed(stream) {
        writer.fail(
            "permission denied: only the instance's user may call it",
            125,
        );
        return;
    }
    let (call, fds) = match recv_call(stream) {
        Ok(received) => received,
        Err(err) => {
            writer.fail(&err.to_string(), 125);
            return;
        }
    };
    let result = if call.terminal {
        stream
            .try_clone()
            .and_then(|reader| terminal::run(reader, writer.clone(), &call, reaper))
    } else {
        piped::run(stream, &call, fds, reaper)
    };
    if let Err(err) = result {
        writer.fail(&format!("flake-agent: {err}"), 125);
    }
}

fn peer_allowed(stream: &UnixStream) -> bool {
    let own = rustix::process::geteuid().as_raw();
    crate::transport::peer_credentials(stream).is_ok_and(|peer| peer.uid == 0 || peer.uid == own)
}

#[cfg(test)]
mod tests;
