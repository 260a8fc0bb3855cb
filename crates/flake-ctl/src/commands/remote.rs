// SPDX-License-Identifier: MIT
//! What a registry says of an image without pulling it: the manifest digest a reference
//! resolves to there, asked with `skopeo inspect`. The dry runs of `podman update` and
//! `firecracker update` compare it with what they have locally; skopeo is optional, so
//! the caller learns whether it is installed once and says "would be pulled" without it.

use std::path::{Path, PathBuf};

use flakes::process::{Cmd, ProcessError};

use crate::context::Context;

/// skopeo, when it is installed on the caller's `PATH`.
pub fn skopeo(ctx: &Context) -> Option<PathBuf> {
    flakes::process::resolve("skopeo", ctx.path_env.as_deref()).ok()
}

/// The manifest digest (`sha256:...`) the registry serves for `image`.
pub fn digest(skopeo: &Path, image: &str) -> Result<String, ProcessError> {
    // skopeo inspect --format '{{.Digest}}' docker://REF
    let query = Cmd::new(skopeo)
        .args(["inspect", "--format", "{{.Digest}}"])
        .arg(format!("docker://{image}"));
    query.stdout().map(|d| d.trim().to_string())
}
