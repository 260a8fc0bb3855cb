// SPDX-License-Identifier: MIT
//! Errors of a VM launch; each names the flake, file or program involved.

use std::path::PathBuf;

use flake_protocol::proto::ProtoError;

/// Result alias of the VM engine.
pub type Result<T, E = VmError> = std::result::Result<T, E>;

/// Why a VM launch failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The flake's image is missing or broken.
    #[error(transparent)]
    Image(#[from] crate::ImageError),
    /// A file of the flake's VM may have been changed by another user.
    #[error(transparent)]
    Untrusted(#[from] crate::trust::TrustError),
    /// What the flake's image records for its calls is unusable.
    #[error(transparent)]
    Entry(#[from] crate::entry::EntryError),
    /// The instance's state directory is unusable.
    #[error(transparent)]
    Instance(#[from] flakes::instance::InstanceError),
    /// A helper program (mkfs, ip) failed.
    #[error(transparent)]
    Process(#[from] flakes::process::ProcessError),
    /// The VMM could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Start {
        /// The VMM binary.
        program: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The guest never answered or broke off.
    #[error("the VM of flake '{flake}' {what}; see console.log and vmm.log in {}", dir.display())]
    Guest {
        /// The flake.
        flake: String,
        /// What happened.
        what: String,
        /// The instance directory, kept for inspection.
        dir: PathBuf,
    },
    /// The call broke off mid-way.
    #[error("the call into the VM of flake '{flake}' broke off: {source}; see console.log and vmm.log in {}", dir.display())]
    Call {
        /// The flake.
        flake: String,
        /// Underlying error.
        source: ProtoError,
        /// The instance directory, kept for inspection.
        dir: PathBuf,
    },
    /// The overlay disk could not be prepared.
    #[error(transparent)]
    Overlay(#[from] crate::overlay::OverlayError),
    /// A VM being saved did not run again.
    #[error("the VM of flake '{flake}' did not run again after saving it: {source}")]
    Stuck {
        /// The flake.
        flake: String,
        /// What the monitor said.
        source: crate::qemu::QmpError,
    },
    /// A file of the instance could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// An argument cannot be passed in serial mode.
    #[error(
        "flake '{flake}': {what} cannot be passed to an image without the flake-pilot guest \
         init (serial mode); pull the image again with flake-ctl firecracker pull to install it"
    )]
    Serial {
        /// The flake.
        flake: String,
        /// The argument.
        #[source]
        what: crate::vmm::SerialError,
    },
    /// A resume flake on an image whose guest init does not speak the protocol.
    #[error(
        "flake '{flake}' is a resume flake, which needs the flake-pilot guest init in its image; \
         pull the image again with flake-ctl firecracker pull to install it"
    )]
    NoGuestChannel {
        /// The flake.
        flake: String,
    },
    /// QEMU is to use vsock and its device is missing.
    #[error(
        "flake '{flake}' is to use vsock under QEMU ({channel}=vsock), but vhost-device-vsock \
         is not installed: install it with {install}, or unset {channel}"
    )]
    NoVsockDevice {
        /// The flake.
        flake: String,
        /// How to install it.
        install: &'static str,
        /// The variable that chose vsock.
        channel: &'static str,
    },
    /// The TAP device could not be set up.
    #[error("tap device {name}: {reason}")]
    Tap {
        /// Device name.
        name: String,
        /// What went wrong, with the fix.
        reason: String,
    },
}

/// Maps an I/O error on `path` to [`VmError::Io`].
pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> VmError {
    let path = path.into();
    move |source| VmError::Io { path, source }
}
