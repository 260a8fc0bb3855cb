// SPDX-License-Identifier: MIT
//! `flake-ctl validate`, `flake-ctl completion` and the flake file schema, against real files
//! in a private flake world: clean flakes as flake-ctl 3.1 wrote them, each kind of problem
//! with the file (and line) it is in, exit codes and the JSON form.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};

use serde_json::Value;
use util::World;

/// A container flake exactly as flake-ctl 3.1.x writes it, on the test image.
fn original_container(image: &str) -> String {
    format!(
        r#"---
include:
  tar: ~
  path: ~
container:
  name: {image}
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
"#
    )
}

/// A VM flake as flake-ctl 3.1 writes it, its image files below `images`.
fn original_vm(images: &Path) -> String {
    let dir = images.join("leap");
    format!(
        r#"---
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
      rootfs_image_path: {rootfs}
      kernel_image_path: {kernel}
      initrd_path: ~
      mem_size_mib: 4096
      vcpu_count: 2
      cache_type: Writeback
"#,
        rootfs = dir.join("rootfs").display(),
        kernel = dir.join("kernel").display(),
    )
}

/// A world with the VM image files of [`original_vm`] in place.
fn vm_world() -> (World, PathBuf) {
    let world = World::new();
    let images = world.path("images");
    std::fs::create_dir_all(images.join("leap")).unwrap();
    for file in ["rootfs", "kernel"] {
        std::fs::write(images.join("leap").join(file), b"x").unwrap();
    }
    (world, images)
}

