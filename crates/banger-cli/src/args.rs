//! The command line, as clap derive structs. Every group's long help carries runnable examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version = banger_version(),
    about = "Disposable Linux microVMs, one command away",
    long_about = "banger gives you a disposable Linux machine (a microVM) in one command, and \
long-lived VMs to stop, start, ssh into and delete. A per-user daemon (bangerd) owns all state; \
it starts on demand.",
    after_long_help = "Examples:\n  banger version\n  banger doctor\n  banger daemon status\n  banger completion bash > /etc/bash_completion.d/banger",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

fn banger_version() -> String {
    let b = banger_core::build::BuildInfo::current();
    format!(
        "{} (commit {}, built {})",
        b.version,
        b.commit,
        b.build_time()
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the version, commit and build time of this banger.
    #[command(after_long_help = "Examples:\n  banger version\n  banger version --json")]
    Version(JsonFlag),
    /// Inspect or stop the background daemon (bangerd).
    #[command(subcommand)]
    Daemon(DaemonCommand),
    /// Check this host for what banger needs (read-only: changes nothing).
    #[command(
        long_about = "Runs read-only checks and prints one PASS, WARN or FAIL line for each, \
with the command that fixes a FAIL. It never starts the daemon and opens the store read-only: \
diagnostics never create, migrate or write anything. Exits 1 when any check fails.",
        after_long_help = "Examples:\n  banger doctor\n  banger doctor --json"
    )]
    Doctor(JsonFlag),
    /// Create, run and manage VMs.
    #[command(subcommand, long_about = VM_LONG_ABOUT)]
    Vm(VmCommand),
    /// List running VMs (same as `banger vm list`).
    #[command(after_long_help = "Examples:\n  banger ps\n  banger ps -a\n  banger ps -q")]
    Ps(ListArgs),
    /// Manage images: root filesystems with their kernels.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Manage kernels that images boot.
    #[command(subcommand)]
    Kernel(KernelCommand),
    /// Internal tools (not a stable interface).
    #[command(subcommand, hide = true)]
    Internal(InternalCommand),
    /// Show, refresh or remove banger's `Host *.vm` block in ~/.ssh/config.
    #[command(
        long_about = "Plain `ssh web.vm` (and scp, rsync, editors' remote modes) work through a block \
banger keeps in your ~/.ssh/config, between two marker lines: banger's key, user root, publickey \
only, and banger's own known_hosts with strict host key checking (the guests' keys are recorded \
when they boot, so there is never a prompt). The block includes a file of the running VMs' \
addresses, so `NAME.vm` works even where the host does not route .vm to banger's DNS. The \
daemon writes the block when it starts (config ssh_config = false turns that off); everything \
else in the file is kept byte for byte.\n\n\
With no flag, writes (or refreshes) the block now; --print shows it and changes nothing; \
--remove takes it out and leaves the rest of the file exactly as it was.",
        after_long_help = "Examples:\n  banger ssh-config\n  banger ssh-config --print\n  banger ssh-config --remove\n  ssh web.vm uptime"
    )]
    SshConfig(SshConfigArgs),
    /// Install banger as systemd system units (bangerd as you, plus the root helper).
    #[command(subcommand, long_about = SYSTEM_LONG_ABOUT)]
    System(SystemCommand),
    /// Serve MCP on stdio: coding agents run code in banger VMs.
    #[command(long_about = MCP_LONG_ABOUT, after_long_help = MCP_EXAMPLES)]
    Mcp(McpArgs),
    /// Print a shell completion script.
    #[command(
        after_long_help = "Examples:\n  banger completion bash > ~/.local/share/bash-completion/completions/banger\n  banger completion zsh > \"${fpath[1]}/_banger\"\n  banger completion fish > ~/.config/fish/completions/banger.fish"
    )]
    Completion {
        /// The shell to generate for.
        shell: Shell,
    },
    /// Open the local web UI in your browser (or print its link).
    #[command(
        long_about = "Opens the daemon's local web UI (config web_listen, default \
127.0.0.1:7777): a dashboard, VMs with their logs and ports, create with live stages, images and \
kernels. The link carries the daemon's secret token once; the browser keeps it as a cookie. \
It is opened with $BROWSER, else xdg-open when there is a display; otherwise, or with --print, \
the link is printed. The token changes when the daemon restarts.",
        after_long_help = "Examples:\n  banger ui\n  banger ui --print"
    )]
    Ui(UiArgs),
}

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Print the link and open no browser.
    #[arg(long)]
    pub print: bool,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the running daemon (starting it if needed): build, pid, socket, paths, requests.
    #[command(after_long_help = "Examples:\n  banger daemon status\n  banger daemon status --json")]
    Status(JsonFlag),
    /// Stop the running daemon. VMs keep running; the next banger command starts it again.
    #[command(after_long_help = "Examples:\n  banger daemon stop")]
    Stop,
}

