//! cargo xtask: lab, demo, bench, e2e-kind, manifests.
fn main() {}
