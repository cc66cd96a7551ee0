-- Evidence history (append-only): what each host ran over time, CVE knowledge with the time
-- the server learnt it, versioned SLA policies, exceptions, dashboard sessions.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL.

ALTER TABLE hosts ADD COLUMN taint BIGINT;

-- One row per host state change (registration, reboot, kernel, applied level/state, failure,
-- taint), keyed by the host's strictly increasing check-in sequence (0 = registration).
CREATE TABLE host_history (
    host_id TEXT NOT NULL,
    sequence BIGINT NOT NULL,
    at BIGINT NOT NULL,
    events TEXT NOT NULL,
    kernel_release TEXT,
    package_version TEXT,
    build_id TEXT,
    applied_level BIGINT,
    applied_state TEXT,
    boot_id TEXT,
    uptime_secs BIGINT,
    taint BIGINT,
    error TEXT,
    PRIMARY KEY (host_id, sequence)
);
CREATE INDEX host_history_at ON host_history (at);

-- Hosts registered before this migration start their history with their current state.
INSERT INTO host_history (host_id, sequence, at, events, kernel_release, package_version, build_id, applied_level, applied_state, boot_id, uptime_secs, taint, error)
SELECT id, last_sequence, COALESCE(last_checkin_at, registered_at), 'backfill', kernel_release, NULL, build_id, applied_level, applied_state, boot_id, uptime_secs, NULL, last_error FROM hosts;

-- How many hosts checked in on each UTC day (day = unix ms / 86400000): monitoring coverage.
CREATE TABLE checkin_daily (
    day BIGINT PRIMARY KEY,
    hosts BIGINT NOT NULL
);

-- Every imported CVE file: refused a second time (same sha256), never half-imported.
CREATE TABLE cve_imports (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    file_name TEXT NOT NULL,
    sha256 TEXT NOT NULL UNIQUE,
    imported_at BIGINT NOT NULL,
    imported_by TEXT NOT NULL,
    records BIGINT NOT NULL
);

-- A kernel package version and a CVE it fixes (Debian changelog entries, OSV ranges).
CREATE TABLE cve_package_fixes (
    package TEXT NOT NULL,
    version TEXT NOT NULL,
    cve TEXT NOT NULL,
    import_id TEXT NOT NULL,
    known_at BIGINT NOT NULL,
    released_at BIGINT,
    PRIMARY KEY (package, version, cve)
);
CREATE INDEX cve_package_fixes_cve ON cve_package_fixes (cve);

-- What one source said about a CVE (severity, CVSS, publication, KEV dates), per import.
CREATE TABLE cve_facts (
    cve TEXT NOT NULL,
    import_id TEXT NOT NULL,
    source TEXT NOT NULL,
    known_at BIGINT NOT NULL,
    severity TEXT,
    cvss DOUBLE PRECISION,
    published_at BIGINT,
    kev_added_at BIGINT,
    kev_due_at BIGINT,
    summary TEXT,
    PRIMARY KEY (cve, import_id)
);

-- SLA policy versions; the version whose effective_at is the latest at or before a finding's
-- detection judges it. Version 1 holds the defaults from the start of time.
CREATE TABLE sla_policies (
    version BIGINT PRIMARY KEY,
    effective_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    critical_days BIGINT NOT NULL,
    high_days BIGINT NOT NULL,
    medium_days BIGINT NOT NULL,
    low_days BIGINT NOT NULL,
    unrated_days BIGINT NOT NULL,
    kev_shortens BIGINT NOT NULL,
    kev_floor_days BIGINT NOT NULL,
    clock_start TEXT NOT NULL,
    note TEXT NOT NULL
);
INSERT INTO sla_policies (version, effective_at, created_by, critical_days, high_days, medium_days, low_days, unrated_days, kev_shortens, kev_floor_days, clock_start, note) VALUES (1, 0, 'system', 7, 30, 90, 180, 90, 1, 1, 'detected', 'klive defaults');

-- Approved exceptions (risk acceptances); host_id NULL covers every host.
CREATE TABLE sla_exceptions (
    id TEXT PRIMARY KEY,
    cve TEXT NOT NULL,
    host_id TEXT,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Dashboard sessions: only the SHA-256 of the cookie is stored; csrf is sent in forms.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