#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// Print the block and change nothing.
    #[arg(long, conflicts_with = "remove")]
    pub print: bool,
    /// Remove the block, leaving the rest of ~/.ssh/config as it was.
    #[arg(long)]
    pub remove: bool,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags shared by `vm create` and `vm run`. Only flags the user gives are sent; the daemon
/// fills in the defaults shown here.
#[derive(Debug, Args, Clone, Default)]
pub struct CreateFlags {
    /// VM name: 1-63 of a-z, 0-9 and '-', not 12+ hex digits (ids look like that) [default: a
    /// generated name like brave-otter]
    #[arg(long)]
    pub name: Option<String>,
    /// Image name or id [default: debian-bookworm, or config default_image]
    #[arg(long)]
    pub image: Option<String>,
    /// Virtual CPUs: 1-32 on Firecracker, 1-255 on QEMU [default: 2]
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Memory, e.g. 2G or 512M; a bare number is MiB; at most 1T (QEMU: 990G) [default: 2048M]
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Size of the VM's root disk (grows the image's), at most 16T [default: the image's size]
    #[arg(long, allow_hyphen_values = true)]
    pub disk: Option<String>,
    /// Size of the work disk mounted at /root, at most 16T [default: 8G]
    #[arg(long = "work-disk", allow_hyphen_values = true)]
    pub work_disk: Option<String>,
    /// Give the VM outbound network access (NAT through the host)
    #[arg(long)]
    pub nat: bool,
    /// VMM backend: firecracker or qemu [default: config vmm / BANGER_VMM; auto picks
    /// Firecracker when its binary is found, else QEMU]
    #[arg(long)]
    pub vmm: Option<String>,
    /// Boot, even when a warm-start template of the image and shape exists (by default the
    /// VM is restored from it)
    #[arg(long)]
    pub cold: bool,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Create and boot a VM, printing each stage as it happens.
    #[command(
        after_long_help = "Examples:\n  banger vm create\n  banger vm create --name web --cpus 4 --memory 4G\n  banger vm create --image debian-bookworm --work-disk 20G --nat"
    )]
    Create(CreateFlags),
    /// Create a VM and open a shell in it, or run a command there and exit with its status.
    #[command(
        long_about = "Creates a VM and, once its sshd answers, opens an interactive ssh session; or, \
given a command after `--`, runs it through the guest agent (as banger vm exec does, no ssh) and \
exits with its exit status. With --rm the VM is deleted afterwards, whatever the exit status -- \
except when sshd never answered: then the VM is kept for inspection (banger vm logs NAME).\n\n\
Given PATH (any directory inside a git work tree), the enclosing repository is shipped to \
/root/repo first (see banger vm workspace prepare: a depth-10 clone plus your uncommitted \
changes, or --full-copy), `mise install` runs there when the repository pins tools and the guest \
has mise, and the shell or the command starts in /root/repo. A PATH banger cannot ship is refused \
before any VM is made. --dry-run prints what would be shipped and makes nothing.",
        after_long_help = "Examples:\n  banger vm run\n  banger vm run --rm -- uname -a\n  banger vm run --name scratch --cpus 4 -- make test\n  banger vm run --rm . -- make test\n  banger vm run ./app --branch try --from v1.2 -- cargo test\n  banger vm run . --dry-run"
    )]
    Run(RunArgs),
    /// Boot stopped VMs.
    #[command(after_long_help = "Examples:\n  banger vm start web\n  banger vm start web db")]
    Start(Refs),
    /// Shut VMs down: ask the guest (Firecracker: Ctrl-Alt-Del; QEMU: the ACPI power button),
    /// then force it off after the grace period.
    #[command(
        after_long_help = "Examples:\n  banger vm stop web\n  banger vm stop $(banger ps -q)"
    )]
    Stop(Refs),
    /// Stop and start VMs.
    #[command(after_long_help = "Examples:\n  banger vm restart web")]
    Restart(Refs),
    /// Pause running VMs' vCPUs (they keep their memory, address and resources; exec and ssh
    /// are refused until resumed; stop works). A daemon restart keeps them paused.
    #[command(after_long_help = "Examples:\n  banger vm pause web\n  banger vm pause web db")]
    Pause(Refs),
    /// Resume paused VMs.
    #[command(after_long_help = "Examples:\n  banger vm resume web")]
    Resume(Refs),
    /// Fork a running VM: pause it, save its state, copy its disks (reflink or sparse copy),
    /// resume it, and restore a new VM from the saved state with its own hostname, address,
    /// MAC, machine-id, SSH host keys, entropy and clock. Each VM's later writes stay its own.
    #[command(after_long_help = "Examples:\n  banger vm fork web --name web-try")]
    Fork(ForkArgs),
    /// Send a signal to VMs' VMM processes (default KILL).
    #[command(
        after_long_help = "Examples:\n  banger vm kill web\n  banger vm kill --signal TERM web"
    )]
    Kill(KillArgs),
    /// Delete VMs and their disks (irreversible; running VMs are killed first).
    #[command(
        visible_alias = "rm",
        after_long_help = "Examples:\n  banger vm delete web\n  banger vm rm web db"
    )]
    Delete(Refs),
    /// Delete every stopped VM, after a confirmation.
    #[command(
        long_about = "Delete every VM that is not running (stopped, or failed to boot) and its disks. \
The VMs are listed first and deleted only after you answer yes (or with --yes). A VM started \
after the list was printed is kept.",
        after_long_help = "Examples:\n  banger vm prune\n  banger vm prune --yes"
    )]
    Prune(PruneArgs),
    /// Change VMs' CPUs, memory or disk sizes (disks only grow; CPU and memory apply at next start).
    #[command(
        after_long_help = "Examples:\n  banger vm set web --cpus 4 --memory 8G\n  banger vm set web --work-disk 40G"
    )]
    Set(SetArgs),
    /// List VMs (running only unless --all).
    #[command(visible_aliases = ["ls", "ps"], after_long_help = "Examples:\n  banger vm list\n  banger vm ls --all\n  banger vm ps -q\n  banger vm list --json")]
    List(ListArgs),
    /// Show one VM in detail.
    #[command(after_long_help = "Examples:\n  banger vm show web\n  banger vm show web --json")]
    Show(RefJson),
    /// Print a VM's guest console and VMM log.
    #[command(after_long_help = "Examples:\n  banger vm logs web\n  banger vm logs -f web")]
    Logs(LogsArgs),
    /// CPU, memory and I/O of a VM's VMM process.
    #[command(after_long_help = "Examples:\n  banger vm stats web\n  banger vm stats web --json")]
    Stats(RefJson),
    /// Ask a VM's guest agent for its health.
    #[command(after_long_help = "Examples:\n  banger vm health web")]
    Health(RefJson),
    /// Measure the round trip to a VM's guest agent.
    #[command(after_long_help = "Examples:\n  banger vm ping web")]
    Ping(RefJson),
    /// List a VM's listening ports with their processes.
    #[command(after_long_help = "Examples:\n  banger vm ports web\n  banger vm ports web --json")]
    Ports(RefJson),
    /// Open an ssh session in a VM, or run a command there.
    #[command(
        after_long_help = "Examples:\n  banger vm ssh web\n  banger vm ssh web -- uptime\n  banger vm ssh web -- 'cd /tmp && ls'"
    )]
    Ssh(SshArgs),
    /// Run a command in a running VM through its guest agent (no ssh), exiting with its status.
    #[command(
        long_about = "Runs the command after `--` in a running VM through its guest agent: no sshd, \
no ssh handshake. Stdin, stdout and stderr are streamed; the exit status is the command's (128+n \
when a signal n killed it); Ctrl-C and SIGTERM reach the command. When stdin is a terminal the \
command gets a terminal of the same size (-t forces one, -T refuses one). It runs in the VM's \
workspace (through `mise exec --` when the guest has mise), else in /root; a warning says when \
the host repository's HEAD moved since the workspace was prepared (--auto-prepare ships it \
again first, replacing the guest's checkout).\n\n\
Several words after `--` are the command and its arguments, passed exactly; a single word with \
spaces or shell syntax is run by the guest's /bin/sh -c, as with ssh.",
        after_long_help = "Examples:\n  banger vm exec web -- uname -a\n  banger vm exec web -- 'cd /tmp && ls -l'\n  banger vm exec web -- bash\n  tar c . | banger vm exec web -- tar x -C /root\n  banger vm exec web --auto-prepare -- make test"
    )]
    Exec(ExecArgs),
    /// Ship a git repository into a VM, and bring the work done there back as a patch.
    #[command(
        subcommand,
        long_about = "A workspace is a host git repository shipped into a running VM at /root/repo: \
a depth-10 clone of its history with HEAD (or --from REF) checked out, your tracked changes on \
top, untracked files only with --include-untracked, ignored files never; --full-copy ships the \
whole repository (history and submodules). `export` prints a binary patch of everything done in \
the guest since (commits included) that `git apply` takes on the host.",
        after_long_help = "Examples:\n  banger vm workspace prepare web .\n  banger vm workspace prepare web ~/src/app --branch try\n  banger vm workspace export web | git apply\n  banger vm workspace export web --json --output work.patch"
    )]
    Workspace(WorkspaceCommand),
}

