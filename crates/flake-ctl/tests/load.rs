// SPDX-License-Identifier: MIT
//! The load run (`scripts/load.sh`, `make load`) with small counts: concurrent one-shot
//! launches, concurrent and sequential warm calls of a resume flake, several flakes at once,
//! and the same for QEMU VMs when their fixtures are there. Every output is checked, and the
//! run fails when any container, process, socket, lock file, instance directory or agent
//! descriptor is left over.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::Path;
use std::process::Command;

use util::Run;

#[test]
fn launches_under_load_are_right_and_leave_nothing() {
    if !util::podman_ready() || !util::agent_ready() {
        return;
    }
    let vm = util::vm::inputs().is_some();
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("load.md");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/load.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .env("BIN_DIR", util::bin_dir())
        .env("LOAD_OUT", &report)
        .env("LOAD_TAG", format!("ldt{}", std::process::id()))
        .envs([
            ("LOAD_ROUNDS", "1"),
            ("LOAD_ONESHOT", "8"),
            ("LOAD_WARM", "10"),
            ("LOAD_FLAKES", "4"),
            ("LOAD_SEQ", "100"),
            ("LOAD_VM_ONESHOT", "2"),
            ("LOAD_VM_WARM", "4"),
            ("LOAD_VM_SEQ", "20"),
        ]);
    if !vm {
        cmd.env("LOAD_ONLY", "podman");
    }
    if let Some(fixtures) = std::env::var_os("FLAKE_VM_FIXTURES") {
        cmd.env("VM_FIXTURES", fixtures);
    }
    let run = Run::from_command(cmd);
    run.success();
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("sequential warm calls"), "{text}");
    assert_eq!(text.contains("resume VM"), vm, "{text}");
}
