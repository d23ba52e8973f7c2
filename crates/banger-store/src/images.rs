//! The `images` and `kernels` tables.

use banger_core::guest_init::{GuestInit, ParseGuestInitError};
use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One row of `images`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageRow {
    pub id: String,
    pub name: String,
    pub dir: String,
    pub rootfs: String,
    pub rootfs_bytes: u64,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub modules: Option<String>,
    pub kernel_ref: Option<String>,
    pub work_seed: Option<String>,
    pub distro: Option<String>,
    pub arch: Option<String>,
    pub description: Option<String>,
    pub created_at: String,
    /// What runs as its guests' PID 1.
    pub init: GuestInit,
}

const COLUMNS: &str = "id, name, dir, rootfs, rootfs_bytes, kernel, initrd, modules, kernel_ref, \
    work_seed, distro, arch, description, created_at, init";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: r.get(0)?,
        name: r.get(1)?,
        dir: r.get(2)?,
        rootfs: r.get(3)?,
        rootfs_bytes: r.get(4)?,
        kernel: r.get(5)?,
        initrd: r.get(6)?,
        modules: r.get(7)?,
        kernel_ref: r.get(8)?,
        work_seed: r.get(9)?,
        distro: r.get(10)?,
        arch: r.get(11)?,
        description: r.get(12)?,
        created_at: r.get(13)?,
        init: r
            .get::<_, String>(14)?
            .parse()
            .map_err(|e: ParseGuestInitError| {
                rusqlite::Error::FromSqlConversionFailure(
                    14,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
    })
}

/// One row of `kernels`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KernelRow {
    pub name: String,
    pub version: String,
    pub dir: String,
    pub vmlinux: Option<String>,
    pub vmlinuz: Option<String>,
    pub initrd: Option<String>,
    pub modules: Option<String>,
    pub sha256: String,
    pub source: String,
    pub created_at: String,
}

fn kernel_from_row(r: &Row<'_>) -> rusqlite::Result<KernelRow> {
    Ok(KernelRow {
        name: r.get(0)?,
        version: r.get(1)?,
        dir: r.get(2)?,
        vmlinux: r.get(3)?,
        vmlinuz: r.get(4)?,
        initrd: r.get(5)?,
        modules: r.get(6)?,
        sha256: r.get(7)?,
        source: r.get(8)?,
        created_at: r.get(9)?,
    })
}

impl Store {
    pub fn list_images(&self) -> Result<Vec<ImageRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM images ORDER BY name");
        let mut stmt = self
            .conn()
            .prepare(&sql)
            .map_err(self.query_error("list images"))?;
        stmt.query_map([], from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.query_error("list images"))
    }

    pub fn get_image(&self, id: &str) -> Result<Option<ImageRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM images WHERE id = ?1");
        self.conn()
            .query_row(&sql, [id], from_row)
            .optional()
            .map_err(self.query_error(format!("read image {id}")))
    }

    /// Inserts a new image. Fails with [`StoreError::NameTaken`] when its name is taken, and
    /// with [`StoreError::Constraint`] when its id is taken or its `kernel_ref` names no
    /// kernel.
    pub fn insert_image(&self, img: &ImageRow) -> Result<(), StoreError> {
        self.conn().execute(
            &format!(
                "INSERT INTO images ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11, ?12, ?13, ?14, ?15)"
            ),
            params![
                img.id,
                img.name,
                img.dir,
                img.rootfs,
                img.rootfs_bytes,
                img.kernel,
                img.initrd,
                img.modules,
                img.kernel_ref,
                img.work_seed,
                img.distro,
                img.arch,
                img.description,
                img.created_at,
                img.init.as_str()
            ],
        )
        .map_err(self.insert_error(format!("insert image {}", img.name), "images", &img.name))?;
        Ok(())
    }

    pub fn set_image_work_seed(&self, id: &str, seed: &str) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE images SET work_seed = ?2 WHERE id = ?1",
                params![id, seed],
            )
            .map_err(self.write_error(format!("update image {id}")))?;
        Ok(())
    }

    /// Deletes an image; a VM still using it is a [`StoreError::Constraint`] (foreign key).
    pub fn delete_image(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM images WHERE id = ?1", [id])
            .map_err(self.write_error(format!("delete image {id}")))?;
        Ok(())
    }

    pub fn list_kernels(&self) -> Result<Vec<KernelRow>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT name, version, dir, vmlinux, vmlinuz, initrd, modules, sha256, source, \
                 created_at FROM kernels ORDER BY name",
            )
            .map_err(self.query_error("list kernels"))?;
        stmt.query_map([], kernel_from_row)
            .and_then(|rows| rows.collect())
            .map_err(self.query_error("list kernels"))
    }

    /// Inserts or replaces the kernel `k.name`.
    pub fn upsert_kernel(&self, k: &KernelRow) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO kernels (name, version, dir, vmlinux, vmlinuz, initrd, modules, sha256, \
             source, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
             ON CONFLICT (name) DO UPDATE SET version = excluded.version, dir = excluded.dir, \
             vmlinux = excluded.vmlinux, vmlinuz = excluded.vmlinuz, initrd = excluded.initrd, \
             modules = excluded.modules, sha256 = excluded.sha256, source = excluded.source, \
             created_at = excluded.created_at",
            params![
                k.name,
                k.version,
                k.dir,
                k.vmlinux,
                k.vmlinuz,
                k.initrd,
                k.modules,
                k.sha256,
                k.source,
                k.created_at
            ],
        )
        .map_err(self.write_error(format!("record kernel {}", k.name)))?;
        Ok(())
    }

    /// Deletes a kernel; an image still booting it is a [`StoreError::Constraint`].
    pub fn delete_kernel(&self, name: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM kernels WHERE name = ?1", [name])
            .map_err(self.write_error(format!("delete kernel {name}")))?;
        Ok(())
    }

    pub fn get_kernel(&self, name: &str) -> Result<Option<KernelRow>, StoreError> {
        self.conn()
            .query_row(
                "SELECT name, version, dir, vmlinux, vmlinuz, initrd, modules, sha256, source, \
                 created_at FROM kernels WHERE name = ?1",
                [name],
                kernel_from_row,
            )
            .optional()
            .map_err(self.query_error(format!("read kernel {name}")))
    }
}
