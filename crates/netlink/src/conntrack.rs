//! The blocking [`Conntrack`] handle: streaming dump, batched delete and batched create.

use std::io;
use std::path::Path;
use std::time::Duration;

use netlink_sys::Socket;

use crate::capabilities::Capabilities;
use crate::encode::{KernelFilter, MsgWriter};
use crate::error::Error;
use crate::model::{DumpFilter, Flow, FlowKey, NewFlow};
use crate::parse::{NlMsgs, Reply, classify, parse_flow};
use crate::socket::{self, Home, Netns};
use crate::wire::*;

/// Receive buffer for one datagram. Dump datagrams are at most 32 KiB (the kernel caps them);
/// twice that leaves room for anything else.
const RECV_BUF: usize = 64 * 1024;
/// Requests per sendmsg in a batch.
const BATCH_MESSAGES: usize = 2048;
/// Upper bound on one batch's bytes (also bounded by the socket's send buffer).
const BATCH_BYTES: usize = 512 * 1024;
/// Asked-for send buffer: room for a full batch.
const SEND_BUFFER: usize = 2 * 1024 * 1024;
/// Asked-for receive buffer: room for an error reply to every message of a batch.
const RECV_BUFFER: usize = 8 * 1024 * 1024;
/// How long a [`Conntrack`] waits for the kernel's next answer unless told otherwise
/// ([`Conntrack::set_receive_timeout`]). The kernel answers within milliseconds even on a
/// table of millions of entries (it builds each dump datagram inside the receive call), so
/// this only fires when something is wrong, and then a stuck handle becomes an error instead
/// of a hang.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a dump saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DumpStats {
    /// Conntrack messages received from the kernel.
    pub messages: u64,
    /// Flows that passed the filter and were handed to the callback.
    pub matched: u64,
    /// Messages that could not be parsed and were skipped.
    pub malformed: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Whether the kernel applied every requested criterion itself (so `messages` is already
    /// close to `matched`); the user-space filter is applied either way.
    pub filtered_in_kernel: bool,
}

/// The outcome of [`Conntrack::delete`].
#[derive(Debug, Default)]
pub struct DeleteReport {
    /// Entries the kernel deleted.
    pub deleted: u64,
    /// Entries that were not there (`ENOENT`): deleted before, expired, or re-created with a
    /// different id.
    pub already_gone: u64,
    /// Entries whose outcome is unknown because the kernel's error replies overflowed the
    /// receive buffer (not expected with the buffer this crate sets).
    pub unconfirmed: u64,
    /// Entries the kernel refused, with why.
    pub failed: Vec<(FlowKey, Error)>,
}

/// The outcome of [`Conntrack::create`].
#[derive(Debug, Default)]
pub struct CreateReport {
    /// Entries created.
    pub created: u64,
    /// Entries that already existed (`EEXIST`), left unchanged.
    pub already_existed: u64,
    /// Entries whose outcome is unknown because error replies were lost.
    pub unconfirmed: u64,
    /// Entries the kernel refused, by index into the input, with why.
    pub failed: Vec<(usize, Error)>,
}

/// A blocking handle on the conntrack table of one network namespace.
///
/// Not shared between threads: open one handle per thread that needs one (each owns a socket).
///
/// A handle survives abandoned exchanges: when a dump or batch did not run to its end (a
/// receive timeout, an unreadable reply, a panic in the dump's callback), the socket may still
/// hold the rest of the kernel's answer — and a socket with a dump in progress refuses every
/// further dump with `EBUSY`. The handle then replaces its socket with a new one in the same
/// network namespace (kept open since [`Conntrack::open`]) before its next
/// request.
pub struct Conntrack {
    socket: Socket,
    home: Home,
    /// Set while an exchange is under way, cleared when it ran to its end: still set when the
    /// next one starts means the last was abandoned and the socket must be replaced.
    in_exchange: bool,
    reopens: u64,
    /// Dump requests sent over the handle's life.
    dump_requests: u64,
    recv_timeout: Option<Duration>,
    recv_buf: Vec<u8>,
    writer: MsgWriter,
    seq: u32,
    batch_bytes: usize,
    caps: Capabilities,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("seq", &self.seq)
            .field("batch_bytes", &self.batch_bytes)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// Where a dump's criteria are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FilterPlacement {
    /// In the kernel where [`Capabilities`] says it works, and always again in user space.
    #[default]
    Auto,
    /// Only in user space: the kernel sends every entry of the family.
    UserSpace,
}

