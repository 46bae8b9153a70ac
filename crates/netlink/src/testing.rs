//! Support for tests and tools: root checks, throwaway network namespaces, the capability
//! probe, raw dumps and datagram parsing without a socket.
//!
//! Enabled by the `testing` feature; used by this crate's tests, the controller's and the node lab.
//! The policy: outside CI a root-only test skips with a clear message when it is not root; in CI
//! (`CI` or `CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS` set) it fails instead, so that a green CI
//! run always means the real-kernel tests ran.

use std::ffi::OsStr;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Capabilities, Conntrack, DumpFilter, Error, Family, Flow, NewFlow, Status, Tuple};

/// Whether root-only tests must run (CI), rather than skip.
pub fn root_tests_required() -> bool {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    set("CONNTRACK_RECONCILER_REQUIRE_ROOT_TESTS") || set("CI")
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns true when the calling root-only test may proceed.
///
/// Not root: prints why the test is skipped and returns false, or panics when
/// [`root_tests_required`] says skipping is not allowed.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if root_tests_required() {
        panic!(
            "{test}: needs root (network namespaces, CAP_NET_ADMIN); CI requires root tests to run"
        );
    }
    eprintln!("skipping {test}: needs root (network namespaces, CAP_NET_ADMIN)");
    false
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace made with `ip netns add` and removed when dropped (panics included).
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `ctr-<prefix>-<pid>-<n>` with its loopback up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("ctr-{prefix}-{}-{id}", std::process::id());
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec_checked(["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, usable with `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace and returns its output, whatever its status.
    pub fn exec<I, S>(&self, argv: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
    }

    /// Runs a command inside the namespace; a non-zero status is an error carrying its stderr.
    pub fn exec_checked<I, S>(&self, argv: I) -> io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(argv),
        )
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// The dump floor for benchmarks: a plain netfilter netlink socket that sends a dump request
/// and reads until the end, walking message headers and parsing nothing.
///
/// What a dump costs below any parser: the kernel's table walk, message building and copies.
/// It receives exactly like a [`crate::Conntrack`] handle (same `SO_RCVBUFFORCE`, receive size
/// and `MSG_TRUNC`), so the kernel fills datagrams alike and a ratio against it measures only
/// user-space work. Benchmarks report their dumps against it, measured in the same run.
#[derive(Debug)]
pub struct RawDumper {
    fd: std::os::fd::OwnedFd,
    request: Vec<u8>,
    buf: Vec<u8>,
}

/// Receive size per `recv`, as ctnetlink's handle uses (the kernel caps dump datagrams at 32 KiB).
const RAW_RECV_BUF: usize = 64 * 1024;
/// `SO_RCVBUFFORCE`, as ctnetlink's handle asks for.
const RAW_RCVBUF: libc::c_int = 8 * 1024 * 1024;

impl RawDumper {
    /// A socket inside `netns` that will send the dump request `filter` encodes (with the kernel
    /// filters `caps` allows, as a [`crate::Conntrack`] handle would).
    pub fn new(
        netns: &std::path::Path,
        filter: &DumpFilter,
        caps: &Capabilities,
    ) -> io::Result<Self> {
        let fd = crate::netns::in_netns(netns, raw_socket)??;
        Self::with_socket(fd, filter, caps)
    }

    /// [`RawDumper::new`] in the calling thread's network namespace.
    pub fn in_current_netns(filter: &DumpFilter, caps: &Capabilities) -> io::Result<Self> {
        Self::with_socket(raw_socket()?, filter, caps)
    }

    fn with_socket(
        fd: std::os::fd::OwnedFd,
        filter: &DumpFilter,
        caps: &Capabilities,
    ) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and a c_int option value.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&RAW_RCVBUF as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            request: encode_dump_request(filter, caps, 1),
            buf: vec![0u8; RAW_RECV_BUF],
        })
    }

    /// Runs one dump; returns the number of conntrack messages received.
    pub fn count(&mut self) -> io::Result<u64> {
        self.dump_with(|_| {})
    }

    /// Runs one dump, showing each datagram to `on_datagram`; returns the number of
    /// conntrack messages received.
    pub fn dump_with(&mut self, mut on_datagram: impl FnMut(&[u8])) -> io::Result<u64> {
        use std::os::fd::AsRawFd;
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid socket and buffer.
        if unsafe { libc::send(fd, self.request.as_ptr().cast(), self.request.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut messages = 0u64;
        loop {
            // The same flags as ctnetlink's receive (MSG_TRUNC to detect truncation).
            // SAFETY: valid socket and buffer.
            let len = unsafe {
                libc::recv(
                    fd,
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if len < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            let datagram = &self.buf[..(len as usize).min(self.buf.len())];
            on_datagram(datagram);
            if count_messages(datagram, &mut messages)? {
                return Ok(messages);
            }
        }
    }
}

/// A plain netfilter netlink socket in the calling thread's namespace.
fn raw_socket() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walks the message headers of one dump datagram, adding its conntrack messages to
/// `messages`; true at the dump's end (`NLMSG_DONE` or `NLMSG_ERROR`).
pub fn count_messages(datagram: &[u8], messages: &mut u64) -> io::Result<bool> {
    let mut offset = 0;
    while let Some(header) = datagram.get(offset..offset + 16) {
        let msg_len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let ty = u16::from_ne_bytes([header[4], header[5]]);
        if ty == libc::NLMSG_DONE as u16 || ty == libc::NLMSG_ERROR as u16 {
            return Ok(true);
        }
        *messages += 1;
        if msg_len < 16 {
            return Err(io::Error::other("bad netlink message length"));
        }
        offset += (msg_len + 3) & !3;
    }
    Ok(false)
}

/// A kernel knob (a `/proc/sys` or `/sys/module` file holding a number) that benchmarks change,
/// restored to its original value when dropped.
#[derive(Debug)]
pub struct KnobGuard {
    path: &'static str,
    original: String,
}

/// The init namespace's conntrack table limit.
pub const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";
/// The number of buckets of the kernel's conntrack hash table.
pub const CONNTRACK_HASHSIZE: &str = "/sys/module/nf_conntrack/parameters/hashsize";

impl KnobGuard {
    /// Remembers the knob's value.
    pub fn new(path: &'static str) -> io::Result<Self> {
        let original = std::fs::read_to_string(path)?.trim().to_string();
        Ok(Self { path, original })
    }

    /// The value it had before.
    pub fn original(&self) -> io::Result<u64> {
        self.original
            .parse()
            .map_err(|e| io::Error::other(format!("{}: {e}", self.path)))
    }

    /// Writes a new value (restored on drop).
    pub fn set(&self, value: u64) -> io::Result<()> {
        std::fs::write(self.path, value.to_string())
    }

    /// Raises `nf_conntrack_max` to at least `at_least` entries for as long as the guard lives.
    pub fn conntrack_max_at_least(at_least: u64) -> io::Result<Self> {
        let guard = Self::new(CONNTRACK_MAX)?;
        if guard.original()? < at_least {
            guard.set(at_least)?;
        }
        Ok(guard)
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(self.path, &self.original) {
            eprintln!("could not restore {}: {err}", self.path);
        }
    }
}

impl TestNetns {
    /// `conntrack -S` in the namespace: the number of CPU rows and each counter summed over
    /// them, named as ctnetlink names them (`chaintoolong` → `chain_toolong`).
    pub fn conntrack_stats(&self) -> io::Result<(usize, std::collections::BTreeMap<String, u64>)> {
        let out = self.exec_checked(["conntrack", "-S"])?;
        let mut sums = std::collections::BTreeMap::new();
        let mut cpus = 0;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("cpu="))
        {
            cpus += 1;
            for field in line.split_whitespace().skip(1) {
                let Some((name, value)) = field.split_once('=') else {
                    continue;
                };
                let name = if name == "chaintoolong" {
                    "chain_toolong"
                } else {
                    name
                };
                let value: u64 = value
                    .parse()
                    .map_err(|e| io::Error::other(format!("conntrack -S: {field}: {e}")))?;
                *sums.entry(name.to_owned()).or_insert(0) += value;
            }
        }
        Ok((cpus, sums))
    }

    /// `conntrack -C` in the namespace: its number of entries.
    pub fn conntrack_count(&self) -> io::Result<u64> {
        let out = self.exec_checked(["conntrack", "-C"])?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("conntrack -C: {e}")))
    }
}

