// SPDX-License-Identifier: MIT
//! Environment values of a flake's podman options, kept off podman's command line.
//!
//! A command line is public: any local user reads it in `/proc/PID/cmdline` (`ps`) for as
//! long as podman runs, and a one-shot launch *is* that podman. A flake's
//! `-e API_KEY=%API_KEY` would so show the caller's secret to everyone. So the
//! `-e KEY=VALUE` options (every spelling) go into an anonymous in-memory file
//! (`memfd_create`) that podman inherits and reads as `--env-file=/dev/fd/N`, in their
//! order, where the first of them stood; only podman, running as the caller, can read it.
//!
//! Not through sudo: sudo closes inherited descriptors, so a root flake called by another
//! user keeps its values on the command line (whoever may run `sudo podman` is root anyway,
//! and the values are the flake file's). A value with a line break cannot be written to an
//! env file and stays on the command line too.

use std::io::Write;
use std::os::fd::IntoRawFd;

use crate::options::EngineOption;

/// Moves the environment assignments of `options` into an inherited in-memory file and puts
/// one `--env-file=/dev/fd/N` option in the place of the first; returns the options
/// unchanged when there is nothing to move.
pub fn hide_values(options: Vec<EngineOption>) -> std::io::Result<Vec<EngineOption>> {
    let Some(first) = options.iter().position(|o| movable(o).is_some()) else {
        return Ok(options);
    };
    let mut text = String::new();
    for assignment in options.iter().filter_map(|o| movable(o)) {
        text.push_str(assignment);
        text.push('\n');
    }
    let fd = inherited_file(text.as_bytes())?;
    let mut kept: Vec<EngineOption> = Vec::with_capacity(options.len());
    for (i, option) in options.into_iter().enumerate() {
        if i == first {
            kept.push(EngineOption::parse(&format!("--env-file=/dev/fd/{fd}")));
        }
        if movable(&option).is_none() {
            kept.push(option);
        }
    }
    Ok(kept)
}

/// The assignment of `option` that can go into an env file (one line).
fn movable(option: &EngineOption) -> Option<&str> {
    option.env_assignment().filter(|a| !a.contains('\n'))
}

/// An anonymous file holding `bytes`, open without close-on-exec so podman inherits it;
/// returns its descriptor number. It is left open for the rest of this process on purpose:
/// podman reads it after this process has exec'd (one-shot) or spawned it (resume,
/// attach), and the launcher is short-lived.
fn inherited_file(bytes: &[u8]) -> std::io::Result<i32> {
    let fd = rustix::fs::memfd_create("flake-env", rustix::fs::MemfdFlags::empty())?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    // podman opens /dev/fd/N afresh, so the offset left at the end does not matter.
    Ok(file.into_raw_fd())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entries: &[&str]) -> Vec<EngineOption> {
        entries.iter().map(|e| EngineOption::parse(e)).collect()
    }

    fn shown(options: &[EngineOption]) -> Vec<String> {
        options
            .iter()
            .flat_map(|o| o.args())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn assignments_move_into_the_file_in_order_where_the_first_stood() {
        let options = parse(&[
            "--net host",
            "-e TOKEN=s3cret",
            "--volume /a:/b",
            "--env=B=two",
            "-eC=3",
            "--env D=4 and more",
            "-e PASSTHROUGH",
        ]);
        let kept = shown(&hide_values(options).unwrap());
        assert_eq!(kept.len(), 7, "{kept:?}");
        assert_eq!(kept[..2], ["--net", "host"]);
        let file = kept[2].strip_prefix("--env-file=").unwrap();
        assert_eq!(kept[3..], ["--volume", "/a:/b", "-e", "PASSTHROUGH"]);
        let text = std::fs::read_to_string(file).unwrap();
        assert_eq!(text, "TOKEN=s3cret\nB=two\nC=3\nD=4 and more\n");
        assert!(!kept.concat().contains("s3cret"));
    }

    #[test]
    fn nothing_to_move_changes_nothing() {
        let options = parse(&["--net host", "-e HOME", "--env-file /x"]);
        assert_eq!(hide_values(options.clone()).unwrap(), options);
        let multi = parse(&["-e K=a\nb"]);
        assert_eq!(
            hide_values(multi.clone()).unwrap(),
            multi,
            "a line break stays"
        );
    }
}