/// `banger vm workspace ...`.
#[derive(Debug, Subcommand)]
pub enum WorkspaceCommand {
    /// Ship the git repository enclosing PATH into a running VM at /root/repo.
    #[command(
        after_long_help = "Examples:\n  banger vm workspace prepare web .\n  banger vm workspace prepare web . --include-untracked\n  banger vm workspace prepare web . --dry-run\n  banger vm workspace prepare web . --replace"
    )]
    Prepare(PrepareArgs),
    /// Print the work done in the VM's workspace as a binary patch for `git apply`.
    #[command(
        long_about = "Prints a binary patch of everything in the VM's workspace since the commit \
it was prepared from (or --base-commit): modified, added, deleted, renamed, mode-changed and \
binary files, and commits made in the guest. The guest's index and work tree are not touched. \
The patch goes to stdout, byte for byte, or to --output FILE (written whole or not at all). \
--json prints the base commit and the changed files as JSON instead; the patch is then in \
--output, or, without it, in the JSON's `patch` field (base64).",
        after_long_help = "Examples:\n  banger vm workspace export web > work.patch\n  banger vm workspace export web | git apply\n  banger vm workspace export web --base-commit HEAD~2\n  banger vm workspace export web --json --output work.patch"
    )]
    Export(ExportArgs),
}

