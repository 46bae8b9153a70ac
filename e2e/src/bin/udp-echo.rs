//! A UDP backend for the node lab: answers every datagram with `NAME:PORT`.
//!
//! `udp-echo --name NAME --port PORT [--port PORT...]` binds `[::]:PORT` (dual-stack) for each
//! port, prints `ready` once all are bound, and serves until killed.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{Ipv6Addr, UdpSocket};

fn main() -> Result<()> {
    let mut name = None;
    let mut ports = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--name" => name = Some(args.next().context("--name needs a value")?),
            "--port" => ports.push(
                args.next()
                    .context("--port needs a value")?
                    .parse::<u16>()
                    .context("--port must be a port number")?,
            ),
            other => {
                bail!("unknown argument {other:?}; usage: udp-echo --name NAME --port PORT...")
            }
        }
    }
    let name = name.context("--name is required")?;
    if ports.is_empty() {
        bail!("at least one --port is required");
    }
    let mut sockets = Vec::new();
    for port in &ports {
        let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, *port))
            .with_context(|| format!("binding [::]:{port}"))?;
        sockets.push((socket, *port));
    }
    println!("ready");
    std::io::stdout().flush()?;
    let handles: Vec<_> = sockets
        .into_iter()
        .map(|(socket, port)| {
            let answer = format!("{name}:{port}");
            std::thread::spawn(move || serve(socket, answer))
        })
        .collect();
    for handle in handles {
        if let Ok(Err(err)) = handle.join() {
            return Err(err);
        }
    }
    Ok(())
}

fn serve(socket: UdpSocket, answer: String) -> Result<()> {
    let mut buf = [0u8; 2048];
    loop {
        let (_, peer) = socket.recv_from(&mut buf).context("recv_from")?;
        // A failed answer (the peer's route vanished) is the client's problem, not ours.
        let _ = socket.send_to(answer.as_bytes(), peer);
    }
}
