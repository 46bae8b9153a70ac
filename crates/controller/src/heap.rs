//! Returning freed heap memory to the system.
//!
//! glibc's allocator keeps freed memory in its arenas; after a list of 10,000 objects has been
//! parsed, indexed and dropped, the process would otherwise keep the list's peak as its resident
//! size for good. `malloc_trim` releases it. Other C libraries (musl) return memory on their own.

/// Releases freed heap memory back to the system, where the allocator supports it.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
