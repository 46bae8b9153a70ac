//! Conntrack events (NEW, DESTROY) as an async stream on tokio.
//!
//! Events are multicast by the kernel to every listening socket of the namespace and are
//! lossy: when the socket's receive buffer is full the kernel drops them and reports ENOBUFS
//! once. The stream turns that into an explicit [`Event::Lost`] item and carries on, so the
//! consumer knows to resynchronise with a dump.
//!
//! A message that cannot be parsed is skipped and counted ([`EventStream::stats`],
//! [`EventStream::last_malformed`]), never returned as an error: one bad message must not end
//! a consumer's subscription. `Err` items are left for failures of the socket itself.
//!
//! **Filtering in the kernel.** Each event is built and multicast by itself, one netlink
//! message per packet (`ctnetlink_conntrack_event` in `nf_conntrack_netlink.c`); the kernel
//! offers no event filter of its own. [`events_with`] can subscribe to NEW only (no DESTROY,
//! which doubles the volume) and attach a classic BPF socket filter by family and layer-4
//! protocol, so that, say, TCP events are dropped before they are queued on the socket: they
//! cost neither receive buffer (no loss caused by traffic the consumer ignores) nor wake-ups.
//! The same criteria are applied again in user space, so the items never depend on the filter
//! working.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::Stream;
use netlink_sys::Socket;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::bpf::Criteria;
use crate::error::Error;
use crate::model::{Family, Flow};
use crate::parse::{NlMsgs, Reply, classify, parse_flow};
use crate::socket::{self, Netns};
use crate::wire::*;

/// Receive buffer of one event datagram (one event is well under 1 KiB; several may share one).
const RECV_BUF: usize = 64 * 1024;
/// Datagrams received per system call (one event each).
const EVENT_BATCH: usize = 64;
/// Room per datagram: a conntrack event message is well under a page.
const EVENT_SLOT: usize = 4096;

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

/// What [`events_with`] subscribes to and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventOptions {
    /// Which event kinds (multicast groups) to join.
    pub kinds: EventKinds,
    /// Only events of entries with one of these layer-4 protocols (original tuple), filtered
    /// in the kernel by a socket filter; `None`: all protocols.
    pub protocols: Option<Vec<u8>>,
    /// Only events of these address families, filtered in the kernel likewise; `None`: both.
    pub families: Option<Vec<Family>>,
    /// Socket receive buffer in bytes (forced past `net.core.rmem_max` when the process has
    /// `CAP_NET_ADMIN`).
    pub receive_buffer: usize,
}

impl Default for EventOptions {
    /// NEW and DESTROY, every protocol and family, a [`DEFAULT_EVENT_BUFFER`]: what
    /// [`events`] subscribes to.
    fn default() -> Self {
        Self {
            kinds: EventKinds::ALL,
            protocols: None,
            families: None,
            receive_buffer: DEFAULT_EVENT_BUFFER,
        }
    }
}

impl EventOptions {
    /// NEW events of the given protocols only, e.g. `EventOptions::new_only(&[proto::UDP])`.
    pub fn new_only(protocols: &[u8]) -> Self {
        Self {
            kinds: EventKinds::NEW,
            protocols: Some(protocols.to_vec()),
            ..Self::default()
        }
    }
}

/// The namespace's `net.netfilter.nf_conntrack_events` setting (read inside `netns` when
/// given): 0 means the kernel sends no conntrack events at all, 1 that it always does, 2 (the
/// default since Linux 6.x) that it does once a listener has subscribed.
pub fn events_sysctl(netns: Option<&Path>) -> std::io::Result<u8> {
    fn read() -> std::io::Result<u8> {
        let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")?;
        text.trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
    match netns {
        Some(path) => crate::netns::in_netns(path, read)?,
        None => read(),
    }
}

/// Counters of an [`EventStream`] since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Datagrams received from the kernel.
    pub datagrams: u64,
    /// `New` and `Destroy` items handed out.
    pub events: u64,
    /// Messages that could not be parsed and were skipped (a datagram whose framing is broken
    /// counts once: the rest of it cannot be read).
    pub malformed: u64,
    /// Events the kernel's socket filter let through but the same criteria in user space
    /// dropped (0 when the kernel filter works).
    pub filtered: u64,
    /// `Lost` items handed out.
    pub lost: u64,
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
    events_with(
        netns,
        &EventOptions {
            kinds,
            receive_buffer,
            ..EventOptions::default()
        },
    )
}

