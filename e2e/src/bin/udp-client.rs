//! A UDP client for the node lab, shaped like a DNS resolver that keeps its source port.
//!
//! `udp-client --target ADDR:PORT --source-port PORT [--interval-ms 20]` sends a datagram every
//! interval from the same source port and prints one JSON line per answer:
//! `{"t_us":<unix µs>,"seq":<n>,"backend":"<NAME:PORT>"}`. The first line is
//! `{"t_us":..,"started":true}` once the socket is bound.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn main() -> Result<()> {
    let mut target: Option<SocketAddr> = None;
    let mut source_port: u16 = 0;
    let mut interval = Duration::from_millis(20);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--target" => target = Some(value()?.parse().context("--target must be ADDR:PORT")?),
            "--source-port" => source_port = value()?.parse().context("--source-port")?,
            "--interval-ms" => {
                interval = Duration::from_millis(value()?.parse().context("--interval-ms")?)
            }
            other => bail!(
                "unknown argument {other:?}; usage: udp-client --target ADDR:PORT \
                 --source-port PORT [--interval-ms MS]"
            ),
        }
    }
    let target = target.context("--target is required")?;
    let local: IpAddr = match target {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let socket = UdpSocket::bind((local, source_port))
        .with_context(|| format!("binding source port {source_port}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    writeln!(out, "{{\"t_us\":{},\"started\":true}}", unix_micros())?;
    out.flush()?;
    let mut buf = [0u8; 2048];
    let mut seq: u64 = 0;
    let mut next_send = Instant::now();
    loop {
        // Send errors (no route, ICMP-reported refusals) are what a blackhole looks like from
        // here: keep sending at the same pace, as a resolver would.
        let _ = socket.send_to(&seq.to_be_bytes(), target);
        next_send += interval;
        loop {
            let now = Instant::now();
            if now >= next_send {
                break;
            }
            socket.set_read_timeout(Some(next_send - now))?;
            match socket.recv_from(&mut buf) {
                Ok((len, _)) => {
                    let backend = String::from_utf8_lossy(&buf[..len]);
                    let line = serde_json::json!({
                        "t_us": unix_micros(),
                        "seq": seq,
                        "backend": backend,
                    });
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(_) => {} // an ICMP error reported on the socket; keep listening
            }
        }
        seq += 1;
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}
