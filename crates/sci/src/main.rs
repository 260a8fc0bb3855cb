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

use std::process::ExitCode;

use std::time::Duration;

use cmdline::{BootSettings, Channel};

/// The search path programs get; the kernel starts init without one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

fn main() -> ExitCode {
    let pid1 = rustix::process::getpid().is_init();
    if let Err(message) = run(pid1) {
        eprintln!("sci: {message}");
    }
    if pid1 {
        boot::power_off();
    }
    ExitCode::SUCCESS
}

fn run(pid1: bool) -> Result<(), String> {
    let started = debug::uptime();
    if pid1 {
        // What the settings and the console need; the rest may come while the launcher
        // answers `Ready`.
        boot::mount_early();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("cannot read /proc/cmdline: {e}"))?;
    let settings = BootSettings::parse(&cmdline).map_err(|e| e.to_string())?;
    if settings.debug {
        debug::enable();
    }
    debug::log(|| format!("started at {started}: {settings:?}"));
    let prepare = || prepare(pid1, &settings);
    if let Some(argv) = cmdline::run_command(&cmdline).map_err(|e| e.to_string())? {
        prepare()?;
        return serial(&argv);
    }
    // Keeps the marker in the binary: `pull` looks for it (see `proto::GUEST_MARKER`).
    std::hint::black_box(flake_agent::proto::GUEST_MARKER);
    std::hint::black_box(flake_agent::proto::GUEST_CONSOLE_MARKER);
    std::hint::black_box(flake_agent::proto::GUEST_RESYNC_MARKER);
    std::hint::black_box(flake_agent::proto::GUEST_ANNOUNCE_MARKER);
    if settings.channel == Channel::Console {
        // One call; the console cannot carry more (its host cannot reconnect).
        let console = console::open(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        debug::log(|| "console open".to_string());
        if settings.resync {
            // The overlay waits for the host: this VM may be saved until then.
            let overlay = settings.overlay.clone().filter(|_| pid1);
            let on_resync: oneshot::OnResync = Box::new(move |resync| attach(resync, overlay));
            let prepare = || prepare_with(pid1, None);
            return oneshot::serve(console, serve::FIRST_CALL_TIMEOUT, prepare, Some(on_resync));
        }
        return oneshot::serve(console, serve::FIRST_CALL_TIMEOUT, prepare, None);
    }
    prepare()?;
    serve::serve(&settings).map(|_| ())
}

/// The rest of the guest's preparation: the other kernel file systems, the overlay root,
/// a search path.
fn prepare(pid1: bool, settings: &BootSettings) -> Result<(), String> {
    prepare_with(pid1, settings.overlay.as_deref())
}

/// A VM that may have been restored takes its host's clock and entropy (giving whether it
/// could), then its own overlay disk.
fn attach(
    resync: Option<&flake_agent::proto::Resync>,
    overlay: Option<String>,
) -> Result<bool, String> {
    let reseeded = resync.is_some_and(|resync| {
        resync::apply(resync)
            .inspect_err(|message| eprintln!("sci: {message}"))
            .is_ok()
    });
    if let Some(device) = overlay {
        resync::forget_cached(&device).map_err(|e| e.to_string())?;
        prepare_with(true, Some(&device))?;
    }
    Ok(reseeded)
}

/// [`prepare`] with `overlay` as the overlay disk (none: the root stays read-only).
fn prepare_with(pid1: bool, overlay: Option<&str>) -> Result<(), String> {
    match (pid1, overlay) {
        (false, _) => {}
        (true, None) => boot::mount_rest(),
        // All of them on the new root.
        (true, Some(device)) => {
            boot::overlay_root(device).map_err(|e| e.to_string())?;
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
fn serial(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("run= names no program")?;
    let status = std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    debug::log(|| format!("serial command ended: {status}"));
    Ok(())
}
