//! Netfilter netlink sockets created inside a chosen network namespace.
//!
//! A socket belongs to the namespace it was created in, for its whole life. To create one in
//! another namespace without moving the caller's thread, a short-lived thread enters the
//! namespace (`setns`), creates the socket and exits; the socket stays bound to that namespace.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::error::Error;

/// Where a socket is created.
#[derive(Clone, Copy, Debug)]
pub enum Netns<'a> {
    /// The calling thread's namespace.
    Current,
    /// A namespace file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
    Path(&'a Path),
}

/// Creates a bound netfilter netlink socket in `netns`.
pub fn open(netns: Netns<'_>) -> Result<Socket, Error> {
    match netns {
        Netns::Current => new_socket(),
        Netns::Path(path) => {
            let file = File::open(path).map_err(|source| Error::Netns {
                path: path.to_path_buf(),
                source,
            })?;
            open_in(file.as_fd(), path.to_path_buf())
        }
    }
}

/// The namespace a socket was created in, kept open so that a replacement socket can be
/// created in the same namespace later (after an abandoned exchange), even if the namespace's
/// name has gone or the caller's thread has moved since.
#[derive(Debug)]
pub struct Home {
    /// The namespace file; `None` when it could not be opened (`/proc` missing): then the
    /// calling thread's namespace is used.
    fd: Option<OwnedFd>,
    /// What to call the namespace in errors.
    label: PathBuf,
}

impl Home {
    /// Creates a socket in `netns` and remembers the namespace.
    pub fn open(netns: Netns<'_>) -> Result<(Socket, Home), Error> {
        let home = match netns {
            Netns::Current => Home {
                // The thread's own namespace, pinned now: re-opening later must not depend on
                // which thread asks.
                fd: File::open("/proc/thread-self/ns/net")
                    .ok()
                    .map(OwnedFd::from),
                label: PathBuf::from("(current)"),
            },
            Netns::Path(path) => {
                let file = File::open(path).map_err(|source| Error::Netns {
                    path: path.to_path_buf(),
                    source,
                })?;
                Home {
                    fd: Some(file.into()),
                    label: path.to_path_buf(),
                }
            }
        };
        let socket = home.socket()?;
        Ok((socket, home))
    }

    /// A new socket in this namespace.
    pub fn socket(&self) -> Result<Socket, Error> {
        match &self.fd {
            // Entering a namespace needs CAP_SYS_ADMIN even when it is the thread's own, so
            // the current namespace is used directly when it is the one wanted.
            Some(fd) if !same_netns(fd) => open_in(fd.as_fd(), self.label.clone()),
            _ => new_socket(),
        }
    }
}

/// Whether the calling thread is in the namespace of `fd`.
fn same_netns(fd: &OwnedFd) -> bool {
    let Ok(here) = std::fs::metadata("/proc/thread-self/ns/net") else {
        return false;
    };
    let Ok(there) = fd.try_clone().and_then(|dup| File::from(dup).metadata()) else {
        return false;
    };
    (here.dev(), here.ino()) == (there.dev(), there.ino())
}

fn open_in(fd: BorrowedFd<'_>, label: PathBuf) -> Result<Socket, Error> {
    crate::netns::in_netns_fd(fd, new_socket).map_err(|source| Error::Netns {
        path: label,
        source,
    })?
}

/// Runs `f` on a short-lived thread inside a brand-new, private network namespace.
///
/// The namespace disappears once the thread has exited and every socket made in it is closed.
#[cfg(any(test, feature = "testing"))]
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare affects only the calling thread's network namespace.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(Error::Netns {
                        path: PathBuf::from("(private)"),
                        source: io::Error::last_os_error(),
                    });
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(Error::Io {
                    op: "private namespace",
                    source: io::Error::other("namespace thread panicked"),
                })
            })
    })
}

fn new_socket() -> Result<Socket, Error> {
    let mut socket =
        Socket::new(NETLINK_NETFILTER).map_err(|e| Error::io("create netlink socket", e))?;
    socket
        .bind_auto()
        .map_err(|e| Error::io("bind netlink socket", e))?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(|e| Error::io("connect netlink socket", e))?;
    Ok(socket)
}

/// Sets a buffer size, forcing past the sysctl limits when privileged (`*BUFFORCE`).
/// Returns the size the kernel really uses (it doubles the request for bookkeeping).
pub fn set_buffer(socket: &Socket, force: libc::c_int, plain: libc::c_int, bytes: usize) -> usize {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |opt| {
        // SAFETY: a valid socket, option pointer and length.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(force) != 0 {
        // Not privileged enough to force: take what the sysctl limit allows.
        set(plain);
    }
    get_int(socket, plain).map_or(0, |v| v.max(0) as usize)
}

