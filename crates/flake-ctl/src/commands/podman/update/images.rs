// SPDX-License-Identifier: MIT
//! The images side of `podman update`: what podman knows of an image, which references
//! may be pulled again, and the pull (or, with `--dry-run`, the registry's answer) that
//! tells whether an image changed.

use std::path::Path;

use podman_pilot::Engine;
use serde::Serialize;

pub use crate::commands::podman::inspect::{inspect, inspect_all, ImageInfo};

/// How an image reference is treated by an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Pulled (or, dry, the registry has another digest): the image changed.
    Changed,
    /// Pulled, and the image id is the same.
    Unchanged,
    /// `NAME@DIGEST`: never pulled again.
    Pinned,
    /// Given by id, or a local image (`localhost/...`): nothing to pull.
    Local,
    /// Dry run without skopeo: the image would be pulled, its new digest is not known.
    Unknown,
    /// The pull or the registry query failed.
    Failed,
}

impl Status {
    /// The word the table shows.
    pub fn word(self) -> &'static str {
        match self {
            Status::Changed => "changed",
            Status::Unchanged => "up to date",
            Status::Pinned => "pinned, not pulled",
            Status::Local => "local, skipped",
            Status::Unknown => "would be pulled",
            Status::Failed => "failed",
        }
    }
}

/// The outcome for one image reference.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// The reference as the flakes give it.
    pub image: String,
    /// The flakes that use it.
    pub flakes: Vec<String>,
    /// What happened.
    pub status: Status,
    /// Local image id before the update, if it was present.
    pub old_id: Option<String>,
    /// Local image id after the pull.
    pub new_id: Option<String>,
    /// Local manifest digest before the update.
    pub old_digest: Option<String>,
    /// Manifest digest after the pull (dry run: the registry's).
    pub new_digest: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where a reference's content comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A registry: pull it again.
    Registry,
    /// Pinned to a digest.
    Pinned,
    /// Local storage only.
    Local,
}

/// Classifies `image`: pinned by digest, given by id or on `localhost`, or otherwise a short
/// name whose local image only has `localhost/` names (built or imported here), are not
/// pulled; everything else comes from a registry.
pub fn source(image: &str, local: Option<&ImageInfo>) -> Source {
    if flakes::image_ref::pinned_digest(image).is_some() {
        return Source::Pinned;
    }
    if flakes::image_ref::is_image_id(image) {
        return Source::Local;
    }
    match flakes::image_ref::domain(image) {
        Some("localhost") => Source::Local,
        Some(_) => Source::Registry,
        None => {
            let names = local.map(ImageInfo::names).unwrap_or_default();
            let built_here = !names.is_empty() && names.iter().all(|n| n.starts_with("localhost/"));
            if built_here {
                Source::Local
            } else {
                Source::Registry
            }
        }
    }
}

/// Updates (or, dry, checks) one image reference used by `flakes`.
pub fn update(
    engine: &Engine,
    image: &str,
    flakes: Vec<String>,
    dry_run: bool,
    skopeo: Option<&Path>,
) -> ImageReport {
    let old = inspect(engine, image);
    let mut report = ImageReport {
        image: image.to_string(),
        flakes,
        status: Status::Unchanged,
        old_id: old.as_ref().map(|i| i.id.clone()),
        new_id: None,
        old_digest: old.as_ref().and_then(|i| i.digest.clone()),
        new_digest: None,
        error: None,
    };
    match source(image, old.as_ref()) {
        Source::Pinned => report.status = Status::Pinned,
        Source::Local => report.status = Status::Local,
        Source::Registry if dry_run => check_remote(&mut report, old.as_ref(), skopeo),
        Source::Registry => pull(engine, &mut report),
    }
    report
}

/// Pulls the image and compares the ids before and after.
fn pull(engine: &Engine, report: &mut ImageReport) {
    if let Err(err) = engine.pull_with(&["--quiet"], &report.image).stdout() {
        report.status = Status::Failed;
        report.error = Some(flakes::report::one_line(&err));
        return;
    }
    let new = inspect(engine, &report.image);
    report.new_id = new.as_ref().map(|i| i.id.clone());
    report.new_digest = new.and_then(|i| i.digest);
    report.status = if report.new_id == report.old_id {
        Status::Unchanged
    } else {
        Status::Changed
    };
}

/// Dry run: asks the registry for the reference's digest (`skopeo inspect`), without
/// pulling; without skopeo, the image would just be pulled.
fn check_remote(report: &mut ImageReport, old: Option<&ImageInfo>, skopeo: Option<&Path>) {
    let Some(skopeo) = skopeo else {
        report.status = Status::Unknown;
        return;
    };
    match crate::commands::remote::digest(skopeo, &report.image) {
        Ok(digest) => {
            let known = old.is_some_and(|i| i.digests().contains(digest.as_str()));
            report.status = if known {
                Status::Unchanged
            } else {
                Status::Changed
            };
            report.new_digest = Some(digest);
        }
        Err(err) => {
            report.status = Status::Failed;
            report.error = Some(flakes::report::one_line(&err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(tags: &[&str]) -> ImageInfo {
        ImageInfo {
            tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            ..ImageInfo::default()
        }
    }

    #[test]
    fn which_references_are_pulled() {
        let digest = format!("sha256:{}", "1f".repeat(32));
        let pinned = format!("127.0.0.1:5000/x:1@{digest}");
        let built = info(&["localhost/tool:1"]);
        let pulled = info(&["docker.io/amazon/aws-cli:latest"]);
        let cases = [
            (pinned.as_str(), None, Source::Pinned),
            ("e1108c96a165", None, Source::Local),
            ("localhost/busybox:latest", None, Source::Local),
            ("127.0.0.1:5000/flake-pilot/busybox", None, Source::Registry),
            ("localhost:5000/x", None, Source::Registry),
            ("tool:1", Some(&built), Source::Local),
            ("amazon/aws-cli", Some(&pulled), Source::Registry),
            ("amazon/aws-cli", None, Source::Registry),
        ];
        for (image, local, want) in cases {
            assert_eq!(source(image, local), want, "{image}");
        }
    }
}
