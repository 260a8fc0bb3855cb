// SPDX-License-Identifier: MIT
//! The command line of `flake-ctl`, declared once as data. Help text, completions and man
//! pages all derive from these types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Manage flake applications: host programs that run inside containers or microVMs.
#[derive(Debug, Parser)]
#[command(name = "flake-ctl", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level actions.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set up the per-user flake directories and configuration (~/.config/flakes).
    Init(InitArgs),
    /// List registered flakes.
    List(ListArgs),
    /// Manage podman (container) flakes.
    Podman(PodmanArgs),
    /// Manage VM flakes (Firecracker or QEMU microvm).
    Firecracker(FirecrackerArgs),
    /// Check flake files and their NAME.d fragments as the launcher would, without launching.
    Validate(ValidateArgs),
    /// Check the host for what the registered flakes need, and say how to fix each problem.
    Doctor(DoctorArgs),
    /// Write registered flakes, their fragments and images into one archive file.
    Export(ExportArgs),
    /// Register the flakes of an export archive on this host, with their images.
    Import(ImportArgs),
    /// Print the completion script of a shell (bash, zsh or fish) on stdout.
    Completion(CompletionArgs),
    /// Write shell completions, man pages or the flake file schema.
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// `flake-ctl validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Check the user's flakes (~/.config/flakes) and images instead of the system's.
    #[arg(long)]
    pub user: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Registered flake names or flake files (NAME.yaml, with NAME.d/ beside it); none: every
    /// registered flake.
    #[arg(value_name = "NAME|FILE")]
    pub flakes: Vec<String>,
}

/// `flake-ctl export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Export the user's flakes (~/.config/flakes) instead of the system's.
    #[arg(long)]
    pub user: bool,
    /// The archive to write (a tar file).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Names of registered flakes.
    #[arg(required = true, value_name = "NAME")]
    pub names: Vec<String>,
}

/// `flake-ctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Import as the user's flakes (~/.config/flakes) instead of the system's.
    #[arg(long)]
    pub user: bool,
    /// Replace flakes, app symlinks and VM images that exist (never a real program).
    #[arg(long)]
    pub force: bool,
    /// The archive written by flake-ctl export.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `flake-ctl doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Check the user's flakes, rootless podman and runtime directory instead of the
    /// system's.
    #[arg(long)]
    pub user: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
    /// Boot a tiny guest under KVM even when no VM flake is registered (a registered VM
    /// flake's kernel, else a pulled VM image's, is used; at most a few seconds).
    #[arg(long)]
    pub boot_probe: bool,
}

/// `flake-ctl completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell.
    pub shell: CompletionShell,
}

/// Shells with completion scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// Z shell.
    Zsh,
    /// fish.
    Fish,
}

/// `flake-ctl generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to generate.
    #[command(subcommand)]
    pub what: Generate,
}

/// Generated artefacts.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// Completion script for a shell, on stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Man pages (section 1) for flake-ctl and each subcommand, into a directory.
    Man {
        /// Target directory.
        dir: PathBuf,
    },
    /// JSON Schema of the flake file format, on stdout.
    Schema,
    /// Names for shell completion: registered app paths or VM image names, one a line.
    #[command(hide = true)]
    Names {
        /// `apps` or `vms`.
        kind: NameKind,
        /// The user's instead of the system's.
        #[arg(long)]
        user: bool,
    },
}

/// What `generate names` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NameKind {
    /// Host app paths of registered flakes.
    Apps,
    /// Pulled VM image names.
    Vms,
}

/// `flake-ctl init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Set up user mode (the only mode init handles; system mode is set up by the package).
    #[arg(long)]
    pub user: bool,
    /// Overwrite existing configuration files.
    #[arg(long)]
    pub force: bool,
}

/// Output formats of listings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// A JSON array of objects.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}

/// `flake-ctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// List the user's flakes instead of the system's.
    #[arg(long)]
    pub user: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `flake-ctl podman`.
