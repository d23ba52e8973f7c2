//! The state store: one SQLite database under the state dir.
//!
//! Every connection runs in WAL mode with a busy timeout and foreign keys on. The schema is
//! built by versioned [`Migration`]s, each applied in its own transaction and recorded in the
//! `schema_migrations` table; a failing migration rolls back completely (nothing of it stays,
//! and it is not recorded), so the next open applies it again.
//!
//! [`Store::open_read_only`] is for diagnostics: it never creates the file, never migrates,
//! and the connection refuses writes.

pub mod images;
pub mod migrations;
pub mod vms;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use images::{ImageRow, KernelRow};
pub use migrations::{MIGRATIONS, Migration};
pub use rusqlite;
pub use vms::VmRow;

/// How long a connection waits for a lock held by another connection.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} does not exist yet")]
    Missing { path: PathBuf },
    #[error("cannot create directory {path} for the database")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot configure connection to {path} ({what})")]
    Configure {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("migration {id} ({name}) failed on {path}; it was rolled back")]
    Migration {
        path: PathBuf,
        id: u32,
        name: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has migration {id} applied, which this build does not know; it was written by a newer banger"
    )]
    TooNew { path: PathBuf, id: u32 },
    #[error("database query failed on {path}: {what}")]
    Query {
        path: PathBuf,
        what: String,
        #[source]
        source: rusqlite::Error,
    },
}

/// An open database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    read_only: bool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies banger's migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, MIGRATIONS)
    }

    /// Opens the database and applies `migrations` (tests inject their own lists).
    pub fn open_with(path: &Path, migrations: &[Migration]) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut store = Self {
            conn,
            path: path.to_path_buf(),
            read_only: false,
        };
        store.configure()?;
        migrations::apply(&mut store.conn, &store.path, migrations)?;
        Ok(store)
    }

    /// Opens an existing database for reading only: never creates it, never migrates, and
    /// every write on the connection fails.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let store = Self {
            conn,
            path: path.to_path_buf(),
            read_only: true,
        };
        store.configure()?;
        Ok(store)
    }

    fn configure(&self) -> Result<(), StoreError> {
        let err = |what| {
            let path = self.path.clone();
            move |source| StoreError::Configure { path, what, source }
        };
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(err("busy_timeout"))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(err("foreign_keys"))?;
        if self.read_only {
            self.conn
                .pragma_update(None, "query_only", "ON")
                .map_err(err("query_only"))?;
        } else {
            let mode: String = self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .map_err(err("journal_mode"))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Configure {
                    path: self.path.clone(),
                    what: "journal_mode",
                    source: rusqlite::Error::InvalidQuery,
                });
            }
            self.conn
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(err("synchronous"))?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The underlying connection, for the modules that own tables.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Ids of the applied migrations, in order.
    pub fn applied_migrations(&self) -> Result<Vec<u32>, StoreError> {
        migrations::applied(&self.conn).map_err(|source| StoreError::Query {
            path: self.path.clone(),
            what: "list applied migrations".to_string(),
            source,
        })
    }

    /// Wraps a rusqlite error with this store's path and what was being done.
    pub fn query_error(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        let what = what.into();
        move |source| StoreError::Query { path, what, source }
    }
}
