//! Lists UDP conntrack entries like `conntrack -L -p udp`.
//!
//! Usage: `ct-list [--netns PATH] [--family ipv4|ipv6] [--proto N]` (root, or CAP_NET_ADMIN).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests, benches and examples may panic

use std::path::PathBuf;
use std::process::ExitCode;

use ctnetlink::{Capabilities, Conntrack, DumpFilter, Family, Flow, Status, proto};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ct-list: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut netns: Option<PathBuf> = None;
    let mut filter = DumpFilter {
        proto: Some(proto::UDP),
        ..DumpFilter::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--netns" => netns = Some(PathBuf::from(value()?)),
            "--family" => {
                filter.family = Some(match value()?.as_str() {
                    "ipv4" | "4" => Family::V4,
                    "ipv6" | "6" => Family::V6,
                    other => return Err(format!("unknown family {other}").into()),
                })
            }
            "--proto" => filter.proto = Some(value()?.parse()?),
            "-h" | "--help" => {
                println!("usage: ct-list [--netns PATH] [--family ipv4|ipv6] [--proto N]");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut ct = Conntrack::open(netns.as_deref(), Capabilities::from_running_kernel())?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut write_error = None;
    let stats = ct.dump(&filter, |flow| {
        if write_error.is_none()
            && let Err(err) = print_flow(&mut out, flow)
        {
            write_error = Some(err);
        }
    })?;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    drop(out);
    eprintln!("ct-list: {} flow entries have been shown.", stats.matched);
    Ok(())
}

/// One line in the layout of `conntrack -L`.
fn print_flow(out: &mut impl std::io::Write, flow: &Flow) -> std::io::Result<()> {
    let name = proto::name(flow.orig.proto).unwrap_or("unknown");
    write!(out, "{:<8} {:<2} {} ", name, flow.orig.proto, flow.timeout)?;
    let t = &flow.orig;
    write!(
        out,
        "src={} dst={} sport={} dport={} ",
        t.src, t.dst, t.sport, t.dport
    )?;
    if !flow.status.contains(Status::SEEN_REPLY) {
        write!(out, "[UNREPLIED] ")?;
    }
    let t = &flow.reply;
    write!(
        out,
        "src={} dst={} sport={} dport={} ",
        t.src, t.dst, t.sport, t.dport
    )?;
    if flow.status.contains(Status::ASSURED) {
        write!(out, "[ASSURED] ")?;
    }
    write!(out, "mark={} ", flow.mark)?;
    // conntrack -L prints a one-direction zone as zone-orig= / zone-reply=.
    match (flow.zone, flow.zone_dir) {
        (0, _) => {}
        (zone, ctnetlink::ZoneDir::Both) => write!(out, "zone={zone} ")?,
        (zone, ctnetlink::ZoneDir::Original) => write!(out, "zone-orig={zone} ")?,
        (zone, ctnetlink::ZoneDir::Reply) => write!(out, "zone-reply={zone} ")?,
    }
    writeln!(out, "use=1")
}