#[derive(Debug, Args)]
pub struct PodmanArgs {
    /// Work on the user's flakes (~/.config/flakes) instead of the system's; accepted before
    /// or after the action.
    #[arg(long, global = true)]
    pub user: bool,
    /// The podman action.
    #[command(subcommand)]
    pub action: PodmanAction,
}

/// Podman actions.
#[derive(Debug, Subcommand)]
pub enum PodmanAction {
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Load an image from an OCI archive.
    Load(LoadArgs),
    /// Register an app path that runs a program in a container.
    Register(Box<RegisterArgs>),
    /// Remove a flake registration, or all flakes of an image and the image itself.
    Remove(RemoveArgs),
    /// List the instances of resume and attach flakes and their state.
    Show(ShowArgs),
    /// Pull the images of registered flakes again and remove what the old ones leave.
    ///
    /// Each image is pulled once and reported as changed (old -> new image id and digest) or
    /// up to date. References pinned to a digest (NAME@sha256:...) are not pulled; local
    /// images (localhost/..., or given by id) are skipped. When an image changed, the
    /// flakes' assembled images, their stopped instances on the old image and the old images
    /// that no flake and no container uses are removed; a running instance is kept until it
    /// ends. Layered flakes are assembled again at their next launch. Exit status 0 when
    /// every image could be handled, 1 when one failed (the others are still updated).
    Update(UpdateArgs),
}

/// `flake-ctl podman update`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["app", "all"]))]
pub struct UpdateArgs {
    /// App path of a flake to update (repeatable).
    #[arg(long, num_args = 1..)]
    pub app: Vec<PathBuf>,
    /// Update every registered container flake.
    #[arg(long)]
    pub all: bool,
    /// Change nothing; say what would change (asks the registry with skopeo when it is
    /// installed).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

/// Output formats of reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Lines for people.
    #[default]
    Table,
    /// One JSON object.
    Json,
}

/// `flake-ctl podman show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: Format,
}

/// `flake-ctl firecracker`.
#[derive(Debug, Args)]
pub struct FirecrackerArgs {
    /// Work on the user's flakes and VM images instead of the system's; accepted before or
    /// after the action.
    #[arg(long, global = true)]
    pub user: bool,
    /// The action.
    #[command(subcommand)]
    pub action: FirecrackerAction,
}

/// VM actions.
#[derive(Debug, Subcommand)]
pub enum FirecrackerAction {
    /// Fetch a VM image (a kis archive, or rootfs and kernel) into the image registry.
    Pull(VmPullArgs),
    /// Register an app path that runs a program in a VM.
    Register(Box<VmRegisterArgs>),
    /// Remove a VM flake, or all flakes of a VM image and the image itself.
    Remove(VmRemoveArgs),
    /// List running and stale VM instances.
    Show(ShowArgs),
    /// Pull the VM images made from OCI images again, rebuilding those whose image changed.
    ///
    /// Each image made with `pull --oci` (or `register --oci`) is pulled again from the
    /// reference its record names, as `pull --oci` does: an unchanged digest is reported
    /// up to date and nothing is rebuilt; a new one rebuilds the image next to the old and
    /// swaps it in once verified (old -> new digest). A kernel taken from an OCI image is
    /// pulled again with it; one that came from a file or URL stays the image's current
    /// kernel. Images made otherwise are skipped with a hint (pull --force). VMs running
    /// on an old image keep running on it until they end. Exit status 0 when every image
    /// could be handled, 1 when one failed (the others are still updated).
    Update(VmUpdateArgs),
}

/// `flake-ctl firecracker update`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(true).args(["vm", "app", "all"]))]
pub struct VmUpdateArgs {
    /// Name of a VM image to update (repeatable).
    #[arg(long, num_args = 1.., conflicts_with = "all")]
    pub vm: Vec<String>,
    /// App path of a VM flake whose image to update (repeatable).
    #[arg(long, num_args = 1.., conflicts_with = "all")]
    pub app: Vec<PathBuf>,
    /// Update the images of every registered VM flake.
    #[arg(long)]
    pub all: bool,
    /// Change nothing; say what would change (asks the registry with skopeo when it is
    /// installed).
    #[arg(long)]
    pub dry_run: bool,
    /// Largest rootfs (with headroom) and kernel accepted, as for `pull`: e.g. 16GiB, 100G
    /// or 1.5TB.
    #[arg(long, value_name = "SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_size: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
}

