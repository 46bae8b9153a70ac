//! `cargo xtask`: developer commands that are more than one cargo call.
//!
//! Kept to `std` + `anyhow` so that it compiles in seconds. Each command lives in its own module.

mod bench;
mod demo;
mod helm;
mod image;
mod k8s;
mod kind;
mod lab;
mod manifests;
mod prereqs;
#[allow(dead_code)] // shared helpers; not every command uses every one
mod util;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  lab [scenario...]   run the node-lab scenarios (root)
  demo                the headline scenario, without then with the reconciler (root)
  bench [what...]     run the benchmarks and print one performance table (root)
  e2e-kind            kind clusters against old and new kube-proxy (needs docker + kind)
  helm [--print-path|lint]
                      build the pinned helm from its Go module (cached); lint the chart
  image               build the container image (needs docker)
  k8s [--print-dir] [--pin] [--smoke] [etcd|v1.34|v1.31...]
                      build the real etcd/kube-* binaries from source (needs Go), cached
  manifests [--image IMAGE] [--check]
                      render the kustomize base with an image, or validate it offline
  prereqs [demo|test] check (and as root on Debian/Ubuntu, install) what make demo/test need
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        bail!("no command given");
    };
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "lab" => lab::run(&rest),
        "demo" => demo::run(&rest),
        "bench" => bench::run(&rest),
        "e2e-kind" => kind::run(&rest),
        "helm" => helm::run(&rest),
        "image" => image::run(&rest),
        "k8s" => k8s::run(&rest),
        "manifests" => manifests::run(&rest),
        "prereqs" => prereqs::run(&rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            eprint!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}
