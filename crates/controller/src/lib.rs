//! `conntrack-reconciler`: the node agent that deletes stale UDP conntrack entries.
//!
//! The library is wiring, grouped by concern: flags ([`cli`]); watches of the API server
//! ([`watch`]) and the task feeding them into the index ([`index_task`]); when passes run
//! ([`scheduler`]); passes over the table, their pure planner and the flow cache ([`pass`]); the
//! kernel event path ([`events`]); metrics ([`metrics`]), liveness and readiness ([`health`]) and
//! the admin server ([`http`]); the one-shot `check` command ([`check`]). Decisions live in
//! `ctdiff`; the kernel table in `ctnetlink`. The binary (`main.rs`) only parses flags and
//! starts a runtime.

#![warn(missing_docs)]

pub mod check;
pub mod cli;
pub mod events;
pub mod health;
pub mod heap;
pub mod http;
pub mod index_task;
pub mod local_addrs;
pub mod logging;
pub mod metrics;
pub mod pass;
pub mod ratelimit;
pub mod run;
pub mod scheduler;
#[cfg(test)]
mod test_fixtures;
pub mod watch;

/// Runs one parsed command line to completion on a two-worker runtime.
pub fn main_with(cli: cli::Cli) -> anyhow::Result<()> {
    logging::init(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        match cli.command {
            cli::Command::Run(args) => run::run(args).await,
            cli::Command::Check(args) => check::run(args, &mut std::io::stdout().lock()).await,
        }
    })
}
