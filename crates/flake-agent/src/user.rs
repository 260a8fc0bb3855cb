// SPDX-License-Identifier: MIT
//! The user a call's app runs as: a VM image's `User`, resolved where the app runs.
//!
//! Only the instance knows its users, so the launcher passes the image's `USER[:GROUP]`
//! as written and the agent resolves it against the instance's own `/etc/passwd` and
//! `/etc/group`, as container engines do:
//!
//! - a name must be in the file; a number need not be;
//! - without a group, the user's primary group from `/etc/passwd`, or group 0 for a number
//!   that is not there;
//! - the home directory from `/etc/passwd` (else `/`) becomes `HOME` unless the call's
//!   environment sets it.
//!
//! Supplementary groups are dropped (`setgroups(0)`, which std does when it changes the
//! uid), not read from `/etc/group`. The files belong to the image, which chose the user
//! anyway; they are still read bounded, and an unknown name is an error, never root.

use std::io::Read;
use std::path::Path;

/// The most bytes of `/etc/passwd` or `/etc/group` read.
const FILE_MAX: u64 = 4 << 20;

/// What the app runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: Vec<u8>,
}

/// Resolves `spec` (`USER[:GROUP]`, names or numbers) in the system whose root is `root`.
pub fn resolve(spec: &[u8], root: &Path) -> std::io::Result<AppUser> {
    let spec = String::from_utf8_lossy(spec);
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec.as_ref(), None),
    };
    let passwd = read_bounded(&root.join("etc/passwd"))?;
    let entry = passwd_entry(&passwd, user);
    let (uid, primary, home) = match (user.parse::<u32>(), entry) {
        (_, Some(entry)) => entry,
        (Ok(uid), None) => (uid, 0, b"/".to_vec()),
        (Err(_), None) => return Err(unknown("user", user, "/etc/passwd")),
    };
    let gid = match group {
        None => primary,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_id(&read_bounded(&root.join("etc/group"))?, group)
                .ok_or_else(|| unknown("group", group, "/etc/group"))?,
        },
    };
    Ok(AppUser { uid, gid, home })
}

/// `(uid, gid, home)` of the `/etc/passwd` line for `user` (a name, or a number).
fn passwd_entry(passwd: &str, user: &str) -> Option<(u32, u32, Vec<u8>)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields.as_slice() else {
            return None;
        };
        if *name != user && *uid != user {
            return None;
        }
        let home = if home.is_empty() { "/" } else { home };
        Some((
            uid.parse().ok()?,
            gid.parse().ok()?,
            home.as_bytes().to_vec(),
        ))
    })
}

/// The id of the `/etc/group` line named `group`.
fn group_id(groups: &str, group: &str) -> Option<u32> {
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(group)).then_some(())?;
        fields.nth(1)?.parse().ok()
    })
}

/// The file's text; a missing file reads as empty (numbers still resolve).
fn read_bounded(path: &Path) -> std::io::Result<String> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(err) => return Err(err),
    };
    let mut bytes = Vec::new();
    file.take(FILE_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn unknown(what: &str, name: &str, file: &str) -> std::io::Error {
    // Not `NotFound`: that would read as a missing program (exit 127).
    std::io::Error::other(format!(
        "{what} '{name}' of the image is not in the instance's {file}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbroken line\napp:x:1000:1001::/home/app:/bin/sh\n\
             nohome:x:1002:1002:::/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:app\n").unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, home: &str) -> AppUser {
        AppUser {
            uid,
            gid,
            home: home.as_bytes().to_vec(),
        }
    }

    #[test]
    fn names_and_numbers_resolve_as_container_engines_do() {
        let root = root();
        let cases = [
            ("app", user(1000, 1001, "/home/app")),
            ("1000", user(1000, 1001, "/home/app")),
            ("app:staff", user(1000, 50, "/home/app")),
            ("app:7", user(1000, 7, "/home/app")),
            ("4242", user(4242, 0, "/")),
            ("4242:4343", user(4242, 4343, "/")),
            ("nohome", user(1002, 1002, "/")),
            ("root", user(0, 0, "/root")),
        ];
        for (spec, want) in cases {
            assert_eq!(
                resolve(spec.as_bytes(), root.path()).unwrap(),
                want,
                "{spec}"
            );
        }
    }

    #[test]
    fn unknown_names_are_errors_never_root() {
        let root = root();
        for (spec, needle) in [
            ("nobody", "user 'nobody'"),
            ("app:wheel", "group 'wheel'"),
            ("", "user ''"),
        ] {
            let err = resolve(spec.as_bytes(), root.path()).unwrap_err();
            assert!(err.to_string().contains(needle), "{spec}: {err}");
            assert_ne!(err.kind(), std::io::ErrorKind::NotFound);
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(resolve(b"5:6", empty.path()).unwrap(), user(5, 6, "/"));
        assert!(resolve(b"app", empty.path()).is_err());
    }
}
