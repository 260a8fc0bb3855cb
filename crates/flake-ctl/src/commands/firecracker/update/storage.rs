// SPDX-License-Identifier: MIT
//! The OCI images a VM image update leaves in podman's storage.
//!
//! `pull --oci` makes the rootfs from an image pulled into podman's storage, and keeps it
//! there, so that the next pull of an unchanged reference costs a manifest request. When
//! the reference moved, the old image loses its name and only takes space: the update
//! removes it, unless something may still use it. It is kept while it has a name, while a
//! registered container flake names it by digest or id (or a container flake file cannot
//! be read, so that this cannot be known), and when podman refuses (a container uses it).
//! Nothing is removed by force, and a dry run removes nothing.

use flakes::config::Engine as FlakeEngine;
use flakes::Registry;
use podman_pilot::Engine;
use serde::Serialize;
use vm_pilot::oci::Origin;

use crate::commands::podman::inspect::inspect;

/// What became of an OCI image an update replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replaced {
    /// Its image id.
    pub id: String,
    /// The reference it was pulled as.
    pub reference: String,
    /// It was removed from podman's storage.
    pub removed: bool,
    /// Why it was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Podman's storage and what the registered container flakes use of it.
pub struct Storage {
    engine: Engine,
    /// Every image reference of the registered container flakes.
    references: Vec<String>,
    /// A container flake file cannot be read: what it uses is not known.
    all_known: bool,
}

impl Storage {
    /// The storage of `engine`, with the references of the container flakes of `registry`.
    pub fn new(engine: Engine, registry: &Registry) -> Self {
        let mut storage = Storage {
            engine,
            references: Vec::new(),
            all_known: true,
        };
        let Ok(names) = registry.names() else {
            storage.all_known = false;
            return storage;
        };
        for name in names {
            match registry.load(&name) {
                Ok(flake) => {
                    if let FlakeEngine::Container(c) = flake.engine {
                        let images = c.base.into_iter().chain(c.layers);
                        storage.references.extend(images.chain([c.image]));
                    }
                }
                Err(_) => storage.all_known = false,
            }
        }
        storage
    }

    /// Removes `old` from podman's storage when the update replaced it by `new` and nothing
    /// may use it any more; `None` when it was not replaced or is gone already.
    pub fn release(&self, old: &Origin, new: Option<&Origin>) -> Option<Replaced> {
        if new.is_none_or(|n| n.image_id == old.image_id) {
            return None;
        }
        let info = inspect(&self.engine, &old.image_id)?;
        let reason = if let Some(name) = info.names().first() {
            Some(format!("it is still named {name}"))
        } else if let Some(reference) = self.used_by_a_flake(old) {
            Some(format!("container flake image {reference} uses it"))
        } else if !self.all_known {
            Some("a flake file that cannot be read may use it; fix it and update again".into())
        } else {
            self.remove(&old.image_id).err()
        };
        Some(Replaced {
            id: old.image_id.clone(),
            reference: old.reference.clone(),
            removed: reason.is_none(),
            reason,
        })
    }

    /// A container flake reference that names `old` by its digest or id.
    fn used_by_a_flake(&self, old: &Origin) -> Option<&str> {
        self.references
            .iter()
            .find(|r| names_image(r, old))
            .map(String::as_str)
    }

    /// `podman image rm ID`, without force; podman's reason when it refuses.
    fn remove(&self, id: &str) -> Result<(), String> {
        self.engine
            .podman()
            .args(["image", "rm", "--", id])
            .run()
            .map_err(|e| flakes::report::one_line(&e))
    }
}

/// Whether image reference `reference` names the image of `origin`: pinned to its digest,
/// or its id (or an id prefix podman takes).
fn names_image(reference: &str, origin: &Origin) -> bool {
    let pinned = origin
        .digest
        .as_deref()
        .is_some_and(|d| reference.ends_with(&format!("@{d}")));
    let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
    let id = flakes::image_ref::is_image_id(reference) && origin.image_id.starts_with(hex);
    pinned || id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flakes_name_an_image_by_digest_or_id() {
        let digest = format!("sha256:{}", "d".repeat(64));
        let origin = Origin {
            reference: "r:5000/app:1".into(),
            digest: Some(digest.clone()),
            image_id: format!("{}{}", "e1108c96a165", "0".repeat(52)),
        };
        let cases = [
            (format!("r:5000/app@{digest}"), true),
            (format!("other/app:1@{digest}"), true),
            ("e1108c96a165".to_string(), true),
            (origin.image_id.clone(), true),
            ("sha256:e1108c96a165".to_string(), true),
            ("r:5000/app:1".to_string(), false),
            ("e1108c96a166".to_string(), false),
            (format!("r:5000/app@sha256:{}", "f".repeat(64)), false),
        ];
        for (reference, want) in cases {
            assert_eq!(names_image(&reference, &origin), want, "{reference}");
        }
    }
}
