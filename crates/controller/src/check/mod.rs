//! `conntrack-reconciler check`: one-shot diagnosis of this node's table.

pub mod state_files;
pub mod stats_output;

use crate::check::state_files::{ClusterState, StateObject};
use crate::check::stats_output::{StatsSampler, StatsSummary};
use crate::cli::{CheckArgs, FamilyArg, OutputFormat};
use crate::local_addrs::local_addrs;
use crate::pass::{PassConfig, PassReport, StaleFlow, run_pass};
use crate::watch::client::{self, SERVICE_LABELS, SLICE_LABELS};
use anyhow::{Context, Result};
use ctdiff::{Index, IndexConfig, Relist, Report};
use ctnetlink::{Conntrack, Family, Tuple};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;
use std::io::Write;
use std::sync::RwLock;
use std::time::Instant;

/// Runs `check`; output goes to `out`.
pub async fn run(args: CheckArgs, out: &mut dyn Write) -> Result<()> {
    let client = if args.state.is_empty() {
        Some(client::client(args.target.kubeconfig.as_deref()).await?)
    } else {
        None
    };
    let index = if let Some(client) = &client {
        let state = from_cluster(client.clone(), args.node_name.as_deref())
            .await
            .context("reading the desired state from the cluster")?;
        for warning in &state.warnings {
            tracing::warn!("{warning}");
        }
        build_index(&state, &args)?
    } else {
        index_files(&args)?
    };
    let netns = args.target.netns.clone();
    // Both families in one walk: every dump walks the whole table, whatever its family.
    let family = match args.target.family {
        FamilyArg::Ipv4 => Some(Family::V4),
        FamilyArg::Ipv6 => Some(Family::V6),
        FamilyArg::Both => None,
    };
    // From the cluster, a flow created after the list may go to a backend the list has not
    // seen: the first walk only reports, and what it finds is judged again against a second
    // list taken after the walk before anything is deleted (see `confirm_with_fresh_state`).
    let confirm = args.delete && client.is_some();
    let delete = args.delete && !confirm;
    let with_stats = args.stats;
    type Outcome = (PassReport, Option<StatsSummary>);
    let (report, summary) = tokio::task::spawn_blocking(move || -> Result<Outcome> {
        // One-shot: trust the kernel version for which filters to send rather than probe
        // (the probe walks the whole table once more; filters only save copying, see ctnetlink).
        let caps = ctnetlink::Capabilities::from_running_kernel();
        let mut ct =
            Conntrack::open(netns.as_deref(), caps).context("opening the conntrack table")?;
        let sampler = with_stats
            .then(|| StatsSampler::start(netns.as_deref()))
            .transpose()?;
        let index = RwLock::new(index);
        let now = Instant::now();
        let cfg = PassConfig {
            family,
            dry_run: !delete,
            budget: 0,
            zone: 0,
        };
        let report = run_pass(&mut ct, &index, None, &ctdiff::Dirty::all(), &cfg, now)
            .context("reading the conntrack table")?;
        let summary = match sampler {
            Some(sampler) => {
                let index = index
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                Some(sampler.finish(&report.tally, &index, now)?)
            }
            None => None,
        };
        Ok((report, summary))
    })
    .await
    .context("check task failed")??;
    let report = match (&client, confirm) {
        (Some(client), true) => {
            let fresh = from_cluster(client.clone(), args.node_name.as_deref())
                .await
                .context("reading the desired state from the cluster again before deleting")?;
            let fresh = build_index(&fresh, &args)?;
            let netns = args.target.netns.clone();
            tokio::task::spawn_blocking(move || confirm_with_fresh_state(report, &fresh, netns))
                .await
                .context("check task failed")??
        }
        _ => report,
    };
    let delete = args.delete;
    // Buffered: the report is written in many small pieces (a line each in JSON), and `out`
    // is usually the line-buffered stdout, a write(2) per line otherwise.
    let mut buffered = std::io::BufWriter::with_capacity(64 << 10, out);
    let printed = match args.output {
        OutputFormat::Json => print_json(&report, summary.as_ref(), &mut buffered),
        OutputFormat::Text => (|| -> Result<()> {
            print_text(&report, delete, &mut buffered)?;
            if let Some(summary) = &summary {
                summary.write_text(&mut buffered)?;
            }
            Ok(())
        })(),
    };
    // Flushed on every path, a failed print included: what was printed is not lost.
    let flushed = buffered.flush();
    printed?;
    flushed.context("writing the report")?;
    let failures = report.failed.len();
    if failures > 0 {
        anyhow::bail!("{failures} deletions failed");
    }
    Ok(())
}

