// SPDX-License-Identifier: MIT
//! A kernel shipped as an OCI image: the first of [`CANDIDATES`] that the image holds,
//! read from the tar stream of `podman export` of a container created (never started)
//! from it, so a user needs no mount and no user namespace for it.
//!
//! A candidate may be a symlink or a hard link (`/vmlinuz -> boot/vmlinuz-6.1`, as Debian
//! lays it out). Links are resolved inside the image's own tree, component by component,
//! `..` stopping at its root, at most [`MAX_HOPS`] links deep: nothing outside the image
//! is ever reached, since nothing but the stream is read. The file is written within
//! [`Policy::max_size`] with mode 0644; an image of more than [`MAX_MEMBERS`] members is
//! refused before their names fill the memory. The container is named `flake-kernel-<pid>-<n>`
//! and labelled [`LABEL`], and removed on every path out; one left by a pull killed with
//! `kill -9` is removed by the next pull that reads a kernel image.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use super::super::limited::{self, FileMode};
use super::super::{Policy, PullError};
use super::{OciError, Podman};

/// Where a kernel image keeps its kernel, in the order they are tried.
pub const CANDIDATES: [&str; 4] = ["boot/vmlinux", "boot/vmlinuz", "vmlinux", "vmlinuz"];
/// Label of the containers made to read a kernel out of an image.
pub const LABEL: &str = "io.flake-pilot.kernel-export";
/// The most links followed to reach the kernel.
const MAX_HOPS: usize = 40;
/// The most members of a kernel image's tree kept to resolve links: every one costs
/// memory, and a kernel image holds a kernel (a whole distribution has some 100,000).
const MAX_MEMBERS: usize = 1 << 20;

/// One member of the image's tree, as far as finding the kernel needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Member {
    File,
    Dir,
    Symlink(String),
    HardLink(String),
    Other,
}

/// Writes the kernel of image `id` (named `reference` in errors) to `dest`.
pub fn extract(
    podman: &Podman,
    id: &str,
    reference: &str,
    dest: &Path,
    policy: &Policy,
) -> Result<(), PullError> {
    collect_stale(podman);
    let container = Container::create(podman, id, reference)?;
    let mut tree = HashMap::new();
    let wanted = |path: &str| CANDIDATES.contains(&path);
    // The first pass keeps the candidates that are plain files; one that is a link needs a
    // second pass for what it points to (the stream has gone past it).
    let kept = container.scan(&mut tree, &wanted, dest, policy)?;
    let target = CANDIDATES
        .iter()
        .find_map(|c| resolve(&tree, c))
        .ok_or_else(|| missing(reference))?;
    if kept.as_deref() == Some(target.as_str()) {
        return Ok(());
    }
    if kept.is_some() {
        std::fs::remove_file(dest).map_err(super::super::io("remove", dest))?;
    }
    let only = |path: &str| path == target;
    match container.scan(&mut HashMap::new(), &only, dest, policy)? {
        Some(_) => Ok(()),
        None => Err(missing(reference).into()),
    }
}

/// Removes the kernel containers of pulls that died before they could (`kill -9`): those
/// whose name's pid is not a running process. Best effort; a pid taken again by another
/// process keeps its container until a later pull.
fn collect_stale(podman: &Podman) {
    let listed = podman
        .cmd()
        .args(["ps", "--all", "--filter", &format!("label={LABEL}")])
        .args(["--format", "{{.Names}}"])
        .stdout();
    let Ok(names) = listed else {
        return;
    };
    for name in names.lines().filter(|n| stale(n)) {
        let _ = podman.cmd().args(["rm", "--force", "--", name]).run();
    }
}