fn get_int(socket: &Socket, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket, and value/len describe a c_int.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Sets (`Some`) or clears (`None`) the socket's receive timeout (`SO_RCVTIMEO`). A blocking
/// receive then fails with `WouldBlock` after that long without data. A duration too short for
/// the kernel's microsecond resolution becomes one microsecond (zero would mean "never").
pub fn set_recv_timeout(socket: &Socket, timeout: Option<Duration>) -> io::Result<()> {
    let timeout = timeout.map_or(Duration::ZERO, |t| t.max(Duration::from_micros(1)));
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros() as i32),
    };
    // SAFETY: a valid socket, and the pointer and length describe a timeval.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The error for a failed receive: a `WouldBlock` on a blocking socket with a receive
/// timeout means the kernel did not answer in time.
pub fn recv_error(op: &'static str, err: io::Error, timeout: Option<Duration>) -> Error {
    match timeout {
        Some(after) if err.kind() == io::ErrorKind::WouldBlock => Error::Timeout { op, after },
        _ => Error::io(op, err),
    }
}

/// Receives one datagram into `buf` (whose capacity is the limit), retrying on EINTR.
///
/// A datagram larger than the buffer is an error rather than silently truncated.
pub fn recv_datagram(
    socket: &Socket,
    buf: &mut Vec<u8>,
    flags: libc::c_int,
) -> Result<usize, io::Error> {
    loop {
        buf.clear();
        match socket.recv(buf, flags | libc::MSG_TRUNC) {
            Ok(len) if len > buf.capacity() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "netlink datagram of {len} bytes truncated to {}",
                        buf.capacity()
                    ),
                ));
            }
            Ok(len) => return Ok(len),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Sends one buffer of messages, retrying on EINTR.
pub fn send_all(socket: &Socket, bytes: &[u8], op: &'static str) -> Result<(), Error> {
    loop {
        match socket.send(bytes, 0) {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Error::io(op, err)),
        }
    }
}

/// The most datagrams one [`DatagramBatch::recv`] takes.
pub const MAX_BATCH: usize = 64;

/// Several datagrams received with one `recvmmsg(2)`: event sockets get one datagram per
/// event, and on a busy node one system call per event would cost more than the event itself.
#[derive(Debug)]
pub struct DatagramBatch {
    /// `slots` datagram buffers of `slot` bytes each, back to back.
    data: Vec<u8>,
    slot: usize,
    /// Length of each received datagram; `None` when it was truncated.
    lens: Vec<Option<usize>>,
    /// The next datagram to hand out.
    next: usize,
}

impl DatagramBatch {
    /// Room for `slots` (at most [`MAX_BATCH`]) datagrams of at most `slot` bytes.
    pub fn new(slots: usize, slot: usize) -> Self {
        let slots = slots.clamp(1, MAX_BATCH);
        DatagramBatch {
            data: vec![0; slots * slot],
            slot,
            lens: Vec::with_capacity(slots),
            next: 0,
        }
    }

    /// The next received datagram not handed out yet: `Some(Ok(bytes))`, `Some(Err(size))`
    /// for one longer than a slot (truncated), or `None` when the batch is used up.
    pub fn next_datagram(&mut self) -> Option<Result<&[u8], usize>> {
        let len = *self.lens.get(self.next)?;
        let start = self.next * self.slot;
        self.next += 1;
        Some(match len {
            Some(len) => Ok(&self.data[start..start + len]),
            None => Err(self.slot),
        })
    }

    /// Receives up to a batch of datagrams without waiting (the socket is non-blocking):
    /// the number received, or the error of the first receive (`WouldBlock`, `ENOBUFS`…).
    pub fn recv(&mut self, socket: &Socket) -> Result<usize, io::Error> {
        self.lens.clear();
        self.next = 0;
        // The headers live on the stack: this runs once per batch of events, on the event
        // path's hot loop.
        // SAFETY: iovec and mmsghdr are plain data; all-zero is a valid value of each (null
        // buffers, no name, no control data).
        let mut iovecs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
        let slots = (self.data.len() / self.slot).min(MAX_BATCH);
        for ((chunk, iov), header) in self
            .data
            .chunks_exact_mut(self.slot)
            .zip(iovecs.iter_mut())
            .zip(headers.iter_mut())
        {
            iov.iov_base = chunk.as_mut_ptr().cast();
            iov.iov_len = chunk.len();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        let vlen = u32::try_from(slots).unwrap_or(u32::MAX);
        let received = loop {
            // SAFETY: `headers` holds `vlen` entries, each pointing at one iovec of `iovecs`,
            // which points into `self.data`; all three outlive the call, and the kernel writes
            // at most `iov_len` bytes per slot.
            let n = unsafe {
                libc::recvmmsg(
                    socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                break usize::try_from(n).unwrap_or(0);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        };
        for header in &headers[..received] {
            let truncated = header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = header.msg_len as usize;
            self.lens
                .push((!truncated && len <= self.slot).then_some(len));
        }
        Ok(received)
    }
}
