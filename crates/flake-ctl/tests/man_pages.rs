// SPDX-License-Identifier: MIT
//! The hand-written man pages in `man/` against the code they describe.
//!
//! The pages of `flake-ctl` come from its clap definition and cannot drift; those of the
//! launchers, of `sci` and of the flake format are prose, so these tests take every name
//! from the code (the pilot options, `sci`'s kernel keys, the flake schema, the global
//! configuration's keys, the environment variables the binaries read) and fail when one
//! of them is missing from its page. They also render every page and fail on any warning.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const PODMAN_PAGE: &str = "podman-pilot.1";
const VM_PAGE: &str = "firecracker-pilot.1";
const SCI_PAGE: &str = "sci.8";
const FLAKES_PAGE: &str = "flakes.5";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn page(name: &str) -> String {
    let path = workspace().join("man").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The names in `wanted` that `text` does not contain, each as `spell` writes it.
fn missing<'a>(
    text: &str,
    wanted: impl IntoIterator<Item = &'a str>,
    spell: impl Fn(&str) -> String,
) -> Vec<String> {
    wanted
        .into_iter()
        .map(spell)
        .filter(|word| !text.contains(word.as_str()))
        .collect()
}

#[test]
fn every_pilot_option_is_in_both_launcher_pages() {
    assert!(flakes::callargs::OPTIONS.len() >= 6);
    for name in [PODMAN_PAGE, VM_PAGE] {
        let text = page(name);
        let gone = missing(&text, flakes::callargs::OPTIONS.iter().copied(), |o| {
            format!(".B{} %{o}", if o == "port" { "I" } else { "" })
        });
        assert!(gone.is_empty(), "{name} lacks the call options {gone:?}");
        for word in [
            ".BI @ NAME",
            "\n.B \\-\\-\n",
            ".SH EXIT STATUS",
            ".SH ENVIRONMENT",
        ] {
            assert!(text.contains(word), "{name} lacks {word:?}");
        }
    }
}

#[test]
fn every_exit_code_of_the_launchers_is_in_both_pages() {
    use flakes::PilotExit;
    let codes = [
        PilotExit::LauncherFailure,
        PilotExit::CannotInvoke,
        PilotExit::NotFound,
    ];
    for name in [PODMAN_PAGE, VM_PAGE] {
        let text = page(name);
        for code in codes.map(PilotExit::code) {
            assert!(
                text.contains(&format!(".B {code}\n")),
                "{name} lacks {code}"
            );
        }
        assert!(text.contains(".B 0\\-124\n") && text.contains(".B 128+N\n"));
    }
}

/// The keys of `sci`'s `KEYS` list, read from its source (`sci` is a binary only).
fn sci_keys() -> Vec<String> {
    let path = workspace().join("crates/sci/src/cmdline.rs");
    let source = std::fs::read_to_string(&path).unwrap();
    let start = source
        .find("pub const KEYS: &[&str] = &[")
        .expect("crates/sci/src/cmdline.rs has no `pub const KEYS` list");
    let list = &source[start..];
    let list = &list[list.find("&[").unwrap() + 2..list.find("];").unwrap()];
    list.split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[test]
fn every_kernel_key_of_sci_is_in_its_page() {
    let keys = sci_keys();
    assert!(
        keys.len() >= 7,
        "too few keys read from cmdline.rs: {keys:?}"
    );
    let text = page(SCI_PAGE);
    let gone: Vec<_> = keys
        .iter()
        .filter(|k| {
            ![".B", ".BI"]
                .iter()
                .any(|m| text.contains(&format!("\n{m} {k}=")))
        })
        .collect();
    assert!(gone.is_empty(), "{SCI_PAGE} lacks the kernel keys {gone:?}");
    assert!(text.contains(".BI run=\\(dq"), "{SCI_PAGE} lacks run=");
}

/// Every key path (`container.runtime.podman`) of the flake schema.
fn schema_keys() -> BTreeSet<String> {
    let schema = flakes::config::raw::json_schema();
    let mut keys = BTreeSet::new();
    walk(&schema, &schema, "", &mut keys);
    keys
}

fn walk(root: &serde_json::Value, node: &serde_json::Value, at: &str, keys: &mut BTreeSet<String>) {
    if let Some(target) = node.get("$ref").and_then(|r| r.as_str()) {
        let name = target.rsplit('/').next().unwrap_or_default();
        for defs in ["$defs", "definitions"] {
            if let Some(def) = root.get(defs).and_then(|d| d.get(name)) {
                walk(root, def, at, keys);
            }
        }
    }
    for branch in ["anyOf", "oneOf", "allOf"] {
        for alternative in node
            .get(branch)
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            walk(root, alternative, at, keys);
        }
    }
    let properties = node.get("properties").and_then(|p| p.as_object());
    for (key, value) in properties.into_iter().flatten() {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        keys.insert(path.clone());
        walk(root, value, &path, keys);
    }
}