/// What to ship and how (`vm run PATH`, `vm workspace prepare`).
#[derive(Debug, Args, Clone, Default)]
pub struct WorkspaceFlags {
    /// Check out a guest-only branch of this name
    #[arg(long, value_name = "NAME", requires = "path")]
    pub branch: Option<String>,
    /// Start the guest branch from this commit, branch or tag instead of HEAD (needs --branch;
    /// nothing of the working tree travels)
    #[arg(long, value_name = "REF", requires = "branch")]
    pub from: Option<String>,
    /// Ship untracked files too (ignored files never travel)
    #[arg(long, requires = "path")]
    pub include_untracked: bool,
    /// Ship the whole repository: history, submodules, every tracked file
    #[arg(long, requires = "path")]
    pub full_copy: bool,
    /// Print the files that would be shipped and the mode; make nothing
    #[arg(long, requires = "path")]
    pub dry_run: bool,
    /// With --dry-run: print the plan as JSON
    #[arg(long, requires = "dry_run")]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// VM name or id
    pub reference: String,
    /// A directory inside the git work tree to ship
    pub path: PathBuf,
    #[command(flatten)]
    pub flags: WorkspaceFlags,
    /// Replace the workspace already in the guest (the work there is lost)
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// VM name or id
    pub reference: String,
    /// Diff against this commit instead of the one the workspace was prepared from
    #[arg(long, value_name = "COMMIT")]
    pub base_commit: Option<String>,
    /// Write the patch to FILE (atomically) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the base and the changed files as JSON
    #[arg(long)]
    pub json: bool,
}

/// Whether a command gets a terminal: `-t`/`-T`, else when stdin is one.
#[derive(Debug, Args)]
pub struct TtyFlags {
    /// Run the command on a terminal even when stdin is not one
    #[arg(short = 't', long = "tty", conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never run the command on a terminal
    #[arg(short = 'T', long = "no-tty")]
    pub no_tty: bool,
}

