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
//!
//! The digest recorded is the one the registry serves for the reference, the one
//! `skopeo inspect docker://REF` prints. Podman's own `Digest` is not it for an image built
//! and pushed on this host: podman keeps the manifest of the build as well as the
//! registry's, lists every name with both, and names the older one. After the pull the
//! registry's digest is among the image's digests in the reference's repository; when that
//! holds one, it is the answer, when several, the registry is asked (skopeo) which one it
//! serves, and without skopeo none is recorded rather than a guess.

use std::path::Path;

use flakes::process::Cmd;
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
    let (mut resolved, candidates) = inspect(podman, reference)?;
    resolved.origin.digest = if is_local(reference) {
        // What podman calls the digest of an image built here is no registry's: the
        // image id alone says what it is.
        None
    } else {
        served_digest(podman, reference, candidates)?
    };
    Ok(resolved)
}

/// The digest the registry serves for `reference`, among `candidates` (the pulled image's
/// digests in the reference's repository, see [`candidates`]).
fn served_digest(
    podman: &Podman,
    reference: &str,
    candidates: Vec<String>,
) -> Result<Option<String>, PullError> {
    if let Some(pinned) = pinned_digest(reference) {
        return Ok(candidates.into_iter().find(|d| d == pinned));
    }
    if candidates.len() < 2 {
        return Ok(candidates.into_iter().next());
    }
    // Several, and no registry to ask (a name found in local storage), or nobody to ask
    // it: no guess.
    let Some(skopeo) = podman.skopeo().filter(|_| names_registry(reference)) else {
        return Ok(None);
    };
    let served = ask_registry(&skopeo, reference)?;
    if candidates.contains(&served) {
        return Ok(Some(served));
    }
    Err(OciError::Moved {
        image: reference.to_string(),
        digest: served,
    }
    .into())
}

/// `skopeo inspect --format '{{.Digest}}' docker://REF`, with podman's environment.
fn ask_registry(skopeo: &Cmd, reference: &str) -> Result<String, PullError> {
    let query = skopeo
        .clone()
        .args(["inspect", "--format", "{{.Digest}}"])
        .arg(format!("docker://{reference}"));
    let answer = query.stdout().map_err(|source| OciError::Registry {
        image: reference.to_string(),
        source,
    })?;
    let digest = answer.trim();
    if !is_digest(digest) {
        return Err(OciError::Inspect {
            image: reference.to_string(),
            reason: format!("skopeo answered '{digest}' for its digest"),
        }
        .into());
    }
    Ok(digest.to_string())
}

/// Whether `digest` is `sha256:` and 64 hex digits.
fn is_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The digest `reference` is pinned to (`repo@sha256:...`).
fn pinned_digest(reference: &str) -> Option<&str> {
    reference.split_once('@').map(|(_, digest)| digest)
}

