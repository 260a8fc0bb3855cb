// SPDX-License-Identifier: MIT
//! Admin defaults for new registrations: `container-flake.yaml` and `firecracker-flake.yaml`
//! in the template directory (`FLAKES_TEMPLATE_DIR`, the world's own here) are the base that
//! `register` fills in. What they may set lands in the flake, flags win, anything else fails
//! the registration with the template's file and line before a file is written, and without a
//! template the output is what it always was.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::PathBuf;

use util::{unique, World, IMAGE};

/// Writes template `file` (`container-flake.yaml` or `firecracker-flake.yaml`).
fn template(w: &World, file: &str, text: &str) -> PathBuf {
    let dir = w.path("templates");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// A pulled-looking VM image in the user's registry.
fn fake_image(w: &World, name: &str) {
    let dir = w.home.join(".config/flakes/firecracker/images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["rootfs", "kernel"] {
        std::fs::write(dir.join(file), file).unwrap();
    }
}

fn register_container(w: &World, app: &str, extra: &[&str]) -> util::Run {
    let app = w.bin.join(app).display().to_string();
    let mut args = vec!["podman", "register", "--container", IMAGE, "--app", &app];
    args.extend(["--target", "/bin/sh"]);
    args.extend_from_slice(extra);
    w.ctl(&args)
}

fn register_vm(w: &World, app: &str, extra: &[&str]) -> util::Run {
    let app = w.bin.join(app).display().to_string();
    let mut args = vec!["firecracker", "--user", "register", "--vm", "leap"];
    args.extend(["--app", &app]);
    args.extend_from_slice(extra);
    w.ctl(&args)
}

fn container_yaml(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.flakes.join(format!("{name}.yaml"))).unwrap()
}

fn vm_yaml(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.home.join(".config/flakes").join(format!("{name}.yaml"))).unwrap()
}

const CONTAINER_TEMPLATE: &str = "\
# site defaults
container:
  runtime:
    podman:
      - --env TEMPLATE_MARK=from-template
      - --network none
";

#[test]
fn container_template_options_land_in_the_flake_and_reach_podman() {
    let w = World::new();
    template(&w, "container-flake.yaml", CONTAINER_TEMPLATE);
    let name = unique("tpl-env");
    register_container(&w, &name, &[]).success();
    let yaml = container_yaml(&w, &name);
    assert!(
        yaml.contains(
            "    podman:\n    - --env TEMPLATE_MARK=from-template\n    - --network none\n"
        ),
        "{yaml}"
    );
    // The option is honoured by the real engine, not only written.
    if !util::podman_ready() {
        return;
    }
    let run = w.app(&w.bin.join(&name), &["-c", "echo $TEMPLATE_MARK"], None);
    run.success();
    assert_eq!(run.stdout(), "from-template\n", "{run}");
}

#[test]
fn opt_flags_win_over_the_container_template() {
    let w = World::new();
    template(&w, "container-flake.yaml", CONTAINER_TEMPLATE);
    register_container(&w, "own", &["--opt", r"\--rm"]).success();
    let yaml = container_yaml(&w, "own");
    assert!(yaml.contains("    podman:\n    - --rm\n"), "{yaml}");
    assert!(!yaml.contains("TEMPLATE_MARK"), "{yaml}");
}

const VM_TEMPLATE: &str = "\
vm:
  runtime:
    firecracker:
      boot_args: [init=/usr/sbin/sci, console=ttyS0, root=/dev/vda, rd.neednet=1, ip=dhcp, loglevel=3]
      overlay_size: 1GiB
      mem_size_mib: 512
      vcpu_count: 1
      cache_type: Unsafe
";

#[test]
fn vm_template_sets_memory_cpus_and_boot_args() {
    let w = World::new();
    fake_image(&w, "leap");
    template(&w, "firecracker-flake.yaml", VM_TEMPLATE);
    register_vm(&w, "small", &[]).success();
    let yaml = vm_yaml(&w, "small");
    for want in [
        "      mem_size_mib: 512\n",
        "      vcpu_count: 1\n",
        "      cache_type: Unsafe\n",
        "      overlay_size: 1GiB\n",
        "      - ip=dhcp\n      - loglevel=3\n",
    ] {
        assert!(yaml.contains(want), "missing {want:?} in\n{yaml}");
    }
}

#[test]
fn vm_flags_win_over_the_template() {
    let w = World::new();
    fake_image(&w, "leap");
    template(&w, "firecracker-flake.yaml", VM_TEMPLATE);
    register_vm(
        &w,
        "big",
        &["--overlay-size", "2GiB", "--no-net", "--resume"],
    )
    .success();
    let yaml = vm_yaml(&w, "big");
    assert!(yaml.contains("      overlay_size: 2GiB\n"), "{yaml}");
    assert!(
        !yaml.contains("ip=dhcp") && !yaml.contains("rd.neednet"),
        "{yaml}"
    );
    assert!(
        yaml.contains("      - loglevel=3\n      - sci_resume=1\n"),
        "{yaml}"
    );
    assert!(yaml.contains("      mem_size_mib: 512\n"), "{yaml}");
}

