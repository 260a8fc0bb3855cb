// SPDX-License-Identifier: MIT
//! VM flakes run for real: QEMU microvm (TCG) boots the fixture kernel with a busybox rootfs
//! whose init is our `sci`, and the app behaves like a local program.
//!
//! Needs the VM fixtures (`FLAKE_VM_FIXTURES`) and the static `sci` (`FLAKE_SCI`, built by
//! `make agent`); required when `FLAKE_TEST_REQUIRE_VM=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::process::{Command, Stdio};

use util::vm::{
    inputs, running_vm, vm_flake, vm_flake_on, vm_flake_with, vm_flake_with_includes, vm_world,
    KillVms,
};
use util::World;

#[test]
fn vm_app_behaves_like_a_local_program() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake(&w, &fixtures, &sci, "vmsh");

    let run = w.app(
        &app,
        &["-c", "echo from the guest; echo to stderr >&2; exit 3"],
        None,
    );
    run.expect_code(3);
    assert_eq!(
        run.stdout(),
        "from the guest\n",
        "no kernel or VMM output mixed in: {run}"
    );
    assert_eq!(run.stderr(), "to stderr\n", "{run}");

    let run = w.app(
        &app,
        &[
            "-c",
            "printf '[%s]\\n' \"$@\"",
            "sh",
            "a b",
            "\"quoted\"",
            "it's",
            "x=\"1\" init=/bin/sh",
        ],
        None,
    );
    run.success();
    assert_eq!(
        run.stdout(),
        "[a b]\n[\"quoted\"]\n[it's]\n[x=\"1\" init=/bin/sh]\n",
        "arguments arrive intact: {run}"
    );

    let data: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let run = w.app(&app, &["-c", "cat; echo done"], Some(&data));
    run.success();
    let mut want = data.clone();
    want.extend(b"done\n");
    assert_eq!(
        run.output.stdout, want,
        "stdin streams and EOF reaches the app"
    );

    let run = w.app(&app, &["-c", "wc -c"], None);
    run.success();
    assert_eq!(
        run.stdout().trim(),
        "0",
        "stdin from /dev/null is an immediate EOF: {run}"
    );
}

