//! Benchmark: dump, parse and delete against a namespace holding N UDP entries (root).
//!
//! `cargo run --release -p ctnetlink --example ct-bench -- [--entries N] [--rounds R]
//! [--deletes D] [--hashsize keep|auto|BUCKETS] [--no-conntrack-tools] [--json]`
//!
//! In a fresh namespace, fills N entries with batched `CT_NEW` (raising the init namespace's
//! `net.netfilter.nf_conntrack_max` for the run and restoring it afterwards), then runs R
//! rounds, alternating the order of (a) the floor: a raw recv loop that only counts messages,
//! on a socket set up like ctnetlink's (same receive buffer, buffer size and flags), and (b)
//! ctnetlink's dump and parse; then (c) `conntrack -L -p udp > /dev/null`; then one batch
//! delete of D scattered entries (a different set each round). With `--hashsize auto` (the
//! default) every round also deletes a second set after resizing the conntrack hash table to
//! one bucket per allowed entry, as an operator raising `nf_conntrack_max` would, and resizes
//! it back (the original size is restored at exit). Wall time is noisy on a shared machine, so
//! the table also shows each side's CPU time (user/system) and an in-memory replay of captured
//! datagrams that isolates the parser's cost per entry. With `--json`, the table goes to
//! stderr and one JSON line to stdout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use ctnetlink::testing::{
    CONNTRACK_HASHSIZE, CONNTRACK_MAX, KnobGuard, RawDumper, TestNetns, count_messages,
};
use ctnetlink::{
    Capabilities, Conntrack, DumpFilter, Family, FlowKey, NewFlow, Status, Tuple, proto,
};

/// Datagrams captured for the in-memory parser replay: 256 KiB, which stays in the CPU's
/// caches like the datagram a live dump has just received.
const REPLAY_DATAGRAMS: usize = 8;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hashsize {
    /// Leave the kernel's table size alone.
    Keep,
    /// Also measure deletes with one bucket per allowed entry.
    Auto,
    /// Also measure deletes with this many buckets.
    Buckets(u64),
}

struct Options {
    entries: u32,
    rounds: usize,
    deletes: u32,
    hashsize: Hashsize,
    conntrack_tools: bool,
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

const USAGE: &str = "usage: ct-bench [--entries N] [--rounds R] [--deletes D] \
                     [--hashsize keep|auto|BUCKETS] [--no-conntrack-tools] [--json]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        entries: 1_000_000,
        rounds: 5,
        deletes: 16_000,
        hashsize: Hashsize::Auto,
        conntrack_tools: true,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        let number = |text: String| -> Result<u64, String> {
            text.replace('_', "")
                .parse()
                .map_err(|e| format!("{arg}: {e}"))
        };
        match arg.as_str() {
            "--entries" => options.entries = number(value()?)?.clamp(1, 16_000_000) as u32,
            "--rounds" => options.rounds = number(value()?)?.clamp(1, 100) as usize,
            "--deletes" => options.deletes = number(value()?)?.max(1) as u32,
            "--hashsize" => {
                options.hashsize = match value()?.as_str() {
                    "keep" => Hashsize::Keep,
                    "auto" => Hashsize::Auto,
                    other => Hashsize::Buckets(number(other.to_string())?.max(1024)),
                }
            }
            "--no-conntrack-tools" => options.conntrack_tools = false,
            "--json" => options.json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    options.deletes = options.deletes.min(options.entries);
    Ok(options)
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

/// Wall time and CPU time of one measured step.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    wall: Duration,
    user: Duration,
    sys: Duration,
    /// Context switches of the measuring thread: (voluntary = it slept, involuntary = it was
    /// preempted for other work).
    switches: (u64, u64),
}

/// The calling thread's (voluntary, involuntary) context switches so far.
fn context_switches() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

/// CPU time (user, system) of the calling thread, or of the waited-for children.
fn cpu_time(who: libc::c_int) -> (Duration, Duration) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let time = |tv: libc::timeval| {
        Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
    };
    (time(usage.ru_utime), time(usage.ru_stime))
}

