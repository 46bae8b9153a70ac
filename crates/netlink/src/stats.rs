//! The kernel's own conntrack statistics: table size and limit, and the per-CPU counters that
//! `conntrack -S` prints (found, invalid, insert, insert_failed, drop, early_drop, …).
//!
//! Read over ctnetlink (`IPCTNL_MSG_CT_GET_STATS_CPU`, a dump with one message per CPU, and
//! `IPCTNL_MSG_CT_GET_STATS`, one message with the entry count and limit), or, on kernels or
//! sandboxes where that fails, from `/proc/net/stat/nf_conntrack` (hex columns, one row per
//! CPU) and `/proc/sys/net/netfilter/nf_conntrack_{count,max}`. Both are per network
//! namespace, so both are read inside the target namespace: the socket is created there (like
//! [`Conntrack::open`](crate::Conntrack::open)), and the files are read by a short-lived
//! thread that enters it (through `/proc/thread-self`, since `/proc/net` follows the process's
//! main thread, not the reading one).
//!
//! Cost is O(CPUs) whatever the table size: cheap enough to read at every metrics scrape.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netlink_sys::Socket;

use crate::encode::MsgWriter;
use crate::error::Error;
use crate::parse::{Attrs, NlMsgs, Reply, classify};
use crate::socket::{self, Netns};
use crate::wire::{NFGEN_HDR_LEN, NLM_F_ACK, NLM_F_DUMP, NLMSG_HDR_LEN};

// uapi nfnetlink_conntrack.h: enum cntl_msg_types.
const IPCTNL_MSG_CT_GET_STATS_CPU: u16 = 4;
const IPCTNL_MSG_CT_GET_STATS: u16 = 5;

// enum ctattr_stats_cpu (SEARCHED, NEW, IGNORE, DELETE and DELETE_LIST are no longer sent).
const CTA_STATS_FOUND: u16 = 2;
const CTA_STATS_INVALID: u16 = 4;
const CTA_STATS_INSERT: u16 = 8;
const CTA_STATS_INSERT_FAILED: u16 = 9;
const CTA_STATS_DROP: u16 = 10;
const CTA_STATS_EARLY_DROP: u16 = 11;
const CTA_STATS_ERROR: u16 = 12;
const CTA_STATS_SEARCH_RESTART: u16 = 13;
const CTA_STATS_CLASH_RESOLVE: u16 = 14;
const CTA_STATS_CHAIN_TOOLONG: u16 = 15;

// enum ctattr_stats_global.
const CTA_STATS_GLOBAL_ENTRIES: u16 = 1;
const CTA_STATS_GLOBAL_MAX_ENTRIES: u16 = 2;

/// Receive buffer: a stats dump is about 100 bytes per CPU; the kernel fills at most one page
/// per datagram, but a big buffer costs nothing here.
const RECV_BUF: usize = 64 * 1024;
/// A stats request is answered at once; a reply that takes longer means something is wrong,
/// and a metrics scrape must not hang on it.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

const PROC_STAT: &str = "/proc/thread-self/net/stat/nf_conntrack";
const PROC_COUNT: &str = "/proc/sys/net/netfilter/nf_conntrack_count";
const PROC_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// The kernel's conntrack event counters (`struct ip_conntrack_stat`), for one CPU or summed.
///
/// Every value counts since the namespace was created. The kernel keeps them as 32-bit
/// per-CPU integers, so each CPU's value wraps at 2³²; a counter this kernel does not report
/// (`clash_resolve` before 5.10, `chain_toolong` before 5.15) reads 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatCounters {
    /// Lookups that found an existing entry.
    pub found: u64,
    /// Packets conntrack could not track (malformed, out of window, …).
    pub invalid: u64,
    /// Entries inserted into the table.
    pub insert: u64,
    /// Entries that could not be inserted: another packet of the same tuple won a race (the
    /// parallel A/AAAA DNS queries over one UDP socket), or the clash could not be resolved.
    pub insert_failed: u64,
    /// Packets dropped because a new entry could not be made (table full, no memory).
    pub drop: u64,
    /// Entries evicted early to make room in a full table.
    pub early_drop: u64,
    /// Packets conntrack refused as erroneous (`icmp_error` in `/proc`).
    pub error: u64,
    /// Lookups restarted because the hash table was resized under them.
    pub search_restart: u64,
    /// Insert races resolved by reusing the winning entry (`clashres` in `/proc`).
    pub clash_resolve: u64,
    /// Inserts refused because a hash chain was too long (`chainlength` in `/proc`).
    pub chain_toolong: u64,
}

