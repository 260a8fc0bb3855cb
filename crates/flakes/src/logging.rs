// SPDX-License-Identifier: MIT
//! Diagnostics on stderr through `tracing`, quiet by default.
//!
//! The level comes from `FLAKE_LOG_LEVEL` (`error`, `warn`, `info`, `debug`, `trace`; default
//! `warn`), the variable the original used. Colour is used only when stderr is a terminal.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

/// Environment variable selecting the log level.
pub const LOG_LEVEL_ENV: &str = "FLAKE_LOG_LEVEL";

/// Installs the stderr logger; `level` is the value of [`LOG_LEVEL_ENV`], if set.
pub fn init(level: Option<&str>) {
    let level = level
        .and_then(|l| l.trim().parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .try_init();
}