/// Runs `f`, measuring wall time and the CPU time of `who` (`RUSAGE_THREAD` or
/// `RUSAGE_CHILDREN`).
fn measure<T>(who: libc::c_int, f: impl FnOnce() -> T) -> (T, Sample) {
    let (user0, sys0) = cpu_time(who);
    let switches0 = context_switches();
    let started = Instant::now();
    let out = f();
    let wall = started.elapsed();
    let switches1 = context_switches();
    let (user1, sys1) = cpu_time(who);
    let sample = Sample {
        wall,
        user: user1.saturating_sub(user0),
        sys: sys1.saturating_sub(sys0),
        switches: (
            switches1.0.saturating_sub(switches0.0),
            switches1.1.saturating_sub(switches0.1),
        ),
    };
    (out, sample)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let options = parse_options()?;
    if !ctnetlink::testing::is_root() {
        return Err("needs root (network namespaces, CAP_NET_ADMIN, sysctl)".into());
    }
    let max = u64::from(options.entries) + 65_536;
    let conntrack_max = KnobGuard::new(CONNTRACK_MAX)?;
    if conntrack_max.original()? < max {
        conntrack_max.set(max)?;
    }
    // Declared before the namespace, so that it is restored after the namespace (and its
    // entries) are gone: a smaller table is then quick to rebuild.
    let hashsize = KnobGuard::new(CONNTRACK_HASHSIZE)?;
    let default_buckets = hashsize.original()?;
    let big_buckets = match options.hashsize {
        Hashsize::Keep => None,
        Hashsize::Auto => Some(max.max(default_buckets)),
        Hashsize::Buckets(n) => Some(n),
    }
    .filter(|&buckets| buckets != default_buckets);
    let ns = TestNetns::new("bench")?;
    // The kernel filters as measured (the table below reports them), else as the version says.
    let caps = ctnetlink::testing::probe_capabilities()
        .unwrap_or_else(|_| Capabilities::from_running_kernel());
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
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

    let mut raw = RawDumper::new(&ns.path(), &filter, &caps)?;

    // Key sets to delete, one per delete round (two per round when the table is resized):
    // every `stride`-th entry in dump order, set `k` starting at offset `k`.
    let sets_per_round = if big_buckets.is_some() { 2 } else { 1 };
    let stride = (options.entries / options.deletes).max(1) as usize;
    let sets = (options.rounds * sets_per_round).min(stride);
    let mut key_sets: Vec<Vec<FlowKey>> = vec![Vec::new(); sets];
    let mut seen = 0usize;
    ct.dump(&filter, |flow| {
        let set = seen % stride;
        if let Some(keys) = key_sets.get_mut(set)
            && keys.len() < options.deletes as usize
        {
            keys.push(flow.key());
        }
        seen += 1;
    })?;
    if sets < options.rounds * sets_per_round {
        eprintln!("ct-bench: only {sets} distinct delete sets fit; fewer delete rounds");
    }

    // The parser alone, on captured datagrams replayed from memory.
    let replay = capture_datagrams(&mut raw, REPLAY_DATAGRAMS)?;

    let (mut floor, mut ours, mut tools) = (Vec::new(), Vec::new(), Vec::new());
    let (mut parse_ns, mut walk_ns) = (Vec::new(), Vec::new());
    let (mut delete_default, mut delete_big, mut resizes) = (Vec::new(), Vec::new(), Vec::new());
    let mut peak_rss_growth = 0u64;
    let mut peak_rss = 0u64;
    let mut datagram_bytes = 0u64;
    let mut sets = key_sets.iter();
    let mut remaining = u64::from(options.entries);
    for round in 0..options.rounds {
        let mut run_floor = |floor: &mut Vec<Sample>| -> Result<(), Box<dyn std::error::Error>> {
            let (messages, sample) = measure(libc::RUSAGE_THREAD, || raw.count());
            check_count("floor", messages?, remaining)?;
            floor.push(sample);
            Ok(())
        };
        // Alternate which goes first, so that drift on a shared machine hits both alike.
        if round % 2 == 0 {
            run_floor(&mut floor)?;
        }
        let base_rss = reset_peak_rss()?;
        let mut checksum = 0u64;
        // The whole process: ctnetlink receives on a helper thread while this one parses.
        let (stats, sample) = measure(libc::RUSAGE_SELF, || {
            ct.dump(&filter, |flow| {
                checksum = checksum.wrapping_add(u64::from(flow.orig.sport) ^ u64::from(flow.id));
            })
        });
        let hwm = peak_rss_kib()?;
        peak_rss = peak_rss.max(hwm);
        peak_rss_growth = peak_rss_growth.max(hwm.saturating_sub(base_rss));
        let stats = stats?;
        check_count("ctnetlink", stats.matched, remaining)?;
        datagram_bytes = stats.bytes / stats.datagrams.max(1);
        std::hint::black_box(checksum);
        ours.push(sample);
        if round % 2 == 1 {
            run_floor(&mut floor)?;
        }

        let (per_entry_parse, per_entry_walk) = replay_cost(&replay);
        parse_ns.push(per_entry_parse);
        walk_ns.push(per_entry_walk);

        if options.conntrack_tools {
            let (status, sample) = measure(libc::RUSAGE_CHILDREN, || {
                Command::new("ip")
                    .args(["netns", "exec", ns.name(), "conntrack", "-L", "-p", "udp"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
            });
            let status = status?;
            if !status.success() {
                return Err(format!("conntrack -L failed: {status}").into());
            }
            tools.push(sample);
        }

        let mut line = format!(
            "round {}: floor {:.3}s{} ctnetlink {:.3}s{} parse {:.1} ns/entry",
            round + 1,
            floor[round].wall.as_secs_f64(),
            stalls(&floor[round]),
            ours[round].wall.as_secs_f64(),
            stalls(&ours[round]),
            per_entry_parse,
        );
        if let Some(sample) = tools.last() {
            line += &format!(" conntrack {:.3}s", sample.wall.as_secs_f64());
        }
        if let Some(keys) = sets.next() {
            let (rate, per_cpu, sample) = delete_rate(&mut ct, keys)?;
            remaining -= keys.len() as u64;
            delete_default.push((rate, per_cpu));
            line += &format!(
                " delete {rate:.0}/s ({per_cpu:.0}/CPU-s{})",
                stalls(&sample)
            );
        }
        if let Some(buckets) = big_buckets
            && let Some(keys) = sets.next()
        {
            let started = Instant::now();
            hashsize.set(buckets)?;
            resizes.push(started.elapsed());
            let (rate, per_cpu, sample) = delete_rate(&mut ct, keys)?;
            remaining -= keys.len() as u64;
            delete_big.push((rate, per_cpu));
            hashsize.set(default_buckets)?;
            line += &format!(
                " delete {rate:.0}/s ({per_cpu:.0}/CPU-s{}) with {buckets} buckets",
                stalls(&sample)
            );
        }
        eprintln!("{line}");
    }

    let wall = |samples: &[Sample]| median_by(samples, |s| s.wall.as_secs_f64());
    let user = |samples: &[Sample]| median_by(samples, |s| s.user.as_secs_f64());
    let sys = |samples: &[Sample]| median_by(samples, |s| s.sys.as_secs_f64());
    let (a, b) = (wall(&floor), wall(&ours));
    let cpu = |samples: &[Sample]| median_by(samples, |s| (s.user + s.sys).as_secs_f64());
    let (a_cpu, b_cpu) = (cpu(&floor), cpu(&ours));
    // Each round measures the floor and ctnetlink back to back, so the ratio is the median of
    // the rounds' own ratios: a round slowed down by the machine slows both of its halves.
    let paired = |of: fn(&Sample) -> f64| {
        let ratios: Vec<f64> = floor
            .iter()
            .zip(&ours)
            .map(|(a, b)| of(b) / of(a))
            .collect();
        median_by(&ratios, |&r| r)
    };
    let ratio_wall = paired(|s| s.wall.as_secs_f64());
    let ratio_cpu = paired(|s| (s.user + s.sys).as_secs_f64());
    let parse = median_by(&parse_ns, |&x| x);
    let walk = median_by(&walk_ns, |&x| x);
    let deletes = key_sets.first().map_or(0, Vec::len);
    let rate_default = median_by(&delete_default, |&(wall, _)| wall);
    let rate_big = median_by(&delete_big, |&(wall, _)| wall);
    let cpu_rate_default = median_by(&delete_default, |&(_, cpu)| cpu);
    let cpu_rate_big = median_by(&delete_big, |&(_, cpu)| cpu);
    let mut table = format!(
        "ct-bench: {} UDPv4 entries, {} rounds (medians; ratios: median of each round's own), hash table {} buckets, kernel filters {:?}\n\
         | what | wall | CPU user + sys | ratio |\n|---|---|---|---|\n\
         | (a) floor: raw recv loop, counts messages | {:.3} s | {:.3} + {:.3} s | 1.00 |\n\
         | (b) ctnetlink dump + parse | {:.3} s | {:.3} + {:.3} s | (b)/(a) = {:.3} wall, {:.3} CPU |\n",
        options.entries,
        options.rounds,
        default_buckets,
        caps,
        a,
        user(&floor),
        sys(&floor),
        b,
        user(&ours),
        sys(&ours),
        ratio_wall,
        ratio_cpu,
    );
    let c = (!tools.is_empty()).then(|| wall(&tools));
    if let Some(c) = c {
        table += &format!(
            "| (c) conntrack -L -p udp > /dev/null | {c:.3} s | {:.3} + {:.3} s | (b)/(c) = {:.3} |\n",
            user(&tools),
            sys(&tools),
            b / c,
        );
    }
    table += &format!(
        "| parser alone: {REPLAY_DATAGRAMS} captured datagrams replayed from memory | {parse:.1} ns/entry | header walk only {walk:.1} ns/entry | |\n\
         | fill {} entries, batched CT_NEW | {:.2} s | | {:.0} entries/s |\n\
         | delete {deletes} scattered entries, {} buckets | | {cpu_rate_default:.0} entries/CPU-s | {rate_default:.0} entries/s |\n",
        options.entries,
        fill.as_secs_f64(),
        f64::from(options.entries) / fill.as_secs_f64(),
        default_buckets,
    );
    if let Some(buckets) = big_buckets {
        table += &format!(
            "| delete {deletes} scattered entries, {buckets} buckets (resize {:.2} s) | | {cpu_rate_big:.0} entries/CPU-s | {rate_big:.0} entries/s |\n",
            median_by(&resizes, Duration::as_secs_f64),
        );
    }
    table += &format!(
        "| dump datagrams (64 KiB receive buffer; the kernel fills at most 32 KiB) | {datagram_bytes} B average | | |\n"
    );
    table += &format!(
        "| (b) peak RSS growth during dump | {:.2} MiB | process peak {:.1} MiB | |\n",
        peak_rss_growth as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
    );
    let json = format!(
        "{{\"bench\":\"ctnetlink\",\"entries\":{},\"rounds\":{},\"buckets\":{},\"floor_s\":{:.4},\"floor_cpu_s\":{:.4},\"dump_parse_s\":{:.4},\"dump_parse_cpu_s\":{:.4},\"conntrack_tools_s\":{},\"ratio_dump_floor\":{:.4},\"ratio_dump_floor_cpu\":{:.4},\"ratio_dump_conntrack\":{},\"parse_ns_per_entry\":{:.2},\"fill_s\":{:.3},\"deleted_per_round\":{},\"delete_per_s\":{:.0},\"delete_per_cpu_s\":{:.0},\"big_buckets\":{},\"delete_per_s_big_buckets\":{},\"delete_per_cpu_s_big_buckets\":{},\"dump_peak_rss_growth_kib\":{},\"process_peak_rss_kib\":{}}}",
        options.entries,
        options.rounds,
        default_buckets,
        a,
        a_cpu,
        b,
        b_cpu,
        c.map_or("null".to_string(), |c| format!("{c:.4}")),
        ratio_wall,
        ratio_cpu,
        c.map_or("null".to_string(), |c| format!("{:.4}", b / c)),
        parse,
        fill.as_secs_f64(),
        deletes,
        rate_default,
        cpu_rate_default,
        big_buckets.map_or("null".to_string(), |n| n.to_string()),
        big_buckets.map_or("null".to_string(), |_| format!("{rate_big:.0}")),
        big_buckets.map_or("null".to_string(), |_| format!("{cpu_rate_big:.0}")),
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

/// Deletes `keys` in one call and returns the rates by wall time and by this thread's CPU
/// time (the kernel does the work inside our sendmsg), and the measurement, checking that
/// all were deleted.
fn delete_rate(
    ct: &mut Conntrack,
    keys: &[FlowKey],
) -> Result<(f64, f64, Sample), Box<dyn std::error::Error>> {
    let (report, sample) = measure(libc::RUSAGE_THREAD, || ct.delete(keys.iter().copied()));
    let report = report?;
    if report.deleted != keys.len() as u64 {
        return Err(format!("deleted {} of {} ({report:?})", report.deleted, keys.len()).into());
    }
    let per_cpu_second = keys.len() as f64 / (sample.user + sample.sys).as_secs_f64().max(1e-6);
    Ok((
        keys.len() as f64 / sample.wall.as_secs_f64(),
        per_cpu_second,
        sample,
    ))
}

/// The part of a step's wall time spent off the CPU, when it is noticeable: waiting for a
/// CPU (other work on the machine) or sleeping, e.g. on the nfnetlink mutex, which
/// ctnetlink's NEW and DELETE handlers take for each message and which every network
/// namespace on the host shares.
fn stalls(sample: &Sample) -> String {
    let off_cpu = sample.wall.saturating_sub(sample.user + sample.sys);
    if off_cpu < sample.wall / 10 {
        return String::new();
    }
    format!(
        ", {:.1} ms off CPU: slept {}x, preempted {}x",
        off_cpu.as_secs_f64() * 1e3,
        sample.switches.0,
        sample.switches.1
    )
}

fn check_count(what: &str, got: u64, want: u64) -> Result<(), String> {
    // A dump may repeat entries while the table changes; here nothing changes it.
    if got != want {
        return Err(format!("{what} dump saw {got} entries, expected {want}"));
    }
    Ok(())
}

fn median_by<T>(samples: &[T], key: impl Fn(&T) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(key).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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

/// Runs a whole dump, keeping copies of its first `keep` datagrams.
fn capture_datagrams(raw: &mut RawDumper, keep: usize) -> std::io::Result<Vec<Vec<u8>>> {
    let mut kept = Vec::with_capacity(keep);
    raw.dump_with(|datagram| {
        if kept.len() < keep {
            kept.push(datagram.to_vec());
        }
    })?;
    Ok(kept)
}

/// Nanoseconds per entry to parse the captured datagrams into flows, and to only walk their
/// headers (what the floor does); each the fastest of several passes, which is the least
/// disturbed by other work on the machine.
fn replay_cost(datagrams: &[Vec<u8>]) -> (f64, f64) {
    let mut entries = 0u64;
    for datagram in datagrams {
        let _ = count_messages(datagram, &mut entries);
    }
    let entries = entries.max(1) as f64;
    let fastest = |pass: &dyn Fn() -> u64| {
        (0..201)
            .map(|_| {
                let started = Instant::now();
                std::hint::black_box(pass());
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let parse = fastest(&|| {
        let mut checksum = 0u64;
        for datagram in datagrams {
            ctnetlink::testing::parse_datagram(std::hint::black_box(datagram), |flow| {
                if let Ok(flow) = flow {
                    checksum =
                        checksum.wrapping_add(u64::from(flow.orig.sport) ^ u64::from(flow.id));
                }
            });
        }
        checksum
    });
    let walk = fastest(&|| {
        let mut messages = 0u64;
        for datagram in datagrams {
            let _ = count_messages(std::hint::black_box(datagram), &mut messages);
        }
        messages
    });
    (parse / entries * 1e9, walk / entries * 1e9)
}
