// SPDX-License-Identifier: MIT
//! The flake model shared by `flake-ctl` and the launchers.
//!
//! A *flake* is a host app path (say `/usr/bin/aws`) that is a symlink to a launcher; the
//! launcher finds the flake's YAML by the name it was called as and runs the app inside a
//! container or microVM. This crate owns everything both sides must agree on: the
//! configuration schema and how files are merged ([`config`]), the global configuration
//! ([`global`]), the registration directories ([`registry`], [`register`]), the call
//! conventions of the launchers ([`callargs`]) and the front half they share ([`launcher`]),
//! their exit codes ([`exit`]) and the wrapper through which external programs run
//! ([`process`]).

#![deny(missing_docs)]

pub mod callargs;
pub mod config;
pub mod elf;
pub mod exit;
pub mod fault;
pub mod global;
pub mod host;
pub mod image_ref;
pub mod instance;
pub mod launcher;
pub mod logging;
pub mod names;
pub mod process;
pub mod register;
pub mod registry;
pub mod report;
pub mod size;

pub use callargs::{CallArgError, CallArgs, PilotOptions};
pub use config::{ConfigError, Engine, Flake};
pub use exit::PilotExit;
pub use host::{Caller, Mode, Settings};
pub use names::{FlakeName, InstanceName};
pub use registry::Registry;
