//! Store integration tests against real SQLite files.

use banger_core::vm::{MacAddr, VmState};
use banger_core::vmm_kind::VmmKind;
use banger_store::{MIGRATIONS, Migration, Store, StoreError};
use std::path::Path;

const M1: Migration = Migration {
    id: 1,
    name: "things",
    sql: "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
};
const M2_BROKEN: Migration = Migration {
    id: 2,
    name: "broken",
    // The first statement succeeds, the second fails: the whole migration must roll back.
    sql: "CREATE TABLE half (id INTEGER); INSERT INTO no_such_table VALUES (1);",
};
const M2_FIXED: Migration = Migration {
    id: 2,
    name: "fixed",
    sql: "CREATE TABLE half (id INTEGER);",
};

fn table_exists(store: &Store, name: &str) -> bool {
    store
        .conn()
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type='table' AND name=?1)",
            [name],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn fresh_apply_sets_pragmas_and_records_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/banger.db");
    let store = Store::open(&path).unwrap();
    assert!(path.exists());
    assert_eq!(
        store.applied_migrations().unwrap(),
        MIGRATIONS.iter().map(|m| m.id).collect::<Vec<_>>()
    );
    let mode: String = store
        .conn()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let fk: i64 = store
        .conn()
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = store
        .conn()
        .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 5000);
}

#[test]
fn reopen_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    drop(Store::open_with(&path, &[M1]).unwrap());
    {
        let s = Store::open_with(&path, &[M1]).unwrap();
        s.conn()
            .execute("INSERT INTO things (name) VALUES ('kept')", [])
            .unwrap();
    }
    let s = Store::open_with(&path, &[M1]).unwrap();
    assert_eq!(s.applied_migrations().unwrap(), vec![1]);
    let n: i64 = s
        .conn()
        .query_row("SELECT COUNT(*) FROM things", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "reopening must not re-run or drop anything");
}

#[test]
fn failing_migration_rolls_back_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let err = Store::open_with(&path, &[M1, M2_BROKEN]).unwrap_err();
    match &err {
        StoreError::Migration { id, name, .. } => {
            assert_eq!((*id, *name), (2, "broken"));
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("rolled back"), "{err}");

    // Migration 1 stayed; nothing of migration 2 did.
    let s = Store::open_with(&path, &[M1]).unwrap();
    assert_eq!(s.applied_migrations().unwrap(), vec![1]);
    assert!(table_exists(&s, "things"));
    assert!(!table_exists(&s, "half"), "partial migration leaked");
    drop(s);

    // The next open with a working migration 2 applies it.
    let s = Store::open_with(&path, &[M1, M2_FIXED]).unwrap();
    assert_eq!(s.applied_migrations().unwrap(), vec![1, 2]);
    assert!(table_exists(&s, "half"));
}

#[test]
fn newer_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    drop(Store::open_with(&path, &[M1, M2_FIXED]).unwrap());
    let err = Store::open_with(&path, &[M1]).unwrap_err();
    assert!(matches!(err, StoreError::TooNew { id: 2, .. }), "{err:?}");
}