/// Whether container `name` is a kernel container (`flake-kernel-<pid>-<n>`) whose pull
/// is no longer running.
fn stale(name: &str) -> bool {
    let Some(pid) = name
        .strip_prefix("flake-kernel-")
        .and_then(|rest| rest.split_once('-'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
    else {
        return false;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn missing(reference: &str) -> OciError {
    OciError::NoKernel {
        image: reference.to_string(),
    }
}

/// A created container, removed when dropped.
struct Container<'a> {
    podman: &'a Podman,
    name: String,
    reference: &'a str,
}

impl<'a> Container<'a> {
    fn create(podman: &'a Podman, id: &str, reference: &'a str) -> Result<Self, PullError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "flake-kernel-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        // A kernel image has no command; the container never starts, any will do.
        podman
            .cmd()
            .args(["create", "--quiet", "--name", &name, "--label", LABEL])
            .args(["--network", "none", "--pull", "never", "--", id, "/none"])
            .run()
            .map_err(|source| OciError::Podman {
                image: reference.to_string(),
                source,
            })?;
        Ok(Container {
            podman,
            name,
            reference,
        })
    }

    /// Reads the container's tree: every member into `tree`, and the first regular file
    /// `wanted` picks into `dest`; returns its path.
    fn scan(
        &self,
        tree: &mut HashMap<String, Member>,
        wanted: &dyn Fn(&str) -> bool,
        dest: &Path,
        policy: &Policy,
    ) -> Result<Option<String>, PullError> {
        let cmd = self.podman.cmd().args(["export", "--", &self.name]);
        let fail = |reason: String| OciError::Export {
            image: self.reference.to_string(),
            reason,
        };
        let mut child = cmd
            .command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail("no output".into()))?;
        let read = read_tree(
            stdout,
            tree,
            wanted,
            dest,
            policy,
            self.reference,
            MAX_MEMBERS,
        );
        // Stop podman if the tree was not read to its end.
        let _ = child.kill();
        let status = child.wait().map_err(|e| fail(e.to_string()))?;
        let kept = read?;
        if !status.success() && tree.is_empty() {
            return Err(fail(format!("podman export ended with {status}")).into());
        }
        Ok(kept)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["rm", "--force", "--", &self.name])
            .run();
    }
}

/// Reads a tar stream of at most `max_members` members into `tree`, writing the first
/// regular member `wanted` picks to `dest` within the size limit.
fn read_tree(
    stream: impl Read,
    tree: &mut HashMap<String, Member>,
    wanted: &dyn Fn(&str) -> bool,
    dest: &Path,
    policy: &Policy,
    reference: &str,
    max_members: usize,
) -> Result<Option<String>, PullError> {
    let bad = |e: std::io::Error| OciError::Export {
        image: reference.to_string(),
        reason: e.to_string(),
    };
    let mut archive = tar::Archive::new(stream);
    let mut kept = None;
    for (count, entry) in archive.entries().map_err(bad)?.enumerate() {
        if count >= max_members {
            return Err(OciError::Export {
                image: reference.to_string(),
                reason: format!(
                    "it holds more than {max_members} files, far more than a kernel image; \
                     put the kernel into an image of its own (FROM scratch)"
                ),
            }
            .into());
        }
        let mut entry = entry.map_err(bad)?;
        let path = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let member = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => Member::File,
            tar::EntryType::Directory => Member::Dir,
            tar::EntryType::Symlink => Member::Symlink(link()),
            tar::EntryType::Link => Member::HardLink(normalize(&link())),
            _ => Member::Other,
        };
        if member == Member::File && kept.is_none() && wanted(&path) {
            write_kernel(&mut entry, dest, policy, reference)?;
            kept = Some(path.clone());
        }
        tree.insert(path, member);
    }
    Ok(kept)
}

fn write_kernel(
    entry: &mut dyn Read,
    dest: &Path,
    policy: &Policy,
    reference: &str,
) -> Result<(), PullError> {
    limited::write_new(entry, dest, FileMode::Data, policy.max_size, None)
        .map(|_| ())
        .map_err(|e| {
            e.into_pull(
                dest,
                || PullError::TooLarge {
                    what: format!("the kernel in {reference}"),
                    limit: policy.max_size,
                },
                |e| {
                    OciError::Export {
                        image: reference.to_string(),
                        reason: e.to_string(),
                    }
                    .into()
                },
            )
        })
}

/// A member path as a key: no leading `/` or `./`, no empty or `.` components, `..`
/// applied and stopped at the root.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join("/")
}