impl StatCounters {
    /// Adds `other` field by field (for summing CPUs).
    pub fn add(&mut self, other: &StatCounters) {
        self.found += other.found;
        self.invalid += other.invalid;
        self.insert += other.insert;
        self.insert_failed += other.insert_failed;
        self.drop += other.drop;
        self.early_drop += other.early_drop;
        self.error += other.error;
        self.search_restart += other.search_restart;
        self.clash_resolve += other.clash_resolve;
        self.chain_toolong += other.chain_toolong;
    }

    /// Every counter with the name `conntrack -S` prints for it (`chaintoolong` spelt out
    /// as `chain_toolong`), in the kernel's attribute order.
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("found", self.found),
            ("invalid", self.invalid),
            ("insert", self.insert),
            ("insert_failed", self.insert_failed),
            ("drop", self.drop),
            ("early_drop", self.early_drop),
            ("error", self.error),
            ("search_restart", self.search_restart),
            ("clash_resolve", self.clash_resolve),
            ("chain_toolong", self.chain_toolong),
        ]
    }
}

/// One CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// The CPU number (from `nfgenmsg.res_id`; in the `/proc` fallback, the row's index).
    pub cpu: u16,
    /// Its counters.
    pub counters: StatCounters,
}

/// The size of the table and its limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCount {
    /// Entries in this namespace's table (`nf_conntrack_count`, `conntrack -C`).
    pub entries: u64,
    /// The most entries the table may hold (`nf_conntrack_max`, shared by every namespace).
    pub max_entries: u64,
}

impl TableCount {
    /// `entries / max_entries`, or 0 when the limit is unknown.
    pub fn fill_ratio(&self) -> f64 {
        if self.max_entries == 0 {
            0.0
        } else {
            self.entries as f64 / self.max_entries as f64
        }
    }
}

/// Where statistics were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsSource {
    /// ctnetlink (`GET_STATS_CPU` and `GET_STATS`).
    Netlink,
    /// `/proc/net/stat/nf_conntrack` and the `nf_conntrack_{count,max}` sysctls.
    Proc,
}

impl StatsSource {
    /// `netlink` or `proc`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatsSource::Netlink => "netlink",
            StatsSource::Proc => "proc",
        }
    }
}

/// Everything at once: size, limit, and the counters summed over CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Entries and limit.
    pub table: TableCount,
    /// The per-CPU counters, summed.
    pub counters: StatCounters,
    /// How many CPUs were summed.
    pub cpus: usize,
    /// Where the figures came from.
    pub source: StatsSource,
}

impl Stats {
    /// Sums per-CPU counters.
    pub fn from_parts(table: TableCount, per_cpu: &[CpuStats], source: StatsSource) -> Self {
        let mut counters = StatCounters::default();
        for cpu in per_cpu {
            counters.add(&cpu.counters);
        }
        Stats {
            table,
            counters,
            cpus: per_cpu.len(),
            source,
        }
    }
}

/// A handle that reads the statistics of one network namespace.
///
/// Separate from [`Conntrack`](crate::Conntrack) because the `/proc` fallback must know which
/// namespace to enter, which a socket alone does not say.
pub struct StatsReader {
    socket: Socket,
    netns: Option<PathBuf>,
    recv_buf: Vec<u8>,
    writer: MsgWriter,
    seq: u32,
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsReader")
            .field("netns", &self.netns)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl StatsReader {
    /// A reader for the current network namespace.
    pub fn open() -> Result<Self, Error> {
        Self::from_socket(socket::open(Netns::Current)?, None)
    }

    /// A reader for the namespace at `netns` (e.g. `/run/netns/NAME`); the calling thread's
    /// namespace is never changed.
    pub fn open_in(netns: &Path) -> Result<Self, Error> {
        Self::from_socket(socket::open(Netns::Path(netns))?, Some(netns.to_path_buf()))
    }

    /// [`StatsReader::open_in`] when `netns` is given, else [`StatsReader::open`].
    pub fn open_maybe_in(netns: Option<&Path>) -> Result<Self, Error> {
        match netns {
            Some(path) => Self::open_in(path),
            None => Self::open(),
        }
    }

    fn from_socket(socket: Socket, netns: Option<PathBuf>) -> Result<Self, Error> {
        socket::set_recv_timeout(&socket, Some(REPLY_TIMEOUT))
            .map_err(|e| Error::io("set SO_RCVTIMEO on the stats socket", e))?;
        Ok(StatsReader {
            socket,
            netns,
            recv_buf: Vec::with_capacity(RECV_BUF),
            writer: MsgWriter::with_capacity(64),
            seq: std::process::id().rotate_left(16),
        })
    }

    fn send_request(&mut self, msg: u16, flags: u16) -> Result<u32, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.writer.clear();
        let start = self.writer.begin_ct_msg(msg, flags, seq, 0);
        self.writer.end_msg(start);
        socket::send_all(
            &self.socket,
            self.writer.as_bytes(),
            "request conntrack stats",
        )?;
        Ok(seq)
    }

