-- The accounts database (SQLite flavour, see accounts_postgres.sql for the shared one).
-- Times are Unix milliseconds, booleans are 0/1. Every secret a client presents later
-- (token ids, codes, refresh tokens) is kept as its SHA-256 only.
--
-- An older file is upgraded before this runs (src/accounts/store/schema.rs): columns
-- added since are added, and an accounts table whose normalized_email was UNIQUE over
-- every account is rebuilt as defined here.

CREATE TABLE IF NOT EXISTS accounts (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    normalized_email TEXT NOT NULL,
    auth_salt BLOB NOT NULL,
    verify_hash BLOB NOT NULL,
    wrap_wrap_kb BLOB NOT NULL,
    ka BLOB NOT NULL,
    verifier_set_at INTEGER NOT NULL,
    keys_changed_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    display_name TEXT,
    email_verified INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS tokens (
    id_hash BLOB PRIMARY KEY,
    kind TEXT NOT NULL,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    auth_key BLOB NOT NULL,
    data BLOB,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    user_agent TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS tokens_uid ON tokens(uid);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    session_id_hash BLOB UNIQUE,
    name TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT 'desktop',
    push_callback TEXT,
    push_public_key TEXT,
    push_auth_key TEXT,
    available_commands TEXT NOT NULL DEFAULT '{}',
    push_endpoint_expired INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    last_access_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS devices_uid ON devices(uid);
-- Device commands (Send Tab), kept until their TTL ends; idx only ever grows.
CREATE TABLE IF NOT EXISTS device_commands (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,
    uid TEXT NOT NULL,
    device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    command TEXT NOT NULL,
    payload TEXT NOT NULL,
    sender TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS device_commands_device ON device_commands(device_id, idx);
CREATE INDEX IF NOT EXISTS device_commands_expiry ON device_commands(expires_at);
CREATE TABLE IF NOT EXISTS oauth_codes (
    code_hash BLOB PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    code_challenge TEXT,
    keys_jwe TEXT,
    offline INTEGER NOT NULL,
    auth_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS oauth_codes_uid ON oauth_codes(uid);
CREATE TABLE IF NOT EXISTS refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    uid TEXT NOT NULL REFERENCES accounts(uid) ON DELETE CASCADE,
    client_id TEXT NOT NULL,
    scope TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    auth_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refresh_tokens_uid ON refresh_tokens(uid);
CREATE TABLE IF NOT EXISTS invites (
    code_hash BLOB PRIMARY KEY,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS email_codes (
    uid TEXT PRIMARY KEY REFERENCES accounts(uid) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account_deletions (
    uid TEXT PRIMARY KEY,
    email TEXT NOT NULL,
    deleted_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS account_state_changes (
    uid TEXT PRIMARY KEY,
    disabled INTEGER NOT NULL,
    changed_at INTEGER NOT NULL
);

-- An email is unique among VERIFIED accounts only (several pending sign-ups of one
-- address may wait side by side, each with its own code, the first verified takes
-- the address).
CREATE UNIQUE INDEX IF NOT EXISTS accounts_verified_email ON accounts(normalized_email)
    WHERE email_verified = 1;
CREATE INDEX IF NOT EXISTS accounts_email ON accounts(normalized_email);
