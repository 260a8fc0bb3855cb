// SPDX-License-Identifier: MIT
//! `flake-ctl list [--user] [--format table|json|csv]`: the registered flakes.
//!
//! A flake whose configuration does not load is still listed (engine `invalid`), its error
//! goes to stderr, and the exit code is 1, so one broken file neither hides the others nor
//! passes unnoticed in scripts.

use std::process::ExitCode;

use anyhow::Result;
use flakes::config::{Engine, Target};
use flakes::{Flake, Registry};
use serde::Serialize;

use crate::cli::ListArgs;
use crate::context::Context;
use crate::output::{render, Row};

/// One listed flake. The JSON keys are those of the original (`target`, not
/// `target_app_path`).
#[derive(Debug, Serialize)]
pub struct FlakeRow {
    name: String,
    engine: Option<String>,
    target: Option<String>,
    host_app_path: Option<String>,
    config: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Row for FlakeRow {
    const HEADERS: &'static [&'static str] = &[
        "NAME",
        "ENGINE",
        "TARGET APP PATH",
        "HOST APP PATH",
        "CONFIG",
    ];

    fn cells(&self) -> Vec<Option<String>> {
        vec![
            Some(self.name.clone()),
            self.engine.clone(),
            self.target.clone(),
            self.host_app_path.clone(),
            Some(self.config.clone()),
        ]
    }
}

/// Runs the listing.
pub fn run(args: &ListArgs, ctx: &Context) -> Result<ExitCode> {
    let registry = ctx.settings.registry(Context::mode(args.user));
    // Registrations killed mid-way leave staged files; collect them when nobody registers.
    if let Some(held) = registry.try_lock() {
        registry.clean_staged(&held);
    }
    let rows = rows(&registry)?;
    let title = format!(
        "Flake applications registered in {}",
        registry.dir().display()
    );
    print!(
        "{}",
        render(&rows, args.format, &title, "No application(s) registered")
    );
    let broken: Vec<&String> = rows.iter().filter_map(|r| r.error.as_ref()).collect();
    for error in &broken {
        eprintln!("flake-ctl: {error}");
    }
    Ok(if broken.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn rows(registry: &Registry) -> Result<Vec<FlakeRow>> {
    let mut rows = Vec::new();
    for name in registry.names()? {
        let config = registry.config_path(&name).display().to_string();
        let row = match registry.load(&name) {
            Ok(flake) => flake_row(&flake, config),
            Err(err) => FlakeRow {
                name: name.to_string(),
                engine: Some("invalid".into()),
                target: None,
                host_app_path: None,
                config,
                error: Some(err.to_string()),
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

fn flake_row(flake: &Flake, config: String) -> FlakeRow {
    let (target, host) = match &flake.engine {
        Engine::Container(c) => (&c.target, &c.host_app_path),
        Engine::Vm(vm) => (&vm.target, &vm.host_app_path),
    };
    let target = match target {
        Target::ImageEntrypoint => "/".to_string(),
        Target::Program(p) => p.clone(),
        Target::FlakeName => flake.name.to_string(),
    };
    let (target, host) = (Some(target), host.as_ref().map(|p| p.display().to_string()));
    FlakeRow {
        name: flake.name.to_string(),
        engine: Some(flake.engine.label().to_string()),
        target,
        host_app_path: host,
        config,
        error: None,
    }
}