#[test]
fn read_only_open_never_creates_or_migrates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let err = Store::open_read_only(&path).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(!path.exists(), "read-only open created the database");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    drop(Store::open_with(&path, &[M1]).unwrap());
    let ro = Store::open_read_only(&path).unwrap();
    assert!(ro.is_read_only());
    assert_eq!(ro.applied_migrations().unwrap(), vec![1]);
    // Reads work, writes are refused.
    let n: i64 = ro
        .conn()
        .query_row("SELECT COUNT(*) FROM things", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert!(
        ro.conn()
            .execute("INSERT INTO things (name) VALUES ('x')", [])
            .is_err()
    );
    assert!(ro.conn().execute("CREATE TABLE t2 (x)", []).is_err());
    drop(ro);
    // And the write really did not happen.
    let rw = Store::open_with(&path, &[M1]).unwrap();
    let n: i64 = rw
        .conn()
        .query_row("SELECT COUNT(*) FROM things", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn read_only_open_does_not_apply_pending_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    drop(Store::open_with(&path, &[M1]).unwrap());
    let ro = Store::open_read_only(&path).unwrap();
    assert_eq!(ro.applied_migrations().unwrap(), vec![1]);
    assert!(!table_exists(&ro, "half"));
}

fn siblings(path: &Path) -> (bool, bool) {
    let p = path.display().to_string();
    (
        Path::new(&format!("{p}-wal")).exists(),
        Path::new(&format!("{p}-shm")).exists(),
    )
}

#[test]
fn adversarial_read_only_open_of_a_closed_database_leaves_no_wal_or_shm() {
    let dir = tempfile::tempdir().unwrap();
    // Characters that mean something in a URI must stay part of the path.
    let sub = dir.path().join("a ?#%b");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("banger.db");
    {
        let s = Store::open_with(&path, &[M1]).unwrap();
        s.conn()
            .execute("INSERT INTO things (name) VALUES ('kept')", [])
            .unwrap();
    }
    assert_eq!(
        siblings(&path),
        (false, false),
        "a closed store checkpoints"
    );
    let before = std::fs::read(&path).unwrap();
    let ro = Store::open_read_only(&path).unwrap();
    let name: String = ro
        .conn()
        .query_row("SELECT name FROM things", [], |r| r.get(0))
        .unwrap();
    assert_eq!(name, "kept");
    assert!(ro.conn().execute("DELETE FROM things", []).is_err());
    assert_eq!(siblings(&path), (false, false), "while open");
    drop(ro);
    assert_eq!(siblings(&path), (false, false), "after close");
    assert_eq!(std::fs::read(&path).unwrap(), before, "byte-identical");
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 1);
}

#[test]
fn read_only_open_reads_committed_wal_data_while_a_writer_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let rw = Store::open_with(&path, &[M1]).unwrap();
    rw.conn()
        .execute("INSERT INTO things (name) VALUES ('in-wal')", [])
        .unwrap();
    // The row is committed but only in the WAL: an immutable read would miss it.
    assert_eq!(siblings(&path), (true, true));
    let ro = Store::open_read_only(&path).unwrap();
    let count = |ro: &Store| -> i64 {
        ro.conn()
            .query_row("SELECT COUNT(*) FROM things", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&ro), 1);
    // A write committed while the reader is open is seen by its next read, consistently.
    rw.conn()
        .execute("INSERT INTO things (name) VALUES ('later')", [])
        .unwrap();
    assert_eq!(count(&ro), 2);
    drop(ro);
    drop(rw);
    assert_eq!(siblings(&path), (false, false));
}

#[test]
fn adversarial_symlinked_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real.db");
    drop(Store::open_with(&real, &[M1]).unwrap());
    let link = dir.path().join("banger.db");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(matches!(
        Store::open_read_only(&link).unwrap_err(),
        StoreError::Open { .. }
    ));
    assert!(Store::open_with(&link, &[M1]).is_err());
}

fn image(id: &str, name: &str) -> banger_store::ImageRow {
    banger_store::ImageRow {
        id: id.into(),
        name: name.into(),
        dir: "/d".into(),
        rootfs: "/d/rootfs.ext4".into(),
        rootfs_bytes: 1 << 20,
        kernel: Some("/d/kernel".into()),
        created_at: "2026-01-01T00:00:00Z".into(),
        ..Default::default()
    }
}

fn vm(id: &str, name: &str, ip: &str) -> banger_store::VmRow {
    banger_store::VmRow {
        id: id.into(),
        name: name.into(),
        image_id: "img1".into(),
        state: VmState::Creating,
        vmm: VmmKind::Firecracker,
        cpus: 1,
        memory_mib: 128,
        disk_bytes: 1 << 20,
        work_disk_bytes: 1 << 20,
        nat: false,
        ip: Some(ip.parse().unwrap()),
        mac: None,
        tap: Some(format!("tap-{id}")),
        vsock_cid: None,
        pid: None,
        vmm_start_time: None,
        dir: "/v".into(),
        error: None,
        created_at: "2026-01-01T00:00:00Z".into(),
        started_at: None,
        origin: banger_core::vm::VmOrigin::Api,
        paused: false,
    }
}

fn vm_count(s: &Store) -> i64 {
    s.conn()
        .query_row("SELECT COUNT(*) FROM vms", [], |r| r.get(0))
        .unwrap()
}

