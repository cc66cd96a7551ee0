-- Signed TUF metadata per channel: `N.targets.json`, `N.snapshot.json`, `timestamp.json`.
-- Rewritten in the same transaction as every change of a channel's contents.
CREATE TABLE tuf_metadata (
    channel TEXT NOT NULL REFERENCES channels(name),
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    body TEXT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (channel, name)
);
