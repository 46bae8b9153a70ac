//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// What can go wrong talking to ctnetlink.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// The kernel refused for lack of privilege.
    #[error(
        "{op}: permission denied: CAP_NET_ADMIN is needed (in the target network namespace's user namespace)"
    )]
    PermissionDenied {
        /// What was being done.
        op: &'static str,
    },
    /// The network namespace could not be opened or entered.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The underlying failure.
        #[source]
        source: io::Error,
    },
    /// The kernel answered a request with an error.
    #[error("{op}: kernel error {errno}: {}", io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// What was being done.
        op: &'static str,
        /// The positive errno value.
        errno: i32,
    },
    /// A message from the kernel did not have the expected shape.
    #[error("malformed netlink message: {what} (at byte {offset})")]
    Malformed {
        /// What was wrong.
        what: &'static str,
        /// Byte offset within the received datagram or message.
        offset: usize,
    },
    /// The caller asked for something that cannot be encoded.
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    /// The kernel did not answer within the handle's receive timeout
    /// ([`Conntrack::set_receive_timeout`](crate::Conntrack::set_receive_timeout)). The
    /// exchange was abandoned; the handle replaces its socket before its next request, so it
    /// stays usable.
    #[error(
        "{op}: no answer from the kernel within {after:?} (the socket is re-opened before the next request)"
    )]
    Timeout {
        /// What was being done.
        op: &'static str,
        /// The receive timeout that expired.
        after: Duration,
    },
}

impl Error {
    /// The error for a negative errno the kernel returned for `op`.
    pub(crate) fn from_kernel(op: &'static str, errno: i32) -> Self {
        match errno {
            libc::EPERM | libc::EACCES => Error::PermissionDenied { op },
            errno => Error::Kernel { op, errno },
        }
    }

    /// The error for a failed system call.
    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => Error::PermissionDenied { op },
            _ => Error::Io { op, source },
        }
    }

    /// The errno, when the kernel or a system call reported one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { .. } => Some(libc::EPERM),
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } | Error::Netns { source, .. } => source.raw_os_error(),
            Error::Timeout { .. } => Some(libc::ETIMEDOUT),
            Error::Malformed { .. } | Error::Invalid(_) => None,
        }
    }
}