#[test]
fn show_lists_a_running_vm_until_it_ends() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake(&w, &fixtures, &sci, "vmshow");
    let mut child = w
        .command(&app)
        .args(["-c", "sleep 4"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let show = w.ctl(&["firecracker", "show", "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
        let running = rows.as_array().unwrap().iter().any(|r| {
            r["name"].as_str().is_some_and(|n| n.starts_with("vmshow#")) && r["status"] == "running"
        });
        if running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never shown as running: {show}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(child.wait().unwrap().success());
    let show = w.ctl(&["firecracker", "show"]);
    assert!(show.stdout().contains("No instance(s) found"), "{show}");
}

#[test]
fn resume_vm_keeps_state_serves_calls_and_is_removed() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with_includes(&w, &fixtures, &sci, "vmres", &["--resume"], "64MiB");
    let conf = w.path("incl/etc/app/conf").display().to_string();

    let first = w.app(
        &app,
        &[
            "-c",
            &format!("echo kept > /tmp/state; cat {conf} /usr/share/note"),
        ],
        None,
    );
    first.success();
    assert_eq!(
        first.stdout(),
        "from an include path\nfrom an include tar\n",
        "include files are in the VM: {first}"
    );
    // The channel is the one this run is about: vsock wherever the device is, or the
    // ports fallback when the run forces it.
    let channel = w.app(&app, &["-c", "cat /proc/cmdline"], None);
    channel.success();
    let want = format!("sci_channel={}", util::vm::resume_channel());
    assert!(channel.stdout().contains(&want), "{want}: {channel}");
    let pid = running_vm(&w, "vmres").expect("the resume VM keeps running");

    // stdin from /dev/null: its EOF goes with the call, and an app that reads it ends.
    let null = w.app(&app, &["-c", "wc -c; exit 6"], None);
    null.expect_code(6);
    assert_eq!(null.stdout().trim(), "0", "{null}");

    let started = std::time::Instant::now();
    let second = w.app(&app, &["-c", "cat /tmp/state; exit 4"], None);
    let warm = started.elapsed();
    second.expect_code(4);
    assert_eq!(
        second.stdout(),
        "kept\n",
        "state survives between calls: {second}"
    );
    assert_eq!(
        running_vm(&w, "vmres"),
        Some(pid.clone()),
        "the same VM served it"
    );
    eprintln!("warm resume call into the VM: {warm:?}");

    // Calls run side by side (one guest channel port each).
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..2)
        .map(|_| {
            w.command(&app)
                .args(["-c", "sleep 3"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(5500),
        "two 3 s calls took {:?}",
        started.elapsed()
    );

    let other = w.app(&app, &["@other", "-c", "cat /tmp/state"], None);
    other.expect_code(1);
    assert!(
        running_vm(&w, "vmres@other").is_some(),
        "@NAME is its own VM"
    );
    w.app(&app, &["@other", "%remove", "-c", "true"], None)
        .success();

    let removed = w.app(&app, &["%remove", "-c", "cat /tmp/state"], None);
    removed.success();
    assert_eq!(removed.stdout(), "kept\n");
    assert_eq!(running_vm(&w, "vmres"), None, "%remove ends the VM");
    let show = w.ctl(&["firecracker", "show"]);
    assert!(show.stdout().contains("No instance(s) found"), "{show}");
    let storage = w.home.join(".config/flakes/firecracker/storage");
    let left: Vec<_> = std::fs::read_dir(&storage)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the overlay goes with the instance: {left:?}"
    );
    // Gone, or a zombie waiting for a parent that does not reap (no init here).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, None | Some(Some('Z' | 'X'))),
        "the VMM process is gone: {stat}"
    );
}

#[test]
fn one_shot_overlay_is_fresh_every_call() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with_includes(&w, &fixtures, &sci, "vmfresh", &[], "32MiB");
    let first = w.app(
        &app,
        &[
            "-c",
            "test -e /tmp/mark && echo stale; echo x > /tmp/mark && cat /usr/share/note",
        ],
        None,
    );
    first.success();
    assert_eq!(first.stdout(), "from an include tar\n", "{first}");
    let second = w.app(&app, &["-c", "test -e /tmp/mark && echo stale; true"], None);
    second.success();
    assert_eq!(
        second.stdout(),
        "",
        "a one-shot VM starts from a fresh overlay: {second}"
    );
}

#[test]
fn idle_resume_vm_powers_off_and_restarts_with_its_overlay() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmidle",
        &["--resume", "--idle-timeout", "2", "--overlay-size", "32MiB"],
        "",
    );
    w.app(&app, &["-c", "echo persisted > /root/file; sync"], None)
        .success();
    assert!(running_vm(&w, "vmidle").is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running_vm(&w, "vmidle").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle VM did not power off"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // The overlay is the caller's alone; one others could change is refused before the
    // VM starts again (it lies over the guest's root).
    use std::os::unix::fs::PermissionsExt;
    let storage = w.home.join(".config/flakes/firecracker/storage");
    let overlay = std::fs::read_dir(&storage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "ext4"))
        .unwrap();
    let mode = |m| std::fs::set_permissions(&overlay, std::fs::Permissions::from_mode(m));
    let meta = std::fs::metadata(&overlay).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        overlay.display()
    );
    mode(0o666).unwrap();
    let refused = w.app(&app, &["-c", "cat /root/file"], None);
    refused.expect_code(125);
    assert!(
        refused.stderr().contains("overlay") && refused.stderr().contains("mode 666"),
        "{refused}"
    );
    mode(0o600).unwrap();
    let again = w.app(&app, &["-c", "cat /root/file"], None);
    again.success();
    assert_eq!(
        again.stdout(),
        "persisted\n",
        "the overlay outlives the VM: {again}"
    );
    // Under load this call may meet the VM deciding to idle out: it is made again.
    w.app(&app, &["%remove", "-c", "true"], None).success();
}

#[test]
fn terminal_calls_get_a_pty_in_the_guest() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    // One-shot (the plain console) and resume (a port, whose call writes never wait).
    for (name, register) in [("vmtty", &[][..]), ("vmtty2", &["--resume"][..])] {
        let app = vm_flake_with(&w, &fixtures, &sci, name, register, "");
        let probe = "if [ -t 0 ] && [ -t 1 ]; then echo TTY; else echo NOTTY; fi; exit 5";
        let piped = w.app(&app, &["-c", probe], Some(b""));
        assert_eq!(piped.stdout(), "NOTTY\n", "{piped}");
        let out = util::in_pty(&w, &app, &["-c", probe]);
        assert!(out.contains("TTY\r\n") && !out.contains("NOTTY"), "{out:?}");
        // Bulk output through the guest's pty arrives whole.
        let bulk = util::in_pty(&w, &app, &["-c", "seq 1 20000; exit 0"]);
        assert!(
            bulk.contains("\r\n19999\r\n20000\r\n"),
            "{name}: {} bytes",
            bulk.len()
        );

        // Ctrl-C typed on the caller's terminal is the guest terminal's interrupt: it
        // reaches the app, and the caller's terminal is back in its modes afterwards.
        let script = "trap 'echo got INT; exit 6' INT; echo ready; while true; do sleep 1; done";
        let typed = util::pty_session(&w, &app, &["-c", script], "ready", b"\x03");
        assert!(typed.output.contains("got INT"), "{typed:?}");
        assert_eq!(typed.code, 6, "{typed:?}");
        assert!(typed.restored, "terminal modes restored: {typed:?}");
    }
    w.app(&w.bin.join("vmtty2"), &["%remove", "-c", "true"], None)
        .success();
}

