// SPDX-License-Identifier: MIT
//! VM test helpers: a busybox guest with `sci` registered as a VM flake, and what the
//! instances look like from `flake-ctl firecracker show`.
//!
//! Needs the VM fixtures (`FLAKE_VM_FIXTURES`) and the static `sci` (`FLAKE_SCI`, built by
//! `make agent`); required when `FLAKE_TEST_REQUIRE_VM=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::World;

/// Kills, when a test ends (also by failing), every VMM still running for its world, so a
/// failed test leaves no resume VM behind.
pub struct KillVms(pub PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(format!("(qemu-system|firecracker).*{}", self.0.display()))
            .status();
    }
}

/// A world for a VM test with the fixtures and `sci`, and the guard that kills its VMs (put
/// first, so the guard outlives the world); `None` when the VM inputs are missing.
pub fn vm_world() -> Option<(KillVms, World, PathBuf, PathBuf)> {
    let (fixtures, sci) = inputs()?;
    let w = World::new();
    Some((KillVms(w.dir.path().to_path_buf()), w, fixtures, sci))
}

/// The guest channel the run chooses for QEMU VMs other than the default
/// (`FLAKE_QEMU_CHANNEL=vsock`: `make test` runs the QEMU suite once with it, once without).
pub fn forced_channel() -> Option<String> {
    std::env::var("FLAKE_QEMU_CHANNEL")
        .ok()
        .filter(|c| !c.is_empty() && c != "virtio")
}

/// What the guest of a QEMU resume VM is told its channel is (`sci_channel`) in this run.
pub fn resume_channel() -> &'static str {
    match forced_channel().as_deref() {
        Some("vsock") => "vsock",
        _ => "virtio",
    }
}

/// Whether the calling test checks what only the default channels do (one-shot calls on
/// the console, saved states): under a forced channel it reports a skip instead.
pub fn default_channels_only(what: &str) -> bool {
    match forced_channel() {
        None => true,
        Some(channel) => {
            super::note_skip(&format!("{what}: not with FLAKE_QEMU_CHANNEL={channel}"));
            false
        }
    }
}

pub fn inputs() -> Option<(PathBuf, PathBuf)> {
    let fixtures = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from);
    let sci = std::env::var_os("FLAKE_SCI").map(PathBuf::from);
    match (fixtures, sci) {
        (Some(f), Some(s)) if f.join("kernel/vmlinux").is_file() && s.is_file() => {
            // QEMU's vsock device comes with the fixtures: a vsock run without it fails.
            assert!(
                f.join("vhost-user/vhost-device-vsock").is_file() || forced_channel().is_none(),
                "{} lacks vhost-user/vhost-device-vsock: run make vm-fixtures again",
                f.display()
            );
            Some((f, s))
        }
        _ => {
            let required = std::env::var("FLAKE_TEST_REQUIRE_VM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "VM fixtures or static sci missing (make vm-fixtures agent)"
            );
            super::note_skip("needs FLAKE_VM_FIXTURES and FLAKE_SCI");
            None
        }
    }
}

/// Registers `name` as a QEMU VM flake on a busybox rootfs with sci as init.
pub fn vm_flake(w: &World, fixtures: &Path, sci: &Path, name: &str) -> PathBuf {
    vm_flake_with(w, fixtures, sci, name, &[], "")
}

/// [`vm_flake`] with extra `register` arguments and extra `vm.runtime` YAML lines (indented
/// by four spaces) in the flake's fragment.
pub fn vm_flake_with(
    w: &World,
    fixtures: &Path,
    sci: &Path,
    name: &str,
    register: &[&str],
    runtime_yaml: &str,
) -> PathBuf {
    vm_flake_on(w, fixtures, sci, name, "qemu", register, runtime_yaml)
}

/// Marker argument for [`vm_flake_on`]: register the flake with a network.
pub const WITH_NET: &str = "<with network>";

