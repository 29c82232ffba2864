-- A domain may be linked to a DNS zone at a provider: its A (or AAAA) record there points
-- at the edge of the pools that use it, rewritten when that edge changes.
ALTER TABLE domains ADD COLUMN dns_provider TEXT;
ALTER TABLE domains ADD COLUMN dns_zone TEXT;
-- The address the record holds, as last written, and when; or why it could not be.
ALTER TABLE domains ADD COLUMN dns_address TEXT;
ALTER TABLE domains ADD COLUMN dns_synced_at INTEGER;
ALTER TABLE domains ADD COLUMN dns_error TEXT;