/// skopeo run with the environment of `podman` (registry configuration, credentials).
pub(super) fn skopeo_cmd(podman: &Cmd, skopeo: &Path) -> Cmd {
    podman
        .get_env()
        .iter()
        .fold(Cmd::new(skopeo), |cmd, (k, v)| cmd.env(k, v))
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

fn inspect(podman: &Podman, reference: &str) -> Result<(Resolved, Vec<String>), PullError> {
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

/// Reads the answer of `podman image inspect --format json` for `reference`: the image
/// (without a digest yet) and its digests in the reference's repository.
fn parse_inspect(reference: &str, text: &str) -> Result<(Resolved, Vec<String>), PullError> {
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
    let candidates = candidates(reference, &image.repo_digests);
    let raw = image.config.unwrap_or_default();
    let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let resolved = Resolved {
        origin: Origin {
            reference: reference.to_string(),
            digest: None,
            image_id: id,
        },
        config: ImageConfig {
            entrypoint: raw.entrypoint.unwrap_or_default(),
            cmd: raw.cmd.unwrap_or_default(),
            env: raw.env.unwrap_or_default(),
            working_dir: nonempty(raw.working_dir),
            user: nonempty(raw.user),
        },
    };
    Ok((resolved, candidates))
}

/// The digests podman lists for the image in `reference`'s repository, without repeats.
/// After a pull of `reference` the registry's digest is one of them; podman's `Digest`
/// is not trusted to be it (see the module documentation).
fn candidates(reference: &str, repo_digests: &[String]) -> Vec<String> {
    let repository = repository(reference);
    let mut mine: Vec<String> = Vec::new();
    let found = repo_digests
        .iter()
        .filter_map(|d| d.split_once('@'))
        .filter(|(repo, digest)| *repo == repository && is_digest(digest));
    for (_, digest) in found {
        if !mine.iter().any(|d| d == digest) {
            mine.push(digest.to_string());
        }
    }
    mine
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
    fn inspect_answers_give_candidates_id_and_config() {
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        // Podman lists every name with every digest: the build's and the registry's.
        let repo = format!(
            r#"["reg:5000/app@{a}","reg:5000/app@{b}","other/x@{a}","reg:5000/app@{a}","reg:5000/app@junk"]"#
        );
        let config =
            r#"{"Entrypoint":["/bin/app"],"Cmd":null,"Env":["A=1"],"WorkingDir":"","User":"1234"}"#;
        let (got, candidates) =
            parse_inspect("reg:5000/app:1", &answer(&b, &repo, config)).unwrap();
        assert_eq!(candidates, [a.clone(), b.clone()]);
        // Podman's `Digest` decides nothing: it may be the build's.
        assert_eq!(got.origin.digest, None);
        assert_eq!(got.id(), "c".repeat(64));
        assert_eq!(got.config.entrypoint, ["/bin/app"]);
        assert!(got.config.cmd.is_empty());
        assert_eq!(got.config.working_dir, None);
        assert_eq!(got.config.user.as_deref(), Some("1234"));
        let (_, candidates) = parse_inspect("other/x", &answer(&b, &repo, "null")).unwrap();
        assert_eq!(candidates, [a]);
        let (_, candidates) = parse_inspect("localhost/app", &answer(&b, "[]", "{}")).unwrap();
        assert!(candidates.is_empty());
    }

    fn podman_without_skopeo() -> Podman {
        Podman::new(Cmd::new("/nonexistent/podman"))
    }

    #[test]
    fn one_candidate_or_a_pin_needs_no_registry_question() {
        let (a, b) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
        );
        let podman = podman_without_skopeo();
        let served = |reference: &str, candidates: &[&String]| {
            let candidates = candidates.iter().map(|d| (*d).clone()).collect();
            served_digest(&podman, reference, candidates).unwrap()
        };
        assert_eq!(served("reg:5000/app:1", &[&a]), Some(a.clone()));
        assert_eq!(served("reg:5000/app:1", &[]), None);
        let pinned = format!("reg:5000/app@{b}");
        assert_eq!(served(&pinned, &[&a, &b]), Some(b.clone()));
        assert_eq!(served(&pinned, &[&a]), None);
        // Several and nobody to ask: no guess.
        assert_eq!(served("reg:5000/app:1", &[&a, &b]), None);
        assert_eq!(served("library/app:1", &[&a, &b]), None);
    }

    /// A stand-in for skopeo that prints `answer` (unit tests only; the integration tests
    /// ask the real registry).
    fn skopeo_printing(dir: &Path, answer: &str) -> Podman {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("skopeo");
        std::fs::write(&script, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        podman_without_skopeo().with_skopeo(Some(script))
    }

    #[test]
    fn several_candidates_are_settled_by_the_registry() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            format!("sha256:{}", "a".repeat(64)),
            format!("sha256:{}", "b".repeat(64)),
            format!("sha256:{}", "c".repeat(64)),
        );
        let two = || vec![a.clone(), b.clone()];
        let podman = skopeo_printing(dir.path(), &b);
        let got = served_digest(&podman, "reg:5000/app:1", two()).unwrap();
        assert_eq!(got, Some(b.clone()));
        let podman = skopeo_printing(dir.path(), &c);
        let err = served_digest(&podman, "reg:5000/app:1", two()).unwrap_err();
        assert!(err.to_string().contains("tag moved"), "{err}");
        let podman = skopeo_printing(dir.path(), "nonsense");
        let err = served_digest(&podman, "reg:5000/app:1", two()).unwrap_err();
        assert!(err.to_string().contains("reg:5000/app:1"), "{err}");
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