    /// Reads replies to `seq` until the dump's end or the ACK, handing each ctnetlink
    /// message's payload to `f`.
    fn collect_replies(
        &mut self,
        seq: u32,
        op: &'static str,
        mut f: impl FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        loop {
            let len = socket::recv_datagram(&self.socket, &mut self.recv_buf, 0)
                .map_err(|e| socket::recv_error(op, e, Some(REPLY_TIMEOUT)))?;
            for msg in NlMsgs::new(&self.recv_buf[..len]) {
                let msg = msg?;
                if msg.seq != seq {
                    continue; // a late reply to an earlier, abandoned request
                }
                match classify(&msg)? {
                    Reply::Conntrack { payload, .. } => f(payload)?,
                    Reply::Error(0) | Reply::Done(0) => return Ok(()),
                    Reply::Error(errno) | Reply::Done(errno) => {
                        return Err(Error::from_kernel(op, errno));
                    }
                    Reply::Other => {}
                }
            }
        }
    }

    /// The per-CPU counters over ctnetlink (`IPCTNL_MSG_CT_GET_STATS_CPU`), what
    /// `conntrack -S` prints.
    pub fn stats_per_cpu(&mut self) -> Result<Vec<CpuStats>, Error> {
        let seq = self.send_request(IPCTNL_MSG_CT_GET_STATS_CPU, NLM_F_DUMP)?;
        let mut cpus = Vec::new();
        self.collect_replies(seq, "read per-CPU conntrack stats", |payload| {
            cpus.push(parse_cpu_stats(payload)?);
            Ok(())
        })?;
        Ok(cpus)
    }

    /// The entry count and limit over ctnetlink (`IPCTNL_MSG_CT_GET_STATS`), what
    /// `conntrack -C` prints (and the limit).
    pub fn table_count(&mut self) -> Result<TableCount, Error> {
        let seq = self.send_request(IPCTNL_MSG_CT_GET_STATS, NLM_F_ACK)?;
        let mut count = None;
        self.collect_replies(seq, "read the conntrack table count", |payload| {
            count = Some(parse_table_count(payload)?);
            Ok(())
        })?;
        count.ok_or(Error::Malformed {
            what: "GET_STATS acknowledged without a stats message",
            offset: 0,
        })
    }

    /// Both, over ctnetlink.
    pub fn read_netlink(&mut self) -> Result<Stats, Error> {
        let table = self.table_count()?;
        let per_cpu = self.stats_per_cpu()?;
        Ok(Stats::from_parts(table, &per_cpu, StatsSource::Netlink))
    }

    /// Both, from `/proc` inside this reader's namespace.
    pub fn read_proc(&self) -> Result<Stats, Error> {
        read_proc_in(self.netns.as_deref())
    }

    /// Over ctnetlink, falling back to `/proc` when that fails (an old kernel, a netlink
    /// policy that refuses the request). When both fail, the netlink error is returned.
    pub fn read(&mut self) -> Result<Stats, Error> {
        match self.read_netlink() {
            Ok(stats) => Ok(stats),
            Err(netlink) => self.read_proc().map_err(|_| netlink),
        }
    }
}

fn be_u32(value: &[u8], what: &'static str, offset: usize) -> Result<u64, Error> {
    let bytes: [u8; 4] = value
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Malformed { what, offset })?;
    Ok(u64::from(u32::from_be_bytes(bytes)))
}

