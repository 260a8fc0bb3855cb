// SPDX-License-Identifier: MIT
//! Fault injection against the real engines: a launcher killed with `kill -9` at each step
//! of a launch (held there by the `FLAKE_TEST_PAUSE` hook, see `flakes::fault`), a full
//! file system under the state and overlay directories, corrupted state files, and a podman
//! that fails its Nth call. After each fault the next launch must work, nothing may be
//! left behind (containers by label, processes, sockets, lock files, instance
//! directories), and a failed launch says so in one line and exits 125.
//!
//! Needs root and podman (`FLAKE_TEST_REQUIRE_PODMAN=1`), the static agent (`FLAKE_AGENT`),
//! and for the VM cases the VM fixtures and `sci` (`FLAKE_VM_FIXTURES`, `FLAKE_SCI`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::vm::{vm_flake_with, vm_world};
use util::{containers_of, unique, Containers, Run, World};

/// The steps a resume launch meets, as `flakes::fault::Step` names them.
const RESUME_STEPS: [&str; 3] = ["locked", "started", "connected"];

/// Starts `app args` with the pause hook set to `step`, waits until it has stopped there,
/// and kills it with SIGKILL. Panics when the launcher ended without reaching the step.
fn kill_at(w: &World, app: &Path, args: &[&str], step: &str) {
    let mut child = w
        .command(app)
        .args(args)
        .env("FLAKE_TEST_PAUSE", step)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&mut child, step, Duration::from_secs(180));
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_stopped(child: &mut Child, step: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let stat = format!("/proc/{}/stat", child.id());
    loop {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the command name in parentheses.
        let state = text.rsplit_once(") ").map(|(_, rest)| &rest[..1]);
        if state == Some("T") {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err);
            panic!("the launcher ended ({status}) before step {step}: {err}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher never reached step {step}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `app args` (which prints a line and then sleeps), waits for the line, and kills
/// the launcher in the middle of the call.
fn kill_mid_call(w: &World, app: &Path, args: &[&str]) {
    let mut child = w
        .command(app)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "started\n");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Host processes whose command line contains `needle` (other than pgrep itself).
fn processes(needle: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", "--", needle])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits up to `limit` for `check` to hold, then asserts it with `what`.
fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            None => return,
            Some(found) if Instant::now() > deadline => panic!("{what}: {found}"),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Every file below `dir` that is not a directory (sockets, locks, pid files, records).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            out.extend(files_below(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The world's instance state directory (`podman_ids_dir` and `firecracker_ids_dir`).
fn ids(w: &World) -> PathBuf {
    w.path("ids")
}

/// Asserts that nothing of flake `name` is left in `w`: no container, no process of the
/// world, no file in its state directories.
fn assert_clean(w: &World, name: &str) {
    eventually(Duration::from_secs(30), "containers left", || {
        let left = containers_of(name);
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
    eventually(Duration::from_secs(30), "processes left", || {
        let left = processes(&w.dir.path().display().to_string());
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
    let left: Vec<PathBuf> = files_below(&ids(w))
        .into_iter()
        .filter(|p| !p.components().any(|c| c.as_os_str() == ".cache"))
        .collect();
    assert!(left.is_empty(), "state files left: {left:?}");
}

/// Asserts a failed launch: exit 125 and exactly one line on stderr (the launcher's, or
/// the engine's own when the engine it was replaced with failed).
fn assert_one_line_failure(run: &Run) {
    run.expect_code(125);
    let err = run.stderr();
    assert_eq!(err.lines().count(), 1, "one line: {run}");
    eprintln!("failed as expected: {}", err.trim());
}

fn resume_ready() -> bool {
    util::podman_ready() && util::agent_ready()
}

#[test]
fn a_resume_launcher_killed_at_any_step_does_not_block_the_next_call() {
    if !resume_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-resume");
    let (app, _guard) = w.register_resume(&name);
    for step in RESUME_STEPS {
        kill_at(&w, &app, &["-c", "echo one"], step);
        let next = w.app(&app, &["-c", "echo after $0"], None);
        next.success();
        assert_eq!(next.stdout(), "after /bin/sh\n", "after {step}: {next}");
        assert_eq!(next.stderr(), "", "after {step}: {next}");
        assert_eq!(containers_of(&name).len(), 1, "one instance after {step}");
        // The instance is removed between steps, so each kill meets a cold start.
        w.app(&app, &["%remove", "-c", "true"], None).success();
        assert_clean(&w, &name);
    }

    // Mid-call: the app is ended with its caller (no orphan keeps running), the
    // instance keeps serving.
    kill_mid_call(&w, &app, &["-c", "echo started; exec sleep 3127"]);
    eventually(Duration::from_secs(20), "app left running", || {
        let left = processes("sleep 3127");
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
    let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    assert_clean(&w, &name);
}

#[test]
fn a_one_shot_launcher_killed_before_or_during_the_call_leaves_nothing() {
    if !util::podman_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-oneshot");
    let _guard = Containers(name.clone());
    let app = w.register(&name, "/bin/sh", &[r"\--network none"]);
    kill_at(&w, &app, &["-c", "echo one"], "exec");
    assert_clean(&w, &name);
    // The launcher is podman by then: killing it is killing `podman run --rm`, whose
    // container ends with the app and is removed.
    kill_mid_call(&w, &app, &["-c", "echo started; sleep 2"]);
    let next = w.app(&app, &["-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    assert_clean(&w, &name);
}

/// A small tmpfs mounted at `at` for one test, filled to the last block and inode.
struct FullDisk(PathBuf);

impl FullDisk {
    fn mount(at: &Path) -> Self {
        let disk = FullDisk::mount_empty(at);
        disk.fill();
        disk
    }

    /// Mounted, not yet filled.
    fn mount_empty(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                "size=512k,nr_inodes=64,mode=1777",
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "cannot mount a tmpfs at {}",
            at.display()
        );
        FullDisk(at.to_path_buf())
    }

    fn fill(&self) {
        let blocks = self.0.join("fill");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4k"])
            .arg(format!("of={}", blocks.display()))
            .stderr(Stdio::null())
            .status();
        for i in 0.. {
            if std::fs::File::create(self.0.join(format!("i{i}"))).is_err() {
                break;
            }
        }
    }

    fn free(&self) {
        for entry in std::fs::read_dir(&self.0).unwrap().filter_map(Result::ok) {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "fill" || name.starts_with('i') && name[1..].parse::<u32>().is_ok() {
                std::fs::remove_file(entry.path()).unwrap();
            }
        }
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_disk_fails_in_one_line_and_the_next_launch_works() {
    if !resume_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-full");
    let (app, _guard) = w.register_resume(&name);
    let layered_name = unique("fk-full-layer");
    let _layered_guard = Containers(layered_name.clone());
    let (layered_app, image) = layered(&w, &layered_name);
    let _images = Images(image, layered_name.clone());
    let included = w.path("incl/etc/included").display().to_string();
    let disk = FullDisk::mount(&ids(&w));
    // A resume instance's state, and the record of an assembled image.
    for (app, args) in [
        (&app, vec!["-c", "echo one"]),
        (&layered_app, vec!["/etc/delta", included.as_str()]),
    ] {
        let run = w.app(app, &args, None);
        assert_one_line_failure(&run);
    }
    disk.free();
    let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    let next = w.app(&layered_app, &["/etc/delta", included.as_str()], None);
    next.success();
    assert_eq!(next.stdout(), "from the delta\nincluded\n", "{next}");
    assert_clean(&w, &name);
    assert_clean(&w, &layered_name);
    drop(disk);

    // The state exists and the disk fills later: the instance was removed behind the
    // launcher's back, and its agent cannot make its socket.
    let disk = FullDisk::mount_empty(&ids(&w));
    w.app(&app, &["-c", "true"], None).success();
    let running = containers_of(&name);
    assert_eq!(running.len(), 1, "the instance runs");
    for id in running {
        Command::new("podman")
            .args(["rm", "-f", "-t", "0", &id])
            .output()
            .unwrap();
    }
    assert!(containers_of(&name).is_empty());
    disk.fill();
    // Nothing new may be needed (the old socket's inode is reused): then it just works.
    let run = w.app(&app, &["-c", "echo one"], None);
    eprintln!("after a late fill: {run}");
    match run.code() {
        0 => assert_eq!(run.stdout(), "one\n", "{run}"),
        _ => assert_one_line_failure(&run),
    }
    disk.free();
    let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    assert_clean(&w, &name);
}

/// Overwrites every file below `dir` whose name satisfies `pick` with garbage, or
/// truncates it; returns how many.
fn corrupt(dir: &Path, pick: impl Fn(&str) -> bool, truncate: bool) -> usize {
    let mut count = 0;
    for path in files_below(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !path.is_file() || !pick(&name) {
            continue;
        }
        let text = if truncate {
            let old = std::fs::read(&path).unwrap();
            old[..old.len() / 2].to_vec()
        } else {
            b"\x00\xffnot what was written\n{[".to_vec()
        };
        std::fs::write(&path, text).unwrap();
        count += 1;
    }
    count
}

#[test]
fn a_corrupted_resume_state_does_not_block_the_next_call() {
    if !resume_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-state");
    let (app, _guard) = w.register_resume(&name);
    for truncate in [true, false] {
        w.app(&app, &["-c", "true"], None).success();
        let hit = corrupt(&ids(&w), |_| true, truncate);
        assert!(hit > 0, "no state file to corrupt: {:?}", w.tree());
        let next = w.app(&app, &["-c", "echo fine"], None);
        next.success();
        assert_eq!(next.stdout(), "fine\n", "{next}");
    }
    w.app(&app, &["%remove", "-c", "true"], None).success();
    assert_clean(&w, &name);
}

/// A `podman` first on PATH that counts its calls in `count` and fails call `fail`.
fn failing_podman(w: &World, fail: u32) -> PathBuf {
    let dir = w.path("wrap");
    std::fs::create_dir_all(&dir).unwrap();
    let count = w.path("podman-calls");
    std::fs::write(&count, "0").unwrap();
    let real = Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let script = format!(
        "#!/bin/sh\nn=$(( $(cat {c}) + 1 ))\necho $n > {c}\n\
         if [ $n -eq {fail} ]; then echo \"Error: injected failure of call $n\" >&2; exit 125; fi\n\
         exec {real} \"$@\"\n",
        c = count.display()
    );
    let path = dir.join("podman");
    std::fs::write(&path, script).unwrap();
    let exe = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&path, exe).unwrap();
    dir
}

/// Runs `app args` with the failing podman of `wrap` first on PATH.
fn with_wrapper(w: &World, wrap: &Path, app: &Path, args: &[&str]) -> Run {
    let mut cmd = w.command(app);
    let path = format!("{}:{}", wrap.display(), std::env::var("PATH").unwrap());
    cmd.args(args).env("PATH", path);
    Run::from_command(cmd)
}

fn calls(w: &World) -> u32 {
    std::fs::read_to_string(w.path("podman-calls"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_podman_failing_its_nth_call_of_a_resume_cold_start_fails_cleanly() {
    if !resume_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-nth");
    let (app, _guard) = w.register_resume(&name);
    for n in 1.. {
        let wrap = failing_podman(&w, n);
        // With `%remove` the call also removes the instance: one more engine call.
        let run = with_wrapper(&w, &wrap, &app, &["%remove", "-c", "echo one"]);
        let made = calls(&w);
        eprintln!(
            "failing call {n} of {made}: {} {}",
            run.code(),
            run.stderr().trim()
        );
        if n > made {
            // The launch made fewer than n engine calls: every one has failed once.
            run.success();
            w.app(&app, &["%remove", "-c", "true"], None).success();
            assert!(n > 1, "a cold start calls podman");
            break;
        }
        // A failed call may be made good (a leftover container removed and the run made
        // again); otherwise the launch fails in one line.
        match run.code() {
            0 => {
                assert_eq!(run.stdout(), "one\n", "{run}");
                let left = containers_of(&name);
                assert!(left.is_empty(), "removal said done, {left:?} runs: {run}");
            }
            _ => assert_one_line_failure(&run),
        }
        let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
        next.success();
        assert_eq!(next.stdout(), "fine\n", "after failing call {n}: {next}");
        assert_clean(&w, &name);
    }
}

/// Registers a layered flake: a delta image on the test image, with an include.
fn layered(w: &World, name: &str) -> (PathBuf, String) {
    let tree = w.path("delta");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/delta"), "from the delta\n").unwrap();
    let image = format!("localhost/{name}-delta:1");
    let made = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C {} -cf - . | podman import -q - {image} >/dev/null",
            tree.display()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let incl = w.path("incl/etc");
    std::fs::create_dir_all(&incl).unwrap();
    std::fs::write(incl.join("included"), "included\n").unwrap();
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    let incl_s = w.path("incl").display().to_string();
    let args = [
        "podman",
        "register",
        "--app",
        &app_s,
        "--container",
        &image,
        "--base",
        util::IMAGE,
        "--target",
        "/bin/cat",
        "--include-path",
        &incl_s,
        "--opt",
        r"\--network none",
    ];
    w.ctl(&args).success();
    (app, image)
}

/// Removes the test's images (and what was assembled from them) when dropped.
struct Images(String, String);

impl Drop for Images {
    fn drop(&mut self) {
        let filter = format!("label=io.flake-pilot.assembled={}", self.1);
        let out = Command::new("podman")
            .args(["images", "-q", "--filter", &filter])
            .output()
            .unwrap();
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("podman").args(["rmi", "-f", id]).output();
        }
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn a_podman_failing_its_nth_call_of_a_layered_assembly_fails_cleanly() {
    if !util::podman_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-layer");
    let _guard = Containers(name.clone());
    let (app, image) = layered(&w, &name);
    let _images = Images(image.clone(), name.clone());
    // An included path lands at the same path in the image.
    let included = w.path("incl/etc/included").display().to_string();
    let args = ["/etc/delta", included.as_str()];
    for n in 1.. {
        // Each round assembles afresh: the include changes, so the cached image is stale.
        std::fs::write(w.path("incl/etc/included"), format!("included {n}\n")).unwrap();
        let wrap = failing_podman(&w, n);
        let run = with_wrapper(&w, &wrap, &app, &args);
        let made = calls(&w);
        eprintln!(
            "failing call {n} of {made}: {} {}",
            run.code(),
            run.stderr().trim()
        );
        if n > made {
            run.success();
            assert!(n > 2, "an assembly calls podman more than twice");
            break;
        }
        // A failed call may not matter (removing the image the record named before):
        // then the launch is right; otherwise it fails in one line.
        let want = format!("from the delta\nincluded {n}\n");
        match run.code() {
            0 => assert_eq!(run.stdout(), want, "{run}"),
            _ => assert_one_line_failure(&run),
        }
        let next = w.app(&app, &args, None);
        next.success();
        assert_eq!(next.stdout(), want, "after failing call {n}: {next}");
        assert_clean(&w, &name);
        // The containers an assembly creates to read the image lists go too, even when
        // the failing call was their removal (the next assembly replaces them).
        let scratch = Command::new("podman")
            .args(["ps", "-a", "--format", "{{.Names}} {{.Image}}"])
            .args(["--filter", &format!("ancestor={image}")])
            .output()
            .unwrap();
        let scratch = String::from_utf8_lossy(&scratch.stdout);
        assert_eq!(
            scratch.trim(),
            "",
            "containers of {image} left after call {n}"
        );
        let staging: Vec<PathBuf> = files_below(&std::env::temp_dir())
            .into_iter()
            .filter(|p| !p.starts_with(w.dir.path()))
            .filter(|p| p.display().to_string().contains(name.as_str()))
            .collect();
        assert!(staging.is_empty(), "staging left: {staging:?}");
    }
}

/// The VM steps, with the instance kinds they apply to.
#[test]
fn vm_launchers_killed_at_any_step_do_not_block_the_next_call() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let resume = vm_flake_with(&w, &fixtures, &sci, "fkvmr", &["--resume"], "");
    let oneshot = vm_flake_with(&w, &fixtures, &sci, "fkvmo", &[], "");
    for step in RESUME_STEPS {
        for app in [&resume, &oneshot] {
            kill_at(&w, app, &["-c", "echo one"], step);
            if app == &oneshot {
                // Its VMM ends with it; the next launch collects what it left.
                no_processes_like(".vm/fkvmo#");
            }
            let next = w.app(app, &["-c", "echo after"], None);
            next.success();
            assert_eq!(next.stdout(), "after\n", "after {step}: {next}");
            assert_eq!(next.stderr(), "", "after {step}: {next}");
        }
        w.app(&resume, &["%remove", "-c", "true"], None).success();
        assert_vm_clean(&w);
    }
    kill_mid_call(&w, &resume, &["-c", "echo started; exec sleep 3127"]);
    kill_mid_call(&w, &oneshot, &["-c", "echo started; exec sleep 3127"]);
    no_processes_like(".vm/fkvmo#");
    // The resume guest ended the call's app with its caller.
    let procs = "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null; echo; done";
    let next = w.app(&resume, &["-c", procs], None);
    next.success();
    assert!(!next.stdout().contains("3127"), "app left running: {next}");
    let next = w.app(&oneshot, &["-c", "echo fine"], None);
    assert_eq!(next.stdout(), "fine\n", "{next}");
    w.app(&resume, &["%remove", "-c", "true"], None).success();
    assert_vm_clean(&w);
}

/// Waits until no process whose command line contains `needle` runs (a VMM killed with
/// its launcher may take a moment to end).
fn no_processes_like(needle: &str) {
    eventually(Duration::from_secs(30), "processes left", || {
        let left = processes(needle);
        (!left.is_empty()).then(|| format!("{left:?}"))
    });
}

/// No VMM, helper or launcher of the world runs, and no VM instance state is left.
fn assert_vm_clean(w: &World) {
    no_processes_like(&w.dir.path().display().to_string());
    // Each launch collects what killed one-shot launchers left; the next one does here.
    let left = files_below(&ids(w));
    assert!(left.is_empty(), "VM state left: {left:?}");
}

#[test]
fn a_full_overlay_disk_fails_a_vm_in_one_line_and_the_next_launch_works() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let app = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "fkvmfull",
        &["--resume", "--overlay-size", "64M"],
        "",
    );
    // A one-shot VM whose state cannot be saved still runs, and says nothing of it.
    let oneshot = vm_flake_with(&w, &fixtures, &sci, "fkvmfullo", &[], "");
    let disk = FullDisk::mount(&w.home.join(".config/flakes/firecracker/states"));
    for _ in 0..2 {
        let run = w.app(&oneshot, &["-c", "echo fine"], None);
        run.success();
        assert_eq!(
            (run.stdout().as_str(), run.stderr().as_str()),
            ("fine\n", ""),
            "{run}"
        );
    }
    drop(disk);
    let storage = w.home.join(".config/flakes/firecracker/storage");
    let disk = FullDisk::mount(&storage);
    let run = w.app(&app, &["-c", "echo one"], None);
    assert_one_line_failure(&run);
    disk.free();
    let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    drop(disk);
    let disk = FullDisk::mount(&ids(&w));
    let run = w.app(&app, &["-c", "echo one"], None);
    assert_one_line_failure(&run);
    disk.free();
    let next = w.app(&app, &["%remove", "-c", "echo fine"], None);
    next.success();
    assert_eq!(next.stdout(), "fine\n", "{next}");
    assert_vm_clean(&w);
}

#[test]
fn corrupted_vm_state_files_do_not_block_the_next_launch() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let resume = vm_flake_with(&w, &fixtures, &sci, "fkvmc", &["--resume"], "");
    let oneshot = vm_flake_with(&w, &fixtures, &sci, "fkvmco", &[], "");
    let states = w.home.join(".config/flakes/firecracker/states");
    for truncate in [true, false] {
        w.app(&resume, &["-c", "true"], None).success();
        w.app(&oneshot, &["-c", "true"], None).success();
        let hit = corrupt(&ids(&w), |n| !n.ends_with(".sock"), truncate)
            + corrupt(&states, |_| true, truncate);
        assert!(hit > 0, "no state file to corrupt: {:?}", w.tree());
        for app in [&resume, &oneshot] {
            let next = w.app(app, &["-c", "echo fine"], None);
            next.success();
            assert_eq!(next.stdout(), "fine\n", "{next}");
        }
    }
    w.app(&resume, &["%remove", "-c", "true"], None).success();
    assert_vm_clean(&w);
}

#[test]
fn a_full_image_disk_fails_a_vm_image_pull_in_one_line_and_leaves_nothing() {
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    // A pulled image to pull again, from its files.
    let app = vm_flake_with(&w, &fixtures, &sci, "fkvmimg", &[], "");
    let images = w.home.join(".config/flakes/firecracker/images");
    let rootfs = w.path("guest.ext4").display().to_string();
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let pull = [
        "firecracker",
        "--user",
        "pull",
        "--name",
        "guest2",
        "--rootfs",
        &rootfs,
        "--kernel",
        &kernel,
    ];
    let disk = FullDisk::mount(&images);
    let run = w.ctl(&pull);
    assert_ne!(run.code(), 0, "{run}");
    assert_eq!(run.stderr().lines().count(), 1, "one line: {run}");
    disk.free();
    let left: Vec<_> = std::fs::read_dir(&images).unwrap().collect();
    assert!(left.is_empty(), "a failed pull leaves nothing: {left:?}");
    // The image does not fit the small file system even when empty: the real one.
    drop(disk);
    w.ctl(&pull).success();
    let run = w.app(&app, &["-c", "echo fine"], None);
    assert_eq!(run.stdout(), "fine\n", "{run}");
}

/// A `podman` first on PATH that stops its caller (the launcher) when called to `build`,
/// then builds: the launcher is held in the middle of assembling an image.
fn stopping_podman(w: &World) -> PathBuf {
    let dir = w.path("stop");
    std::fs::create_dir_all(&dir).unwrap();
    let real = Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .unwrap();
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = build ]; then kill -STOP $PPID; fi\nexec {real} \"$@\"\n"
    );
    let path = dir.join("podman");
    std::fs::write(&path, script).unwrap();
    let exe = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&path, exe).unwrap();
    dir
}

#[test]
fn a_launcher_killed_while_assembling_leaves_no_staging_behind() {
    if !util::podman_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-asm");
    let _guard = Containers(name.clone());
    let (app, image) = layered(&w, &name);
    let _images = Images(image, name.clone());
    let included = w.path("incl/etc/included").display().to_string();
    let args = ["/etc/delta", included.as_str()];
    let wrap = stopping_podman(&w);
    let mut child = w
        .command(&app)
        .args(args)
        .env(
            "PATH",
            format!("{}:{}", wrap.display(), std::env::var("PATH").unwrap()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(&mut child, "build", Duration::from_secs(120));
    child.kill().unwrap();
    child.wait().unwrap();
    // The include changes, so the next launch assembles again.
    std::fs::write(w.path("incl/etc/included"), "changed\n").unwrap();
    let next = w.app(&app, &args, None);
    next.success();
    assert_eq!(next.stdout(), "from the delta\nchanged\n", "{next}");
    let staged: Vec<PathBuf> = files_below(&ids(&w))
        .into_iter()
        .filter(|p| !p.extension().is_some_and(|e| e == "record" || e == "lock"))
        .collect();
    assert!(
        staged.is_empty(),
        "staging of the killed launcher left: {staged:?}"
    );
}

#[test]
fn a_corrupted_assembly_record_does_not_block_the_next_launch() {
    if !util::podman_ready() {
        return;
    }
    let w = World::new();
    let name = unique("fk-rec");
    let _guard = Containers(name.clone());
    let (app, image) = layered(&w, &name);
    let _images = Images(image, name.clone());
    let included = w.path("incl/etc/included").display().to_string();
    let args = ["/etc/delta", included.as_str()];
    for truncate in [true, false] {
        w.app(&app, &args, None).success();
        let hit = corrupt(&ids(&w), |n| n.ends_with(".record"), truncate);
        assert_eq!(hit, 1, "one record: {:?}", w.tree());
        let next = w.app(&app, &args, None);
        next.success();
        assert_eq!(next.stdout(), "from the delta\nincluded\n", "{next}");
        assert_eq!(next.stderr(), "", "{next}");
    }
    assert_clean(&w, &name);
}
