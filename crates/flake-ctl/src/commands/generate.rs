// SPDX-License-Identifier: MIT
//! `flake-ctl generate completions SHELL | man DIR` (hidden): completions and man pages
//! derived from the clap definition, so they can never disagree with the real options (the
//! original's hand-written completion offered options that did not exist). `make install`
//! runs it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;

use crate::cli::{Cli, Generate, GenerateArgs};

/// Writes the requested artefacts.
pub fn run(args: &GenerateArgs) -> Result<ExitCode> {
    match &args.what {
        Generate::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "flake-ctl", &mut std::io::stdout());
        }
        Generate::Man { dir } => man_pages(dir)?,
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