#[test]
fn signals_to_the_launcher_reach_one_shot_and_resume_guest_apps() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    for (name, register) in [("vmsig", &[][..]), ("vmsig2", &["--resume"][..])] {
        let app = vm_flake_with(&w, &fixtures, &sci, name, register, "");
        signal_reaches_the_guest_app(&w, &app, "INT", false);
        signal_reaches_the_guest_app(&w, &app, "TERM", false);
        // `yes | app`: the Ctrl-C is not stuck behind input the app never reads.
        signal_reaches_the_guest_app(&w, &app, "INT", true);
    }
    w.app(&w.bin.join("vmsig2"), &["%remove", "-c", "true"], None)
        .success();
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn tap_devices_are_made_for_the_vm_and_removed_with_it() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    if !util::podman_ready() {
        return; // root is needed to create TAP devices
    }
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    // Registered with a network (no --no-net); the guest kernel has no NIC driver, the
    // host side is what is checked here.
    let app = vm_flake_on(
        &w,
        &fixtures,
        &sci,
        "vmnet",
        "qemu",
        &["--resume", util::vm::WITH_NET],
        "",
    );
    w.app(&app, &["-c", "true"], None).success();
    assert!(
        link_exists("tap-vmnet"),
        "tap-<flake> made for the running VM"
    );
    w.app(&app, &["%remove", "-c", "true"], None).success();
    assert!(!link_exists("tap-vmnet"), "and removed with the instance");

    // A device the admin made is used and left alone.
    let made = Command::new("ip")
        .args(["tuntap", "add", "dev", "tap-vmnet@keep", "mode", "tap"])
        .status()
        .unwrap();
    assert!(made.success());
    w.app(&app, &["@keep", "%remove", "-c", "true"], None)
        .success();
    let kept = link_exists("tap-vmnet@keep");
    let _ = Command::new("ip")
        .args(["link", "delete", "tap-vmnet@keep"])
        .status();
    assert!(kept, "a device the launcher did not make is not removed");
}

