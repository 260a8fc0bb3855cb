// SPDX-License-Identifier: MIT
//! Resume and attach flakes against real podman: shared state, warm calls through the agent,
//! crash safety and concurrency.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{containers_of, unique, World};

#[test]
fn calls_share_one_instance_and_instances_are_separate() {
    require_resume!();
    let w = World::new();
    let name = unique("shared");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &["-c", "cat /tmp/state"], None);
    run.success();
    assert_eq!(run.stdout(), "kept\n", "{run}");
    w.app(&app, &["@one", "-c", "echo one > /tmp/state"], None)
        .success();
    let two = w.app(
        &app,
        &["@two", "-c", "cat /tmp/state 2>/dev/null || echo none"],
        None,
    );
    assert_eq!(two.stdout(), "none\n", "{two}");
    let one = w.app(&app, &["@one", "-c", "cat /tmp/state"], None);
    assert_eq!(one.stdout(), "one\n", "{one}");
    assert_eq!(containers_of(&name).len(), 3, "default, @one and @two");
}

#[test]
fn warm_path_carries_exit_status_streams_and_stdin() {
    require_resume!();
    let w = World::new();
    let (app, _guard) = w.register_resume(&unique("warm"));
    w.app(&app, &["-c", "true"], None).success();
    w.app(&app, &["-c", "exit 9"], None).expect_code(9);
    w.app(&app, &["-c", "kill -TERM $$"], None).expect_code(143);
    let run = w.app(&app, &["-c", "echo out; echo err >&2"], None);
    assert_eq!(
        (run.stdout().as_str(), run.stderr().as_str()),
        ("out\n", "err\n"),
        "{run}"
    );
    let data: Vec<u8> = (0..50_000)
        .map(|i| format!("{i}\n"))
        .collect::<String>()
        .into_bytes();
    let piped = w.app(&app, &["-c", "cat"], Some(&data));
    assert_eq!(piped.output.stdout, data, "{piped}");
    let file = w.path("in.txt");
    std::fs::write(&file, "from file\n").unwrap();
    let out = w
        .command(&app)
        .args(["-c", "cat"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"from file\n");
    // The warm call goes through the agent only: no engine process, milliseconds.
    let warm = w.app(&app, &["-c", "true"], None);
    assert!(
        warm.elapsed < Duration::from_millis(150),
        "warm call took {:?}",
        warm.elapsed
    );
}

#[test]
fn concurrent_first_calls_create_exactly_one_container() {
    require_resume!();
    let w = World::new();
    let name = unique("race");
    let (app, _guard) = w.register_resume(&name);
    let children: Vec<_> = (0..8)
        .map(|i| {
            w.command(&app)
                .args(["-c", &format!("echo call {i}")])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "call {i}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("call {i}\n"));
    }
    assert_eq!(containers_of(&name).len(), 1);
}

#[test]
fn killed_pilot_and_removed_container_do_not_block_the_next_call() {
    require_resume!();
    let w = World::new();
    let name = unique("crash");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "true"], None).success();
    let mut child = w
        .command(&app)
        .args(["-c", "sleep 30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    w.app(&app, &["-c", "echo again"], None).success();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    for id in containers_of(&name) {
        std::process::Command::new("podman")
            .args(["rm", "-f", "-t", "0", &id])
            .output()
            .unwrap();
    }
    let show = w.ctl(&["podman", "show", "--format", "csv"]);
    let row = show
        .stdout()
        .lines()
        .find(|l| l.starts_with(&format!("{name},")))
        .map(str::to_string);
    assert!(
        row.as_deref().is_some_and(|r| r.contains(",stale,")),
        "{show}"
    );
    let run = w.app(&app, &["-c", "echo recreated"], None);
    run.success();
    assert_eq!(run.stdout(), "recreated\n", "{run}");
    assert_eq!(containers_of(&name).len(), 1);
}

#[test]
fn remove_option_and_show() {
    require_resume!();
    let w = World::new();
    let name = unique("shown");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["@x", "-c", "true"], None).success();
    let show = w.ctl(&["podman", "show", "--format", "json"]);
    show.success();
    let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == format!("{name}@x"))
        .unwrap();
    assert_eq!(row["status"], "running", "{show}");
    assert_eq!(row["image"], util::IMAGE);
    w.app(&app, &["@x", "%remove", "-c", "true"], None)
        .success();
    assert!(containers_of(&name).is_empty());
    let show = w.ctl(&["podman", "show", "--format", "json"]);
    assert!(!show.stdout().contains(&format!("{name}@x")), "{show}");

    // Removing the flake takes its instances and their state with it.
    w.app(&app, &["@y", "-c", "true"], None).success();
    assert_eq!(containers_of(&name).len(), 1);
    w.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    assert!(containers_of(&name).is_empty());
    let state = w.path("ids/0");
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn terminal_calls_get_a_pty_and_ctrl_c_reaches_the_app_only() {
    require_resume!();
    let w = World::new();
    let (app, _guard) = w.register_resume(&unique("tty"));
    w.app(&app, &["-c", "true"], None).success();
    // python's pty module gives the launcher a real terminal; ^C is typed into it.
    let driver = r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "-c", "test -t 0 && echo TTY; trap 'echo INT; exit 7' INT; echo ready; sleep 20"])
