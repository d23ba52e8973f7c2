//! banger's shared rules, used by the CLI and the daemon alike so that both sides agree.
//!
//! - [`names`]: what a VM, image or kernel may be called.
//! - [`size`]: parsing and printing byte sizes (`4G`, `512MiB`, a bare number is MiB).
//! - [`limits`]: the bounds on a VM's CPUs, memory and disk sizes.
//! - [`layout`]: where config, state and runtime files live (`BANGER_HOME` moves all three).
//! - [`private`]: creating and checking banger's own dirs and files (ours, not writable by
//!   others, never through a symlink).
//! - [`config`]: the TOML config file, with warnings for unknown keys.
//! - [`build`]: the build identity every banger binary carries.
//! - [`elf`]: whether a binary is static.
//! - [`probe`]: the host probe `doctor` and the daemon share: programs on a `PATH`, VMM and
//!   companion binaries, KVM usability, the agent's static check.
//! - [`error`]: rendering an error with its cause chain, once.
//! - [`runner`]: the seam through which libraries run host commands.
//! - [`logs`]: the names of a VM's console and VMM logs and their rotated parts.
//! - [`quote`]: quoting a bounded prefix of a peer's bytes in an error message, and a word
//!   for a POSIX shell.
//! - [`vmm_kind`]: which VMM runs a VM, and the config's choice of one.
//! - [`guest_init`]: what runs as a guest's PID 1 (systemd, or the agent as banger's init).
//! - [`vm`]: a VM's lifecycle state and guest MAC address.
//! - [`ssh_config`]: the managed `Host *.vm` block in the owner's `~/.ssh/config`.
//! - [`known_hosts`]: banger's own known_hosts lines, the guests' host keys by name and address.

pub mod build;
pub mod config;
pub mod elf;
pub mod error;
pub mod guest_init;
pub mod known_hosts;
pub mod layout;
pub mod limits;
pub mod logs;
pub mod names;
pub mod private;
pub mod probe;
pub mod quote;
pub mod runner;
pub mod size;
pub mod ssh_config;
pub mod vm;
pub mod vmm_kind;
