// SPDX-License-Identifier: MIT
//! VM images made from OCI images (`flake-ctl firecracker pull --oci`), against real
//! podman, the local registry on 127.0.0.1:5000 and real QEMU guests: what an image's tree
//! holds (owners, modes, symlinks, hard links, device nodes, file capabilities) is what the
//! guest sees; a kernel shipped as an image boots; re-pulls follow the digest; failed
//! conversions leave the previous image as it was.
//!
//! Needs root, podman, the registry, the VM fixtures and `sci` (see `util::vm`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use util::registry::{podman, registry_ready, Images, REGISTRY};
use util::vm::{running_vm, vm_world};
use util::World;

/// Builds `containerfile` in `dir` as `tag` (MKNOD allowed: a RUN step makes a device);
/// the image is removed with `images`.
fn build(images: &Images, dir: &Path, containerfile: &str, tag: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Containerfile"), containerfile).unwrap();
    let dir_s = dir.display().to_string();
    let id = podman(&[
        "build",
        "-q",
        "--no-cache",
        "--cap-add",
        "MKNOD",
        "-t",
        tag,
        &dir_s,
    ]);
    images.add(id.trim());
}

/// Pushes local `tag` to `remote` and removes both names locally, so a pull must fetch
/// it. `rmi` without `--force` of a name only drops that name while others remain.
fn push(tag: &str, remote: &str) {
    podman(&["push", "-q", "--tls-verify=false", tag, remote]);
    for name in [tag, remote] {
        let _ = Command::new("podman").args(["rmi", "--", name]).output();
    }
}

/// The test image's build context: a file with a capability, copied in (podman build
/// keeps the `security.capability` attribute of a COPY source), and a RUN step making
/// a file owned by 1234 (mode 0640), a symlink, a hard link and a device node.
fn app_context(w: &World, extra: &str) -> (PathBuf, String) {
    let dir = w.path("app-context");
    std::fs::create_dir_all(&dir).unwrap();
    let cap = dir.join("capfile");
    std::fs::write(&cap, "cap\n").unwrap();
    let setcap = Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(&cap)
        .status()
        .unwrap();
    assert!(setcap.success(), "setcap (libcap2-bin) sets the capability");
    let containerfile = format!(
        "FROM {}\n\
         COPY capfile /opt/capfile\n\
         RUN echo owned > /opt/owned && chown 1234:1234 /opt/owned && chmod 0640 /opt/owned \
         && ln -s owned /opt/link && ln /opt/owned /opt/hard && mknod -m 0600 /opt/null c 1 3\n\
         RUN echo '{extra}' > /opt/version\n",
        util::IMAGE
    );
    (dir, containerfile)
}

/// Builds a `FROM scratch` kernel image laid out as Debian does (`/vmlinuz ->
/// boot/vmlinuz-6.1`), whose first candidate `/boot/vmlinux` is a link out of the image
/// (`/../../etc/passwd`): it must be passed over, not followed on the host.
fn kernel_image(images: &Images, w: &World, kernel: &Path, tag: &str) {
    let dir = w.path("kernel-context");
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::copy(kernel, tree.join("boot/vmlinuz-6.1")).unwrap();
    std::os::unix::fs::symlink("boot/vmlinuz-6.1", tree.join("vmlinuz")).unwrap();
    std::os::unix::fs::symlink("/../../etc/passwd", tree.join("boot/vmlinux")).unwrap();
    build(images, &dir, "FROM scratch\nCOPY tree/ /\n", tag);
}

