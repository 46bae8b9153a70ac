//! Benchmark: one dump of both families against an IPv4 dump plus an IPv6 dump (root).
//!
//! `cargo run --release -p ctnetlink --example ct-family-bench -- [--entries N] [--tcp T]
//! [--rounds R]`
//!
//! In a fresh namespace, fills N UDPv4 entries (default 200,000; `nf_conntrack_max` is raised
//! for the run and restored afterwards) and T TCPv4 entries (default 0), then runs R rounds (default 9), alternating the order
//! of (a) one `AF_UNSPEC` dump of UDP flows of both families
//! ([`DumpFilter::all_families_proto`]) and (b) a UDP dump of IPv4 followed by one of IPv6,
//! as a pass over both families did before. Every dump walks the kernel's whole table
//! whatever the family asked for, so (b) walks it twice; but (a) cannot have the kernel filter
//! the protocol (`CTA_FILTER` needs a family), so the TCP entries are copied out and dropped
//! in user space, which `--tcp` measures. Prints each side's median wall time
//! and the median of the rounds' own (a)/(b) ratios; absolute times drift between runs and
//! machines, so compare the ratio.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ctnetlink::testing::{KnobGuard, TestNetns};
use ctnetlink::{Capabilities, Conntrack, DumpFilter, Family, NewFlow, Status, Tuple, proto};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ct-family-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (mut entries, mut tcp, mut rounds) = (200_000u32, 0u32, 9usize);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--entries" => entries = value()?.parse()?,
            "--tcp" => tcp = value()?.parse()?,
            "--rounds" => rounds = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if !ctnetlink::testing::is_root() {
        return Err("needs root (network namespaces, CAP_NET_ADMIN, sysctl)".into());
    }
    let _max = KnobGuard::conntrack_max_at_least(u64::from(entries) + u64::from(tcp) + 65_536)?;
    let ns = TestNetns::new("fambench")?;
    let caps = Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(Some(&ns.path()), caps)?;
    let mut chunk = Vec::with_capacity(65_536);
    let all = (0..entries)
        .map(|i| entry(i, proto::UDP))
        .chain((0..tcp).map(|i| entry(i, proto::TCP)));
    let mut all = all.peekable();
    while all.peek().is_some() {
        chunk.clear();
        chunk.extend(all.by_ref().take(65_536));
        let report = ct.create(&chunk)?;
        if let Some((_, err)) = report.failed.first() {
            return Err(format!("create failed: {err}").into());
        }
    }

    let both = DumpFilter::all_families_proto(proto::UDP);
    let pair = [
        DumpFilter::family_proto(Family::V4, proto::UDP),
        DumpFilter::family_proto(Family::V6, proto::UDP),
    ];
    let one_dump = |ct: &mut Conntrack| -> Result<(Duration, u64), ctnetlink::Error> {
        let started = Instant::now();
        let mut flows = 0u64;
        ct.dump(&both, |_| flows += 1)?;
        Ok((started.elapsed(), flows))
    };
    let two_dumps = |ct: &mut Conntrack| -> Result<(Duration, u64), ctnetlink::Error> {
        let started = Instant::now();
        let mut flows = 0u64;
        for filter in &pair {
            ct.dump(filter, |_| flows += 1)?;
        }
        Ok((started.elapsed(), flows))
    };
    // One unmeasured round of each, so that both start warm.
    one_dump(&mut ct)?;
    two_dumps(&mut ct)?;
    let (mut a, mut b, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let ((ta, na), (tb, nb)) = if round % 2 == 0 {
            let x = one_dump(&mut ct)?;
            (x, two_dumps(&mut ct)?)
        } else {
            let y = two_dumps(&mut ct)?;
            (one_dump(&mut ct)?, y)
        };
        if na != nb || na != u64::from(entries) {
            return Err(
                format!("flows seen: one dump {na}, two dumps {nb}, filled {entries}").into(),
            );
        }
        a.push(ta.as_secs_f64());
        b.push(tb.as_secs_f64());
        ratios.push(ta.as_secs_f64() / tb.as_secs_f64());
    }
    println!(
        "ct-family-bench: {entries} UDPv4 + {tcp} TCPv4 entries, {rounds} rounds (medians), kernel filters {caps:?}\n\
         | what | wall | ratio |\n|---|---|---|\n\
         | (a) one AF_UNSPEC dump, UDP of both families | {:.4} s | (a)/(b) = {:.3} |\n\
         | (b) UDP dump of IPv4 + UDP dump of IPv6 | {:.4} s | 1.00 |",
        median(&mut a),
        median(&mut ratios),
        median(&mut b),
    );
    Ok(())
}

/// A distinct DNAT-shaped IPv4 entry of protocol `l4` for index `i`.
fn entry(i: u32, l4: u8) -> NewFlow {
    let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0x00ff_ffff)));
    let vip = IpAddr::V4(Ipv4Addr::new(172, 30, 0, 10));
    let backend = IpAddr::V4(Ipv4Addr::new(172, 31, (i % 251) as u8, 5));
    let sport = 1024 + (i % 60_000) as u16;
    NewFlow {
        orig: Tuple::new(client, vip, l4, sport, 53),
        reply: Tuple::new(backend, client, l4, 5353, sport),
        timeout: 3600,
        status: Status::SEEN_REPLY,
        mark: 0,
        zone: 0,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