/// A store constraint failure says which constraint it was: only `UNIQUE(name)` may become
/// "already exists" in the daemon.
#[test]
fn adversarial_store_constraints_are_typed() {
    use banger_store::Constraint;
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("banger.db")).unwrap();
    s.insert_image(&image("img1", "base")).unwrap();
    s.insert_vm(&vm("a1", "web", "172.30.0.2")).unwrap();

    // The name is taken: its own error, UNIQUE on vms.name and nothing else.
    let e = s.insert_vm(&vm("a2", "web", "172.30.0.3")).unwrap_err();
    assert!(
        matches!(&e, StoreError::NameTaken { table: "vms", name, .. } if name == "web"),
        "{e:?}"
    );
    assert!(e.is_unique_conflict("vms", "name"), "{e:?}");
    assert!(!e.is_unique_conflict("vms", "ip"));
    assert!(
        e.to_string().contains("already has a row named \"web\""),
        "{e}"
    );

    // The address lease is taken: a UNIQUE conflict, but not on the name.
    let e = s.insert_vm(&vm("a3", "db", "172.30.0.2")).unwrap_err();
    assert!(e.is_unique_conflict("vms", "ip"), "{e:?}");
    assert!(!e.is_unique_conflict("vms", "name"));

    // The id is taken (primary key).
    let mut same_id = vm("a1", "other", "172.30.0.9");
    same_id.tap = Some("tap-other".into());
    let e = s.insert_vm(&same_id).unwrap_err();
    assert!(e.is_unique_conflict("vms", "id"), "{e:?}");

    // A CHECK constraint: never a uniqueness conflict.
    let mut bad = vm("a4", "zero", "172.30.0.4");
    bad.cpus = 0;
    let e = s.insert_vm(&bad).unwrap_err();
    assert!(
        matches!(e.constraint(), Some(Constraint::Check { expression }) if expression.contains("cpus")),
        "{e:?}"
    );
    assert!(!e.is_unique_conflict("vms", "name"));

    // A foreign key: the image does not exist.
    let mut orphan = vm("a5", "orphan", "172.30.0.5");
    orphan.image_id = "nope".into();
    let e = s.insert_vm(&orphan).unwrap_err();
    assert!(
        matches!(e.constraint(), Some(Constraint::ForeignKey)),
        "{e:?}"
    );

    // A foreign key the other way: an image in use cannot be deleted.
    let e = s.delete_image("img1").unwrap_err();
    assert!(
        matches!(e.constraint(), Some(Constraint::ForeignKey)),
        "{e:?}"
    );

    // An out-of-range value (above SQLite's i64) is refused before SQL, not a constraint.
    let mut huge = vm("a6", "huge", "172.30.0.6");
    huge.disk_bytes = u64::MAX;
    let e = s.insert_vm(&huge).unwrap_err();
    assert!(matches!(e, StoreError::Query { .. }), "{e:?}");

    // An image name conflict is typed the same way.
    let e = s.insert_image(&image("img2", "base")).unwrap_err();
    assert!(
        matches!(&e, StoreError::NameTaken { table: "images", name, .. } if name == "base"),
        "{e:?}"
    );
    // An image id conflict is not a name conflict.
    let e = s.insert_image(&image("img1", "other")).unwrap_err();
    assert!(e.is_unique_conflict("images", "id"), "{e:?}");
    assert!(!matches!(e, StoreError::NameTaken { .. }), "{e:?}");

    // None of the refused writes left a row.
    assert_eq!(vm_count(&s), 1);
    assert_eq!(s.list_images().unwrap().len(), 1);
}

#[test]
fn vm_rows_round_trip_their_typed_columns() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("banger.db")).unwrap();
    s.insert_image(&image("img1", "base")).unwrap();
    let mut row = vm("a1", "web", "172.30.0.2");
    row.mac = Some(MacAddr([0x06, 0, 0xac, 0x1e, 0, 0x02]));
    row.vmm = VmmKind::Qemu;
    s.insert_vm(&row).unwrap();
    assert_eq!(s.get_vm("a1").unwrap(), Some(row.clone()));
    let stored: (String, String, String, String) = s
        .conn()
        .query_row("SELECT state, vmm, ip, mac FROM vms", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!(
        stored,
        (
            "creating".into(),
            "qemu".into(),
            "172.30.0.2".into(),
            "06:00:AC:1E:00:02".into()
        )
    );
    row.state = VmState::Running;
    // A boot that took a pool TAP records it.
    row.tap = Some("bgrp3".into());
    s.update_vm(&row).unwrap();
    assert_eq!(s.list_vms().unwrap(), vec![row]);
}

