// SPDX-License-Identifier: MIT
//! Table-style tests of loading, merging and validation against real files.

use std::path::{Path, PathBuf};

use super::*;

/// A container flake exactly as flake-ctl 3.1.x writes it (upstream-behaviour §2.4).
const ORIGINAL: &str = r#"---
include:
  tar: ~
  path: ~
container:
  name: docker.io/amazon/aws-cli
  target_app_path: /
  host_app_path: /usr/bin/aws
  base_container: ~
  check_host_dependencies: false
  layers: ~
  runtime:
    runas: root
    resume: false
    attach: false
    podman:
      - "-ti"
vm: ~
"#;

struct Files(tempfile::TempDir);

impl Files {
    fn new(main: &str) -> Self {
        let files = Files(tempfile::tempdir().unwrap());
        files.put("app.yaml", main);
        files
    }
    fn put(&self, rel: &str, text: &str) -> &Self {
        let path = self.0.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }
    fn main(&self) -> PathBuf {
        self.0.path().join("app.yaml")
    }
    fn load(&self) -> Result<Flake> {
        load_flake(FlakeName::new("app").unwrap(), &self.main())
    }
    fn container(&self) -> ContainerFlake {
        match self.load().unwrap().engine {
            Engine::Container(c) => c,
            Engine::Vm(_) => panic!("not a container flake"),
        }
    }
}

#[test]
fn original_flake_ctl_yaml_loads_unchanged() {
    let files = Files::new(ORIGINAL);
    let flake = files.load().unwrap();
    assert_eq!(flake.include, Include::default());
    let Engine::Container(c) = flake.engine else {
        panic!("engine")
    };
    assert_eq!(c.image, "docker.io/amazon/aws-cli");
    assert_eq!(c.target, Target::ImageEntrypoint);
    assert_eq!(c.host_app_path.as_deref(), Some(Path::new("/usr/bin/aws")));
    assert_eq!(c.base, None);
    assert!(c.layers.is_empty() && !c.check_host_dependencies);
    assert_eq!(c.runtime.runas, RunAs::Root);
    assert_eq!(c.runtime.mode, LaunchMode::OneShot);
    assert_eq!(c.runtime.podman, ["-ti"]);
}

#[test]
fn minimal_flake_without_optional_sections_loads() {
    // The original pilot panicked on a missing `include` or `check_host_dependencies`.
    let c = Files::new("container:\n  name: img\n").container();
    assert_eq!(c.target, Target::FlakeName);
    assert_eq!(c.runtime.runas, RunAs::Caller(None));
}

#[test]
fn every_key_is_read() {
    let text = r#"
include: {tar: [/a.tar], path: [/etc/hosts]}
container:
  name: delta
  target_app_path: /usr/bin/joe
  host_app_path: /usr/bin/joe
  base_container: base
  check_host_dependencies: true
  layers: [l1, l2]
  runtime: {runas: alice, resume: true, attach: false, podman: ["--net host"]}
vm: ~
"#;
    let files = Files::new(text);
    let flake = files.load().unwrap();
    assert_eq!(flake.include.tar, [PathBuf::from("/a.tar")]);
    assert_eq!(flake.include.path, [PathBuf::from("/etc/hosts")]);
    let c = files.container();
    assert_eq!(c.target, Target::Program("/usr/bin/joe".into()));
    assert_eq!(c.base.as_deref(), Some("base"));
    assert_eq!(c.layers, ["l1", "l2"]);
    assert!(c.check_host_dependencies);
    assert_eq!(c.runtime.runas, RunAs::Caller(Some("alice".into())));
    assert_eq!(c.runtime.mode, LaunchMode::Resume);
    assert!(c.needs_provisioning(&flake.include));
}

#[test]
fn fragments_deep_merge_in_file_name_order() {
    let files = Files::new(ORIGINAL);
    files
        .put(
            "app.d/20-b.yaml",
            "container: {runtime: {podman: ['--net host']}}",
        )
        .put(
            "app.d/10-a.yaml",
            "container: {runtime: {resume: true, podman: ['-x']}}",
        )
        .put("app.d/30-c.yml", "include: {tar: [/x.tar]}")
        .put("app.d/README", "not yaml: [")
        .put("app.d/old.yaml~", "container: {name: ignored}");
    let flake = files.load().unwrap();
    let Engine::Container(c) = flake.engine else {
        panic!("engine")
    };
    assert_eq!(
        c.image, "docker.io/amazon/aws-cli",
        "untouched keys survive"
    );
    assert_eq!(c.runtime.mode, LaunchMode::Resume);
    assert_eq!(
        c.runtime.podman,
        ["--net host"],
        "later fragment wins, lists replace"
    );
    assert_eq!(flake.include.tar, [PathBuf::from("/x.tar")]);
}

