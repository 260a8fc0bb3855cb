// SPDX-License-Identifier: MIT
//! What the tests against the local registry share: its address, a visible skip when it
//! does not answer, podman commands that must succeed, and a guard that removes the images
//! a test built without touching the shared ones.

use std::cell::RefCell;
use std::process::Command;

/// The local registry of `scripts/setup-host.sh`.
pub const REGISTRY: &str = "127.0.0.1:5000";

/// True when the registry answers; otherwise a visible skip (a failure under `make test`).
pub fn registry_ready() -> bool {
    let up = std::net::TcpStream::connect(REGISTRY).is_ok();
    if !up {
        super::skip(&format!(
            "the local registry {REGISTRY} does not answer (scripts/setup-host.sh)"
        ));
    }
    up
}

/// Runs podman with `args` and gives its output; fails the test when podman fails.
pub fn podman(args: &[&str]) -> String {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The local names a test gave and the ids of the images it built. Dropped, it removes
/// those names (only those: `untag` with the name, never `rmi -f`) and then each built image
/// no name refers to any more. A build can give an image that exists already, such as the
/// base itself: that one keeps its names and stays. Registry tags stay.
pub struct Images(RefCell<Vec<String>>);

impl Images {
    /// A guard for `names`.
    pub fn new(names: Vec<String>) -> Self {
        Images(RefCell::new(names))
    }

    /// Adds a name or an image id to remove.
    pub fn add(&self, name: impl Into<String>) {
        self.0.borrow_mut().push(name.into());
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let names = self.0.borrow();
        let is_id = |n: &&String| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
        let (ids, tags): (Vec<&String>, Vec<&String>) = names.iter().partition(is_id);
        for tag in tags {
            let _ = Command::new("podman").args(["untag", tag, tag]).output();
        }
        for id in ids {
            let inspect = [
                "image",
                "inspect",
                "--format",
                "{{len .RepoTags}}",
                "--",
                id,
            ];
            let tags = Command::new("podman").args(inspect).output();
            if tags.is_ok_and(|o| o.status.success() && o.stdout == b"0\n") {
                let _ = Command::new("podman").args(["rmi", "--", id]).output();
            }
        }
    }
}
