// SPDX-License-Identifier: MIT
//! `flake-ctl export` and `import` between two private flake worlds, as between two hosts:
//! a podman flake whose image copy exists only in the archive, a QEMU VM flake with its image
//! files, and archives that must be refused before anything changes (a corrupted member, a
//! conflict, member names that escape, links, unlisted members).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::vm::{vm_flake, vm_world};
use util::{unique, World, IMAGE};

/// A tag of the test image made for one test, removed again when dropped.
struct Tag(String);

impl Tag {
    fn new(label: &str) -> Self {
        let tag = format!("localhost/{}:latest", unique(label));
        podman(&["tag", IMAGE, &tag]);
        Tag(tag)
    }

    fn exists(&self) -> bool {
        Command::new("podman")
            .args(["image", "exists", &self.0])
            .status()
            .unwrap()
            .success()
    }

    fn remove(&self) {
        podman(&["rmi", &self.0]);
    }
}

impl Drop for Tag {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rmi", "--ignore", &self.0])
            .output();
    }
}

fn podman(args: &[&str]) {
    let out = Command::new("podman").args(args).output().unwrap();
    assert!(out.status.success(), "podman {args:?}: {out:?}");
}

/// Registers `name` in `w` on `image` running `/bin/false`; its fragment makes it echo.
fn echo_flake(w: &World, name: &str, image: &str) -> PathBuf {
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
        "/bin/false",
    ])
    .success();
    let fragment = w.flakes.join(format!("{name}.d/echo.yaml"));
    std::fs::write(fragment, "container:\n  target_app_path: /bin/echo\n").unwrap();
    app
}

/// Exports `names` of `w` into a file in `w` and returns it.
fn export(w: &World, names: &[&str], user: bool) -> PathBuf {
    let archive = w.path("flakes.tar");
    let archive_s = archive.display().to_string();
    let mut args = vec!["export"];
    if user {
        args.push("--user");
    }
    args.extend(names);
    args.extend(["-o", archive_s.as_str()]);
    w.ctl(&args).success();
    archive
}

/// Runs an import into `w` that must fail, and checks that `w` is unchanged.
fn import_fails(w: &World, archive: &Path, user: bool, expect: &str) {
    let before = w.tree();
    let archive = archive.display().to_string();
    let mut args = vec!["import", archive.as_str()];
    if user {
        args.push("--user");
    }
    let run = w.ctl(&args);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert!(run.stderr().contains(expect), "{}", run.stderr());
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
    assert_eq!(
        tree(w),
        tree_of(before),
        "a failed import changed the world"
    );
}

/// A world's files, without the registry's lock file: taking the lock creates it, and it
/// holds no state.
fn tree(w: &World) -> Vec<String> {
    tree_of(w.tree())
}

fn tree_of(paths: Vec<String>) -> Vec<String> {
    paths
        .into_iter()
        .filter(|p| !p.ends_with("/.registry.lock"))
        .collect()
}

#[test]
fn a_podman_flake_moves_with_its_image_and_fragments() {
    require_podman!();
    let tag = Tag::new("export-img");
    let (from, to) = (World::new(), World::new());
    let name = unique("exported");
    let app = echo_flake(&from, &name, &tag.0);
    let archive = export(&from, &[&name], false);
    // The source host goes away: no registration, no image copy left.
    from.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    tag.remove();

    to.ctl(&["import", &archive.display().to_string()])
        .success();
    assert!(tag.exists(), "the image was not loaded from the archive");
    assert!(to.flakes.join(format!("{name}.d/echo.yaml")).is_file());
    let target = std::fs::read_link(&app).unwrap();
    assert_eq!(target, util::bin_dir().join("podman-pilot"));
    let out = to.app(&app, &["hello", "from", "the", "archive"], None);
    out.success();
    assert_eq!(out.stdout(), "hello from the archive\n");
}