/// Refuses state files written longer ago than `max_age`: a backend created since would look
/// gone. (A file read from a pipe has no age to check and is accepted.)
fn require_recent(files: &[std::path::PathBuf], max_age: std::time::Duration) -> Result<()> {
    for file in files {
        let Ok(meta) = std::fs::metadata(file) else {
            continue; // unreadable files were reported by the parser already
        };
        if !meta.is_file() {
            continue;
        }
        let age = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or_default();
        if age > max_age {
            anyhow::bail!(
                "refusing to delete on an old snapshot: {} was written {}s ago (more than \
                 --state-max-age {}s); pods created since would look gone. Dump it again right \
                 before --delete, or raise --state-max-age",
                file.display(),
                age.as_secs(),
                max_age.as_secs()
            );
        }
    }
    Ok(())
}

/// Keeps the reported flows that are still stale against `fresh` (a state listed after the
/// table walk, so it knows every backend those flows could have been sent to) and deletes them.
fn confirm_with_fresh_state(
    mut report: PassReport,
    fresh: &Index,
    netns: Option<std::path::PathBuf>,
) -> Result<PassReport> {
    let caps = ctnetlink::Capabilities::from_running_kernel();
    let mut ct = Conntrack::open(netns.as_deref(), caps).context("opening the conntrack table")?;
    let now = Instant::now();
    let before = report.stale.len();
    report.stale.retain(|s| {
        fresh
            .classify(&crate::pass::flow_ref(&s.flow), now)
            .is_stale()
    });
    report.recovered += (before - report.stale.len()) as u64;
    report
        .delete_stale(&mut ct)
        .context("deleting from the conntrack table")?;
    Ok(report)
}

/// The index of the objects `from_cluster` listed.
fn build_index(state: &ClusterState, args: &CheckArgs) -> Result<Index> {
    let node_name = this_node(state, args);
    let mut index = new_index(args, node_name.clone().unwrap_or_default());
    let now = Instant::now();
    let mut report = index.reset(&state.services, now);
    report.merge(index.reset(&state.slices, now));
    finish_index(index, state, node_name.as_deref(), report, args)
}

/// `check --state`: the files read straight into the index, each Service and EndpointSlice
/// applied as soon as it is decoded and then dropped, so that neither the files' text as
/// values nor their objects are ever held all at once.
fn index_files(args: &CheckArgs) -> Result<Index> {
    // The node's name may come from a Node object anywhere in the files, known only at the
    // end; Services and EndpointSlices do not depend on it (see `finish_index`).
    let mut index = new_index(args, args.node_name.clone().unwrap_or_default());
    let now = Instant::now();
    let mut services: Relist<Service> = Relist::default();
    let mut slices: Relist<EndpointSlice> = Relist::default();
    let mut report = Report::default();
    let state = ClusterState::from_files_with(&args.state, &mut |object| match object {
        StateObject::Service(svc) => {
            report.merge(index.relist(&mut services, svc, now));
        }
        StateObject::EndpointSlice(slice) => {
            report.merge(index.relist(&mut slices, slice, now));
        }
    })?;
    report.merge(index.finish_relist(services, now));
    report.merge(index.finish_relist(slices, now));
    // Deleting on a partial view deletes healthy flows; a report may show one, warned.
    if args.delete {
        state.require_complete()?;
        require_recent(&args.state, args.state_max_age)?;
    } else {
        for problem in state.incompleteness() {
            tracing::warn!("{problem}; `check --delete` refuses such state");
        }
    }
    for warning in &state.warnings {
        tracing::warn!("{warning}");
    }
    let node_name = this_node(&state, args);
    finish_index(index, &state, node_name.as_deref(), report, args)
}

