//! Which dump filters the running kernel really applies.
//!
//! The kernel silently ignores attributes it does not know, so a filter that an old kernel
//! does not implement looks accepted and simply returns everything. The probe therefore tests
//! each filter against known entries, in a private throwaway namespace, once per process.
//! When the probe cannot run (no `CAP_SYS_ADMIN` to create a namespace), the kernel version
//! decides, from the releases that introduced each filter.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use crate::conntrack::{Conntrack, Placement};
use crate::encode::KernelFilter;
use crate::error::Error;
use crate::model::{DumpFilter, Family, NewFlow, Status, Tuple, proto};
use crate::socket::{self, Netns};

/// Dump criteria the kernel applies itself. Criteria it cannot apply are applied in user
/// space, with the same result, at the cost of copying every entry out of the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Capabilities {
    /// L4 protocol through `CTA_FILTER` (Linux 5.8).
    pub proto: bool,
    /// Mark and mask through `CTA_MARK` + `CTA_MARK_MASK`.
    pub mark: bool,
    /// Status bits through `CTA_STATUS` + `CTA_STATUS_MASK` (Linux 5.15).
    pub status: bool,
    /// Zone through `CTA_ZONE` (Linux 6.8).
    pub zone: bool,
    /// True when a live probe decided; false when inferred from the kernel version.
    pub probed: bool,
}

impl Capabilities {
    /// No kernel-side filtering beyond the address family.
    pub const NONE: Capabilities = Capabilities {
        proto: false,
        mark: false,
        status: false,
        zone: false,
        probed: false,
    };

    /// The capabilities of the running kernel, probed on first use and then cached.
    pub fn get() -> Capabilities {
        static CACHED: OnceLock<Capabilities> = OnceLock::new();
        *CACHED.get_or_init(|| Self::probe().unwrap_or_else(|_| Self::from_running_kernel()))
    }

    /// Tests every filter against known entries in a private network namespace, with one dump.
    ///
    /// Every dump walks the kernel's whole conntrack hash table, all namespaces included, so on
    /// a node with a million entries each probe dump costs a third of a second or more. The probe
    /// therefore sends all four criteria at once, against one entry that matches them all and
    /// one decoy per criterion that differs from it in that criterion only: the decoys that come
    /// back name exactly the criteria the kernel ignored.
    pub fn probe() -> Result<Capabilities, Error> {
        socket::in_private_netns(|| {
            let mut ct =
                Conntrack::with_capabilities(socket::Home::open(Netns::Current)?, Self::NONE)?;
            let flows = probe_flows();
            let report = ct.create(&flows)?;
            if report.created != flows.len() as u64 {
                return Err(Error::Invalid(
                    "capability probe could not create its entries",
                ));
            }
            let filter = DumpFilter {
                family: Some(Family::V4),
                proto: Some(proto::UDP),
                mark: Some((0xff, PROBE_MARK)),
                status: Some((Status::ASSURED, Status::ASSURED)),
                zone: Some(PROBE_ZONE),
            };
            let all = KernelFilter {
                proto: true,
                mark: true,
                status: true,
                zone: true,
            };
            let mut seen = Vec::new();
            ct.dump_placed(&filter, Placement::KernelOnly(all), |flow| {
                seen.push(flow.orig.sport)
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

    /// The capabilities the running kernel's version implies (see [`Capabilities::from_release`]).
    pub fn from_running_kernel() -> Capabilities {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Self::from_release(release.trim())
    }

    /// The capabilities a kernel release such as `6.8.0-45-generic` implies.
    /// An unparsable release gets none.
    pub fn from_release(release: &str) -> Capabilities {
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|part| part.parse::<u32>().ok());
        let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
            return Self::NONE;
        };
        let at_least = |want: (u32, u32)| (major, minor) >= want;
        Capabilities {
            proto: at_least((5, 8)),
            mark: at_least((3, 0)),
            status: at_least((5, 15)),
            zone: at_least((6, 8)),
            probed: false,
        }
    }

    /// The criteria of `filter` to send to the kernel.
    pub(crate) fn kernel_filter(&self, filter: &DumpFilter) -> KernelFilter {
        KernelFilter {
            // CTA_FILTER needs a concrete family; the protocol is the only tuple field sent
            // (never addresses: the kernel compares IPv6 addresses inverted).
            proto: self.proto && filter.family.is_some() && filter.proto.is_some(),
            mark: self.mark && filter.mark.is_some(),
            // A zero mask is rejected by the kernel (EINVAL); user space handles it.
            status: self.status && filter.status.is_some_and(|(mask, _)| mask.0 != 0),
            zone: self.zone && filter.zone.is_some(),
        }
    }
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
        let a = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let l4 = if matches!(self, Decoy::Proto) {
            proto::TCP
        } else {
            proto::UDP
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

fn probe_flows() -> Vec<NewFlow> {
    Decoy::ALL.iter().map(|d| d.flow()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_the_versions_that_added_each_filter() {
        let caps = Capabilities::from_release("6.18.44-fc-v595");
        assert!(caps.proto && caps.mark && caps.status && caps.zone && !caps.probed);
        let caps = Capabilities::from_release("5.15.0-105-generic");
        assert!(caps.proto && caps.status && !caps.zone);
        let caps = Capabilities::from_release("5.4.0");
        assert!(!caps.proto && caps.mark && !caps.status);
        assert_eq!(Capabilities::from_release("garbage"), Capabilities::NONE);
    }

    #[test]
    fn ipv6_and_familyless_dumps_never_send_tuple_filters_without_a_family() {
        let caps = Capabilities::from_release("6.18");
        let familyless = DumpFilter {
            proto: Some(proto::UDP),
            ..DumpFilter::default()
        };
        assert!(!caps.kernel_filter(&familyless).proto);
        let zero_mask = DumpFilter {
            status: Some((Status::NONE, Status::NONE)),
            ..DumpFilter::default()
        };
        assert!(!caps.kernel_filter(&zero_mask).status);
    }
}