#[test]
fn a_corrupted_member_is_refused_and_nothing_is_imported() {
    require_podman!();
    let tag = Tag::new("export-bad");
    let (from, to) = (World::new(), World::new());
    let name = unique("corrupt");
    let app = echo_flake(&from, &name, &tag.0);
    let archive = export(&from, &[&name], false);
    from.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    tag.remove();
    // One byte of the flake's YAML changes; sizes stay, the checksum does not.
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = find(&bytes, b"/bin/false").expect("the YAML is in the archive");
    bytes[at + 5] = b'X';
    std::fs::write(&archive, &bytes).unwrap();

    import_fails(&to, &archive, false, "the archive is corrupt");
    assert!(!tag.exists(), "a refused archive loaded its image");
    assert!(!app.exists(), "a refused archive left an app symlink");
}

#[test]
fn a_conflict_is_refused_without_force_and_replaced_with_it() {
    require_podman!();
    let w = World::new();
    let name = unique("conflict");
    let app = echo_flake(&w, &name, IMAGE);
    let archive = export(&w, &[&name], false);
    // The same world already has the flake: a conflict, unless --force.
    std::fs::write(
        w.flakes.join(format!("{name}.d/echo.yaml")),
        "container: {}\n",
    )
    .unwrap();
    import_fails(&w, &archive, false, "pass --force");
    let out = w.app(&app, &["x"], None);
    assert_eq!(out.code(), 1, "the refused import changed the flake");

    w.ctl(&["import", "--force", &archive.display().to_string()])
        .success();
    let out = w.app(&app, &["replaced"], None);
    out.success();
    assert_eq!(out.stdout(), "replaced\n");
}

#[test]
fn a_failure_half_way_undoes_every_step_taken() {
    require_podman!();
    let tag = Tag::new("export-undo");
    let (from, to) = (World::new(), World::new());
    let (first, second) = (unique("undo-a"), unique("undo-b"));
    let apps = [
        echo_flake(&from, &first, &tag.0),
        echo_flake(&from, &second, &tag.0),
    ];
    let archive = export(&from, &[&first, &second], false);
    for app in &apps {
        from.ctl(&["podman", "remove", "--app", &app.display().to_string()])
            .success();
    }
    tag.remove();
    // The second flake's NAME.d cannot be created: its image is loaded and the first flake
    // registered by then, and both must be undone.
    std::fs::create_dir_all(&to.flakes).unwrap();
    std::fs::write(to.flakes.join(format!("{second}.d")), "not a directory").unwrap();

    import_fails(&to, &archive, false, &format!("{second}.d"));
    assert!(!tag.exists(), "the loaded image was left behind");
    assert!(
        !apps[0].exists(),
        "the first flake's app symlink was left behind"
    );
}

#[test]
fn a_failed_forced_import_puts_back_what_it_replaced() {
    require_podman!();
    let w = World::new();
    let (first, second) = (unique("keep-a"), unique("keep-b"));
    let app = echo_flake(&w, &first, IMAGE);
    let other = echo_flake(&w, &second, IMAGE);
    let archive = export(&w, &[&first, &second], false);
    w.ctl(&["podman", "remove", "--app", &other.display().to_string()])
        .success();
    let fragment = w.flakes.join(format!("{first}.d/echo.yaml"));
    std::fs::write(&fragment, "container: {}\n").unwrap();
    // The second flake's YAML cannot be renamed into place: the first flake is replaced by
    // then and must come back as it was.
    std::fs::create_dir_all(w.flakes.join(format!("{second}.yaml/keep"))).unwrap();
    let yaml = std::fs::read_to_string(w.flakes.join(format!("{first}.yaml"))).unwrap();
    let before = tree(&w);

    let run = w.ctl(&["import", "--force", &archive.display().to_string()]);
    assert_eq!(run.code(), 1, "{}", run.stderr());
    assert_eq!(tree(&w), before, "{}", run.stderr());
    assert_eq!(
        std::fs::read_to_string(&fragment).unwrap(),
        "container: {}\n"
    );
    let after = std::fs::read_to_string(w.flakes.join(format!("{first}.yaml"))).unwrap();
    assert_eq!(after, yaml);
    assert_eq!(
        w.app(&app, &["x"], None).code(),
        1,
        "the replaced flake changed"
    );
    assert!(!other.exists());
}

