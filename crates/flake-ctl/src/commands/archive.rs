// SPDX-License-Identifier: MIT
//! The flake archive shared by `export` and `import`: a plain tar whose first member is a
//! JSON manifest naming every other member with its size and sha256.
//!
//! An archive comes from another host and is hostile input. Reading never uses the
//! member's own name as a path: each member the manifest names is copied, size-bounded,
//! into a flat staging file (`m0`, `m1`, ...), and anything else (a link, a directory, a
//! device, a name the manifest does not list, a duplicate, a `..` or absolute name) stops
//! the import before anything outside the staging directory is touched.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest's member name; always the archive's first member.
pub const MANIFEST: &str = "manifest.json";
/// Format version written and accepted.
pub const VERSION: u32 = 1;
/// Largest manifest read.
const MAX_MANIFEST: u64 = 4 << 20;
/// Largest single member (a container image or a rootfs).
pub const MAX_MEMBER: u64 = 64 << 30;
/// Largest flake file or fragment read.
const MAX_TEXT: u64 = 1 << 20;
/// Most members one archive may hold.
const MAX_MEMBERS: usize = 4096;

/// What an archive holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version.
    pub version: u32,
    /// The flakes, in the order given to export.
    pub flakes: Vec<FlakeEntry>,
    /// Container images, each saved once (`podman save`).
    pub container_images: Vec<ImageEntry>,
    /// Every member but the manifest: name, size and sha256.
    pub members: BTreeMap<String, Member>,
}

/// One exported flake.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlakeEntry {
    /// The flake name.
    pub name: String,
    /// `podman` or `firecracker`.
    pub engine: String,
    /// The app path it was registered at.
    pub app: PathBuf,
    /// Member holding `NAME.yaml`.
    pub yaml: String,
    /// Fragment file name in `NAME.d/` -> member.
    pub fragments: BTreeMap<String, String>,
    /// The VM image of a VM flake.
    pub vm_image: Option<VmImageEntry>,
}

/// The files of a VM flake's image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VmImageEntry {
    /// Image name: its directory below the images directory.
    pub name: String,
    /// File (`rootfs`, `kernel`, `initrd`) -> member.
    pub files: BTreeMap<String, String>,
}

/// One saved container image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The image reference.
    pub image: String,
    /// Member holding its `podman save` archive.
    pub member: String,
}

/// Size and checksum of one member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// VM image files an archive may carry: the image and the marker of its guest init.
pub const VM_FILES: [&str; 4] = [
    "rootfs",
    "kernel",
    "initrd",
    vm_pilot::pull::GUEST_CHANNEL_FILE,
];

/// Lower-case hex sha256 and size of a file.
pub fn digest_file(path: &Path) -> Result<Member> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Member {
        size,
        sha256: hex(&hasher.finalize()),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `manifest` and then each member from its source file, in manifest order.
pub fn write(out: &Path, manifest: &Manifest, sources: &BTreeMap<String, PathBuf>) -> Result<()> {
    let file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut tar = tar::Builder::new(file);
    let text = serde_json::to_vec_pretty(manifest)?;
    let mut header = regular_header(text.len() as u64);
    tar.append_data(&mut header, MANIFEST, text.as_slice())
        .with_context(|| format!("cannot write {}", out.display()))?;
    for (name, source) in sources {
        let mut input =
            File::open(source).with_context(|| format!("cannot read {}", source.display()))?;
        let size = input.metadata()?.len();
        let mut header = regular_header(size);
        tar.append_data(&mut header, name, &mut input)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let mut file = tar
        .into_inner()
        .with_context(|| format!("cannot write {}", out.display()))?;
    file.flush()?;
    file.sync_all()
        .with_context(|| format!("cannot write {}", out.display()))
}

fn regular_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o600);
    header.set_mtime(0);
    header
}