impl TtyFlags {
    /// `Some` when a flag forces the choice.
    pub fn forced(&self) -> Option<bool> {
        match (self.tty, self.no_tty) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// VM name or id
    pub reference: String,
    #[command(flatten)]
    pub tty: TtyFlags,
    /// Ship the workspace's host repository again first (replacing the guest's checkout)
    #[arg(long)]
    pub auto_prepare: bool,
    /// The command to run (after --)
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateFlags,
    /// Delete the VM after the session or command, whatever its exit status
    #[arg(long)]
    pub rm: bool,
    /// Seconds to wait for the guest's sshd [default: 90, or config ssh_wait_secs]
    #[arg(long = "ssh-timeout")]
    pub ssh_timeout: Option<u64>,
    #[command(flatten)]
    pub tty: TtyFlags,
    /// A directory inside a git work tree: its repository is shipped to /root/repo first
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub workspace: WorkspaceFlags,
    /// The command to run in the VM (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `banger vm --help`: what the group does and how a VM reference is resolved.
pub const VM_LONG_ABOUT: &str = "Create, run and manage VMs.\n\nA VM reference (REF) is resolved in this order: 12 or more hex \
digits are an id, never a name (the VM with that id, or the only one whose id starts with it); \
otherwise the VM with exactly that name; otherwise the only VM whose name or id starts with it. \
Several matches are an error that lists them. VM names of 12 or more hex digits are refused, so \
an id copied from `banger vm list` always means that VM.";

#[derive(Debug, Args)]
pub struct Refs {
    /// VM names or ids: an id (12+ hex digits) is never taken for a name; unique prefixes work
    #[arg(required = true)]
    pub refs: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The running VM to fork (name or id)
    pub reference: String,
    /// The new VM's name
    #[arg(long)]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal name or number
    #[arg(long, short, default_value = "KILL")]
    pub signal: String,
    #[command(flatten)]
    pub refs: Refs,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub refs: Refs,
    /// Virtual CPUs
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Memory, e.g. 4G
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Root disk size (grow only; VM must be stopped)
    #[arg(long)]
    pub disk: Option<String>,
    /// Work disk size (grow only; VM must be stopped)
    #[arg(long = "work-disk", allow_hyphen_values = true)]
    pub work_disk: Option<String>,
    /// Turn outbound NAT on (at once when the VM runs)
    #[arg(long, conflicts_with = "no_nat")]
    pub nat: bool,
    /// Turn outbound NAT off (at once when the VM runs)
    #[arg(long = "no-nat")]
    pub no_nat: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include stopped VMs
    #[arg(long, short)]
    pub all: bool,
    /// Only the most recently created VM (of all states)
    #[arg(long, short)]
    pub latest: bool,
    /// Only print ids
    #[arg(long, short)]
    pub quiet: bool,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete without asking
    #[arg(long, short)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RefJson {
    /// VM name or id
    pub reference: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// VM name or id
    pub reference: String,
    /// Keep printing as the logs grow
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    /// VM name or id
    pub reference: String,
    /// Command to run instead of a shell (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Register local files as a managed image (banger keeps its own copies).
    #[command(
        after_long_help = "Examples:\n  banger image register --name my-img --rootfs ./rootfs.ext4 --kernel ./vmlinux\n  banger image register --name my-img --rootfs ./rootfs.ext4 --kernel-ref 6.1.0-cloud"
    )]
    Register(RegisterArgs),
    /// List images (or, with --available, what the catalogs offer).
    #[command(
        visible_alias = "ls",
        after_long_help = "Examples:\n  banger image list\n  banger image list --available\n  banger image list --json"
    )]
    List(ListAvailable),
    /// Show one image.
    #[command(after_long_help = "Examples:\n  banger image show debian-bookworm")]
    Show(ImageRef),
    /// Build an image from distribution packages (mmdebstrap; no container engine needed).
    #[command(
        long_about = "Builds debian-SUITE from Debian packages with mmdebstrap, injects the guest \
agent, network bootstrap and first-boot units and the kernel's modules, packs it as a bundle and \
registers it. Needs an imported kernel (banger kernel import host --from /).",
        after_long_help = "Examples:\n  banger image bootstrap debian-bookworm\n  banger image bootstrap debian-bookworm --kernel-ref host --size 4G"
    )]
    Bootstrap(BootstrapArgs),
    /// Pull an image: a catalog name first, else an OCI reference from any registry.
    #[command(
        long_about = "Pulls NAME-OR-OCI-REF. A name some catalog lists (banger image list \
--available) is that catalog's bundle: downloaded, its sha256 checked, registered as it is (only \
--name and --kernel-ref apply). Anything else is an OCI reference (Docker Hub short names resolve \
as docker.io/library/...; by tag or digest; an index resolves to linux/amd64): every blob is \
verified, layers are cached under the state dir, flattened, the guest agent and units and the \
kernel's modules injected, the ext4 built and registered; a reference that `banger image push` \
stored is a bundle, registered as it is (only --name and --kernel-ref apply). Credentials come \
from ~/.docker/config.json; plain HTTP only for loopback registries and config insecure_registries.",
        after_long_help = "Examples:\n  banger image pull debian:bookworm\n  banger image pull python:3.12-slim --init banger\n  banger image pull 127.0.0.1:5000/team/base:v1 --name base --kernel-ref host --size 4G"
    )]
    Pull(PullArgs),
    /// The OCI layer cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Register a bundle file (.tar.zst with rootfs.ext4 and manifest.json).
    #[command(
        after_long_help = "Examples:\n  banger image import ./debian-bookworm.tar.zst\n  banger image import ./img.tar.zst --name mine --kernel-ref host"
    )]
    Import(ImportArgs),
    /// Write an image's bundle and a one-entry catalog for it into a directory.
    #[command(
        long_about = "Writes DIR/NAME.tar.zst (the image's rootfs packed as a bundle, with its \
manifest) and DIR/NAME.catalog.json (a catalog listing it, its URL relative to the catalog), so \
DIR can be served by any static web server and its catalog added to config `catalogs`. The \
image must boot a named kernel (--kernel-ref); that kernel comes from a kernel catalog or \
`kernel import` on the other host.",
        after_long_help = "Examples:\n  banger image export debian-bookworm --out ./catalog"
    )]
    Export(ImageExportArgs),
    /// Push an image's bundle to an OCI registry, for `banger image pull REF` elsewhere.
    #[command(
        long_about = "Packs NAME as `banger image export` does and stores the bundle at REF in any \
OCI registry as an artifact with banger's media types (config \
application/vnd.banger.image.config.v1+json holding the bundle manifest, one layer \
application/vnd.banger.image.bundle.v1.tar+zstd). `banger image pull REF` takes it back as \
it is. The image must boot a named kernel (--kernel-ref). Credentials come from \
~/.docker/config.json; plain HTTP only for loopback registries and config insecure_registries.",
        after_long_help = "Examples:\n  banger image push debian-bookworm registry.example.com/team/debian:v1\n  banger image push base 127.0.0.1:5000/golden/base:latest"
    )]
    Push(ImagePushArgs),
    /// Delete an image and its files (refused while a VM uses it).
    #[command(
        visible_alias = "rm",
        after_long_help = "Examples:\n  banger image delete my-img"
    )]
    Delete(ImageRefOnly),
    /// Make (or remake) a warm-start template: boot the image once and save the booted guest,
    /// so that vm create/run of this shape restore from it instead of booting.
    #[command(
        after_long_help = "Examples:\n  banger image warm debian-bookworm\n  banger image warm debian-bookworm --cpus 4 --memory 4G"
    )]
    Warm(WarmArgs),
}

