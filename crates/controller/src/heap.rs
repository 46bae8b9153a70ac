//! Returning freed heap memory to the system.
//!
//! glibc's allocator keeps freed memory in its arenas; after a list of 10,000 objects has been
//! parsed, indexed and dropped, the process would otherwise keep the list's peak as its resident
//! size for good. `malloc_trim` releases it. Other C libraries (musl) return memory on their own.
//!
//! `malloc_trim` walks every arena and returns pages to the kernel page by page, under the
//! arenas' locks: on a large heap that is long enough to stall a tokio worker. [`trim`]
//! therefore only asks a thread of its own to do it, and returns at once.

use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, TrySendError};

/// Releases freed heap memory back to the system soon, on a thread of its own, where the
/// allocator supports it. Never blocks: requests made while one is pending are merged into it.
pub fn trim() {
    static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();
    let trimmer = TRIMMER.get_or_init(|| {
        // One pending request is enough: a trim releases everything freed before it ran.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(move || {
                while rx.recv().is_ok() {
                    trim_now();
                }
            });
        match spawned {
            Ok(_) => Some(tx),
            Err(e) => {
                // Trimming only lowers the resident size; the agent works without it.
                tracing::warn!(error = %e, "cannot start the heap trimming thread; freed memory stays with the allocator");
                None
            }
        }
    });
    if let Some(tx) = trimmer {
        match tx.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::debug!("the heap trimming thread is gone");
            }
        }
    }
}

/// Releases freed heap memory back to the system now, on the calling thread (which must be
/// allowed to block), where the allocator supports it.
pub fn trim_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists and takes its locks.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Many requests in a row neither block nor pile up, and the trimming thread keeps up.
    #[test]
    fn requests_return_at_once_and_are_merged() {
        let started = Instant::now();
        for _ in 0..10_000 {
            trim();
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        trim_now();
    }
}
