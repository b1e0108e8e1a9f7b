//! syncstore: a Firefox Sync storage server (SyncStorage API 1.5) that keeps each
//! user's data in that user's own SQLite file.
//!
//! * [`config`] — settings: defaults < TOML file < `SYNCSTORE_*` env < flags.
//! * [`private`], [`pg`] — owner-only files and folders; PostgreSQL URLs and TLS.
//! * [`auth`] — tokenlib tokens, Hawk request signatures, the replay cache.
//! * [`storage`] — the data model and its rules, the per-user SQLite connection
//!   manager (`UserDbs`, with its checkpointer and upkeep), the SQL, and one method
//!   per protocol operation (`Storage`).
//! * [`tokenserver`] — FxA OAuth verification, node assignment with rollout rules, the
//!   assignment database (SQLite or PostgreSQL).
//! * [`accounts`] — the built-in Firefox Accounts-compatible service (onepw, sessions,
//!   OAuth with its own RS256 key, devices, profile), trusted by the tokenserver.
//! * [`cluster`] — live moves of users between nodes, and which files are orphans.
//! * [`admin`] — operator commands (nodes, rollout rules, sign-ups).
//! * [`web`] — the axum router, extractors, handlers and the error → response mapping.
//! * [`server`] — the wiring: opening the services from settings, the shared state,
//!   the listeners, the upkeep loop, shutdown.
//!
//! The binary (`src/main.rs`) only parses flags and calls [`run`], which tests call too.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod db;
pub mod pg;
pub mod private;
pub mod server;
pub mod storage;
pub mod tokenserver;
pub mod web;

pub use server::{ServerError, build_state, node_url, open_assignments, run};