/// Per-message outcome of a batch, as the kernel reported it.
enum Outcome {
    Done,
    Errno(i32),
    Unknown,
}

impl Conntrack {
    /// A handle on the conntrack table of the network namespace `netns` (a namespace file such
    /// as `/run/netns/NAME` or `/proc/PID/ns/net`; `None`: the calling thread's namespace),
    /// whose dumps send the kernel the filters `caps` says it applies.
    ///
    /// Opening creates one socket and nothing else: no probe, no namespace, no entries. The
    /// calling thread's namespace is never changed (the socket is created on a short-lived
    /// thread that enters `netns`). `caps` only decides where a dump's criteria are applied —
    /// every criterion is applied again in user space — so it changes speed, never results:
    /// [`Capabilities::from_running_kernel`] is the usual choice, [`Capabilities::NONE`]
    /// filters in user space only, and the `testing` feature's
    /// `testing::probe_capabilities` measures what the kernel really does.
    pub fn open(netns: Option<&Path>, caps: Capabilities) -> Result<Self, Error> {
        let (socket, home) = match netns {
            Some(path) => Home::open(Netns::Path(path))?,
            None => Home::open(Netns::Current)?,
        };
        let recv_timeout = Some(DEFAULT_RECEIVE_TIMEOUT);
        let batch_bytes = configure(&socket, recv_timeout)?;
        Ok(Self {
            socket,
            home,
            in_exchange: false,
            reopens: 0,
            dump_requests: 0,
            recv_timeout,
            recv_buf: Vec::with_capacity(RECV_BUF),
            writer: MsgWriter::with_capacity(batch_bytes + 1024),
            seq: initial_seq(),
            batch_bytes,
            caps,
        })
    }

    /// Sets how long to wait for each answer of the kernel (`None`: forever). An exchange that
    /// times out fails with [`Error::Timeout`]; the handle stays usable. The default is
    /// [`DEFAULT_RECEIVE_TIMEOUT`].
    pub fn set_receive_timeout(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        socket::set_recv_timeout(&self.socket, timeout)
            .map_err(|e| Error::io("set SO_RCVTIMEO", e))?;
        self.recv_timeout = timeout;
        Ok(())
    }

    /// The receive timeout in force (see [`Conntrack::set_receive_timeout`]).
    pub fn receive_timeout(&self) -> Option<Duration> {
        self.recv_timeout
    }

    /// How many times this handle replaced its socket after an abandoned exchange.
    pub fn reopens(&self) -> u64 {
        self.reopens
    }

    /// Starts an exchange with the kernel: replaces the socket first when the previous exchange
    /// was abandoned, since that socket may still hold (or be producing) its answer.
    fn begin_exchange(&mut self) -> Result<(), Error> {
        if self.in_exchange {
            let socket = self.home.socket()?;
            let batch_bytes = configure(&socket, self.recv_timeout)?;
            // Dropping the old socket ends whatever dump it still had in progress.
            self.socket = socket;
            self.batch_bytes = batch_bytes;
            self.reopens += 1;
        }
        self.in_exchange = true;
        Ok(())
    }

    /// Marks the exchange as complete: every answer it asked for was read.
    fn end_exchange(&mut self) {
        self.in_exchange = false;
    }

    /// The kernel filter support this handle was opened with (see [`Conntrack::open`]).
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// How many dump requests this handle has sent: one per [`Conntrack::dump`] or
    /// [`Conntrack::dump_with`] call, whatever the filter (a dump of both families is one
    /// request, so one walk of the kernel's table).
    pub fn dump_requests(&self) -> u64 {
        self.dump_requests
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let base = self.seq;
        self.seq = self.seq.wrapping_add(count.max(1));
        base
    }