/// The init namespace's `nf_conntrack_max`.
pub fn nf_conntrack_max() -> io::Result<u64> {
    std::fs::read_to_string(CONNTRACK_MAX)?
        .trim()
        .parse()
        .map_err(|e| io::Error::other(format!("{CONNTRACK_MAX}: {e}")))
}

/// The exact `CT_GET` dump request [`Conntrack::dump`] sends for `filter` on a handle opened
/// with `caps`, for tools that read the dump themselves (e.g. a benchmark's raw recv loop).
pub fn encode_dump_request(filter: &DumpFilter, caps: &Capabilities, seq: u32) -> Vec<u8> {
    let mut writer = crate::encode::MsgWriter::with_capacity(128);
    writer.dump_request(filter, &caps.kernel_filter(filter), seq);
    writer.as_bytes().to_vec()
}

/// Parses one netlink datagram of ctnetlink messages into flows, without a socket.
///
/// For tests and tools that hold raw bytes (captures, fuzzing); `f` gets each conntrack
/// message's flow or the error that made it unreadable. Never panics.
pub fn parse_datagram<F: FnMut(Result<Flow, Error>)>(datagram: &[u8], mut f: F) {
    use crate::parse;
    for msg in parse::NlMsgs::new(datagram) {
        match msg.and_then(|msg| parse::classify(&msg).map(|reply| (msg, reply))) {
            Ok((_, parse::Reply::Conntrack { payload, .. })) => f(parse::parse_flow(payload)),
            Ok(_) => {}
            Err(err) => f(Err(err)),
        }
    }
}