/// Runs `app -c SCRIPT` for every script at the same time; each must succeed. Returns
/// their stdouts in order.
fn parallel_calls(w: &World, app: &std::path::Path, scripts: &[String]) -> Vec<String> {
    let children: Vec<_> = scripts
        .iter()
        .map(|script| {
            w.command(app)
                .args(["-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect()
}

/// VMMs of this world still running.
fn vmms_of(w: &World) -> usize {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("qemu-system.*{}", w.dir.path().display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn concurrent_first_calls_of_a_resume_flake_start_one_vm() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(&w, &fixtures, &sci, "vmconc", &["--resume"], "");
    let scripts: Vec<String> = (0..3).map(|i| format!("echo call {i}")).collect();
    for (i, stdout) in parallel_calls(&w, &app, &scripts).iter().enumerate() {
        assert_eq!(stdout, &format!("call {i}\n"));
    }
    assert_eq!(vmms_of(&w), 1, "one VM serves all first calls");
    w.app(&app, &["%remove", "-c", "true"], None).success();
    assert_eq!(vmms_of(&w), 0);
}

#[test]
fn a_launcher_killed_mid_call_leaves_nothing_that_blocks_the_next_call() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let kill_mid_call = |app: &std::path::Path| {
        let mut child = w
            .command(app)
            .args(["-c", "echo started; sleep 60"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        assert_eq!(lines.next().unwrap().unwrap(), "started");
        child.kill().unwrap();
        child.wait().unwrap();
    };

    // Resume: the VM stays, the killed call's app ends, the next call is served.
    let resume = vm_flake_with(&w, &fixtures, &sci, "vmkill", &["--resume"], "");
    kill_mid_call(&resume);
    let next = w.app(&resume, &["-c", "echo served"], None);
    next.success();
    assert_eq!(next.stdout(), "served\n");
    w.app(&resume, &["%remove", "-c", "true"], None).success();

    // One-shot: the guest powers off when its caller is gone; the next launch collects
    // the directory the killed launcher could not remove.
    let oneshot = vm_flake(&w, &fixtures, &sci, "vmkill1");
    kill_mid_call(&oneshot);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while vmms_of(&w) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned one-shot VM kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    w.app(&oneshot, &["-c", "true"], None).success();
    let left: Vec<_> = std::fs::read_dir(w.path("ids/0/.vm"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "orphaned instance collected: {left:?}");
}

#[test]
fn images_without_the_guest_protocol_run_in_serial_mode() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake(&w, &fixtures, &sci, "vmserial");
    let marker = channel_marker(&w);
    assert!(
        marker.is_file(),
        "pull marks an image whose init speaks the protocol"
    );
    // As if the image had the original guest init: the console is the caller's.
    std::fs::remove_file(&marker).unwrap();
    let run = w.app(
        &app,
        &["-c", "echo serial works; echo it\\'s $0", "a b"],
        None,
    );
    run.success();
    assert!(
        run.stdout().contains("serial works") && run.stdout().contains("it's a b"),
        "{run}"
    );
    let quote = w.app(&app, &["-c", "echo \"x\""], None);
    quote.expect_code(125);
    assert!(quote.stderr().contains("serial mode"), "{quote}");
    let resume = vm_flake_with(&w, &fixtures, &sci, "vmserial2", &["--resume"], "");
    let refused = w.app(&resume, &["-c", "true"], None);
    refused.expect_code(125);
    assert!(refused.stderr().contains("guest init"), "{refused}");
}

#[test]
fn concurrent_one_shot_calls_of_one_flake_get_their_own_vms() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmpar",
        &["--overlay-size", "16MiB"],
        "",
    );
    let scripts: Vec<String> = (0..2)
        .map(|i| format!("echo {i} > /tmp/who; sleep 1; cat /tmp/who"))
        .collect();
    for (i, stdout) in parallel_calls(&w, &app, &scripts).iter().enumerate() {
        assert_eq!(stdout, &format!("{i}\n"), "own overlay");
    }
    let left: Vec<_> = std::fs::read_dir(w.path("ids/0/.vm")).unwrap().collect();
    assert!(left.is_empty(), "both instances removed: {left:?}");
}

/// The file in which `pull` records what the test image's guest init speaks.
/// The saved VM states of flake `name` in the world's user.
fn states_of(w: &World, name: &str) -> Vec<std::path::PathBuf> {
    let dir = w.home.join(".config/flakes/firecracker/states");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut states: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            file.starts_with(&format!("{name}-")) && file.ends_with(".vmstate")
        })
        .collect();
    states.sort();
    states
}

/// What a guest tells of itself: a mark left by an earlier call, an include, its clock
/// against the host's, random bytes and its boot id.
const SELF_REPORT: &str = "test -e /tmp/mark && echo stale; echo x > /tmp/mark; \
    cat /usr/share/note; date +%s; head -c 16 /dev/urandom | od -An -tx1; \
    cat /proc/sys/kernel/random/boot_id";

/// A call of `app` with `%progress` (which says whether it booted or restored the VM).
fn progress_call(w: &World, app: &std::path::Path, env: &[(&str, &str)]) -> util::Run {
    let mut cmd = w.command(app);
    cmd.args(["-c", SELF_REPORT, "%progress"]);
    for (key, value) in env {
        cmd.env(key, value);
    }
    util::Run::from_command(cmd)
}

fn host_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn one_shot_vms_start_from_a_saved_state_with_their_own_clock_entropy_and_overlay() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    if !util::vm::default_channels_only("saved states") {
        return;
    }
    let app = vm_flake_with_includes(&w, &fixtures, &sci, "vmsaved", &[], "32MiB");

    let first = progress_call(&w, &app, &[]);
    first.success();
    assert!(first.stderr().contains("starting the VM"), "{first}");
    let states = states_of(&w, "vmsaved");
    assert_eq!(states.len(), 1, "the first launch saved its VM: {states:?}");
    let dir_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(states[0].parent().unwrap())
            .unwrap()
            .permissions(),
    );
    assert_eq!(dir_mode & 0o777, 0o700, "a state holds guest memory");

    let mut reports = Vec::new();
    for _ in 0..2 {
        let before = host_seconds();
        let run = progress_call(&w, &app, &[]);
        run.success();
        assert!(run.stderr().contains("restoring the VM"), "{run}");
        assert!(
            run.elapsed < first.elapsed,
            "a restored VM is quicker than a boot: {:?} against {:?}",
            run.elapsed,
            first.elapsed
        );
        let out = run.stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{run}");
        assert_eq!(lines[0], "from an include tar", "a fresh overlay: {run}");
        let guest: u64 = lines[1].parse().unwrap();
        assert!(
            (before.saturating_sub(1)..=host_seconds() + 1).contains(&guest),
            "the guest clock is the host's ({guest} against {before}): {run}"
        );
        reports.push((lines[2].to_string(), lines[3].to_string()));
    }
    assert_ne!(
        reports[0].0, reports[1].0,
        "restored VMs draw their own random bytes"
    );
    assert_ne!(reports[0].1, reports[1].1, "and have their own boot ids");

    // Each restored VM mounts its own overlay, made with the includes of its launch (here a
    // file that grew to other blocks than the saved VM's overlay had).
    let conf = w.path("incl/etc/app/conf");
    std::fs::write(&conf, "y".repeat(300_000)).unwrap();
    let script = format!("wc -c < {}", conf.display());
    let grown = w.app(&app, &["-c", &script, "%progress"], None);
    grown.success();
    assert!(grown.stderr().contains("restoring the VM"), "{grown}");
    assert_eq!(grown.stdout().trim(), "300000", "{grown}");

    // Another VM (more memory) finds no state: it boots, and its state replaces the old.
    let fragment = w.home.join(".config/flakes/vmsaved.d/zz-memory.yaml");
    std::fs::write(
        &fragment,
        "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 320\n",
    )
    .unwrap();
    let changed = progress_call(&w, &app, &[]);
    changed.success();
    assert!(changed.stderr().contains("starting the VM"), "{changed}");
    let replaced = states_of(&w, "vmsaved");
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced, states, "a new key");

    // A state the VMM refuses costs a boot, not the call; that VM then boots without
    // saving (a mark beside the states says so) until the mark goes.
    std::fs::write(&replaced[0], b"not a VM state").unwrap();
    let refused = progress_call(&w, &app, &[]);
    refused.success();
    assert!(
        refused.stdout().starts_with("from an include tar\n"),
        "{refused}"
    );
    assert!(refused.stderr().contains("was not restored"), "{refused}");
    assert!(refused.stderr().contains("starting the VM"), "{refused}");
    let mark = replaced[0].with_extension("refused");
    assert!(mark.exists() && !replaced[0].exists());
    let again = progress_call(&w, &app, &[]);
    again.success();
    assert!(again.stderr().contains("starting the VM"), "{again}");
    assert!(states_of(&w, "vmsaved").is_empty(), "not saved again");
    std::fs::remove_file(&mark).unwrap();
    progress_call(&w, &app, &[]).success();
    let resaved = states_of(&w, "vmsaved");
    assert_eq!(resaved, replaced, "saved again once the mark is gone");
    let file_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&resaved[0]).unwrap().permissions(),
    );
    assert_eq!(file_mode & 0o777, 0o600);
    let restored = progress_call(&w, &app, &[]);
    restored.success();
    assert!(restored.stderr().contains("restoring the VM"), "{restored}");

    // Turned off: a boot every time, nothing saved.
    let off = [("FLAKE_VM_SAVED_STATES", "off")];
    std::fs::remove_file(&resaved[0]).unwrap();
    let booted = progress_call(&w, &app, &off);
    booted.success();
    assert!(booted.stderr().contains("starting the VM"), "{booted}");
    assert!(states_of(&w, "vmsaved").is_empty());

    // Removing the flake removes its states.
    progress_call(&w, &app, &[]).success();
    assert_eq!(states_of(&w, "vmsaved").len(), 1);
    w.ctl(&[
        "firecracker",
        "remove",
        "--user",
        "--app",
        app.to_str().unwrap(),
    ])
    .success();
    assert!(states_of(&w, "vmsaved").is_empty());
}