/// Parses the payload (after `nlmsghdr`) of a `GET_STATS_CPU` reply.
pub fn parse_cpu_stats(payload: &[u8]) -> Result<CpuStats, Error> {
    let header = payload.get(..NFGEN_HDR_LEN).ok_or(Error::Malformed {
        what: "truncated nfgenmsg in a stats message",
        offset: NLMSG_HDR_LEN,
    })?;
    // res_id carries the CPU number, big-endian.
    let cpu = u16::from_be_bytes([header[2], header[3]]);
    let mut counters = StatCounters::default();
    let at = NLMSG_HDR_LEN + NFGEN_HDR_LEN;
    for attr in Attrs::new(&payload[NFGEN_HDR_LEN..]) {
        let (ty, value) = attr.map_err(|e| shift(e, at))?;
        let slot = match ty {
            CTA_STATS_FOUND => &mut counters.found,
            CTA_STATS_INVALID => &mut counters.invalid,
            CTA_STATS_INSERT => &mut counters.insert,
            CTA_STATS_INSERT_FAILED => &mut counters.insert_failed,
            CTA_STATS_DROP => &mut counters.drop,
            CTA_STATS_EARLY_DROP => &mut counters.early_drop,
            CTA_STATS_ERROR => &mut counters.error,
            CTA_STATS_SEARCH_RESTART => &mut counters.search_restart,
            CTA_STATS_CLASH_RESOLVE => &mut counters.clash_resolve,
            CTA_STATS_CHAIN_TOOLONG => &mut counters.chain_toolong,
            _ => continue, // a counter newer than this code
        };
        *slot = be_u32(value, "short per-CPU stats counter", at)?;
    }
    Ok(CpuStats { cpu, counters })
}

/// Parses the payload (after `nlmsghdr`) of a `GET_STATS` reply.
pub fn parse_table_count(payload: &[u8]) -> Result<TableCount, Error> {
    let rest = payload.get(NFGEN_HDR_LEN..).ok_or(Error::Malformed {
        what: "truncated nfgenmsg in a stats message",
        offset: NLMSG_HDR_LEN,
    })?;
    let at = NLMSG_HDR_LEN + NFGEN_HDR_LEN;
    let (mut entries, mut max_entries) = (None, None);
    for attr in Attrs::new(rest) {
        let (ty, value) = attr.map_err(|e| shift(e, at))?;
        match ty {
            CTA_STATS_GLOBAL_ENTRIES => entries = Some(be_u32(value, "short entry count", at)?),
            CTA_STATS_GLOBAL_MAX_ENTRIES => {
                max_entries = Some(be_u32(value, "short entry limit", at)?)
            }
            _ => {}
        }
    }
    match (entries, max_entries) {
        (Some(entries), Some(max_entries)) => Ok(TableCount {
            entries,
            max_entries,
        }),
        _ => Err(Error::Malformed {
            what: "GET_STATS reply without entries and limit",
            offset: at,
        }),
    }
}

fn shift(err: Error, by: usize) -> Error {
    match err {
        Error::Malformed { what, offset } => Error::Malformed {
            what,
            offset: offset + by,
        },
        other => other,
    }
}

/// What `/proc/net/stat/nf_conntrack` holds: the entry count (its `entries` column) and
/// one row of counters per CPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStat {
    /// The `entries` column (the same on every row: the namespace's entry count).
    pub entries: u64,
    /// One element per row, numbered by row.
    pub per_cpu: Vec<CpuStats>,
}