/// The node judged: `--node-name`, else the state's only Node.
fn this_node(state: &ClusterState, args: &CheckArgs) -> Option<String> {
    args.node_name
        .clone()
        .or_else(|| match state.nodes.as_slice() {
            [only] => only.metadata.name.clone(),
            _ => None,
        })
}

fn new_index(args: &CheckArgs, node_name: String) -> Index {
    Index::new(IndexConfig {
        nodeport_addresses: args.target.nodeport_addresses.clone(),
        ..IndexConfig::new(node_name)
    })
}

/// Adds `state`'s Pods and Nodes of `node_name` (all of them without one) and the local
/// addresses; logs what the index skipped (`report`, plus its own).
///
/// From files the index was made before `node_name` was known, under the name `--node-name`
/// gave or none. The index reads a node name only to pick its Node and its Pods, so with a
/// name learnt from the files those are handed to it under the index's name: the same
/// objects, judged as the index would judge them under their own.
fn finish_index(
    mut index: Index,
    state: &ClusterState,
    node_name: Option<&str>,
    mut report: Report,
    args: &CheckArgs,
) -> Result<Index> {
    let now = Instant::now();
    let indexed = index.config().node_name.clone();
    let renamed = |name: Option<&str>| match (name, node_name) {
        (Some(name), Some(this)) if name == this => Some(indexed.clone()),
        (name, _) => name.map(str::to_owned),
    };
    let pods: Vec<Pod> = state
        .pods
        .iter()
        .filter(|p| {
            let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            node_name.is_none() || on.is_none() || on == node_name
        })
        .map(|p| {
            let mut pod = p.clone();
            if let Some(spec) = pod.spec.as_mut() {
                spec.node_name = renamed(spec.node_name.as_deref());
            }
            pod
        })
        .collect();
    report.merge(index.reset(&pods, now));
    for node in &state.nodes {
        if node_name.is_none() || node.metadata.name.as_deref() == node_name {
            let mut node = node.clone();
            node.metadata.name = renamed(node.metadata.name.as_deref());
            report.merge(index.apply_node(&node));
        }
    }
    for skipped in report.iter() {
        tracing::warn!("{skipped}");
    }
    let mut addrs = local_addrs(args.target.netns.as_deref()).context("listing local addresses")?;
    addrs.extend(args.node_ip.iter().copied());
    index.set_local_addrs(addrs);
    Ok(index)
}

async fn from_cluster(client: Client, node_name: Option<&str>) -> Result<ClusterState> {
    let mut state = ClusterState {
        services: list_all(
            Api::all(client.clone()),
            ListParams::default().labels(SERVICE_LABELS),
            "services",
        )
        .await?,
        slices: list_all(
            Api::all(client.clone()),
            ListParams::default().labels(SLICE_LABELS),
            "endpointslices",
        )
        .await?,
        ..Default::default()
    };
    if let Some(node) = node_name {
        state.nodes = list_all::<Node>(
            Api::all(client.clone()),
            ListParams::default().fields(&client::node_fields(node)),
            "nodes",
        )
        .await?;
        state.pods = list_all::<Pod>(
            Api::all(client),
            ListParams::default().fields(&client::pod_fields(node)),
            "pods",
        )
        .await?;
    } else {
        state.warnings.push(
            "no --node-name: hostPort pods and the Node's addresses are not considered".into(),
        );
    }
    Ok(state)
}