#[test]
fn fragment_starting_with_document_marker_applies() {
    let files = Files::new(ORIGINAL);
    files.put("app.d/a.yaml", "---\ncontainer:\n  name: other\n");
    assert_eq!(files.container().image, "other");
}

#[test]
fn errors_name_the_file_and_key_on_one_line() {
    type Case<'a> = (&'a str, Option<(&'a str, &'a str)>, &'a [&'a str]);
    let cases: &[Case] = &[
        ("container: [", None, &["app.yaml"]),
        (
            "container:\n  name: a\n  runtim: {}\n",
            None,
            &["app.yaml", "runtim"],
        ),
        (
            ORIGINAL,
            Some(("app.d/x.yaml", "container:\n  nmae: b\n")),
            &["x.yaml", "nmae"],
        ),
        (
            ORIGINAL,
            Some(("app.d/x.yaml", "container: {layers: 3}\n")),
            &["x.yaml", "layers"],
        ),
        (
            "container:\n  target_app_path: /x\n",
            None,
            &["app.yaml", "container.name"],
        ),
        (
            "container: {name: a, layers: [l]}",
            None,
            &["container.base_container"],
        ),
        (
            "container: {name: a, target_app_path: rel}",
            None,
            &["absolute"],
        ),
        (
            "container: {name: a, runtime: {resume: true, attach: true}}",
            None,
            &["resume"],
        ),
        (
            "container: {name: a, execute_systemfiles: true}",
            None,
            &["check_host_dependencies"],
        ),
        (
            "container: {name: '--privileged'}",
            None,
            &["app.yaml", "container.name", "--privileged", "'-'"],
        ),
        (
            "container: {name: a, base_container: '-v'}",
            None,
            &["container.base_container", "'-v'"],
        ),
        (
            "container: {name: a, base_container: b, layers: [ok, 'Bad Name']}",
            None,
            &["container.layers entry 2", "Bad Name"],
        ),
        (
            "include: {tar: [rel.tar]}\ncontainer: {name: a}",
            None,
            &["include.tar"],
        ),
        ("container: {name: a}\nvm: {name: b}", None, &["both"]),
        ("include: ~\n", None, &["neither"]),
        ("", None, &["neither"]),
        ("top: 1\n", None, &["top"]),
    ];
    for (main, fragment, needles) in cases {
        let files = Files::new(main);
        if let Some((rel, text)) = fragment {
            files.put(rel, text);
        }
        let err = files.load().unwrap_err().to_string();
        assert!(!err.contains('\n'), "one line: {err}");
        for needle in *needles {
            assert!(err.contains(needle), "{main:?}: '{err}' lacks '{needle}'");
        }
    }
}

