//! Process-wide SQLite settings, applied once before the first connection.
//!
//! * SQLite allocates from mimalloc, as the rest of the server does, instead of the C
//!   library's malloc (whose per-arena locks and fragmentation showed up under load);
//! * no memory statistics, which would take one global mutex on every allocation of
//!   every connection;
//! * a small lookaside allocator per connection;
//! * on a cold open of a user file, a WAL file's shared-memory index (`-shm`) that this
//!   process reset before is kept instead of rebuilt, and a first reset is done in place
//!   (see [`reset_aware_ftruncate`]); no ownership change of files that already have
//!   the right owner ([`owner_aware_fchown`]).

use std::collections::HashSet;
use std::os::raw::{c_int, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// Each connection's lookaside allocator: slot size and count. SQLite's default
/// (1,200 bytes × 100) gives every open user 120 KB up front; with mimalloc behind
/// SQLite a small one costs no measurable speed.
const LOOKASIDE: (c_int, c_int) = (256, 32);

/// Applies the settings; later calls, and calls after SQLite has been initialized by
/// another part of the process, change nothing.
pub fn configure() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let methods = ffi::sqlite3_mem_methods {
            xMalloc: Some(x_malloc),
            xFree: Some(x_free),
            xRealloc: Some(x_realloc),
            xSize: Some(x_size),
            xRoundup: Some(x_roundup),
            xInit: Some(x_init),
            xShutdown: Some(x_shutdown),
            pAppData: std::ptr::null_mut(),
        };
        // SAFETY: called before any connection exists in this process (SQLite answers
        // SQLITE_MISUSE, changing nothing, if one already does); SQLite copies
        // `methods`, whose functions uphold its allocator contract (8-byte aligned
        // blocks, sizes as allocated).
        let rc = unsafe {
            ffi::sqlite3_config(ffi::SQLITE_CONFIG_MALLOC, &methods as *const _)
                | ffi::sqlite3_config(ffi::SQLITE_CONFIG_MEMSTATUS, 0 as c_int)
                | ffi::sqlite3_config(ffi::SQLITE_CONFIG_LOOKASIDE, LOOKASIDE.0, LOOKASIDE.1)
        };
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was already initialized; its settings stay");
            return;
        }
        replace_system_call(
            c"ftruncate",
            reset_aware_ftruncate as unsafe extern "C" fn(c_int, libc::off_t) -> c_int as usize,
        );
        replace_system_call(
            c"fchown",
            owner_aware_fchown as unsafe extern "C" fn(c_int, libc::uid_t, libc::gid_t) -> c_int
                as usize,
        );
    });
}

/// Points one of the Unix VFS's system calls at `f`, a function with that call's
/// signature (as an address: SQLite casts its slot back to the call's own type).
/// Called only from [`configure`], before any connection exists.
fn replace_system_call(name: &std::ffi::CStr, f: usize) {
    // SAFETY: no connection exists yet (configure's sqlite3_config calls succeeded), so
    // no thread is inside the VFS; `f` is the address of an `extern "C"` function with
    // the named call's signature, which is how SQLite calls it.
    let rc = unsafe {
        let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
        match vfs.as_ref().and_then(|v| v.xSetSystemCall) {
            Some(set) => set(
                vfs,
                name.as_ptr(),
                Some(std::mem::transmute::<usize, unsafe extern "C" fn()>(f)),
            ),
            None => ffi::SQLITE_NOTFOUND,
        }
    };
    if rc != ffi::SQLITE_OK {
        tracing::warn!(rc, call = ?name, "SQLite's system call could not be replaced");
    }
}

/// SQLite's `fchown`, skipped when the file already has that owner.
///
/// A process running as root has SQLite give every `-wal` and `-shm` file it opens the
/// database file's owner, on every open, and on ext4 each such call is an inode update
/// even when nothing changes (about 4% of a cold open). Files this server creates
/// already have the right owner; one `fstat` tells.
unsafe extern "C" fn owner_aware_fchown(fd: c_int, uid: libc::uid_t, gid: libc::gid_t) -> c_int {
    if fstat(fd).is_some_and(|st| st.st_uid == uid && st.st_gid == gid) {
        return 0;
    }
    // SAFETY: the system call SQLite asked for, with its arguments.
    unsafe { libc::fchown(fd, uid, gid) }
}

/// `fstat` of one of SQLite's descriptors; `None` if it fails.
fn fstat(fd: c_int) -> Option<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat only writes into `st`, and fills it when it returns 0.
    unsafe { (libc::fstat(fd, st.as_mut_ptr()) == 0).then(|| st.assume_init()) }
}

/// The size of one region of a WAL index (`-shm`), fixed by SQLite's file format. Every
/// user file's index is one region unless its WAL once held more than ~4,000 frames.
const SHM_REGION: usize = 32 * 1024;

/// The length SQLite truncates a `-shm` file to when this process is the first to
/// attach to it (and only then: database, journal and WAL files are cut to page
/// multiples or zero).
const SHM_RESET_LEN: libc::off_t = 3;

/// How many `-shm` files this process remembers having reset (~20 bytes each); past
/// that, files it has not seen yet are reset on every cold open, as SQLite would.
const SHM_REMEMBERED_MAX: usize = 1 << 20;

/// Cold opens whose existing `-shm` was reset by zeroing its one region in place.
static SHM_ZEROED: AtomicU64 = AtomicU64::new(0);

/// Cold opens that kept the `-shm` index this process had reset before.
static SHM_KEPT: AtomicU64 = AtomicU64::new(0);

/// The `-shm` files (device, inode) this process has reset since it started.
static SHM_RESET_HERE: Mutex<Option<HashSet<(u64, u64)>>> = Mutex::new(None);

