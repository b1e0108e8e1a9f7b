//! Large blocks a thread keeps between uses.
//!
//! Each password hardening (scrypt) allocates 64 MiB and frees it. With the allocator
//! giving freed memory back at once (src/cli/memory.rs), every hardening mapped fresh
//! pages, took a page fault on each of its 16,384 pages and unmapped them again; the
//! unmapping interrupts every core running the server's other threads to flush their
//! TLBs. Measured under a login flood: ~15% of a hardening's CPU in the kernel, and the
//! storage threads beside it slower. A thread that asks to keep large blocks gets the
//! last one it freed back for its next allocation of the same size instead.
//!
//! The allocator belongs to the binary, so the binary installs the [`Keeper`]; without
//! one (tests, other binaries) asking to keep is a no-op.

use std::sync::OnceLock;

/// What the binary's allocator does for [`keep_on_this_thread`].
pub trait Keeper: Sync {
    /// On: the calling thread keeps the last large block it frees; off: it frees the
    /// one it kept, if any, and keeps no more.
    fn keep_on_this_thread(&self, on: bool);
}

static KEEPER: OnceLock<&'static dyn Keeper> = OnceLock::new();

/// Installs the allocator's keeper (once, at startup; later calls are ignored).
pub fn install(keeper: &'static dyn Keeper) {
    let _ = KEEPER.set(keeper);
}

/// See [`Keeper::keep_on_this_thread`].
pub fn keep_on_this_thread(on: bool) {
    if let Some(k) = KEEPER.get() {
        k.keep_on_this_thread(on);
    }
}