#[derive(Debug, Args)]
pub struct WarmArgs {
    /// Image name or id
    pub reference: String,
    /// Virtual CPUs of the VMs it serves [default: 2]
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory of the VMs it serves, e.g. 2G or 512M; a bare number is MiB [default: 2048M]
    #[arg(long)]
    pub memory: Option<String>,
    /// VMM backend: firecracker or qemu [default: config vmm]
    #[arg(long)]
    pub vmm: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageRef {
    /// Image name or id
    pub reference: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListAvailable {
    /// List the catalogs' entries, with STATE (pulled or available) and SIZE
    #[arg(long)]
    pub available: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ImagePushArgs {
    /// Image name or id
    pub name: String,
    /// OCI reference to push to (registry/repository:tag)
    #[arg(value_name = "REF")]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct ImageExportArgs {
    /// Image name or id
    pub reference: String,
    /// Directory to write the bundle and its catalog into (created if missing)
    #[arg(long)]
    pub out: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct KernelPullArgs {
    /// Kernel name, as a kernel catalog lists it (see banger kernel list --available)
    pub name: String,
    /// Replace a local kernel of the same name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ImageRefOnly {
    /// Image name or id
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// Image name: letters, digits, '.', '-', '_'
    #[arg(long)]
    pub name: String,
    /// ext4 root filesystem image
    #[arg(long)]
    pub rootfs: std::path::PathBuf,
    /// Kernel to boot (uncompressed vmlinux for Firecracker)
    #[arg(long, conflicts_with = "kernel_ref")]
    pub kernel: Option<std::path::PathBuf>,
    /// Initrd for the kernel
    #[arg(long, requires = "kernel", conflicts_with = "kernel_ref")]
    pub initrd: Option<std::path::PathBuf>,
    /// Kernel modules directory (lib/modules/VERSION)
    #[arg(long, requires = "kernel", conflicts_with = "kernel_ref")]
    pub modules: Option<std::path::PathBuf>,
    /// Name of an imported kernel (see banger kernel list)
    #[arg(long = "kernel-ref")]
    pub kernel_ref: Option<String>,
    /// A description
    #[arg(long)]
    pub description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Import a kernel (vmlinuz/vmlinux, initrd, modules) found under a directory tree.
    #[command(
        long_about = "Finds boot/vmlinuz-VERSION (or vmlinux-VERSION), boot/initrd.img-VERSION and \
lib/modules/VERSION under DIR and copies them into banger's kernel store. `--from /` imports the \
host's installed kernel package. A compressed kernel is also unpacked into the ELF vmlinux that \
Firecracker needs; QEMU boots the original.",
        after_long_help = "Examples:\n  banger kernel import host --from /\n  banger kernel import 6.1-cloud --from ./unpacked-deb --kernel-version 6.1.0-28-cloud-amd64"
    )]
    Import(KernelImportArgs),
    /// List imported kernels (or, with --available, what the kernel catalogs offer).
    #[command(
        visible_alias = "ls",
        after_long_help = "Examples:\n  banger kernel list\n  banger kernel list --available\n  banger kernel list --json"
    )]
    List(ListAvailable),
    /// Pull a kernel from the kernel catalogs into the kernel store.
    #[command(
        after_long_help = "Examples:\n  banger kernel pull debian-6.1\n  banger kernel pull debian-6.1 --force"
    )]
    Pull(KernelPullArgs),
    /// Show one kernel.
    #[command(after_long_help = "Examples:\n  banger kernel show host")]
    Show(KernelRef),
    /// Remove a kernel (refused while an image boots it).
    #[command(
        visible_alias = "remove",
        after_long_help = "Examples:\n  banger kernel rm host"
    )]
    Rm(KernelName),
}

#[derive(Debug, Args)]
pub struct KernelImportArgs {
    /// Name for the kernel in banger: letters, digits, '.', '-', '_'
    pub name: String,
    /// Directory to search (e.g. / for the host's kernel package)
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// Kernel version to pick when several are present [default: the newest]
    #[arg(long)]
    pub kernel_version: Option<String>,
    /// Replace a kernel of the same name
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct KernelRef {
    /// Kernel name
    pub name: String,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KernelName {
    /// Kernel name
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples() {
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.has_subcommands() {
                    walk(sub, &name);
                } else if !sub.is_hide_set() && sub.get_name() != "help" {
                    let help = sub
                        .get_after_long_help()
                        .map(|h| h.to_string())
                        .unwrap_or_default();
                    assert!(help.contains("Examples:"), "{name} has no examples");
                }
            }
        }
        walk(&Cli::command(), "banger");
    }

