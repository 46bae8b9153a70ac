//! Conntrack events (NEW, DESTROY) as an async stream on tokio.
//!
//! Events are multicast by the kernel to every listening socket of the namespace and are
//! lossy: when the socket's receive buffer is full the kernel drops them and reports ENOBUFS
//! once. The stream turns that into an explicit [`Event::Lost`] item and carries on, so the
//! consumer knows to resynchronise with a dump.

use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use netlink_sys::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::error::Error;
use crate::model::Flow;
use crate::parse::{NlMsgs, Reply, classify, parse_flow};
use crate::socket::{self, Netns};
use crate::wire::*;

/// Receive buffer of one event datagram (one event is well under 1 KiB; several may share one).
const RECV_BUF: usize = 64 * 1024;
/// Default socket receive buffer: about 25,000 events of backlog before loss.
pub const DEFAULT_EVENT_BUFFER: usize = 16 * 1024 * 1024;

/// Which events to subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventKinds {
    /// Entries created (`NFNLGRP_CONNTRACK_NEW`); for DNAT the reply tuple names the backend.
    pub new: bool,
    /// Entries destroyed (`NFNLGRP_CONNTRACK_DESTROY`).
    pub destroy: bool,
}

impl EventKinds {
    /// NEW only.
    pub const NEW: EventKinds = EventKinds {
        new: true,
        destroy: false,
    };
    /// DESTROY only.
    pub const DESTROY: EventKinds = EventKinds {
        new: false,
        destroy: true,
    };
    /// NEW and DESTROY.
    pub const ALL: EventKinds = EventKinds {
        new: true,
        destroy: true,
    };
}

/// One item of an [`EventStream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// An entry was created.
    New(Flow),
    /// An entry was destroyed (deleted, expired or flushed).
    Destroy(Flow),
    /// The kernel dropped events because the reader fell behind: resynchronise with a dump.
    Lost,
}

/// Subscribes to conntrack events of the current namespace (`None`) or of the namespace file
/// `netns`, with a [`DEFAULT_EVENT_BUFFER`] receive buffer.
///
/// Must be called within a tokio runtime (the socket registers with its reactor).
pub fn events(netns: Option<&Path>, kinds: EventKinds) -> Result<EventStream, Error> {
    events_with_buffer(netns, kinds, DEFAULT_EVENT_BUFFER)
}

/// [`events`] with an explicit socket receive buffer size in bytes (forced past
/// `net.core.rmem_max` when the process has `CAP_NET_ADMIN`).
pub fn events_with_buffer(
    netns: Option<&Path>,
    kinds: EventKinds,
    receive_buffer: usize,
) -> Result<EventStream, Error> {
    if !kinds.new && !kinds.destroy {
        return Err(Error::Invalid("no event kind selected"));
    }
    let socket = socket::open(netns.map_or(Netns::Current, Netns::Path))?;
    socket::set_buffer(
        &socket,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        receive_buffer,
    );
    for (wanted, group) in [
        (kinds.new, NFNLGRP_CONNTRACK_NEW),
        (kinds.destroy, NFNLGRP_CONNTRACK_DESTROY),
    ] {
        if wanted {
            socket
                .add_membership(group)
                .map_err(|e| Error::io("join conntrack event group", e))?;
        }
    }
    socket
        .set_non_blocking(true)
        .map_err(|e| Error::io("make event socket non-blocking", e))?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Invalid(
            "events() must be called within a tokio runtime",
        ));
    }
    // SAFETY: `Socket` owns its descriptor, keeps it open until dropped and always returns the
    // same one from `as_raw_fd`; the AsyncFd owns the Socket.
    let fd = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| Error::io("register event socket with tokio", e.into()))?;
    Ok(EventStream {
        fd,
        buf: Vec::with_capacity(RECV_BUF),
        offset: 0,
    })
}

/// An endless stream of conntrack events; see [`events`].
///
/// Items are `Err` only for a message that cannot be parsed (skipped) or a failing socket;
/// the stream goes on after either.
#[derive(Debug)]
pub struct EventStream {
    fd: AsyncFd<Socket>,
    /// The last datagram received.
    buf: Vec<u8>,
    /// How much of `buf` has been handed out.
    offset: usize,
}

impl EventStream {
    /// The next event from the datagram already received, if any.
    fn next_buffered(&mut self) -> Option<Result<Event, Error>> {
        while self.offset < self.buf.len() {
            let rest = &self.buf[self.offset..];
            let Some(msg) = NlMsgs::new(rest).next() else {
                self.offset = self.buf.len();
                break;
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(err) => {
                    self.offset = self.buf.len();
                    return Some(Err(err));
                }
            };
            let msg_len = align4(NLMSG_HDR_LEN + msg.payload.len()).min(rest.len());
            self.offset += msg_len;
            let event = match classify(&msg) {
                Ok(Reply::Conntrack { msg, payload, .. }) => match parse_flow(payload) {
                    Ok(flow) if msg == IPCTNL_MSG_CT_DELETE => Event::Destroy(flow),
                    Ok(flow) => Event::New(flow),
                    Err(err) => return Some(Err(err)),
                },
                Ok(_) => continue,
                Err(err) => return Some(Err(err)),
            };
            return Some(Ok(event));
        }
        None
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.next_buffered() {
                return Poll::Ready(Some(item));
            }
            let mut guard = match ready!(this.fd.poll_read_ready(cx)) {
                Ok(guard) => guard,
                Err(err) => return Poll::Ready(Some(Err(Error::io("wait for events", err)))),
            };
            let buf = &mut this.buf;
            match guard.try_io(|fd| socket::recv_datagram(fd.get_ref(), buf, 0)) {
                Ok(Ok(_len)) => this.offset = 0,
                Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    this.buf.clear();
                    this.offset = 0;
                    return Poll::Ready(Some(Ok(Event::Lost)));
                }
                Ok(Err(err)) => {
                    this.buf.clear();
                    this.offset = 0;
                    return Poll::Ready(Some(Err(Error::io("receive events", err))));
                }
                Err(_would_block) => continue,
            }
        }
    }
}