fn put(world: &World, rel: &str, text: &str) -> PathBuf {
    let path = world.flakes.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// `validate --format json ARGS`, its exit code and problems.
fn validate_json(world: &World, args: &[&str]) -> (i32, Vec<Value>) {
    let mut all = vec!["validate", "--format", "json"];
    all.extend(args);
    let run = world.ctl(&all);
    let problems: Value = serde_json::from_str(&run.stdout())
        .unwrap_or_else(|e| panic!("validate printed no JSON array ({e}):{run}"));
    (run.code(), problems.as_array().unwrap().clone())
}

/// The one problem of `problems`, with its keys checked.
fn only(problems: &[Value]) -> &Value {
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let problem = &problems[0];
    for key in ["file", "line", "flake", "problem"] {
        assert!(problem.get(key).is_some(), "no {key} in {problem}");
    }
    problem
}

#[test]
fn flakes_written_by_flake_ctl_3_1_validate_clean() {
    if !util::podman_ready() {
        return;
    }
    let (world, images) = vm_world();
    put(&world, "aws.yaml", &original_container(util::IMAGE));
    put(&world, "mybash.yaml", &original_vm(&images));
    let run = world.ctl(&["validate"]);
    run.success();
    assert!(run.stdout().contains("No problems found"), "{run}");
    let (code, problems) = validate_json(&world, &["aws", "mybash"]);
    assert_eq!((code, problems.len()), (0, 0), "{problems:#?}");
}

#[test]
fn an_unknown_key_is_reported_with_file_and_line() {
    let (world, images) = vm_world();
    let text = original_vm(&images).replace("    force_vsock: false", "    force_vsok: false");
    let file = put(&world, "typo.yaml", &text);
    let (code, problems) = validate_json(&world, &["typo"]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["file"], file.display().to_string());
    assert_eq!(problem["line"], 15, "{problem}");
    assert_eq!(problem["flake"], "typo");
    assert!(
        problem["problem"].as_str().unwrap().contains("force_vsok"),
        "{problem}"
    );
    // The table names the file and the line too.
    let run = world.ctl(&["validate", "typo"]);
    run.expect_code(1);
    let out = run.stdout();
    assert!(
        out.contains(&file.display().to_string()) && out.contains("line 15"),
        "{run}"
    );
}

#[test]
fn a_wrong_type_is_reported_with_its_line() {
    let (world, images) = vm_world();
    let text = original_vm(&images).replace("mem_size_mib: 4096", "mem_size_mib: lots");
    put(&world, "typed.yaml", &text);
    let (code, problems) = validate_json(&world, &[]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["line"], 29, "{problem}");
    assert!(
        problem["problem"]
            .as_str()
            .unwrap()
            .contains("mem_size_mib"),
        "{problem}"
    );
}

#[test]
fn a_bad_value_names_the_key_and_the_file() {
    let (world, images) = vm_world();
    let text = original_vm(&images).replace("cache_type: Writeback", "cache_type: Fast");
    let file = put(&world, "value.yaml", &text);
    let (code, problems) = validate_json(&world, &[]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["file"], file.display().to_string());
    assert_eq!(problem["line"], 31, "{problem}");
    assert!(
        problem["problem"].as_str().unwrap().contains("cache_type"),
        "{problem}"
    );
    // Set by a fragment, the value is reported where the fragment sets it.
    let fixed = original_vm(&images);
    put(&world, "value.yaml", &fixed);
    let fragment = put(
        &world,
        "value.d/50-vmm.yaml",
        "vm:\n  runtime:\n    vmm: kvm\n",
    );
    let (code, problems) = validate_json(&world, &[]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["file"], fragment.display().to_string());
    assert_eq!(problem["line"], 3, "{problem}");
}

#[test]
fn a_problem_in_a_fragment_names_the_fragment() {
    let (world, images) = vm_world();
    put(&world, "frag.yaml", &original_vm(&images));
    put(
        &world,
        "frag.d/10-ok.yaml",
        "vm:\n  runtime:\n    resume: true\n",
    );
    let fragment = put(
        &world,
        "frag.d/20-bad.yaml",
        "vm:\n  runtime:\n    firecracker:\n      vcpus: 4\n",
    );
    let (code, problems) = validate_json(&world, &["frag"]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["file"], fragment.display().to_string());
    assert_eq!(problem["line"], 4, "{problem}");
    assert_eq!(problem["flake"], "frag");
    // Named by its path, a fragment is checked as part of its flake.
    let (code, by_path) = validate_json(&world, &[fragment.to_str().unwrap()]);
    assert_eq!((code, &by_path), (1, &problems));
}

#[test]
fn every_broken_file_is_reported_at_once() {
    let (world, images) = vm_world();
    put(&world, "one.yaml", "vm:\n  nmae: leap\n");
    put(&world, "two.yaml", &original_vm(&images));
    put(&world, "two.d/10.yaml", "include:\n  tar: nope\n");
    put(&world, "three.yaml", &original_vm(&images));
    let (code, problems) = validate_json(&world, &[]);
    assert_eq!(code, 1);
    let flakes: Vec<&str> = problems
        .iter()
        .map(|p| p["flake"].as_str().unwrap())
        .collect();
    assert_eq!(flakes, ["one", "two"], "{problems:#?}");
}

#[test]
fn missing_vm_image_and_include_files_are_problems() {
    let (world, images) = vm_world();
    let text = original_vm(&images)
        .replace("leap/kernel", "gone/kernel")
        .replace("  path: ~", "  path: [/nonexistent/flake-validate]");
    let file = put(&world, "refs.yaml", &text);
    let (code, problems) = validate_json(&world, &[file.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(problems.len(), 2, "{problems:#?}");
    let text_of = |i: usize| problems[i]["problem"].as_str().unwrap().to_string();
    assert!(
        text_of(0).contains("/nonexistent/flake-validate"),
        "{problems:#?}"
    );
    assert_eq!(problems[0]["line"], 4);
    assert!(
        text_of(1).contains("gone/kernel") && text_of(1).contains("pull"),
        "{problems:#?}"
    );
    assert_eq!(problems[1]["line"], 27);
}

#[test]
fn a_missing_container_image_is_a_problem() {
    if !util::podman_ready() {
        return;
    }
    let world = World::new();
    let missing = format!("localhost/flake-validate-missing-{}:1", std::process::id());
    let text = original_container(util::IMAGE)
        .replace("base_container: ~", &format!("base_container: {missing}"));
    put(&world, "delta.yaml", &text);
    let (code, problems) = validate_json(&world, &["delta"]);
    assert_eq!(code, 1);
    let problem = only(&problems);
    assert_eq!(problem["line"], 9, "{problem}");
    assert!(
        problem["problem"].as_str().unwrap().contains(&missing),
        "{problem}"
    );
}

#[test]
fn an_unknown_name_is_a_problem_and_a_file_outside_the_registry_is_checked() {
    let (world, images) = vm_world();
    let (code, problems) = validate_json(&world, &["nosuchflake"]);
    assert_eq!(code, 1);
    assert!(only(&problems)["problem"]
        .as_str()
        .unwrap()
        .contains("nosuchflake"));
    let outside = world.path("elsewhere/mine.yaml");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    std::fs::write(&outside, original_vm(&images)).unwrap();
    let (code, problems) = validate_json(&world, &[outside.to_str().unwrap()]);
    assert_eq!((code, problems.len()), (0, 0), "{problems:#?}");
    // Nothing registered, nothing to complain about.
    world.ctl(&["validate"]).success();
}

#[test]
fn bash_completion_is_valid_and_complete() {
    let world = World::new();
    let run = world.ctl(&["completion", "bash"]);
    run.success();
    let script = run.stdout();
    let file = world.path("flake-ctl.bash");
    std::fs::write(&file, &script).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for word in [
        "validate",
        "completion",
        "podman",
        "firecracker",
        "list",
        "register",
        "--format",
        "table json",
        "generate names",
    ] {
        assert!(script.contains(word), "no {word} in the bash completion");
    }
    for shell in ["zsh", "fish"] {
        let run = world.ctl(&["completion", shell]);
        run.success();
        assert!(run.stdout().contains("validate"), "{run}");
    }
    // The hidden spelling used by earlier packaging keeps working.
    world.ctl(&["generate", "completions", "bash"]).success();
}

#[test]
fn completion_names_list_registered_apps_and_vm_images() {
    let (world, images) = vm_world();
    put(&world, "mybash.yaml", &original_vm(&images));
    let run = world.ctl(&["generate", "names", "apps"]);
    run.success();
    assert_eq!(run.stdout(), "/usr/bin/mybash\n");
    // A user's VM images live below the user's flakes directory.
    let user_images = world.home.join(".config/flakes/firecracker/images/leap");
    std::fs::create_dir_all(&user_images).unwrap();
    let run = world.ctl(&["generate", "names", "vms", "--user"]);
    run.success();
    assert_eq!(run.stdout(), "leap\n", "{run}");
}

/// Every key of the raw model, as dotted paths, from a document with every field set.
fn model_keys() -> Vec<String> {
    use flakes::config::raw::*;
    let s = || Some("x".to_string());
    let list = || Some(vec!["x".to_string()]);
    let full = RawFlake {
        include: Some(RawInclude {
            tar: list(),
            path: list(),
        }),
        container: Some(RawContainer {
            name: s(),
            target_app_path: s(),
            host_app_path: s(),
            base_container: s(),
            check_host_dependencies: Some(true),
            execute_systemfiles: Some(true),
            layers: list(),
            runtime: Some(RawRuntime {
                runas: s(),
                resume: Some(true),
                attach: Some(true),
                podman: list(),
            }),
        }),
        vm: Some(RawVm {
            name: s(),
            target_app_path: s(),
            host_app_path: s(),
            base_vm: s(),
            layers: list(),
            runtime: Some(RawVmRuntime {
                runas: s(),
                resume: Some(true),
                force_vsock: Some(true),
                vmm: s(),
                network: Some(true),
                idle_timeout: Some(1),
                firecracker: Some(RawFirecracker {
                    boot_args: list(),
                    overlay_size: Some(RawSize::Bytes(1)),
                    rootfs_image_path: s(),
                    kernel_image_path: s(),
                    initrd_path: s(),
                    mem_size_mib: Some(1),
                    vcpu_count: Some(1),
                    cache_type: s(),
                }),
            }),
        }),
    };
    let mut keys = Vec::new();
    walk_keys(&serde_json::to_value(full).unwrap(), "", &mut keys);
    keys
}

fn walk_keys(value: &Value, prefix: &str, keys: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, inner) in map {
            let path = format!("{prefix}{key}");
            walk_keys(inner, &format!("{path}."), keys);
            keys.push(path);
        }
    }
}

/// The object schema at `schema`, following `$ref` and `anyOf` (for `Option`).
fn object<'a>(root: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.rsplit('/').next()?;
        return object(root, &root["$defs"][name]);
    }
    if schema.get("properties").is_some() {
        return Some(schema);
    }
    schema["anyOf"]
        .as_array()?
        .iter()
        .find_map(|s| object(root, s))
}

