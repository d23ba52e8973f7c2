//! The command line, as clap derive structs. Every group's long help carries runnable examples.

use clap::{Args, Parser, Subcommand};
use clap_complete::Shell;

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version = banger_version(),
    about = "Disposable, hardware-isolated Linux machines with your repo inside",
    long_about = "banger gives you a disposable Linux machine (a microVM) in one command, with \
your git repository copied inside, and long-lived VMs to ssh into, exec in, and export work \
back from as a patch. A per-user daemon (bangerd) owns all state; it starts on demand.",
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
    #[command(subcommand)]
    Vm(VmCommand),
    /// List running VMs (same as `banger vm list`).
    Ps(ListArgs),
    /// Manage images: root filesystems with their kernels.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a shell completion script.
    #[command(
        after_long_help = "Examples:\n  banger completion bash > ~/.local/share/bash-completion/completions/banger\n  banger completion zsh > \"${fpath[1]}/_banger\"\n  banger completion fish > ~/.config/fish/completions/banger.fish"
    )]
    Completion {
        /// The shell to generate for.
        shell: Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the running daemon (starting it if needed): build, pid, socket, paths, listeners.
    #[command(after_long_help = "Examples:\n  banger daemon status\n  banger daemon status --json")]
    Status(JsonFlag),
    /// Stop the running daemon. VMs keep running; the next banger command starts it again.
    #[command(after_long_help = "Examples:\n  banger daemon stop")]
    Stop,
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
    /// VM name: 1-63 of a-z, 0-9 and '-' [default: a generated name like brave-otter]
    #[arg(long)]
    pub name: Option<String>,
    /// Image name or id [default: debian-bookworm, or config default_image]
    #[arg(long)]
    pub image: Option<String>,
    /// Virtual CPUs [default: 2]
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<i64>,
    /// Memory, e.g. 2G or 512M; a bare number is MiB [default: 2048M]
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Size of the VM's root disk (grows the image's) [default: the image's size]
    #[arg(long, allow_hyphen_values = true)]
    pub disk: Option<String>,
    /// Size of the work disk mounted at /root [default: 8G]
    #[arg(long = "work-disk", allow_hyphen_values = true)]
    pub work_disk: Option<String>,
    /// Give the VM outbound network access (NAT through the host)
    #[arg(long)]
    pub nat: bool,
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
        long_about = "Creates a VM and, once its sshd answers, opens an interactive ssh session or \
runs the command after `--`, exiting with the command's exit status. With --rm the VM is \
deleted afterwards, whatever the exit status -- except when sshd never answered: then the VM \
is kept for inspection (banger vm logs NAME).",
        after_long_help = "Examples:\n  banger vm run\n  banger vm run --rm -- uname -a\n  banger vm run --name scratch --cpus 4 -- make test"
    )]
    Run(RunArgs),
    /// Boot stopped VMs.
    #[command(after_long_help = "Examples:\n  banger vm start web\n  banger vm start web db")]
    Start(Refs),
    /// Shut VMs down (Ctrl-Alt-Del, then forced off after the grace period).
    #[command(
        after_long_help = "Examples:\n  banger vm stop web\n  banger vm stop $(banger ps -q)"
    )]
    Stop(Refs),
    /// Stop and start VMs.
    #[command(after_long_help = "Examples:\n  banger vm restart web")]
    Restart(Refs),
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
    #[command(after_long_help = "Examples:\n  banger vm ssh web\n  banger vm ssh web -- uptime")]
    Ssh(SshArgs),
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
    /// The command to run in the VM (after --)
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct Refs {
    /// VM names or ids (unique prefixes work)
    #[arg(required = true)]
    pub refs: Vec<String>,
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
    /// List images.
    #[command(
        visible_alias = "ls",
        after_long_help = "Examples:\n  banger image list\n  banger image list --json"
    )]
    List(JsonFlag),
    /// Show one image.
    #[command(after_long_help = "Examples:\n  banger image show debian-bookworm")]
    Show(ImageRef),
    /// Delete an image and its files (refused while a VM uses it).
    #[command(
        visible_alias = "rm",
        after_long_help = "Examples:\n  banger image delete my-img"
    )]
    Delete(ImageRefOnly),
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