/// Subscribes to conntrack events of the current namespace (`None`) or of the namespace file
/// `netns`, as `options` say; with protocols or families given, a socket filter drops the
/// other events in the kernel (see the module documentation).
///
/// Must be called within a tokio runtime (the socket registers with its reactor).
pub fn events_with(netns: Option<&Path>, options: &EventOptions) -> Result<EventStream, Error> {
    let EventOptions {
        kinds,
        ref protocols,
        ref families,
        receive_buffer,
    } = *options;
    if !kinds.new && !kinds.destroy {
        return Err(Error::Invalid("no event kind selected"));
    }
    if protocols.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::Invalid("empty protocol list: no event could pass"));
    }
    if families.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::Invalid("empty family list: no event could pass"));
    }
    let criteria = Criteria {
        families: families.clone(),
        protocols: protocols.clone(),
    };
    let socket = socket::open(netns.map_or(Netns::Current, Netns::Path))?;
    if criteria.is_set() {
        // Before joining the groups, so that no unfiltered event is queued meanwhile.
        crate::bpf::attach(socket.as_raw_fd(), &criteria.program())
            .map_err(|e| Error::io("attach the event socket filter", e))?;
    }
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
        pending: Pending::new(criteria),
        batch: socket::DatagramBatch::new(EVENT_BATCH, EVENT_SLOT),
    })
}

/// An endless stream of conntrack events; see [`events`].
///
/// Items are `Err` only for a failing socket; the stream goes on after one. Unparseable
/// messages are skipped and counted in [`EventStream::stats`].
#[derive(Debug)]
pub struct EventStream {
    fd: AsyncFd<Socket>,
    pending: Pending,
    /// Datagrams received together, handed to `pending` one at a time.
    batch: socket::DatagramBatch,
}

impl EventStream {
    /// What the stream has received, handed out, skipped and lost so far.
    pub fn stats(&self) -> EventStats {
        self.pending.stats
    }

    /// Why the most recent unparseable message was skipped, if one was.
    pub fn last_malformed(&self) -> Option<&Error> {
        self.pending.last_malformed.as_ref()
    }
}

/// The last datagram received and what is left of it: the parsing side of a stream, apart
/// from the socket so that it can be fed bytes directly.
#[derive(Debug)]
struct Pending {
    buf: Vec<u8>,
    /// How much of `buf` has been handed out.
    offset: usize,
    /// Applied again in user space (see [`Criteria`]).
    criteria: Criteria,
    stats: EventStats,
    last_malformed: Option<Error>,
}

impl Pending {
    fn new(criteria: Criteria) -> Self {
        Self {
            buf: Vec::with_capacity(RECV_BUF),
            offset: 0,
            criteria,
            stats: EventStats::default(),
            last_malformed: None,
        }
    }

    /// Takes a freshly received datagram (already in `buf`).
    fn received(&mut self) {
        self.offset = 0;
        self.stats.datagrams += 1;
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.offset = 0;
    }

    fn malformed(&mut self, err: Error) {
        self.stats.malformed += 1;
        self.last_malformed = Some(err);
    }

    /// The next event from the datagram already received, if any; skips (and counts) what
    /// cannot be parsed and what the criteria exclude.
    fn next_event(&mut self) -> Option<Event> {
        while self.offset < self.buf.len() {
            let rest = &self.buf[self.offset..];
            let Some(msg) = NlMsgs::new(rest).next() else {
                self.offset = self.buf.len();
                break;
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(err) => {
                    // The framing is broken: nothing after this point can be found.
                    self.offset = self.buf.len();
                    self.malformed(err);
                    continue;
                }
            };
            let msg_len = align4(NLMSG_HDR_LEN + msg.payload.len()).min(rest.len());
            self.offset += msg_len;
            let parsed = classify(&msg).and_then(|reply| match reply {
                Reply::Conntrack { msg, payload, .. } => {
                    parse_flow(payload).map(|flow| Some((msg == IPCTNL_MSG_CT_DELETE, flow)))
                }
                _ => Ok(None),
            });
            match parsed {
                Ok(Some((destroyed, flow))) => {
                    if !self.criteria.matches(&flow) {
                        self.stats.filtered += 1;
                        continue;
                    }
                    self.stats.events += 1;
                    return Some(if destroyed {
                        Event::Destroy(flow)
                    } else {
                        Event::New(flow)
                    });
                }
                Ok(None) => {}
                Err(err) => self.malformed(err),
            }
        }
        None
    }
}