fn channel_marker(w: &World) -> std::path::PathBuf {
    w.home
        .join(".config/flakes/firecracker/images/guest/guest-channel")
}

/// The channel the guest init was told to use, as the app in the guest sees it.
const CHANNEL_SCRIPT: &str = "read -r line < /proc/cmdline; case \"$line\" in \
    *sci_channel=console*) echo console;; *sci_channel=virtio*) echo ports;; \
    *sci_channel=vsock*) echo vsock;; esac";

#[test]
fn one_shot_calls_use_the_plain_console_when_the_init_knows_it_and_ports_otherwise() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    if !util::vm::default_channels_only("the automatic channel choice") {
        return;
    }
    let app = vm_flake(&w, &fixtures, &sci, "vmchan");
    let marker = channel_marker(&w);
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap(),
        "console-acks\nresync\nvsock-announce\n"
    );
    let console = w.app(&app, &["-c", CHANNEL_SCRIPT], None);
    console.success();
    assert_eq!(console.stdout(), "console\n");
    // Large input and output in both directions, byte for byte, over the console.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let echoed = w.app(&app, &["-c", "cat; echo done >&2; exit 7"], Some(&data));
    echoed.expect_code(7);
    assert!(
        echoed.output.stdout == data,
        "{} bytes back",
        echoed.output.stdout.len()
    );
    assert_eq!(echoed.stderr(), "done\n");

    // A caller that reads slowly loses nothing: the console drops what its socket cannot
    // take, so the guest stays within what the launcher acknowledged.
    let slow = w
        .command("sh")
        .arg("-c")
        .arg(format!(
            "{} -c 'head -c 4000000 /dev/zero; echo end >&2' | (sleep 3; wc -c)",
            app.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&slow.stdout).trim(),
        "4000000",
        "{slow:?}"
    );
    assert_eq!(String::from_utf8_lossy(&slow.stderr), "end\n", "{slow:?}");
    // Many small frames (a line each) against a stalled reader: each is a write of its
    // own on the host socket, which the window accounts for.
    let lines = w
        .command("sh")
        .arg("-c")
        .arg(format!(
            "{} -c 'i=0; while [ $i -lt 20000 ]; do echo line $i; echo e >&2; i=$((i+1)); done' 2>/dev/null | (sleep 3; wc -l)",
            app.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&lines.stdout).trim(),
        "20000",
        "{lines:?}"
    );

    // An image pulled with an init that predates `Resync` boots every one-shot VM.
    let saved = states_of(&w, "vmchan");
    assert_eq!(saved.len(), 1, "{saved:?}");
    std::fs::remove_file(&saved[0]).unwrap();
    std::fs::write(&marker, "console-acks\n").unwrap();
    let booted = w.app(&app, &["-c", CHANNEL_SCRIPT], None);
    booted.success();
    assert_eq!(booted.stdout(), "console\n");
    assert!(states_of(&w, "vmchan").is_empty());

    // An image pulled with an init that predates the console (and announcing itself on
    // vsock) goes on using ports.
    std::fs::write(&marker, "").unwrap();
    let ports = w.app(&app, &["-c", CHANNEL_SCRIPT], None);
    ports.success();
    assert_eq!(ports.stdout(), "ports\n");
}