#[test]
fn a_vm_flake_moves_with_its_image_files() {
    let Some((_vms, from, fixtures, sci)) = vm_world() else {
        return;
    };
    let to = World::new();
    let name = unique("vmexp");
    let app = vm_flake(&from, &fixtures, &sci, &name);
    let archive = export(&from, &[&name], true);
    std::fs::remove_file(&app).unwrap();

    to.ctl(&["import", "--user", &archive.display().to_string()])
        .success();
    let image = to.home.join(".config/flakes/firecracker/images/guest");
    let source = from.home.join(".config/flakes/firecracker/images/guest");
    for file in ["rootfs", "kernel", "guest-channel"] {
        assert_eq!(
            std::fs::read(image.join(file)).unwrap(),
            std::fs::read(source.join(file)).unwrap(),
            "{file}"
        );
    }
    let yaml =
        std::fs::read_to_string(to.home.join(format!(".config/flakes/{name}.yaml"))).unwrap();
    assert!(
        yaml.contains(&image.join("rootfs").display().to_string()),
        "{yaml}"
    );
    assert!(to
        .home
        .join(format!(".config/flakes/{name}.d/small.yaml"))
        .is_file());
    let out = to.app(&app, &["-c", "echo imported guest"], None);
    out.success();
    assert_eq!(out.stdout().trim_end(), "imported guest");
    // The image exists in the target now: refused without --force, even for a free app path.
    std::fs::remove_file(&app).unwrap();
    import_fails(&to, &archive, true, "VM image 'guest' already exists");
}

#[test]
fn a_saved_image_carrying_other_tags_is_refused() {
    require_podman!();
    let (tag, extra) = (Tag::new("export-one"), Tag::new("export-extra"));
    let (from, to) = (World::new(), World::new());
    let name = unique("extra");
    let app = echo_flake(&from, &name, &tag.0);
    let archive = export(&from, &[&name], false);
    from.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    // The image member is swapped for one that also tags another image; the manifest's
    // checksums are made to match, as a crafted archive's would.
    let unpacked = from.path("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(untar.success());
    let image = unpacked.join("images/0.tar");
    std::fs::remove_file(&image).unwrap();
    podman(&[
        "save",
        "-m",
        "-o",
        &image.display().to_string(),
        &tag.0,
        &extra.0,
    ]);
    std::fs::write(&archive, resealed(&unpacked)).unwrap();
    tag.remove();
    extra.remove();

    import_fails(&to, &archive, false, "carries other images or tags");
    assert!(
        !tag.exists() && !extra.exists(),
        "a refused archive loaded an image"
    );
}

/// The archive of the members unpacked in `dir`, its manifest's sizes and checksums updated.
fn resealed(dir: &Path) -> Vec<u8> {
    let text = std::fs::read(dir.join("manifest.json")).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&text).unwrap();
    let names: Vec<String> = manifest["members"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let contents: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(dir.join(n)).unwrap())
        .collect();
    for (name, content) in names.iter().zip(&contents) {
        manifest["members"][name] =
            serde_json::json!({"size": content.len(), "sha256": sha256(content)});
    }
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let mut members: Vec<RawMember> = vec![("manifest.json", b'0', &manifest, "")];
    for (name, content) in names.iter().zip(&contents) {
        members.push((name, b'0', content, ""));
    }
    tar(&members)
}

