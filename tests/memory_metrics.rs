//! Issue 28: a storage node's memory grew with every request. Every request records one
//! latency sample in a Prometheus histogram, and the recorder keeps each sample in a
//! buffer until something folds the buffer into the histogram's buckets: a scrape of
//! `/__metrics__`, or the recorder's upkeep. A node nobody scraped kept every sample
//! forever (16 bytes a request by this count). This test answers many requests with the
//! real router, nobody scraping, and counts the bytes the process holds with a counting
//! allocator. Without the fix it failed: 3,275,000 bytes more after 200,000 requests.
//!
//! In-process rather than against the spawned binary: a process's RSS moves with the
//! allocator's caching and page purging, while this count is exact, so a small bound
//! can be asserted without timing anything. It is the only test in this file (test
//! binary), so no other test's allocations are counted.
//!
//! That is why it is not a module of the `it` binary (tests/it/main.rs) with the other
//! integration tests: a `#[global_allocator]` is the whole process's, and there the
//! count would include every test running beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

/// The system allocator, counting the bytes held.
struct Counting;

/// Bytes allocated and not yet freed, by the whole test binary.
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counts change.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller promised for `layout`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Requests before the first count (route tables, the recorder's maps, first buffers).
const WARM_UP: usize = 20_000;
/// Requests between the two counts: unfixed, their samples held 1.6 MB (16.4 bytes a request).
const REQUESTS: usize = 100_000;
/// The most the process may grow over `REQUESTS` requests.
const BOUND: isize = 256 * 1024;

#[test]
fn histogram_samples_stay_bounded_without_scrapes() {
    let data = tempfile::tempdir().expect("tempdir");
    let settings = syncstore::config::Settings {
        data_dir: data.path().to_path_buf(),
        secrets: vec!["test-master-secret".into()],
        ..Default::default()
    };
    // The recorder `serve` installs (process-wide, as in the server).
    syncstore::web::observe::metrics_handle();
    let state = syncstore::build_state(settings, None, None).expect("state");
    let app = syncstore::web::router(state);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let send = |n: usize| {
            let app = app.clone();
            async move {
                for _ in 0..n {
                    let req = Request::get("/__lbheartbeat__")
                        .body(Body::empty())
                        .expect("request");
                    let res = app.clone().oneshot(req).await.expect("infallible");
                    assert_eq!(res.status(), StatusCode::OK);
                }
            }
        };
        send(WARM_UP).await;
        let before = LIVE.load(Ordering::Relaxed);
        send(REQUESTS).await;
        let grown = LIVE.load(Ordering::Relaxed) - before;
        assert!(
            grown < BOUND,
            "the process holds {grown} bytes more after {REQUESTS} requests \
             ({:.1} bytes a request); at most {BOUND} expected",
            grown as f64 / REQUESTS as f64
        );
    });
}