/// Measures which dump filters the running kernel really applies, with one dump.
///
/// The kernel silently ignores attributes it does not know, so a version number can be wrong
/// for a patched kernel. In a private network namespace of its own (needs `CAP_SYS_ADMIN`;
/// it vanishes with the probe) this creates one entry that matches all four criteria and one
/// decoy per criterion that differs from it in that criterion only, then dumps with all four
/// criteria sent to the kernel and none re-applied: the decoys that come back name exactly the
/// criteria the kernel ignored. Every dump walks the kernel's whole conntrack table, all
/// namespaces included, hence one dump rather than one per criterion.
///
/// Opening a [`Conntrack`] never probes; pass the result to [`Conntrack::open`] to use it.
pub fn probe_capabilities() -> Result<Capabilities, Error> {
    crate::socket::in_private_netns(|| {
        let mut ct = Conntrack::open(None, Capabilities::NONE)?;
        let flows: Vec<NewFlow> = Decoy::ALL.iter().map(|d| d.flow()).collect();
        let report = ct.create(&flows)?;
        if report.created != flows.len() as u64 {
            return Err(Error::Invalid(
                "capability probe could not create its entries",
            ));
        }
        let filter = DumpFilter {
            family: Some(Family::V4),
            proto: Some(crate::proto::UDP),
            mark: Some((0xff, PROBE_MARK)),
            status: Some((Status::ASSURED, Status::ASSURED)),
            zone: Some(PROBE_ZONE),
        };
        let all = Capabilities {
            proto: true,
            mark: true,
            status: true,
            zone: true,
            probed: true,
        };
        // A raw dump: a handle would re-apply every criterion in user space and hide the
        // decoys the kernel let through.
        let mut raw = RawDumper::in_current_netns(&filter, &all).map_err(|e| Error::Io {
            op: "capability probe socket",
            source: e,
        })?;
        let mut seen = Vec::new();
        raw.dump_with(|datagram| {
            parse_datagram(datagram, |flow| {
                if let Ok(flow) = flow {
                    seen.push(flow.orig.sport);
                }
            })
        })
        .map_err(|e| Error::Io {
            op: "capability probe dump",
            source: e,
        })?;
        if !seen.contains(&Decoy::None.port()) {
            return Err(Error::Invalid(
                "capability probe: the matching entry was filtered out",
            ));
        }
        Ok(Capabilities {
            proto: !seen.contains(&Decoy::Proto.port()),
            mark: !seen.contains(&Decoy::Mark.port()),
            status: !seen.contains(&Decoy::Status.port()),
            zone: !seen.contains(&Decoy::Zone.port()),
            probed: true,
        })
    })
}

const PROBE_MARK: u32 = 0x5a;
const PROBE_ZONE: u16 = 7;

/// The probe's entries: one matching every criterion, and one decoy per criterion.
#[derive(Clone, Copy)]
enum Decoy {
    None,
    Proto,
    Mark,
    Status,
    Zone,
}

impl Decoy {
    const ALL: [Decoy; 5] = [
        Decoy::None,
        Decoy::Proto,
        Decoy::Mark,
        Decoy::Status,
        Decoy::Zone,
    ];

    /// The source port that identifies the entry in the dump.
    fn port(self) -> u16 {
        1111 + self as u16
    }

    /// The entry: the matching one, changed in this decoy's criterion only.
    fn flow(self) -> NewFlow {
        use std::net::{IpAddr, Ipv4Addr};
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let l4 = if matches!(self, Decoy::Proto) {
            crate::proto::TCP
        } else {
            crate::proto::UDP
        };
        let tuple = Tuple::new(a, b, l4, self.port(), 2222);
        let mut flow = NewFlow {
            status: Status::SEEN_REPLY | Status::ASSURED,
            mark: PROBE_MARK,
            zone: PROBE_ZONE,
            ..NewFlow::symmetric(tuple, 60)
        };
        match self {
            Decoy::None | Decoy::Proto => {}
            Decoy::Mark => flow.mark = 0,
            Decoy::Status => flow.status = Status::SEEN_REPLY,
            Decoy::Zone => flow.zone = 0,
        }
        flow
    }
}
