// SPDX-License-Identifier: MIT
//! flake-ctl and podman-pilot as users run them, against real podman.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use util::{containers_of, unique, World, IMAGE};

#[test]
fn echo_prints_arguments_verbatim() {
    require_podman!();
    let w = World::new();
    let app = w.register("echo", "/bin/echo", &[r"\--network none"]);
    let run = w.app(&app, &["hello", "two words", "'quoted'"], None);
    run.success();
    assert_eq!(run.stdout(), "hello two words 'quoted'\n", "{run}");
}

#[test]
fn exit_status_is_the_apps() {
    require_podman!();
    let w = World::new();
    let app = w.register("sh", "/bin/sh", &[r"\--network none"]);
    w.app(&app, &["-c", "exit 7"], None).expect_code(7);
    w.app(&app, &["-c", "kill -TERM $$"], None).expect_code(143);
    w.app(&app, &["-c", "exit 0"], None).success();
}

#[test]
fn missing_or_unrunnable_target_gives_127_and_126() {
    require_podman!();
    let w = World::new();
    let missing = w.register("missing", "/no/such/program", &[r"\--network none"]);
    w.app(&missing, &[], None).expect_code(127);
    let not_exec = w.register("notexec", "/etc/passwd", &[r"\--network none"]);
    w.app(&not_exec, &[], None).expect_code(126);
}

