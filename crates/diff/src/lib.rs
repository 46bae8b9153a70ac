//! The stale-flow engine: Kubernetes state in, a verdict for every conntrack flow out.