/// Hand-made archives: only what the manifest names, as regular files with plain names.
#[test]
fn hostile_member_names_kinds_and_extras_are_refused() {
    let w = World::new();
    let yaml = b"container:\n  name: x\n  host_app_path: /usr/bin/x\n";
    let manifest = |member: &str| {
        format!(
            r#"{{"version":1,"flakes":[{{"name":"x","engine":"podman","app":"/usr/bin/x",
            "yaml":"{member}","fragments":{{}},"vm_image":null}}],"container_images":[],
            "members":{{"{member}":{{"size":{},"sha256":"{}"}}}}}}"#,
            yaml.len(),
            sha256(yaml)
        )
    };
    let (up, abs, plain) = (
        manifest("../x.yaml"),
        manifest("/tmp/x.yaml"),
        manifest("x.yaml"),
    );
    let cases: [(&str, Vec<RawMember>, &str); 5] = [
        (
            "traversal in the manifest",
            vec![
                ("manifest.json", b'0', up.as_bytes(), ""),
                ("../x.yaml", b'0', yaml, ""),
            ],
            "not a plain relative name",
        ),
        (
            "absolute in the manifest",
            vec![("manifest.json", b'0', abs.as_bytes(), "")],
            "not a plain relative name",
        ),
        (
            "traversal member not listed",
            vec![
                ("manifest.json", b'0', plain.as_bytes(), ""),
                ("x/../../escape", b'0', yaml, ""),
            ],
            "not a plain relative name",
        ),
        (
            "a symlink member",
            vec![
                ("manifest.json", b'0', plain.as_bytes(), ""),
                ("x.yaml", b'2', b"", "/etc/passwd"),
            ],
            "not a regular file",
        ),
        (
            "an unlisted member",
            vec![
                ("manifest.json", b'0', plain.as_bytes(), ""),
                ("x.yaml", b'0', yaml, ""),
                ("extra", b'0', yaml, ""),
            ],
            "not in the manifest",
        ),
    ];
    for (what, members, expect) in cases {
        let archive = w.path("hostile.tar");
        std::fs::write(&archive, tar(&members)).unwrap();
        eprintln!("case: {what}");
        import_fails(&w, &archive, false, expect);
    }
    assert!(!Path::new("/usr/bin/x").exists() || !w.flakes.join("x.yaml").exists());
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn sha256(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// One member of a hand-made archive: name, type flag, content, link target.
type RawMember<'a> = (&'a str, u8, &'a [u8], &'a str);

/// A ustar archive of [`RawMember`]s, written by hand so
/// that it can hold what no well-behaved tar writer makes.
fn tar(members: &[RawMember]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, content, link) in members {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000600\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = *kind;
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// The staging directories in `dir`.
fn stagings(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".flake-import.")
        })
        .collect();
    found.sort();
    found
}

/// Starts an import of a FIFO nobody writes: it stages, then waits on the archive forever.
fn blocked_import(w: &World, tmp: &Path, fifo: &Path) -> std::process::Child {
    let child = w
        .command(util::bin_dir().join("flake-ctl"))
        .env("TMPDIR", tmp)
        .args(["import", &fifo.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stagings(tmp).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the import never staged"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn what_an_import_killed_with_kill_9_staged_is_removed_by_the_next_one() {
    let w = World::new();
    let tmp = w.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let fifo = w.path("archive.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let missing = w.path("missing.tar").display().to_string();
    let next_import = || {
        let run = w
            .command(util::bin_dir().join("flake-ctl"))
            .env("TMPDIR", &tmp)
            .args(["import", &missing])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1));
    };

    // A running import keeps its staging while another import runs.
    let mut live = blocked_import(&w, &tmp, &fifo);
    let staged = stagings(&tmp);
    assert_eq!(staged.len(), 1);
    next_import();
    assert_eq!(
        stagings(&tmp),
        staged,
        "a running import's staging was removed"
    );

    // Killed, it cannot clean up; the next import does.
    live.kill().unwrap();
    live.wait().unwrap();
    assert_eq!(stagings(&tmp), staged, "kill -9 left nothing to collect");
    next_import();
    assert_eq!(stagings(&tmp), Vec::<PathBuf>::new(), "stale staging left");

    // A link under a staging name is never followed or removed through.
    let target = w.path("not-staging");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&target, tmp.join(".flake-import.1.2")).unwrap();
    next_import();
    assert!(target.join("keep").exists(), "a link was followed");
}