/// Parses `/proc/net/stat/nf_conntrack`: a header naming the columns, then one row of
/// 8-digit hex numbers per CPU. Columns are found by name, so a kernel that adds, drops or
/// renames one (`searched` became `clashres`) still parses; unknown columns are ignored.
pub fn parse_proc_stat(text: &str) -> Result<ProcStat, Error> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or(Error::Malformed {
            what: "empty nf_conntrack stat file",
            offset: 0,
        })?
        .split_whitespace()
        .collect();
    if !header.contains(&"entries") || !header.contains(&"insert_failed") {
        return Err(Error::Malformed {
            what: "nf_conntrack stat header lacks the entries or insert_failed column",
            offset: 0,
        });
    }
    let mut out = ProcStat::default();
    let mut offset = text.find('\n').map_or(text.len(), |i| i + 1);
    for (row, line) in lines.enumerate() {
        let line_start = offset;
        offset += line.len() + 1;
        if line.trim().is_empty() {
            continue;
        }
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != header.len() {
            return Err(Error::Malformed {
                what: "nf_conntrack stat row does not match its header",
                offset: line_start,
            });
        }
        let mut counters = StatCounters::default();
        for (name, value) in header.iter().zip(&values) {
            let value = u64::from_str_radix(value, 16).map_err(|_| Error::Malformed {
                what: "nf_conntrack stat value is not hexadecimal",
                offset: line_start,
            })?;
            match *name {
                "entries" => out.entries = value,
                "found" => counters.found = value,
                "invalid" => counters.invalid = value,
                "insert" => counters.insert = value,
                "insert_failed" => counters.insert_failed = value,
                "drop" => counters.drop = value,
                "early_drop" => counters.early_drop = value,
                "icmp_error" => counters.error = value,
                "search_restart" => counters.search_restart = value,
                "clashres" => counters.clash_resolve = value,
                "chainlength" => counters.chain_toolong = value,
                _ => {}
            }
        }
        let cpu = u16::try_from(row).map_err(|_| Error::Malformed {
            what: "more nf_conntrack stat rows than CPUs can be numbered",
            offset: line_start,
        })?;
        out.per_cpu.push(CpuStats { cpu, counters });
    }
    if out.per_cpu.is_empty() {
        return Err(Error::Malformed {
            what: "nf_conntrack stat file has no CPU rows",
            offset,
        });
    }
    Ok(out)
}

/// Parses a sysctl file holding one decimal number (`nf_conntrack_count`, `nf_conntrack_max`).
pub fn parse_sysctl_number(text: &str) -> Result<u64, Error> {
    text.trim().parse().map_err(|_| Error::Malformed {
        what: "sysctl value is not a decimal number",
        offset: 0,
    })
}

/// The three `/proc` files, read inside `netns` (the current namespace when `None`).
fn read_proc_files(netns: Option<&Path>) -> Result<[String; 3], Error> {
    let read = || -> Result<[String; 3], Error> {
        let file = |path: &'static str| {
            std::fs::read_to_string(path).map_err(|source| Error::Io {
                op: "read conntrack statistics from /proc",
                source: io::Error::new(source.kind(), format!("{path}: {source}")),
            })
        };
        Ok([file(PROC_STAT)?, file(PROC_COUNT)?, file(PROC_MAX)?])
    };
    let Some(path) = netns else {
        return read();
    };
    let ns = File::open(path).map_err(|source| Error::Netns {
        path: path.to_path_buf(),
        source,
    })?;
    crate::netns::in_netns_fd(ns.as_fd(), read).map_err(|source| Error::Netns {
        path: path.to_path_buf(),
        source,
    })?
}