buf = b""
deadline = time.time() + 20
while b"ready" not in buf and time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        buf += os.read(fd, 1024)
os.write(fd, b"\x03")
while time.time() < deadline:
    r, _, _ = select.select([fd], [], [], 0.5)
    if r:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(buf.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let mut cmd = w.command("python3");
    cmd.args(["-c", driver]).arg(&app);
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TTY") && text.contains("INT"), "{text}");
    assert_eq!(out.status.code(), Some(7), "{text}");
    let mut child = w
        .command(&app)
        .args(["-c", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"instance survived\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, b"instance survived\n");
}

#[test]
fn attach_runs_the_entry_command_once() {
    require_podman!();
    let w = World::new();
    let name = unique("attach");
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    w.ctl(&[
        "podman",
        "register",
        "--container",
        util::IMAGE,
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--attach",
        "--opt",
        r"\--network none",
    ])
    .success();
    let _guard = util::Containers(name.clone());
    let run = w.app(&app, &["-c", "echo attached; exit 4"], None);
    run.expect_code(4);
    assert_eq!(run.stdout(), "attached\n", "{run}");
    assert!(
        containers_of(&name).is_empty(),
        "the instance ends with its command"
    );
}

#[test]
fn calls_run_with_the_instance_environment_workdir_and_user() {
    require_resume!();
    let w = World::new();
    let name = unique("envwd");
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    let opts = [
        r"\--network none",
        r"\--workdir /tmp",
        r"\-e FLAKE_TEST_VALUE=from-instance",
        r"\--user 65534:65534",
    ];
    let mut args = vec![
        "podman",
        "register",
        "--container",
        util::IMAGE,
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--resume",
    ];
    for opt in &opts {
        args.extend(["--opt", opt]);
    }
    w.ctl(&args).success();
    let _guard = util::Containers(name.clone());
    let run = w.app(&app, &["-c", "pwd; echo $FLAKE_TEST_VALUE; id -u"], None);
    run.success();
    assert_eq!(run.stdout(), "/tmp\nfrom-instance\n65534\n", "{run}");
}

/// An image built from the test image whose entrypoint is a script, removed when dropped.
struct EntryImage(String);

impl EntryImage {
    /// The script prints a marker and its arguments, exits with `exit N`, and keeps and
    /// shows a value with `save V` / `load` (state inside the instance).
    fn build(flake: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script =
            "#!/bin/sh\necho \"entry-marker $#\"\nfor a in \"$@\"; do echo \"[$a]\"; done\n\
                      case \"$1\" in\n exit) exit \"$2\" ;;\n save) echo \"$2\" > /tmp/saved ;;\n \
                      load) cat /tmp/saved ;;\nesac\n";
        let path = dir.path().join("entry.sh");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let containerfile = format!(
            "FROM {}\nCOPY entry.sh /entry.sh\nENTRYPOINT [\"/entry.sh\"]\nCMD [\"from-cmd\"]\n",
            util::IMAGE
        );
        std::fs::write(dir.path().join("Containerfile"), containerfile).unwrap();
        let tag = format!("localhost/{flake}-entry:1");
        // podman 4.3 may lose a build's working container to another podman process
        // cleaning up at the same moment ("identifier is not a container"): try again.
        let build = || {
            std::process::Command::new("podman")
                .args(["build", "-q", "--pull=never", "-t", &tag])
                .arg(dir.path())
                .output()
                .unwrap()
        };
        let mut out = build();
        for _ in 0..2 {
            if out.status.success() {
                break;
            }
            out = build();
        }
        assert!(out.status.success(), "podman build: {out:?}");
        EntryImage(tag)
    }
}

impl Drop for EntryImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// Registers `name` on `image`'s own entry command (`--target /`) in `mode`.
fn register_on_entrypoint(w: &World, name: &str, image: &str, mode: &str) -> std::path::PathBuf {
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    w.ctl(&[
        "podman",
        "register",
        "--container",
        image,
        "--app",
        &app_s,
        "--target",
        "/",
        mode,
        "--opt",
        r"\--network none",
    ])
    .success();
    app
}

#[test]
fn resume_runs_the_image_entrypoint_with_the_call_arguments() {
    require_resume!();
    let w = World::new();
    let name = unique("entry-resume");
    let image = EntryImage::build(&name);
    let _guard = util::Containers(name.clone());
    let app = register_on_entrypoint(&w, &name, &image.0, "--resume");
    let run = w.app(&app, &["one", "two words"], None);
    run.success();
    assert_eq!(
        run.stdout(),
        "entry-marker 2\n[one]\n[two words]\n",
        "{run}"
    );
    // Without arguments the entrypoint gets the image's Cmd, as `podman run IMAGE` does.
    let run = w.app(&app, &[], None);
    assert_eq!(run.stdout(), "entry-marker 1\n[from-cmd]\n", "{run}");
    w.app(&app, &["exit", "7"], None).expect_code(7);
    w.app(&app, &["save", "kept"], None).success();
    let warm = w.app(&app, &["load"], None);
    assert_eq!(warm.stdout(), "entry-marker 1\n[load]\nkept\n", "{warm}");
    assert!(
        warm.elapsed < Duration::from_millis(150),
        "a warm call goes through the agent, not podman: {:?}",
        warm.elapsed
    );
    assert_eq!(containers_of(&name).len(), 1, "one instance for every call");
}

#[test]
fn resume_on_an_image_without_entrypoint_runs_its_cmd_or_the_arguments() {
    require_resume!();
    let w = World::new();
    let name = unique("entry-cmd");
    let _guard = util::Containers(name.clone());
    // The test image has only `Cmd: /bin/sh`: arguments replace it, none run it.
    let app = register_on_entrypoint(&w, &name, util::IMAGE, "--resume");
    let run = w.app(&app, &["echo", "replaced"], None);
    run.success();
    assert_eq!(run.stdout(), "replaced\n", "{run}");
    let run = w.app(&app, &[], Some(b"echo from-stdin; exit 3\n"));
    run.expect_code(3);
    assert_eq!(run.stdout(), "from-stdin\n", "{run}");
}

#[test]
fn attach_runs_the_image_entrypoint_with_the_call_arguments() {
    require_podman!();
    let w = World::new();
    let name = unique("entry-attach");
    let image = EntryImage::build(&name);
    let _guard = util::Containers(name.clone());
    let app = register_on_entrypoint(&w, &name, &image.0, "--attach");
    let run = w.app(&app, &["exit", "5"], None);
    run.expect_code(5);
    assert_eq!(run.stdout(), "entry-marker 2\n[exit]\n[5]\n", "{run}");
    let run = w.app(&app, &[], None);
    run.success();
    assert_eq!(run.stdout(), "entry-marker 1\n[from-cmd]\n", "{run}");
}

/// The entry command kept for an instance is the one of the image the instance runs, not
/// of whatever the tag names a moment later: here the tag moves to another image (with
/// another entrypoint) right after `podman run`, while the launcher is held there.
#[test]
fn resume_entry_comes_from_the_image_the_instance_runs() {
    require_resume!();
    let w = World::new();
    let name = unique("entry-moved");
    let image = EntryImage::build(&name);
    let original = image_id(&image.0);
    // The build cache may give a concurrent test's entry image this very ID; a tag of our
    // own keeps that test's `rmi -f` from removing the image (and this instance with it).
    let keep = format!("localhost/{name}-keep:1");
    let tagged = std::process::Command::new("podman")
        .args(["tag", &original, &keep])
        .status()
        .unwrap();
    assert!(tagged.success());
    let guard = util::Containers(name.clone());
    let app = register_on_entrypoint(&w, &name, &image.0, "--resume");
    let child = w
        .command(&app)
        .args(["one"])
        .env("FLAKE_TEST_PAUSE", "started")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_stopped(child.id(), Duration::from_secs(180));
    // Another image, whose entrypoint does not exist, takes over the tag.
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("marker"), "other\n").unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(tree.path())
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    let mut import = std::process::Command::new("podman")
        .args([
            "import",
            "-q",
            "--change",
            r#"ENTRYPOINT ["/moved-entry"]"#,
            "-",
            &image.0,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success());
    assert_ne!(image_id(&image.0), original, "the tag moved");
    let resumed = std::process::Command::new("kill")
        .args(["-CONT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(resumed.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout == "entry-marker 1\n[one]\n",
        "the instance's own entrypoint ran: {out:?}"
    );
    let warm = w.app(&app, &["two"], None);
    assert_eq!(warm.stdout(), "entry-marker 1\n[two]\n", "{warm}");
    drop(guard);
    let _ = std::process::Command::new("podman")
        .args(["rmi", &keep])
        .output();
}

fn image_id(image: &str) -> String {
    let out = std::process::Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until process `pid` is stopped (`T` in `/proc/PID/stat`).
fn wait_stopped(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    let stat = format!("/proc/{pid}/stat");
    loop {
        let text = std::fs::read_to_string(&stat).unwrap_or_default();
        if text.rsplit_once(") ").map(|(_, rest)| &rest[..1]) == Some("T") {
            return;
        }
        assert!(Instant::now() < deadline, "the launcher never stopped");
        assert!(!text.is_empty(), "the launcher ended before the step");
        std::thread::sleep(Duration::from_millis(5));
    }
}
