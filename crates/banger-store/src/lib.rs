//! The state store: one SQLite database under the state dir.
//!
//! Every connection runs in WAL mode with a busy timeout and foreign keys on. The schema is
//! built by versioned [`Migration`]s, each applied in its own transaction and recorded in the
//! `schema_migrations` table; a failing migration rolls back completely (nothing of it stays,
//! and it is not recorded), so the next open applies it again.
//!
//! [`Store::open_read_only`] is for diagnostics: it never creates the file, never migrates,
//! the connection refuses writes, and it creates no `-wal` or `-shm` file next to the
//! database (see its doc for how it stays consistent while a daemon writes).

pub mod images;
pub mod migrations;
pub mod vms;
pub mod workspaces;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

pub use images::{ImageRow, KernelRow};
pub use migrations::{MIGRATIONS, Migration};
pub use rusqlite;
pub use vms::VmRow;
pub use workspaces::{WorkspaceMode, WorkspaceRow};

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
    /// A write broke a constraint of the schema; [`Constraint`] says which.
    #[error("cannot {what} in {path}: {constraint}")]
    Constraint {
        path: PathBuf,
        what: String,
        constraint: Box<Constraint>,
        #[source]
        source: rusqlite::Error,
    },
    /// An insert's `name` is already another row's (`UNIQUE(name)` of `table`); any other
    /// constraint is [`StoreError::Constraint`].
    #[error("{table} in {path} already has a row named {name:?}")]
    NameTaken {
        path: PathBuf,
        table: &'static str,
        name: String,
        #[source]
        source: Box<rusqlite::Error>,
    },
    /// A stored value does not decode: the row is reported, never read with a fallback.
    #[error(transparent)]
    Corrupt(Box<Corrupt>),
}

/// Which stored value of which row does not decode (see [`StoreError::Corrupt`]).
#[derive(Debug, thiserror::Error)]
#[error("row {id} of {table} in {} has an unreadable {column}", path.display())]
pub struct Corrupt {
    pub path: PathBuf,
    pub table: &'static str,
    /// The row's primary key.
    pub id: String,
    pub column: &'static str,
    /// The stored text.
    pub value: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Whether this is a UNIQUE (or primary key) conflict on exactly `table.column`
    /// ([`StoreError::NameTaken`] for `name`).
    pub fn is_unique_conflict(&self, table: &str, column: &str) -> bool {
        if let Self::NameTaken { table: t, .. } = self {
            return *t == table && column == "name";
        }
        matches!(self.constraint(), Some(Constraint::Unique { table: t, columns })
            if t == table && columns.len() == 1 && columns[0] == column)
    }

    /// The constraint a write broke, if that is what this error is.
    pub fn constraint(&self) -> Option<&Constraint> {
        match self {
            Self::Constraint { constraint, .. } => Some(constraint),
            _ => None,
        }
    }

    /// The SQLite result code behind this error, when there is one (busy, full disk...).
    pub fn sqlite_code(&self) -> Option<rusqlite::ErrorCode> {
        let source = match self {
            Self::Open { source, .. }
            | Self::Configure { source, .. }
            | Self::Migration { source, .. }
            | Self::Query { source, .. }
            | Self::Constraint { source, .. } => source,
            Self::NameTaken { source, .. } => &**source,
            Self::Missing { .. }
            | Self::CreateDir { .. }
            | Self::TooNew { .. }
            | Self::Corrupt(_) => return None,
        };
        source.sqlite_error_code()
    }
}

/// Which constraint of the schema a write broke, read from SQLite's extended result code and
/// message (`UNIQUE constraint failed: vms.name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Constraint {
    /// Another row already has this value (UNIQUE or PRIMARY KEY).
    Unique {
        table: String,
        columns: Vec<String>,
    },
    /// A referenced row does not exist, or a referencing row still does.
    ForeignKey,
    /// A CHECK expression failed (SQLite names the expression).
    Check {
        expression: String,
    },
    NotNull {
        table: String,
        column: String,
    },
    /// Any other constraint, with SQLite's message.
    Other {
        message: String,
    },
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unique { table, columns } => {
                write!(
                    f,
                    "another row of {table} has the same {}",
                    columns.join(", ")
                )
            }
            Self::ForeignKey => f.write_str("a row it refers to (or that refers to it) is missing"),
            Self::Check { expression } => write!(f, "check {expression:?} failed"),
            Self::NotNull { table, column } => write!(f, "{table}.{column} must not be NULL"),
            Self::Other { message } => f.write_str(message),
        }
    }
}

