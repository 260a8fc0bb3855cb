// SPDX-License-Identifier: MIT
//! Getting an OCI image into local storage and reading what it is: its digest, its image
//! id and the configuration a guest call uses.
//!
//! A reference naming a registry (`registry.example.com/app:1`) is always pulled, as
//! `podman pull` does it: a tag that moved is seen, and an unchanged one costs a manifest
//! request (`localhost:5000/app` too: with a port, `localhost` is a registry). Anything
//! else (`localhost/app`, a short name) is used as it is in local storage
//! and pulled only when it is missing; a `localhost/` image has no registry digest and is
//! known by its id alone. Everything after the lookup names the image by its
//! id, so the tree, the kernel and the record all come from the same content even if the
//! tag moves meanwhile.

use serde::Deserialize;

use super::super::PullError;
use super::{OciError, Podman};
use crate::oci::{ImageConfig, Origin};

/// An image found in local storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Where it came from, as the record keeps it.
    pub origin: Origin,
    /// Its configuration.
    pub config: ImageConfig,
}

impl Resolved {
    /// The image id, the name every later podman call uses.
    pub fn id(&self) -> &str {
        &self.origin.image_id
    }
}

/// Checks `reference`, pulls it when it names a registry or is missing locally, and reads
/// its digest, id and configuration.
pub fn resolve(podman: &Podman, reference: &str) -> Result<Resolved, PullError> {
    flakes::image_ref::check(reference).map_err(OciError::BadReference)?;
    if names_registry(reference) || !exists(podman, reference)? {
        pull(podman, reference)?;
    }
    let mut resolved = inspect(podman, reference)?;
    if is_local(reference) {
        // What podman calls the digest of an image built here is no registry's: the
        // image id alone says what it is.
        resolved.origin.digest = None;
    }
    Ok(resolved)
}

/// Whether `reference` names podman's local-only `localhost` domain. `localhost:5000`
/// is not it: that is a registry (the usual address of one run for development).
fn is_local(reference: &str) -> bool {
    reference
        .split_once('/')
        .is_some_and(|(first, _)| first == "localhost")
}

/// Whether the first component of `reference` is a registry host (it has a `.` or a `:`,
/// as `localhost:5000` has), other than bare `localhost`, the name podman gives images
/// that never were in a registry.
pub fn names_registry(reference: &str) -> bool {
    match reference.split_once('/') {
        Some((first, _)) => first != "localhost" && (first.contains('.') || first.contains(':')),
        None => false,
    }
}

fn exists(podman: &Podman, reference: &str) -> Result<bool, PullError> {
    podman
        .cmd()
        .args(["image", "exists", "--", reference])
        .succeeds()
        .map_err(|source| {
            OciError::Podman {
                image: reference.to_string(),
                source,
            }
            .into()
        })
}

fn pull(podman: &Podman, reference: &str) -> Result<(), PullError> {
    podman
        .cmd()
        .args(["pull", "--quiet", "--", reference])
        .run()
        .map_err(|source| {
            OciError::Pull {
                image: reference.to_string(),
                source,
            }
            .into()
        })
}

/// The part of `podman image inspect` read here.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspect {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    repo_digests: Vec<String>,
    #[serde(default)]
    config: Option<RawConfig>,
}

/// An image configuration as podman prints it (absent keys are `null` or missing).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

fn inspect(podman: &Podman, reference: &str) -> Result<Resolved, PullError> {
    let text = podman
        .cmd()
        .args(["image", "inspect", "--format", "json", "--", reference])
        .stdout()
        .map_err(|source| OciError::Podman {
            image: reference.to_string(),
            source,
        })?;
    parse_inspect(reference, &text)
}

/// Reads the answer of `podman image inspect --format json` for `reference`.
fn parse_inspect(reference: &str, text: &str) -> Result<Resolved, PullError> {
    let invalid = |reason: String| OciError::Inspect {
        image: reference.to_string(),
        reason,
    };
    let images: Vec<Inspect> = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
    let image = images
        .into_iter()
        .next()
        .ok_or_else(|| invalid("no image in the answer".into()))?;
    let id = image.id.trim_start_matches("sha256:").to_string();
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(format!("image id '{id}' is not 64 hex digits")).into());
    }
    let digest = digest_of(reference, image.digest.as_deref(), &image.repo_digests);
    let raw = image.config.unwrap_or_default();
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    Ok(Resolved {
        origin: Origin {
            reference: reference.to_string(),
            digest,
            image_id: id,
        },
        config: ImageConfig {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            working_dir: nonempty(raw.working_dir),
            user: nonempty(raw.user),
        },
    })
}

