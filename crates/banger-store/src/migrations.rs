//! Versioned schema migrations.
//!
//! A migration is an id (strictly increasing), a name and SQL. Each runs in its own
//! transaction together with the row that records it in `schema_migrations`, so a migration is
//! either applied and recorded, or neither. Ids are never reused and SQL of an applied
//! migration is never edited: changes are new migrations.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::StoreError;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub id: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// banger's schema, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: 1,
        name: "meta",
        sql: "CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
          ) STRICT;
          INSERT INTO meta (key, value) VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));",
    },
    Migration {
        id: 2,
        name: "kernels_images_vms",
        sql: include_str!("migrations/0002_kernels_images_vms.sql"),
    },
    Migration {
        id: 3,
        name: "vms_vmm_start_time",
        // When the VMM process started (field 22 of /proc/PID/stat): with `pid`, what tells
        // the VMM from a later process that got the same pid.
        sql: "ALTER TABLE vms ADD COLUMN vmm_start_time INTEGER CHECK (vmm_start_time >= 0);",
    },
    Migration {
        id: 4,
        name: "vm_workspaces",
        // A VM's workspace, typed, one row per VM (gone with the VM); the untyped
        // `workspace_json` column, never written, goes.
        sql: include_str!("migrations/0004_vm_workspaces.sql"),
    },
    Migration {
        id: 5,
        name: "vms_origin",
        // Who asked for the VM (`api`, or `mcp` for `banger mcp`): the MCP server deletes
        // only its own. Every VM made before this was made through the API.
        sql: "ALTER TABLE vms ADD COLUMN origin TEXT NOT NULL DEFAULT 'api' \
              CHECK (origin IN ('api', 'mcp', 'web'));",
    },
    Migration {
        id: 6,
        name: "images_init",
        // What runs as an image's guests' PID 1 (`banger_core::guest_init::GuestInit`):
        // every image made before this booted its own systemd.
        sql: "ALTER TABLE images ADD COLUMN init TEXT NOT NULL DEFAULT 'systemd' \
              CHECK (init IN ('systemd', 'banger', 'install-systemd'));",
    },
    Migration {
        id: 7,
        name: "vms_paused",
        // Whether a running VM's vCPUs are paused (`banger vm pause`). A column, not a
        // `paused` state: a paused VM's VMM runs, so everything that cares about a live VMM
        // (stop, kill, delete, reconcile, DNS, ports) treats it as running, and SQLite cannot
        // widen the `state` CHECK without rebuilding the table under its foreign keys.
        sql: "ALTER TABLE vms ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 \
              CHECK (paused IN (0, 1));",
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
) STRICT";

/// Ids of applied migrations. An absent table means none.
pub(crate) fn applied(conn: &Connection) -> rusqlite::Result<Vec<u32>> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT id FROM schema_migrations ORDER BY id")?;
    let ids = stmt
        .query_map([], |r| r.get::<_, u32>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// Applies every migration in `migrations` that is not yet recorded.
pub(crate) fn apply(
    conn: &mut Connection,
    path: &Path,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let fail = |id: u32, name: &'static str| {
        move |source| StoreError::Migration {
            path: path.to_path_buf(),
            id,
            name,
            source,
        }
    };
    conn.execute(CREATE_TABLE, [])
        .map_err(fail(0, "schema_migrations"))?;
    let done = applied(conn).map_err(|source| StoreError::Query {
        path: path.to_path_buf(),
        what: "list applied migrations".to_string(),
        source,
    })?;
    if let Some(&unknown) = done
        .iter()
        .find(|id| !migrations.iter().any(|m| m.id == **id))
    {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            id: unknown,
        });
    }
    for m in migrations.iter().filter(|m| !done.contains(&m.id)) {
        let tx = conn.transaction().map_err(fail(m.id, m.name))?;
        tx.execute_batch(m.sql).map_err(fail(m.id, m.name))?;
        tx.execute(
            "INSERT INTO schema_migrations (id, name, applied_at) VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
            params![m.id, m.name],
        )
        .map_err(fail(m.id, m.name))?;
        tx.commit().map_err(fail(m.id, m.name))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_strictly_increase() {
        for w in MIGRATIONS.windows(2) {
            assert!(w[0].id < w[1].id, "{} then {}", w[0].id, w[1].id);
        }
        assert_eq!(MIGRATIONS[0].id, 1);
    }

    #[test]
    fn all_apply_in_memory() {
        let mut conn = Connection::open_in_memory().unwrap();
        apply(&mut conn, Path::new(":memory:"), MIGRATIONS).unwrap();
        let ids = applied(&conn).unwrap();
        assert_eq!(ids, MIGRATIONS.iter().map(|m| m.id).collect::<Vec<_>>());
    }
}
