//! `cargo xtask bench [netlink|diff|agent|lab]...`: every benchmark, then one performance table.
//!
//! Each benchmark is a release binary that measures its figures against a floor or a peer in
//! the same run and prints its own table to stderr and one JSON line to stdout; this command
//! runs them one after another (never concurrently: they share the kernel's conntrack table and
//! the machine's two cores), then condenses the JSON lines into one table of ratios and targets.
//! Needs root (namespaces, conntrack).

use crate::util;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::process::{Command, Stdio};

const ALL: [&str; 4] = ["netlink", "diff", "agent", "lab"];

/// Entry point of `cargo xtask bench`.
pub fn run(args: &[String]) -> Result<()> {
    let mut reps = 20usize;
    let mut what: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--lab-reps" => {
                reps = it
                    .next()
                    .context("--lab-reps needs a number")?
                    .parse()
                    .context("--lab-reps")?
            }
            name if ALL.contains(&name) => what.push(name),
            other => bail!("unknown benchmark {other:?}; choose from {ALL:?} or --lab-reps N"),
        }
    }
    if what.is_empty() {
        what = ALL.to_vec();
    }
    util::require_root("cargo xtask bench")?;
    build()?;
    let mut rows: Vec<Row> = Vec::new();
    for name in what {
        eprintln!("\n== bench {name} ==");
        match name {
            "netlink" => rows.extend(netlink_rows(&json_line(
                Command::new(release_example("ct-bench")).arg("--json"),
            )?)),
            "diff" => rows.extend(diff_rows(&json_line(
                Command::new(release_example("classify-bench")).arg("--json"),
            )?)),
            "agent" => rows.extend(agent_rows(&json_line(
                Command::new(release_bin("agent-bench")).arg("--json"),
            )?)),
            "lab" => rows.extend(lab_rows(&json_line(
                Command::new(release_bin("lab-bench")).args([
                    "--reps",
                    &reps.to_string(),
                    "--json",
                ]),
            )?)),
            _ => unreachable!("checked above"),
        }
    }
    println!("{}", render(&rows));
    Ok(())
}

fn build() -> Result<()> {
    let root = util::workspace_root();
    util::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "ctnetlink",
        "--features",
        "ctnetlink/testing",
        "--example",
        "ct-bench",
    ]))?;
    util::run(Command::new("cargo").current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "ctdiff",
        "--example",
        "classify-bench",
    ]))?;
    // The release agent and the lab's binaries, as `cargo xtask lab --bench` builds them.
    crate::lab::build_bench()
}

fn release_example(name: &str) -> std::path::PathBuf {
    util::workspace_root()
        .join("target/release/examples")
        .join(name)
}

fn release_bin(name: &str) -> std::path::PathBuf {
    util::workspace_root().join("target/release").join(name)
}

/// Runs a benchmark (its table on stderr) and parses the JSON line it prints on stdout.
fn json_line(cmd: &mut Command) -> Result<Value> {
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    parse_last_json(&String::from_utf8_lossy(&out.stdout))
}

fn parse_last_json(stdout: &str) -> Result<Value> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("the benchmark printed no JSON line")?;
    serde_json::from_str(line).context("the benchmark's JSON line")
}

/// One line of the final table.
#[derive(Debug, PartialEq)]
struct Row {
    area: &'static str,
    figure: String,
    value: String,
    target: &'static str,
    met: Option<bool>,
}