    /// What the help of `vm run` and `vm exec` promises is there: exec, and the workspace
    /// commands that ship a repository and export a patch.
    #[test]
    fn help_promises_only_what_exists() {
        let cli = Cli::command();
        let vm = cli.find_subcommand("vm").unwrap();
        assert!(vm.find_subcommand("exec").is_some(), "no banger vm exec");
        let ws = vm
            .find_subcommand("workspace")
            .expect("no banger vm workspace");
        for sub in ["prepare", "export"] {
            assert!(
                ws.find_subcommand(sub).is_some(),
                "no banger vm workspace {sub}"
            );
        }
        let run = vm.find_subcommand("run").unwrap();
        for flag in [
            "branch",
            "from",
            "include-untracked",
            "full-copy",
            "dry-run",
        ] {
            assert!(
                run.get_arguments().any(|a| a.get_long() == Some(flag)),
                "vm run has no --{flag}"
            );
        }
    }

    /// `--branch` and `--from` need a PATH, and `--from` needs `--branch`: usage errors.
    #[test]
    fn workspace_flags_need_their_path() {
        use clap::Parser;
        for bad in [
            &["banger", "vm", "run", "--branch", "x"][..],
            &["banger", "vm", "run", "--from", "v1", "--branch", "x"],
            &["banger", "vm", "run", ".", "--from", "v1"],
            &["banger", "vm", "run", "--dry-run"],
        ] {
            let e = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        Cli::try_parse_from(["banger", "vm", "run", ".", "--branch", "x", "--from", "v1"]).unwrap();
        Cli::try_parse_from(["banger", "vm", "run", "--", "make"]).unwrap();
    }

    /// `vm set --nat` and `--no-nat` together are a usage error.
    #[test]
    fn nat_flags_conflict() {
        use clap::Parser;
        let e =
            Cli::try_parse_from(["banger", "vm", "set", "web", "--nat", "--no-nat"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("cannot be used with"), "{e}");
        for flag in ["--nat", "--no-nat"] {
            Cli::try_parse_from(["banger", "vm", "set", "web", flag]).unwrap();
        }
    }
}

#[derive(Debug, Args)]
pub struct BootstrapArgs {
    /// Image to build: debian-SUITE (e.g. debian-bookworm)
    pub name: String,
    /// Kernel the image boots [default: the most recently imported]
    #[arg(long = "kernel-ref")]
    pub kernel_ref: Option<String>,
    /// Root filesystem size, e.g. 4G [default: 1.5 x the tree, at least 1 GiB]
    #[arg(long)]
    pub size: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// A catalog image name, else an OCI reference: [REGISTRY/]REPOSITORY[:TAG|@sha256:DIGEST]
    #[arg(value_name = "NAME-OR-OCI-REF")]
    pub reference: String,
    /// Image name [default: from the reference, debian:bookworm -> debian-bookworm]
    #[arg(long)]
    pub name: Option<String>,
    /// Name of an imported kernel [default: the most recently imported]
    #[arg(long = "kernel-ref")]
    pub kernel_ref: Option<String>,
    /// Kernel to boot (uncompressed vmlinux for Firecracker)
    #[arg(long, conflicts_with = "kernel_ref")]
    pub kernel: Option<std::path::PathBuf>,
    /// Initrd for the kernel
    #[arg(long, requires = "kernel", conflicts_with = "kernel_ref")]
    pub initrd: Option<std::path::PathBuf>,
    /// Kernel modules directory (lib/modules/VERSION)
    #[arg(long, requires = "kernel", conflicts_with = "kernel_ref")]
    pub modules: Option<std::path::PathBuf>,
    /// Root filesystem size, e.g. 4G [default: 1.5 x the tree, at least 1 GiB]
    #[arg(long)]
    pub size: Option<String>,
    /// What runs as PID 1: systemd (installed on first boot with --nat when the image lacks
    /// it), banger (the agent as minimal init) [default: systemd if the image has it, else banger]
    #[arg(long, value_name = "INIT", value_parser = ["systemd", "banger"])]
    pub init: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove the cached layers no pulled image needs; prints what it freed.
    #[command(after_long_help = "Examples:\n  banger image cache prune")]
    Prune,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file
    pub bundle: std::path::PathBuf,
    /// Register under this name instead of the bundle's
    #[arg(long)]
    pub name: Option<String>,
    /// Boot this kernel instead of the bundle's
    #[arg(long = "kernel-ref")]
    pub kernel_ref: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum InternalCommand {
    /// Turn a rootfs tar into a bundle; prints its path, sha256 and size.
    #[command(
        after_long_help = "Examples:\n  banger internal make-bundle --rootfs-tar rootfs.tar --name img --distro debian-bookworm --arch x86_64 --kernel-ref host --out ./out"
    )]
    MakeBundle(MakeBundleArgs),
}

#[derive(Debug, Args)]
pub struct MakeBundleArgs {
    /// The rootfs tar (plain, gzip or zstd), or - for standard input
    #[arg(long = "rootfs-tar")]
    pub rootfs_tar: String,
    /// Image name
    #[arg(long)]
    pub name: String,
    /// Distribution, for the manifest
    #[arg(long)]
    pub distro: String,
    /// Architecture, for the manifest
    #[arg(long)]
    pub arch: String,
    /// Kernel the image boots, for the manifest
    #[arg(long = "kernel-ref")]
    pub kernel_ref: String,
    /// Description, for the manifest
    #[arg(long)]
    pub description: Option<String>,
    /// Root filesystem size [default: max(1.5 x tree, 1 GiB)]
    #[arg(long)]
    pub size: Option<String>,
    /// Kernel modules directory to copy to /lib/modules/<its name>
    #[arg(long)]
    pub modules: Option<std::path::PathBuf>,
    /// What runs as PID 1: systemd (installed on first boot with --nat when the image lacks
    /// it), banger (the agent as minimal init) [default: systemd if the image has it, else banger]
    #[arg(long, value_name = "INIT", value_parser = ["systemd", "banger"])]
    pub init: Option<String>,
    /// Output directory
    #[arg(long)]
    pub out: std::path::PathBuf,
}

const SYSTEM_LONG_ABOUT: &str = "Installs banger as two hardened systemd system units: \
bangerd.service runs the daemon as its owner (--user, else SUDO_USER, else you; never root), and \
banger-helper.service is the narrow root helper that makes the bridge, TAP devices and NAT rules \
for it (only the owner's uid may use its socket, /run/banger/helper.sock). Binaries go to \
/usr/local/bin (banger, bangerd) and /usr/local/libexec/banger (banger-helper, banger-agent); \
units to /etc/systemd/system. The owner's VMs and images stay in ~/.local/state/banger, and the \
CLI talks to the installed daemon at /run/banger/bangerd/bangerd.sock whenever it runs. \
--root DIR writes the same files into a tree (packaging, tests) without calling systemctl. \
install, restart and uninstall need root and change nothing when they refuse.";

/// `banger system ...`.
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Copy the binaries, write both units, then enable and start them (again: idempotent).
    #[command(
        after_long_help = "Examples:\n  sudo banger system install\n  sudo banger system install --user alice\n  sudo banger system install --root /tmp/pkgroot --user alice"
    )]
    Install(InstallArgs),
    /// Show both units: active state, pid, installed version, socket.
    #[command(after_long_help = "Examples:\n  banger system status")]
    Status,
    /// Restart the helper and the daemon (VMs keep running).
    #[command(after_long_help = "Examples:\n  sudo banger system restart")]
    Restart,
    /// Stop and remove both units, the binaries and banger's network state (TAPs, bridge,
    /// nftables table); the owner's VMs and images stay unless --purge.
    #[command(
        after_long_help = "Examples:\n  sudo banger system uninstall\n  sudo banger system uninstall --purge\n  sudo banger system uninstall --root /tmp/pkgroot"
    )]
    Uninstall(UninstallArgs),
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The user bangerd runs as [default: SUDO_USER, else the invoking user]
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Install into this tree instead of / (no systemctl calls)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The one bridge the helper may make and attach to (config bridge_name)
    #[arg(long, value_name = "NAME", default_value = "banger0")]
    pub bridge: String,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Remove from this tree instead of / (no systemctl calls, no network changes)
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also delete the owner's banger state and config (every VM, image and kernel; refused
    /// while a VM's VMM still runs)
    #[arg(long)]
    pub purge: bool,
}

