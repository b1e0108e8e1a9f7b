-- Tokenserver assignments (PostgreSQL flavour, shared by several tokenservers and storage nodes).
-- Times are Unix milliseconds.

-- Storage nodes users can be assigned to.
CREATE TABLE IF NOT EXISTS nodes (
    id           BIGSERIAL PRIMARY KEY,
    service      TEXT NOT NULL DEFAULT 'sync-1.5',
    node         TEXT NOT NULL UNIQUE,      -- base URL, e.g. https://sync1.example.com
    capacity     BIGINT NOT NULL,          -- most users the node should hold
    available    BIGINT NOT NULL,          -- new users it may still take (rate control)
    current_load BIGINT NOT NULL DEFAULT 0, -- users assigned now
    downed       BIGINT NOT NULL DEFAULT 0, -- dead: its users move on their next sign-in
    draining     BIGINT NOT NULL DEFAULT 0, -- no new users; its users move on next sign-in
    backoff      BIGINT NOT NULL DEFAULT 0, -- seconds clients should back off (X-Backoff)
    percent_bp   BIGINT NOT NULL DEFAULT 10000 -- rollout: share of new users, basis points
);

-- Users for whom a node is always (allow) or never (deny) chosen, by FxA uid or email.
CREATE TABLE IF NOT EXISTS rollout_lists (
    node_id BIGINT NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
    kind    TEXT NOT NULL CHECK (kind IN ('allow', 'deny')),
    who     TEXT NOT NULL,
    PRIMARY KEY (node_id, kind, who)
);

-- One row per (FxA user, uid). The current row has replaced_at NULL; a key change or
-- a move to another node replaces it with a new row (a new uid).
CREATE TABLE IF NOT EXISTS users (
    uid             BIGSERIAL PRIMARY KEY,
    service         TEXT NOT NULL DEFAULT 'sync-1.5',
    fxa_uid         TEXT NOT NULL,
    email           TEXT NOT NULL,
    generation      BIGINT NOT NULL,
    keys_changed_at BIGINT,
    client_state    TEXT NOT NULL,
    node_id         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    replaced_at     BIGINT
);
CREATE UNIQUE INDEX IF NOT EXISTS users_current
    ON users (service, fxa_uid) WHERE replaced_at IS NULL;
CREATE INDEX IF NOT EXISTS users_by_fxa_uid ON users (service, fxa_uid);
CREATE INDEX IF NOT EXISTS users_by_node ON users (node_id) WHERE replaced_at IS NULL;

-- Deployment-wide switches: `signups` ('open' or 'closed').
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Where each storage node takes node-to-node requests (moves): its internal listener,
-- kept apart from the public one. Each node writes its own row when it starts.
CREATE TABLE IF NOT EXISTS node_internal (
    node         TEXT PRIMARY KEY,          -- the node's URL, as in nodes.node
    internal_url TEXT NOT NULL              -- e.g. http://10.0.0.5:8001
);

-- Live moves in progress: the source writes a row before it sends the user's file, and
-- removes it with the flip (or when the move fails). A node installs a received file
-- only for a uid with a row naming that node.
CREATE TABLE IF NOT EXISTS pending_moves (
    uid        BIGINT PRIMARY KEY,
    node       TEXT NOT NULL,               -- the target node's URL
    started_at BIGINT NOT NULL
);

-- FxA users whose account the operator disabled on the built-in accounts service
-- (`syncstore account disable`): storage nodes refuse their tokens (their data is kept,
-- and serves again once the account is enabled).
CREATE TABLE IF NOT EXISTS disabled_users (
    fxa_uid     TEXT PRIMARY KEY,
    disabled_at BIGINT NOT NULL
);

-- For users of this server's own accounts service (whose tokens say when their session
-- proved the password): the client state of the current row and the sign-in time (ms)
-- of the newest token that presented it. At the same keys_changed_at, another client
-- state replaces it only from a token that signed in later (a fresh uid); a missing
-- row counts as registered when the users row was made.
CREATE TABLE IF NOT EXISTS local_client_states (
    fxa_uid      TEXT PRIMARY KEY,
    client_state TEXT NOT NULL,
    auth_at      BIGINT NOT NULL
);
