// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker pull` from a real local HTTP server and from files.

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

use util::World;

/// A python HTTP server on a free loopback port, serving `dir`, with a few hostile paths of
/// its own; stopped when dropped.
///
/// - `/stall-headers`: reads the request and never answers;
/// - `/stall-body/FILE`: sends the headers of FILE and its first 64 KiB, then goes silent;
/// - `/trickle/FILE`: sends the headers of FILE, then a byte of it every 100 ms;
/// - `/loop`: redirects to itself;
/// - `/to-ftp...`: redirects to an ftp address carrying a password and a signed query.
struct HttpServer {
    child: Child,
    port: u16,
}

const SERVER: &str = r#"
import http.server, os, sys, time
os.chdir(sys.argv[1])
class Hostile(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
    def do_GET(self):
        if self.path == "/stall-headers":
            time.sleep(3600)
        elif self.path.startswith("/stall-body/"):
            data = open(self.path[len("/stall-body/"):], "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:65536])
            self.wfile.flush()
            time.sleep(3600)
        elif self.path.startswith("/trickle/"):
            data = open(self.path[len("/trickle/"):], "rb").read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for byte in data:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path.startswith("/to-ftp"):
            self.send_response(302)
            self.send_header("Location", "ftp://u:pw-in-location@127.0.0.1/x?sig=location-secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            super().do_GET()
class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
server = Server(("127.0.0.1", 0), Hostile)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

impl HttpServer {
    fn serve(dir: &Path) -> Self {
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        HttpServer {
            child,
            port: line.trim().parse().unwrap(),
        }
    }

    fn url(&self, file: &str) -> String {
        format!("http://127.0.0.1:{}/{file}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256(bytes: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), bytes)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Builds a kis archive in `dir` from `members` (name, content), compressed with `tar_flag`.
fn kis(dir: &Path, file: &str, tar_flag: &str, members: &[(&str, Vec<u8>)]) -> PathBuf {
    let tree = dir.join(format!("{file}.tree"));
    std::fs::create_dir_all(&tree).unwrap();
    for (name, content) in members {
        std::fs::write(tree.join(name), content).unwrap();
    }
    let archive = dir.join(file);
    let mut cmd = Command::new("tar");
    if !tar_flag.is_empty() {
        cmd.arg(tar_flag);
    }
    let status = cmd
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    archive
}

/// A rootfs with padding after the covered blocks, and its `<sha> <blocks> <blocksize>`.
fn rootfs_and_record() -> (Vec<u8>, String) {
    let covered: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let record = format!("{} 16 512\n", sha256(&covered));
    let mut rootfs = covered;
    rootfs.extend([0u8; 100]);
    (rootfs, record)
}

fn images(w: &World) -> PathBuf {
    w.home.join(".config/flakes/firecracker/images")
}

fn pull(w: &World, name: &str, extra: &[&str], insecure: bool) -> util::Run {
    let mut args = vec!["firecracker", "--user", "pull", "--name", name];
    args.extend(extra);
    let mut cmd = w.command(util::bin_dir().join("flake-ctl"));
    cmd.args(&args);
    if insecure {
        cmd.env("FLAKE_ALLOW_INSECURE_TRANSPORT", "1");
    } else {
        cmd.env_remove("FLAKE_ALLOW_INSECURE_TRANSPORT");
    }
    util::Run::from_command(cmd)
}

/// Entries of the registry directory, to prove nothing half-done stays behind.
fn registry_entries(w: &World) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(images(w))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn kis_archives_in_every_compression_over_http() {
    let w = World::new();
    let served = w.path("www");
    std::fs::create_dir_all(&served).unwrap();
    let (rootfs, record) = rootfs_and_record();
    let members = vec![
        ("leap.x86_64-1.0.raw", rootfs.clone()),
        ("leap.kernel", b"kernel".to_vec()),
        ("leap.initrd", b"initrd".to_vec()),
        ("leap.sha256", record.into_bytes()),
        ("leap.append", b"console=ttyS0".to_vec()),
    ];
    for (i, flag) in ["-J", "-z", "--zstd", ""].iter().enumerate() {
        kis(&served, &format!("leap{i}.tar"), flag, &members);
    }
    let server = HttpServer::serve(&served);
    for i in 0..4 {
        let name = format!("leap{i}");
        let url = server.url(&format!("leap{i}.tar"));
        pull(&w, &name, &["--kis-image", &url], true).success();
        let dir = images(&w).join(&name);
        assert_eq!(std::fs::read(dir.join("rootfs")).unwrap(), rootfs);
        assert_eq!(std::fs::read(dir.join("kernel")).unwrap(), b"kernel");
        assert_eq!(std::fs::read(dir.join("initrd")).unwrap(), b"initrd");
        assert!(dir.join("checksum").is_file() && !dir.join("append").exists());
    }
    let run = pull(
        &w,
        "plain",
        &["--kis-image", &server.url("leap0.tar")],
        false,
    );
    run.expect_code(1);
    assert!(
        run.stderr().contains("FLAKE_ALLOW_INSECURE_TRANSPORT"),
        "{run}"
    );
    let run = pull(
        &w,
        "leap0",
        &["--kis-image", &server.url("leap0.tar")],
        true,
    );
    run.expect_code(1);
    assert!(run.stderr().contains("--force"), "{run}");
    let run = pull(
        &w,
        "missing",
        &["--kis-image", &server.url("nope.tar")],
        true,
    );
    run.expect_code(1);
    assert!(run.stderr().contains("404"), "{run}");
    assert_eq!(registry_entries(&w), ["leap0", "leap1", "leap2", "leap3"]);
}

#[test]
fn bad_archives_are_rejected_and_force_keeps_the_old_image_until_verified() {
    let w = World::new();
    let dir = w.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let (rootfs, record) = rootfs_and_record();
    let good = kis(
        &dir,
        "good.tar.xz",
        "-J",
        &[
            ("a.raw", rootfs.clone()),
            ("a.kernel", b"k".to_vec()),
            ("a.sha256", record.clone().into_bytes()),
        ],
    );
    pull(
        &w,
        "img",
        &["--kis-image", &good.display().to_string()],
        false,
    )
    .success();

    let wrong = kis(
        &dir,
        "wrong.tar.xz",
        "-J",
        &[
            ("a.raw", b"tampered".to_vec()),
            ("a.kernel", b"k2".to_vec()),
            ("a.sha256", record.clone().into_bytes()),
        ],
    );
    let stray = kis(
        &dir,
        "stray.tar",
        "",
        &[
            ("a.raw", rootfs.clone()),
            ("a.kernel", b"k".to_vec()),
            ("a.sha256", record.clone().into_bytes()),
            ("README", b"x".to_vec()),
        ],
    );
    let no_kernel = kis(
        &dir,
        "nokernel.tar",
        "",
        &[("a.raw", rootfs.clone()), ("a.sha256", record.into_bytes())],
    );
    for (archive, needle) in [
        (&wrong, "checksum mismatch"),
        (&stray, "README"),
        (&no_kernel, "kernel"),
    ] {
        let url = format!("file://{}", archive.display());
        let run = pull(&w, "img", &["--kis-image", &url, "--force"], false);
        run.expect_code(1);
        assert!(run.stderr().contains(needle), "{run}");
        assert_eq!(run.stderr().lines().count(), 1, "{run}");
        assert_eq!(
            std::fs::read(images(&w).join("img/rootfs")).unwrap(),
            rootfs,
            "old image intact"
        );
        assert_eq!(registry_entries(&w), ["img"], "no staging left");
    }
}

#[test]
fn components_get_mount_points_and_sci_without_root_or_loop_mounts() {
    if std::env::var_os("FLAKE_SCI").is_none() {
        util::skip("FLAKE_SCI must name the static sci (make agent)");
        return;
    }
    let w = World::new();
    let tree = w.path("rootfs-tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=test\n").unwrap();
    let rootfs = w.path("rootfs.ext4");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("8M")
        .status()
        .unwrap();
    assert!(made.success());
    let kernel = w.path("vmlinux");
    std::fs::write(&kernel, "kernel").unwrap();
    let rootfs_url = format!("file://{}", rootfs.display());
    pull(
        &w,
        "core",
        &[
            "--rootfs",
            &rootfs_url,
            "--kernel",
            &kernel.display().to_string(),
        ],
        false,
    )
    .success();
    let installed = images(&w).join("core/rootfs");
    for (file, mode) in [
        ("rootfs", 0o644),
        ("kernel", 0o644),
        ("guest-channel", 0o644),
    ] {
        let path = images(&w).join("core").join(file);
        assert_eq!(mode_and_owner(&path).0, mode, "{file}");
    }
    let listing = Command::new("debugfs")
        .args(["-R", "ls -p /"])
        .arg(&installed)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for point in ["overlayroot", "proc", "sys", "dev", "mnt", "etc"] {
        assert!(
            listing.contains(&format!("/{point}/")),
            "{point} missing: {listing}"
        );
    }
    let sci = Command::new("debugfs")
        .args(["-R", "stat /usr/sbin/sci"])
        .arg(&installed)
        .output()
        .unwrap();
    let sci = String::from_utf8_lossy(&sci.stdout);
    assert!(
        sci.contains("Mode:  0755") && sci.contains("Type: regular"),
        "sci installed: {sci}"
    );
    let dev = Command::new("debugfs")
        .args(["-R", "ls -p /dev"])
        .arg(&installed)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dev.stdout).contains("/pts/"));
    let run = w.ctl(&[
        "firecracker",
        "--user",
        "pull",
        "--name",
        "x",
        "--rootfs",
        &rootfs_url,
    ]);
    run.expect_code(2);
}

/// An ext image whose `/usr/sbin/sci` claims `size` bytes (a sparse file: holes cost the
/// image nothing, and `debugfs cat` prints them as zeros).
fn rootfs_with_init_of_size(w: &World, size: u64) -> Vec<u8> {
    let tree = w.path("huge-init-tree");
    std::fs::create_dir_all(tree.join("usr/sbin")).unwrap();
    std::fs::write(tree.join("usr/sbin/sci"), "init").unwrap();
    let rootfs = w.path("huge-init.ext4");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("8M")
        .status()
        .unwrap();
    assert!(made.success());
    let grown = Command::new("debugfs")
        .args(["-w", "-R", &format!("sif /usr/sbin/sci size {size}")])
        .arg(&rootfs)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(grown.success());
    std::fs::read(&rootfs).unwrap()
}

#[test]
fn a_huge_guest_init_in_a_pulled_rootfs_is_refused_before_it_is_read() {
    if Command::new("debugfs").arg("-V").output().is_err() {
        util::skip("debugfs (e2fsprogs) is not installed");
        return;
    }
    let w = World::new();
    // 2 TiB of guest init in an 8 MiB image: reading it whole would take all memory.
    let rootfs = rootfs_with_init_of_size(&w, 2 << 40);
    let served = w.path("served-init");
    std::fs::create_dir_all(&served).unwrap();
    let record = format!("{}\n", sha256(&rootfs));
    kis(
        &served,
        "huge-init.tar.gz",
        "-z",
        &[
            ("a.raw", rootfs),
            ("a.kernel", b"k".to_vec()),
            ("a.sha256", record.into_bytes()),
        ],
    );
    let server = HttpServer::serve(&served);
    let url = server.url("huge-init.tar.gz");
    let child = pull_command(
        &w,
        "init",
        &["--kis-image", &url],
        &[("FLAKE_ALLOW_INSECURE_TRANSPORT", "1")],
    )
    .spawn()
    .unwrap();
    let ended = finish(child, Instant::now(), Duration::from_secs(60));
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("/usr/sbin/sci")
            && ended.stderr.contains("2199023255552 bytes")
            && ended.stderr.contains("init"),
        "{}",
        ended.stderr
    );
    assert_eq!(ended.stderr.trim().lines().count(), 1, "{}", ended.stderr);
    assert!(
        ended.elapsed < Duration::from_secs(30),
        "{:?}",
        ended.elapsed
    );
    assert_eq!(registry_entries(&w), Vec::<String>::new());
}

/// `flake-ctl firecracker --user pull --name NAME EXTRA...` with `envs`, not yet started.
fn pull_command(w: &World, name: &str, extra: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = w.command(util::bin_dir().join("flake-ctl"));
    cmd.args(["firecracker", "--user", "pull", "--name", name])
        .args(extra)
        .env_remove("FLAKE_ALLOW_INSECURE_TRANSPORT")
        .env_remove("FLAKE_PULL_STALL_TIMEOUT")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// How a pull that may hang ended: its exit code (`None`: it had to be killed, or died by a
/// signal), its stderr and how long it ran.
struct Ended {
    code: Option<i32>,
    stderr: String,
    elapsed: Duration,
}

/// Waits up to `limit` for `child`, killing it when it overruns (a hang fails the test
/// instead of stalling it).
fn finish(mut child: Child, started: Instant, limit: Duration) -> Ended {
    while child.try_wait().unwrap().is_none() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    Ended {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// Staging directories (`.pull-*`) in the registry.
fn staging_dirs(w: &World) -> Vec<String> {
    registry_entries(w)
        .into_iter()
        .filter(|e| e.starts_with(".pull-"))
        .collect()
}

/// Waits until `count` staging directories hold data.
fn wait_for_staged_data(w: &World, count: usize) {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        let filled = staging_dirs(w)
            .iter()
            .filter(|d| walk_sizes(&images(w).join(d)) > 0)
            .count();
        if filled >= count {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no staged data after 30 s: {:?}", registry_entries(w));
}

fn walk_sizes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| {
                    let meta = e.metadata().unwrap();
                    if meta.is_dir() {
                        walk_sizes(&e.path())
                    } else {
                        meta.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A served directory holding a valid kis archive `good.tar` and a 4 MiB one,
/// `big.tar.gz` (random data, so the server's Content-Length is honest).
fn served_archives(w: &World) -> PathBuf {
    let served = w.path("www");
    std::fs::create_dir_all(&served).unwrap();
    let (rootfs, record) = rootfs_and_record();
    kis(
        &served,
        "good.tar",
        "",
        &[
            ("a.raw", rootfs),
            ("a.kernel", b"k".to_vec()),
            ("a.sha256", record.into_bytes()),
        ],
    );
    let noise: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    std::fs::write(served.join("big.tar.gz"), noise).unwrap();
    served
}

#[test]
fn a_stalled_server_is_an_error_within_the_stall_timeout() {
    let w = World::new();
    let served = served_archives(&w);
    let server = HttpServer::serve(&served);
    for (path, what) in [
        ("stall-headers", "no data"),
        ("stall-body/big.tar.gz", "no data"),
        ("trickle/big.tar.gz", "less than 1 KiB/s"),
    ] {
        let url = server.url(path);
        let cmd = pull_command(
            &w,
            "stalled",
            &["--kis-image", &url],
            &[
                ("FLAKE_ALLOW_INSECURE_TRANSPORT", "1"),
                ("FLAKE_PULL_STALL_TIMEOUT", "2"),
            ],
        );
        let started = Instant::now();
        let ended = finish({ cmd }.spawn().unwrap(), started, Duration::from_secs(30));
        assert_eq!(ended.code, Some(1), "{path}: {}", ended.stderr);
        assert!(
            ended.elapsed < Duration::from_secs(15),
            "{path}: took {:?}",
            ended.elapsed
        );
        assert!(
            ended.stderr.contains(&format!("{what} for 2 s"))
                && ended.stderr.contains("FLAKE_PULL_STALL_TIMEOUT"),
            "{path}: {}",
            ended.stderr
        );
        assert_eq!(ended.stderr.lines().count(), 1, "{}", ended.stderr);
        assert!(staging_dirs(&w).is_empty(), "{:?}", registry_entries(&w));
    }
    let cmd = pull_command(
        &w,
        "bad",
        &["--kis-image", &server.url("good.tar")],
        &[
            ("FLAKE_ALLOW_INSECURE_TRANSPORT", "1"),
            ("FLAKE_PULL_STALL_TIMEOUT", "soon"),
        ],
    );
    let ended = finish(
        { cmd }.spawn().unwrap(),
        Instant::now(),
        Duration::from_secs(30),
    );
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("FLAKE_PULL_STALL_TIMEOUT"),
        "{}",
        ended.stderr
    );
}

/// A kis archive whose rootfs member is `size` zero bytes, gzip-compressed to a few hundred
/// KiB.
fn gzip_bomb(dir: &Path, size: u64) -> PathBuf {
    let tree = dir.join("bomb.tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("a.kernel"), b"k").unwrap();
    std::fs::write(tree.join("a.sha256"), format!("{}\n", sha256(b""))).unwrap();
    std::fs::File::create(tree.join("a.raw"))
        .unwrap()
        .set_len(size)
        .unwrap();
    let archive = dir.join("bomb.tar.gz");
    let status = Command::new("tar")
        .args(["-czf"])
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .args(["a.kernel", "a.sha256", "a.raw"])
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&tree).unwrap();
    archive
}

#[test]
fn downloads_and_members_stop_at_the_size_limit_and_leave_nothing() {
    let w = World::new();
    let served = served_archives(&w);
    let bomb = gzip_bomb(&served, 256 << 20);
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let server = HttpServer::serve(&served);
    let insecure = [("FLAKE_ALLOW_INSECURE_TRANSPORT", "1")];
    // The member expands past the limit while it is unpacked: stopped there, by name.
    let url = server.url("bomb.tar.gz");
    let run = util::Run::from_command(pull_command(
        &w,
        "bomb",
        &["--kis-image", &url, "--max-size", "16MiB"],
        &insecure,
    ));
    run.expect_code(1);
    let err = run.stderr();
    assert!(
        err.contains("'a.raw'") && err.contains("--max-size") && err.contains("16777216"),
        "{run}"
    );
    assert_eq!(err.lines().count(), 1, "{run}");
    assert_eq!(registry_entries(&w), Vec::<String>::new(), "{run}");
    // The same from a file.
    let file = format!("file://{}", bomb.display());
    let run = util::Run::from_command(pull_command(
        &w,
        "bomb",
        &["--kis-image", &file, "--max-size", "16MiB"],
        &[],
    ));
    run.expect_code(1);
    assert!(run.stderr().contains("'a.raw'"), "{run}");
    // A Content-Length over the limit is refused before anything is written.
    let url = server.url("big.tar.gz");
    let run = util::Run::from_command(pull_command(
        &w,
        "big",
        &["--kis-image", &url, "--max-size", "1MiB"],
        &insecure,
    ));
    run.expect_code(1);
    assert!(
        run.stderr().contains("4194304 bytes") && run.stderr().contains("--max-size"),
        "{run}"
    );
    // A component file over the limit, and an unparsable limit.
    let kernel = served.join("big.tar.gz").display().to_string();
    let run = util::Run::from_command(pull_command(
        &w,
        "comp",
        &[
            "--rootfs",
            &kernel,
            "--kernel",
            &kernel,
            "--max-size",
            "1MiB",
        ],
        &[],
    ));
    run.expect_code(1);
    assert!(run.stderr().contains("--max-size"), "{run}");
    let run = util::Run::from_command(pull_command(
        &w,
        "comp",
        &[
            "--rootfs",
            &kernel,
            "--kernel",
            &kernel,
            "--max-size",
            "lots",
        ],
        &[],
    ));
    run.expect_code(2);
    assert!(run.stderr().contains("lots"), "{run}");
    assert_eq!(registry_entries(&w), Vec::<String>::new());
    // Within the limit the same archive installs.
    let url = server.url("good.tar");
    util::Run::from_command(pull_command(
        &w,
        "good",
        &["--kis-image", &url, "--max-size", "1MiB"],
        &insecure,
    ))
    .success();
}

/// A kis archive `file` in `dir` holding `members` in this order, with `tar_flag`.
fn kis_in_order(dir: &Path, file: &str, tar_flag: &str, members: &[(&str, Sized)]) -> PathBuf {
    let tree = dir.join(format!("{file}.tree"));
    std::fs::create_dir_all(&tree).unwrap();
    for (name, content) in members {
        match content {
            Sized::Bytes(bytes) => std::fs::write(tree.join(name), bytes).unwrap(),
            Sized::Zeros(size) => std::fs::File::create(tree.join(name))
                .unwrap()
                .set_len(*size)
                .unwrap(),
        }
    }
    let archive = dir.join(file);
    let status = Command::new("tar")
        .arg(tar_flag)
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .args(members.iter().map(|(name, _)| name))
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(&tree).unwrap();
    archive
}

/// The content of a member of [`kis_in_order`].
enum Sized {
    Bytes(Vec<u8>),
    /// This many zero bytes (a sparse file until tar reads it).
    Zeros(u64),
}

#[test]
fn a_compressed_bomb_stops_at_its_expansion_ratio_under_the_defaults() {
    let w = World::new();
    let served = w.path("www-ratio");
    std::fs::create_dir_all(&served).unwrap();
    // 2 GiB of zeros in a 70 KB archive: within the default size limit, 30000 to 1.
    let bomb = kis_in_order(
        &served,
        "bomb.tar.zst",
        "--zstd",
        &[
            ("a.kernel", Sized::Bytes(b"k".to_vec())),
            (
                "a.sha256",
                Sized::Bytes(format!("{}\n", sha256(b"")).into_bytes()),
            ),
            ("a.raw", Sized::Zeros(2 << 30)),
        ],
    );
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let server = HttpServer::serve(&served);
    let url = server.url("bomb.tar.zst");
    let child = pull_command(
        &w,
        "bomb",
        &["--kis-image", &url],
        &[("FLAKE_ALLOW_INSECURE_TRANSPORT", "1")],
    )
    .spawn()
    .unwrap();
    let ended = finish(child, Instant::now(), Duration::from_secs(120));
    assert_eq!(ended.code, Some(1), "{}", ended.stderr);
    assert!(
        ended.stderr.contains("'a.raw'")
            && ended.stderr.contains("200 times")
            && ended.stderr.contains("--max-ratio"),
        "{}",
        ended.stderr
    );
    assert_eq!(ended.stderr.trim().lines().count(), 1, "{}", ended.stderr);
    assert_eq!(registry_entries(&w), Vec::<String>::new());
}

#[test]
fn a_rootfs_larger_than_its_record_declares_is_refused() {
    let w = World::new();
    let served = w.path("www-declared");
    std::fs::create_dir_all(&served).unwrap();
    let (rootfs, record) = rootfs_and_record();
    let mut padded = rootfs.clone();
    padded.resize(rootfs.len() + (2 << 20), 0);
    // The record first, as KIWI writes it: the rootfs may not pass what it declares (plus
    // 1 MiB of padding); behind the rootfs the record cannot bound it.
    for (file, first, refused) in [
        ("ahead.tar.gz", true, true),
        ("behind.tar.gz", false, false),
    ] {
        let record_member = ("a.sha256", Sized::Bytes(record.clone().into_bytes()));
        let rootfs_member = ("a.raw", Sized::Bytes(padded.clone()));
        let kernel = ("a.kernel", Sized::Bytes(b"k".to_vec()));
        let members = if first {
            [record_member, kernel, rootfs_member]
        } else {
            [rootfs_member, kernel, record_member]
        };
        let archive = kis_in_order(&served, file, "-z", &members);
        let run = pull(
            &w,
            file,
            &["--kis-image", &archive.display().to_string()],
            false,
        );
        if refused {
            run.expect_code(1);
            assert!(
                run.stderr()
                    .contains("'a.raw' is larger than the 8192 bytes its checksum record declares"),
                "{run}"
            );
        } else {
            run.success();
        }
    }
    // Within the padding it installs.
    let (rootfs, record) = rootfs_and_record();
    let archive = kis_in_order(
        &served,
        "fits.tar.gz",
        "-z",
        &[
            ("a.sha256", Sized::Bytes(record.into_bytes())),
            ("a.raw", Sized::Bytes(rootfs)),
            ("a.kernel", Sized::Bytes(b"k".to_vec())),
        ],
    );
    pull(
        &w,
        "fits",
        &["--kis-image", &archive.display().to_string()],
        false,
    )
    .success();
}

#[test]
fn addresses_are_shown_without_passwords_or_queries() {
    let w = World::new();
    let served = served_archives(&w);
    let server = HttpServer::serve(&served);
    let port = server.port;
    let secrets = [
        "hunter2",
        "s3cr3t-token",
        "pw-in-location",
        "location-secret",
    ];
    for (url, insecure, shown) in [
        // A missing file: the error names the address.
        (
            format!("http://alice:hunter2@127.0.0.1:{port}/missing.tar?token=s3cr3t-token"),
            true,
            format!("http://127.0.0.1:{port}/missing.tar?…"),
        ),
        // A redirect whose Location carries secrets of its own.
        (
            format!("http://alice:hunter2@127.0.0.1:{port}/to-ftp?token=s3cr3t-token"),
            true,
            "ftp://127.0.0.1/x?…".to_string(),
        ),
        // Refused before any request.
        (
            format!("http://alice:hunter2@127.0.0.1:{port}/good.tar?token=s3cr3t-token"),
            false,
            format!("http://127.0.0.1:{port}/good.tar?…"),
        ),
    ] {
        let run = pull(&w, "secret", &["--kis-image", &url], insecure);
        run.expect_code(1);
        let err = run.stderr();
        for secret in secrets {
            assert!(!err.contains(secret), "{secret} shown: {run}");
        }
        assert!(err.contains(&shown), "{shown} not shown: {run}");
    }
}

#[test]
fn a_killed_pull_leaves_staging_that_the_next_pull_removes() {
    let w = World::new();
    let served = served_archives(&w);
    let server = HttpServer::serve(&served);
    let envs = [
        ("FLAKE_ALLOW_INSECURE_TRANSPORT", "1"),
        ("FLAKE_PULL_STALL_TIMEOUT", "60"),
    ];
    let url = server.url("stall-body/big.tar.gz");
    // A pull still running is left alone while another pull cleans up.
    let running = pull_command(&w, "running", &["--kis-image", &url], &envs)
        .spawn()
        .unwrap();
    wait_for_staged_data(&w, 1);
    let mut child = pull_command(&w, "killed", &["--kis-image", &url], &envs)
        .spawn()
        .unwrap();
    wait_for_staged_data(&w, 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(staging_dirs(&w).len(), 2, "{:?}", registry_entries(&w));
    let url = server.url("good.tar");
    util::Run::from_command(pull_command(&w, "next", &["--kis-image", &url], &envs)).success();
    let left = staging_dirs(&w);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(".pull-running-"), "{left:?}");
    let ended = finish(running, Instant::now(), Duration::ZERO);
    assert_eq!(ended.code, None, "{}", ended.stderr);
    util::Run::from_command(pull_command(&w, "next", &["--kis-image", &url], &envs)).expect_code(1);
    assert_eq!(registry_entries(&w), ["next"]);
    // `firecracker remove` collects too: a dead pull's staging, and an image that an older
    // release moved aside and did not delete.
    let dead = images(&w).join(".pull-dead-99");
    std::fs::create_dir_all(dead.join("image")).unwrap();
    std::fs::write(dead.join("lock"), "").unwrap();
    let aside = images(&w).join(".old-next-77");
    std::fs::create_dir(&aside).unwrap();
    std::fs::write(aside.join("rootfs"), "old").unwrap();
    std::fs::File::open(&aside)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(120))
        .unwrap();
    w.ctl(&["firecracker", "--user", "remove", "--vm", "next"])
        .success();
    assert_eq!(registry_entries(&w), Vec::<String>::new());
}

#[test]
fn sigint_and_sigterm_remove_the_staging_directory() {
    let w = World::new();
    let served = served_archives(&w);
    let server = HttpServer::serve(&served);
    let envs = [
        ("FLAKE_ALLOW_INSECURE_TRANSPORT", "1"),
        ("FLAKE_PULL_STALL_TIMEOUT", "60"),
    ];
    let url = server.url("stall-body/big.tar.gz");
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let child = pull_command(&w, "signalled", &["--kis-image", &url], &envs)
            .spawn()
            .unwrap();
        wait_for_staged_data(&w, 1);
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
        let ended = finish(child, Instant::now(), Duration::from_secs(10));
        assert_eq!(ended.code, Some(code), "SIG{signal}: {}", ended.stderr);
        assert_eq!(registry_entries(&w), Vec::<String>::new(), "SIG{signal}");
    }
}

/// A kis archive made by python's tarfile with members of the given modes and owner 1234.
fn kis_with_modes(dir: &Path, members: &[(&str, &[u8], u32)]) -> PathBuf {
    let archive = dir.join("modes.tar");
    let spec: Vec<String> = members
        .iter()
        .map(|(name, data, mode)| format!("({name:?}, bytes({data:?}), {mode})"))
        .collect();
    let script = format!(
        "import io, sys, tarfile\n\
         t = tarfile.open(sys.argv[1], 'w')\n\
         for name, data, mode in [{}]:\n\
         \x20   info = tarfile.TarInfo(name)\n\
         \x20   info.size, info.mode, info.uid, info.gid = len(data), mode, 1234, 1234\n\
         \x20   t.addfile(info, io.BytesIO(data))\n\
         t.close()\n",
        spec.join(", ")
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .arg(&archive)
        .status()
        .unwrap();
    assert!(status.success());
    archive
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid())
}

#[test]
fn members_and_components_land_with_safe_modes() {
    let w = World::new();
    let dir = w.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let (rootfs, record) = rootfs_and_record();
    let archive = kis_with_modes(
        &dir,
        &[
            ("a.raw", &rootfs, 0o777),
            ("a.kernel", b"k", 0o4777),
            ("a.initrd", b"i", 0o2666),
            ("a.sha256", record.as_bytes(), 0o600),
        ],
    );
    let me: u32 = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A strict umask must not make the image unreadable, a loose one not writable (the
    // registry is created by the first pull, under umask 000).
    for umask in ["000", "077"] {
        let name = format!("modes{umask}");
        let mut sh = w.command("sh");
        sh.args(["-c", &format!("umask {umask} && exec \"$0\" \"$@\"")])
            .arg(util::bin_dir().join("flake-ctl"))
            .args(["firecracker", "--user", "pull", "--name", &name])
            .args(["--kis-image", &archive.display().to_string()]);
        util::Run::from_command(sh).success();
        let img = images(&w).join(&name);
        assert_eq!(mode_and_owner(&img), (0o755, me), "{umask}");
        for created in ["", "..", "../.."] {
            let dir = images(&w).join(created);
            assert_eq!(mode_and_owner(&dir).0 & 0o022, 0, "{}", dir.display());
        }
        for (file, mode) in [
            ("rootfs", 0o755),
            ("kernel", 0o755),
            ("initrd", 0o644),
            ("checksum", 0o644),
        ] {
            assert_eq!(
                mode_and_owner(&img.join(file)),
                (mode, me),
                "{umask} {file}"
            );
        }
    }
    let wide = dir.join("wide");
    std::fs::write(&wide, b"not an ext image").unwrap();
    std::fs::set_permissions(&wide, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let wide = wide.display().to_string();
    util::Run::from_command(pull_command(
        &w,
        "parts",
        &["--rootfs", &wide, "--kernel", &wide, "--initrd", &wide],
        &[],
    ))
    .success();
    let img = images(&w).join("parts");
    assert_eq!(mode_and_owner(&img), (0o755, me));
    for file in ["rootfs", "kernel", "initrd"] {
        assert_eq!(mode_and_owner(&img.join(file)), (0o644, me), "{file}");
    }
}

#[test]
fn http_needs_insecure_transport_set_to_1_or_true() {
    let w = World::new();
    let served = served_archives(&w);
    let server = HttpServer::serve(&served);
    let url = server.url("good.tar");
    for value in ["0", "", "no", "false", "yes please"] {
        let run = util::Run::from_command(pull_command(
            &w,
            "insecure",
            &["--kis-image", &url],
            &[("FLAKE_ALLOW_INSECURE_TRANSPORT", value)],
        ));
        run.expect_code(1);
        assert!(
            run.stderr().contains("FLAKE_ALLOW_INSECURE_TRANSPORT=1"),
            "{value:?}: {run}"
        );
    }
    for (i, value) in ["1", "true", "TRUE", "True"].iter().enumerate() {
        util::Run::from_command(pull_command(
            &w,
            &format!("insecure{i}"),
            &["--kis-image", &url],
            &[("FLAKE_ALLOW_INSECURE_TRANSPORT", value)],
        ))
        .success();
    }
}

#[test]
fn hostile_archives_and_servers_are_refused_in_one_line() {
    let w = World::new();
    let served = served_archives(&w);
    let (rootfs, record) = rootfs_and_record();
    let mut flood = vec![
        ("a.raw", rootfs.clone()),
        ("a.kernel", b"k".to_vec()),
        ("a.sha256", record.into_bytes()),
    ];
    let names: Vec<String> = (0..100).map(|i| format!("n{i}.append")).collect();
    flood.extend(names.iter().map(|n| (n.as_str(), b"x".to_vec())));
    kis(&served, "flood.tar", "", &flood);
    kis(
        &served,
        "record.tar",
        "",
        &[
            ("a.raw", rootfs),
            ("a.kernel", b"k".to_vec()),
            ("a.sha256", vec![b'a'; 1 << 20]),
        ],
    );
    long_name_bomb(&served.join("longname.tar.gz"));
    xz_with_a_huge_dictionary(&served.join("good.tar"), &served.join("dict.tar.xz"));
    let server = HttpServer::serve(&served);
    let insecure = [("FLAKE_ALLOW_INSECURE_TRANSPORT", "1")];
    for (file, needle) in [
        ("loop", "redirect"),
        ("flood.tar", "members"),
        ("record.tar", "a.sha256"),
        ("longname.tar.gz", "long name"),
        ("dict.tar.xz", "memory"),
    ] {
        let run = util::Run::from_command(pull_command(
            &w,
            "hostile",
            &["--kis-image", &server.url(file)],
            &insecure,
        ));
        run.expect_code(1);
        assert!(run.stderr().contains(needle), "{file}: {run}");
        assert!(run.stderr().len() < 400, "{file}: {run}");
        assert_eq!(run.stderr().lines().count(), 1, "{file}: {run}");
    }
    assert_eq!(registry_entries(&w), Vec::<String>::new());
}

/// A gzip tar whose first header is a GNU long name of 64 MiB (the tar reader would hold it
/// in memory), followed by an empty member.
fn long_name_bomb(path: &Path) {
    let script = r#"
import gzip, sys
def header(name, size, kind):
    h = bytearray(512)
    h[0:len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156] = ord(kind)
    h[257:265] = b"ustar  \0"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)
with gzip.open(sys.argv[1], "wb", compresslevel=1) as f:
    f.write(header(b"././@LongLink", 64 << 20, "L"))
    for _ in range(64):
        f.write(b"a" * (1 << 20))
    f.write(header(b"x", 0, "0"))
    f.write(bytes(1024))
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// `tar` compressed with xz, its block header then claiming a 1.5 GiB dictionary (still a
/// valid stream: the data only refers back 1 MiB), which the decoder would allocate.
fn xz_with_a_huge_dictionary(tar: &Path, out: &Path) {
    let script = r#"
import lzma, struct, sys, zlib
data = open(sys.argv[1], "rb").read()
filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}]
xz = bytearray(lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters))
size = (xz[12] + 1) * 4
header = xz[12:12 + size]
pos = 2
def skip_varint(pos):
    while header[pos] & 0x80:
        pos += 1
    return pos + 1
if header[1] & 0x40:
    pos = skip_varint(pos)
if header[1] & 0x80:
    pos = skip_varint(pos)
assert header[pos] == 0x21 and header[pos + 1] == 1
header[pos + 2] = 37
header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
xz[12:12 + size] = header
open(sys.argv[2], "wb").write(xz)
"#;
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(tar)
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A small tmpfs mounted for a test; unmounted when dropped.
struct SmallFs(PathBuf);

impl SmallFs {
    /// Mounts a tmpfs of `size` on `dir`, or says why not (needs root).
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Some(SmallFs(dir.to_path_buf()))
        } else {
            util::skip("mounting a tmpfs needs root");
            None
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_pull_leaves_the_last_free_space_of_its_file_system_alone() {
    let w = World::new();
    let dir = w.path("files");
    std::fs::create_dir_all(&dir).unwrap();
    let bomb = gzip_bomb(&dir, 256 << 20);
    let Some(_fs) = SmallFs::mount(&images(&w), "64m") else {
        return;
    };
    let file = format!("file://{}", bomb.display());
    // Under the default size limit, so only the free space stops it.
    let run = util::Run::from_command(pull_command(&w, "bomb", &["--kis-image", &file], &[]));
    run.expect_code(1);
    assert!(
        run.stderr()
            .contains("its file system is down to the last 3355443 bytes"),
        "{run}"
    );
    assert_eq!(registry_entries(&w), Vec::<String>::new(), "{run}");
}