/// A member name as the manifest may use it: relative, plain components, no `..`.
pub fn check_member_name(name: &str) -> Result<()> {
    let path = Path::new(name);
    let plain = !name.is_empty()
        && name.len() <= 255
        && path.components().all(|c| matches!(c, Component::Normal(_)))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '@'));
    ensure!(
        plain,
        "archive member '{name}' is not a plain relative name; refusing the archive"
    );
    Ok(())
}

/// An archive unpacked into a private staging directory and checked against its manifest.
#[derive(Debug)]
pub struct Staged {
    /// The manifest.
    pub manifest: Manifest,
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    /// The staging directory's lock, held while the import runs: a directory whose lock
    /// can be taken belongs to an import that died ([`collect_stale`]).
    _lock: File,
}

impl Staged {
    /// The staged file of member `name`.
    pub fn file(&self, name: &str) -> Result<&Path> {
        self.files
            .get(name)
            .map(PathBuf::as_path)
            .with_context(|| format!("archive member '{name}' is not in the manifest"))
    }

    /// The staged text of member `name`.
    pub fn text(&self, name: &str) -> Result<String> {
        let path = self.file(name)?;
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
        ensure!(
            size <= MAX_TEXT,
            "archive member '{name}' is larger than {MAX_TEXT} bytes; not a flake file"
        );
        std::fs::read_to_string(path)
            .with_context(|| format!("archive member '{name}' is not text"))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unpacks `archive` into a new private directory below `parent`, verifying every member's
/// name, kind, size and checksum against the manifest; nothing else is written.
pub fn stage(archive: &Path, parent: &Path) -> Result<Staged> {
    collect_stale(parent);
    let dir = private_dir(parent)?;
    let lock = match lock_new(&dir) {
        Ok(lock) => lock,
        Err(err) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(err);
        }
    };
    let mut staged = Staged {
        manifest: empty_manifest(),
        dir,
        files: BTreeMap::new(),
        _lock: lock,
    };
    let file = File::open(archive).with_context(|| format!("cannot read {}", archive.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut entries = tar
        .entries()
        .with_context(|| format!("{} is not a flake archive", archive.display()))?;
    let first = entries
        .next()
        .with_context(|| format!("{} is empty", archive.display()))?
        .with_context(|| format!("{} is not a flake archive", archive.display()))?;
    staged.manifest = read_manifest(first, archive)?;
    for (index, entry) in entries.enumerate() {
        let entry =
            entry.with_context(|| format!("{} is truncated or corrupt", archive.display()))?;
        let target = staged.dir.join(format!("m{index}"));
        let name = stage_member(entry, &staged.manifest, &staged.files, &target, archive)?;
        staged.files.insert(name, target);
    }
    if let Some(missing) = staged
        .manifest
        .members
        .keys()
        .find(|m| !staged.files.contains_key(*m))
    {
        bail!(
            "{}: member '{missing}' named by the manifest is missing; export it again",
            archive.display()
        );
    }
    Ok(staged)
}

fn empty_manifest() -> Manifest {
    Manifest {
        version: VERSION,
        flakes: Vec::new(),
        container_images: Vec::new(),
        members: BTreeMap::new(),
    }
}

/// Name prefix of import staging directories.
const STAGING_PREFIX: &str = ".flake-import.";
/// The lock file in a staging directory.
const STAGING_LOCK: &str = "lock";
/// How long a staging directory without a lock file is left alone: its import may have
/// made it an instant ago and not yet locked it.
const UNLOCKED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates and locks the lock file of the new staging directory `dir`.
fn lock_new(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(STAGING_LOCK);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// Removes the staging directories below `parent` that imports killed before they could
/// clean up (`kill -9`, a power cut) left behind: the caller's own, whose lock is free (or
/// that have no lock and are over a minute old). Best effort; never follows a link.
pub fn collect_stale(parent: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX)
        {
            continue;
        }
        let dir = entry.path();
        let Ok(meta) = dir.symlink_metadata() else {
            continue;
        };
        if meta.is_dir() && meta.uid() == me && abandoned(&dir, &meta) {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Whether the staging directory `dir` belongs to no running import.
fn abandoned(dir: &Path, meta: &std::fs::Metadata) -> bool {
    use rustix::fs::{FlockOperation, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    match rustix::fs::open(dir.join(STAGING_LOCK), flags, Mode::empty()) {
        Ok(fd) => rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive).is_ok(),
        Err(rustix::io::Errno::NOENT) => meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age > UNLOCKED_GRACE),
        Err(_) => false,
    }
}

fn private_dir(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let dir = parent.join(format!("{STAGING_PREFIX}{}.{nanos}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create staging directory {}", dir.display()))?;
    Ok(dir)
}

fn read_manifest(entry: tar::Entry<'_, File>, archive: &Path) -> Result<Manifest> {
    let name = entry_name(&entry)?;
    ensure!(
        name == MANIFEST && entry.header().entry_type() == tar::EntryType::Regular,
        "{}: the first member is '{name}', not {MANIFEST}; not a flake archive",
        archive.display()
    );
    let mut text = Vec::new();
    entry.take(MAX_MANIFEST + 1).read_to_end(&mut text)?;
    ensure!(
        text.len() as u64 <= MAX_MANIFEST,
        "{}: manifest larger than {MAX_MANIFEST} bytes",
        archive.display()
    );
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{}: the manifest is corrupt", archive.display()))?;
    check_manifest(&manifest)
        .with_context(|| format!("{}: the manifest is invalid", archive.display()))?;
    Ok(manifest)
}

/// The manifest's own consistency: version, names, and every reference listed as a member.
fn check_manifest(manifest: &Manifest) -> Result<()> {
    ensure!(
        manifest.version == VERSION,
        "format version {} is not {VERSION}; use a flake-ctl of the same release",
        manifest.version
    );
    ensure!(
        manifest.members.len() <= MAX_MEMBERS,
        "more than {MAX_MEMBERS} members"
    );
    for (name, member) in &manifest.members {
        check_member_name(name)?;
        ensure!(
            member.size <= MAX_MEMBER,
            "member '{name}' is larger than {MAX_MEMBER} bytes"
        );
        ensure!(
            member.sha256.len() == 64 && member.sha256.chars().all(|c| c.is_ascii_hexdigit()),
            "member '{name}' has no valid sha256"
        );
    }
    let listed = |m: &String| {
        ensure!(
            manifest.members.contains_key(m),
            "'{m}' is referenced but not listed as a member"
        );
        Ok(())
    };
    for flake in &manifest.flakes {
        listed(&flake.yaml)?;
        flake.fragments.values().try_for_each(listed)?;
        if let Some(vm) = &flake.vm_image {
            vm.files.values().try_for_each(listed)?;
        }
    }
    manifest
        .container_images
        .iter()
        .try_for_each(|i| listed(&i.member))
}

fn entry_name(entry: &tar::Entry<'_, File>) -> Result<String> {
    let bytes = entry.path_bytes();
    let name = std::str::from_utf8(&bytes).context("archive member name is not UTF-8")?;
    Ok(name.trim_end_matches('/').to_string())
}

/// Copies one member into `target` after checking it is a listed, new, regular file of the
/// listed size, and that its content has the listed checksum.
fn stage_member(
    entry: tar::Entry<'_, File>,
    manifest: &Manifest,
    seen: &BTreeMap<String, PathBuf>,
    target: &Path,
    archive: &Path,
) -> Result<String> {
    let name = entry_name(&entry)?;
    check_member_name(&name).with_context(|| archive.display().to_string())?;
    let kind = entry.header().entry_type();
    ensure!(
        kind == tar::EntryType::Regular,
        "{}: member '{name}' is a {kind:?}, not a regular file; refusing the archive",
        archive.display()
    );
    let Some(listed) = manifest.members.get(&name) else {
        bail!(
            "{}: member '{name}' is not in the manifest; refusing the archive",
            archive.display()
        );
    };
    ensure!(
        !seen.contains_key(&name),
        "{}: member '{name}' appears twice; refusing the archive",
        archive.display()
    );
    ensure!(
        entry.header().size()? == listed.size,
        "{}: member '{name}' has {} bytes, the manifest says {}; the archive is corrupt",
        archive.display(),
        entry.header().size()?,
        listed.size
    );
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut hasher = Sha256::new();
    let mut reader = entry.take(listed.size);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("{}: member '{name}' is truncated", archive.display()))?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        hasher.update(chunk);
        out.write_all(chunk)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    let actual = hex(&hasher.finalize());
    ensure!(
        actual == listed.sha256,
        "{}: member '{name}' has sha256 {actual}, the manifest says {}; the archive is \
         corrupt, export it again",
        archive.display(),
        listed.sha256
    );
    Ok(name)
}

/// Largest `manifest.json` read from a saved container image.
const MAX_IMAGE_MANIFEST: u64 = 1 << 20;

/// One image of a `podman save` (docker-archive) manifest.
#[derive(Debug, Deserialize)]
struct SavedImage {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
}

/// Checks that the saved container image at `path` holds exactly one image tagged only as
/// `image`, so that `podman load` cannot replace other tags on this host.
pub fn check_saved_image(path: &Path, image: &str) -> Result<()> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut tar = tar::Archive::new(file);
    let mut found = None;
    for entry in tar.entries()? {
        let entry = entry.with_context(|| format!("the saved image of {image} is corrupt"))?;
        if entry.path_bytes().as_ref() == b"manifest.json" {
            let mut text = Vec::new();
            entry.take(MAX_IMAGE_MANIFEST).read_to_end(&mut text)?;
            found = Some(text);
            break;
        }
    }
    let text = found.with_context(|| {
        format!("the saved image of {image} has no manifest.json; export it again")
    })?;
    let saved: Vec<SavedImage> = serde_json::from_slice(&text)
        .with_context(|| format!("the saved image of {image} has a corrupt manifest.json"))?;
    let tags: Vec<&String> = saved
        .iter()
        .flat_map(|s| s.repo_tags.iter().flatten())
        .collect();
    let only_this =
        saved.len() == 1 && tags.len() == 1 && tags.iter().all(|t| same_image(t, image));
    ensure!(
        only_this,
        "the saved image of {image} carries other images or tags ({}); refusing the archive",
        tags.iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Whether `tag` (as podman writes it, fully qualified) names the reference `image`.
fn same_image(tag: &str, image: &str) -> bool {
    let tagged = if image
        .rsplit('/')
        .next()
        .is_some_and(|last| last.contains(':'))
    {
        image.to_string()
    } else {
        format!("{image}:latest")
    };
    tag == tagged || tag.ends_with(&format!("/{tagged}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_image_tags_match_their_reference() {
        assert!(same_image(
            "localhost/busybox:latest",
            "localhost/busybox:latest"
        ));
        assert!(same_image("localhost/busybox:latest", "localhost/busybox"));
        assert!(same_image("docker.io/library/busybox:latest", "busybox"));
        assert!(!same_image("localhost/busybox:latest", "localhost/other"));
        assert!(!same_image("localhost/xbusybox:latest", "busybox"));
        assert!(!same_image("localhost/busybox:1", "localhost/busybox"));
    }

    #[test]
    fn member_names_must_be_plain_and_relative() {
        for bad in ["", "/etc/passwd", "../x", "a/../../b", "a\nb", "a b"] {
            assert!(check_member_name(bad).is_err(), "{bad:?}");
        }
        for good in [
            "flakes/x.yaml",
            "flakes/x.d/a.yaml",
            "images/0.tar",
            "vm/leap/rootfs",
        ] {
            check_member_name(good).unwrap();
        }
    }
}
