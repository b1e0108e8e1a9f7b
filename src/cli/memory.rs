//! Process-wide memory settings: mimalloc as the allocator, how it gives memory back,
//! and the large blocks a thread may keep (`syncstore::server::large_blocks`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// mimalloc (less time in malloc and less memory lost to fragmentation across the many
/// threads that serve users' files), with one exception: a thread that asked to keeps
/// one block of at least [`LARGE`] bytes it freed (zeroed at once) and gets it back for
/// its next allocation of the same layout, instead of mimalloc unmapping it and mapping
/// it again.
struct Allocator;

#[global_allocator]
static GLOBAL: Allocator = Allocator;

/// Blocks this large or larger may be kept (scrypt's is 64 MiB).
const LARGE: usize = 16 << 20;

/// A kept block: the pointer mimalloc gave out, with its layout.
#[derive(Clone, Copy)]
struct Kept {
    ptr: *mut u8,
    size: usize,
    align: usize,
}

thread_local! {
    /// `None`: this thread keeps nothing. `Some(None)`: it keeps the next large block
    /// it frees. `Some(Some(k))`: it holds `k`. No destructor and a constant initial
    /// value, so the allocator may read it without allocating.
    static KEPT: Cell<Option<Option<Kept>>> = const { Cell::new(None) };
}

impl Allocator {
    /// The kept block for `layout`, taken from this thread, if it has one.
    fn take(layout: Layout) -> Option<*mut u8> {
        if layout.size() < LARGE {
            return None;
        }
        KEPT.try_with(|kept| match kept.get() {
            Some(Some(k)) if k.size == layout.size() && k.align == layout.align() => {
                kept.set(Some(None));
                Some(k.ptr)
            }
            _ => None,
        })
        .ok()
        .flatten()
    }

    /// Whether this thread kept `ptr` (freed with `layout`) instead of freeing it.
    fn keep(ptr: *mut u8, layout: Layout) -> bool {
        if layout.size() < LARGE {
            return false;
        }
        KEPT.try_with(|kept| match kept.get() {
            Some(None) => {
                kept.set(Some(Some(Kept {
                    ptr,
                    size: layout.size(),
                    align: layout.align(),
                })));
                true
            }
            _ => false,
        })
        .unwrap_or(false)
    }
}

// SAFETY: every block given out is one mimalloc allocated with the layout asked for (a
// kept block is handed out again only for the same size and alignment), and every block
// is freed by mimalloc, now or when its thread stops keeping it.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::take(layout) {
            Some(p) => p,
            // SAFETY: the caller's layout, passed on.
            None => unsafe { mimalloc::MiMalloc.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match Self::take(layout) {
            // Zeroed when it was kept.
            Some(p) => p,
            // SAFETY: as in `alloc`.
            None => unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if Self::keep(ptr, layout) {
            // What it held (scrypt's working memory, derived from a password) does not
            // outlive its use; and whoever gets the block next gets zeroes.
            // SAFETY: the block of `layout.size()` bytes just freed, now this thread's.
            unsafe { ptr.write_bytes(0, layout.size()) };
        } else {
            // SAFETY: a block mimalloc gave out with this layout.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: blocks in use are mimalloc's, whether or not they were kept before.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

impl syncstore::server::large_blocks::Keeper for Allocator {
    fn keep_on_this_thread(&self, on: bool) {
        let Ok(Some(Some(k))) = KEPT.try_with(|kept| kept.replace(on.then_some(None))) else {
            return;
        };
        // SAFETY: the block was mimalloc's, freed by its user and kept by this thread;
        // it is no longer recorded anywhere.
        unsafe {
            mimalloc::MiMalloc.dealloc(k.ptr, Layout::from_size_align_unchecked(k.size, k.align))
        };
    }
}

/// mimalloc's `purge_delay` and `allow_thp` options (see mimalloc.h).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Memory settings for the whole process, made before any other thread exists. Each
/// yields to mimalloc's own environment variable (`MIMALLOC_PURGE_DELAY`,
/// `MIMALLOC_ALLOW_THP`) when the operator sets one.
/// * Freed memory goes back to the OS at once rather than after 10 ms: the blocking
///   threads that run SQLite each keep a heap, and delayed purging let their idle pages
///   add up (measured: ~100 MB more peak RSS under the Sync mix, no speed gain). The
///   exception is the large block a thread keeps (above): password hardening's.
/// * No transparent huge pages: the kernel zeroed a 2 MiB page on first touch, and each
///   purge inside one split it again (measured under the Sync mix at 10,000 users: 6% of
///   the server's CPU in page faults and TLB flushes; without: 3% more requests a
///   second, 15 MB less peak RSS).
pub fn configure() {
    syncstore::server::large_blocks::install(&GLOBAL);
    let unset = |name: &str| std::env::var_os(name).is_none();
    if unset("MIMALLOC_PURGE_DELAY") {
        // SAFETY: a process-wide allocator option, set while no other thread runs.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
    if unset("MIMALLOC_ALLOW_THP") {
        // mimalloc read this option when it started (before main); setting it now stops
        // its later mappings asking for huge pages, and the prctl keeps the kernel from
        // backing any mapping of the process, earlier ones included, with them.
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        #[cfg(target_os = "linux")]
        // SAFETY: as above; PR_SET_THP_DISABLE only sets a flag of this process.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0)
        };
    }
}

#[cfg(test)]
mod tests {
    use syncstore::server::large_blocks::keep_on_this_thread;

    const SIZE: usize = 64 << 20;

    /// Minor page faults of the calling thread so far.
    fn faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        usage.ru_minflt
    }

    /// Allocates a zeroed block of SIZE, checks it is zero, fills it and frees it;
    /// returns the page faults this took.
    fn use_a_large_block() -> i64 {
        let before = faults();
        let mut v = vec![0u8; SIZE];
        assert!(v.iter().step_by(4096).all(|b| *b == 0), "given out zeroed");
        v.fill(7);
        drop(std::hint::black_box(v));
        faults() - before
    }

    #[test]
    fn a_thread_that_keeps_reuses_its_large_block_without_faulting_it_in_again() {
        // The server's settings: the keeper installed, freed memory given back at once.
        super::configure();
        std::thread::spawn(|| {
            let pages = (SIZE / 4096) as i64;
            // Not keeping: every use faults the block's pages in anew.
            use_a_large_block();
            assert!(use_a_large_block() > pages / 2);
            keep_on_this_thread(true);
            use_a_large_block();
            let again = use_a_large_block();
            assert!(again < pages / 20, "{again} faults with the block kept");
            // Stopping frees the kept block: the next use faults again.
            keep_on_this_thread(false);
            assert!(use_a_large_block() > pages / 2);
        })
        .join()
        .unwrap();
    }
}