/// VM monitors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VmmArg {
    /// Firecracker.
    Firecracker,
    /// QEMU's microvm machine.
    Qemu,
}

/// `flake-ctl firecracker register`.
#[derive(Debug, Args)]
pub struct VmRegisterArgs {
    /// Name of a pulled VM image; with --oci, the name to pull it as (default: the image's
    /// last path component and tag, such as app-1.2).
    #[arg(long, required_unless_present = "oci")]
    pub vm: Option<String>,
    /// OCI (container) image to pull as the VM image first, or reuse when it is unchanged
    /// (as `firecracker pull --oci`); needs --kernel or --kernel-oci.
    #[arg(long, value_name = "IMAGE")]
    pub oci: Option<String>,
    /// With --oci: the kernel, a file or URL.
    #[arg(long, requires = "oci")]
    pub kernel: Option<String>,
    /// With --oci: an OCI image carrying the kernel (as `firecracker pull --kernel-oci`).
    #[arg(
        long,
        value_name = "IMAGE",
        requires = "oci",
        conflicts_with = "kernel"
    )]
    pub kernel_oci: Option<String>,
    /// With --oci: largest rootfs (with headroom) and kernel accepted, as for `pull`: e.g.
    /// 16GiB, 100G or 1.5TB.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "16GiB",
        value_parser = parse_size,
        requires = "oci"
    )]
    pub max_size: u64,
    /// Absolute host path of the app to create.
    #[arg(long)]
    pub app: PathBuf,
    /// Program inside the VM; defaults to the app path; / runs the entry command of an image
    /// made from an OCI image.
    #[arg(long)]
    pub target: Option<String>,
    /// User recorded for the VM (the VMM runs as the caller).
    #[arg(long)]
    pub run_as: Option<String>,
    /// Keep the VM running and run every call inside it.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: power the VM off after this many seconds without a call (default
    /// 1800; 0 keeps it running until `%remove`).
    #[arg(long, value_name = "SECONDS", requires = "resume")]
    pub idle_timeout: Option<u64>,
    /// Use the guest channel instead of the serial console.
    #[arg(long)]
    pub force_vsock: bool,
    /// Size of a writable overlay disk, e.g. 20GiB, 20G, 512MiB or 1.5GB.
    #[arg(long)]
    pub overlay_size: Option<String>,
    /// No network device at all.
    #[arg(long)]
    pub no_net: bool,
    /// Tar archive extracted into the overlay (repeatable; needs --overlay-size).
    #[arg(long = "include-tar", num_args = 1.., requires = "overlay_size")]
    pub include_tar: Vec<PathBuf>,
    /// Host path copied into the overlay (repeatable; needs --overlay-size).
    #[arg(long = "include-path", num_args = 1.., requires = "overlay_size")]
    pub include_path: Vec<PathBuf>,
    /// The VM monitor.
    #[arg(long, value_enum, default_value = "firecracker")]
    pub vmm: VmmArg,
    /// Replace an existing registration of the same app path.
    #[arg(long)]
    pub force: bool,
}