    /// Streams the entries that match `filter` to `f`, one borrowed [`Flow`] at a time.
    ///
    /// Memory stays bounded (one 64 KiB buffer) whatever the table size. The kernel applies
    /// the criteria it supports (see [`Capabilities`]); the same criteria are then checked in
    /// user space, so every flow handed to `f` matches `filter` whatever the kernel did. A
    /// filter without a family is one `AF_UNSPEC` dump returning both families (see
    /// [`DumpFilter::family`]). As for any netlink dump, an entry may be seen twice or missed
    /// if the table changes meanwhile.
    pub fn dump<F: FnMut(&Flow)>(&mut self, filter: &DumpFilter, f: F) -> Result<DumpStats, Error> {
        self.dump_with(filter, FilterPlacement::Auto, f)
    }

    /// [`Conntrack::dump`], choosing where the criteria are applied. Both placements return
    /// the same flows; [`FilterPlacement::UserSpace`] exists to check exactly that, and to
    /// avoid kernel filters altogether.
    pub fn dump_with<F: FnMut(&Flow)>(
        &mut self,
        filter: &DumpFilter,
        placement: FilterPlacement,
        mut f: F,
    ) -> Result<DumpStats, Error> {
        let kernel = match placement {
            FilterPlacement::Auto => self.caps.kernel_filter(filter),
            FilterPlacement::UserSpace => KernelFilter::default(),
        };
        self.begin_exchange()?;
        let seq = self.next_seq(1);
        self.writer.clear();
        self.writer.dump_request(filter, &kernel, seq);
        socket::send_all(&self.socket, self.writer.as_bytes(), "dump conntrack")?;
        self.dump_requests += 1;
        let mut stats = DumpStats {
            filtered_in_kernel: kernel.covers(filter),
            ..DumpStats::default()
        };
        let (outcome, drained) = pipelined_dump(&self.socket, seq, self.recv_timeout, |datagram| {
            stats.datagrams += 1;
            stats.bytes += datagram.len() as u64;
            dispatch_dump(datagram, seq, filter, &mut stats, &mut f)
        });
        if drained {
            self.end_exchange();
        }
        // Otherwise the receiving side stopped before the dump's end (a timeout, a receive
        // error or an unreadable datagram): the next request gets a fresh socket. Reading the
        // rest instead could take as long as a whole dump, or forever on a socket that fails.
        match outcome {
            Ok(()) => Ok(stats),
            Err(DumpEnd::Kernel(err)) | Err(DumpEnd::Broken(err)) => Err(err),
        }
    }

