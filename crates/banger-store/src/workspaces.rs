//! The `vm_workspaces` table: a VM's prepared workspace (at most one), gone with the VM.
//!
//! The row records what `vm workspace prepare` shipped: where the checkout is in the guest,
//! the host repository it came from, the commit HEAD pointed at on the host then (what
//! `vm exec` compares with to warn that the host moved on), the host branch, the transfer
//! mode and whether untracked files travelled.

use std::fmt;
use std::str::FromStr;

use rusqlite::{OptionalExtension, Row, params};

use crate::{Corrupt, Store, StoreError};

const TABLE: &str = "vm_workspaces";

/// How the repository travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceMode {
    /// A depth-10 clone plus the work tree's changes.
    Overlay,
    /// The whole repository.
    FullCopy,
}

impl WorkspaceMode {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkspaceMode::Overlay => "overlay",
            WorkspaceMode::FullCopy => "full_copy",
        }
    }
}

impl fmt::Display for WorkspaceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored mode that is neither.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a workspace mode (overlay, full_copy)")]
pub struct BadMode(String);

impl FromStr for WorkspaceMode {
    type Err = BadMode;
    fn from_str(s: &str) -> Result<Self, BadMode> {
        match s {
            "overlay" => Ok(WorkspaceMode::Overlay),
            "full_copy" => Ok(WorkspaceMode::FullCopy),
            other => Err(BadMode(other.to_string())),
        }
    }
}

/// One row of `vm_workspaces`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceRow {
    /// The VM's id.
    pub vm_id: String,
    /// The checkout in the guest (`/root/repo`).
    pub guest_path: String,
    /// The host repository's root.
    pub host_path: String,
    /// The host's HEAD commit when prepared.
    pub head: String,
    /// The host's branch then; `None` for a detached HEAD.
    pub branch: Option<String>,
    /// How it travelled.
    pub mode: WorkspaceMode,
    /// Whether untracked files travelled.
    pub include_untracked: bool,
    /// When (RFC 3339, UTC).
    pub prepared_at: String,
}

const COLUMNS: &str =
    "vm_id, guest_path, host_path, head, branch, mode, include_untracked, prepared_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<(WorkspaceRow, Option<(String, BadMode)>)> {
    let mode_text: String = r.get(5)?;
    let (mode, bad) = match mode_text.parse() {
        Ok(m) => (m, None),
        Err(e) => (WorkspaceMode::Overlay, Some((mode_text, e))),
    };
    Ok((
        WorkspaceRow {
            vm_id: r.get(0)?,
            guest_path: r.get(1)?,
            host_path: r.get(2)?,
            head: r.get(3)?,
            branch: r.get(4)?,
            mode,
            include_untracked: r.get(6)?,
            prepared_at: r.get(7)?,
        },
        bad,
    ))
}

impl Store {
    fn decoded_workspace(
        &self,
        (row, bad): (WorkspaceRow, Option<(String, BadMode)>),
    ) -> Result<WorkspaceRow, StoreError> {
        match bad {
            None => Ok(row),
            Some((value, source)) => Err(StoreError::Corrupt(Box::new(Corrupt {
                path: self.path().to_path_buf(),
                table: TABLE,
                id: row.vm_id,
                column: "mode",
                value,
                source: Box::new(source),
            }))),
        }
    }

    /// Records `ws` as its VM's workspace, replacing the one it had.
    pub fn set_workspace(&self, ws: &WorkspaceRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO vm_workspaces ({COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    ws.vm_id,
                    ws.guest_path,
                    ws.host_path,
                    ws.head,
                    ws.branch,
                    ws.mode.as_str(),
                    ws.include_untracked,
                    ws.prepared_at
                ],
            )
            .map_err(self.write_error(format!("set the workspace of vm {}", ws.vm_id)))?;
        Ok(())
    }

    /// The workspace of VM `vm_id`, if it has one.
    pub fn get_workspace(&self, vm_id: &str) -> Result<Option<WorkspaceRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vm_workspaces WHERE vm_id = ?1");
        self.conn()
            .query_row(&sql, [vm_id], from_row)
            .optional()
            .map_err(self.query_error(format!("read the workspace of vm {vm_id}")))?
            .map(|r| self.decoded_workspace(r))
            .transpose()
    }

    /// Every workspace, by VM id.
    pub fn list_workspaces(&self) -> Result<Vec<WorkspaceRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vm_workspaces ORDER BY vm_id");
        let mut stmt = self
            .conn()
            .prepare(&sql)
            .map_err(self.query_error("list workspaces"))?;
        let rows: Vec<_> = stmt
            .query_map([], from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.query_error("list workspaces"))?;
        rows.into_iter()
            .map(|r| self.decoded_workspace(r))
            .collect()
    }
}
