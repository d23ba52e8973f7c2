//! The `vms` table.
//!
//! A row is decoded into typed values (state, VMM kind, address, MAC); a stored value that
//! does not decode is a [`StoreError::Corrupt`] naming the row and the column, never a
//! default.

use std::net::Ipv4Addr;
use std::str::FromStr;

use banger_core::vm::{MacAddr, VmOrigin, VmState};
use banger_core::vmm_kind::VmmKind;
use rusqlite::{OptionalExtension, Row, params};

use crate::{Corrupt, Store, StoreError};

/// The table's name, in errors.
const TABLE: &str = "vms";

/// One row of `vms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub state: VmState,
    pub vmm: VmmKind,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub work_disk_bytes: u64,
    pub nat: bool,
    pub ip: Option<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    pub pid: Option<u32>,
    /// When the VMM with `pid` started (clock ticks after boot, `/proc/PID/stat` field 22).
    pub vmm_start_time: Option<u64>,
    pub dir: String,
    pub error: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    /// Who asked for the VM; set at insert, never changed.
    pub origin: VmOrigin,
    /// Its vCPUs are paused (`banger vm pause`). Only a running VM is paused: the store
    /// writes `false` for a row in any other state.
    pub paused: bool,
}

const COLUMNS: &str = "id, name, image_id, state, vmm, cpus, memory_mib, disk_bytes, \
    work_disk_bytes, nat, ip, mac, tap, vsock_cid, pid, dir, error, created_at, \
    started_at, vmm_start_time, origin, paused";

/// A column of a row whose stored text does not decode (see [`StoreError::Corrupt`]).
struct BadColumn {
    id: String,
    column: &'static str,
    value: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

/// `text` of `column` parsed as a `T`.
fn parse_column<T: FromStr>(id: &str, column: &'static str, text: String) -> Result<T, BadColumn>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    text.parse().map_err(|e| BadColumn {
        id: id.to_string(),
        column,
        value: text,
        source: Box::new(e),
    })
}

/// Reads and decodes one row; a typed column whose text does not parse is a [`BadColumn`].
fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<VmRow, BadColumn>> {
    let id: String = r.get(0)?;
    // Each reads a text column and parses it; a bad value ends the row with its `BadColumn`.
    macro_rules! required {
        ($idx:expr, $column:expr) => {
            match parse_column(&id, $column, r.get::<_, String>($idx)?) {
                Ok(v) => v,
                Err(bad) => return Ok(Err(bad)),
            }
        };
    }
    macro_rules! optional {
        ($idx:expr, $column:expr) => {
            match r
                .get::<_, Option<String>>($idx)?
                .map(|t| parse_column(&id, $column, t))
                .transpose()
            {
                Ok(v) => v,
                Err(bad) => return Ok(Err(bad)),
            }
        };
    }
    let state: VmState = required!(3, "state");
    let vmm: VmmKind = required!(4, "vmm");
    let ip: Option<Ipv4Addr> = optional!(10, "ip");
    let mac: Option<MacAddr> = optional!(11, "mac");
    let origin: VmOrigin = required!(20, "origin");
    Ok(Ok(VmRow {
        ip,
        mac,
        id,
        name: r.get(1)?,
        image_id: r.get(2)?,
        state,
        vmm,
        cpus: r.get(5)?,
        memory_mib: r.get(6)?,
        disk_bytes: r.get(7)?,
        work_disk_bytes: r.get(8)?,
        nat: r.get(9)?,
        tap: r.get(12)?,
        vsock_cid: r.get(13)?,
        pid: r.get(14)?,
        dir: r.get(15)?,
        error: r.get(16)?,
        created_at: r.get(17)?,
        started_at: r.get(18)?,
        vmm_start_time: r.get(19)?,
        origin,
        paused: r.get(21)?,
    }))
}

impl VmRow {
    /// What the store keeps as `paused`: only a running VM is paused, so a VM stopped,
    /// killed or reconciled as gone is never left marked paused.
    fn paused_stored(&self) -> bool {
        self.paused && self.state == VmState::Running
    }
}

impl Store {
    /// The row, or the [`StoreError::Corrupt`] its bad column makes.
    fn decoded(&self, row: Result<VmRow, BadColumn>) -> Result<VmRow, StoreError> {
        row.map_err(|b| {
            StoreError::Corrupt(Box::new(Corrupt {
                path: self.path().to_path_buf(),
                table: TABLE,
                id: b.id,
                column: b.column,
                value: b.value,
                source: b.source,
            }))
        })
    }

    /// Every VM, oldest first.
    pub fn list_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vms ORDER BY created_at, id");
        let mut stmt = self
            .conn()
            .prepare(&sql)
            .map_err(self.query_error("list vms"))?;
        let rows: Vec<Result<VmRow, BadColumn>> = stmt
            .query_map([], from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.query_error("list vms"))?;
        rows.into_iter().map(|r| self.decoded(r)).collect()
    }

    pub fn get_vm(&self, id: &str) -> Result<Option<VmRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vms WHERE id = ?1");
        self.conn()
            .query_row(&sql, [id], from_row)
            .optional()
            .map_err(self.query_error(format!("read vm {id}")))?
            .map(|r| self.decoded(r))
            .transpose()
    }

    /// Inserts a new VM. Fails with [`StoreError::NameTaken`] when its name is taken, and with
    /// [`StoreError::Constraint`] when the id, IP, TAP or CID is taken
    /// ([`StoreError::is_unique_conflict`] tells which) or a value breaks the schema.
    pub fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                &format!(
                    "INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                     ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
                ),
                params![
                    vm.id,
                    vm.name,
                    vm.image_id,
                    vm.state.as_str(),
                    vm.vmm.as_str(),
                    vm.cpus,
                    vm.memory_mib,
                    vm.disk_bytes,
                    vm.work_disk_bytes,
                    vm.nat,
                    vm.ip.map(|i| i.to_string()),
                    vm.mac.map(|m| m.to_string()),
                    vm.tap,
                    vm.vsock_cid,
                    vm.pid,
                    vm.dir,
                    vm.error,
                    vm.created_at,
                    vm.started_at,
                    vm.vmm_start_time,
                    vm.origin.as_str(),
                    vm.paused_stored()
                ],
            )
            .map_err(self.insert_error(format!("insert vm {}", vm.name), TABLE, &vm.name))?;
        Ok(())
    }

    /// Writes every mutable column of `vm` back (its TAP too: a boot may take a pool TAP).
    pub fn update_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE vms SET state = ?2, cpus = ?3, memory_mib = ?4, disk_bytes = ?5, \
                 work_disk_bytes = ?6, nat = ?7, pid = ?8, error = ?9, \
                 started_at = ?10, vmm_start_time = ?11, tap = ?12, paused = ?13 WHERE id = ?1",
                params![
                    vm.id,
                    vm.state.as_str(),
                    vm.cpus,
                    vm.memory_mib,
                    vm.disk_bytes,
                    vm.work_disk_bytes,
                    vm.nat,
                    vm.pid,
                    vm.error,
                    vm.started_at,
                    vm.vmm_start_time,
                    vm.tap,
                    vm.paused_stored()
                ],
            )
            .map_err(self.write_error(format!("update vm {}", vm.id)))?;
        Ok(())
    }

    pub fn delete_vm(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM vms WHERE id = ?1", [id])
            .map_err(self.write_error(format!("delete vm {id}")))?;
        Ok(())
    }
}
