-- Per-server ed25519 deploy keys: the private key sealed (context "servers.deploy_key:<id>"),
-- the public key in OpenSSH form.

ALTER TABLE servers ADD COLUMN deploy_key BLOB;
ALTER TABLE servers ADD COLUMN deploy_key_public TEXT;
