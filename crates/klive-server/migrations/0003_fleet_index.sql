-- Lets the fleet summary count hosts per channel, level and state from the index alone.
CREATE INDEX hosts_fleet ON hosts (revoked_at, channel, applied_level, applied_state);