/// `debugfs -R REQUEST ROOTFS`'s answer.
fn debugfs(rootfs: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(rootfs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks the tree of the test image inside the ext4 at `rootfs`.
fn check_tree(rootfs: &Path) {
    let owned = debugfs(rootfs, "stat /opt/owned");
    assert!(owned.contains("Type: regular    Mode:  0640"), "{owned}");
    assert!(owned.contains("User:  1234   Group:  1234"), "{owned}");
    assert!(owned.contains("Links: 2"), "{owned}");
    let inode = |text: &str| text.split_whitespace().nth(1).map(str::to_string);
    let hard = debugfs(rootfs, "stat /opt/hard");
    assert_eq!(
        inode(&hard),
        inode(&owned),
        "a hard link is one inode: {hard}"
    );
    let link = debugfs(rootfs, "stat /opt/link");
    assert!(link.contains("Type: symlink"), "{link}");
    assert!(link.contains("Fast link dest: \"owned\""), "{link}");
    let dev = debugfs(rootfs, "stat /opt/null");
    assert!(
        dev.contains("Type: character special    Mode:  0600"),
        "{dev}"
    );
    assert!(dev.contains("Device major/minor number: 01:03"), "{dev}");
    let caps = debugfs(rootfs, "ea_list /opt/capfile");
    assert!(caps.contains("security.capability"), "{caps}");
    let sci = debugfs(rootfs, "stat /usr/sbin/sci");
    assert!(
        sci.contains("Type: regular    Mode:  0755"),
        "the guest init: {sci}"
    );
}

/// The image directory of `name` in a world's user registry.
fn image_dir(w: &World, name: &str) -> PathBuf {
    w.home.join(".config/flakes/firecracker/images").join(name)
}

/// Inode and mtime of `path`: the same after a no-op, new after a rebuild.
fn identity(path: &Path) -> (u64, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.ino(), meta.mtime(), meta.mtime_nsec())
}

fn record(w: &World, name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(image_dir(w, name).join("oci-image.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// What the guest shows of the test image's files.
const GUEST_CHECK: &str = "ls -ln /opt | while read -r mode links uid gid rest; do \
     echo \"$mode $links $uid $gid ${rest##* }\"; done; readlink /opt/link; cat /opt/version";

fn check_guest_view(out: &str, version: &str) {
    for line in [
        "-rw-r----- 2 1234 1234 hard",
        "-rw-r----- 2 1234 1234 owned",
        "crw------- 1 0 0 null",
        "-rw-r--r-- 1 0 0 capfile",
    ] {
        assert!(out.contains(line), "{line} in the guest: {out}");
    }
    assert!(out.contains("lrwxrwxrwx 1 0 0 owned\n"), "{out}");
    assert!(out.ends_with(&format!("\nowned\n{version}\n")), "{out}");
}

#[test]
fn oci_image_becomes_a_vm_image_that_boots_a_kernel_image_and_follows_the_registry() {
    require_podman!();
    if !registry_ready() {
        return;
    }
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let Some(_tmpfs) = registry_on_tmpfs(&w, "512m") else {
        return;
    };
    let id = std::process::id();
    let remote = format!("{REGISTRY}/ocipull-{id}/app:1");
    let kernel_remote = format!("{REGISTRY}/ocipull-{id}/kernel:1");
    let (local, kernel_local) = (
        format!("localhost/ocipull-{id}-app:1"),
        format!("localhost/ocipull-{id}-kernel:1"),
    );
    let images = Images::new(vec![
        remote.clone(),
        kernel_remote.clone(),
        local.clone(),
        kernel_local.clone(),
    ]);
    let (context, containerfile) = app_context(&w, "one");
    build(&images, &context, &containerfile, &local);
    push(&local, &remote);
    kernel_image(&images, &w, &fixtures.join("kernel/vmlinux"), &kernel_local);
    push(&kernel_local, &kernel_remote);

    let pull = [
        "firecracker",
        "--user",
        "pull",
        "--name",
        "ociapp",
        "--oci",
        &remote,
        "--kernel-oci",
        &kernel_remote,
    ];
    let started = Instant::now();
    w.ctl(&pull).success();
    eprintln!("first pull from the registry: {:?}", started.elapsed());
    let dir = image_dir(&w, "ociapp");
    check_tree(&dir.join("rootfs"));
    let kernel = std::fs::read(dir.join("kernel")).unwrap();
    assert!(kernel == std::fs::read(fixtures.join("kernel/vmlinux")).unwrap());
    let first = record(&w, "ociapp");
    assert_eq!(first["rootfs"]["reference"], remote.as_str());
    assert!(first["rootfs"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(first["kernel"]["reference"], kernel_remote.as_str());
    assert_eq!(first["config"]["cmd"][0], "/bin/sh");

    // The kernel from the image boots the image's tree; one-shot and resume calls see
    // the files as the image has them.
    let app = util::vm::register_small(&w, "ociapp", "ocish", &[]);
    let run = w.app(&app, &["-c", GUEST_CHECK], None);
    run.success();
    check_guest_view(&run.stdout(), "one");
    let resume = util::vm::register_small(&w, "ociapp", "ocires", &["--resume"]);
    for _ in 0..2 {
        let run = w.app(&resume, &["-c", GUEST_CHECK], None);
        run.success();
        check_guest_view(&run.stdout(), "one");
    }
    assert!(running_vm(&w, "ocires").is_some(), "the resume VM runs");
    w.app(&resume, &["%remove", "-c", "true"], None).success();

    // Same digest: nothing is rebuilt.
    let before = identity(&dir.join("rootfs"));
    let started = Instant::now();
    let again = w.ctl(&pull);
    let no_op = started.elapsed();
    again.success();
    assert!(again.stdout().contains("up to date"), "{again}");
    assert_eq!(
        identity(&dir.join("rootfs")),
        before,
        "the rootfs is untouched"
    );
    eprintln!("re-pull with an unchanged digest: {no_op:?}");
    assert!(no_op.as_secs() < 10, "a no-op re-pull is fast: {no_op:?}");

    // A new digest behind the same tag: rebuilt, no --force needed, the new tree in place.
    let (context, containerfile) = app_context(&w, "two");
    build(&images, &context, &containerfile, &local);
    push(&local, &remote);
    let rebuilt = w.ctl(&pull);
    rebuilt.success();
    assert!(!rebuilt.stdout().contains("up to date"), "{rebuilt}");
    assert_ne!(identity(&dir.join("rootfs")), before, "a new rootfs");
    let second = record(&w, "ociapp");
    assert_ne!(second["rootfs"]["digest"], first["rootfs"]["digest"]);
    assert_eq!(second["kernel"], first["kernel"]);
    check_tree(&dir.join("rootfs"));
    let run = w.app(&app, &["-c", GUEST_CHECK], None);
    run.success();
    check_guest_view(&run.stdout(), "two");
    assert_eq!(staging_left(&w), Vec::<String>::new());

    // One step: register --oci pulls the image under a name made from the reference
    // (app-1), then reuses it while its digest stays the same.
    for (app, state) in [("ocireg", "pulled"), ("ocireg2", "up to date")] {
        let path = w.bin.join(app).display().to_string();
        let args = [
            "firecracker",
            "--user",
            "register",
            "--oci",
            &remote,
            "--kernel-oci",
            &kernel_remote,
            "--app",
            &path,
            "--target",
            "/bin/sh",
            "--vmm",
            "qemu",
            "--no-net",
        ];
        let run = w.ctl(&args);
        run.success();
        assert!(
            run.stdout()
                .contains(&format!("VM image app-1 from {remote}: {state}")),
            "{run}"
        );
    }
    assert_eq!(record(&w, "app-1")["rootfs"], second["rootfs"]);
    // Flags that need no image are checked before anything is pulled.
    let path = w.bin.join("ocibad").display().to_string();
    let args = [
        "firecracker",
        "--user",
        "register",
        "--oci",
        &remote,
        "--vm",
        "never-pulled",
        "--kernel-oci",
        &kernel_remote,
        "--app",
        &path,
        "--target",
        "bin/sh",
    ];
    let run = w.ctl(&args);
    run.expect_code(1);
    assert!(run.stderr().contains("--target 'bin/sh'"), "{run}");
    assert!(!image_dir(&w, "never-pulled").exists());
    // --max-size bounds what register --oci pulls, as it does for pull.
    let args = [
        "firecracker",
        "--user",
        "register",
        "--oci",
        &remote,
        "--vm",
        "never-pulled",
        "--kernel-oci",
        &kernel_remote,
        "--max-size",
        "1MiB",
        "--app",
        &path,
    ];
    let run = w.ctl(&args);
    run.expect_code(1);
    assert!(run.stderr().contains("size limit of 1048576"), "{run}");
    assert!(!image_dir(&w, "never-pulled").exists());
    assert!(!w.bin.join("ocibad").exists());
    let yaml = std::fs::read_to_string(w.home.join(".config/flakes/ocireg.yaml")).unwrap();
    assert!(yaml.contains("name: app-1"), "{yaml}");
}

/// Staging directories left in the world's image registry.
fn staging_left(w: &World) -> Vec<String> {
    let images = w.home.join(".config/flakes/firecracker/images");
    std::fs::read_dir(images)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Images podman has mounted (`podman image mount` without arguments lists them).
fn mounted_images() -> String {
    podman(&["image", "mount"])
}

/// Containers made to read a kernel out of `image` that are still there.
fn kernel_containers(image: &str) -> String {
    podman(&[
        "ps",
        "-a",
        "--filter",
        "label=io.flake-pilot.kernel-export",
        "--filter",
        &format!("ancestor={image}"),
        "--format",
        "{{.Names}}",
    ])
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(PathBuf);

/// Puts the world's VM image registry on a tmpfs of `size`: a full disk on demand, and
/// pulls that do not depend on the free space of the host's disk (a pull keeps up to
/// 1 GiB of it free). `None` after a visible skip when it cannot be mounted.
fn registry_on_tmpfs(w: &World, size: &str) -> Option<Tmpfs> {
    let images_dir = w.home.join(".config/flakes/firecracker/images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}")])
        .arg("tmpfs")
        .arg(&images_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        util::skip("cannot mount a tmpfs for the VM image registry");
        return None;
    }
    Some(Tmpfs(images_dir))
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn failed_oci_conversions_leave_the_previous_image_intact() {
    require_podman!();
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let id = std::process::id();
    let image = format!("localhost/ocipull-{id}-local:1");
    let other = format!("localhost/ocipull-{id}-other:1");
    let images = Images::new(vec![image.clone(), other.clone()]);
    // The registry sits on a small tmpfs: room for one image, not for a large one beside.
    let Some(_tmpfs) = registry_on_tmpfs(&w, "160m") else {
        return;
    };
    let ctx = w.path("small");
    build(
        &images,
        &ctx,
        &format!("FROM {}\nRUN echo small > /small\n", util::IMAGE),
        &image,
    );
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let pull = |oci: &str, kernel_args: &[&str], extra: &[&str]| {
        let oci = format!("--oci={oci}");
        let args = ["firecracker", "--user", "pull", "--name", "keep", &oci];
        w.ctl(&[&args[..], kernel_args, extra].concat())
    };
    let file_kernel = ["--kernel", kernel.as_str()];
    pull(&image, &file_kernel, &[]).success();
    let dir = image_dir(&w, "keep");
    let before = identity(&dir.join("rootfs"));
    let recorded = record(&w, "keep");
    let intact = |what: &str| {
        assert_eq!(identity(&dir.join("rootfs")), before, "{what}: rootfs kept");
        assert_eq!(record(&w, "keep"), recorded, "{what}: record kept");
        assert_eq!(staging_left(&w), Vec::<String>::new(), "{what}: no staging");
        let mounts = mounted_images();
        assert!(
            !mounts.contains(&format!("ocipull-{id}-local")),
            "{what}: unmounted: {mounts}"
        );
    };

    // A reference podman would take for an option, or that is no reference at all.
    for bad in ["--privileged", "Bad Ref", "oci:/etc"] {
        let run = pull(bad, &file_kernel, &["--force"]);
        run.expect_code(1);
        assert!(
            run.stderr().contains("is not a valid image reference"),
            "{run}"
        );
        intact(bad);
    }
    // An image nobody has.
    let missing = format!("{REGISTRY}/ocipull-{id}/missing:1");
    let run = pull(&missing, &file_kernel, &["--force"]);
    run.expect_code(1);
    assert!(
        run.stderr().contains(&format!("cannot pull {missing}")),
        "{run}"
    );
    intact("missing image");
    // A kernel container a killed pull left behind (its pid is beyond any pid).
    let left = format!("flake-kernel-{}-{id}", u32::MAX);
    podman(&[
        "create",
        "--name",
        &left,
        "--label",
        "io.flake-pilot.kernel-export",
        util::IMAGE,
        "/none",
    ]);
    // A kernel image without a kernel (busybox has none of the paths).
    let run = pull(&image, &["--kernel-oci", util::IMAGE], &[]);
    run.expect_code(1);
    assert!(
        run.stderr()
            .contains("holds no kernel: tried /boot/vmlinux"),
        "{run}"
    );
    intact("kernel image without a kernel");
    assert_eq!(
        kernel_containers(util::IMAGE).trim(),
        "",
        "no kernel container"
    );
    // Another image's name needs --force.
    build(
        &images,
        &w.path("other"),
        &format!("FROM {}\n", util::IMAGE),
        &other,
    );
    let run = pull(&other, &file_kernel, &[]);
    run.expect_code(1);
    assert!(run.stderr().contains("pass --force"), "{run}");
    intact("another image without --force");

    // A configuration no call can carry (a User that is no name or number) would make
    // every launch fail: refused before it replaces the working image.
    build(
        &images,
        &ctx,
        &format!("FROM {}\nUSER app+1\n", util::IMAGE),
        &image,
    );
    let run = pull(&image, &file_kernel, &[]);
    run.expect_code(1);
    assert!(
        run.stderr().contains(&format!(
            "the configuration of {image} cannot be run in a VM: User 'app+1'"
        )),
        "{run}"
    );
    intact("unusable configuration");

    // The image grows past the disk: its data alone would eat into the space a pull
    // leaves free (5 % here), so mkfs does not even start; nothing is replaced, and the
    // file system has what it had.
    let big = format!(
        "FROM {}\nRUN head -c 110000000 /dev/urandom > /big\n",
        util::IMAGE
    );
    build(&images, &ctx, &big, &image);
    let free = || {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(w.home.join(".config/flakes/firecracker/images"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before_big = free();
    let run = pull(&image, &file_kernel, &[]);
    run.expect_code(1);
    let err = run.stderr();
    assert!(err.contains("keep") && err.contains(&image), "{run}");
    assert!(err.contains("a pull leaves the last"), "{run}");
    assert!(err.contains("make room"), "{run}");
    assert_eq!(free(), before_big, "nothing written");
    intact("disk full");

    // A local image changed under the same name: rebuilt by its image id, no --force.
    build(
        &images,
        &ctx,
        &format!("FROM {}\nRUN echo changed > /small\n", util::IMAGE),
        &image,
    );
    let run = pull(&image, &file_kernel, &[]);
    run.success();
    assert!(!run.stdout().contains("up to date"), "{run}");
    assert_ne!(identity(&dir.join("rootfs")), before);
    let small = debugfs(&dir.join("rootfs"), "cat /small");
    assert_eq!(small, "changed\n");
    assert_eq!(
        record(&w, "keep")["rootfs"]["digest"],
        serde_json::Value::Null
    );
    assert_eq!(staging_left(&w), Vec::<String>::new());

    // Unchanged: a no-op, unless --force asks for the image to be made again.
    let changed = identity(&dir.join("rootfs"));
    let run = pull(&image, &file_kernel, &[]);
    assert!(run.success().stdout().contains("up to date"), "{run}");
    assert_eq!(identity(&dir.join("rootfs")), changed);
    let run = pull(&image, &file_kernel, &["--force"]);
    assert!(!run.success().stdout().contains("up to date"), "{run}");
    assert_ne!(identity(&dir.join("rootfs")), changed, "--force rebuilds");
}

#[test]
fn a_user_without_root_pulls_an_oci_image_through_podman_unshare() {
    require_podman!();
    if !registry_ready() {
        return;
    }
    let Some((_vms, w, fixtures, sci)) = vm_world() else {
        return;
    };
    let id = std::process::id();
    let remote = format!("{REGISTRY}/ocipull-{id}/user:1");
    let local = format!("localhost/ocipull-{id}-user:1");
    let images = Images::new(vec![remote.clone(), local.clone()]);
    let (context, containerfile) = app_context(&w, "user");
    build(&images, &context, &containerfile, &local);
    push(&local, &remote);
    let kit = util::vm::UserKit::new(&fixtures, &sci);
    let name = format!("ocipull-user-{id}");
    let cleanup = format!(
        "rm -rf \"$HOME/.config/flakes/firecracker/images/{name}\"; podman rmi {remote} >/dev/null 2>&1"
    );
    let _cleanup = util::vm::UserFlake(cleanup);
    let pull = format!(
        "{}\n$ctl firecracker --user pull --name {name} --oci {remote} --kernel {}/vmlinux || exit 90\n\
         $ctl firecracker --user pull --name {name} --oci {remote} --kernel {}/vmlinux || exit 91\n\
         podman unshare podman image mount\n\
         echo \"home=$HOME\"",
        kit.env("unused"),
        kit.dir(),
        kit.dir()
    );
    let Some(out) = util::vm::as_user_via(&[], &pull) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("pulled VM image {name}")),
        "{stdout}"
    );
    assert!(stdout.contains("is up to date"), "{stdout}");
    assert!(
        !stdout.contains(&remote),
        "the image is unmounted again: {stdout}"
    );
    let home = stdout
        .lines()
        .find_map(|l| l.strip_prefix("home="))
        .unwrap()
        .to_string();
    let rootfs = Path::new(&home)
        .join(".config/flakes/firecracker/images")
        .join(&name)
        .join("rootfs");
    // Inside podman's user namespace the image's owners are the image's own, so they
    // reach the file system as they are; the file is the user's.
    let owner = std::fs::metadata(&rootfs).unwrap().uid();
    assert_ne!(owner, 0, "the user's own file");
    let owned = debugfs(&rootfs, "stat /opt/owned");
    assert!(owned.contains("User:  1234   Group:  1234"), "{owned}");
    assert!(owned.contains("Links: 2"), "{owned}");
    let link = debugfs(&rootfs, "stat /opt/link");
    assert!(link.contains("Fast link dest: \"owned\""), "{link}");
    let caps = debugfs(&rootfs, "ea_list /opt/capfile");
    assert!(caps.contains("security.capability"), "{caps}");
    // Podman's rootless storage cannot create device nodes, so the image's /opt/null is
    // missing from the user's copy of the image itself (podman unshare ls shows the same).
    let dev = debugfs(&rootfs, "stat /opt/null");
    eprintln!(
        "rootless: /opt/null {}",
        if dev.contains("character special") {
            "kept"
        } else {
            "absent (podman's rootless storage has no device nodes)"
        }
    );
}

/// Issue 20, items 1 and 4 together: the configuration `pull --oci` records from a real
/// image (entrypoint, command, environment, working directory) is what a flake
/// registered with `--target /` runs in the guest.
#[test]
fn the_entry_command_of_a_pulled_image_runs_with_target_root() {
    require_podman!();
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let Some(_tmpfs) = registry_on_tmpfs(&w, "128m") else {
        return;
    };
    let id = std::process::id();
    let image = format!("localhost/ocipull-{id}-entry:1");
    let images = Images::new(vec![image.clone()]);
    let containerfile = format!(
        "FROM {}\nENV GREETING=\"hello there\"\nWORKDIR /etc\n\
         ENTRYPOINT [\"sh\", \"-c\", \"echo \\\"$GREETING in $(pwd):\\\" \\\"$@\\\"\", \"entry\"]\n\
         CMD [\"default\"]\n",
        util::IMAGE
    );
    build(&images, &w.path("entry"), &containerfile, &image);
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let app = w.bin.join("ocientry");
    let app_s = app.display().to_string();
    let args = [
        "firecracker",
        "--user",
        "register",
        "--oci",
        &image,
        "--kernel",
        &kernel,
        "--app",
        &app_s,
        "--target",
        "/",
        "--vmm",
        "qemu",
        "--no-net",
    ];
    w.ctl(&args).success();
    let fragment = w.home.join(".config/flakes/ocientry.d/small.yaml");
    std::fs::write(
        fragment,
        "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n",
    )
    .unwrap();
    let run = w.app(&app, &[], None);
    run.success();
    assert_eq!(run.stdout(), "hello there in /etc: default\n", "{run}");
    let run = w.app(&app, &["--", "a b"], None);
    run.success();
    assert_eq!(run.stdout(), "hello there in /etc: a b\n", "{run}");
}

/// A pull under `umask 000` (or 002) must not leave anything in the image that others (or
/// the group) may write: the rootfs `mkfs.ext4` creates and the record that chooses what
/// calls run get fixed modes, like every other file a pull writes.
#[test]
fn pulled_files_are_not_writable_by_others_whatever_the_umask() {
    require_podman!();
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let ctl = util::bin_dir().join("flake-ctl");
    let mut cmd = w.command("/bin/sh");
    cmd.args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(&ctl)
        .args(["firecracker", "--user", "pull", "--name", "open"])
        .args(["--oci", util::IMAGE, "--kernel", &kernel]);
    util::Run::from_command(cmd).success();
    let dir = image_dir(&w, "open");
    let mut checked = Vec::new();
    for path in std::iter::once(dir.clone())
        .chain(std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()))
    {
        let mode = std::fs::symlink_metadata(&path).unwrap().mode() & 0o7777;
        assert_eq!(mode & 0o7022, 0, "{} has mode {mode:o}", path.display());
        checked.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    checked.sort();
    for file in ["rootfs", "kernel", "oci-image.json"] {
        assert!(checked.iter().any(|c| c == file), "{file} in {checked:?}");
    }
}

/// `localhost:PORT/...` names a registry (the usual address of one run for development),
/// unlike `localhost/...`, podman's name for images that never were in one: a re-pull must
/// ask the registry, see the tag move and rebuild, and the record must keep the digest.
#[test]
fn a_registry_on_localhost_with_a_port_is_followed() {
    require_podman!();
    if !registry_ready() {
        return;
    }
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let id = std::process::id();
    let local = format!("localhost/ocipull-{id}-lh:1");
    let remote = format!("localhost:5000/ocipull-{id}/lh:1");
    let images = Images::new(vec![local.clone(), remote.clone()]);
    let ctx = w.path("lh");
    let version = |v: &str| format!("FROM {}\nRUN echo {v} > /v\n", util::IMAGE);
    build(&images, &ctx, &version("1"), &local);
    push(&local, &remote);
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let pull = || {
        w.ctl(&[
            "firecracker",
            "--user",
            "pull",
            "--name",
            "lh",
            "--oci",
            &remote,
            "--kernel",
            &kernel,
        ])
    };
    pull().success();
    let digest = record(&w, "lh")["rootfs"]["digest"].clone();
    assert!(
        digest.as_str().is_some_and(|d| d.starts_with("sha256:")),
        "a registry's digest is recorded: {digest}"
    );
    // The tag moves in the registry; the local copy of the old image keeps its name.
    build(&images, &ctx, &version("2"), &local);
    podman(&["push", "-q", "--tls-verify=false", &local, &remote]);
    podman(&["rmi", "--", &local]);
    let run = pull();
    assert!(!run.success().stdout().contains("up to date"), "{run}");
    let rootfs = image_dir(&w, "lh").join("rootfs");
    assert_eq!(debugfs(&rootfs, "cat /v"), "2\n");
    assert_ne!(record(&w, "lh")["rootfs"]["digest"], digest);
}

/// The digest `skopeo inspect` says the registry serves for `reference`.
fn registry_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The digests podman lists for `reference`'s image in `repository`.
fn local_digests(reference: &str, repository: &str) -> Vec<String> {
    let text = podman(&["image", "inspect", "--format", "json", "--", reference]);
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut digests: Vec<String> = answer[0]["RepoDigests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d.as_str()?.strip_prefix(&format!("{repository}@")))
        .map(str::to_string)
        .collect();
    digests.sort();
    digests.dedup();
    digests
}

/// The JSON row of `key` == `name` in `rows`.
fn json_row(rows: &str, key: &str, name: &str) -> serde_json::Value {
    let rows: serde_json::Value = serde_json::from_str(rows).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r[key] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in {rows}"))
}

/// An image built and pushed on this host keeps its local names, so podman knows it by the
/// manifest of the build as well as by the registry's and lists every name with both: the
/// record, `show` and `list` must hold the digest the registry serves (skopeo's), for the
/// rootfs image and for the kernel image, and a dry-run update must find nothing new.
#[test]
fn an_image_pushed_from_this_host_records_the_registry_digest() {
    require_podman!();
    if !registry_ready() {
        return;
    }
    if Command::new("skopeo").arg("--version").output().is_err() {
        util::skip("skopeo is not installed: the registry's digest cannot be compared");
        return;
    }
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let id = std::process::id();
    let repo = format!("{REGISTRY}/ocidigest-{id}");
    let (remote, kernel_remote) = (format!("{repo}/app:1"), format!("{repo}/kernel:1"));
    let (local, kernel_local) = (
        format!("localhost/ocidigest-{id}-app:1"),
        format!("localhost/ocidigest-{id}-kernel:1"),
    );
    let images = Images::new(vec![
        remote.clone(),
        kernel_remote.clone(),
        local.clone(),
        kernel_local.clone(),
    ]);
    let version = format!("FROM {}\nRUN echo {id} > /v\n", util::IMAGE);
    build(&images, &w.path("app-context"), &version, &local);
    kernel_image(&images, &w, &fixtures.join("kernel/vmlinux"), &kernel_local);
    // Pushed, and the local names kept: the case podman answers with the build's digest.
    for (from, to) in [(&local, &remote), (&kernel_local, &kernel_remote)] {
        podman(&["push", "-q", "--tls-verify=false", from, to]);
    }
    let vm = format!("ocidigest{id}");
    w.ctl(&[
        "firecracker",
        "--user",
        "pull",
        "--name",
        &vm,
        "--oci",
        &remote,
        "--kernel-oci",
        &kernel_remote,
    ])
    .success();
    for (reference, part) in [(&remote, "rootfs"), (&kernel_remote, "kernel")] {
        let repository = reference.rsplit_once(':').unwrap().0;
        let known = local_digests(reference, repository);
        assert!(
            known.len() > 1,
            "podman knows {reference} by the build's and the registry's digest: {known:?}"
        );
        let served = registry_digest(reference);
        assert_eq!(
            record(&w, &vm)[part]["digest"],
            served.as_str(),
            "{part}: the registry serves {served}; podman knows {known:?}"
        );
    }
    let (served, kernel_served) = (registry_digest(&remote), registry_digest(&kernel_remote));

    let app = format!("ocidigest-app-{id}");
    util::vm::register_small(&w, &vm, &app, &[]);
    let list = w.ctl(&["list", "--user", "--format", "json"]);
    let row = json_row(&list.success().stdout(), "name", &app);
    assert_eq!(row["digest"], served.as_str(), "{list}");
    assert_eq!(row["kernel_oci_image"], kernel_remote.as_str(), "{list}");
    assert_eq!(row["kernel_digest"], kernel_served.as_str(), "{list}");
    // A stale instance of the app is enough for `show` to name its image.
    let instance = format!("{app}@1");
    std::fs::create_dir_all(w.path("ids/0/.vm").join(&instance)).unwrap();
    let show = w.ctl(&["firecracker", "show", "--format", "json"]);
    let row = json_row(&show.success().stdout(), "name", &instance);
    assert_eq!(row["oci_image"], remote.as_str(), "{show}");
    assert_eq!(row["digest"], served.as_str(), "{show}");
    assert_eq!(row["kernel_oci_image"], kernel_remote.as_str(), "{show}");
    assert_eq!(row["kernel_digest"], kernel_served.as_str(), "{show}");

    let dry_run = || {
        let dry = w.ctl(&[
            "firecracker",
            "--user",
            "update",
            "--vm",
            &vm,
            "--dry-run",
            "--format",
            "json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&dry.success().stdout()).unwrap();
        let entry = report["images"][0].clone();
        assert_eq!(entry["status"], "unchanged", "{dry}");
        assert_eq!(entry["new_digest"], served.as_str(), "{dry}");
        assert_eq!(entry["new_kernel_digest"], kernel_served.as_str(), "{dry}");
        entry
    };
    let entry = dry_run();
    assert_eq!(entry["old_digest"], served.as_str());
    assert_eq!(entry["old_kernel_digest"], kernel_served.as_str());

    // A record of an earlier release, holding the digest of the build's manifest: the dry
    // run still knows the image, and a pull rewrites the record without a rebuild.
    let build_digest = local_digests(&remote, remote.rsplit_once(':').unwrap().0)
        .into_iter()
        .find(|d| *d != served)
        .unwrap();
    let path = image_dir(&w, &vm).join("oci-image.json");
    let mut old = record(&w, &vm);
    old["rootfs"]["digest"] = build_digest.clone().into();
    std::fs::write(&path, serde_json::to_vec_pretty(&old).unwrap()).unwrap();
    assert_eq!(dry_run()["old_digest"], build_digest.as_str());
    let rootfs = image_dir(&w, &vm).join("rootfs");
    let before = identity(&rootfs);
    let again = w.ctl(&[
        "firecracker",
        "--user",
        "pull",
        "--name",
        &vm,
        "--oci",
        &remote,
        "--kernel-oci",
        &kernel_remote,
    ]);
    assert!(again.success().stdout().contains("up to date"), "{again}");
    assert_eq!(identity(&rootfs), before, "not rebuilt: {again}");
    assert_eq!(record(&w, &vm)["rootfs"]["digest"], served.as_str());
}
