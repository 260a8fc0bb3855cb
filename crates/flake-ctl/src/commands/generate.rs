// SPDX-License-Identifier: MIT
//! `flake-ctl generate completions SHELL | man DIR | schema | names KIND` (hidden):
//! completions, man pages and the flake file schema, all derived from the definitions in
//! code, so they can never disagree with the real options and keys (the original's
//! hand-written completion offered options that did not exist). `make install` runs it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use super::completion::{names, script};
use crate::cli::{Cli, Generate, GenerateArgs};
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
