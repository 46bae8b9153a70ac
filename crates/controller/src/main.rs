//! conntrack-reconciler: the node agent binary.
fn main() {}
