// SPDX-License-Identifier: MIT
//! Properties of the flake file over generated documents: whatever `flake-ctl` can write
//! (any string an option takes, any number) reads back as the same document, and a section
//! moved into a `NAME.d` fragment merges back to the same document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;

use super::check::check_flake;
use super::load::{load_flake, parse_raw};
use super::raw::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        // Strings YAML would read as something else when written bare.
        prop::sample::select(vec![
            "~",
            "null",
            "true",
            "no",
            "0x1f",
            "1e3",
            "-",
            "- a",
            ": x",
            "#x",
            "'",
            "\"",
            "",
            " lead",
            "trail ",
            "a: b",
            "[x]",
            "{x}",
            "&a",
            "*a",
            "!tag",
            "%x",
            "@x",
            "`x",
            "---",
            "...",
            "\t",
            "\n",
            "line\nbreak",
            "\u{feff}bom",
            "1048576",
        ])
        .prop_map(String::from),
    ]
}

fn texts() -> impl Strategy<Value = Option<Vec<String>>> {
    of(vec(text(), 0..4))
}

fn include() -> BoxedStrategy<RawInclude> {
    (texts(), texts())
        .prop_map(|(tar, path)| RawInclude { tar, path })
        .boxed()
}

fn container() -> BoxedStrategy<RawContainer> {
    let runtime = (of(text()), of(any::<bool>()), of(any::<bool>()), texts())
        .prop_map(|(runas, resume, attach, podman)| RawRuntime {
            runas,
            resume,
            attach,
            podman,
        })
        .boxed();
    (
        (of(text()), of(text()), of(text()), of(text())),
        (of(any::<bool>()), of(any::<bool>()), texts(), of(runtime)),
    )
        .prop_map(
            |(
                (name, target_app_path, host_app_path, base_container),
                (check_host_dependencies, execute_systemfiles, layers, runtime),
            )| RawContainer {
                name,
                target_app_path,
                host_app_path,
                base_container,
                check_host_dependencies,
                execute_systemfiles,
                layers,
                runtime,
            },
        )
        .boxed()
}

fn size() -> impl Strategy<Value = RawSize> {
    prop_oneof![
        any::<u64>().prop_map(RawSize::Bytes),
        text().prop_map(RawSize::Text)
    ]
}

fn firecracker() -> BoxedStrategy<RawFirecracker> {
    (
        (texts(), of(size()), of(text()), of(text())),
        (of(text()), of(any::<u32>()), of(any::<u8>()), of(text())),
    )
        .prop_map(
            |(
                (boot_args, overlay_size, rootfs_image_path, kernel_image_path),
                (initrd_path, mem_size_mib, vcpu_count, cache_type),
            )| RawFirecracker {
                boot_args,
                overlay_size,
                rootfs_image_path,
                kernel_image_path,
                initrd_path,
                mem_size_mib,
                vcpu_count,
                cache_type,
            },
        )
        .boxed()
}

fn vm() -> BoxedStrategy<RawVm> {
    let runtime = (
        (of(text()), of(any::<bool>()), of(any::<bool>()), of(text())),
        (of(any::<bool>()), of(any::<u64>()), of(firecracker())),
    )
        .prop_map(
            |((runas, resume, force_vsock, vmm), (network, idle_timeout, firecracker))| {
                RawVmRuntime {
                    runas,
                    resume,
                    force_vsock,
                    vmm,
                    network,
                    idle_timeout,
                    firecracker,
                }
            },
        )
        .boxed();
    (
        (of(text()), of(text()), of(text())),
        (of(text()), texts(), of(runtime)),
    )
        .prop_map(
            |((name, target_app_path, host_app_path), (base_vm, layers, runtime))| RawVm {
                name,
                target_app_path,
                host_app_path,
                base_vm,
                layers,
                runtime,
            },
        )
        .boxed()
}

fn flake() -> impl Strategy<Value = RawFlake> {
    (of(include()), of(container()), of(vm())).prop_map(|(include, container, vm)| RawFlake {
        include,
        container,
        vm,
    })
}

/// The text of a registration, as `flake-ctl` writes it.
fn written(raw: &RawFlake) -> String {
    format!("---\n{}", yaml_serde::to_string(raw).unwrap())
}

fn main_file() -> &'static Path {
    Path::new("/flakes/app.yaml")
}

proptest! {
    #[test]
    fn a_written_flake_reads_back_the_same(raw in flake()) {
        let text = written(&raw);
        let read = parse_raw(main_file(), &text, &[]);
        prop_assert_eq!(read.as_ref().ok(), Some(&raw), "written as:\n{}\n{:?}", text, read);
    }

    #[test]
    fn the_check_accepts_exactly_what_the_launcher_loads(raw in flake(), fragment in flake()) {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("app.yaml");
        std::fs::write(&main, written(&raw)).unwrap();
        std::fs::create_dir(dir.path().join("app.d")).unwrap();
        std::fs::write(dir.path().join("app.d/10.yaml"), written(&fragment)).unwrap();
        let name = crate::names::FlakeName::new("app").unwrap();
        let checked = check_flake(name.clone(), &main);
        let loaded = load_flake(name, &main);
        prop_assert_eq!(checked.problems.is_empty(), loaded.is_ok(), "{:?}", checked.problems);
        prop_assert_eq!(checked.flake, loaded.ok());
    }

    #[test]
    fn a_section_moved_to_a_fragment_merges_back(raw in flake()) {
        let main = RawFlake { container: None, ..raw.clone() };
        let fragment = BTreeMap::from([("container", &raw.container)]);
        let fragment = (
            PathBuf::from("/flakes/app.d/10-container.yaml"),
            yaml_serde::to_string(&fragment).unwrap(),
        );
        let merged = parse_raw(main_file(), &written(&main), &[fragment]).unwrap();
        prop_assert_eq!(merged, raw);
    }
}