fn row(
    area: &'static str,
    figure: impl Into<String>,
    value: String,
    target: &'static str,
    met: Option<bool>,
) -> Row {
    Row {
        area,
        figure: figure.into(),
        value,
        target,
        met,
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn netlink_rows(v: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(r) = num(v, "ratio_dump_floor") {
        rows.push(row(
            "ctnetlink",
            "dump + parse / raw dump floor",
            format!("{r:.2}x"),
            "<= 1.10x",
            Some(r <= 1.10),
        ));
    }
    if let Some(r) = num(v, "ratio_dump_conntrack") {
        rows.push(row(
            "ctnetlink",
            "dump + parse / `conntrack -L`",
            format!("{r:.2}x"),
            "",
            None,
        ));
    }
    if let Some(d) = num(v, "delete_per_s") {
        rows.push(row(
            "ctnetlink",
            "batched delete, 16k scattered of the table",
            format!("{:.0}k/s", d / 1e3),
            ">= 250k/s",
            Some(d >= 250e3),
        ));
    }
    if let Some(f) = num(v, "fill_s") {
        rows.push(row(
            "ctnetlink",
            "fill the table (batched CT_NEW)",
            format!("{f:.1} s"),
            "<= 10 s",
            Some(f <= 10.0),
        ));
    }
    if let Some(k) = num(v, "dump_peak_rss_growth_kib") {
        let mib = k / 1024.0;
        rows.push(row(
            "ctnetlink",
            "RSS growth during a dump",
            format!("{mib:.1} MiB"),
            "<= 16 MiB",
            Some(mib <= 16.0),
        ));
    }
    rows
}

fn diff_rows(v: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(f) = num(v, "flows_per_sec") {
        rows.push(row(
            "ctdiff",
            "classifications per second, one core",
            format!("{:.1}M", f / 1e6),
            ">= 10M",
            Some(f >= 10e6),
        ));
    }
    if let Some(b) = num(v, "bytes_per_endpoint") {
        rows.push(row(
            "ctdiff",
            "index bytes per endpoint",
            format!("{b:.0}"),
            "<= 200",
            Some(b <= 200.0),
        ));
    }
    rows
}

fn agent_rows(v: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    if let Some(r) = num(v, "check_over_floor") {
        rows.push(row(
            "agent",
            "`check` wall time / raw dump floor",
            format!("{r:.2}x"),
            "<= 1.15x",
            Some(r <= 1.15),
        ));
    }
    if let Some(m) = num(v, "check_peak_rss_mib") {
        rows.push(row(
            "agent",
            "`check` peak RSS",
            format!("{m:.1} MiB"),
            "<= 48 MiB",
            Some(m <= 48.0),
        ));
    }
    if let (Some(p50), Some(p99)) = (num(v, "event_p50_ms"), num(v, "event_p99_ms")) {
        rows.push(row(
            "agent",
            "event path: stale NEW flow deleted, p50 / p99",
            format!("{p50:.2} / {p99:.2} ms"),
            "p99 <= 10 ms",
            Some(p99 <= 10.0),
        ));
    }
    if let Some(m) = num(v, "run_rss_mib") {
        rows.push(row(
            "agent",
            "`run` RSS, 10k services / 100k endpoints",
            format!("{m:.1} MiB"),
            "<= 96 MiB",
            Some(m <= 96.0),
        ));
    }
    if let Some(c) = num(v, "run_idle_cpu_percent") {
        rows.push(row(
            "agent",
            "`run` idle CPU",
            format!("{c:.2}%"),
            "~0",
            Some(c < 1.0),
        ));
    }
    rows
}

fn lab_rows(v: &Value) -> Vec<Row> {
    let mut rows = Vec::new();
    let Some(scenarios) = v.get("scenarios").and_then(Value::as_array) else {
        return rows;
    };
    for s in scenarios {
        let name = s.get("scenario").and_then(Value::as_str).unwrap_or("?");
        let p99 = s.pointer("/recovery_ms/p99").and_then(Value::as_u64);
        let target = s.get("target_ms").and_then(Value::as_u64).unwrap_or(0);
        let false_deletions = s
            .get("false_deletions")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let met = s
            .get("target_met")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            && false_deletions == 0;
        let value = match p99 {
            Some(p) => format!("{p} ms (target {target} ms), {false_deletions} false deletions"),
            None => format!("no recovery, {false_deletions} false deletions"),
        };
        rows.push(row(
            "lab",
            format!("recovery p99: {name}"),
            value,
            "<= lag + 250 ms, 0 false",
            Some(met),
        ));
    }
    rows
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from("| area | figure | value | target | met |\n|---|---|---|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.area, r.figure, r.value, r.target, met
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_from_each_benchmarks_json() {
        let netlink = parse_last_json("table on stdout?\n{\"ratio_dump_floor\":1.02,\"delete_per_s\":364000,\"fill_s\":2.4,\"dump_peak_rss_growth_kib\":0}\n").unwrap();
        let rows = netlink_rows(&netlink);
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|r| r.met == Some(true)), "{rows:?}");
        let agent =
            serde_json::json!({"check_over_floor": 1.3, "event_p99_ms": 3.0, "event_p50_ms": 0.1});
        let rows = agent_rows(&agent);
        assert_eq!(rows[0].met, Some(false), "1.3x misses 1.15x");
        assert_eq!(rows[1].met, Some(true));
        let lab = serde_json::json!({"scenarios": [
            {"scenario": "backend-deleted", "recovery_ms": {"p99": 300}, "target_ms": 1250, "target_met": true, "false_deletions": 0},
            {"scenario": "nodeport", "recovery_ms": {"p99": null}, "target_ms": 1250, "target_met": false, "false_deletions": 1}
        ]});
        let rows = lab_rows(&lab);
        assert_eq!(rows[0].met, Some(true));
        assert_eq!(rows[1].met, Some(false));
        assert!(rows[1].value.starts_with("no recovery"));
        let table = render(&rows);
        assert!(
            table.contains("| lab | recovery p99: backend-deleted | 300 ms"),
            "{table}"
        );
    }

    #[test]
    fn no_json_line_is_an_error() {
        assert!(parse_last_json("just a table\n").is_err());
    }
}
