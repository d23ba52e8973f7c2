//! The tools' arguments: each a JSON object whose schema (schemars, from these types and their
//! doc comments) is what `tools/list` shows a model, so the comments are written for one.
//! Unknown fields are refused, so a misspelt argument is an error the model sees, not a
//! silently ignored wish.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

fn yes() -> bool {
    true
}

/// Arguments of `vm_run`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmRunArgs {
    /// A shell command line, run with /bin/sh -c in the VM (in /root/repo when `path` is
    /// given, else in /root), e.g. "make test" or "python3 -c 'print(1)'".
    pub command: String,
    /// A directory inside a git repository on the host (inside the user's home), shipped to
    /// /root/repo in the VM first: the checked-out commit plus uncommitted changes.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The image to boot (by name); the configured default image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Seconds the command may run before it is killed (default 600, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Delete the VM afterwards (default true). Set false to keep it for vm_exec, file_read
    /// or workspace_export; the answer names it.
    #[serde(default = "yes")]
    pub remove: bool,
    /// Text given to the command on its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
}

/// Arguments of `vm_create`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmCreateArgs {
    /// A name for the VM (letters, digits, '-'); a generated one when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// The image to boot (by name); the configured default image when absent.
    #[serde(default)]
    pub image: Option<String>,
    /// Virtual CPUs (default 2).
    #[serde(default)]
    pub cpus: Option<u32>,
    /// Memory in MiB (default 2048).
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Give the VM outbound network access through the host (NAT; default false).
    #[serde(default)]
    pub nat: Option<bool>,
}

/// Arguments of `vm_list`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmListArgs {
    /// Include stopped VMs (default true).
    #[serde(default = "yes")]
    pub all: bool,
}

/// Arguments naming one VM (`vm_show`, `vm_delete`, `vm_ports`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmArgs {
    /// The VM's name or id (a unique prefix of either works).
    pub vm: String,
}

/// Arguments of `vm_exec`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmExecArgs {
    /// The VM's name or id.
    pub vm: String,
    /// A shell command line, run with /bin/sh -c, e.g. "ls -la && cat README.md".
    pub command: String,
    /// Absolute working directory in the VM; the VM's workspace (/root/repo) when it has
    /// one, else /root.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Environment variables to set for the command.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Text given to the command on its standard input.
    #[serde(default)]
    pub stdin: Option<String>,
    /// Seconds the command may run before it is killed (default 600, at most 3600).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// Arguments of `workspace_prepare`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePrepareArgs {
    /// The VM's name or id.
    pub vm: String,
    /// A directory inside a git repository on the host (inside the user's home).
    pub path: PathBuf,
    /// Create and check out this new branch in the VM.
    #[serde(default)]
    pub branch: Option<String>,
    /// With `branch`: the commit or ref the branch starts from (default HEAD).
    #[serde(default)]
    pub from: Option<String>,
    /// Also ship untracked files that are not ignored (default false).
    #[serde(default)]
    pub include_untracked: bool,
    /// Ship the whole repository with its history, not a shallow clone (default false).
    #[serde(default)]
    pub full_copy: bool,
    /// Replace a workspace the VM already has (default false).
    #[serde(default)]
    pub replace: bool,
}

/// Arguments of `workspace_export`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceExportArgs {
    /// The VM's name or id.
    pub vm: String,
    /// Diff against this commit instead of the one the workspace was prepared from.
    #[serde(default)]
    pub base_commit: Option<String>,
}

/// How a file's content is written in the arguments or the answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The content is text (UTF-8).
    #[default]
    Utf8,
    /// The content is base64 (for binary files).
    Base64,
}

/// Arguments of `file_read`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileReadArgs {
    /// The VM's name or id.
    pub vm: String,
    /// Absolute path of the file in the VM, e.g. /root/repo/src/main.rs.
    pub path: String,
    /// Most bytes to return (default and at most 1 MiB); a longer file comes back cut, with
    /// `truncated` true.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// Arguments of `file_write`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileWriteArgs {
    /// The VM's name or id.
    pub vm: String,
    /// Absolute path of the file in the VM; the file is replaced whole.
    pub path: String,
    /// The new content (at most 512 KiB).
    pub content: String,
    /// How `content` is written: "utf8" text (default) or "base64".
    #[serde(default)]
    pub encoding: Encoding,
    /// Octal permission bits as a string, e.g. "0755"; by default the old file's, or "0644".
    #[serde(default)]
    pub mode: Option<String>,
    /// Create missing parent directories (default true).
    #[serde(default = "yes")]
    pub create_parents: bool,
}

/// Arguments of `file_list`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileListArgs {
    /// The VM's name or id.
    pub vm: String,
    /// Absolute path of the directory in the VM, e.g. /root/repo.
    pub path: String,
}
