//! How a walk of both families is made: one `AF_UNSPEC` dump, or one kernel-filtered dump per
//! family.
//!
//! Every dump walks the whole kernel table whatever it asks for, so one dump of both families
//! saves a walk. But the kernel refuses a protocol filter without a family: an `AF_UNSPEC` dump
//! hands every TCP entry to user space too, and on a TCP-heavy table that costs more than the
//! second walk saves. The chooser measures the share of UDP entries in `AF_UNSPEC` dumps and
//! uses two filtered dumps while that share is low, measuring again now and then.

use ctnetlink::{DumpFilter, DumpStats, Family};

/// UDP share of the table above which one `AF_UNSPEC` dump beats two filtered ones (the
/// break-even measured by ctnetlink's `ct-family-bench` lies between 0.5 and 1; a walk costs
/// about a quarter of building and parsing every entry).
const UNSPEC_MIN_UDP_SHARE: f64 = 0.8;

/// After this many two-dump walks, one `AF_UNSPEC` walk measures the table again.
const REMEASURE_EVERY: u32 = 10;

/// Chooses the dumps of a walk from what earlier walks saw.
#[derive(Debug, Clone, Default)]
pub struct WalkChooser {
    /// Walks made with two filtered dumps since the last measurement; `None` while `AF_UNSPEC`
    /// is the choice.
    split_walks: Option<u32>,
}

impl WalkChooser {
    /// The dump filters of a walk over `family`'s UDP flows (`None`: both families).
    pub fn filters(&mut self, family: Option<Family>) -> Vec<DumpFilter> {
        let udp = ctnetlink::proto::UDP;
        if let Some(family) = family {
            return vec![DumpFilter::family_proto(family, udp)];
        }
        match &mut self.split_walks {
            Some(n) if *n < REMEASURE_EVERY => {
                *n += 1;
                vec![
                    DumpFilter::family_proto(Family::V4, udp),
                    DumpFilter::family_proto(Family::V6, udp),
                ]
            }
            _ => vec![DumpFilter::all_families_proto(udp)],
        }
    }

    /// Learns from a finished dump made with `filter`.
    pub fn observe(&mut self, filter: &DumpFilter, stats: &DumpStats) {
        if filter.family.is_some() || stats.messages == 0 {
            return;
        }
        let share = stats.matched as f64 / stats.messages as f64;
        self.split_walks = (share < UNSPEC_MIN_UDP_SHARE).then_some(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(messages: u64, matched: u64) -> DumpStats {
        DumpStats {
            messages,
            matched,
            ..DumpStats::default()
        }
    }

    #[test]
    fn a_udp_table_is_walked_once_a_tcp_heavy_one_per_family_and_measured_again() {
        let mut chooser = WalkChooser::default();
        let first = chooser.filters(None);
        assert_eq!(first.len(), 1, "the first walk measures");
        chooser.observe(&first[0], &stats(1000, 950));
        assert_eq!(chooser.filters(None).len(), 1);
        chooser.observe(&first[0], &stats(1000, 400));
        for _ in 0..REMEASURE_EVERY {
            assert_eq!(chooser.filters(None).len(), 2);
        }
        assert_eq!(chooser.filters(None).len(), 1, "measured again");
        assert_eq!(chooser.filters(Some(Family::V6)).len(), 1);
    }
}
