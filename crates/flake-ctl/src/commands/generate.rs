// SPDX-License-Identifier: MIT
//! `flake-ctl completion SHELL` and the hidden `flake-ctl generate completions SHELL | man DIR
//! | schema | names KIND`: completions, man pages and the flake file schema, all derived from
//! the definitions in code, so they can never disagree with the real options and keys (the
//! original's hand-written completion offered options that did not exist). `make install`
//! runs it.
//!
//! The bash and fish scripts also complete registered app paths after `remove --app` and VM
//! image names after `--vm`: clap_complete's own dynamic completion is still unstable, so the
//! scripts ask `flake-ctl generate names` at completion time instead.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionShell, Generate, GenerateArgs, NameKind};
use crate::context::Context;

/// Writes the requested artefacts.
pub fn run(args: &GenerateArgs, ctx: &Context) -> Result<ExitCode> {
    match &args.what {
        Generate::Completions { shell } => print!("{}", script(*shell)?),
        Generate::Man { dir } => man_pages(dir)?,
        Generate::Schema => {
            let schema = flakes::config::raw::json_schema();
            println!("{}", serde_json::to_string_pretty(&schema)?);
        }
        Generate::Names { kind, user } => {
            for name in names(*kind, Context::mode(*user), ctx) {
                println!("{name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `flake-ctl completion SHELL`.
pub fn completion(shell: CompletionShell) -> Result<ExitCode> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    print!("{}", script(shell)?);
    Ok(ExitCode::SUCCESS)
}

/// The completion script of `shell`, with the name completion of bash and fish appended.
fn script(shell: Shell) -> Result<String> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "flake-ctl", &mut out);
    let mut text = String::from_utf8(out).context("the completion script is not UTF-8")?;
    match shell {
        Shell::Bash => text.push_str(BASH_NAMES),
        Shell::Fish => text.push_str(FISH_NAMES),
        _ => {}
    }
    Ok(text)
}

/// Wraps clap's bash function: after `remove --app` the registered app paths, after `--vm`
/// the pulled VM images, anything else as clap completes it.
const BASH_NAMES: &str = r#"
_flake_ctl_names() {
    local kind user=
    case "${COMP_WORDS[COMP_CWORD-1]}" in
        --app) [[ " ${COMP_WORDS[*]} " == *" remove "* ]] && kind=apps ;;
        --vm) kind=vms ;;
    esac
    if [[ -z "$kind" ]]; then
        _flake-ctl "$@"
        return
    fi
    [[ " ${COMP_WORDS[*]} " == *" --user "* ]] && user=--user
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" generate names "$kind" $user 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
complete -F _flake_ctl_names -o bashdefault -o default flake-ctl
"#;

/// The same for fish.
const FISH_NAMES: &str = r#"
complete -c flake-ctl -n "__fish_seen_subcommand_from remove" -l app -f -a "(flake-ctl generate names apps (__fish_seen_argument -l user; and echo --user) 2>/dev/null)"
complete -c flake-ctl -l vm -f -a "(flake-ctl generate names vms (__fish_seen_argument -l user; and echo --user) 2>/dev/null)"
"#;

/// Registered app paths or pulled VM image names; best effort, for completion only.
fn names(kind: NameKind, mode: flakes::Mode, ctx: &Context) -> Vec<String> {
    match kind {
        NameKind::Apps => {
            let registry = ctx.settings.registry(mode);
            let flakes = registry.names().unwrap_or_default();
            flakes
                .iter()
                .filter_map(|name| registry.load(name).ok())
                .filter_map(|flake| match flake.engine {
                    flakes::config::Engine::Container(c) => c.host_app_path,
                    flakes::config::Engine::Vm(vm) => vm.host_app_path,
                })
                .map(|path| path.display().to_string())
                .collect()
        }
        NameKind::Vms => {
            let dir = vm_pilot::images_dir(&ctx.settings, mode);
            let mut images: Vec<String> = std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|name| !name.starts_with('.'))
                .collect();
            images.sort();
            images
        }
    }
}

/// One page per command, named like `flake-ctl-podman-register.1`.
fn man_pages(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut pending = vec![Cli::command()];
    while let Some(command) = pending.pop() {
        let name = command.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).render(&mut page)?;
        let path = dir.join(format!("{name}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
        for sub in command
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        {
            pending.push(sub.clone().name(format!("{name}-{}", sub.get_name())));
        }
    }
    Ok(())
}