impl Constraint {
    /// The constraint `e` broke, or `None` when `e` is not a constraint violation.
    pub fn of(e: &rusqlite::Error) -> Option<Self> {
        let rusqlite::Error::SqliteFailure(f, msg) = e else {
            return None;
        };
        if f.code != rusqlite::ErrorCode::ConstraintViolation {
            return None;
        }
        let msg = msg.clone().unwrap_or_default();
        // "UNIQUE constraint failed: vms.name, vms.ip" -> ("vms", ["name", "ip"])
        let qualified = |prefix: &str| -> Option<(String, Vec<String>)> {
            let rest = msg.strip_prefix(prefix)?;
            let mut table = String::new();
            let mut columns = Vec::new();
            for part in rest.split(',').map(str::trim) {
                let (t, c) = part.split_once('.')?;
                table = t.to_string();
                columns.push(c.to_string());
            }
            Some((table, columns))
        };
        use rusqlite::ffi;
        Some(match f.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                match qualified("UNIQUE constraint failed: ") {
                    Some((table, columns)) => Self::Unique { table, columns },
                    None => Self::Other { message: msg },
                }
            }
            // `ON DELETE RESTRICT` reports as a trigger constraint with the same message.
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Self::ForeignKey,
            ffi::SQLITE_CONSTRAINT_TRIGGER if msg == "FOREIGN KEY constraint failed" => {
                Self::ForeignKey
            }
            ffi::SQLITE_CONSTRAINT_CHECK => Self::Check {
                expression: msg
                    .strip_prefix("CHECK constraint failed: ")
                    .unwrap_or(&msg)
                    .to_string(),
            },
            ffi::SQLITE_CONSTRAINT_NOTNULL => match qualified("NOT NULL constraint failed: ") {
                Some((table, mut columns)) if columns.len() == 1 => Self::NotNull {
                    table,
                    column: columns.remove(0),
                },
                _ => Self::Other { message: msg },
            },
            _ => Self::Other { message: msg },
        })
    }
}

/// A `file:` URI for `path` with `query`: every byte outside the unreserved set (and `/`) is
/// percent-encoded, so `?`, `#` and `%` in a path cannot become URI syntax.
fn file_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                uri.push(b as char)
            }
            _ => uri.push_str(&format!("%{b:02X}")),
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
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
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::default() | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|source| StoreError::Open {
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

    /// Opens an existing database for reading only: never creates it, never migrates, every
    /// write on the connection fails, and no file appears next to it.
    ///
    /// SQLite in WAL mode creates `-wal` and `-shm` files even for a read-only connection, so:
    /// - No `-wal` file: no connection has the database open (an open WAL connection keeps its
    ///   `-wal`; the last one to close checkpoints it into the main file and deletes it), so the
    ///   main file holds every committed transaction. It is opened `immutable=1`: read as a
    ///   plain file, no locks, no `-wal`/`-shm`. A daemon that starts while this connection
    ///   reads writes into a new `-wal`, not into the main file (the main file only changes at a
    ///   checkpoint, after a thousand pages of writes or when the writer closes), so the pages
    ///   read stay a consistent snapshot of the last checkpoint.
    /// - A `-wal` file: a daemon has the database open (or died without checkpointing), and
    ///   committed data may be only in the WAL. It is opened `mode=ro` through SQLite's WAL
    ///   protocol (shared memory in the existing `-shm`), which reads consistent, current data
    ///   while the daemon writes; the files it uses already exist.
    ///
    /// Symlinks are never followed (`SQLITE_OPEN_NOFOLLOW`).
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let snapshot = std::fs::symlink_metadata(&wal).is_err();
        let uri = file_uri(path, if snapshot { "immutable=1" } else { "mode=ro" });
        let conn = Connection::open_with_flags(
            &uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_URI
                | OpenFlags::SQLITE_OPEN_NOFOLLOW
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
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

    /// Like [`query_error`](Store::query_error) for writes: a broken constraint becomes
    /// [`StoreError::Constraint`], saying which.
    pub fn write_error(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        let what = what.into();
        move |source| match Constraint::of(&source) {
            Some(constraint) => StoreError::Constraint {
                path,
                what,
                constraint: Box::new(constraint),
                source,
            },
            None => StoreError::Query { path, what, source },
        }
    }

    /// Like [`write_error`](Store::write_error) for an insert into `table`: a conflict on
    /// its `UNIQUE(name)` is [`StoreError::NameTaken`].
    pub fn insert_error(
        &self,
        what: impl Into<String>,
        table: &'static str,
        name: &str,
    ) -> impl FnOnce(rusqlite::Error) -> StoreError {
        let path = self.path.clone();
        let name = name.to_string();
        let write = self.write_error(what);
        move |source| match Constraint::of(&source) {
            Some(Constraint::Unique { table: t, columns })
                if t == table && columns.len() == 1 && columns[0] == "name" =>
            {
                StoreError::NameTaken {
                    path,
                    table,
                    name,
                    source: Box::new(source),
                }
            }
            _ => write(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_message_never_repeats_its_source() {
        let dir = tempfile::tempdir().unwrap();
        // A directory is not a database: opening it fails with SQLite's reason.
        let err = Store::open(dir.path()).unwrap_err();
        let cause = err
            .source()
            .expect("the SQLite error is the source")
            .to_string();
        assert!(!err.to_string().contains(&cause), "{err}: {cause}");
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