/// `flake-ctl firecracker pull`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["kis_image", "rootfs", "oci"]))]
pub struct VmPullArgs {
    /// Name of the image in the registry.
    #[arg(long)]
    pub name: String,
    /// KIWI kis archive (https://, file:// or a path; http:// needs
    /// FLAKE_ALLOW_INSECURE_TRANSPORT=1).
    #[arg(long, conflicts_with_all = ["rootfs", "kernel", "initrd"])]
    pub kis_image: Option<String>,
    /// Root filesystem image.
    #[arg(long, requires = "kernel")]
    pub rootfs: Option<String>,
    /// OCI (container) image whose tree becomes the rootfs, pulled through podman when it
    /// names a registry or is not in local storage; needs --kernel or --kernel-oci. Pulling
    /// again rebuilds the VM image only when the image's digest or id, or the kernel,
    /// changed (no --force needed for that); otherwise it says the image is up to date.
    #[arg(long, value_name = "IMAGE", conflicts_with_all = ["kis_image", "rootfs", "initrd"])]
    pub oci: Option<String>,
    /// Kernel image (with --rootfs or --oci).
    #[arg(long)]
    pub kernel: Option<String>,
    /// With --oci: an OCI image carrying the kernel at /boot/vmlinux, /boot/vmlinuz,
    /// /vmlinux or /vmlinuz (the first found).
    #[arg(
        long,
        value_name = "IMAGE",
        requires = "oci",
        conflicts_with = "kernel"
    )]
    pub kernel_oci: Option<String>,
    /// Initrd image.
    #[arg(long, requires = "rootfs")]
    pub initrd: Option<String>,
    /// Replace an existing image once the new one is complete and verified (with --oci:
    /// also one made from another image, and rebuild an unchanged one).
    #[arg(long)]
    pub force: bool,
    /// Largest download, and largest unpacked archive, accepted: e.g. 16GiB, 100G or
    /// 1.5TB. A server that sends nothing for FLAKE_PULL_STALL_TIMEOUT seconds (default
    /// 30) fails the pull.
    #[arg(long, value_name = "SIZE", default_value = "16GiB", value_parser = parse_size)]
    pub max_size: u64,
    /// How many times its compressed size a compressed kis archive may unpack to, past its
    /// first GiB (0: no limit). VM images compress 5 to 50 times; far more is a bomb.
    #[arg(long, value_name = "RATIO", default_value_t = vm_pilot::pull::Policy::DEFAULT_MAX_RATIO)]
    pub max_ratio: u64,
}

/// A `--max-size` value in bytes.
fn parse_size(text: &str) -> Result<u64, flakes::size::SizeError> {
    flakes::size::ByteSize::parse(text).map(flakes::size::ByteSize::bytes)
}

/// `flake-ctl firecracker remove`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["app", "vm"]))]
pub struct VmRemoveArgs {
    /// App path of the flake to remove.
    #[arg(long)]
    pub app: Option<PathBuf>,
    /// Remove every flake of this VM image, then the image.
    #[arg(long)]
    pub vm: Option<String>,
    /// Remove whatever is left of a broken registration.
    #[arg(long)]
    pub force: bool,
}

/// `flake-ctl podman pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. docker.io/amazon/aws-cli.
    #[arg(long)]
    pub uri: String,
}

/// `flake-ctl podman load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// OCI archive; when the path does not exist, the newest file starting with it is used.
    #[arg(long)]
    pub oci: PathBuf,
}

/// `flake-ctl podman register`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["app", "info"]))]
pub struct RegisterArgs {
    /// Image of the app (the delta image when --base is given).
    #[arg(long)]
    pub container: String,
    /// Absolute host path of the app to create, e.g. /usr/bin/aws.
    #[arg(long)]
    pub app: Option<PathBuf>,
    /// Program inside the container; defaults to the app path; / keeps the image's entrypoint.
    #[arg(long)]
    pub target: Option<String>,
    /// Base image the app image is a delta of.
    #[arg(long)]
    pub base: Option<String>,
    /// Extra image layered between base and app, in order (repeatable).
    #[arg(long = "layer", num_args = 1..)]
    pub layers: Vec<String>,
    /// Tar archive extracted into the instance (repeatable).
    #[arg(long = "include-tar", num_args = 1..)]
    pub include_tar: Vec<PathBuf>,
    /// Host path copied into the instance at the same path (repeatable).
    #[arg(long = "include-path", num_args = 1..)]
    pub include_path: Vec<PathBuf>,
    /// Keep one instance running and run every call inside it.
    #[arg(long, conflicts_with = "attach")]
    pub resume: bool,
    /// Keep the instance and attach later calls to it.
    #[arg(long)]
    pub attach: bool,
    /// Podman option for the instance, as `OPTION[ VALUE]`; write a leading backslash before the
    /// dash so it is not read as a flake-ctl flag: --opt "\--net host" (repeatable).
    #[arg(long = "opt", num_args = 1..)]
    pub opts: Vec<String>,
    /// Print the flake description shipped inside the image instead of registering.
    #[arg(long)]
    pub info: bool,
    /// Replace an existing registration of the same app path.
    #[arg(long)]
    pub force: bool,
    /// Provision the host files the image lists as dependencies.
    #[arg(long, alias = "check_host_dependencies")]
    pub check_host_dependencies: bool,
}