/// A row whose stored value does not decode is reported with its table, id and column by
/// both readers, never read with a fallback value.
#[test]
fn adversarial_a_corrupt_vm_row_is_an_error_naming_row_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("banger.db")).unwrap();
    s.insert_image(&image("img1", "base")).unwrap();
    s.insert_vm(&vm("good", "web", "172.30.0.2")).unwrap();
    // `state` has a CHECK; the others can be corrupted directly.
    for (column, bad) in [
        ("vmm", "kvmtool"),
        ("ip", "172.30.0.999"),
        ("mac", "06:00:AC"),
    ] {
        let id = format!("bad-{column}");
        s.insert_vm(&vm(&id, &id, &format!("172.30.1.{}", column.len())))
            .unwrap();
        s.conn()
            .execute(
                &format!("UPDATE vms SET {column} = ?1 WHERE id = ?2"),
                [bad, id.as_str()],
            )
            .unwrap();
        for e in [s.get_vm(&id).unwrap_err(), s.list_vms().unwrap_err()] {
            match &e {
                StoreError::Corrupt(c) => assert_eq!(
                    (c.table, c.id.as_str(), c.column, c.value.as_str()),
                    ("vms", id.as_str(), column, bad)
                ),
                other => panic!("{column}: {other:?}"),
            }
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("row {id} of vms")) && msg.contains(column),
                "{msg}"
            );
        }
        s.delete_vm(&id).unwrap();
    }
    // A state outside the enum, written past the CHECK (an older or foreign schema).
    s.conn()
        .execute_batch(
            "PRAGMA ignore_check_constraints = ON;              UPDATE vms SET state = 'paused' WHERE id = 'good';              PRAGMA ignore_check_constraints = OFF;",
        )
        .unwrap();
    let e = s.list_vms().unwrap_err();
    assert!(
        matches!(&e, StoreError::Corrupt(c) if c.id == "good" && c.column == "state" && c.value == "paused"),
        "{e:?}"
    );
    assert!(matches!(s.get_vm("good"), Err(StoreError::Corrupt(_))));
}

/// A VM's workspace is typed, replaced by a second prepare, survives a reopen and goes with
/// the VM; a bad stored mode is an error naming the column.
#[test]
fn a_vm_workspace_round_trips_and_goes_with_its_vm() {
    use banger_store::{WorkspaceMode, WorkspaceRow};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let s = Store::open(&path).unwrap();
    s.insert_image(&image("img1", "base")).unwrap();
    s.insert_vm(&vm("a1", "web", "172.30.0.2")).unwrap();
    assert_eq!(s.get_workspace("a1").unwrap(), None);
    let mut ws = WorkspaceRow {
        vm_id: "a1".into(),
        guest_path: "/root/repo".into(),
        host_path: "/home/me/app".into(),
        head: "a".repeat(40),
        branch: Some("main".into()),
        mode: WorkspaceMode::Overlay,
        include_untracked: false,
        prepared_at: "2026-12-01T15:00:00Z".into(),
    };
    s.set_workspace(&ws).unwrap();
    ws.mode = WorkspaceMode::FullCopy;
    ws.branch = None;
    ws.include_untracked = true;
    s.set_workspace(&ws).unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.get_workspace("a1").unwrap(), Some(ws.clone()));
    assert_eq!(s.list_workspaces().unwrap(), vec![ws.clone()]);
    // A workspace needs its VM.
    let mut orphan = ws.clone();
    orphan.vm_id = "nope".into();
    assert!(s.set_workspace(&orphan).is_err());
    s.conn()
        .execute("UPDATE vm_workspaces SET mode = 'sideways'", [])
        .unwrap_err();
    s.delete_vm("a1").unwrap();
    assert_eq!(s.list_workspaces().unwrap(), vec![]);
}

