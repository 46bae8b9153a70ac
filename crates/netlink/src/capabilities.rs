//! Which dump filters the running kernel applies.
//!
//! The kernel silently ignores attributes it does not know, so a filter that an old kernel
//! does not implement looks accepted and simply returns everything. Every criterion is
//! therefore applied again in user space, and these capabilities only decide which ones are
//! also sent to the kernel, to save copying unwanted entries out of it. The cheap answer comes
//! from the kernel version ([`Capabilities::from_running_kernel`]); a live test against known
//! entries is in the `testing` feature (`testing::probe_capabilities`), for tests and tools.

use crate::encode::KernelFilter;
use crate::model::DumpFilter;

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
    /// True when a live probe decided (`testing::probe_capabilities`); false when inferred
    /// from the kernel version.
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
            // CTA_FILTER needs a concrete family: with AF_UNSPEC the kernel refuses the whole
            // dump (EOPNOTSUPP, ctnetlink_parse_tuple_filter), so a dump of both families
            // filters the protocol in user space. The protocol is the only tuple field sent
            // (never addresses: the kernel compares IPv6 addresses inverted). Mark, status and
            // zone need no family and stay in the kernel for a dump of both families.
            proto: self.proto && filter.family.is_some() && filter.proto.is_some(),
            mark: self.mark && filter.mark.is_some(),
            // A zero mask is rejected by the kernel (EINVAL); user space handles it.
            status: self.status && filter.status.is_some_and(|(mask, _)| mask.0 != 0),
            zone: self.zone && filter.zone.is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, proto};

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