const MCP_LONG_ABOUT: &str = "Serves the Model Context Protocol on stdin/stdout, for a coding agent \
that starts it as an MCP server: tools to run a command in a fresh VM (vm_run, optionally with a \
host repository copied in), create, list, show and delete VMs, run commands in them (vm_exec), \
read, write and list their files, prepare a workspace from a host repository and export the \
work as a patch. The daemon is started as for any command.\n\n\
Guard rails (config [mcp]): at most mcp.max_vms VMs made through MCP at once (default 8), only \
the images in mcp.allowed_images when it is set, vm_delete only for VMs made through MCP unless \
mcp.delete_any = true, and host paths only inside your home.\n\n\
--print-config AGENT prints what to paste into that agent's MCP config instead (on stdout; \
where it goes on stderr).";

const MCP_EXAMPLES: &str = "Examples:\n  banger mcp --print-config claude > .mcp.json\n  \
banger mcp --print-config codex >> ~/.codex/config.toml\n  banger mcp --print-config cursor\n  \
banger mcp --print-config generic";

/// `banger mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Print the MCP config snippet for this agent and exit (claude, codex, cursor, generic).
    #[arg(long, value_name = "AGENT", value_parser = ["claude", "codex", "cursor", "generic"])]
    pub print_config: Option<String>,
}