#[test]
fn the_schema_has_every_key_of_the_model_and_no_other() {
    let world = World::new();
    let run = world.ctl(&["generate", "schema"]);
    run.success();
    let schema: Value = serde_json::from_str(&run.stdout()).unwrap();
    let keys = model_keys();
    assert!(keys.len() > 30, "{keys:?}");
    for key in &keys {
        let mut at = object(&schema, &schema).unwrap();
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(at["additionalProperties"], false, "{key}: open object");
            let property = &at["properties"][part];
            assert!(!property.is_null(), "schema lacks {key}");
            if i + 1 < parts.len() {
                at = object(&schema, property).unwrap();
            }
        }
    }
}

/// Runs the bash completion of `words` (the last one is being completed) and returns the
/// candidates, as bash would offer them.
fn complete_in_bash(world: &World, words: &[&str]) -> Vec<String> {
    let script = world.path("complete.bash");
    std::fs::write(&script, world.ctl(&["completion", "bash"]).stdout()).unwrap();
    let ctl = util::bin_dir().join("flake-ctl");
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        "source '{}' 2>/dev/null; COMP_WORDS=('{}' {}); COMP_CWORD={}; \
         _flake_ctl_names '{}' '{}' '{}' 2>/dev/null; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        ctl.display(),
        quoted.join(" "),
        words.len(),
        ctl.display(),
        words.last().unwrap(),
        words
            .get(words.len().wrapping_sub(2))
            .unwrap_or(&"flake-ctl"),
    );
    let mut cmd = world.command("bash");
    cmd.args(["-c", &program]);
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_formats_and_registered_apps() {
    let (world, images) = vm_world();
    put(&world, "mybash.yaml", &original_vm(&images));
    let got = complete_in_bash(&world, &["firecracker", "remove", "--app", ""]);
    assert_eq!(got, ["/usr/bin/mybash"]);
    let got = complete_in_bash(&world, &["list", "--format", ""]);
    assert_eq!(got, ["table", "json", "csv"]);
    let got = complete_in_bash(&world, &["val"]);
    assert_eq!(got, ["validate"]);
}

