//! Running code inside another network namespace without moving the caller.
//!
//! Everything conntrack is per network namespace, and a socket stays in the namespace it was
//! created in. So the one safe way to reach another namespace is to create the socket (or read
//! the `/proc` file, or list the addresses) on a short-lived thread that `setns(2)`es into it:
//! the thread ends with the work, and no other code of the process ever runs in the foreign
//! namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

/// Runs `f` on a short-lived thread inside the network namespace of `fd` and returns its
/// result. Entering the namespace can fail (`Err`); a panic in `f` propagates to the caller.
pub fn in_netns_fd<T: Send>(fd: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: setns only reads the descriptor, which the borrow keeps open; it changes
            // the namespace of this short-lived thread only.
            if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`in_netns_fd`] for a namespace file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = File::open(path)?;
    in_netns_fd(file.as_fd(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_file_is_an_error() {
        assert!(in_netns(Path::new("/run/netns/ctnetlink-no-such-namespace"), || ()).is_err());
    }

    #[test]
    fn the_current_namespace_runs_the_closure_and_returns_its_value() {
        // Entering our own namespace needs CAP_SYS_ADMIN; without it setns fails cleanly.
        match in_netns(Path::new("/proc/self/ns/net"), || 7) {
            Ok(v) => assert_eq!(v, 7),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EPERM)),
        }
    }
}
