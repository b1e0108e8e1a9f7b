//! The integration tests, as one test binary (`cargo test --test it`): each module is
//! one area, most of them starting the real `syncstore` binary and talking to it over
//! HTTP; `common` holds what they share. One binary links the crate once, where a
//! binary per file linked it ~40 times.
//!
//! A test is named by its module: `cargo test --test it accounts_limits::` runs one
//! area, `cargo test --test it -- --exact faults::files_and_folders_are_owner_only`
//! one test.
//!
//! The tests share one process, so one that changes something process-wide (a
//! resource limit, an environment variable, a static) scopes the change to the child
//! it starts, or to its own module's statics. Two tests stay binaries of their own,
//! because they need a process to themselves (see the top of each):
//! `tests/memory_metrics.rs` (its own global allocator, counting only its test) and
//! `tests/sqlite_shm.rs` (the process's SQLite settings and `-shm` counters).
//!
//! Fixtures stay in `tests/fixtures/`.

mod common;

mod accounts;
mod accounts_client_state;
mod accounts_commands;
mod accounts_delete;
mod accounts_limits;
mod accounts_lockout;
mod accounts_password;
mod accounts_pending;
mod accounts_postgres;
mod accounts_sendtab;
mod accounts_signups;
mod accounts_state;
mod accounts_tokens;
mod admin_users;
mod auth;
mod backup;
mod backup_continuous;
mod batches;
mod canary;
mod cli;
mod client_address;
mod cluster;
mod cluster_events;
mod concurrency;
mod console;
mod crash;
mod faults;
mod firefox;
mod idle_files;
mod import_legacy;
mod interop;
mod live_moves;
mod observability;
mod postgres;
mod properties;
mod quota_upkeep;
mod security_moves;
mod security_net;
mod security_tokens;
mod storage_api;
mod tokenserver;
mod tokenserver_events;
mod tokenserver_verify;
mod ttl_orphans;
