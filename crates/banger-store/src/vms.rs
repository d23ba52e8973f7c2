//! The `vms` table.

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One row of `vms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    pub id: String,
    pub name: String,
    pub image_id: String,
    pub state: String,
    pub vmm: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
    pub work_disk_bytes: u64,
    pub nat: bool,
    pub ip: Option<String>,
    pub mac: Option<String>,
    pub tap: Option<String>,
    pub vsock_cid: Option<u32>,
    pub pid: Option<u32>,
    /// When the VMM with `pid` started (clock ticks after boot, `/proc/PID/stat` field 22).
    pub vmm_start_time: Option<u64>,
    pub dir: String,
    pub error: Option<String>,
    pub workspace_json: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
}

const COLUMNS: &str = "id, name, image_id, state, vmm, cpus, memory_mib, disk_bytes, \
    work_disk_bytes, nat, ip, mac, tap, vsock_cid, pid, dir, error, workspace_json, created_at, \
    started_at, vmm_start_time";

fn from_row(r: &Row<'_>) -> rusqlite::Result<VmRow> {
    Ok(VmRow {
        id: r.get(0)?,
        name: r.get(1)?,
        image_id: r.get(2)?,
        state: r.get(3)?,
        vmm: r.get(4)?,
        cpus: r.get(5)?,
        memory_mib: r.get(6)?,
        disk_bytes: r.get(7)?,
        work_disk_bytes: r.get(8)?,
        nat: r.get(9)?,
        ip: r.get(10)?,
        mac: r.get(11)?,
        tap: r.get(12)?,
        vsock_cid: r.get(13)?,
        pid: r.get(14)?,
        dir: r.get(15)?,
        error: r.get(16)?,
        workspace_json: r.get(17)?,
        created_at: r.get(18)?,
        started_at: r.get(19)?,
        vmm_start_time: r.get(20)?,
    })
}

impl Store {
    /// Every VM, oldest first.
    pub fn list_vms(&self) -> Result<Vec<VmRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vms ORDER BY created_at, id");
        let mut stmt = self
            .conn()
            .prepare(&sql)
            .map_err(self.query_error("list vms"))?;
        stmt.query_map([], from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.query_error("list vms"))
    }

    pub fn get_vm(&self, id: &str) -> Result<Option<VmRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM vms WHERE id = ?1");
        self.conn()
            .query_row(&sql, [id], from_row)
            .optional()
            .map_err(self.query_error(format!("read vm {id}")))
    }

    /// Inserts a new VM. Fails with [`StoreError::Constraint`] when the id, name, IP, TAP or
    /// CID is taken ([`StoreError::is_unique_conflict`] tells which) or a value breaks the
    /// schema.
    pub fn insert_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        self.conn().execute(
            &format!(
                "INSERT INTO vms ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                 ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
            ),
            params![
                vm.id,
                vm.name,
                vm.image_id,
                vm.state,
                vm.vmm,
                vm.cpus,
                vm.memory_mib,
                vm.disk_bytes,
                vm.work_disk_bytes,
                vm.nat,
                vm.ip,
                vm.mac,
                vm.tap,
                vm.vsock_cid,
                vm.pid,
                vm.dir,
                vm.error,
                vm.workspace_json,
                vm.created_at,
                vm.started_at,
                vm.vmm_start_time
            ],
        )
        .map_err(self.write_error(format!("insert vm {}", vm.name)))?;
        Ok(())
    }

    /// Writes every mutable column of `vm` back.
    pub fn update_vm(&self, vm: &VmRow) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE vms SET state = ?2, cpus = ?3, memory_mib = ?4, disk_bytes = ?5, \
                 work_disk_bytes = ?6, nat = ?7, pid = ?8, error = ?9, workspace_json = ?10, \
                 started_at = ?11, vmm_start_time = ?12 WHERE id = ?1",
                params![
                    vm.id,
                    vm.state,
                    vm.cpus,
                    vm.memory_mib,
                    vm.disk_bytes,
                    vm.work_disk_bytes,
                    vm.nat,
                    vm.pid,
                    vm.error,
                    vm.workspace_json,
                    vm.started_at,
                    vm.vmm_start_time
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
