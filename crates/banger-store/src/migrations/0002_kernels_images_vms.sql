-- Kernels, images and VMs. Paths are absolute. Times are RFC 3339 UTC text.
CREATE TABLE kernels (
    name       TEXT PRIMARY KEY,
    version    TEXT NOT NULL,
    dir        TEXT NOT NULL,
    vmlinux    TEXT,            -- uncompressed ELF (Firecracker)
    vmlinuz    TEXT,            -- as shipped (QEMU)
    initrd     TEXT,
    modules    TEXT,
    sha256     TEXT NOT NULL,
    source     TEXT NOT NULL,
    created_at TEXT NOT NULL
) STRICT;

CREATE TABLE images (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    dir          TEXT NOT NULL,
    rootfs       TEXT NOT NULL,
    rootfs_bytes INTEGER NOT NULL,
    kernel       TEXT,           -- own copies when registered with --kernel
    initrd       TEXT,
    modules      TEXT,
    kernel_ref   TEXT REFERENCES kernels (name) ON DELETE RESTRICT,
    work_seed    TEXT,           -- made once, on first use
    distro       TEXT,
    arch         TEXT,
    description  TEXT,
    created_at   TEXT NOT NULL,
    CHECK ((kernel IS NULL) <> (kernel_ref IS NULL))
) STRICT;

CREATE TABLE vms (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    image_id        TEXT NOT NULL REFERENCES images (id) ON DELETE RESTRICT,
    state           TEXT NOT NULL CHECK (state IN ('creating', 'running', 'stopped', 'error')),
    vmm             TEXT NOT NULL,
    cpus            INTEGER NOT NULL CHECK (cpus > 0),
    memory_mib      INTEGER NOT NULL CHECK (memory_mib > 0),
    disk_bytes      INTEGER NOT NULL CHECK (disk_bytes > 0),
    work_disk_bytes INTEGER NOT NULL CHECK (work_disk_bytes > 0),
    nat             INTEGER NOT NULL DEFAULT 0,
    ip              TEXT UNIQUE,     -- the lease: held until the VM is deleted
    mac             TEXT,
    tap             TEXT UNIQUE,
    vsock_cid       INTEGER UNIQUE,
    pid             INTEGER,
    dir             TEXT NOT NULL,
    error           TEXT,
    workspace_json  TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT
) STRICT;
