// SPDX-License-Identifier: MIT
//! Configuration building, and its acceptance by the real Firecracker binary when the
//! fixtures and `/dev/kvm` are there.

use flakes::config::vm::{VmRuntime, Vmm};
use flakes::config::{LaunchMode, Target};

use super::*;

pub(crate) fn flake(network: bool, kernel: PathBuf, rootfs: PathBuf) -> VmFlake {
    VmFlake {
        image: "leap".into(),
        target: Target::Program("/bin/sh".into()),
        host_app_path: None,
        runtime: VmRuntime {
            mode: LaunchMode::OneShot,
            force_vsock: false,
            vmm: Vmm::Firecracker,
            network,
            idle_timeout: None,
            boot_args: vec!["console=ttyS0".into(), "quiet".into()],
            overlay_size: None,
            rootfs,
            kernel,
            initrd: None,
            mem_size_mib: 128,
            vcpu_count: 1,
            cache_type: CacheType::Unsafe,
        },
    }
}

fn paths(dir: &Path, overlay: bool) -> InstancePaths {
    InstancePaths {
        overlay: overlay.then(|| dir.join("overlay.ext4")),
        vsock: dir.join("vsock.sock"),
        log: dir.join("vmm.log"),
        tap: Some("tap-leap".into()),
    }
}

#[test]
fn json_follows_the_flake() {
    let dir = tempfile::tempdir().unwrap();
    let f = flake(false, "/k".into(), "/r".into());
    let config = VmmConfig::new(&f, &paths(dir.path(), true), &["sci_resume=1".into()]);
    let json: serde_json::Value = serde_json::to_value(&config).unwrap();
    assert_eq!(
        json["boot-source"]["boot_args"],
        "console=ttyS0 quiet sci_resume=1"
    );
    assert!(json["boot-source"].get("initrd_path").is_none());
    assert_eq!(json["drives"][0]["is_read_only"], true);
    assert_eq!(json["drives"][1]["drive_id"], "overlay");
    assert_eq!(json["drives"][1]["cache_type"], "Unsafe");
    assert!(
        json.get("network-interfaces").is_none(),
        "no network means no device at all"
    );
    assert_eq!(json["vsock"]["guest_cid"], 3);
    assert_eq!(json["machine-config"]["mem_size_mib"], 128);
    let with_net = VmmConfig::new(
        &flake(true, "/k".into(), "/r".into()),
        &paths(dir.path(), false),
        &[],
    );
    assert_eq!(with_net.network[0].host_dev_name, "tap-leap");
    assert_eq!(with_net.drives.len(), 1);
}

/// The fixture directory, when the VM fixtures and a usable /dev/kvm are present.
fn firecracker_fixtures() -> Option<PathBuf> {
    let required = std::env::var("FLAKE_TEST_REQUIRE_VM").is_ok_and(|v| v == "1");
    let Some(dir) = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from) else {
        assert!(!required, "FLAKE_VM_FIXTURES must name the VM fixtures");
        eprintln!("SKIP: needs FLAKE_VM_FIXTURES");
        return None;
    };
    let fixtures = dir.join("bin/firecracker").is_file() && dir.join("kernel/vmlinux").is_file();
    assert!(
        fixtures || !required,
        "VM fixtures missing in {}",
        dir.display()
    );
    let usable = fixtures
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
    if !usable {
        eprintln!("SKIP: needs FLAKE_VM_FIXTURES with firecracker and a usable /dev/kvm");
    }
    usable.then_some(dir)
}

#[test]
fn real_firecracker_accepts_the_config_and_opens_the_vsock() {
    let Some(fixtures) = firecracker_fixtures() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let overlay = dir.path().join("overlay.ext4");
    std::fs::write(&overlay, vec![0u8; 1 << 20]).unwrap();
    let mut p = paths(dir.path(), true);
    p.tap = None;
    std::fs::write(&p.log, "").unwrap();
    let f = flake(
        false,
        fixtures.join("kernel/vmlinux"),
        fixtures.join("rootfs.ext4"),
    );
    let config_path = dir.path().join("vm.json");
    VmmConfig::new(&f, &p, &[]).write(&config_path).unwrap();
    let mut vmm = std::process::Command::new(fixtures.join("bin/firecracker"))
        .arg("--no-api")
        .arg("--config-file")
        .arg(&config_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !p.vsock.exists() {
        if let Ok(Some(status)) = vmm.try_wait() {
            let out = vmm.wait_with_output().unwrap();
            panic!(
                "firecracker exited {status}: {out:?} log: {}",
                std::fs::read_to_string(&p.log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no vsock socket appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        vmm.try_wait().unwrap().is_none(),
        "the VM runs after InstanceStart"
    );
    vmm.kill().unwrap();
    vmm.wait().unwrap();
}