    /// Deletes entries by exact key, in batches of many `CT_DELETE` per sendmsg.
    ///
    /// Only failures are answered by the kernel (no per-message ACK); `ENOENT` counts as
    /// already gone. A key with `id: Some(..)` leaves alone an entry re-created since.
    pub fn delete<I: IntoIterator<Item = FlowKey>>(
        &mut self,
        keys: I,
    ) -> Result<DeleteReport, Error> {
        self.begin_exchange()?;
        let mut report = DeleteReport::default();
        let mut batch: Vec<FlowKey> = Vec::with_capacity(BATCH_MESSAGES);
        let mut keys = keys.into_iter().peekable();
        while keys.peek().is_some() {
            batch.clear();
            self.writer.clear();
            let base = self.seq;
            let mut last_start = None;
            while batch.len() < BATCH_MESSAGES && self.writer.len() < self.batch_bytes {
                let Some(key) = keys.next() else { break };
                let seq = base.wrapping_add(batch.len() as u32);
                let start = self.writer.len();
                match self.writer.delete(&key, seq, 0) {
                    Ok(()) => {
                        last_start = Some(start);
                        batch.push(key);
                    }
                    Err(err) => report.failed.push((key, err)),
                }
            }
            let Some(last_start) = last_start else {
                continue;
            };
            self.next_seq(batch.len() as u32);
            self.writer.add_flags(last_start, NLM_F_ACK);
            let outcomes = self.run_batch(base, batch.len(), "delete conntrack entries")?;
            for (key, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Done => report.deleted += 1,
                    Outcome::Errno(libc::ENOENT) => report.already_gone += 1,
                    Outcome::Errno(errno) => report
                        .failed
                        .push((*key, Error::from_kernel("delete conntrack entry", errno))),
                    Outcome::Unknown => report.unconfirmed += 1,
                }
            }
        }
        self.end_exchange();
        Ok(report)
    }

    /// Creates entries with `CT_NEW`, batched like [`Conntrack::delete`].
    /// An entry whose original tuple already exists is left unchanged and counted.
    pub fn create(&mut self, flows: &[NewFlow]) -> Result<CreateReport, Error> {
        self.begin_exchange()?;
        let mut report = CreateReport::default();
        let mut index = 0;
        let mut batch: Vec<usize> = Vec::with_capacity(BATCH_MESSAGES);
        while index < flows.len() {
            batch.clear();
            self.writer.clear();
            let base = self.seq;
            let mut last_start = None;
            while index < flows.len()
                && batch.len() < BATCH_MESSAGES
                && self.writer.len() < self.batch_bytes
            {
                let seq = base.wrapping_add(batch.len() as u32);
                let start = self.writer.len();
                match self.writer.create(&flows[index], seq, 0) {
                    Ok(()) => {
                        last_start = Some(start);
                        batch.push(index);
                    }
                    Err(err) => report.failed.push((index, err)),
                }
                index += 1;
            }
            let Some(last_start) = last_start else {
                continue;
            };
            self.next_seq(batch.len() as u32);
            self.writer.add_flags(last_start, NLM_F_ACK);
            let outcomes = self.run_batch(base, batch.len(), "create conntrack entries")?;
            for (&at, outcome) in batch.iter().zip(outcomes) {
                match outcome {
                    Outcome::Done => report.created += 1,
                    Outcome::Errno(libc::EEXIST) => report.already_existed += 1,
                    Outcome::Errno(errno) => report
                        .failed
                        .push((at, Error::from_kernel("create conntrack entry", errno))),
                    Outcome::Unknown => report.unconfirmed += 1,
                }
            }
        }
        self.end_exchange();
        Ok(report)
    }

    /// Sends the encoded batch (sequence numbers `base..base+count`, the last one asking for an
    /// ACK) and collects the kernel's answer for each message.
    fn run_batch(
        &mut self,
        base: u32,
        count: usize,
        op: &'static str,
    ) -> Result<Vec<Outcome>, Error> {
        socket::send_all(&self.socket, self.writer.as_bytes(), op)?;
        let mut outcomes: Vec<Outcome> = (0..count).map(|_| Outcome::Done).collect();
        let last = count - 1;
        // The kernel handles the whole batch inside sendmsg, so every reply is queued by now;
        // the ACK of the last message marks the end. If replies overflowed the receive buffer
        // (ENOBUFS) that ACK may be lost too: then read what is left without blocking.
        let mut lost = false;
        loop {
            let flags = if lost { libc::MSG_DONTWAIT } else { 0 };
            let len = match socket::recv_datagram(&self.socket, &mut self.recv_buf, flags) {
                Ok(len) => len,
                Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Err(err) if lost && err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(socket::recv_error(op, err, self.recv_timeout)),
            };
            let mut finished = false;
            for msg in NlMsgs::new(&self.recv_buf[..len]) {
                let msg = msg?;
                let index = msg.seq.wrapping_sub(base) as usize;
                if index >= count {
                    continue; // a stray reply to an earlier request
                }
                if let Reply::Error(errno) = classify(&msg)? {
                    if errno != 0 {
                        outcomes[index] = Outcome::Errno(errno);
                    }
                    if index == last {
                        finished = true;
                    }
                }
            }
            if finished {
                return Ok(outcomes);
            }
        }
        // Replies were lost: messages without an error reply may or may not have failed.
        for outcome in &mut outcomes {
            if matches!(outcome, Outcome::Done) {
                *outcome = Outcome::Unknown;
            }
        }
        Ok(outcomes)
    }
}

/// Why a dump stopped early.
enum DumpEnd {
    /// The kernel reported an error; the dump is over.
    Kernel(Error),
    /// The stream is unreadable; the rest must be drained.
    Broken(Error),
}

