//! The API server's use of glibc's allocator.
//!
//! A list of 10 000 pods decodes, re-encodes and frees a few hundred megabytes in a burst,
//! on whichever runtime worker serves it. glibc gives each thread that contends its own arena
//! (up to eight per core) and keeps what is freed there for reuse, so after a few such
//! requests the server's resident memory is the sum of every arena's high-water mark, not
//! what it holds. [`tune`] caps the arenas at two, and [`spawn_trimmer`] hands free memory
//! back to the kernel (`malloc_trim`) when the free heap has grown by more than
//! [`TRIM_ABOVE`] since the last trim (trimmed pages still count as free), checked every
//! [`TRIM_EVERY`]. Other allocators (jemalloc, mimalloc) would do the same with background
//! threads of their own; this keeps the binary's allocator, which the node agent's memory
//! figures were measured with.

use std::time::Duration;

/// Growth of the free heap since the last trim that triggers the next.
pub const TRIM_ABOVE: usize = 16 << 20;
/// How often the free heap is checked.
pub const TRIM_EVERY: Duration = Duration::from_secs(1);

/// Caps glibc's arenas. Call before the runtime starts its threads.
pub fn tune() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Bytes the allocator holds free (glibc), or `None` elsewhere.
pub fn free_heap() -> Option<usize> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's statistics.
        let info = unsafe { libc::mallinfo2() };
        Some(info.fordblks)
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// Returns free heap to the kernel; `true` when some was released.
pub fn trim() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes no pointers; it walks the arenas under their locks.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    false
}

/// Checks every [`TRIM_EVERY`] and trims when the free heap grew by [`TRIM_ABOVE`], on a
/// blocking thread (a trim of a large heap takes milliseconds). Ends with the runtime.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut baseline = 0usize;
        loop {
            tick.tick().await;
            let Some(free) = free_heap() else { return };
            if free > baseline.saturating_add(TRIM_ABOVE) {
                let _ = tokio::task::spawn_blocking(trim).await;
                baseline = free_heap().unwrap_or(free);
            } else {
                baseline = baseline.min(free);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_held_until_a_trim_returns_it() {
        if free_heap().is_none() {
            eprintln!("SKIP freed_memory_is_held_until_a_trim_returns_it: not glibc");
            return;
        }
        // Blocks below the mmap threshold, every other one freed: the holes stay in the heap
        // (only the top of a heap is given back on free), whole pages inside each.
        let mut blocks: Vec<Vec<u8>> = (0..4000).map(|i| vec![(i % 251) as u8; 16 << 10]).collect();
        let kept: Vec<Vec<u8>> = blocks.drain(..).step_by(2).collect();
        assert!(free_heap().unwrap_or(0) >= 20 << 20, "the freed blocks are held");
        assert!(trim(), "a trim releases some of them");
        drop(kept);
    }
}