/// A VM's origin is stored as written and never changed by an update; VMs stored before the
/// column existed read as made through the API.
#[test]
fn a_vm_keeps_its_origin_and_older_rows_are_api() {
    use banger_core::vm::VmOrigin;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    // A database as the build before the origin column left it, with one VM.
    let before: Vec<Migration> = MIGRATIONS.iter().copied().filter(|m| m.id < 5).collect();
    let s = Store::open_with(&path, &before).unwrap();
    insert_old_image(&s, "img1", "base");
    s.conn()
        .execute(
            "INSERT INTO vms (id, name, image_id, state, vmm, cpus, memory_mib, disk_bytes, \
             work_disk_bytes, nat, dir, created_at) VALUES ('old1', 'old', 'img1', 'stopped', \
             'firecracker', 1, 256, 1, 1, 0, '/d', '2026-01-01T00:00:00Z')",
            [],
        )
        .unwrap();
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(s.get_vm("old1").unwrap().unwrap().origin, VmOrigin::Api);
    let mut row = vm("m1", "agent-box", "172.30.0.9");
    row.origin = VmOrigin::Mcp;
    s.insert_vm(&row).unwrap();
    let stored: String = s
        .conn()
        .query_row("SELECT origin FROM vms WHERE id = 'm1'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, "mcp");
    row.state = VmState::Running;
    s.update_vm(&row).unwrap();
    assert_eq!(s.get_vm("m1").unwrap().unwrap().origin, VmOrigin::Mcp);
    // The schema refuses an origin banger does not know.
    let err = s
        .conn()
        .execute("UPDATE vms SET origin = 'cron' WHERE id = 'm1'", [])
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

/// An image row as builds before the `init` column wrote it.
fn insert_old_image(s: &Store, id: &str, name: &str) {
    s.conn()
        .execute(
            "INSERT INTO images (id, name, dir, rootfs, rootfs_bytes, kernel, created_at) \
             VALUES (?1, ?2, '/d', '/d/rootfs.ext4', 1, '/d/kernel', '2026-01-01T00:00:00Z')",
            [id, name],
        )
        .unwrap();
}

/// An image keeps the init it was stored with; images stored before the column existed
/// booted their own systemd, and read so.
#[test]
fn an_image_keeps_its_init_and_older_rows_are_systemd() {
    use banger_core::guest_init::GuestInit;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banger.db");
    let before: Vec<Migration> = MIGRATIONS.iter().copied().filter(|m| m.id < 6).collect();
    let s = Store::open_with(&path, &before).unwrap();
    insert_old_image(&s, "old1", "old");
    drop(s);
    let s = Store::open(&path).unwrap();
    assert_eq!(
        s.get_image("old1").unwrap().unwrap().init,
        GuestInit::Systemd
    );
    let mut img = image("img2", "busybox");
    img.init = GuestInit::Banger;
    s.insert_image(&img).unwrap();
    assert_eq!(
        s.get_image("img2").unwrap().unwrap().init,
        GuestInit::Banger
    );
    let err = s
        .conn()
        .execute("UPDATE images SET init = 'upstart' WHERE id = 'img2'", [])
        .unwrap_err();
    assert!(err.to_string().contains("CHECK"), "{err}");
}

/// `paused` (migration 7) reads back as written for a running VM, and is never kept for a VM
/// in any other state.
#[test]
fn only_a_running_vm_is_stored_paused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("banger.db")).unwrap();
    s.insert_image(&image("img1", "base")).unwrap();
    let mut row = vm("a1", "web", "172.30.0.2");
    row.state = VmState::Running;
    row.paused = true;
    s.insert_vm(&row).unwrap();
    assert!(s.get_vm("a1").unwrap().unwrap().paused);
    row.state = VmState::Stopped;
    s.update_vm(&row).unwrap();
    assert!(!s.get_vm("a1").unwrap().unwrap().paused);
    let mut stopped = vm("a2", "db", "172.30.0.3");
    stopped.paused = true;
    s.insert_vm(&stopped).unwrap();
    assert!(!s.get_vm("a2").unwrap().unwrap().paused);
}