/// Reads the statistics from `/proc` inside `netns` (the current namespace when `None`),
/// for kernels where ctnetlink's stats requests are unavailable.
pub fn read_proc_in(netns: Option<&Path>) -> Result<Stats, Error> {
    let [stat, count, max] = read_proc_files(netns)?;
    let stat = parse_proc_stat(&stat)?;
    let table = TableCount {
        entries: parse_sysctl_number(&count)?,
        max_entries: parse_sysctl_number(&max)?,
    };
    Ok(Stats::from_parts(table, &stat.per_cpu, StatsSource::Proc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&ty.to_ne_bytes());
        out.extend_from_slice(value);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn payload(res_id: u16, attrs: &[(u16, u32)]) -> Vec<u8> {
        let mut out = vec![0, 0];
        out.extend_from_slice(&res_id.to_be_bytes());
        for (ty, value) in attrs {
            out.extend(attr(*ty, &value.to_be_bytes()));
        }
        out
    }

    #[test]
    fn cpu_stats_parse_every_known_counter_and_skip_unknown_ones() {
        let msg = payload(
            3,
            &[
                (CTA_STATS_FOUND, 1),
                (CTA_STATS_INVALID, 2),
                (CTA_STATS_INSERT, 3),
                (CTA_STATS_INSERT_FAILED, 4),
                (CTA_STATS_DROP, 5),
                (CTA_STATS_EARLY_DROP, 6),
                (CTA_STATS_ERROR, 7),
                (CTA_STATS_SEARCH_RESTART, 8),
                (CTA_STATS_CLASH_RESOLVE, 9),
                (CTA_STATS_CHAIN_TOOLONG, 10),
                (40, 99),
            ],
        );
        let stats = parse_cpu_stats(&msg).unwrap();
        assert_eq!(stats.cpu, 3);
        let values: Vec<u64> = stats.counters.named().iter().map(|(_, v)| *v).collect();
        assert_eq!(values, (1..=10).collect::<Vec<u64>>());
    }

    #[test]
    fn table_count_needs_both_values() {
        let ok = payload(
            0,
            &[
                (CTA_STATS_GLOBAL_ENTRIES, 12),
                (CTA_STATS_GLOBAL_MAX_ENTRIES, 262_144),
            ],
        );
        assert_eq!(
            parse_table_count(&ok).unwrap(),
            TableCount {
                entries: 12,
                max_entries: 262_144
            }
        );
        let half = payload(0, &[(CTA_STATS_GLOBAL_ENTRIES, 12)]);
        assert!(matches!(
            parse_table_count(&half),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn truncated_or_garbled_stats_messages_are_errors() {
        let mut msg = payload(0, &[(CTA_STATS_FOUND, 1), (CTA_STATS_DROP, 2)]);
        for len in 0..msg.len() {
            // Cutting inside an attribute is malformed; cutting between them is a shorter,
            // valid message. Either way, never a panic.
            let _ = parse_cpu_stats(&msg[..len]);
            let _ = parse_table_count(&msg[..len]);
        }
        assert!(parse_cpu_stats(&msg[..2]).is_err());
        // A counter attribute with a 2-byte value.
        msg.truncate(4);
        msg.extend(attr(CTA_STATS_FOUND, &[0, 1]));
        assert!(matches!(
            parse_cpu_stats(&msg),
            Err(Error::Malformed { .. })
        ));
    }

    const PROC_6_18: &str = "\
entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000005  00000001 0000000a 00000000 00000002 00000000 00000000 00000000 00000010 00000003 00000004 00000005 00000006  00000000 00000000 00000000 00000007
00000005  00000001 00000001 00000000 00000000 00000000 00000000 00000002 00000001 00000001 00000000 00000000 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn proc_stat_rows_sum_like_conntrack_s() {
        let stat = parse_proc_stat(PROC_6_18).unwrap();
        assert_eq!(stat.entries, 5);
        assert_eq!(stat.per_cpu.len(), 2);
        let total = Stats::from_parts(TableCount::default(), &stat.per_cpu, StatsSource::Proc);
        let c = total.counters;
        assert_eq!(
            (c.found, c.invalid, c.insert, c.insert_failed, c.drop),
            (11, 2, 17, 4, 4)
        );
        assert_eq!(
            (c.early_drop, c.error, c.search_restart, c.clash_resolve),
            (5, 6, 7, 2)
        );
        assert_eq!(c.chain_toolong, 2);
        assert_eq!(total.cpus, 2);
    }

    #[test]
    fn proc_stat_of_an_older_kernel_parses_by_column_name() {
        // Before clash_resolve existed the second column was `searched`.
        let old = "entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                   0000002a  00000009 00000001 00000000 00000000 00000000 00000000 00000000 00000003 00000001 00000000 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let stat = parse_proc_stat(old).unwrap();
        assert_eq!(stat.entries, 42);
        assert_eq!(stat.per_cpu[0].counters.insert, 3);
        assert_eq!(stat.per_cpu[0].counters.insert_failed, 1);
        assert_eq!(stat.per_cpu[0].counters.clash_resolve, 0);
    }

    #[test]
    fn malformed_proc_stat_is_an_error_not_a_panic() {
        for bad in [
            "",
            "entries insert_failed\n",
            "found insert\n00000001 00000002\n",
            "entries insert_failed\n0000000g 00000000\n",
            "entries insert_failed\n00000001\n",
            "entries insert_failed\n00000001 00000002 00000003\n",
        ] {
            assert!(
                matches!(parse_proc_stat(bad), Err(Error::Malformed { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(parse_sysctl_number("262144\n").unwrap(), 262_144);
        assert!(parse_sysctl_number("lots\n").is_err());
        assert!(parse_sysctl_number("").is_err());
    }

    #[test]
    fn fill_ratio_is_zero_without_a_limit() {
        assert_eq!(TableCount::default().fill_ratio(), 0.0);
        let t = TableCount {
            entries: 1,
            max_entries: 4,
        };
        assert_eq!(t.fill_ratio(), 0.25);
    }
}
