// SPDX-License-Identifier: MIT
//! Image references as podman understands them (`[domain/]path[:tag][@digest]`).
//!
//! An image name is an engine argument. Checked against the reference grammar of
//! containers/image (the `distribution/reference` grammar podman uses), a name can never
//! start with `-` and be taken for an option (`--container=--privileged`), contain white
//! space, or smuggle a line into a generated Containerfile. Registration and every launch
//! apply the same check, so a hand-edited flake file is held to it as well.

/// Longest name part podman accepts (domain and path, without tag or digest).
const MAX_NAME: usize = 255;
/// Longest tag podman accepts.
const MAX_TAG: usize = 128;

/// Why an image reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{}' is not a valid image reference: {reason}", image.escape_debug())]
pub struct ImageRefError {
    /// The refused reference.
    pub image: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks `image` against podman's reference grammar.
///
/// # Example
/// ```
/// assert!(flakes::image_ref::check("docker.io/amazon/aws-cli:2.0").is_ok());
/// assert!(flakes::image_ref::check("--privileged").is_err());
/// ```
pub fn check(image: &str) -> Result<(), ImageRefError> {
    reason(image).map_or(Ok(()), |reason| {
        Err(ImageRefError {
            image: image.to_string(),
            reason,
        })
    })
}

/// The digest `image` is pinned to (`name@sha256:...` or `name:tag@sha256:...`), if any.
///
/// # Example
/// ```
/// let digest = format!("sha256:{}", "ab".repeat(32));
/// let pinned = format!("quay.io/x/app:1@{digest}");
/// assert_eq!(flakes::image_ref::pinned_digest(&pinned), Some(digest.as_str()));
/// assert_eq!(flakes::image_ref::pinned_digest("quay.io/x/app:1"), None);
/// ```
pub fn pinned_digest(image: &str) -> Option<&str> {
    image.split_once('@').map(|(_, digest)| digest)
}

/// True when `image` names an image by its id (12 to 64 hex digits, optionally after
/// `sha256:`) rather than by a repository.
pub fn is_image_id(image: &str) -> bool {
    let hex = image.strip_prefix("sha256:").unwrap_or(image);
    (12..=64).contains(&hex.len())
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The registry part of `image` (`quay.io`, `127.0.0.1:5000`, `localhost`), `None` for a
/// short name such as `amazon/aws-cli` that podman resolves through its search registries.
pub fn domain(image: &str) -> Option<&str> {
    let (first, rest) = image.split_once('/')?;
    let is_registry = first == "localhost" || first.contains(['.', ':']);
    (is_registry && !rest.is_empty()).then_some(first)
}

/// What is wrong with `image`, or `None` when it is a valid reference.
fn reason(image: &str) -> Option<String> {
    if image.is_empty() {
        return Some("it is empty".into());
    }
    if image.starts_with('-') {
        return Some("it starts with '-' and would be taken for an engine option".into());
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains white space or control characters".into());
    }
    if let Some(transport) = transport(image) {
        return Some(format!(
            "'{transport}:' names a podman transport that reads local files; only registry \
             references are accepted"
        ));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        if !is_digest(digest) {
            return Some(format!(
                "digest '{digest}' is not ALGORITHM:HEX with at least 32 hex digits"
            ));
        }
    }
    let (name, tag) = split_tag(rest);
    if let Some(tag) = tag {
        if !is_tag(tag) {
            return Some(format!(
                "tag '{tag}' must be 1-128 of A-Z a-z 0-9 _ . - and not start with . or -"
            ));
        }
    }
    name_reason(name)
}

/// Transports of containers/image that podman takes from a `TRANSPORT:` prefix. `docker`
/// is not among them: without `//` after it, `docker:tag` is the image `docker`.
const TRANSPORTS: [&str; 9] = [
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
];

/// The transport `image` starts with (`oci:PATH`), if any: the part before the first `:`,
/// when no `/` comes before it, and it is a transport's name.
fn transport(image: &str) -> Option<&str> {
    let (prefix, _) = image.split_once(':')?;
    (!prefix.contains('/') && TRANSPORTS.contains(&prefix)).then_some(prefix)
}

/// Splits `name[:tag]`; a `:` before the last `/` belongs to a registry port.
fn split_tag(text: &str) -> (&str, Option<&str>) {
    match text.rfind(':') {
        Some(colon) if !text[colon..].contains('/') => (&text[..colon], Some(&text[colon + 1..])),
        _ => (text, None),
    }
}

fn name_reason(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the name before the tag or digest is empty".into());
    }
    if name.len() > MAX_NAME {
        return Some(format!("the name is longer than {MAX_NAME} characters"));
    }
    let components: Vec<&str> = name.split('/').collect();
    let path = match components.split_first() {
        Some((first, rest)) if !rest.is_empty() && is_domain(first) => rest,
        _ => &components[..],
    };
    path.iter().find(|c| !is_path_component(c)).map(|bad| {
        format!(
            "'{bad}' is not a valid name component (lower-case letters and digits, joined by \
             single '.', '_' or '__', or dashes)"
        )
    })
}

/// `domain-component ('.' domain-component)* (':' port)?`.
fn is_domain(text: &str) -> bool {
    let (host, port) = match text.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok && !host.is_empty() && host.split('.').all(is_domain_component)
}

/// `[a-zA-Z0-9]` or `[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`.
fn is_domain_component(text: &str) -> bool {
    let bytes = text.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`.
fn is_path_component(text: &str) -> bool {
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(&bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &text[sep..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(text: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    bytes.first().is_some_and(|b| word(*b))
        && bytes.len() <= MAX_TAG
        && bytes.iter().all(|b| word(*b) || *b == b'.' || *b == b'-')
}

/// `ALGORITHM:HEX`, the algorithm `[A-Za-z][A-Za-z0-9]*` joined by `+ . _ -`.
fn is_digest(text: &str) -> bool {
    let Some((algorithm, hex)) = text.split_once(':') else {
        return false;
    };
    let component_ok = |c: &str| {
        let mut bytes = c.bytes();
        bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
            && bytes.all(|b| b.is_ascii_alphanumeric())
    };
    algorithm.split(['+', '.', '_', '-']).all(component_ok)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_references() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let with_digest = format!("localhost/busybox@{digest}");
        let tagged_digest = format!("quay.io/x/y:1@{digest}");
        let valid = [
            "busybox",
            "localhost/busybox:latest",
            "docker.io/amazon/aws-cli",
            "registry.example.com:5000/team/app:v1.2-rc_3",
            "127.0.0.1:5000/flake-test/img:1",
            "Registry.Example.com/app",
            "a.b__c-d---e/f_g",
            "localhost/flake-pilot/app:0123456789abcdef-fedcba9876543210",
            &with_digest,
            &tagged_digest,
            "e1108c96a165",
            // The seed documents' examples.
            "amazon/aws-cli",
            "registry.opensuse.org/home/marcus.schaefer/delta_containers/containers_tw/joe",
            "public.ecr.aws/b9k1j9y6/ai/gemini:latest",
            // Image names that only look like transports.
            "docker:latest",
            "localhost/oci:1",
            "oci/dir:1",
            "ocifoo:1",
        ];
        for image in valid {
            assert!(check(image).is_ok(), "{image}: {:?}", check(image));
        }
    }

    #[test]
    fn digests_ids_and_domains() {
        let digest = format!("sha256:{}", "0f".repeat(32));
        let pinned = format!("127.0.0.1:5000/a/b:1@{digest}");
        assert_eq!(pinned_digest(&pinned), Some(digest.as_str()));
        assert_eq!(pinned_digest("127.0.0.1:5000/a/b:1"), None);
        for id in ["e1108c96a165", &"a".repeat(64), &digest] {
            assert!(is_image_id(id), "{id}");
        }
        for not_id in [
            "busybox",
            "e1108c96a16",
            "localhost/e1108c96a165",
            &"a".repeat(65),
        ] {
            assert!(!is_image_id(not_id), "{not_id}");
        }
        let domains = [
            ("localhost/busybox:latest", Some("localhost")),
            ("127.0.0.1:5000/flake-pilot/busybox", Some("127.0.0.1:5000")),
            ("quay.io/x/y", Some("quay.io")),
            ("localhost:5000/x", Some("localhost:5000")),
            ("amazon/aws-cli", None),
            ("busybox", None),
            ("busybox:1.36", None),
        ];
        for (image, want) in domains {
            assert_eq!(domain(image), want, "{image}");
        }
    }

    #[test]
    fn invalid_references() {
        let long = format!("localhost/{}", "a".repeat(250));
        let long_tag = format!("busybox:{}", "t".repeat(129));
        let cases = [
            ("", "empty"),
            ("--privileged", "'-'"),
            ("-v", "'-'"),
            ("base\nRUN rm -rf /", "white space"),
            ("bad image", "white space"),
            ("tab\there", "white space"),
            ("nul\0x", "control"),
            ("Busybox", "component"),
            ("localhost/Upper", "component"),
            ("a..b", "component"),
            ("a___b", "component"),
            ("a/", "component"),
            ("/abs", "component"),
            ("a//b", "component"),
            ("x/-y", "component"),
            ("busybox:", "tag"),
            ("busybox:.x", "tag"),
            ("busybox:-x", "tag"),
            (&long_tag, "tag"),
            ("busybox@sha256:abc", "digest"),
            ("busybox@", "digest"),
            (":tag", "empty"),
            (&long, "longer"),
            ("docker://busybox", "component"),
            ("oci:evil", "transport"),
            ("dir:evil", "transport"),
            ("docker-archive:x", "transport"),
            ("oci-archive:x", "transport"),
            ("containers-storage:x", "transport"),
            ("docker-daemon:x", "transport"),
            ("ostree:x", "transport"),
            ("sif:x", "transport"),
            ("tarball:x", "transport"),
            ("oci:/tmp/layout:tag", "transport"),
        ];
        for (image, why) in cases {
            let err = check(image).expect_err(image).to_string();
            assert!(err.contains(why), "{image:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }
}
