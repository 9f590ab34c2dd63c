//! Giving freed memory back to the OS after a burst of queued data.
//!
//! Data queued for slow clients (up to the agent-wide budget, 256 MiB) is
//! held in packet-sized heap chunks. glibc's malloc keeps freed chunks in its
//! arenas unless they sit at the top of the heap, so after stalled clients
//! were cut the agent's RSS stayed near its peak although nothing was held
//! (measured: 18 MiB idle, 279 MiB peak, 159 MiB after; with `malloc_trim`
//! 20 MiB). Elsewhere (macOS's allocator returns large free regions itself)
//! this is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Keep freed packet buffers in malloc's heap instead of trimming them after
/// every read of the SSH socket (call before the first session; repeated
/// calls do nothing).
///
/// Each read of the SSH socket decodes up to 256 KiB of packets whose buffers
/// now live until the clients' writes (`tunnel::channel_sink` stages them
/// without copying) and are then freed together. glibc trims the top of a
/// heap as soon as more than 128 KiB is free there (`M_TRIM_THRESHOLD`), so
/// the next read faulted the same pages in again: 11% of the agent's samples
/// in a profile of a download (`exc_page_fault` under russh's packet
/// allocation, BENCHMARKS.md, issue 12). A 1 MiB threshold (four reads'
/// worth) keeps them; 16 MiB did too but left the RSS after a burst of
/// queued data at 25 MiB instead of 16. Freed memory after a burst still
/// goes back through [`release_soon`].
/// Setting the trim threshold also freezes glibc's dynamic mmap threshold,
/// so that one is set too (1 MiB: the packet and read-ahead buffers stay in
/// the heap).
pub fn keep_packet_heap() {
    static DONE: std::sync::Once = std::sync::Once::new();
    DONE.call_once(tune_malloc);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc() {
    // SAFETY: mallopt takes two integers and only changes malloc's own
    // tunables; it is safe to call at any time (glibc serialises it).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// A burst of queued data was freed: return free memory to the OS once
/// things have been quiet for a moment (at most one trim per second, off
/// the async workers: a trim walks every arena).
pub fn release_soon() {
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        SCHEDULED.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        // Cleared however this task ends (also when its runtime drops it).
        let _clear = Clear;
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(_clear);
        let _ = tokio::task::spawn_blocking(trim).await;
    });
}

struct Clear;

impl Drop for Clear {
    fn drop(&mut self) {
        SCHEDULED.store(false, Ordering::Release);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it
    // only releases free pages of malloc's own arenas (glibc >= 2.8).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
