//! Conntrack over netlink: dump, delete, create and events, in any network namespace.
//!
//! ```no_run
//! use ctnetlink::{Capabilities, Conntrack, DumpFilter, Family, proto};
//!
//! # fn main() -> Result<(), ctnetlink::Error> {
//! let caps = Capabilities::from_running_kernel();
//! let mut ct = Conntrack::open(Some("/run/netns/blue".as_ref()), caps)?;
//! let mut stale = Vec::new();
//! ct.dump(&DumpFilter::family_proto(Family::V4, proto::UDP), |flow| {
//!     if flow.reply.src == "10.0.0.9".parse::<std::net::IpAddr>().unwrap() {
//!         stale.push(flow.key());
//!     }
//! })?;
//! let report = ct.delete(stale)?;
//! println!("deleted {}, already gone {}", report.deleted, report.already_gone);
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! **Hand-parsed hot path.** A node can hold a million entries, and the kernel already needs
//! about two seconds to hand them over. The dump parses each netlink message in place, from the
//! receive buffer into a [`Flow`] on the stack (`Copy`, no heap memory), and lends it to the
//! caller's closure. Nothing is allocated per entry and memory is one 64 KiB buffer whatever
//! the table size, so a dump costs little more than the kernel's own time.
//! `netlink-packet-netfilter` would allocate a `Vec` of attributes per entry, so it is not used;
//! `netlink-sys` provides the sockets. The parser checks every length and returns
//! [`Error::Malformed`] instead of panicking (a proptest feeds it arbitrary and mutated bytes).
//! It walks the top-level attributes once, and reads a tuple in the exact layout the kernel
//! writes for port-carrying protocols at fixed offsets after comparing its attribute headers
//! with that layout; any other shape (ICMP, tuple zones, reordered or malformed attributes)
//! goes through the generic, attribute-by-attribute path (a proptest checks the two agree).
//!
//! **What a dump costs.** The kernel builds one datagram of at most 32 KiB per `recvmsg`,
//! inside that call, after copying out the previous one (`netlink_dump` sizes it from the
//! largest earlier read, capped at 32 KiB): a bigger user buffer or receive buffer does not
//! make datagrams larger, and a single thread would alternate between the kernel's work and its
//! own parsing. A dump therefore receives on a helper thread while the calling thread parses (a
//! ring of 8 × 64 KiB buffers, so memory stays bounded), and on two cores costs about the
//! kernel's walk and message building alone (the floor). Every dump walks the kernel's whole
//! table, whatever it asks for, so a dump of both families is one request rather than two.
//! `examples/ct-bench.rs` measures a dump against that floor and `examples/ct-family-bench.rs`
//! one dump of both families against two; the figures are in the README.
//!
//! **Blocking handle, async events.** Dump, delete and create are request/response exchanges
//! that keep one core busy in the kernel; a blocking API on a dedicated socket is the simplest
//! correct shape (call it from `spawn_blocking` or a worker thread), and the borrowed-flow
//! callback would not survive an `.await` anyway. Events arrive unprompted and must be read
//! promptly or lost, which is what an async stream on tokio is for ([`events`]); loss becomes
//! an explicit [`Event::Lost`] so the consumer can resynchronise with a dump.
//!
//! **Namespaces.** Sockets are bound to the network namespace they were created in, and
//! `setns` changes the namespace of a thread. [`Conntrack::open`] and [`events`] therefore
//! create the socket on a short-lived thread that enters the namespace and exits; the
//! caller's threads never move.
//!
//! **Kernel filters, carefully.** Dumps send the criteria the kernel can apply (family, L4
//! protocol via `CTA_FILTER`, mark, status, zone), which saves copying unwanted entries out of
//! the kernel. But a kernel silently ignores attributes it does not know, so every criterion
//! is *also* applied in user space: the answer never depends on the kernel. Which criteria are
//! sent is the [`Capabilities`] the caller opens the handle with — usually
//! [`Capabilities::from_running_kernel`], from the kernel version; opening a handle has no
//! other effect (the live probe, which creates entries in a private namespace, is a separate
//! call in the `testing` feature). A dump of both families is one `AF_UNSPEC` request, so one
//! walk of the kernel's table instead of two; the kernel refuses `CTA_FILTER` without a family,
//! so such a dump applies the protocol in user space only, while mark, status and zone are
//! still filtered in the kernel. Addresses are never sent as filters: the kernel compares IPv6
//! addresses in `CTA_FILTER` inverted (a match on X returns everything but X), and filtered
//! flushes would be disastrous on kernels that ignore the filter. Deletion is always by exact
//! key.
//!
//! **Batched deletes.** Thousands of `CT_DELETE` messages go out in one `sendmsg` without
//! per-message ACKs; the kernel answers only failures (trimmed by `NETLINK_CAP_ACK`), each
//! mapped back to its key by sequence number, and the last message of a batch asks for an ACK
//! to mark the batch's end. `ENOENT` means "already gone". `CT_NEW` is batched the same way.
//! The kernel handles the whole batch inside `sendmsg`, so there is no pipeline to overlap:
//! the replies are queued by the time it returns. Its cost per entry is the hash lookup
//! (chains get longer when the table holds more entries than `nf_conntrack_buckets`; each
//! entry sits in its bucket twice, original and reply) and the nfnetlink subsystem mutex that
//! `CT_NEW`/`CT_DELETE` take for every message, shared by all namespaces on the host (so
//! concurrent conntrack writers, and `nf_ct_iterate_cleanup` walks when any namespace is
//! removed, slow it down). Deletes are therefore faster with one bucket per allowed entry
//! (`nf_conntrack_buckets` raised with `nf_conntrack_max`, as operators of large tables
//! should); beyond a couple of thousand messages the batch size makes no difference, and a
//! batch never sleeps in the kernel. `examples/ct-bench.rs` measures delete and fill rates.
//!
//! **Abandoned exchanges and timeouts.** Every receive has a timeout
//! ([`DEFAULT_RECEIVE_TIMEOUT`], [`Conntrack::set_receive_timeout`]) and fails with
//! [`Error::Timeout`] rather than hanging. A dump or batch that did not run to its end (timeout,
//! unreadable reply, a panic in the dump's callback) leaves its socket with a dump in progress
//! or replies queued; the handle then creates a new socket in the same namespace (whose file it
//! keeps open) before its next request, instead of failing every later dump with `EBUSY`.
//!
//! **Events that never end a subscription.** An unparseable event is skipped and counted
//! ([`EventStream::stats`]); [`events_with`] can attach a classic BPF socket filter so that
//! events of other protocols or families are dropped in the kernel.
//!
//! **Zones.** [`Flow::zone`] is the entry's zone id whichever direction it applies to
//! ([`Flow::zone_dir`]; the kernel reports a one-direction zone inside that tuple), so a
//! consumer can leave every entry outside zone 0 alone with [`Flow::in_default_zone`].
//!
//! **Consistency.** A netlink dump of a changing table can repeat or miss entries; callers
//! must tolerate duplicates, and entries missed by one pass are seen by the next.

#![warn(missing_docs)]

mod bpf;
mod capabilities;
mod conntrack;
mod encode;
mod error;
mod events;
mod model;
pub mod netns;
mod parse;
mod socket;
mod stats;
mod wire;

#[cfg(feature = "testing")]
pub mod testing;

pub use capabilities::Capabilities;
pub use conntrack::{
    Conntrack, CreateReport, DEFAULT_RECEIVE_TIMEOUT, DeleteReport, DumpStats, FilterPlacement,
};
pub use error::Error;
pub use events::{
    DEFAULT_EVENT_BUFFER, Event, EventKinds, EventOptions, EventStats, EventStream, events,
    events_sysctl, events_with, events_with_buffer,
};
pub use model::{DumpFilter, Family, Flow, FlowKey, NewFlow, Status, Tuple, ZoneDir, proto};
pub use stats::{
    CpuStats, ProcStat, StatCounters, Stats, StatsReader, StatsSource, TableCount, parse_cpu_stats,
    parse_proc_stat, parse_sysctl_number, parse_table_count, read_proc_in,
};
