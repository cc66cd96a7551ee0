-- klive-server schema, version 1. Portable SQL: runs unchanged on SQLite and PostgreSQL.
-- Times are unix milliseconds (BIGINT); digests and ids are lowercase hex TEXT.

CREATE TABLE channels (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL UNIQUE,
    min_soak_secs BIGINT NOT NULL
);
INSERT INTO channels (name, position, min_soak_secs) VALUES ('canary', 0, 0);
INSERT INTO channels (name, position, min_soak_secs) VALUES ('stable', 1, 0);

CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE releases (
    id TEXT PRIMARY KEY,
    build_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    module_name TEXT NOT NULL,
    module_sha256 TEXT NOT NULL,
    module_size BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    published_by TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    withdrawn_at BIGINT,
    withdrawn_by TEXT,
    withdraw_reason TEXT,
    UNIQUE (build_id, level)
);

CREATE TABLE release_channels (
    release_id TEXT NOT NULL REFERENCES releases(id),
    channel TEXT NOT NULL REFERENCES channels(name),
    since BIGINT NOT NULL,
    emergency BIGINT NOT NULL,
    awaiting_approval BIGINT NOT NULL,
    PRIMARY KEY (release_id, channel)
);

CREATE TABLE promotions (
    id TEXT PRIMARY KEY,
    release_id TEXT NOT NULL REFERENCES releases(id),
    to_channel TEXT NOT NULL REFERENCES channels(name),
    requested_by TEXT NOT NULL,
    requested_at BIGINT NOT NULL,
    reason TEXT,
    status TEXT NOT NULL,
    approved_by TEXT,
    approved_at BIGINT
);

CREATE TABLE enroll_tokens (
    token_hash TEXT PRIMARY KEY,
    channel TEXT NOT NULL REFERENCES channels(name),
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    max_uses BIGINT NOT NULL,
    uses BIGINT NOT NULL
);

CREATE TABLE hosts (
    id TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    hostname TEXT NOT NULL,
    channel TEXT NOT NULL REFERENCES channels(name),
    pinned_level BIGINT,
    update_delay_secs BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    revoked_at BIGINT,
    last_sequence BIGINT NOT NULL,
    last_checkin_at BIGINT,
    kernel_release TEXT,
    build_id TEXT,
    applied_level BIGINT,
    applied_state TEXT,
    boot_id TEXT,
    uptime_secs BIGINT,
    agent_version TEXT,
    last_error TEXT
);

-- One row: the head of the audit chain. Every audited transaction updates it first, which
-- serialises writers of the chain on both databases.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

CREATE INDEX hosts_channel ON hosts (channel);
CREATE INDEX releases_build ON releases (build_id);