/// The field names serde expects where `yaml` puts an unknown one.
fn expected_fields(yaml: &str) -> Vec<String> {
    let err = flakes::global::GlobalConfig::parse(Path::new("flakes.yml"), yaml)
        .expect_err("an unknown key must be refused")
        .to_string();
    let list = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no expected fields in: {err}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[test]
fn every_key_of_flake_files_and_the_global_configuration_is_in_flakes_5() {
    let keys = schema_keys();
    for sure in [
        "include.tar",
        "container.runtime.podman",
        "vm.runtime.firecracker.cache_type",
    ] {
        assert!(keys.contains(sure), "schema walk missed {sure}: {keys:?}");
    }
    let mut global = BTreeSet::new();
    for top in expected_fields("zz_unknown: 1\n") {
        for key in expected_fields(&format!("{top}:\n  zz_unknown: 1\n")) {
            global.insert(format!("{top}.{key}"));
        }
        global.insert(top);
    }
    assert!(global.len() >= 5, "global keys: {global:?}");
    let text = page(FLAKES_PAGE);
    let gone = missing(&text, keys.iter().chain(&global).map(String::as_str), |k| {
        format!("\n.B {k}\n")
    });
    assert!(gone.is_empty(), "{FLAKES_PAGE} lacks the keys {gone:?}");
    for word in ["NAME.d", "/etc/flakes.yml", "FLAKES_CONFIG"] {
        assert!(text.contains(word), "{FLAKES_PAGE} lacks {word}");
    }
}

/// Environment variables read by the sources of `crates`: values of constants named
/// `..._ENV` or `ENV`, and literals given to `env::var`/`env::var_os`. Test hooks
/// (`FLAKE_TEST_*`) and unit tests (`tests.rs`, a `#[cfg(test)]` module) are no
/// interface.
fn env_vars(crates: &[&str]) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for krate in crates {
        for file in rust_files(&workspace().join("crates").join(krate).join("src")) {
            let source = std::fs::read_to_string(&file).unwrap();
            for line in without_test_module(&source) {
                vars.extend(env_var_in(line));
            }
        }
    }
    vars.retain(|v| !v.starts_with("FLAKE_TEST_"));
    vars
}

/// The lines before `#[cfg(test)] mod ...` (clippy keeps items out of the part after it).
fn without_test_module(source: &str) -> Vec<&str> {
    let lines: Vec<&str> = source.lines().collect();
    let end = lines
        .windows(2)
        .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod "))
        .unwrap_or(lines.len());
    lines[..end].to_vec()
}

