// SPDX-License-Identifier: MIT
//! `flake-ctl completion bash|zsh|fish`: the completion script of a shell, generated from the
//! clap definition (subcommands, options, `--format` values).
//!
//! The bash and fish scripts also complete registered app paths after `remove --app` and
//! `update --app`, and VM image names after `--vm`: clap_complete's own dynamic completion
//! is still behind an unstable feature, so the scripts ask the hidden `flake-ctl generate
//! names` at completion time instead. zsh gets the static script only.

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, CompletionShell, NameKind};
use crate::context::Context;

/// `flake-ctl completion SHELL`.
pub fn run(shell: CompletionShell) -> Result<ExitCode> {
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    print!("{}", script(shell)?);
    Ok(ExitCode::SUCCESS)
}

/// The completion script of `shell`, with the name completion of bash and fish appended.
pub fn script(shell: Shell) -> Result<String> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "flake-ctl", &mut out);
    let mut text = String::from_utf8(out).context("the completion script is not UTF-8")?;
    match shell {
        Shell::Bash => {
            // clap_complete 4.6 spells the hyphen of the program name as `__subcmd__` in the
            // case labels of the subcommands but as `__` where it sets them, so without this
            // nothing below the first level (options, `--format` values) would complete.
            text = text.replace("flake__subcmd__ctl", "flake__ctl");
            text.push_str(BASH_NAMES);
        }
        Shell::Fish => text.push_str(FISH_NAMES),
        _ => {}
    }
    Ok(text)
}

/// Wraps clap's bash function (`_flake__ctl`): after `remove --app` or `update --app` the
/// registered app paths, after `--vm` the pulled VM images, anything else as clap completes it.
const BASH_NAMES: &str = r#"
_flake_ctl_names() {
    local kind= user=
    case "${COMP_WORDS[COMP_CWORD-1]}" in
        --app) [[ " ${COMP_WORDS[*]} " == *" "remove" "* || " ${COMP_WORDS[*]} " == *" "update" "* ]] && kind=apps ;;
        --vm) kind=vms ;;
    esac
    if [[ -z "$kind" ]]; then
        _flake__ctl "$@"
        return
    fi
    [[ " ${COMP_WORDS[*]} " == *" --user "* ]] && user=--user
    local IFS=$'\n'
    COMPREPLY=($(compgen -W "$("${COMP_WORDS[0]}" generate names "$kind" $user 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _flake_ctl_names -o nosort -o bashdefault -o default flake-ctl
else
    complete -F _flake_ctl_names -o bashdefault -o default flake-ctl
fi
"#;

/// The same for fish.
const FISH_NAMES: &str = r#"
complete -c flake-ctl -n "__fish_seen_subcommand_from remove update" -l app -f -a "(flake-ctl generate names apps (__fish_seen_argument -l user; and echo --user) 2>/dev/null)"
complete -c flake-ctl -l vm -f -a "(flake-ctl generate names vms (__fish_seen_argument -l user; and echo --user) 2>/dev/null)"
"#;

/// Registered app paths or pulled VM image names; best effort, for completion only.
pub fn names(kind: NameKind, mode: flakes::Mode, ctx: &Context) -> Vec<String> {
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
