//! `conntrack-reconciler`: the node agent that deletes stale UDP conntrack entries.
//!
//! The binary is wiring: flags ([`cli`]), watches ([`watch`], [`feed`]), triggers
//! ([`scheduler`]), passes ([`pass`]), the event path ([`events`]), metrics and the admin server.
//! Decisions live in `ctdiff`; the kernel table in `ctnetlink`.

mod check;
mod cli;
mod events;
mod feed;
mod flow_tally;
mod heap;
mod http;
mod kube_client;
mod local_addrs;
mod logging;
mod metrics;
mod pass;
mod ratelimit;
mod run;
mod scheduler;
mod state_files;
mod stats_summary;
mod table_stats;
mod watch;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            cli::Command::Run(args) => run::run(args).await,
            cli::Command::Check(args) => check::run(args, &mut std::io::stdout().lock()).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