/// Each broken template fails `register` naming the file and line, and leaves the world as
/// it was: no app link, no flake file, no `NAME.d`.
#[test]
fn broken_templates_fail_with_file_and_line_and_write_nothing() {
    let cases: [(&str, &str, &str); 6] = [
        // Unknown key (a typo).
        (
            "container-flake.yaml",
            "container:\n  runtime:\n    podmn: [--rm]\n",
            ":3: ",
        ),
        // A key that identifies one flake, not a site default.
        (
            "container-flake.yaml",
            "container:\n  runtime:\n    podman: [--rm]\n  name: docker.io/evil\n",
            ":4: key container.name may not be set in a template",
        ),
        // Who the flake runs as is never a template's choice.
        (
            "container-flake.yaml",
            "container:\n  runtime:\n    runas: root\n",
            ":3: key container.runtime.runas may not be set",
        ),
        // Broken YAML.
        ("container-flake.yaml", "container:\n  runtime: [\n", ":"),
        // The other engine's section.
        (
            "firecracker-flake.yaml",
            "vm:\n  runtime:\n    firecracker:\n      rootfs_image_path: /tmp/other\n",
            ":4: key vm.runtime.firecracker.rootfs_image_path may not be set",
        ),
        // A value the launcher would refuse.
        (
            "firecracker-flake.yaml",
            "vm:\n  runtime:\n    firecracker:\n      vcpu_count: 0\n",
            ":4: vm.runtime.firecracker.vcpu_count 0 must be between 1 and 32",
        ),
    ];
    for (file, text, want) in cases {
        let w = World::new();
        fake_image(&w, "leap");
        let path = template(&w, file, text);
        let before = w.tree();
        let run = if file.starts_with("container") {
            register_container(&w, "app", &[])
        } else {
            register_vm(&w, "app", &[])
        };
        run.expect_code(1);
        let err = run.stderr();
        let at = format!("template {}{want}", path.display());
        assert!(err.contains(&at), "want {at:?} for {text:?}, got: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert_eq!(w.tree(), before, "something was written for {text:?}");
    }
}

/// Without a template, or with one that sets nothing, the flake is exactly what register
/// wrote before templates existed.
#[test]
fn no_template_keeps_todays_output_byte_for_byte() {
    let w = World::new();
    fake_image(&w, "leap");
    register_container(&w, "plain", &["--opt", r"\--rm"]).success();
    register_vm(&w, "plainvm", &[]).success();
    let app = w.bin.join("plain").display().to_string();
    let want = format!(
        "---\ninclude:\n  tar: null\n  path: null\ncontainer:\n  name: {IMAGE}\n  \
         target_app_path: /bin/sh\n  host_app_path: {app}\n  base_container: null\n  \
         check_host_dependencies: false\n  layers: null\n  runtime:\n    runas: root\n    \
         resume: false\n    attach: false\n    podman:\n    - --rm\nvm: null\n"
    );
    assert_eq!(container_yaml(&w, "plain"), want);
    let plain_vm = vm_yaml(&w, "plainvm");

    let empty = World::new();
    fake_image(&empty, "leap");
    template(
        &empty,
        "container-flake.yaml",
        "# nothing set\ncontainer: ~\n",
    );
    template(&empty, "firecracker-flake.yaml", "vm:\n  runtime: ~\n");
    register_container(&empty, "plain", &["--opt", r"\--rm"]).success();
    register_vm(&empty, "plainvm", &[]).success();
    let app = empty.bin.join("plain").display().to_string();
    let want = want.replace(&w.bin.join("plain").display().to_string(), &app);
    assert_eq!(container_yaml(&empty, "plain"), want);
    let vm_app = |w: &World| w.bin.join("plainvm").display().to_string();
    let images = |w: &World| w.home.display().to_string();
    assert_eq!(
        vm_yaml(&empty, "plainvm"),
        plain_vm
            .replace(&vm_app(&w), &vm_app(&empty))
            .replace(&images(&w), &images(&empty))
    );
}

/// The commented examples under `packaging/templates/`.
fn example(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packaging/templates")
        .join(file);
    std::fs::read_to_string(path).unwrap()
}

/// The example with its settings uncommented: lines starting with `#` directly followed by
/// YAML (not `# ` prose) lose the `#`.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => rest,
            Some(rest) if rest.starts_with("  ") => rest,
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// As shipped, the examples set nothing; uncommented, every setting they show is accepted
/// and lands in the flake.
#[test]
fn the_shipped_examples_are_valid_templates() {
    let w = World::new();
    fake_image(&w, "leap");
    template(&w, "container-flake.yaml", &example("container-flake.yaml"));
    template(
        &w,
        "firecracker-flake.yaml",
        &example("firecracker-flake.yaml"),
    );
    register_container(&w, "shipped", &[]).success();
    register_vm(&w, "shippedvm", &[]).success();
    assert!(container_yaml(&w, "shipped").contains("    podman: null\n"));
    assert!(vm_yaml(&w, "shippedvm").contains("      mem_size_mib: 4096\n"));

    let w = World::new();
    fake_image(&w, "leap");
    let container = uncommented(&example("container-flake.yaml"));
    let vm = uncommented(&example("firecracker-flake.yaml"));
    template(&w, "container-flake.yaml", &container);
    template(&w, "firecracker-flake.yaml", &vm);
    register_container(&w, "set", &[]).success();
    register_vm(&w, "setvm", &[]).success();
    let yaml = container_yaml(&w, "set");
    assert!(
        yaml.contains("    - --pids-limit 512\n"),
        "{container}\n{yaml}"
    );
    let yaml = vm_yaml(&w, "setvm");
    for want in [
        "mem_size_mib: 1024\n",
        "vcpu_count: 1\n",
        "overlay_size: 4GiB\n",
    ] {
        assert!(yaml.contains(want), "missing {want:?}:\n{vm}\n{yaml}");
    }
}

/// A real guest gets the memory and CPUs the template set (QEMU, the VM fixtures).
#[test]
fn a_guest_boots_with_the_templates_memory_and_cpus() {
    let Some((_vms, w, fixtures, sci)) = util::vm::vm_world() else {
        return;
    };
    let text = "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 192\n      vcpu_count: 2\n";
    template(&w, "firecracker-flake.yaml", text);
    let app = util::vm::vm_flake(&w, &fixtures, &sci, "tplvm");
    // The helper's fragment shrinks every test VM; this one runs as registered.
    std::fs::remove_file(w.home.join(".config/flakes/tplvm.d/small.yaml")).unwrap();
    let yaml = vm_yaml(&w, "tplvm");
    assert!(yaml.contains("      mem_size_mib: 192\n"), "{yaml}");
    let script = "head -1 /proc/meminfo; cat /sys/devices/system/cpu/online";
    let run = w.app(&app, &["-c", script], None);
    run.success();
    let out = run.stdout();
    let kib: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {run}"));
    assert!(
        (100 * 1024..=192 * 1024).contains(&kib),
        "MemTotal {kib} kB for 192 MiB: {run}"
    );
    assert!(out.ends_with("0-1\n"), "two CPUs online: {run}");
}

/// A template someone else could have written is refused, before anything is written: its
/// options would go into flakes that run as root.
#[test]
fn a_template_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    if !util::is_root() {
        util::note_skip("needs root to hand a template to another user");
        return;
    }
    let w = World::new();
    let path = template(&w, "container-flake.yaml", CONTAINER_TEMPLATE);
    let before = w.tree();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let run = register_container(&w, "app", &[]);
    run.expect_code(1);
    assert!(
        run.stderr()
            .contains("is writable by others (mode 666); run chmod go-w"),
        "{run}"
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&path, Some(65534), None).unwrap();
    let run = register_container(&w, "app", &[]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("is owned by uid 65534, not root"),
        "{run}"
    );
    assert_eq!(w.tree(), before, "a refused template wrote something");
    std::os::unix::fs::chown(&path, Some(0), None).unwrap();
    let dir = w.path("templates");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = register_container(&w, "app", &[]);
    run.expect_code(1);
    let want = format!(
        "template dir {} is writable by others (mode 777)",
        dir.display()
    );
    assert!(run.stderr().contains(&want), "{run}");
    assert_eq!(w.tree(), before, "a refused template wrote something");
    // Sticky, as /tmp: others cannot replace root's file there.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    register_container(&w, "app", &[]).success();
    assert!(container_yaml(&w, "app").contains("TEMPLATE_MARK"));
}

/// Every key a template may set (the lists in `src/template.rs`) is in flakes(5) and in the
/// example that ships for it.
#[test]
fn every_template_key_is_documented() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let source = std::fs::read_to_string(root.join("src/template.rs")).unwrap();
    let page = std::fs::read_to_string(root.join("../../man/flakes.5")).unwrap();
    let page = page.split(".SH REGISTRATION TEMPLATES").nth(1).unwrap();
    let lists = source.split("#[cfg(test)]").next().unwrap();
    let keys: Vec<&str> = lists
        .split('"')
        .filter(|s| s.starts_with("container.") || s.starts_with("vm."))
        .collect();
    assert!(keys.len() >= 6, "{keys:?}");
    for key in keys {
        assert!(page.contains(key), "flakes(5) lacks template key {key}");
        let (file, leaf) = match key.split_once('.') {
            Some(("container", _)) => ("container-flake.yaml", key.rsplit('.').next()),
            _ => ("firecracker-flake.yaml", key.rsplit('.').next()),
        };
        let leaf = format!("{}:", leaf.unwrap());
        assert!(example(file).contains(&leaf), "{file} lacks {leaf}");
    }
}
