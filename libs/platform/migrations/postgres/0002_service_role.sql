-- Keys with role 'service' carry deliveries between Corvus's own services (a log's
-- dispatcher calling a consumer's Deliver): across workspaces, and nothing else.
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('ingest', 'read', 'admin', 'service'));