#[test]
fn a_guest_that_never_gets_ready_is_reported_not_waited_for() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake(&w, &fixtures, &sci, "vmnoinit");
    // The kernel runs another init, which ends at once: sci never announces itself.
    let yaml = w.home.join(".config/flakes/vmnoinit.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    assert!(text.contains("init=/usr/sbin/sci"));
    std::fs::write(&yaml, text.replace("init=/usr/sbin/sci", "init=/bin/true")).unwrap();
    let started = std::time::Instant::now();
    let run = w.app(&app, &["-c", "echo never"], None);
    run.expect_code(125);
    assert!(run.stdout().is_empty(), "{run}");
    assert!(
        run.stderr()
            .contains("stopped before its guest init was ready")
            && run.stderr().contains("console.log"),
        "{run}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(vmms_of(&w), 0);
}

/// Runs `app` with a script that traps `signal` (printing `got SIGNAL`, exiting `code`),
/// sends the launcher `signal` once the app is ready, and checks the app saw it. With
/// `endless`, stdin is an input without end that the app never reads (`yes | app`).
/// Writes `y`s into `stdin` until its reader is gone (`yes | app`).
fn feed_endlessly(mut stdin: std::process::ChildStdin) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunk = vec![b'y'; 65536];
        while std::io::Write::write_all(&mut stdin, &chunk).is_ok() {}
    })
}

fn signal_reaches_the_guest_app(w: &World, app: &std::path::Path, signal: &str, endless: bool) {
    let script = format!(
        "trap 'echo got {signal}; exit 9' {signal}; echo ready; sleep 60 >/dev/null 2>&1 & wait"
    );
    let mut child = w
        .command(app)
        .args(["-c", &script])
        .stdin(if endless {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let feeder = child.stdin.take().map(feed_endlessly);
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    if endless {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let started = std::time::Instant::now();
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), format!("got {signal}"));
    assert_eq!(child.wait().unwrap().code(), Some(9));
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    if let Some(feeder) = feeder {
        feeder.join().unwrap();
    }
}

#[test]
fn calls_at_the_moment_a_resume_vm_idles_out_are_made_again_and_served() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmedge",
        &["--resume", "--idle-timeout", "1"],
        "",
    );
    w.app(&app, &["-c", "true"], None).success();
    // Around the idle time, a call meets a VM that runs, one that is deciding to power off
    // (which refuses the call whole: the launcher makes it again on a new VM, with all of
    // its input), or none (the call starts it again). Every call is served.
    for pause in [900, 1000, 1100, 1250, 1400, 1500] {
        std::thread::sleep(std::time::Duration::from_millis(pause));
        let input = format!("input after {pause} ms\n");
        let run = w.app(&app, &["-c", "cat; echo served"], Some(input.as_bytes()));
        run.success();
        assert_eq!(run.stdout(), format!("{input}served\n"), "{run}");
    }
    w.app(&app, &["%remove", "-c", "true"], None).success();
}