/// [`vm_flake_with`] on VMM `vmm` (`qemu` or `firecracker`).
pub fn vm_flake_on(
    w: &World,
    fixtures: &Path,
    sci: &Path,
    name: &str,
    vmm: &str,
    register: &[&str],
    runtime_yaml: &str,
) -> PathBuf {
    let tree = w.path("guest");
    for dir in [
        "mnt",
        "overlayroot",
        "bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "root",
        "run",
    ] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let applets = [
        "sh", "cat", "echo", "printf", "uname", "wc", "head", "true", "sleep", "test", "[", "ls",
        "stty", "tty", "mount", "id", "date", "od",
    ];
    for applet in applets {
        let link = tree.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    // The rootfs has no sci: the component pull installs it (FLAKE_SCI), without root.
    assert!(sci.is_file());
    let rootfs = w.path("guest.ext4");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("32M")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let pull = [
        "firecracker",
        "--user",
        "pull",
        "--name",
        "guest",
        "--rootfs",
    ];
    let rootfs_s = rootfs.display().to_string();
    if !w
        .home
        .join(".config/flakes/firecracker/images/guest")
        .exists()
    {
        w.ctl(&[&pull[..], &[rootfs_s.as_str(), "--kernel", kernel.as_str()]].concat())
            .success();
    }
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
        "/bin/sh",
        "--vmm",
        vmm,
    ];
    // `WITH_NET` among `register` keeps the network; every other flake gets --no-net.
    let net: &[&str] = if register.contains(&WITH_NET) {
        &[]
    } else {
        &["--no-net"]
    };
    let register: Vec<&str> = register
        .iter()
        .copied()
        .filter(|a| *a != WITH_NET)
        .collect();
    w.ctl(&[&args[..], net, &register].concat()).success();
    let fragment = w.home.join(format!(".config/flakes/{name}.d/small.yaml"));
    std::fs::write(
        fragment,
        format!(
            "vm:\n  runtime:\n{runtime_yaml}    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n"
        ),
    )
    .unwrap();
    app
}

/// [`vm_flake_on`] with a network (and the `register` words), its `ip=dhcp` boot argument
/// replaced by `ip`: a static configuration as the seed's networking recipe writes it,
/// `ip=<client>::<gateway>:<netmask>::eth0:off`.
pub fn net_flake_on(
    w: &World,
    fixtures: &Path,
    sci: &Path,
    name: &str,
    vmm: &str,
    register: &[&str],
    ip: &str,
) -> PathBuf {
    let words: Vec<&str> = [WITH_NET].iter().chain(register).copied().collect();
    let app = vm_flake_on(w, fixtures, sci, name, vmm, &words, "");
    set_boot_ip(w, name, ip);
    app
}

/// Replaces the `ip=dhcp` boot argument of the registered flake `name` with `ip`.
pub fn set_boot_ip(w: &World, name: &str, ip: &str) {
    let config = w.home.join(format!(".config/flakes/{name}.yaml"));
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("ip=dhcp"), "{yaml}");
    std::fs::write(&config, yaml.replace("ip=dhcp", ip)).unwrap();
}