/// The regular file `path` leads to in `tree`, links followed inside the tree only.
fn resolve(tree: &HashMap<String, Member>, path: &str) -> Option<String> {
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let here = done.join("/");
        let next = match tree.get(&here)? {
            Member::Symlink(target) => target.clone(),
            Member::HardLink(target) => format!("/{target}"),
            Member::File if pending.is_empty() => return Some(here),
            Member::Dir => continue,
            Member::File | Member::Other => return None,
        };
        hops += 1;
        if hops > MAX_HOPS {
            return None;
        }
        done.pop();
        if next.starts_with('/') {
            done.clear();
        }
        pending.extend(next.split('/').rev().map(str::to_string));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(members: &[(&str, Member)]) -> HashMap<String, Member> {
        members
            .iter()
            .map(|(p, m)| ((*p).to_string(), m.clone()))
            .collect()
    }

    fn link(target: &str) -> Member {
        Member::Symlink(target.into())
    }

    #[test]
    fn only_kernel_containers_of_dead_pulls_are_stale() {
        let mine = format!("flake-kernel-{}-0", std::process::id());
        assert!(!stale(&mine));
        assert!(!stale("flake-kernel-1-0"), "pid 1 runs");
        assert!(stale(&format!("flake-kernel-{}-3", u32::MAX)));
        for other in [
            "web",
            "flake-kernel-",
            "flake-kernel-x-1",
            "flake-kernel-12",
        ] {
            assert!(!stale(other), "{other}");
        }
    }

    #[test]
    fn paths_normalize_inside_the_root() {
        for (path, key) in [
            ("./boot/vmlinux", "boot/vmlinux"),
            ("/boot//vmlinux", "boot/vmlinux"),
            ("../../boot/./vmlinux", "boot/vmlinux"),
            ("boot/", "boot"),
            ("", ""),
        ] {
            assert_eq!(normalize(path), key, "{path}");
        }
    }

    #[test]
    fn links_resolve_inside_the_image_only() {
        let t = tree(&[
            ("boot", Member::Dir),
            ("boot/vmlinuz-6.1", Member::File),
            ("vmlinuz", link("boot/vmlinuz-6.1")),
            ("abs", link("/boot/vmlinuz-6.1")),
            ("up", link("../../../boot/vmlinuz-6.1")),
            ("hard", Member::HardLink("boot/vmlinuz-6.1".into())),
            ("b", link("boot")),
            ("via-dir", link("b/vmlinuz-6.1")),
            ("escape", link("/etc/passwd")),
            ("loop", link("loop")),
            ("dir", link("boot")),
            ("dev", Member::Other),
        ]);
        for path in ["vmlinuz", "abs", "up", "hard", "via-dir", "b/vmlinuz-6.1"] {
            assert_eq!(
                resolve(&t, path).as_deref(),
                Some("boot/vmlinuz-6.1"),
                "{path}"
            );
        }
        for path in ["escape", "loop", "dir", "dev", "missing", "boot"] {
            assert_eq!(resolve(&t, path), None, "{path}");
        }
    }

    fn archive(members: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in members {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            if !link.is_empty() {
                header.set_link_name(link).unwrap();
            }
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn the_stream_yields_the_tree_and_the_wanted_file() {
        let bytes = archive(&[
            ("boot/", tar::EntryType::Directory, "", b""),
            ("boot/vmlinuz-6.1", tar::EntryType::Regular, "", b"kernel"),
            ("vmlinuz", tar::EntryType::Symlink, "boot/vmlinuz-6.1", b""),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("kernel");
        let mut t = HashMap::new();
        let wanted = |p: &str| p == "boot/vmlinuz-6.1";
        let kept = read_tree(
            &bytes[..],
            &mut t,
            &wanted,
            &dest,
            &Policy::default(),
            "img",
            MAX_MEMBERS,
        )
        .unwrap();
        assert_eq!(kept.as_deref(), Some("boot/vmlinuz-6.1"));
        assert_eq!(std::fs::read(&dest).unwrap(), b"kernel");
        assert_eq!(t.get("vmlinuz"), Some(&link("boot/vmlinuz-6.1")));
        let small = Policy {
            max_size: 3,
            ..Policy::default()
        };
        let err = read_tree(
            &bytes[..],
            &mut HashMap::new(),
            &wanted,
            &dir.path().join("k2"),
            &small,
            "img",
            MAX_MEMBERS,
        )
        .unwrap_err();
        assert!(err.to_string().contains("size limit"), "{err}");
        // Three members where two are allowed: refused, whatever they are.
        let err = read_tree(
            &bytes[..],
            &mut HashMap::new(),
            &|_: &str| false,
            &dir.path().join("k3"),
            &Policy::default(),
            "img",
            2,
        )
        .unwrap_err();
        assert!(err.to_string().contains("more than 2 files"), "{err}");
        let mut t = HashMap::new();
        let none = |_: &str| false;
        read_tree(
            &bytes[..],
            &mut t,
            &none,
            &dest,
            &Policy::default(),
            "img",
            3,
        )
        .unwrap();
        assert_eq!(t.len(), 3);
    }
}