/// Validates `yaml` against `schema` with Python's jsonschema (Draft 2020-12), when that and
/// PyYAML are installed; `None` when they are not.
fn python_schema_errors(world: &World, schema: &Path, yaml: &str) -> Option<String> {
    let file = world.path("sample.yaml");
    std::fs::write(&file, yaml).unwrap();
    let program = "import json, sys, yaml, jsonschema\n\
         schema = json.load(open(sys.argv[1]))\n\
         doc = yaml.safe_load(open(sys.argv[2]))\n\
         v = jsonschema.Draft202012Validator(schema)\n\
         print(len(list(v.iter_errors(doc))))";
    let out = std::process::Command::new("python3")
        .args(["-c", program])
        .arg(schema)
        .arg(&file)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn a_json_schema_validator_accepts_3_1_flakes_and_rejects_typos() {
    let (world, images) = vm_world();
    let schema = world.path("flake.schema.json");
    std::fs::write(&schema, world.ctl(&["generate", "schema"]).stdout()).unwrap();
    let vm = original_vm(&images);
    let Some(errors) = python_schema_errors(&world, &schema, &vm) else {
        util::note_skip("needs python3 with the jsonschema and yaml modules");
        return;
    };
    assert_eq!(errors, "0");
    let container = original_container(util::IMAGE);
    assert_eq!(
        python_schema_errors(&world, &schema, &container).unwrap(),
        "0"
    );
    for bad in [
        vm.replace("force_vsock", "force_vsok"),
        vm.replace("mem_size_mib: 4096", "mem_size_mib: lots"),
        container.replace("attach: false", "attach: 1"),
    ] {
        assert_ne!(
            python_schema_errors(&world, &schema, &bad).unwrap(),
            "0",
            "{bad}"
        );
    }
}