impl Stream for EventStream {
    type Item = Result<Event, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.next_event() {
                return Poll::Ready(Some(Ok(event)));
            }
            match this.batch.next_datagram() {
                Some(Ok(datagram)) => {
                    this.pending.buf.clear();
                    this.pending.buf.extend_from_slice(datagram);
                    this.pending.received();
                    continue;
                }
                Some(Err(slot)) => {
                    this.pending.received();
                    this.pending.malformed(Error::io(
                        "receive events",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("event datagram longer than {slot} bytes, truncated"),
                        ),
                    ));
                    continue;
                }
                None => {}
            }
            let mut guard = match ready!(this.fd.poll_read_ready(cx)) {
                Ok(guard) => guard,
                Err(err) => return Poll::Ready(Some(Err(Error::io("wait for events", err)))),
            };
            let batch = &mut this.batch;
            match guard.try_io(|fd| batch.recv(fd.get_ref())) {
                Ok(Ok(_received)) => {}
                Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    this.pending.clear();
                    this.pending.stats.lost += 1;
                    return Poll::Ready(Some(Ok(Event::Lost)));
                }
                Ok(Err(err)) => {
                    this.pending.clear();
                    return Poll::Ready(Some(Err(Error::io("receive events", err))));
                }
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::MsgWriter;
    use crate::model::{NewFlow, Tuple, proto};

    fn flow(i: u8, protonum: u8, v6: bool) -> NewFlow {
        let (a, b) = if v6 {
            (
                format!("fd00::{i}").parse().unwrap(),
                "fd00::ffff".parse().unwrap(),
            )
        } else {
            (
                format!("10.0.0.{i}").parse().unwrap(),
                "10.96.0.1".parse().unwrap(),
            )
        };
        NewFlow::symmetric(Tuple::new(a, b, protonum, 1000 + u16::from(i), 53), 30)
    }

    /// A CT_NEW message as the kernel's NEW event carries it.
    fn message(flow: &NewFlow) -> Vec<u8> {
        let mut writer = MsgWriter::with_capacity(256);
        writer.create(flow, 0, 0).unwrap();
        writer.as_bytes().to_vec()
    }

    /// A ctnetlink message whose payload is too short for `nfgenmsg`.
    fn unparseable() -> Vec<u8> {
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDR_LEN + 2) as u32).to_ne_bytes());
        msg.extend_from_slice(&ct_msg_type(IPCTNL_MSG_CT_NEW).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[0xff, 0xff, 0, 0]); // padding to 4 bytes
        msg
    }

    fn feed(pending: &mut Pending, datagram: &[u8]) -> Vec<Event> {
        pending.buf.clear();
        pending.buf.extend_from_slice(datagram);
        pending.received();
        std::iter::from_fn(|| pending.next_event()).collect()
    }

    fn origs(events: &[Event]) -> Vec<Tuple> {
        events
            .iter()
            .map(|e| match e {
                Event::New(f) | Event::Destroy(f) => f.orig,
                Event::Lost => panic!("no loss here"),
            })
            .collect()
    }

    #[test]
    fn an_unparseable_message_is_skipped_and_counted_and_the_next_one_is_delivered() {
        let (a, b) = (flow(1, proto::UDP, false), flow(2, proto::TCP, true));
        let datagram = [message(&a), unparseable(), message(&b)].concat();
        let mut pending = Pending::new(Criteria::default());
        let events = feed(&mut pending, &datagram);
        assert_eq!(origs(&events), [a.orig, b.orig]);
        assert_eq!(pending.stats.malformed, 1);
        assert_eq!(pending.stats.events, 2);
        assert!(matches!(
            pending.last_malformed,
            Some(Error::Malformed { .. })
        ));
        // The next datagram is read as usual.
        let events = feed(&mut pending, &message(&a));
        assert_eq!(origs(&events), [a.orig]);
        assert_eq!(pending.stats.malformed, 1);
    }

    #[test]
    fn a_datagram_with_broken_framing_counts_once_and_the_stream_goes_on() {
        let a = flow(1, proto::UDP, false);
        let mut datagram = [message(&a), message(&a)].concat();
        // The second message claims more bytes than the datagram has.
        let second = message(&a).len();
        let at = datagram.len() - second;
        datagram[at..at + 4].copy_from_slice(&(second as u32 + 64).to_ne_bytes());
        let mut pending = Pending::new(Criteria::default());
        assert_eq!(origs(&feed(&mut pending, &datagram)), [a.orig]);
        assert_eq!(pending.stats.malformed, 1);
        // Garbage too short for a header.
        assert!(feed(&mut pending, &[1, 2, 3]).is_empty());
        assert_eq!(pending.stats.malformed, 2);
        assert_eq!(origs(&feed(&mut pending, &message(&a))), [a.orig]);
    }

    #[test]
    fn the_criteria_are_applied_again_in_user_space() {
        let flows = [
            flow(1, proto::UDP, false),
            flow(2, proto::TCP, false),
            flow(3, proto::UDP, true),
        ];
        let datagram: Vec<u8> = flows.iter().flat_map(message).collect();
        let mut pending = Pending::new(Criteria {
            families: Some(vec![Family::V4]),
            protocols: Some(vec![proto::UDP]),
        });
        assert_eq!(origs(&feed(&mut pending, &datagram)), [flows[0].orig]);
        assert_eq!(pending.stats.filtered, 2);
    }
}
