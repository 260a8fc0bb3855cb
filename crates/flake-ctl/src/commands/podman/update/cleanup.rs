// SPDX-License-Identifier: MIT
//! What an update removes once images changed: the assembled images of the changed flakes,
//! their instances' containers that are based on an old image and do not run, and the old
//! image ids that no flake and no container uses any more.
//!
//! Only these are touched: containers carrying a changed flake's label, images carrying a
//! changed flake's assembly label, and image ids that were a changed reference's before the
//! pull. An old image keeps living while another name points to it, a container (any
//! container, flake or not) uses it, or a registered flake resolves to it (a flake pinned to
//! the old digest). Nothing is removed by force: an image or container that podman refuses
//! to remove is reported as kept, with podman's reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use podman_pilot::oneshot::FLAKE_LABEL;
use podman_pilot::provision::ASSEMBLED_LABEL;
use podman_pilot::Engine;
use serde::{Deserialize, Serialize};

use super::images::{self, ImageReport, Status};

/// One removal (done, or with `--dry-run` planned) or one thing kept.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// `assembled-image`, `container` or `image`.
    pub kind: &'static str,
    /// Its name (a container's name, an image's name or id).
    pub name: String,
    /// The flake it belonged to, when it belongs to one.
    pub flake: Option<String>,
    /// Why it is kept, or what to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the clean-up did or would do.
#[derive(Debug, Default, Serialize)]
pub struct Cleanup {
    /// Removed (dry run: would be removed).
    pub removed: Vec<Action>,
    /// Kept, with the reason.
    pub kept: Vec<Action>,
}

/// A container as `podman ps -a --format json` lists it.
#[derive(Debug, Deserialize)]
struct Container {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "ImageID", default)]
    image_id: String,
    #[serde(rename = "State", default)]
    state: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

impl Container {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.as_ref()?.get(key).map(String::as_str)
    }

    fn name(&self) -> &str {
        self.names.first().map_or(self.id.as_str(), String::as_str)
    }

    fn running(&self) -> bool {
        matches!(self.state.as_str(), "running" | "paused" | "stopping")
    }
}

/// An image as `podman images --format json` lists it.
#[derive(Debug, Deserialize)]
struct Image {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Option<Vec<String>>,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
    #[serde(rename = "Created", default)]
    created: i64,
}

impl Image {
    fn name(&self) -> String {
        self.names
            .as_ref()
            .and_then(|n| n.first().cloned())
            .unwrap_or_else(|| self.id.clone())
    }
}

/// What the clean-up works on.
pub struct Scope<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The outcome of every image of the update.
    pub images: &'a [ImageReport],
    /// Every image reference of every registered container flake (not only the updated
    /// ones): what must survive.
    pub registered: &'a BTreeSet<String>,
    /// Every registration could be read: no unknown flake may use an old image.
    pub all_known: bool,
    /// Plan only.
    pub dry_run: bool,
}

