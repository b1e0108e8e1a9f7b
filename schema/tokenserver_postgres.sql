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
    percent_bp   BIGINT NOT NULL DEFAULT 10000, -- rollout: share of new users, basis points
    -- The canary guard (src/tokenserver/guard.rs): when it paused the node (ms; NULL:
    -- not paused; a paused node takes no new users, its users stay) and why; since
    -- when its last minute has looked worse than the other nodes', and how.
    paused_at      BIGINT,
    pause_reason   TEXT,
    suspect_since  BIGINT,
    suspect_reason TEXT
);
-- Added to databases made before the canary guard.
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS paused_at BIGINT;
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS pause_reason TEXT;
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS suspect_since BIGINT;
ALTER TABLE nodes ADD COLUMN IF NOT EXISTS suspect_reason TEXT;

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

-- Each storage node's health, written by the node every `node_report_secs` (one row a
-- node, replaced each time): its last minute of storage API requests (401s left out),
-- open user files, user files, free disk. A row older than three of its intervals is
-- stale (the node stopped reporting).
CREATE TABLE IF NOT EXISTS node_health (
    node        TEXT PRIMARY KEY,          -- the node's URL, as in nodes.node
    reported_at BIGINT NOT NULL,           -- ms
    interval_ms BIGINT NOT NULL,           -- the node's report interval
    started_at  BIGINT NOT NULL,           -- when the node's process started, ms
    version     TEXT NOT NULL,
    requests    BIGINT NOT NULL,           -- storage requests of the last minute
    errors      BIGINT NOT NULL,           -- of which answered 5xx
    p50_us      BIGINT NOT NULL,           -- latency percentiles of the last minute, µs
    p99_us      BIGINT NOT NULL,
    open_users  BIGINT NOT NULL,           -- user files open now
    users       BIGINT NOT NULL,           -- user files in the data dir (counted now and then)
    disk_free   BIGINT NOT NULL            -- bytes free for the data dir
);

-- One row a node a minute (the last minute's figures as of the minute's last report),
-- for the console's chart; each node deletes its rows older than two hours.
CREATE TABLE IF NOT EXISTS node_health_minutes (
    node     TEXT NOT NULL,
    minute   BIGINT NOT NULL,              -- the minute's start, ms
    requests BIGINT NOT NULL,
    errors   BIGINT NOT NULL,
    p50_us   BIGINT NOT NULL,
    p99_us   BIGINT NOT NULL,
    PRIMARY KEY (node, minute)
);

-- Every change an operator (or the canary guard) made, written in the same transaction
-- as the change: `syncstore audit` prints it.
CREATE TABLE IF NOT EXISTS audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,           -- ms
    via         TEXT NOT NULL,             -- cli, console or guard
    who         TEXT NOT NULL,             -- $USER@host, the console's client address, the guard's process
    action      TEXT NOT NULL,             -- e.g. rollout.set, node.down, drain.start
    target      TEXT NOT NULL,             -- the node, or what else was changed
    detail      TEXT NOT NULL
);

-- Live drains (`node drain --live`, or from the console), with their progress as they
-- go: a row whose updated_at stops moving before finished_at is set is a drain that died
-- (running it again resumes it).
CREATE TABLE IF NOT EXISTS drains (
    node        TEXT PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    total       BIGINT NOT NULL,           -- users to move
    moved       BIGINT NOT NULL,
    failed      BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT,
    last_error  TEXT,
    via         TEXT NOT NULL,
    who         TEXT NOT NULL
);