fn env_var_in(line: &str) -> Option<String> {
    let line = line.trim();
    let literal = |rest: &str| {
        let name = rest.split('"').nth(1)?;
        let plain = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        plain.then(|| name.to_string())
    };
    let is_const = line.contains("const ")
        && line
            .split(':')
            .next()
            .is_some_and(|decl| decl.ends_with("ENV"));
    if is_const && line.contains("&str =") {
        return literal(line.split_once('=')?.1);
    }
    for call in ["env::var(\"", "env::var_os(\""] {
        if let Some(at) = line.find(call) {
            return literal(&line[at + call.len() - 1..]);
        }
    }
    None
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("tests.rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_environment_variable_the_launchers_read_is_in_their_page() {
    let cases = [
        (PODMAN_PAGE, &["flakes", "podman-pilot"][..]),
        (VM_PAGE, &["flakes", "vm-pilot", "flake-ctl"][..]),
    ];
    for (name, crates) in cases {
        let vars = env_vars(crates);
        for sure in ["FLAKE_LOG_LEVEL", "PILOT_DEBUG", "FLAKES_CONFIG", "PATH"] {
            assert!(
                vars.contains(sure),
                "{sure} not found in {crates:?}: {vars:?}"
            );
        }
        let text = page(name);
        let section = text
            .split(".SH ENVIRONMENT")
            .nth(1)
            .and_then(|rest| rest.split("\n.SH ").next())
            .unwrap_or_default();
        let gone = missing(section, vars.iter().map(String::as_str), |v| {
            format!(".B {v}\n")
        });
        assert!(gone.is_empty(), "{name} lacks the variables {gone:?}");
    }
    let vm = env_vars(&["vm-pilot"]);
    assert!(vm.contains("FLAKE_QEMU_ACCEL") && vm.contains("FLAKE_VM_SAVED_STATES"));
}

/// The flake-ctl pages, as `make install` generates them.
fn generated_pages() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_flake-ctl"))
        .args(["generate", "man"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    dir
}

#[test]
fn every_page_a_hand_written_page_refers_to_exists() {
    let generated = generated_pages();
    let mut known: BTreeSet<String> = ["podman(1)"].map(String::from).into();
    for dir in [generated.path().to_path_buf(), workspace().join("man")] {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some((stem, section)) = file.rsplit_once('.') {
                known.insert(format!("{stem}({section})"));
            }
        }
    }
    for name in [PODMAN_PAGE, VM_PAGE, SCI_PAGE, FLAKES_PAGE] {
        for line in page(name).lines().filter(|l| l.starts_with(".BR ")) {
            let mut words = line[4..].split_whitespace();
            let (Some(title), Some(section)) = (words.next(), words.next()) else {
                continue;
            };
            let Some(section) = section.strip_prefix('(') else {
                continue;
            };
            let section = section.split(')').next().unwrap_or_default();
            let target = format!("{}({section})", title.replace("\\-", "-"));
            assert!(
                known.contains(&target),
                "{name} refers to {target}, which does not exist"
            );
        }
    }
}

#[test]
fn every_page_renders_without_warnings() {
    let generated = generated_pages();
    let mut pages: Vec<PathBuf> = [PODMAN_PAGE, VM_PAGE, SCI_PAGE, FLAKES_PAGE]
        .map(|p| workspace().join("man").join(p))
        .into();
    let mut produced: Vec<PathBuf> = std::fs::read_dir(generated.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(produced.len() > 10, "too few generated pages: {produced:?}");
    pages.append(&mut produced);
    let renderer = if have("man") {
        "man"
    } else if have("groff") {
        "groff"
    } else {
        util::note_skip("neither man nor groff is installed to render the pages");
        return;
    };
    for path in pages {
        let output = match renderer {
            "man" => Command::new("man")
                .args(["--warnings", "-E", "UTF-8", "-l"])
                .arg(&path)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_STDERR", "1")
                .output(),
            _ => Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(&path)
                .output(),
        }
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && stderr.trim().is_empty(),
            "{renderer} warns about {}:\n{stderr}",
            path.display()
        );
        if renderer == "man" {
            assert!(String::from_utf8_lossy(&output.stdout).contains("NAME"));
        }
    }
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}