#[test]
fn stdin_streams_from_pipe_and_file_without_carriage_returns() {
    require_podman!();
    let w = World::new();
    // The default of flake-ctl 3.1 was `-ti`; on a pipe it must not turn into a terminal.
    let app = w.register("cat", "/bin/cat", &[r"\-ti", r"\--network none"]);
    let data: Vec<u8> = (0..20_000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let run = w.app(&app, &[], Some(&data));
    run.success();
    assert_eq!(run.output.stdout, data, "piped stdin arrives intact");
    assert!(!run.output.stdout.contains(&b'\r'));

    let file = w.path("input.txt");
    std::fs::write(&file, "from a file\n").unwrap();
    let mut cmd = w.command(&app);
    cmd.stdin(std::fs::File::open(&file).unwrap());
    let out = cmd.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from a file\n");
}

#[test]
fn stdout_streams_before_the_app_exits() {
    require_podman!();
    let w = World::new();
    let app = w.register("slow", "/bin/sh", &[r"\--network none"]);
    let started = Instant::now();
    let mut child = w
        .command(&app)
        .args(["-c", "echo first; sleep 3; echo second"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first");
    let first_at = started.elapsed();
    assert_eq!(lines.next().unwrap().unwrap(), "second");
    let second_at = started.elapsed();
    child.wait().unwrap();
    assert!(
        second_at - first_at >= Duration::from_secs(2),
        "first line came at {first_at:?}, second at {second_at:?}"
    );
}

#[test]
fn instance_name_and_escape() {
    require_podman!();
    let w = World::new();
    let app = w.register("inst", "/bin/echo", &[r"\--network none"]);
    let run = w.app(&app, &["@one", "a"], None);
    run.success();
    assert_eq!(run.stdout(), "a\n");
    let run = w.app(&app, &["--", "@{u}", "%s"], None);
    run.success();
    assert_eq!(run.stdout(), "@{u} %s\n");
    let run = w.app(&app, &["@{u}"], None);
    run.expect_code(125);
    assert!(run.stderr().contains("after --"), "{run}");
}

#[test]
fn var_expansion_in_volume_options() {
    require_podman!();
    let w = World::new();
    let data = w.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("note"), "shared\n").unwrap();
    let app = w.register(
        "vol",
        "/bin/cat",
        &[r"\--network none", r"\--volume %FLAKETESTDATA:/data"],
    );
    let mut cmd = w.command(&app);
    cmd.arg("/data/note")
        .env("FLAKETESTDATA", &data)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "shared\n", "{out:?}");
}

#[test]
fn ignore_missing_volume_path_in_both_spellings() {
    require_podman!();
    let w = World::new();
    let app = w.register(
        "optvol",
        "/bin/echo",
        &[
            r"\--network none",
            r"\--volume /nonexistent/flake-a:/a",
            r"\--volume=/nonexistent/flake-b:/b",
            r"\-v /nonexistent/c:/c",
        ],
    );
    w.app(&app, &["x"], None).expect_code(125);
    let run = w.app(&app, &["%ignore_missing_volume_path", "ok"], None);
    run.success();
    assert_eq!(run.stdout(), "ok\n");
}

#[test]
fn yaml_written_by_original_flake_ctl_launches_unchanged() {
    require_podman!();
    let w = World::new();
    std::fs::create_dir_all(w.flakes.join("orig.d")).unwrap();
    std::fs::create_dir_all(&w.bin).unwrap();
    let app = w.bin.join("orig");
    let yaml = format!(
        "---\ninclude:\n  tar: ~\n  path: ~\ncontainer:\n  name: {IMAGE}\n  target_app_path: /bin/sh\n  \
         host_app_path: {}\n  base_container: ~\n  check_host_dependencies: false\n  layers: ~\n  \
         runtime:\n    runas: root\n    resume: false\n    attach: false\n    podman:\n      - \"-ti\"\n\
         vm: ~\n",
        app.display()
    );
    std::fs::write(w.flakes.join("orig.yaml"), yaml).unwrap();
    std::os::unix::fs::symlink(util::bin_dir().join("podman-pilot"), &app).unwrap();
    let run = w.app(&app, &["-c", "echo original; exit 3"], None);
    run.expect_code(3);
    assert_eq!(run.stdout(), "original\n");
    let list = w.ctl(&["list", "--format", "json"]);
    list.success();
    assert!(list.stdout().contains("\"orig\""), "{list}");
}

#[test]
fn fragments_override_single_keys() {
    require_podman!();
    let w = World::new();
    let app = w.register("frag", "/bin/echo", &[r"\--network none"]);
    std::fs::write(
        w.flakes.join("frag.d/10-target.yaml"),
        "container:\n  target_app_path: /bin/sh\n",
    )
    .unwrap();
    let run = w.app(&app, &["-c", "echo overridden"], None);
    run.success();
    assert_eq!(run.stdout(), "overridden\n");
}

#[test]
fn malformed_yaml_gives_one_line_naming_the_file() {
    require_podman!();
    let w = World::new();
    let app = w.register("broken", "/bin/echo", &[]);
    let config = w.flakes.join("broken.yaml");
    for text in ["container: [", "container:\n  name: x\n  nmae: y\n", ""] {
        std::fs::write(&config, text).unwrap();
        let run = w.app(&app, &[], None);
        run.expect_code(125);
        let err = run.stderr();
        assert_eq!(err.lines().count(), 1, "{run}");
        assert!(err.contains(&config.display().to_string()), "{run}");
        assert!(!err.contains("panicked"), "{run}");
        let list = w.ctl(&["list"]);
        list.expect_code(1);
        assert!(
            list.stdout().contains("invalid") && !list.stderr().contains("panicked"),
            "{list}"
        );
    }
}

#[test]
fn failed_registration_leaves_nothing_behind() {
    let w = World::new();
    std::fs::write(w.path("afile"), "").unwrap();
    let before = w.tree();
    let cases: &[&[&str]] = &[
        &["--app", "/tmp/FLAKE-NEVER/app", "--layer", "l1"],
        &["--app", "relative/app"],
        &["--app", "APP_UNDER_FILE"],
        &["--app", "BIN/x", "--include-tar", "/nonexistent.tar"],
        &["--app", "BIN/y", "--target", "relative"],
    ];
    for case in cases {
        let under_file = w.path("afile/app").display().to_string();
        let in_bin = |s: &str| s.replace("BIN", &w.bin.display().to_string());
        let args: Vec<String> = case
            .iter()
            .map(|a| {
                if *a == "APP_UNDER_FILE" {
                    under_file.clone()
                } else {
                    in_bin(a)
                }
            })
            .collect();
        let mut full = vec!["podman", "register", "--container", IMAGE];
        full.extend(args.iter().map(String::as_str));
        let run = w.ctl(&full);
        run.expect_code(1);
        assert_eq!(run.stderr().lines().count(), 1, "{run}");
        let after: Vec<String> = w.tree().into_iter().filter(|p| p != "flakes").collect();
        assert_eq!(after, before, "{run}");
    }
    assert!(!std::path::Path::new("/tmp/FLAKE-NEVER").exists());
}

#[test]
fn force_replaces_flakes_but_never_programs() {
    let w = World::new();
    std::fs::create_dir_all(&w.bin).unwrap();
    let real = w.bin.join("realprog");
    std::fs::write(&real, "#!/bin/sh\necho real\n").unwrap();
    let real_s = real.display().to_string();
    let run = w.ctl(&[
        "podman",
        "register",
        "--container",
        IMAGE,
        "--app",
        &real_s,
        "--force",
    ]);
    run.expect_code(1);
    assert!(run.stderr().contains("not a flake"), "{run}");
    assert_eq!(
        std::fs::read_to_string(&real).unwrap(),
        "#!/bin/sh\necho real\n"
    );

    let app = w.register("again", "/bin/echo", &[]);
    let app_s = app.display().to_string();
    w.ctl(&["podman", "register", "--container", IMAGE, "--app", &app_s])
        .expect_code(1);
    w.ctl(&[
        "podman",
        "register",
        "--container",
        IMAGE,
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--force",
    ])
    .success();
    let yaml = std::fs::read_to_string(w.flakes.join("again.yaml")).unwrap();
    assert!(yaml.contains("target_app_path: /bin/sh"), "{yaml}");

    let other = w.path("elsewhere/again").display().to_string();
    let run = w.ctl(&[
        "podman",
        "register",
        "--container",
        IMAGE,
        "--app",
        &other,
        "--force",
    ]);
    run.expect_code(1);
    assert!(run.stderr().contains("already registered for"), "{run}");
}

#[test]
fn list_formats_and_remove_round_trip() {
    let w = World::new();
    let a = w.register("alpha", "/bin/echo", &[]);
    w.register("beta.1", "/", &[]);
    let run = w.ctl(&["list", "--format", "json"]);
    run.success();
    let rows: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta.1"]);
    assert_eq!(rows[0]["engine"], "podman");
    assert_eq!(rows[0]["target"], "/bin/echo");
    assert_eq!(rows[1]["target"], "/");
    let csv = w.ctl(&["list", "--format", "csv"]);
    assert_eq!(
        csv.stdout().lines().next().unwrap(),
        "name,engine,target_app_path,host_app_path,config,digest"
    );
    assert_eq!(csv.stdout().lines().count(), 3);

    let a_s = a.display().to_string();
    w.ctl(&["podman", "remove", "--app", &a_s]).success();
    assert!(
        !a.is_symlink()
            && !w.flakes.join("alpha.yaml").exists()
            && !w.flakes.join("alpha.d").exists()
    );
    w.ctl(&["podman", "remove", "--app", &a_s]).expect_code(1);
    let table = w.ctl(&["list"]);
    assert!(
        table.stdout().contains("beta.1") && !table.stdout().contains("alpha"),
        "{table}"
    );
}

#[test]
fn user_flag_before_and_after_action_uses_user_registry() {
    let w = World::new();
    let app = w.bin.join("mine").display().to_string();
    w.ctl(&[
        "podman",
        "--user",
        "register",
        "--container",
        IMAGE,
        "--app",
        &app,
    ])
    .success();
    assert!(w.home.join(".config/flakes/mine.yaml").is_file());
    w.ctl(&["podman", "remove", "--user", "--app", &app])
        .success();
    assert!(!w.home.join(".config/flakes/mine.yaml").exists());
    w.ctl(&["init", "--user"]).success();
    assert!(w.home.join(".config/flakes.yml").is_file());
    assert!(w.home.join(".config/flakes/podman/storage.conf").is_file());
    w.ctl(&["init"]).expect_code(1);
}

#[test]
fn sigterm_stops_the_app_and_leaves_no_container() {
    require_podman!();
    let w = World::new();
    let name = unique("sigterm");
    let app = w.register(&name, "/bin/sleep", &[r"\--network none"]);
    let mut child = w
        .command(&app)
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers_of(&name).is_empty() {
        assert!(Instant::now() < deadline, "container never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "{status:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !containers_of(&name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "container left behind: {:?}",
            containers_of(&name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn terminal_inside_only_when_caller_has_one() {
    require_podman!();
    let w = World::new();
    let app = w.register("tty", "/bin/sh", &[r"\--network none"]);
    let probe = "if [ -t 0 ] && [ -t 1 ]; then echo TTY; else echo NOTTY; fi";
    let piped = w.app(&app, &["-c", probe], Some(b""));
    assert_eq!(piped.stdout(), "NOTTY\n", "{piped}");
    // python's pty module gives the launcher a real terminal on stdin and stdout.
    let out = util::in_pty(&w, &app, &["-c", probe]);
    assert!(out.contains("TTY\r\n") && !out.contains("NOTTY"), "{out:?}");
}

#[test]
fn pull_load_and_missing_image_pulled_at_launch() {
    require_podman!();
    let registry_image = "127.0.0.1:5000/flake-pilot/busybox:latest";
    let reachable = std::process::Command::new("curl")
        .args(["-fsS", "-m", "2", "http://127.0.0.1:5000/v2/"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !reachable {
        util::skip("no local registry on 127.0.0.1:5000 (scripts/setup-host.sh starts one)");
        return;
    }
    let w = World::new();
    let _ = std::process::Command::new("podman")
        .args(["rmi", "-f", registry_image])
        .output();
    let app = w.bin.join("pulled").display().to_string();
    w.ctl(&[
        "podman",
        "register",
        "--container",
        registry_image,
        "--app",
        &app,
        "--target",
        "/bin/echo",
    ])
    .success();
    let run = w.app(
        std::path::Path::new(&app),
        &["pulled", "at", "launch"],
        None,
    );
    run.success();
    assert_eq!(
        run.stdout(),
        "pulled at launch\n",
        "image pull output stays off the app's streams"
    );
    w.ctl(&["podman", "pull", "--uri", registry_image])
        .success();
    w.ctl(&[
        "podman",
        "pull",
        "--uri",
        "127.0.0.1:5000/flake-pilot/no-such-image:1",
    ])
    .expect_code(125);

    let archive = w.path("busybox-oci-1.2.tar");
    let saved = std::process::Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    let prefix = w.path("busybox-oci-").display().to_string();
    w.ctl(&["podman", "load", "--oci", &prefix]).success();
}

#[test]
fn completions_and_man_pages_come_from_the_command_line_definition() {
    let w = World::new();
    let bash = w.ctl(&["generate", "completions", "bash"]);
    bash.success();
    for word in [
        "register",
        "--check-host-dependencies",
        "--include-tar",
        "show",
    ] {
        assert!(
            bash.stdout().contains(word),
            "{word} missing from completions"
        );
    }
    let dir = w.path("man");
    w.ctl(&["generate", "man", &dir.display().to_string()])
        .success();
    let page = std::fs::read_to_string(dir.join("flake-ctl-podman-register.1")).unwrap();
    assert!(page.contains("include\\-tar"), "{page}");
    assert!(dir.join("flake-ctl.1").is_file() && dir.join("flake-ctl-list.1").is_file());
}

/// Waits up to 15 s for every container of flake `name` to be gone.
fn containers_gone(name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if containers_of(name).is_empty() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Runs `app yes` with stdout on a pipe whose reader takes one line and closes it; stdin
/// and stderr are a fresh pseudo-terminal when `terminal` (as typed in a shell:
/// `app yes | head -1`), `/dev/null` otherwise. Returns the first line and the exit code.
fn first_line_then_close(w: &util::World, app: &std::path::Path, terminal: bool) -> (String, i32) {
    let driver = r#"
import os, sys, pty, time
terminal = sys.argv[1] == "1"
r, wr = os.pipe()
if terminal:
    master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    if terminal:
        os.setsid()
        os.dup2(slave, 0); os.dup2(slave, 2)
    else:
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, 0); os.dup2(null, 2)
    os.dup2(wr, 1)
    os.execv(sys.argv[2], sys.argv[2:])
os.close(wr)
line = b""
while not line.endswith(b"\n"):
    chunk = os.read(r, 1)
    if not chunk:
        break
    line += chunk
os.close(r)
deadline = time.time() + 60
while time.time() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    done, status = os.waitpid(pid, 0)
    print("TIMEOUT", file=sys.stderr)
code = os.waitstatus_to_exitcode(status)
print(line.decode().strip(), code if code >= 0 else 128 - code)
"#;
    let out = w
        .command("python3")
        .args(["-c", driver, if terminal { "1" } else { "0" }])
        .arg(app)
        .arg("yes")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !text.is_empty(), "{out:?}");
    let (line, code) = text.trim().rsplit_once(' ').unwrap();
    (line.to_string(), code.parse().unwrap())
}

#[test]
fn regression_issue_15_closed_stdout_ends_the_app_like_a_local_program() {
    // `app yes | head -1`: the app must die of its own SIGPIPE (141), as `yes | head -1`
    // does, and its container must go; podman relaying the stream died instead (126) and
    // left `yes` running.
    require_podman!();
    let w = World::new();
    let name = unique("yes");
    let app = w.register(&name, "/bin/busybox", &[r"\--network none"]);
    let _guard = util::Containers(name.clone());
    for terminal in [false, true, false, true] {
        let (line, code) = first_line_then_close(&w, &app, terminal);
        assert_eq!(line, "y", "terminal={terminal}");
        assert_eq!(code, 141, "terminal={terminal}: the app's SIGPIPE");
        assert!(
            containers_gone(&name),
            "terminal={terminal}: container left running"
        );
    }
}

/// Python that starts the launcher in `sys.argv[1:]` in a session of its own, stdin and
/// stderr on a fresh terminal (`master` is its other end) and stdout on a pipe (`r`),
/// as `app | cat` typed in a shell; the launcher's pid is `pid`.
const TERMINAL_AND_PIPE: &str = r#"
import os, sys, time, select, signal
master, slave = os.openpty()
r, wr = os.pipe()
pid = os.fork()
if pid == 0:
    os.setsid()
    os.dup2(slave, 0); os.dup2(slave, 2); os.dup2(wr, 1)
    os.execv(sys.argv[1], sys.argv[1:])
os.close(wr)
"#;

#[test]
fn terminal_streams_are_relayed_when_stdout_is_a_pipe() {
    // stdin and stderr a terminal, stdout a pipe: no terminal for the app, its stdout goes
    // to the pipe unchanged, stderr reaches the terminal, stdin typed there reaches the
    // app, and a Ctrl-C (SIGINT to the launcher) reaches the app once.
    require_podman!();
    let w = World::new();
    let name = unique("relay");
    let app = w.register(&name, "/bin/sh", &[r"\--network none"]);
    let _guard = util::Containers(name.clone());
    let driver = format!(
        "{TERMINAL_AND_PIPE}{}",
        r#"
out, term, sent, deadline = b"", b"", False, time.time() + 60
while time.time() < deadline:
    ready, _, _ = select.select([r, master], [], [], 0.2)
    if r in ready:
        out += os.read(r, 4096)
    if master in ready:
        try:
            term += os.read(master, 4096)
        except OSError:
            pass
    if not sent and b"ready" in out:
        os.write(master, b"typed\n")
        sent = True
    if sent and b"got typed" in out and b"waiting" in out:
        # podman forwards signals only once it has attached, a few ms after the app
        # started writing to the caller's descriptors.
        time.sleep(0.3)
        os.kill(pid, signal.SIGINT)
        break
done, status = os.waitpid(pid, 0)
open_fds = [r, master]
while open_fds:
    ready, _, _ = select.select(open_fds, [], [], 0.5)
    if not ready:
        break
    for fd in ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            chunk = b""
        if not chunk:
            open_fds.remove(fd)
        elif fd == r:
            out += chunk
        else:
            term += chunk
code = os.waitstatus_to_exitcode(status)
print(repr(out), repr(term), code if code >= 0 else 128 - code)
"#
    );
    let script = "echo to-stderr >&2; echo ready; read x; echo got $x; \
                  trap 'echo interrupted; exit 130' INT; echo waiting; sleep 30 & wait";
    let out = w
        .command("python3")
        .args(["-c", &driver])
        .arg(&app)
        .args(["-c", script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    // Exactly these bytes on the pipe: no terminal's `\r\n`, nothing of stderr.
    assert!(
        text.starts_with(r"b'ready\ngot typed\nwaiting\ninterrupted\n' "),
        "{text}"
    );
    assert!(
        text.contains("to-stderr"),
        "stderr reached the terminal: {text}"
    );
    assert!(text.trim_end().ends_with(" 130"), "{text}");
    assert!(containers_gone(&name));
}

/// An image name is never taken for a podman option: a name starting with `-` is refused
/// when registering (naming the flag) and, written into a flake file by hand, at launch
/// (naming the file), before podman runs.
#[test]
fn image_names_that_look_like_options_are_refused() {
    require_podman!();
    let w = World::new();
    let name = unique("optimage");
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    for (flag, value) in [
        ("--container", "--privileged"),
        ("--base", "--privileged"),
        ("--layer", "-v=/:/host"),
    ] {
        let mut args = vec!["podman", "register", "--app", &app_s, "--target", "/bin/id"];
        let pair = format!("{flag}={value}");
        if flag == "--container" {
            args.push(&pair);
        } else {
            args.extend(["--container", IMAGE, &pair]);
            if flag == "--layer" {
                args.extend(["--base", IMAGE]);
            }
        }
        let run = w.ctl(&args);
        run.expect_code(1);
        assert_eq!(run.stderr().lines().count(), 1, "{run}");
        assert!(
            run.stderr().contains(flag) && run.stderr().contains(value),
            "{run}"
        );
        assert!(
            !app.exists() && !app.is_symlink(),
            "nothing registered: {run}"
        );
    }

    w.register(&name, "/bin/id", &[r"\--network none"]);
    let _guard = util::Containers(name.clone());
    let config = w.flakes.join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = text.replace(&format!("name: {IMAGE}"), "name: --privileged");
    assert_ne!(text, edited, "{text}");
    std::fs::write(&config, edited).unwrap();
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains(&config.display().to_string())
            && run.stderr().contains("--privileged"),
        "{run}"
    );
    assert!(util::containers_of(&name).is_empty());
}

#[test]
fn a_relaying_launcher_killed_leaves_no_container() {
    // stdin and stderr a terminal, stdout a pipe (the launcher relays the terminal): a
    // `kill -9` of the launcher must still end the app and remove its container.
    require_podman!();
    let w = World::new();
    let name = unique("relaykill");
    let app = w.register(&name, "/bin/sh", &[r"\--network none"]);
    let _guard = util::Containers(name.clone());
    let driver = format!(
        "{TERMINAL_AND_PIPE}{}",
        r#"
out, deadline = b"", time.time() + 60
while b"ready" not in out and time.time() < deadline:
    if select.select([r], [], [], 0.2)[0]:
        out += os.read(r, 4096)
time.sleep(0.3)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
print(repr(out))
"#
    );
    let out = w
        .command("python3")
        .args(["-c", &driver])
        .arg(&app)
        .args(["-c", "echo ready; sleep 60"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ready"),
        "{out:?}"
    );
    assert!(
        containers_gone(&name),
        "the container outlived its killed launcher"
    );
}

#[test]
fn environment_values_never_show_on_podmans_command_line() {
    // Any local user reads a command line (`ps`): the caller's `%TOKEN` must reach the
    // app without ever being on podman's.
    require_podman!();
    let w = World::new();
    let name = unique("envsecret");
    let app = w.register(
        &name,
        "/bin/sh",
        &[
            r"\--network none",
            r"\-e TOKEN=%TOKEN",
            r"\--env PLAIN=visible value",
        ],
    );
    let _guard = util::Containers(name.clone());
    let secret = format!("s3cret-{}", std::process::id());
    let mut child = w
        .command(&app)
        .args(["-c", "echo \"$TOKEN|$PLAIN\"; sleep 3"])
        .env("TOKEN", &secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // The launcher became podman (exec): its command line is podman's.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(child.wait().unwrap().success());
    assert_eq!(line, format!("{secret}|visible value\n"));
    assert!(
        cmdline.contains("podman") && cmdline.contains("--env-file=/dev/fd/"),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains(&secret),
        "the secret is public: {cmdline}"
    );
}