async fn list_all<K>(api: Api<K>, params: ListParams, what: &str) -> Result<Vec<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(500);
    loop {
        let page = api
            .list(&params)
            .await
            .with_context(|| format!("listing {what}"))?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// A tuple as printed: the addresses as strings (serde writes an address through a stack
/// buffer, no allocation per flow).
#[derive(Serialize)]
struct JsonTuple {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
}

impl From<&Tuple> for JsonTuple {
    fn from(t: &Tuple) -> Self {
        JsonTuple {
            src: t.src,
            dst: t.dst,
            sport: t.sport,
            dport: t.dport,
        }
    }
}

/// A stale flow as printed, borrowing from the report.
#[derive(Serialize)]
struct JsonStale<'a> {
    family: &'static str,
    service: &'a str,
    port: &'a str,
    reason: &'static str,
    orig: JsonTuple,
    reply: JsonTuple,
    timeout: u32,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    scanned: u64,
    stale: Vec<JsonStale<'a>>,
    deleted: u64,
    /// With `--stats` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<serde_json::Value>,
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "ipv4",
        Family::V6 => "ipv6",
    }
}

fn print_json(
    report: &PassReport,
    summary: Option<&StatsSummary>,
    out: &mut dyn Write,
) -> Result<()> {
    let doc = JsonReport {
        stats: summary.map(StatsSummary::to_json),
        scanned: report.scanned,
        deleted: report.deleted,
        stale: report
            .stale
            .iter()
            .map(|s| JsonStale {
                family: family_name(s.flow.family),
                service: &s.service,
                port: &s.port,
                reason: s.reason.as_str(),
                orig: (&s.flow.orig).into(),
                reply: (&s.flow.reply).into(),
                timeout: s.flow.timeout,
            })
            .collect(),
    };
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

fn print_text(report: &PassReport, deleting: bool, out: &mut dyn Write) -> Result<()> {
    let rows: Vec<&StaleFlow> = report.stale.iter().collect();
    if !rows.is_empty() {
        let table: Vec<[String; 7]> = rows
            .iter()
            .map(|s| {
                [
                    s.service.clone(),
                    if s.port.is_empty() {
                        "-".into()
                    } else {
                        s.port.clone()
                    },
                    sock(&s.flow.orig.src, s.flow.orig.sport),
                    sock(&s.flow.orig.dst, s.flow.orig.dport),
                    sock(&s.flow.reply.src, s.flow.reply.sport),
                    s.reason.to_string(),
                    format!("{}s", s.flow.timeout),
                ]
            })
            .collect();
        let header = [
            "SERVICE", "PORT", "CLIENT", "FRONTEND", "BACKEND", "REASON", "TIMEOUT",
        ]
        .map(String::from);
        let mut widths = header.clone().map(|h| h.len());
        for row in &table {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        for row in std::iter::once(&header).chain(&table) {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(out, "{}", line.join("  ").trim_end())?;
        }
    }
    let (scanned, deleted, gone) = (report.scanned, report.deleted, report.already_gone);
    let mut by_reason: Vec<(String, usize)> = Vec::new();
    for s in &rows {
        let reason = s.reason.to_string();
        match by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => by_reason.push((reason, 1)),
        }
    }
    let reasons: Vec<String> = by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
    let reasons = if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    };
    let action = if deleting {
        format!(
            "deleted {deleted}{}",
            if gone > 0 {
                format!(", {gone} already gone")
            } else {
                String::new()
            }
        )
    } else {
        "deleted none (run with --delete to delete them)".to_owned()
    };
    writeln!(
        out,
        "scanned {scanned} UDP flows: {} stale{reasons}; {action}",
        rows.len()
    )?;
    for (key, err) in &report.failed {
        writeln!(out, "delete failed for {}: {err}", key.orig)?;
    }
    Ok(())
}

fn sock(ip: &std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(*ip, port).to_string()
}