/// The manifest digest `reference` resolved to: podman's `Digest` when one of the image's
/// repository digests of the reference's repository carries it, else the first of those;
/// `None` for an image without one (built here and never pushed or pulled).
fn digest_of(reference: &str, digest: Option<&str>, repo_digests: &[String]) -> Option<String> {
    let repository = repository(reference);
    let mine: Vec<&str> = repo_digests
        .iter()
        .filter_map(|d| d.split_once('@'))
        .filter(|(repo, _)| *repo == repository)
        .map(|(_, digest)| digest)
        .collect();
    match digest {
        Some(d) if mine.contains(&d) => Some(d.to_string()),
        _ => mine.first().map(|d| (*d).to_string()),
    }
}

/// `reference` without its tag or digest.
fn repository(reference: &str) -> &str {
    let name = reference.split_once('@').map_or(reference, |(n, _)| n);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_references_are_told_from_local_ones() {
        for (reference, registry) in [
            ("127.0.0.1:5000/app:1", true),
            ("registry.example.com/team/app", true),
            ("host:5000/app", true),
            ("localhost/app:1", false),
            ("localhost:5000/app", true),
            ("localhost.example.com/app", true),
            ("busybox", false),
            ("library/busybox:1", false),
        ] {
            assert_eq!(names_registry(reference), registry, "{reference}");
            assert_eq!(
                is_local(reference),
                reference.starts_with("localhost/"),
                "{reference}"
            );
        }
    }

    #[test]
    fn repositories_drop_tag_and_digest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (reference, repo) in [
            ("127.0.0.1:5000/app:1".to_string(), "127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app".to_string(), "127.0.0.1:5000/app"),
            (format!("reg/app@{digest}"), "reg/app"),
            (format!("reg/app:2@{digest}"), "reg/app"),
        ] {
            assert_eq!(repository(&reference), repo, "{reference}");
        }
    }

    fn answer(digest: &str, repo_digests: &str, config: &str) -> String {
        format!(
            r#"[{{"Id":"{}","Digest":"{digest}","RepoDigests":{repo_digests},"Config":{config}}}]"#,
            "c".repeat(64)
        )
    }

    #[test]
    fn inspect_answers_give_digest_id_and_config() {
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let repo = format!(r#"["reg:5000/app@{a}","reg:5000/app@{b}","other/x@{a}"]"#);
        let config =
            r#"{"Entrypoint":["/bin/app"],"Cmd":null,"Env":["A=1"],"WorkingDir":"","User":"1234"}"#;
        let got = parse_inspect("reg:5000/app:1", &answer(&b, &repo, config)).unwrap();
        assert_eq!(got.origin.digest.as_deref(), Some(b.as_str()));
        assert_eq!(got.id(), "c".repeat(64));
        assert_eq!(got.config.entrypoint, ["/bin/app"]);
        assert!(got.config.cmd.is_empty());
        assert_eq!(got.config.working_dir, None);
        assert_eq!(got.config.user.as_deref(), Some("1234"));
        // Podman's digest is not among this repository's: the repository's first one.
        let other = format!("sha256:{}", "d".repeat(64));
        let got = parse_inspect("reg:5000/app:1", &answer(&other, &repo, "null")).unwrap();
        assert_eq!(got.origin.digest.as_deref(), Some(a.as_str()));
        // Built here, never pushed: no digest of its own.
        let got = parse_inspect("localhost/app", &answer(&other, "[]", "{}")).unwrap();
        assert_eq!(got.origin.digest, None);
    }

    #[test]
    fn junk_answers_are_refused() {
        for junk in ["", "[]", "{}", r#"[{"Id":"../etc"}]"#, r#"[{"Id":"zz"}]"#] {
            let err = parse_inspect("localhost/app", junk)
                .unwrap_err()
                .to_string();
            assert!(err.contains("localhost/app"), "{err}");
        }
    }
}
