// SPDX-License-Identifier: MIT
//! `sci`: PID 1 of a VM flake's guest.
//!
//! It prepares the guest ([`boot`]: kernel file systems, the overlay root), reads the VM's
//! settings from the kernel command line ([`cmdline`]), serves calls over the guest
//! channel ([`serve`]: virtio console ports under QEMU, vsock under Firecracker) and
//! powers the VM off when done. Calls never come through the kernel command line. Any
//! failure is one line on the console, followed by the power-off: a broken guest never
//! hangs the caller.

mod boot;
mod cmdline;
mod console;
mod debug;
mod oneshot;
mod port;
mod resync;
mod serve;
mod timing;

use std::process::ExitCode;

use boot::BootError;
use cmdline::{BootSettings, Channel, CmdlineError};
use console::ConsoleError;
use oneshot::{OneshotError, SetupError};
use serve::ServeError;

/// The search path programs get; the kernel starts init without one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// Why `sci` ended before its VM's work was done; printed once, as `sci: ...`, on the
/// console (the instance's `console.log` on the host).
#[derive(Debug, thiserror::Error)]
enum SciError {
    /// The settings could not be read.
    #[error("cannot read /proc/cmdline: {source}; the guest kernel needs procfs")]
    ReadCmdline {
        /// Underlying error.
        source: std::io::Error,
    },
    /// The settings are wrong.
    #[error(transparent)]
    Cmdline(#[from] CmdlineError),
    /// The overlay root could not be set up.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// The console could not be opened.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// The one call over the console failed.
    #[error(transparent)]
    Oneshot(#[from] OneshotError),
    /// Serving calls over ports or vsock failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The command of serial mode could not be started.
    #[error("cannot run {program}: {source}; check the program named in run=\"...\"")]
    Serial {
        /// The program.
        program: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

fn main() -> ExitCode {
    let pid1 = rustix::process::getpid().is_init();
    if let Err(err) = run(pid1) {
        eprintln!("{}", report(&err));
    }
    if pid1 {
        boot::power_off();
    }
    ExitCode::SUCCESS
}

/// The one line an error becomes on the console.
fn report(err: &SciError) -> String {
    format!("sci: {err}")
}

fn run(pid1: bool) -> Result<(), SciError> {
    let started = debug::uptime();
    if pid1 {
        // What the settings and the console need; the rest may come while the launcher
        // answers `Ready`.
        boot::mount_early();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|source| SciError::ReadCmdline { source })?;
    let settings = BootSettings::parse(&cmdline)?;
    if settings.debug {
        debug::enable();
    }
    debug::log(|| format!("started at {started}: {settings:?}"));
    if let Some(argv) = cmdline::run_command(&cmdline)? {
        prepare(pid1, &settings)?;
        return serial(&argv);
    }
    // Keeps the marker in the binary: `pull` looks for it (see `proto::GUEST_MARKER`).
    std::hint::black_box(flake_protocol::proto::GUEST_MARKER);
    std::hint::black_box(flake_protocol::proto::GUEST_CONSOLE_MARKER);
    std::hint::black_box(flake_protocol::proto::GUEST_RESYNC_MARKER);
    std::hint::black_box(flake_protocol::proto::GUEST_ANNOUNCE_MARKER);
    if settings.channel == Channel::Console {
        return serve_console(pid1, &settings);
    }
    prepare(pid1, &settings)?;
    serve::serve(&settings)?;
    Ok(())
}

/// Serves the one call the console can carry (its host cannot reconnect).
fn serve_console(pid1: bool, settings: &BootSettings) -> Result<(), SciError> {
    let console = console::open(timing::CONSOLE_WAIT)?;
    debug::log(|| "console open".to_string());
    let timeout = serve::FIRST_CALL_TIMEOUT;
    if settings.resync {
        // The overlay waits for the host: this VM may be saved until then.
        let overlay = settings.overlay.clone().filter(|_| pid1);
        let on_resync: oneshot::OnResync = Box::new(move |resync| attach(resync, overlay));
        let prepare = || Ok(prepare_with(pid1, None)?);
        return Ok(oneshot::serve(console, timeout, prepare, Some(on_resync))?);
    }
    let prepare = || Ok(prepare(pid1, settings)?);
    Ok(oneshot::serve(console, timeout, prepare, None)?)
}

/// The rest of the guest's preparation: the other kernel file systems, the overlay root,
/// a search path.
fn prepare(pid1: bool, settings: &BootSettings) -> Result<(), BootError> {
    prepare_with(pid1, settings.overlay.as_deref())
}

/// A VM that may have been restored takes its host's clock and entropy (giving whether it
/// could), then its own overlay disk.
fn attach(
    resync: Option<&flake_protocol::proto::Resync>,
    overlay: Option<String>,
) -> Result<bool, SetupError> {
    let reseeded = resync.is_some_and(|resync| {
        // Not an error of `sci`: the answer `Resynced(false)` tells the launcher that this
        // VM cannot be a restored copy, and it decides (boot afresh, refuse the saved
        // state); the console keeps why.
        resync::apply(resync)
            .inspect_err(|err| eprintln!("sci: {err}"))
            .is_ok()
    });
    if let Some(device) = overlay {
        resync::forget_cached(&device)?;
        prepare_with(true, Some(&device))?;
    }
    Ok(reseeded)
}

/// [`prepare`] with `overlay` as the overlay disk (none: the root stays read-only).
fn prepare_with(pid1: bool, overlay: Option<&str>) -> Result<(), BootError> {
    match (pid1, overlay) {
        (false, _) => {}
        (true, None) => boot::mount_rest(),
        // All of them on the new root.
        (true, Some(device)) => {
            boot::overlay_root(device)?;
            boot::mount_basics();
        }
    }
    if std::env::var_os("PATH").is_none() {
        // Still single-threaded here: nothing else reads the environment yet.
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    Ok(())
}

/// Serial mode: the command runs on the console, which is the caller's terminal.
fn serial(argv: &[String]) -> Result<(), SciError> {
    let (program, args) = argv.split_first().ok_or(CmdlineError::RunEmpty)?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|source| SciError::Serial {
            program: program.clone(),
            source,
        })?;
    debug::log(|| format!("serial command ended: {status}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_with_one_prefix() {
        let cases = [
            (
                SciError::from(CmdlineError::Idle {
                    value: "soon".into(),
                }),
                "sci: sci_idle=soon is not a number of seconds; use 0 for no idle timeout",
            ),
            (
                SciError::from(OneshotError::from(SetupError::from(BootError::Switch {
                    device: "/dev/vdb".into(),
                    call: "chroot",
                    source: rustix::io::Errno::PERM,
                }))),
                "sci: overlay /dev/vdb: chroot failed: Operation not permitted (os error 1)",
            ),
            (
                SciError::from(ServeError::ConsoleOnly),
                "sci: sci_channel=console serves a one-shot call only",
            ),
        ];
        for (err, line) in cases {
            assert_eq!(report(&err), line);
        }
    }

    #[test]
    fn a_serial_command_that_cannot_start_is_named() {
        let argv = ["/nonexistent/sci-test-program".to_string()];
        let err = serial(&argv).unwrap_err();
        assert!(
            report(&err).starts_with("sci: cannot run /nonexistent/sci-test-program: "),
            "{err}"
        );
        assert!(matches!(
            serial(&[]),
            Err(SciError::Cmdline(CmdlineError::RunEmpty))
        ));
    }
}
