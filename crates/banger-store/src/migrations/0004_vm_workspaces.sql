CREATE TABLE vm_workspaces (
    vm_id             TEXT PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
    guest_path        TEXT NOT NULL CHECK (guest_path LIKE '/%'),
    host_path         TEXT NOT NULL CHECK (host_path LIKE '/%'),
    head              TEXT NOT NULL CHECK (length(head) >= 40),
    branch            TEXT,
    mode              TEXT NOT NULL CHECK (mode IN ('overlay', 'full_copy')),
    include_untracked INTEGER NOT NULL CHECK (include_untracked IN (0, 1)),
    prepared_at       TEXT NOT NULL
) STRICT;
ALTER TABLE vms DROP COLUMN workspace_json;