/// Handles one dump datagram; `Ok(true)` at the end of the dump.
/// Datagrams in flight between the receiving thread and the parsing one: enough to keep the
/// kernel busy while a datagram is parsed, few enough to bound memory (8 × 64 KiB).
const PIPELINE_DEPTH: usize = 8;

/// Receives a dump's datagrams on a helper thread and hands each to `on_datagram` on this one,
/// until `on_datagram` says the dump ended.
///
/// The kernel builds each dump datagram inside the `recvmsg` that asks for it, so a single
/// thread alternates between the kernel's work and its own parsing. With the receive on a
/// second thread the kernel builds datagram N+1 while datagram N is parsed, which brings a
/// dump's wall time to the kernel's alone on a machine with two cores. Buffers circulate
/// between the threads, so memory stays bounded whatever the table size. The receiving thread
/// stops by itself at the dump's end (or a receive error); the parsing side, even after an
/// error of its own, keeps draining until then, so the socket is never left mid-dump by a
/// thread that gave up.
///
/// A panic in `on_datagram` unwinds through here: the channels are owned by the scope's
/// closure, so the unwinding drops them, which stops the receiving thread wherever it waits
/// (the scope joins it before the panic goes on). The caller then sees the dump as abandoned.
fn pipelined_dump(
    socket: &Socket,
    seq: u32,
    timeout: Option<Duration>,
    mut on_datagram: impl FnMut(&[u8]) -> Result<bool, DumpEnd>,
) -> (Result<(), DumpEnd>, bool) {
    use std::sync::mpsc;
    type Received = (Vec<u8>, std::io::Result<usize>);
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = mpsc::sync_channel::<Received>(PIPELINE_DEPTH);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..PIPELINE_DEPTH {
            let _ = free_tx.send(Vec::with_capacity(RECV_BUF));
        }
        // Returns whether it received the dump's end.
        let receiver = scope.spawn(move || {
            while let Ok(mut buf) = free_rx.recv() {
                let received = socket::recv_datagram(socket, &mut buf, 0);
                let state = match &received {
                    Ok(len) => dump_state(&buf[..*len], seq),
                    Err(_) => DumpState::Unreadable,
                };
                if full_tx.send((buf, received)).is_err() {
                    return state == DumpState::Ended;
                }
                if state != DumpState::Going {
                    return state == DumpState::Ended;
                }
            }
            false
        });
        let mut outcome: Option<Result<(), DumpEnd>> = None;
        for (buf, received) in full_rx {
            if outcome.is_none() {
                outcome = match received {
                    Ok(len) => match on_datagram(&buf[..len]) {
                        Ok(false) => None,
                        Ok(true) => Some(Ok(())),
                        Err(end) => Some(Err(end)),
                    },
                    Err(err) => Some(Err(DumpEnd::Broken(socket::recv_error(
                        "receive conntrack dump",
                        err,
                        timeout,
                    )))),
                };
            }
            // The receiver may be waiting for a buffer; after the end it is gone.
            let _ = free_tx.send(buf);
        }
        let drained = receiver.join().unwrap_or(false);
        let outcome = outcome.unwrap_or(Err(DumpEnd::Broken(Error::Invalid(
            "conntrack dump ended without NLMSG_DONE",
        ))));
        (outcome, drained)
    })
}

/// Where a dump stands after a datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DumpState {
    /// More datagrams follow.
    Going,
    /// The datagram holds the dump's `NLMSG_DONE` or `NLMSG_ERROR`.
    Ended,
    /// The datagram cannot be read on (the parsing side reports why).
    Unreadable,
}

fn dump_state(datagram: &[u8], seq: u32) -> DumpState {
    for msg in NlMsgs::new(datagram) {
        match msg {
            Ok(msg) if msg.seq == seq && matches!(msg.ty, NLMSG_DONE | NLMSG_ERROR) => {
                return DumpState::Ended;
            }
            Ok(_) => {}
            Err(_) => return DumpState::Unreadable,
        }
    }
    DumpState::Going
}