impl Scope<'_> {
    /// Removes (or plans to remove) what the changed images left behind.
    pub fn run(&self) -> Result<Cleanup, flakes::process::ProcessError> {
        let mut out = Cleanup::default();
        let changed: Vec<&ImageReport> = self
            .images
            .iter()
            .filter(|i| i.status == Status::Changed)
            .collect();
        let flakes: BTreeSet<&str> = changed
            .iter()
            .flat_map(|i| i.flakes.iter().map(String::as_str))
            .collect();
        if flakes.is_empty() {
            return Ok(out);
        }
        let old_ids: BTreeSet<&str> = changed.iter().filter_map(|i| i.old_id.as_deref()).collect();
        let containers = self.containers()?;
        let assembled = self.assembled(&flakes)?;
        let assembled_ids: BTreeSet<&str> = assembled.iter().map(|i| i.id.as_str()).collect();
        let gone = self.instances(&containers, &flakes, &old_ids, &assembled_ids, &mut out);
        let remaining: Vec<&Container> = containers
            .iter()
            .filter(|c| !gone.contains(c.id.as_str()))
            .collect();
        self.assemblies(&assembled, &remaining, &mut out);
        self.old_images(&changed, &remaining, &mut out);
        Ok(out)
    }

    fn containers(&self) -> Result<Vec<Container>, flakes::process::ProcessError> {
        let out = self
            .engine
            .podman()
            .args(["ps", "-a", "--format", "json"])
            .stdout()?;
        Ok(serde_json::from_str(&out).unwrap_or_default())
    }

    /// The assembled images of `flakes`, newest first (an image built on another goes
    /// before it).
    fn assembled(
        &self,
        flakes: &BTreeSet<&str>,
    ) -> Result<Vec<Image>, flakes::process::ProcessError> {
        let filter = format!("label={ASSEMBLED_LABEL}");
        let out = self
            .engine
            .podman()
            .args(["images", "--filter", &filter, "--format", "json"])
            .stdout()?;
        let mut images: Vec<Image> = serde_json::from_str(&out).unwrap_or_default();
        images.retain(|i| {
            let owner = i.labels.as_ref().and_then(|l| l.get(ASSEMBLED_LABEL));
            owner.is_some_and(|o| flakes.contains(o.as_str()))
        });
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        Ok(images)
    }

    /// Removes the instances of `flakes` whose container is based on an old image or an
    /// old assembly and does not run; returns the ids of the containers removed.
    fn instances<'c>(
        &self,
        containers: &'c [Container],
        flakes: &BTreeSet<&str>,
        old_ids: &BTreeSet<&str>,
        assembled: &BTreeSet<&str>,
        out: &mut Cleanup,
    ) -> BTreeSet<&'c str> {
        let mut gone = BTreeSet::new();
        for c in containers {
            let Some(flake) = c.label(FLAKE_LABEL).filter(|f| flakes.contains(f)) else {
                continue;
            };
            let image = c.image_id.as_str();
            if !old_ids.contains(image) && !assembled.contains(image) {
                continue;
            }
            let action = |reason: Option<String>| Action {
                kind: "container",
                name: c.name().to_string(),
                flake: Some(flake.to_string()),
                reason,
            };
            if c.running() {
                out.kept.push(action(Some(format!(
                    "runs the old image and is kept until it ends; to restart it on the new \
                     image now, run `podman rm -f {}` (the next call starts it again)",
                    c.name()
                ))));
                continue;
            }
            match self.remove(&["rm", "--", &c.id]) {
                Ok(()) => {
                    gone.insert(c.id.as_str());
                    out.removed.push(action(None));
                }
                Err(reason) => out.kept.push(action(Some(reason))),
            }
        }
        gone
    }

    /// Removes the assembled images that no remaining container uses.
    fn assemblies(&self, images: &[Image], containers: &[&Container], out: &mut Cleanup) {
        for image in images {
            let flake = image
                .labels
                .as_ref()
                .and_then(|l| l.get(ASSEMBLED_LABEL))
                .cloned();
            let action = |reason: Option<String>| Action {
                kind: "assembled-image",
                name: image.name(),
                flake: flake.clone(),
                reason,
            };
            if let Some(user) = containers.iter().find(|c| c.image_id == image.id) {
                let reason = format!("container {} still uses it", user.name());
                out.kept.push(action(Some(reason)));
                continue;
            }
            match self.remove(&["image", "rm", "--", &image.id]) {
                Ok(()) => out.removed.push(action(None)),
                Err(reason) => out.kept.push(action(Some(reason))),
            }
        }
    }

    /// Removes each changed reference's old image id that nothing uses any more.
    fn old_images(&self, changed: &[&ImageReport], containers: &[&Container], out: &mut Cleanup) {
        let moving: BTreeSet<&str> = changed.iter().map(|i| i.image.as_str()).collect();
        let used = self.used_ids(&moving);
        let mut seen = BTreeSet::new();
        for report in changed {
            let Some(old) = report.old_id.as_deref().filter(|id| seen.insert(*id)) else {
                continue;
            };
            let action = |reason: Option<String>| Action {
                kind: "image",
                name: format!("{} (was {})", short(old), report.image),
                flake: None,
                reason,
            };
            let reason = if !self.all_known {
                Some("a flake file that cannot be read may use it; fix it and update again".into())
            } else if used.contains(old) {
                Some(
                    "a registered flake still uses it (pinned to it, or under another name)".into(),
                )
            } else if let Some(c) = containers.iter().find(|c| c.image_id == old) {
                Some(format!("container {} still uses it", c.name()))
            } else {
                self.other_name(old, &moving)
                    .map(|name| format!("it is still named {name}"))
            };
            if let Some(reason) = reason {
                out.kept.push(action(Some(reason)));
                continue;
            }
            match self.remove(&["image", "rm", "--", old]) {
                Ok(()) => out.removed.push(action(None)),
                Err(reason) => out.kept.push(action(Some(reason))),
            }
        }
    }

    /// The image ids the registered flakes resolve to now; a dry run leaves out the
    /// references that the update would move.
    fn used_ids(&self, moving: &BTreeSet<&str>) -> BTreeSet<String> {
        let refs: Vec<&str> = self
            .registered
            .iter()
            .map(String::as_str)
            .filter(|r| !(self.dry_run && moving.contains(r)))
            .collect();
        let infos = images::inspect_all(self.engine, &refs).unwrap_or_else(|| {
            // One of them is missing: ask for each.
            refs.iter()
                .filter_map(|r| images::inspect(self.engine, r))
                .collect()
        });
        infos.into_iter().map(|i| i.id).collect()
    }

    /// A name of image `id` other than the references the update moves (a dry run has not
    /// moved them yet), if it has one.
    fn other_name(&self, id: &str, moving: &BTreeSet<&str>) -> Option<String> {
        let info = images::inspect(self.engine, id)?;
        let moved = |name: &str| {
            moving.iter().any(|m| {
                name == *m
                    || name.strip_suffix(":latest") == Some(m)
                    || name.ends_with(&format!("/{m}"))
            })
        };
        info.names()
            .iter()
            .find(|n| !(self.dry_run && moved(n)))
            .cloned()
    }

    /// Runs a removal, unless dry; podman's reason when it refuses.
    fn remove(&self, args: &[&str]) -> Result<(), String> {
        if self.dry_run {
            return Ok(());
        }
        self.engine
            .podman()
            .args(args.iter().copied())
            .run()
            .map_err(|e| flakes::report::one_line(&e))
    }
}

