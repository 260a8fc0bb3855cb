// SPDX-License-Identifier: MIT
//! What podman's image store says of image references (`podman image inspect`), for
//! `update` and `list`.

use std::collections::BTreeSet;

use podman_pilot::Engine;
use serde::Deserialize;

/// What `podman image inspect` says of one image.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageInfo {
    /// The image id.
    #[serde(rename = "Id")]
    pub id: String,
    /// The manifest digest it was pulled or pushed with.
    #[serde(rename = "Digest", default)]
    pub digest: Option<String>,
    /// Its names.
    #[serde(rename = "RepoTags", default)]
    pub tags: Option<Vec<String>>,
    /// `NAME@DIGEST` of every manifest podman knows it by.
    #[serde(rename = "RepoDigests", default)]
    pub repo_digests: Option<Vec<String>>,
}

impl ImageInfo {
    /// Every manifest digest the local image is known by.
    pub fn digests(&self) -> BTreeSet<&str> {
        let known = self.repo_digests.iter().flatten();
        known
            .filter_map(|d| d.rsplit_once('@').map(|(_, d)| d))
            .chain(self.digest.as_deref())
            .collect()
    }

    /// Its names, none when it has none.
    pub fn names(&self) -> &[String] {
        self.tags.as_deref().unwrap_or_default()
    }
}

/// The short form of an image id that podman prints.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// `podman image inspect` of `images`, in order; `None` when one of them is missing (or
/// podman fails), since podman's answer then no longer says which is which.
pub fn inspect_all(engine: &Engine, images: &[&str]) -> Option<Vec<ImageInfo>> {
    if images.is_empty() {
        return Some(Vec::new());
    }
    let out = engine
        .podman()
        .args(["image", "inspect", "--format", "json", "--"])
        .args(images.iter().copied())
        .stdout()
        .ok()?;
    let infos: Vec<ImageInfo> = serde_json::from_str(&out).ok()?;
    (infos.len() == images.len()).then_some(infos)
}

/// `podman image inspect` of one image; `None` when it is not in local storage.
pub fn inspect(engine: &Engine, image: &str) -> Option<ImageInfo> {
    inspect_all(engine, &[image])?.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_is_known_by_any_of_the_images_manifests() {
        let text = r#"{"Id":"e1","Digest":"sha256:aa","RepoTags":null,
            "RepoDigests":["r/x@sha256:bb"]}"#;
        let image: ImageInfo = serde_json::from_str(text).unwrap();
        let digests = image.digests();
        assert!(digests.contains("sha256:aa") && digests.contains("sha256:bb"));
        assert!(!digests.contains("sha256:cc"));
        assert!(image.names().is_empty());
    }
}
