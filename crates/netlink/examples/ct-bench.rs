//! Benchmark: dump, parse and delete against a namespace holding N UDP entries (root).
//!
//! `cargo run --release -p ctnetlink --example ct-bench -- [--entries N] [--rounds R]
//! [--deletes D] [--json]`
//!
//! In a fresh namespace, fills N entries with batched `CT_NEW` (raising the init namespace's
//! `net.netfilter.nf_conntrack_max` for the run and restoring it afterwards), then alternates R
//! rounds of (a) the floor: a raw recv loop that only counts messages, (b) ctnetlink's dump and
//! parse, (c) `conntrack -L -p udp > /dev/null`; then deletes D scattered entries. Prints a
//! table of medians and ratios; with `--json`, the table goes to stderr and one JSON line to
//! stdout.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ctnetlink::testing::TestNetns;
use ctnetlink::{
    Conntrack, DumpFilter, Family, FlowKey, NewFlow, Status, Tuple, encode_dump_request, proto,
};

const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

struct Options {
    entries: u32,
    rounds: usize,
    deletes: u32,
    json: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ct-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        entries: 1_000_000,
        rounds: 5,
        deletes: 16_000,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> Result<u64, String> {
            args.next()
                .ok_or(format!("{arg} needs a value"))?
                .replace('_', "")
                .parse()
                .map_err(|e| format!("{arg}: {e}"))
        };
        match arg.as_str() {
            "--entries" => options.entries = number()?.clamp(1, 16_000_000) as u32,
            "--rounds" => options.rounds = number()?.clamp(1, 100) as usize,
            "--deletes" => options.deletes = number()? as u32,
            "--json" => options.json = true,
            "-h" | "--help" => {
                return Err(
                    "usage: ct-bench [--entries N] [--rounds R] [--deletes D] [--json]".into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    options.deletes = options.deletes.min(options.entries);
    Ok(options)
}

/// Restores `nf_conntrack_max` when dropped.
struct SysctlGuard {
    original: String,
}

impl SysctlGuard {
    fn raise_to(at_least: u64) -> Result<Self, Box<dyn std::error::Error>> {
        let original = std::fs::read_to_string(CONNTRACK_MAX)?.trim().to_string();
        if original.parse::<u64>()? < at_least {
            std::fs::write(CONNTRACK_MAX, at_least.to_string())?;
        }
        Ok(Self { original })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(CONNTRACK_MAX, &self.original) {
            eprintln!("ct-bench: could not restore {CONNTRACK_MAX}: {err}");
        }
    }
}

/// Entry `i`: a distinct client, DNAT-shaped (the reply comes from a backend).
fn entry(i: u32) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)));
    let vip = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 10));
    let backend = IpAddr::V4(Ipv4Addr::new(172, 31, (i % 251) as u8, 5));
    let sport = 1024 + (i % 60_000) as u16;
    NewFlow {
        orig: Tuple::new(client, vip, proto::UDP, sport, 53),
        reply: Tuple::new(backend, client, proto::UDP, 5353, sport),
        timeout: 3600,
        status: Status::SEEN_REPLY,
        mark: 0,
        zone: 0,
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options()?;
    if !ctnetlink::testing::is_root() {
        return Err("needs root (network namespaces, CAP_NET_ADMIN, sysctl)".into());
    }
    let _sysctl = SysctlGuard::raise_to(u64::from(options.entries) + 65_536)?;
    let ns = TestNetns::new("bench")?;
    let mut ct = Conntrack::open_in(&ns.path())?;
    let filter = DumpFilter::family_proto(Family::V4, proto::UDP);

    // Fill.
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(65_536);
    let mut created = 0;
    for start in (0..options.entries).step_by(65_536) {
        chunk.clear();
        chunk.extend((start..options.entries.min(start + 65_536)).map(entry));
        let report = ct.create(&chunk)?;
        if let Some((_, err)) = report.failed.first() {
            return Err(format!("create failed: {err}").into());
        }
        created += report.created;
    }
    drop(chunk);
    let fill = started.elapsed();
    if created != u64::from(options.entries) {
        return Err(format!("created {created} of {} entries", options.entries).into());
    }

    let caps = ct.capabilities();
    let request = encode_dump_request(&filter, &caps, 1);
    let raw = raw_socket_in(&ns)?;
    let (mut floor, mut ours, mut tools) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss_growth = 0u64;
    let mut peak_rss = 0u64;
    for round in 0..options.rounds {
        let started = Instant::now();
        let messages = raw_dump_count(&raw, &request)?;
        floor.push(started.elapsed());
        check_count("floor", messages, options.entries)?;

        let base_rss = reset_peak_rss()?;
        let started = Instant::now();
        let mut checksum = 0u64;
        let stats = ct.dump(&filter, |flow| {
            checksum = checksum.wrapping_add(u64::from(flow.orig.sport) ^ u64::from(flow.id));
        })?;
        ours.push(started.elapsed());
        let hwm = peak_rss_kib()?;
        peak_rss = peak_rss.max(hwm);
        peak_rss_growth = peak_rss_growth.max(hwm.saturating_sub(base_rss));
        check_count("ctnetlink", stats.matched, options.entries)?;
        std::hint::black_box(checksum);

        let started = Instant::now();
        let status = Command::new("ip")
            .args(["netns", "exec", ns.name(), "conntrack", "-L", "-p", "udp"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        tools.push(started.elapsed());
        if !status.success() {
            return Err(format!("conntrack -L failed: {status}").into());
        }
        eprintln!(
            "round {}: floor {:.3}s ctnetlink {:.3}s conntrack {:.3}s",
            round + 1,
            floor[round].as_secs_f64(),
            ours[round].as_secs_f64(),
            tools[round].as_secs_f64()
        );
    }

    // Delete scattered entries: every k-th of the table, in dump order.
    let stride = (options.entries / options.deletes.max(1)).max(1) as u64;
    let mut keys: Vec<FlowKey> = Vec::with_capacity(options.deletes as usize);
    let mut seen = 0u64;
    ct.dump(&filter, |flow| {
        if seen.is_multiple_of(stride) && keys.len() < options.deletes as usize {
            keys.push(flow.key());
        }
        seen += 1;
    })?;
    let started = Instant::now();
    let report = ct.delete(keys.iter().copied())?;
    let delete_time = started.elapsed();
    if report.deleted != keys.len() as u64 {
        return Err(format!("deleted {} of {} ({report:?})", report.deleted, keys.len()).into());
    }

    let (a, b, c) = (median(&floor), median(&ours), median(&tools));
    let delete_rate = keys.len() as f64 / delete_time.as_secs_f64();
    let table = format!(
        "ct-bench: {} UDPv4 entries, {} rounds (medians), kernel filters {:?}\n\
         | what | time | ratio |\n|---|---|---|\n\
         | (a) floor: raw recv loop, counts messages | {:.3} s | 1.00 |\n\
         | (b) ctnetlink dump + parse | {:.3} s | (b)/(a) = {:.3} |\n\
         | (c) conntrack -L -p udp > /dev/null | {:.3} s | (b)/(c) = {:.3} |\n\
         | fill {} entries, batched CT_NEW | {:.2} s | {:.0} entries/s |\n\
         | delete {} scattered entries, batched | {:.1} ms | {:.0} entries/s |\n\
         | (b) peak RSS growth during dump | {:.2} MiB | process peak {:.1} MiB |\n",
        options.entries,
        options.rounds,
        caps,
        a.as_secs_f64(),
        b.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64(),
        c.as_secs_f64(),
        b.as_secs_f64() / c.as_secs_f64(),
        options.entries,
        fill.as_secs_f64(),
        f64::from(options.entries) / fill.as_secs_f64(),
        keys.len(),
        delete_time.as_secs_f64() * 1e3,
        delete_rate,
        peak_rss_growth as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
    );
    let json = format!(
        "{{\"bench\":\"ctnetlink\",\"entries\":{},\"rounds\":{},\"floor_s\":{:.4},\"dump_parse_s\":{:.4},\"conntrack_tools_s\":{:.4},\"ratio_dump_floor\":{:.4},\"ratio_dump_conntrack\":{:.4},\"fill_s\":{:.3},\"deleted\":{},\"delete_s\":{:.5},\"delete_per_s\":{:.0},\"dump_peak_rss_growth_kib\":{},\"process_peak_rss_kib\":{}}}",
        options.entries,
        options.rounds,
        a.as_secs_f64(),
        b.as_secs_f64(),
        c.as_secs_f64(),
        b.as_secs_f64() / a.as_secs_f64(),
        b.as_secs_f64() / c.as_secs_f64(),
        fill.as_secs_f64(),
        keys.len(),
        delete_time.as_secs_f64(),
        delete_rate,
        peak_rss_growth,
        peak_rss,
    );
    if options.json {
        eprint!("{table}");
        println!("{json}");
    } else {
        print!("{table}");
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn check_count(what: &str, got: u64, want: u32) -> Result<(), String> {
    // A dump may repeat entries while the table changes; here nothing changes it.
    if got != u64::from(want) {
        return Err(format!("{what} dump saw {got} entries, expected {want}"));
    }
    Ok(())
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Resets the process's peak RSS (VmHWM) to its current RSS and returns that, in KiB.
fn reset_peak_rss() -> std::io::Result<u64> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> std::io::Result<u64> {
    status_kib("VmHWM:")
}

fn status_kib(field: &str) -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no {field} in /proc/self/status")))
}

/// A plain netfilter netlink socket made inside the namespace (on a thread that enters it).
fn raw_socket_in(ns: &TestNetns) -> std::io::Result<OwnedFd> {
    let file = std::fs::File::open(ns.path())?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: changes the namespace of this short-lived thread only.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: plain socket(2); the result is checked and owned below.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_NETLINK,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::NETLINK_NETFILTER,
                    )
                };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: fd is a fresh descriptor we own.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .map_err(|_| std::io::Error::other("namespace thread panicked"))?
    })
}

/// The floor: sends the dump request and reads until NLMSG_DONE, only counting messages.
fn raw_dump_count(fd: &OwnedFd, request: &[u8]) -> std::io::Result<u64> {
    // SAFETY: valid socket and buffer.
    if unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut messages = 0u64;
    loop {
        // SAFETY: valid socket and buffer.
        let len = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        let datagram = &buf[..len as usize];
        let mut offset = 0;
        while offset + 16 <= datagram.len() {
            let msg_len =
                u32::from_ne_bytes(datagram[offset..offset + 4].try_into().unwrap_or_default())
                    as usize;
            let ty = u16::from_ne_bytes([datagram[offset + 4], datagram[offset + 5]]);
            if ty == 3 || ty == 2 {
                return Ok(messages); // NLMSG_DONE, or NLMSG_ERROR
            }
            messages += 1;
            if msg_len < 16 {
                return Err(std::io::Error::other("bad netlink message length"));
            }
            offset += (msg_len + 3) & !3;
        }
    }
}