pub use crate::commands::podman::inspect::short;

/// Groups `(flake, image)` pairs by image, images in first-seen order.
pub fn by_image(pairs: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut order: Vec<String> = Vec::new();
    let mut users: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (flake, image) in pairs {
        let entry = users.entry(image.as_str()).or_default();
        if entry.is_empty() {
            order.push(image.clone());
        }
        if !entry.contains(flake) {
            entry.push(flake.clone());
        }
    }
    order
        .into_iter()
        .map(|image| {
            let flakes = users.remove(image.as_str()).unwrap_or_default();
            (image, flakes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_once_in_first_seen_order() {
        let pairs = [
            ("a", "base"),
            ("a", "delta"),
            ("b", "base"),
            ("b", "base"),
            ("c", "other"),
        ]
        .map(|(f, i)| (f.to_string(), i.to_string()));
        let grouped = by_image(&pairs);
        assert_eq!(
            grouped,
            [
                ("base".to_string(), vec!["a".to_string(), "b".to_string()]),
                ("delta".to_string(), vec!["a".to_string()]),
                ("other".to_string(), vec!["c".to_string()]),
            ]
        );
    }

    #[test]
    fn podman_listings_parse() {
        let ps = r#"[{"Id":"c1","Names":["n"],"ImageID":"i1","State":"exited","Labels":null},
            {"Id":"c2","Names":["m"],"ImageID":"i2","State":"running","Labels":{"io.flake-pilot.flake":"f"}}]"#;
        let containers: Vec<Container> = serde_json::from_str(ps).unwrap();
        assert_eq!(containers[0].label(FLAKE_LABEL), None);
        assert!(!containers[0].running());
        assert_eq!(containers[1].label(FLAKE_LABEL), Some("f"));
        assert!(containers[1].running());
        let images = r#"[{"Id":"i1","Names":null,"Labels":null,"Created":5}]"#;
        let images: Vec<Image> = serde_json::from_str(images).unwrap();
        assert_eq!(images[0].name(), "i1");
    }
}
