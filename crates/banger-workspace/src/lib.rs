//! banger's host side of workspaces: a git repository on the host shipped into a guest, and
//! the guest's work brought back as a patch.
//!
//! - [`inspect`]: from any directory in a work tree, the repository and the transfer plan
//!   (what `--dry-run` prints).
//! - [`stream`]: the tar stream the guest unpacks (a depth-10 clone plus the overlay, or a
//!   full copy).
//! - [`script`]: the guest's `/bin/sh` scripts: prepare (unpack, check out, overlay) and
//!   export (a binary patch, without touching the guest's index or work tree).
//! - [`export`]: reading the export script's framed output on the host.
//! - [`git`]: the host's `git`, run through banger-core's `CommandRunner`.
//!
//! The flow: [`inspect::inspect`] → [`stream::write_stream`] into the guest's stdin of
//! [`script::prepare_script`] → work in the guest → [`script::export_script`]'s stdout into
//! [`export::read_export`] → `git apply` on the host.

pub mod export;
pub mod git;
pub mod inspect;
pub mod script;
pub mod stream;

pub use export::{
    Change, ChangedFile, Export, ExportError, ExportSummary, parse_export, read_export,
};
pub use git::{Git, GitError};
pub use inspect::{
    FileSource, Identity, InspectError, InspectOptions, Inspection, PlannedFile, ToolPin,
    TransferMode, current_head, inspect,
};
pub use script::{
    DEFAULT_GUEST_PATH, Existing, MISE_WRAP, NO_MISE, ScriptError, export_script, mise_install,
    mise_wrapped, prepare_script,
};
pub use stream::{StreamError, StreamStats, write_stream};
