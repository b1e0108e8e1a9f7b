-- The accounts database (PostgreSQL flavour, in the tokenserver's database when it has
-- one, so that several processes serve one set of accounts, see accounts_sqlite.sql).
-- BYTEA and BIGINT, booleans are 0/1 as in SQLite. The table names do not clash with
-- the tokenserver's (nodes, users, settings, ...). account_signing_keys holds the OAuth
-- signing keys every process shares. Run at every start under an advisory lock, so
-- every statement is idempotent, the upgrades of older databases too (ALTER ... IF).

CREATE TABLE IF NOT EXISTS accounts (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL,
    auth_salt BYTEA NOT NULL,
    verify_hash BYTEA NOT NULL,
    wrap_wrap_kb BYTEA NOT NULL,
    ka BYTEA NOT NULL,
    verifier_set_at BIGINT NOT NULL,
    keys_changed_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    disabled BIGINT NOT NULL DEFAULT 0,
    display_name TEXT,
    email_verified BIGINT NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tokens (
    id_hash BYTEA PRIMARY KEY,
    kind TEXT NOT NULL,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    auth_key BYTEA NOT NULL,
    data BYTEA,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_uid ON tokens(uid);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    session_id_hash BYTEA UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT 'desktop',
    push_callback TEXT,
    push_public_key TEXT,
    push_auth_key TEXT,
    available_commands TEXT NOT NULL DEFAULT '{}',
    push_endpoint_expired BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_access_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_uid ON devices(uid);
-- Device commands (Send Tab), kept until their TTL ends; idx only ever grows.
CREATE TABLE IF NOT EXISTS device_commands (
    idx BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    command TEXT NOT NULL,
    payload TEXT NOT NULL,
    sender TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_commands_device ON device_commands(device_id, idx);
CREATE INDEX IF NOT EXISTS device_commands_expiry ON device_commands(expires_at);
CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash BYTEA PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT,
    keys_jwe TEXT,
    offline BIGINT NOT NULL,
    auth_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_codes_uid ON oauth_codes(uid);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    auth_at BIGINT NOT NULL DEFAULT 0
);
ALTER TABLE refresh_tokens ADD COLUMN IF NOT EXISTS auth_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN IF NOT EXISTS push_endpoint_expired BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS refresh_tokens_uid ON refresh_tokens(uid);
CREATE TABLE IF NOT EXISTS invites (
    code_hash BYTEA PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS email_codes (
    uid TEXT PRIMARY KEY REFERENCES accounts(uid) ON DELETE CASCADE,
    code_hash BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_deletions (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    deleted_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_state_changes (
    uid TEXT PRIMARY KEY,
    disabled BIGINT NOT NULL,
    changed_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS account_signing_keys (
    id BIGINT PRIMARY KEY,
    keys TEXT NOT NULL
);
ALTER TABLE accounts DROP CONSTRAINT IF EXISTS accounts_normalized_email_key;
CREATE UNIQUE INDEX IF NOT EXISTS accounts_verified_email ON accounts(normalized_email)
    WHERE email_verified = 1;
CREATE INDEX IF NOT EXISTS accounts_email ON accounts(normalized_email);