fn dispatch_dump<F: FnMut(&Flow)>(
    datagram: &[u8],
    seq: u32,
    filter: &DumpFilter,
    stats: &mut DumpStats,
    f: &mut F,
) -> Result<bool, DumpEnd> {
    for msg in NlMsgs::new(datagram) {
        let msg = msg.map_err(DumpEnd::Broken)?;
        if msg.seq != seq {
            continue; // a stray reply to an earlier request
        }
        match classify(&msg).map_err(DumpEnd::Broken)? {
            Reply::Conntrack { payload, .. } => {
                stats.messages += 1;
                match parse_flow(payload) {
                    Ok(flow) if filter.matches(&flow) => {
                        stats.matched += 1;
                        f(&flow);
                    }
                    Ok(_) => {}
                    Err(_) => stats.malformed += 1,
                }
            }
            Reply::Error(0) | Reply::Done(0) => return Ok(true),
            Reply::Error(errno) | Reply::Done(errno) => {
                return Err(DumpEnd::Kernel(Error::from_kernel("dump conntrack", errno)));
            }
            Reply::Other => {}
        }
    }
    Ok(false)
}

/// Sets a new socket up for a handle; returns the batch size its send buffer allows.
fn configure(socket: &Socket, recv_timeout: Option<Duration>) -> Result<usize, Error> {
    // Error replies then carry only the header of the failed request, not its copy.
    socket
        .set_cap_ack(true)
        .map_err(|e| Error::io("set NETLINK_CAP_ACK", e))?;
    let sndbuf = socket::set_buffer(socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER);
    socket::set_buffer(socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECV_BUFFER);
    socket::set_recv_timeout(socket, recv_timeout).map_err(|e| Error::io("set SO_RCVTIMEO", e))?;
    // The kernel refuses a sendmsg above sndbuf - 32 bytes (EMSGSIZE); keep well below.
    Ok(BATCH_BYTES.min(sndbuf.saturating_sub(4096)).max(4096))
}

