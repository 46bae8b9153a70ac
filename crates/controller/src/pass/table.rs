//! The kernel table as a pass sees it: walk it, delete from it. A trait so that passes are
//! tested against an in-memory [`FakeTable`] without root; [`ctnetlink::Conntrack`] is the real
//! one.

use ctnetlink::{Conntrack, DeleteReport, DumpFilter, DumpStats, Flow, FlowKey};

/// What a pass needs of a conntrack table.
pub trait Table {
    /// Hands every flow matching `filter` to `f`; returns what the dump saw.
    fn walk(
        &mut self,
        filter: &DumpFilter,
        f: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ctnetlink::Error>;

    /// Deletes the entries with these exact keys.
    fn delete(&mut self, keys: Vec<FlowKey>) -> Result<DeleteReport, ctnetlink::Error>;
}

impl Table for Conntrack {
    fn walk(
        &mut self,
        filter: &DumpFilter,
        f: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ctnetlink::Error> {
        self.dump(filter, f)
    }

    fn delete(&mut self, keys: Vec<FlowKey>) -> Result<DeleteReport, ctnetlink::Error> {
        Conntrack::delete(self, keys)
    }
}

/// An in-memory table for tests: walks hand out its flows in order (repeats included, as a
/// kernel dump may), deletes remove them by exact key.
#[derive(Debug, Default, Clone)]
pub struct FakeTable {
    /// The entries, in walk order.
    pub flows: Vec<Flow>,
    /// How many walks were made.
    pub walks: usize,
    /// Every key asked to be deleted, in order.
    pub delete_requests: Vec<FlowKey>,
}

impl FakeTable {
    /// A table holding `flows`.
    pub fn new(flows: Vec<Flow>) -> Self {
        FakeTable {
            flows,
            ..FakeTable::default()
        }
    }
}

impl Table for FakeTable {
    fn walk(
        &mut self,
        filter: &DumpFilter,
        f: &mut dyn FnMut(&Flow),
    ) -> Result<DumpStats, ctnetlink::Error> {
        self.walks += 1;
        let mut stats = DumpStats::default();
        for flow in &self.flows {
            if filter.family.is_none_or(|fam| fam == flow.family) {
                stats.messages += 1;
            }
            if filter.matches(flow) {
                stats.matched += 1;
                f(flow);
            }
        }
        Ok(stats)
    }

    fn delete(&mut self, keys: Vec<FlowKey>) -> Result<DeleteReport, ctnetlink::Error> {
        let mut report = DeleteReport::default();
        for key in keys {
            self.delete_requests.push(key);
            let before = self.flows.len();
            self.flows.retain(|f| f.key() != key);
            if self.flows.len() < before {
                report.deleted += 1;
            } else {
                report.already_gone += 1;
            }
        }
        Ok(report)
    }
}