/// The VMM pid `flake-ctl firecracker show` reports for instance `label` while it runs.
pub fn running_vm(w: &World, label: &str) -> Option<String> {
    let show = w.ctl(&["firecracker", "show", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == label && r["status"] == "running")
        .and_then(|r| r["id"].as_str().map(str::to_string))
}

/// A QEMU flake registered with [`includes`] and an overlay of `overlay` (and the
/// `register` words before them).
pub fn vm_flake_with_includes(
    w: &World,
    fixtures: &Path,
    sci: &Path,
    name: &str,
    register: &[&str],
    overlay: &str,
) -> PathBuf {
    let extra = includes(w);
    let mut words: Vec<&str> = register.to_vec();
    words.extend(["--overlay-size", overlay]);
    words.extend(extra.iter().map(String::as_str));
    vm_flake_with(w, fixtures, sci, name, &words, "")
}

/// A host directory and a tar archive to include, and the register arguments naming them.
pub fn includes(w: &World) -> Vec<String> {
    let dir = w.path("incl/etc/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("conf"), "from an include path\n").unwrap();
    let staged = w.path("tarred/usr/share");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("note"), "from an include tar\n").unwrap();
    let archive = w.path("files.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(w.path("tarred"))
        .arg("-cf")
        .arg(&archive)
        .arg("usr")
        .status()
        .unwrap();
    assert!(made.success());
    vec![
        "--include-path".into(),
        w.path("incl/etc/app").display().to_string(),
        "--include-tar".into(),
        archive.display().to_string(),
    ]
}

/// The unprivileged test user (made by `ROOTLESS_USER=flaketest scripts/setup-host.sh`).
pub const USER: &str = "flaketest";

/// Runs `script` as [`USER`], through the `wrapper` words first (for instance
/// `nsenter --net=...`; none for a plain call); `None` (after saying why) without the user.
pub fn as_user_via(wrapper: &[&str], script: &str) -> Option<std::process::Output> {
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        super::skip(&format!(
            "no user {USER} (run ROOTLESS_USER={USER} scripts/setup-host.sh)"
        ));
        return None;
    }
    let words: Vec<&str> = wrapper
        .iter()
        .copied()
        .chain(["su", "-", USER, "-c", script])
        .collect();
    Some(Command::new(words[0]).args(&words[1..]).output().unwrap())
}

/// What [`USER`] needs for a VM flake of their own, copied where they may read it (the
/// build tree may be private): `flake-ctl`, `firecracker-pilot`, `sci`, the fixture rootfs
/// and kernel.
pub struct UserKit(tempfile::TempDir);

impl UserKit {
    pub fn new(fixtures: &Path, sci: &Path) -> Self {
        let shared = tempfile::Builder::new()
            .prefix("flake-user-kit-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(
            shared.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let bin = super::bin_dir();
        for (from, to) in [
            (bin.join("flake-ctl"), "flake-ctl"),
            (bin.join("firecracker-pilot"), "firecracker-pilot"),
            (sci.to_path_buf(), "sci"),
            (fixtures.join("rootfs.ext4"), "rootfs.ext4"),
            (fixtures.join("kernel/vmlinux"), "vmlinux"),
        ] {
            std::fs::copy(from, shared.path().join(to)).unwrap();
        }
        UserKit(shared)
    }

    /// The kit's directory.
    pub fn dir(&self) -> String {
        self.0.path().display().to_string()
    }

    /// Shell lines setting `ctl` (the user's flake-ctl), `app` (the user's app `name`) and
    /// `FLAKE_SCI`.
    pub fn env(&self, name: &str) -> String {
        let dir = self.dir();
        format!("export FLAKE_SCI={dir}/sci; ctl={dir}/flake-ctl; app=\"$HOME/bin/{name}\"")
    }

    /// Shell lines pulling the kit's VM image as `image` and registering app `name` on it
    /// (QEMU, `/bin/sh`, with a network): exit 90 or 91 when that fails.
    pub fn register(&self, name: &str, image: &str) -> String {
        let dir = self.dir();
        format!(
            r#"{}
$ctl firecracker --user pull --name {image} --rootfs {dir}/rootfs.ext4 --kernel {dir}/vmlinux >/dev/null || exit 90
$ctl firecracker --user register --vm {image} --app "$app" --target /bin/sh --vmm qemu >/dev/null || exit 91
"#,
            self.env(name)
        )
    }

    /// Shell lines removing what [`UserKit::register`] made.
    pub fn unregister(&self, name: &str, image: &str) -> String {
        format!(
            r#"{}
$ctl firecracker --user remove --app "$app" >/dev/null
rm -rf "$HOME/.config/flakes/firecracker/images/{image}"
"#,
            self.env(name)
        )
    }
}

/// Runs [`USER`]'s clean-up lines ([`UserKit::unregister`]) when dropped, also after a
/// failed assertion.
pub struct UserFlake(pub String);

impl Drop for UserFlake {
    fn drop(&mut self) {
        let _ = as_user_via(&[], &self.0);
    }
}

/// Registers `app` (in the world's bin dir) on VM image `vm` under QEMU with `/bin/sh`
/// (and `extra` words), in the small memory the tests use.
pub fn register_small(w: &World, vm: &str, app: &str, extra: &[&str]) -> PathBuf {
    let path = w.bin.join(app);
    let path_s = path.display().to_string();
    let args = [
        "firecracker",
        "--user",
        "register",
        "--vm",
        vm,
        "--app",
        &path_s,
        "--target",
        "/bin/sh",
        "--vmm",
        "qemu",
        "--no-net",
    ];
    w.ctl(&[&args[..], extra].concat()).success();
    let fragment = w.home.join(format!(".config/flakes/{app}.d/small.yaml"));
    std::fs::write(
        fragment,
        "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n",
    )
    .unwrap();
    path
}