#[test]
fn missing_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_flake(FlakeName::new("x").unwrap(), &dir.path().join("x.yaml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
}

/// A VM flake as flake-ctl 3.1 writes it (upstream-behaviour §2.5).
const ORIGINAL_VM: &str = r#"---
include:
  tar: ~
  path: ~
container: ~
vm:
  name: leap
  target_app_path: /bin/bash
  host_app_path: /usr/bin/mybash
  base_vm: ~
  layers: ~
  runtime:
    runas: root
    resume: false
    force_vsock: false
    firecracker:
      boot_args:
        - init=/usr/sbin/sci
        - console=ttyS0
        - root=/dev/vda
        - acpi=off
        - rd.neednet=1
        - ip=dhcp
        - quiet
      overlay_size: 20GiB
      rootfs_image_path: /var/lib/firecracker/images/leap/rootfs
      kernel_image_path: /var/lib/firecracker/images/leap/kernel
      initrd_path: ~
      mem_size_mib: 4096
      vcpu_count: 2
      cache_type: Writeback
"#;

fn vm(files: &Files) -> vm::VmFlake {
    match files.load().unwrap().engine {
        Engine::Vm(vm) => vm,
        Engine::Container(_) => panic!("not a VM flake"),
    }
}

#[test]
fn original_vm_yaml_loads_unchanged() {
    let v = vm(&Files::new(ORIGINAL_VM));
    assert_eq!(v.image, "leap");
    assert_eq!(v.target, Target::Program("/bin/bash".into()));
    assert_eq!(v.runtime.mode, LaunchMode::OneShot);
    assert_eq!(v.runtime.vmm, vm::Vmm::Firecracker);
    assert!(v.runtime.network);
    assert_eq!(v.runtime.overlay_size.map(|s| s.bytes()), Some(20 << 30));
    assert_eq!(
        v.runtime.rootfs,
        PathBuf::from("/var/lib/firecracker/images/leap/rootfs")
    );
    assert_eq!(v.runtime.initrd, None);
    assert_eq!((v.runtime.mem_size_mib, v.runtime.vcpu_count), (4096, 2));
    assert_eq!(v.runtime.boot_args.len(), 7);
}

#[test]
fn vm_keys_and_spellings() {
    let with = |from: &str, to: &str| Files::new(&ORIGINAL_VM.replace(from, to));
    assert_eq!(
        vm(&with("overlay_size: 20GiB", "overlay_size: 20g"))
            .runtime
            .overlay_size
            .map(|s| s.bytes()),
        Some(20 << 30)
    );
    assert_eq!(
        vm(&with("overlay_size: 20GiB", "overlay_size: 1073741824"))
            .runtime
            .overlay_size
            .map(|s| s.bytes()),
        Some(1 << 30)
    );
    assert_eq!(
        vm(&with("overlay_size: 20GiB", "overlay_size: ~"))
            .runtime
            .overlay_size,
        None
    );
    assert_eq!(
        vm(&with(
            "force_vsock: false",
            "force_vsock: false\n    vmm: qemu"
        ))
        .runtime
        .vmm,
        vm::Vmm::Qemu
    );
    assert!(
        !vm(&with(
            "force_vsock: false",
            "force_vsock: false\n    network: false"
        ))
        .runtime
        .network
    );
    assert_eq!(
        vm(&with("resume: false", "resume: true")).runtime.mode,
        LaunchMode::Resume
    );
    assert_eq!(
        vm(&with("target_app_path: /bin/bash", "target_app_path: /")).target,
        Target::ImageEntrypoint
    );
    assert_eq!(
        vm(&with("target_app_path: /bin/bash", "target_app_path: ~")).target,
        Target::FlakeName
    );
    assert_eq!(
        vm(&with("cache_type: Writeback", "cache_type: Unsafe"))
            .runtime
            .cache_type,
        vm::CacheType::Unsafe
    );
}

#[test]
fn vm_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "overlay_size: 20GiB",
            "overlay_size: 20 gigs",
            "overlay_size",
        ),
        ("overlay_size: 20GiB", "overlay_size: 0", "overlay_size"),
        ("- quiet", "- 'quiet\" init=/bin/sh'", "boot_args"),
        ("- quiet", "- 'a b'", "boot_args"),
        (
            "force_vsock: false",
            "force_vsock: false\n    vmm: kvmtool",
            "vmm",
        ),
        (
            "cache_type: Writeback",
            "cache_type: writeback",
            "cache_type",
        ),
        ("vcpu_count: 2", "vcpu_count: 0", "vcpu_count"),
        (
            "rootfs_image_path: /var/lib/firecracker/images/leap/rootfs",
            "rootfs_image_path: rootfs",
            "rootfs_image_path",
        ),
        (
            "kernel_image_path: /var/lib/firecracker/images/leap/kernel",
            "kernel_image_path: ~",
            "kernel_image_path",
        ),
        ("  name: leap", "  name: ~", "vm.name"),
        (
            "target_app_path: /bin/bash",
            "target_app_path: bin/bash",
            "target_app_path",
        ),
        ("cache_type: Writeback", "cache_typ: Writeback", "cache_typ"),
    ];
    for (from, to, needle) in cases {
        let err = Files::new(&ORIGINAL_VM.replace(from, to))
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle) && !err.contains('\n'), "{to}: {err}");
    }
}

#[test]
fn the_check_reports_a_problem_in_every_file_with_its_line() {
    let files = Files::new("container:\n  name: img\n  runtim: {}\n");
    files.put("app.d/10.yaml", "container:\n  layers: one\n");
    files.put("app.d/20.yaml", "container:\n  name: ok\n");
    let checked = check::check_flake(FlakeName::new("app").unwrap(), &files.main());
    let got: Vec<(PathBuf, Option<usize>)> = checked
        .problems
        .iter()
        .map(|p| (p.file.clone(), p.line))
        .collect();
    let fragment = files.0.path().join("app.d/10.yaml");
    assert_eq!(got, [(files.main(), Some(3)), (fragment, Some(2))]);
    assert!(checked.flake.is_none());
    assert_eq!(checked.files.len(), 3);
}