#[test]
fn a_resume_vm_that_does_not_answer_is_reported_not_waited_for() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(&w, &fixtures, &sci, "vmfrozen", &["--resume"], "");
    w.app(&app, &["-c", "true"], None).success();
    // A stopped VMM still accepts the call on its port socket, and answers nothing.
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("qemu-system.*{}.*vmfrozen", w.dir.path().display()))
        .output()
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!pid.is_empty() && !pid.contains('\n'), "one VMM: {pid:?}");
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    let started = std::time::Instant::now();
    let run = w.app(&app, &["-c", "echo never"], None);
    let waited = started.elapsed();
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    run.expect_code(125);
    assert!(
        run.stderr().contains("did not answer the call within 60 s"),
        "{run}"
    );
    assert!(run.stdout().is_empty(), "{run}");
    assert!(waited < std::time::Duration::from_secs(75), "{waited:?}");
    // Going again, the VM serves.
    let again = w.app(&app, &["%remove", "-c", "echo back"], None);
    again.success();
    assert_eq!(again.stdout(), "back\n");
}

/// A launcher killed while it sends input (`kill -9`, most likely in the middle of a frame,
/// which QEMU then cuts short) costs the next caller on its port a short wait, not its
/// call.
#[test]
fn a_launcher_killed_while_sending_input_does_not_cost_the_next_call() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(&w, &fixtures, &sci, "vmkilled", &["--resume"], "");
    w.app(&app, &["-c", "true"], None).success();
    for _ in 0..2 {
        let mut child = w
            .command(&app)
            .args(["-c", "echo ready; cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let feeder = feed_endlessly(child.stdin.take().unwrap());
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
        if lines.next().and_then(Result::ok).as_deref() != Some("ready") {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
            panic!("no ready: {:?} {stderr}", child.wait());
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        child.kill().unwrap();
        child.wait().unwrap();
        feeder.join().unwrap();
        let run = w.app(&app, &["-c", "echo served"], None);
        run.success();
        assert_eq!(run.stdout(), "served\n", "{run}");
        assert!(run.elapsed < std::time::Duration::from_secs(20), "{run}");
    }
    w.app(&app, &["%remove", "-c", "true"], None).success();
}

/// Runs `app -c 'while echo y; do :; done'` with stdout on a pipe whose reader takes one
/// line and closes it; returns that line and the launcher's exit code (killed after 60 s).
fn first_line_then_close(w: &World, app: &std::path::Path) -> (String, i32) {
    use std::io::BufRead;
    let mut child = w
        .command(app)
        .args(["-c", "while echo y; do :; done"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher went on after its reader closed stdout");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or(128 + status.signal().unwrap_or(0));
    (line, code)
}

#[test]
fn regression_issue_15_closed_stdout_ends_a_vm_app_like_a_local_program() {
    // `app | head -1`: the app gets the SIGPIPE of a local program (141); the launcher
    // used to drop the output and let the app run on, the one-shot VM with it.
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake(&w, &fixtures, &sci, "vmyes");
    assert_eq!(first_line_then_close(&w, &app), ("y\n".to_string(), 141));
    assert_eq!(vmms_of(&w), 0, "the one-shot VM ends with its app");

    let resume = vm_flake_with(&w, &fixtures, &sci, "vmyesres", &["--resume"], "");
    assert_eq!(first_line_then_close(&w, &resume), ("y\n".to_string(), 141));
    let next = w.app(&resume, &["-c", "echo next"], None);
    next.success();
    assert_eq!(
        next.stdout(),
        "next\n",
        "the resume VM serves the next call"
    );
    w.app(&resume, &["%remove", "-c", "true"], None).success();
}

/// A 25-character flake name with a 63-character `@NAME` (the longest valid) works in
/// VMs too, resumed and one-shot (whose instance directory adds the launcher's pid): the
/// VMM binds its sockets by name in the instance directory, the launcher reaches them
/// through it.
#[test]
fn the_longest_names_work_in_vms() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let instance = format!("@{}", "i".repeat(63));
    let resume = format!("{:x<25}", util::unique("vmlongr"));
    let words = ["--resume", "--overlay-size", "64MiB"];
    let app = vm_flake_with(&w, &fixtures, &sci, &resume, &words, "");
    w.app(&app, &[&instance, "-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &[&instance, "-c", "cat /tmp/state"], None);
    assert_eq!(run.stdout(), "kept\n", "{run}");
    w.app(&app, &[&instance, "%remove", "-c", "true"], None)
        .success();
    let one_shot = format!("{:x<25}", util::unique("vmlongo"));
    let app = vm_flake(&w, &fixtures, &sci, &one_shot);
    for _ in 0..2 {
        let run = w.app(&app, &[&instance, "-c", "echo one-shot; exit 3"], None);
        run.expect_code(3);
        assert_eq!(run.stdout(), "one-shot\n", "{run}");
    }
}

/// Issue 20, item 4: a VM flake registered on the image's entry command (`--target /`)
/// runs what the OCI image it was made from records, as `podman run IMAGE` would: the
/// entrypoint with `Cmd`, or with the call's arguments in place of `Cmd`; the image's
/// `Env` on top of the guest's own (the caller's environment stays out) and its
/// `WorkingDir` as the working directory, as its `User` (a name in the guest's
/// `/etc/passwd`, with that user's home). One-shot and resume, over whichever channel this
/// run uses.
#[test]
fn oci_entry_command_env_and_working_dir_run_in_the_guest() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    // The guest knows the image's user.
    std::fs::create_dir_all(w.path("guest/etc")).unwrap();
    let passwd = "root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678::/home/app:/bin/sh\n";
    std::fs::write(w.path("guest/etc/passwd"), passwd).unwrap();
    // Pulls the fixture image "guest", which then gets the record an OCI pull writes.
    vm_flake(&w, &fixtures, &sci, "ocibase");
    let image = w.home.join(".config/flakes/firecracker/images/guest");
    let script = "echo \"E=$OCI_VAR\"; echo \"L=${OCI_LEAK-unset}\"; pwd; \
                  echo \"U=$(id -u):$(id -g) H=$HOME\"; printf '<%s>' \"$0\" \"$@\"; echo";
    let record = vm_pilot::oci::OciRecord {
        rootfs: vm_pilot::oci::Origin {
            reference: "127.0.0.1:5000/entry:1".into(),
            digest: None,
            image_id: "f".repeat(64),
        },
        kernel: None,
        config: vm_pilot::oci::ImageConfig {
            // Relative: found on the image's PATH.
            entrypoint: vec!["sh".into(), "-c".into(), script.into(), "entry".into()],
            cmd: vec!["default a".into(), "b".into()],
            env: vec!["OCI_VAR=one two=three".into(), "PATH=/usr/sbin:/bin".into()],
            working_dir: Some("/etc".into()),
            user: Some("app".into()),
        },
    };
    vm_pilot::oci::write(&image, &record).unwrap();
    let register = |name: &str, extra: &[&str]| {
        let app = w.bin.join(name);
        let app_s = app.display().to_string();
        let args = [
            "firecracker",
            "--user",
            "register",
            "--vm",
            "guest",
            "--app",
            &app_s,
            "--target",
            "/",
            "--vmm",
            "qemu",
            "--no-net",
        ];
        w.ctl(&[&args[..], extra].concat()).success();
        let fragment = w.home.join(format!(".config/flakes/{name}.d/small.yaml"));
        let small =
            "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n";
        std::fs::write(fragment, small).unwrap();
        app
    };
    let call = |app: &std::path::Path, args: &[&str]| {
        let mut cmd = w.command(app);
        cmd.args(args).env("OCI_LEAK", "from the caller");
        util::Run::from_command(cmd)
    };
    let output =
        |argv: &str| format!("E=one two=three\nL=unset\n/etc\nU=1234:5678 H=/home/app\n{argv}\n");
    let defaults = output("<entry><default a><b>");
    let with_args = output("<entry><x y><-c><@not-an-instance>");
    let args = ["--", "x y", "-c", "@not-an-instance"];

    let one_shot = register("ocione", &[]);
    let run = call(&one_shot, &[]);
    run.success();
    assert_eq!(run.stdout(), defaults, "{run}");
    let run = call(&one_shot, &args);
    run.success();
    assert_eq!(run.stdout(), with_args, "{run}");

    let resume = register("ociresume", &["--resume"]);
    let run = call(&resume, &[]);
    run.success();
    assert_eq!(run.stdout(), defaults, "{run}");
    let pid = running_vm(&w, "ociresume").expect("the resume VM keeps running");
    let run = call(&resume, &args);
    run.success();
    assert_eq!(run.stdout(), with_args, "{run}");
    assert_eq!(
        running_vm(&w, "ociresume"),
        Some(pid),
        "the same VM served it"
    );
    call(&resume, &["%remove"]).success();
}
