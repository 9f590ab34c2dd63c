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
