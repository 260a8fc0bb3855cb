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

use util::World;

/// A python HTTP server on a free loopback port, serving `dir`; stopped when dropped.
struct HttpServer {
    child: Child,
    port: u16,
}

impl HttpServer {
    fn serve(dir: &Path) -> Self {
        let script = r#"
import http.server, os, sys
os.chdir(sys.argv[1])
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;
        let mut child = Command::new("python3")
            .args(["-c", script])
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