/// A starting sequence number that differs between handles and processes, so that replies
/// to another socket's requests are never mistaken for ours.
fn initial_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ (std::process::id() << 16) ^ NEXT.fetch_add(0x1000_0000, Ordering::Relaxed)
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::model::{NewFlow, Tuple, ZoneDir, proto};

    #[test]
    fn a_dump_without_an_answer_times_out_and_the_next_request_gets_a_new_socket() {
        if !crate::testing::root_or_skip(
            "a_dump_without_an_answer_times_out_and_the_next_request_gets_a_new_socket",
        ) {
            return;
        }
        socket::in_private_netns(|| {
            let mut ct = Conntrack::open(None, Capabilities::NONE)?;
            let flows: Vec<NewFlow> = (1..=3u8)
                .map(|i| {
                    let orig = Tuple::new(
                        format!("10.0.0.{i}").parse().unwrap(),
                        "10.96.0.1".parse().unwrap(),
                        proto::UDP,
                        1000,
                        53,
                    );
                    NewFlow::symmetric(orig, 60)
                })
                .collect();
            assert_eq!(ct.create(&flows)?.created, 3);
            assert_eq!(ct.receive_timeout(), Some(DEFAULT_RECEIVE_TIMEOUT));
            let timeout = Duration::from_millis(200);
            ct.set_receive_timeout(Some(timeout))?;
            // A stalled kernel, as the receiving side sees it: it waits for the end of a dump
            // under a sequence number the kernel never answers, so after the real dump's last
            // datagram nothing more comes.
            ct.begin_exchange()?;
            let seq = ct.next_seq(1);
            ct.writer.clear();
            ct.writer
                .dump_request(&DumpFilter::all(), &KernelFilter::default(), seq);
            socket::send_all(&ct.socket, ct.writer.as_bytes(), "dump conntrack")?;
            let started = Instant::now();
            let (outcome, drained) =
                pipelined_dump(&ct.socket, seq.wrapping_add(1), ct.recv_timeout, |_| {
                    Ok(false)
                });
            assert!(!drained);
            match outcome {
                Err(DumpEnd::Broken(Error::Timeout { after, .. })) => assert_eq!(after, timeout),
                Err(DumpEnd::Broken(err) | DumpEnd::Kernel(err)) => panic!("{err}"),
                Ok(()) => panic!("the dump cannot have ended"),
            }
            assert!(started.elapsed() < Duration::from_secs(5));
            // The abandoned exchange costs one new socket, and the handle works on.
            let mut seen = 0;
            ct.dump(&DumpFilter::all(), |_| seen += 1)?;
            assert_eq!((seen, ct.reopens()), (3, 1));
            assert_eq!(
                ct.receive_timeout(),
                Some(timeout),
                "kept across the re-open"
            );
            Ok(())
        })
        .unwrap();
    }

    /// Why a dump of both families filters the protocol in user space: the kernel refuses a
    /// `CTA_FILTER` without a family (`ctnetlink_parse_tuple_filter`: EOPNOTSUPP). Should a
    /// kernel start accepting it, this fails, and the protocol could move to the kernel.
    #[test]
    fn the_kernel_refuses_a_protocol_filter_in_a_dump_of_both_families() {
        if !crate::testing::root_or_skip(
            "the_kernel_refuses_a_protocol_filter_in_a_dump_of_both_families",
        ) {
            return;
        }
        socket::in_private_netns(|| {
            let mut ct = Conntrack::open(None, Capabilities::NONE)?;
            let both_udp = DumpFilter::all_families_proto(proto::UDP);
            let forced = KernelFilter {
                proto: true,
                ..KernelFilter::default()
            };
            ct.begin_exchange()?;
            let seq = ct.next_seq(1);
            ct.writer.clear();
            ct.writer.dump_request(&both_udp, &forced, seq);
            socket::send_all(&ct.socket, ct.writer.as_bytes(), "dump conntrack")?;
            let mut stats = DumpStats::default();
            let (outcome, _) = pipelined_dump(&ct.socket, seq, ct.recv_timeout, |datagram| {
                dispatch_dump(datagram, seq, &both_udp, &mut stats, &mut |_| {})
            });
            match outcome {
                Err(DumpEnd::Kernel(err)) => assert_eq!(err.errno(), Some(libc::EOPNOTSUPP)),
                Err(DumpEnd::Broken(err)) => panic!("{err}"),
                Ok(()) => panic!("the kernel accepted CTA_FILTER with AF_UNSPEC"),
            }
            // And the encoder never sends it: a handle's dump of both families works.
            assert!(
                !Capabilities::from_release("6.18")
                    .kernel_filter(&both_udp)
                    .proto
            );
            ct.dump(&both_udp, |_| {})?;
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn a_zone_of_one_direction_is_reported_and_its_entry_deleted_by_key() {
        if !crate::testing::root_or_skip(
            "a_zone_of_one_direction_is_reported_and_its_entry_deleted_by_key",
        ) {
            return;
        }
        socket::in_private_netns(|| {
            let mut ct = Conntrack::open(None, Capabilities::NONE)?;
            for (i, reply_only) in [(1u8, false), (2, true)] {
                let orig = Tuple::new(
                    format!("10.0.0.{i}").parse().unwrap(),
                    "10.96.0.1".parse().unwrap(),
                    proto::UDP,
                    1000,
                    53,
                );
                let flow = NewFlow {
                    zone: 9,
                    ..NewFlow::symmetric(orig, 60)
                };
                let seq = ct.next_seq(1);
                ct.writer.clear();
                ct.writer.create_one_way_zoned(&flow, reply_only, seq)?;
                let outcomes = ct.run_batch(seq, 1, "create")?;
                assert!(matches!(outcomes[0], Outcome::Done));
            }
            let mut flows = Vec::new();
            ct.dump(&DumpFilter::all(), |f| flows.push(*f))?;
            flows.sort_by_key(|f| f.orig.src);
            let seen: Vec<_> = flows.iter().map(|f| (f.zone, f.zone_dir)).collect();
            assert_eq!(
                seen,
                [(9, ZoneDir::Original), (9, ZoneDir::Reply)],
                "{flows:#?}"
            );
            assert!(flows.iter().all(|f| !f.in_default_zone()));
            let report = ct.delete(flows.iter().map(Flow::key))?;
            assert_eq!((report.deleted, report.already_gone), (2, 0), "{report:?}");
            Ok(())
        })
        .unwrap();
    }
}