/// How many `-shm` resets were done by zeroing in place since the process started.
pub fn shm_resets_zeroed() -> u64 {
    SHM_ZEROED.load(Ordering::Relaxed)
}

/// How many cold opens kept a `-shm` index this process had reset before.
pub fn shm_indexes_kept() -> u64 {
    SHM_KEPT.load(Ordering::Relaxed)
}

/// SQLite's `ftruncate`, except for the reset of a `-shm` file on a cold open.
///
/// The first connection of a process to a WAL database takes the exclusive "DMS" lock
/// of its `-shm` file (so no other process is attached) and truncates the file to 3
/// bytes: the index is not durable (never synced), so after a crash of the machine
/// it may not match the WAL on disk, and the zeroed header reads as uninitialised,
/// making SQLite rebuild the index from the WAL (opening `-shm`, reading every frame
/// of the WAL, ~25 lock calls).
///
/// * An index this process has reset before is kept as it is. Since that reset it has
///   only been changed by SQLite, under its locking protocol, by this or another
///   process; the machine has not crashed since (this process would not be running),
///   so the index in the page cache matches the WAL exactly as it does for a process
///   that attaches while another is attached. A deleted `-shm` takes its inode with it:
///   SQLite creates the next one empty. (Files written into the data directory by other
///   means while the server runs are not supported: restores are done stopped.)
///   Idle users' `-shm` files are deleted (SQLite removes them when the last
///   connection closes with a checkpoint), and the file system may give a deleted
///   file's inode to a new `-shm` later: that file is new, so whatever it holds was
///   written by SQLite under its locking protocol since it was created (empty), and
///   keeping it is as sound as keeping the file the inode was remembered for.
/// * Otherwise, for a file of exactly one region or a new, empty one (an idle user's
///   file has none: see `userdbs`), zeros are written over the whole region instead of
///   truncating: the contents SQLite then reads are the same (all zero
///   where it looks), the file keeps its blocks, and SQLite finds it large enough; on
///   ext4 the truncate-and-regrow (freeing and reallocating the blocks, each a
///   journalled change) was about a quarter of a cold open.
///
/// Any other case, or a failed write, falls through to the real `ftruncate`.
unsafe extern "C" fn reset_aware_ftruncate(fd: c_int, len: libc::off_t) -> c_int {
    if len != SHM_RESET_LEN {
        // SAFETY: the system call SQLite asked for, with its arguments.
        return unsafe { libc::ftruncate(fd, len) };
    }
    let Some(st) = fstat(fd) else {
        // SAFETY: as above.
        return unsafe { libc::ftruncate(fd, len) };
    };
    let file = (st.st_dev, st.st_ino);
    if remembered(|reset_here| reset_here.contains(&file)) {
        SHM_KEPT.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    static ZEROS: [u8; SHM_REGION] = [0; SHM_REGION];
    // A new (empty) index is given its one region at once too: SQLite would grow it
    // with eight one-byte writes, one per page.
    let rc = if (st.st_size == SHM_REGION as libc::off_t || st.st_size == 0)
        // SAFETY: ZEROS is SHM_REGION bytes long; `fd` is SQLite's open descriptor.
        && unsafe { libc::pwrite(fd, ZEROS.as_ptr().cast::<c_void>(), SHM_REGION, 0) }
            == SHM_REGION as isize
    {
        // Counted only when an existing index was reset (a new one had nothing in it).
        if st.st_size != 0 {
            SHM_ZEROED.fetch_add(1, Ordering::Relaxed);
        }
        0
    } else {
        // SAFETY: as above.
        unsafe { libc::ftruncate(fd, len) }
    };
    if rc == 0 {
        remembered(|reset_here| {
            if reset_here.len() < SHM_REMEMBERED_MAX {
                reset_here.insert(file);
            }
        });
    }
    rc
}

/// Runs `f` on the set of `-shm` files reset by this process (empty if its lock was
/// poisoned: then every cold open resets, as SQLite would).
fn remembered<T: Default>(f: impl FnOnce(&mut HashSet<(u64, u64)>) -> T) -> T {
    match SHM_RESET_HERE.lock() {
        Ok(mut set) => f(set.get_or_insert_with(HashSet::new)),
        Err(_) => T::default(),
    }
}

unsafe extern "C" fn x_malloc(n: c_int) -> *mut c_void {
    // SAFETY: mi_malloc accepts any size; SQLite never asks for a negative one.
    unsafe { libmimalloc_sys::mi_malloc(n.max(0) as usize) }
}
unsafe extern "C" fn x_free(p: *mut c_void) {
    // SAFETY: `p` came from x_malloc / x_realloc (or is null).
    unsafe { libmimalloc_sys::mi_free(p) }
}
unsafe extern "C" fn x_realloc(p: *mut c_void, n: c_int) -> *mut c_void {
    // SAFETY: as above.
    unsafe { libmimalloc_sys::mi_realloc(p, n.max(0) as usize) }
}
unsafe extern "C" fn x_size(p: *mut c_void) -> c_int {
    // SAFETY: `p` came from x_malloc / x_realloc.
    unsafe { libmimalloc_sys::mi_usable_size(p) as c_int }
}
unsafe extern "C" fn x_roundup(n: c_int) -> c_int {
    // SAFETY: pure function of its argument.
    unsafe { libmimalloc_sys::mi_good_size(n.max(0) as usize) as c_int }
}
unsafe extern "C" fn x_init(_: *mut c_void) -> c_int {
    ffi::SQLITE_OK
}
unsafe extern "C" fn x_shutdown(_: *mut c_void) {}