/// `flake-ctl podman remove`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["app", "container"]))]
pub struct RemoveArgs {
    /// App path of the flake to remove.
    #[arg(long)]
    pub app: Option<PathBuf>,
    /// Remove every flake running this image, then the image.
    #[arg(long)]
    pub container: Option<String>,
    /// Remove whatever is left of a broken registration.
    #[arg(long)]
    pub force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("flake-ctl").chain(args.iter().copied()))
    }

    fn podman(args: &[&str]) -> PodmanArgs {
        match parse(args).unwrap().command {
            Command::Podman(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn user_flag_before_or_after_the_action() {
        for args in [
            &[
                "podman",
                "--user",
                "register",
                "--container",
                "c",
                "--app",
                "/a",
            ][..],
            &[
                "podman",
                "register",
                "--user",
                "--container",
                "c",
                "--app",
                "/a",
            ][..],
            &[
                "podman",
                "register",
                "--container",
                "c",
                "--app",
                "/a",
                "--user",
            ][..],
        ] {
            assert!(podman(args).user, "{args:?}");
        }
        assert!(!podman(&["podman", "pull", "--uri", "x"]).user);
    }

    #[test]
    fn seed_command_lines_parse() {
        let p = podman(&[
            "podman",
            "--user",
            "register",
            "--app",
            "/h/ok-google",
            "--target",
            "/usr/local/bin/gemini",
            "--container",
            "public.ecr.aws/x/gemini:latest",
            "--resume",
            "--opt",
            r"\--net host",
            "--opt",
            r"\--interactive",
            "--opt",
            r"\--workdir /root/ai",
            "--opt",
            r"\--volume %HOME/ai:/root/ai",
            "--opt",
            r"\-e GEMINI_API_KEY=KEY",
        ]);
        let PodmanAction::Register(r) = p.action else {
            panic!("register")
        };
        assert_eq!(r.opts.len(), 5);
        assert!(r.resume);
        assert!(parse(&["podman", "pull", "--uri", "docker.io/amazon/aws-cli"]).is_ok());
        assert!(parse(&[
            "podman",
            "register",
            "--container",
            "amazon/aws-cli",
            "--app",
            "/usr/bin/aws",
            "--target",
            "/"
        ])
        .is_ok());
        assert!(parse(&["list"]).is_ok());
    }

    #[test]
    fn multiple_values_and_occurrences() {
        let p = podman(&[
            "podman",
            "register",
            "--container",
            "c",
            "--app",
            "/a",
            "--base",
            "b",
            "--layer",
            "l1",
            "l2",
            "--layer",
            "l3",
            "--check_host_dependencies",
        ]);
        let PodmanAction::Register(r) = p.action else {
            panic!("register")
        };
        assert_eq!(r.layers, ["l1", "l2", "l3"]);
        assert!(r.check_host_dependencies);
    }

    #[test]
    fn usage_errors() {
        for args in [
            &["podman", "register", "--container", "c"][..],
            &[
                "podman",
                "register",
                "--container",
                "c",
                "--app",
                "/a",
                "--info",
            ][..],
            &[
                "podman",
                "register",
                "--container",
                "c",
                "--app",
                "/a",
                "--resume",
                "--attach",
            ][..],
            &["podman", "remove"][..],
            &["podman", "remove", "--app", "/a", "--container", "c"][..],
            &["list", "--format", "xml"][..],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
    }
}
