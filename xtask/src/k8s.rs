//! `cargo xtask k8s`: real Kubernetes components built from source, pinned and cached.
//!
//! Each wrapper module under `e2e/k8s/` (go.mod and go.sum committed) pins one component set:
//! etcd, the v1.34 control plane + kube-proxy, and kube-proxy v1.31. The build runs with
//! `-mod=readonly`, so it never edits the committed files and a changed dependency cannot slip
//! in; only `--pin` rewrites them (with the network). Binaries land in a cache directory keyed
//! by the component version and a hash of go.mod, go.sum, the Go version and the build flags,
//! outside the work tree so that every checkout (and CI's fresh clone on the same machine)
//! shares them; a build whose binaries exist is skipped.
//!
//! Another program finds the binaries with `cargo xtask k8s --print-dir`: it builds what is
//! missing (progress on stderr) and prints one directory on stdout, laid out as
//! `etcd/etcd`, `v1.34/{kube-apiserver,kube-controller-manager,kube-proxy}`, `v1.31/kube-proxy`.

use crate::util;
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask k8s [--pin] [--print-dir] [--smoke] [etcd|v1.34|v1.31 ...]

  (no flag)    build the selected components (default: all) unless cached, print versions and paths
  --print-dir  the same, but print only the binaries directory on stdout (progress on stderr):
               <dir>/etcd/etcd, <dir>/v1.34/kube-{apiserver,controller-manager,proxy}, <dir>/v1.31/kube-proxy
  --pin        regenerate the wrappers' go.mod/go.sum from the versions in xtask/src/k8s.rs (network)
  --smoke      after building: start etcd in a fresh network namespace and check /health (root)

env: CONNTRACK_RECONCILER_K8S_CACHE overrides the cache directory
     (default: $XDG_CACHE_HOME or ~/.cache, then conntrack-reconciler/k8s)";

/// What a wrapper module builds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `k8s.io/kubernetes/cmd/*` at one tag. Its go.mod requires every staging module at
    /// `v0.0.0` and maps it to `./staging/...`; replaces only apply in the main module and the
    /// module zip has no `staging/`, so the wrapper replaces each with its published `v0.Y.Z`.
    Kube,
    /// `go.etcd.io/etcd/server/v3`, a `package main`; its own `../api` replaces are
    /// irrelevant because it requires the published v3.6.x modules anyway.
    Etcd,
}

/// One wrapper module.
struct Wrapper {
    /// Selector on the command line, and the name of its entry in the binaries directory.
    name: &'static str,
    /// The wrapper module's directory, relative to the workspace root.
    dir: &'static str,
    /// The wrapper's own module path.
    module: &'static str,
    kind: Kind,
    /// The upstream module that carries the components.
    main_module: &'static str,
    /// The version `--pin` writes; a build reads the version from the committed go.mod.
    pin: &'static str,
    /// Main packages recorded as `tool` directives.
    tools: &'static [&'static str],
    /// Extra `module@version` pins `--pin` applies after the tools.
    extra: &'static [&'static str],
}

const WRAPPERS: &[Wrapper] = &[
    Wrapper {
        name: "etcd",
        dir: "e2e/k8s/etcd",
        module: "example.invalid/conntrack-reconciler/k8sbin-etcd",
        kind: Kind::Etcd,
        main_module: "go.etcd.io/etcd/server/v3",
        pin: "v3.6.16",
        tools: &["go.etcd.io/etcd/server/v3"],
        extra: &[],
    },
    Wrapper {
        name: "v1.34",
        dir: "e2e/k8s/v1.34",
        module: "example.invalid/conntrack-reconciler/k8sbin-134",
        kind: Kind::Kube,
        main_module: "k8s.io/kubernetes",
        pin: "v1.34.12",
        tools: &[
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-proxy",
        ],
        extra: &[],
    },
    Wrapper {
        name: "v1.31",
        dir: "e2e/k8s/v1.31",
        module: "example.invalid/conntrack-reconciler/k8sbin-131",
        kind: Kind::Kube,
        main_module: "k8s.io/kubernetes",
        pin: "v1.31.4",
        tools: &["k8s.io/kubernetes/cmd/kube-proxy"],
        extra: &[],
    },
];

/// Parsed command line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    pin: bool,
    print_dir: bool,
    smoke: bool,
    /// Indices into `WRAPPERS`, in `WRAPPERS` order; all when none was named.
    selected: Vec<usize>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options::default();
    for arg in args {
        match arg.as_str() {
            "--pin" => opts.pin = true,
            "--print-dir" => opts.print_dir = true,
            "--smoke" => opts.smoke = true,
            "-h" | "--help" => bail!("{USAGE}"),
            name => {
                let index = WRAPPERS
                    .iter()
                    .position(|w| w.name == name || w.name.trim_start_matches('v') == name)
                    .with_context(|| format!("unknown component set {name:?}\n{USAGE}"))?;
                if !opts.selected.contains(&index) {
                    opts.selected.push(index);
                }
            }
        }
    }
    if opts.selected.is_empty() {
        opts.selected = (0..WRAPPERS.len()).collect();
    }
    opts.selected.sort_unstable();
    Ok(opts)
}

/// Entry point of `cargo xtask k8s`.
pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    require_go()?;
    let root = util::workspace_root();
    let cache = cache_dir()?;
    let wrappers: Vec<&Wrapper> = opts.selected.iter().map(|&i| &WRAPPERS[i]).collect();

    if opts.pin {
        for w in &wrappers {
            let started = Instant::now();
            pin(&root, w)?;
            eprintln!("k8s: pinned {} in {}", w.dir, secs(started.elapsed()));
        }
    }

    let mut built = Vec::new();
    for w in &wrappers {
        let started = Instant::now();
        let b = build(&root, &cache, w)?;
        let how = if b.fresh { "built" } else { "cached" };
        eprintln!(
            "k8s: {} {} {} in {} -> {}",
            w.name,
            b.version,
            how,
            secs(started.elapsed()),
            b.bin.display()
        );
        built.push(b);
    }
    let set = link_set(&cache, &built)?;

    if opts.print_dir {
        println!("{}", set.display());
    } else {
        for b in &built {
            for binary in &b.binaries {
                let path = b.bin.join(binary);
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                println!(
                    "{:<28} {:>6.1} MiB  {}",
                    format!("{}/{binary}", b.name),
                    size as f64 / (1024.0 * 1024.0),
                    path.display()
                );
                println!("    {}", version_of(&path)?.replace('\n', "\n    "));
            }
        }
        println!("binaries: {}", set.display());
    }

    if opts.smoke {
        let etcd = built.iter().find(|b| b.name == "etcd");
        let etcd = etcd.context("--smoke needs the etcd component set")?;
        smoke_etcd(&etcd.bin.join("etcd"))?;
    }
    Ok(())
}

/// Fails with a line saying how to get Go when there is none.
fn require_go() -> Result<()> {
    if !util::have("go") {
        bail!(
            "go is not on PATH: the real Kubernetes components are built from source with Go >= \
             1.26 (e.g. the golang-go package of a recent distribution, or https://go.dev/dl/)"
        );
    }
    Ok(())
}

/// Where built binaries are kept: shared by every checkout of the repository on this machine.
fn cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CONNTRACK_RECONCILER_K8S_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache"),
    };
    Ok(base.join("conntrack-reconciler/k8s"))
}

/// A `go` command in `dir` with the settings every call shares: the installed toolchain only
/// (never a download), no workspace file from an outer directory, static binaries like upstream.
fn go(dir: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.current_dir(dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0");
    cmd
}

/// Runs a command and returns its stdout; stderr is passed through.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Runs a command with its stdout sent to our stderr, so `--print-dir` keeps stdout clean.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let stdout = output(cmd)?;
    eprint!("{stdout}");
    Ok(())
}

/// `go mod edit -json` of a go.mod file.
fn mod_json(dir: &Path, gomod: &Path) -> Result<Value> {
    let text = output(go(dir).args(["mod", "edit", "-json"]).arg(gomod))?;
    serde_json::from_str(&text).with_context(|| format!("go mod edit -json {}", gomod.display()))
}

/// `v1.34.12` -> `v0.34.12`: the tag of the staging modules released with a Kubernetes tag.
fn staging_version(version: &str) -> Result<String> {
    let rest = version
        .strip_prefix("v1.")
        .with_context(|| format!("not a Kubernetes v1.Y.Z version: {version}"))?;
    Ok(format!("v0.{rest}"))
}

/// The GODEBUG default the upstream module builds its binaries with: its own `godebug default=`
/// line, else its go line (GODEBUG defaults follow the main module, so the wrapper must carry it).
fn upstream_godebug(upstream: &Value) -> Result<String> {
    if let Some(list) = upstream["GoDebug"].as_array() {
        for entry in list {
            if entry["Key"] == "default" {
                let value = entry["Value"].as_str().context("godebug value")?;
                return Ok(value.to_string());
            }
        }
    }
    let go_line = upstream["Go"]
        .as_str()
        .context("upstream go.mod has no go line")?;
    let minor: Vec<&str> = go_line.split('.').take(2).collect();
    Ok(format!("go{}", minor.join(".")))
}

/// Rewrites a wrapper's go.mod and go.sum from `w.pin` (network; `-mod=mod` semantics).
fn pin(root: &Path, w: &Wrapper) -> Result<()> {
    let dir = root.join(w.dir);
    std::fs::create_dir_all(&dir)?;
    eprintln!("k8s: pinning {} at {} {}", w.dir, w.main_module, w.pin);
    // A go line below every upstream one: `go get` raises it to what the components require.
    std::fs::write(
        dir.join("go.mod"),
        format!("module {}\n\ngo 1.24.0\n", w.module),
    )?;
    let _ = std::fs::remove_file(dir.join("go.sum"));

    let download = output(
        go(&dir)
            .args(["mod", "download", "-json"])
            .arg(format!("{}@{}", w.main_module, w.pin)),
    )?;
    let download: Value = serde_json::from_str(&download).context("go mod download -json")?;
    let upstream_mod = download["GoMod"]
        .as_str()
        .context("go mod download gave no GoMod")?;
    let upstream = mod_json(&dir, Path::new(upstream_mod))?;

    let mut edit = go(&dir);
    edit.args(["mod", "edit"])
        .arg(format!("-godebug=default={}", upstream_godebug(&upstream)?));
    if w.kind == Kind::Kube {
        let staging = staging_version(w.pin)?;
        let replaces = upstream["Replace"]
            .as_array()
            .context("upstream replaces")?;
        let mut count = 0;
        for r in replaces {
            let (old, new) = (&r["Old"]["Path"], &r["New"]["Path"]);
            let (Some(old), Some(new)) = (old.as_str(), new.as_str()) else {
                continue;
            };
            if new.starts_with("./staging/") {
                edit.arg(format!("-replace={old}={old}@{staging}"));
                count += 1;
            }
        }
        if count == 0 {
            bail!("{upstream_mod} has no ./staging replaces: has the layout changed?");
        }
        eprintln!("k8s: {count} staging modules replaced at {staging}");
    }
    run_quiet(&mut edit)?;

    let mut get = go(&dir);
    get.args(["get", "-tool"]);
    for tool in w.tools {
        get.arg(format!("{tool}@{}", w.pin));
    }
    run_quiet(&mut get)?;
    if !w.extra.is_empty() {
        run_quiet(go(&dir).arg("get").args(w.extra))?;
    }
    run_quiet(go(&dir).args(["mod", "tidy"]))?;
    // The one place `-mod=mod` is allowed: complete go.sum with every module the build loads
    // (the package list itself is of no interest).
    output(
        go(&dir)
            .args(["list", "-mod=mod", "-deps", "-tags", "selinux,notest"])
            .args(w.tools),
    )
    .map(drop)
}

/// What a built (or cached) wrapper provides.
struct Built {
    name: &'static str,
    version: String,
    /// Directory holding the binaries.
    bin: PathBuf,
    binaries: Vec<String>,
    /// Whether this run built them (false: found in the cache).
    fresh: bool,
}

/// The committed pins of a wrapper, read from its go.mod.
struct Pins {
    version: String,
    tools: Vec<String>,
}

fn read_pins(dir: &Path, w: &Wrapper) -> Result<Pins> {
    let gomod = dir.join("go.mod");
    if !gomod.is_file() {
        bail!(
            "{} is missing: run `cargo xtask k8s --pin {}`",
            gomod.display(),
            w.name
        );
    }
    let json = mod_json(dir, &gomod)?;
    let version = json["Require"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["Path"] == w.main_module)
        .and_then(|r| r["Version"].as_str())
        .with_context(|| format!("{} does not require {}", gomod.display(), w.main_module))?
        .to_string();
    let tools: Vec<String> = json["Tool"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["Path"].as_str().map(str::to_string))
        .collect();
    if tools.is_empty() {
        bail!("{} has no tool directives", gomod.display());
    }
    Ok(Pins { version, tools })
}

/// The binary a main package builds to.
fn binary_name(w: &Wrapper, tool: &str) -> String {
    match w.kind {
        Kind::Etcd => "etcd".to_string(),
        Kind::Kube => tool.rsplit('/').next().unwrap_or(tool).to_string(),
    }
}

/// `go build` arguments after `build`, without the output and the packages.
fn build_flags(w: &Wrapper, version: &str) -> Result<Vec<String>> {
    // `-s -w` as upstream: the binaries are several times smaller without symbol tables.
    let mut ldflags = String::from("-s -w");
    let mut flags = vec!["-mod=readonly".to_string(), "-trimpath".to_string()];
    if w.kind == Kind::Kube {
        // hack/lib/golang.sh builds every binary with these tags; hack/lib/version.sh sets the
        // version variables, so `--version`, /version and log banners show the real tag.
        flags.extend(["-tags".to_string(), "selinux,notest".to_string()]);
        let minor = version
            .split('.')
            .nth(1)
            .with_context(|| format!("bad version {version}"))?;
        for pkg in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (key, value) in [
                ("gitVersion", version),
                ("gitMajor", "1"),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
            ] {
                ldflags.push_str(&format!(" -X {pkg}.{key}={value}"));
            }
        }
    }
    flags.push(format!("-ldflags={ldflags}"));
    Ok(flags)
}

/// Builds a wrapper's binaries into the cache unless they are there already.
fn build(root: &Path, cache: &Path, w: &Wrapper) -> Result<Built> {
    let dir = root.join(w.dir);
    let pins = read_pins(&dir, w)?;
    let flags = build_flags(w, &pins.version)?;
    let go_version = output(go(&dir).args(["env", "GOVERSION", "GOOS", "GOARCH"]))?;

    let mut hasher = Fnv64::default();
    for part in [
        std::fs::read(dir.join("go.mod"))?,
        std::fs::read(dir.join("go.sum")).context("go.sum of the wrapper")?,
        go_version.into_bytes(),
        flags.join(" ").into_bytes(),
    ] {
        hasher.write(&part);
        hasher.write(&[0xff]);
    }
    let key = format!("{}-{}-{:016x}", w.name, pins.version, hasher.finish());
    let out = cache.join(&key);
    let bin = out.join("bin");
    let binaries: Vec<String> = pins.tools.iter().map(|t| binary_name(w, t)).collect();
    let mut built = Built {
        name: w.name,
        version: pins.version.clone(),
        bin: bin.clone(),
        binaries,
        fresh: false,
    };
    if built.binaries.iter().all(|b| bin.join(b).is_file()) {
        return Ok(built);
    }

    // Build next to the final place and rename: a concurrent or interrupted build never
    // leaves a half-written directory under the key.
    let tmp = cache.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("bin"))?;
    eprintln!(
        "k8s: building {} {} ({})",
        w.name,
        pins.version,
        pins.tools.join(" ")
    );
    for (tool, binary) in pins.tools.iter().zip(&built.binaries) {
        // One package per call, so each binary gets its name whatever its import path.
        let started = Instant::now();
        let mut cmd = go(&dir);
        cmd.arg("build")
            .args(&flags)
            .arg("-o")
            .arg(tmp.join("bin").join(binary))
            .arg(tool);
        if let Err(err) = run_quiet(&mut cmd) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(err);
        }
        eprintln!("k8s:   {binary} in {}", secs(started.elapsed()));
    }
    match std::fs::rename(&tmp, &out) {
        Ok(()) => {}
        // Someone else finished the same key first: theirs is as good as ours.
        Err(_) if built.binaries.iter().all(|b| bin.join(b).is_file()) => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(_) => {
            // A stale partial directory under the key (from before the rename scheme): replace it.
            std::fs::remove_dir_all(&out).ok();
            std::fs::rename(&tmp, &out)
                .with_context(|| format!("moving {} to {}", tmp.display(), out.display()))?;
        }
    }
    built.fresh = true;
    Ok(built)
}

/// A directory of relative symlinks, one per component set, named after the set: the one path
/// `--print-dir` hands out. Named by a hash of the keys it points to, so two checkouts with
/// different pins never fight over it.
fn link_set(cache: &Path, built: &[Built]) -> Result<PathBuf> {
    let mut hasher = Fnv64::default();
    for b in built {
        hasher.write(b.name.as_bytes());
        hasher.write(b.bin.as_os_str().as_encoded_bytes());
        hasher.write(&[0xff]);
    }
    let set = cache.join(format!("set-{:016x}", hasher.finish()));
    if built.iter().all(|b| set.join(b.name).is_dir()) {
        return Ok(set);
    }
    let tmp = cache.join(format!("set.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for b in built {
        let key_dir = b
            .bin
            .parent()
            .and_then(Path::file_name)
            .context("cache layout")?;
        let target = Path::new("..").join(key_dir).join("bin");
        std::os::unix::fs::symlink(&target, tmp.join(b.name))?;
    }
    if std::fs::rename(&tmp, &set).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        if !built.iter().all(|b| set.join(b.name).is_dir()) {
            bail!("could not create {}", set.display());
        }
    }
    Ok(set)
}

/// The first lines of `BINARY --version`.
fn version_of(binary: &Path) -> Result<String> {
    let out = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    if !out.status.success() {
        bail!("{} --version failed: {}", binary.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Starts etcd in a network namespace of its own, on an address inside it, with a tmpfs data
/// dir; checks `/health`; stops it and removes everything.
fn smoke_etcd(etcd: &Path) -> Result<()> {
    util::require_root("cargo xtask k8s --smoke")?;
    let ns = format!("ctr-k8s-smoke-{}", std::process::id());
    let data = PathBuf::from(format!("/dev/shm/{ns}-etcd"));
    struct Cleanup<'a> {
        ns: &'a str,
        data: &'a Path,
        child: Option<std::process::Child>,
    }
    impl Drop for Cleanup<'_> {
        fn drop(&mut self) {
            if let Some(child) = &mut self.child {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = Command::new("ip").args(["netns", "del", self.ns]).status();
            let _ = std::fs::remove_dir_all(self.data);
        }
    }
    let mut cleanup = Cleanup {
        ns: &ns,
        data: &data,
        child: None,
    };
    let addr = "192.0.2.10";
    util::run(Command::new("ip").args(["netns", "add", &ns]))?;
    for args in [
        vec!["link", "set", "lo", "up"],
        // A veth pair inside the namespace (no dummy module on every kernel) gives etcd a
        // non-loopback address, as the control plane's namespace will have.
        vec!["link", "add", "cp0", "type", "veth", "peer", "name", "cp1"],
        vec!["addr", "add", "192.0.2.10/24", "dev", "cp0"],
        vec!["link", "set", "cp0", "up"],
        vec!["link", "set", "cp1", "up"],
    ] {
        util::run(Command::new("ip").args(["-n", &ns]).args(&args))?;
    }
    let url = format!("http://{addr}:2379");
    let started = Instant::now();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(etcd)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--log-level=warn", "--unsafe-no-fsync"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting etcd")?;
    cleanup.child = Some(child);
    let health = loop {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "curl", "-fsS", "--max-time", "2"])
            .arg(format!("{url}/health"))
            .output()?;
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        if let Some(child) = &mut cleanup.child
            && let Some(status) = child.try_wait()?
        {
            bail!("etcd exited before answering /health: {status}");
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("etcd did not answer {url}/health within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !health.contains(r#""health":"true""#) {
        bail!("etcd /health: {health}");
    }
    println!(
        "smoke: etcd in netns {ns} on {url} answered /health {health} after {}",
        secs(started.elapsed())
    );
    drop(cleanup);
    if Path::new("/run/netns").join(&ns).exists() || data.exists() {
        bail!("smoke cleanup left {ns} or {} behind", data.display());
    }
    println!("smoke: etcd stopped, namespace and data dir removed");
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// FNV-1a, 64 bits: a cache key that is stable across Rust releases (unlike `DefaultHasher`)
/// without a hashing dependency. Not a security boundary: the key only names a directory.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_selection_and_flags() {
        let all = parse(&[]).unwrap();
        assert_eq!(all.selected, vec![0, 1, 2]);
        let some = parse(&strings(&["--print-dir", "1.31", "etcd", "v1.31"])).unwrap();
        assert!(some.print_dir && !some.pin && !some.smoke);
        assert_eq!(some.selected, vec![0, 2]);
        assert!(parse(&strings(&["v1.99"])).is_err());
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        let hash = |s: &str| {
            let mut h = Fnv64::default();
            h.write(s.as_bytes());
            h.finish()
        };
        assert_eq!(hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn staging_modules_follow_the_kubernetes_tag() {
        assert_eq!(staging_version("v1.34.12").unwrap(), "v0.34.12");
        assert!(staging_version("v3.6.16").is_err());
    }

    #[test]
    fn godebug_comes_from_the_upstream_line_else_its_go_version() {
        let with =
            serde_json::json!({"Go": "1.25.0", "GoDebug": [{"Key": "default", "Value": "go1.24"}]});
        assert_eq!(upstream_godebug(&with).unwrap(), "go1.24");
        let without = serde_json::json!({"Go": "1.22.0"});
        assert_eq!(upstream_godebug(&without).unwrap(), "go1.22");
    }

    #[test]
    fn kube_builds_carry_the_version_and_upstream_tags() {
        let flags = build_flags(&WRAPPERS[1], "v1.34.12").unwrap();
        let joined = flags.join(" ");
        assert!(joined.contains("-mod=readonly"), "{joined}");
        assert!(joined.contains("-tags selinux,notest"), "{joined}");
        assert!(joined.contains("-X k8s.io/component-base/version.gitVersion=v1.34.12"));
        assert!(joined.contains("-X k8s.io/client-go/pkg/version.gitMinor=34"));
        assert_eq!(
            binary_name(&WRAPPERS[0], "go.etcd.io/etcd/server/v3"),
            "etcd"
        );
        assert_eq!(
            binary_name(&WRAPPERS[1], "k8s.io/kubernetes/cmd/kube-proxy"),
            "kube-proxy"
        );
    }

    /// The committed wrappers are what `--pin` would write from the constants above: same
    /// version, same tools, every staging replace at the matching v0.Y.Z, a godebug line.
    /// Read as text so the test needs no Go.
    #[test]
    fn committed_wrappers_match_the_pins() {
        let root = util::workspace_root();
        for w in WRAPPERS {
            let gomod = std::fs::read_to_string(root.join(w.dir).join("go.mod"))
                .unwrap_or_else(|e| panic!("{}/go.mod: {e}", w.dir));
            assert!(
                root.join(w.dir).join("go.sum").is_file(),
                "{}/go.sum",
                w.dir
            );
            assert!(
                gomod.contains(&format!("module {}\n", w.module)),
                "{}",
                w.dir
            );
            // The upstream GODEBUG defaults: etcd v3.6.16's go line, v1.34's own godebug
            // line (not its go line, 1.25), v1.31's go line (it has no godebug line).
            let godebug = match w.name {
                "etcd" => "go1.26",
                "v1.34" => "go1.24",
                "v1.31" => "go1.22",
                other => panic!("no expected godebug for {other}"),
            };
            let line = format!("\ngodebug default={godebug}\n");
            assert!(gomod.contains(&line), "{}: {line:?}", w.dir);
            let requires = format!("\t{} {}", w.main_module, w.pin);
            let single = format!("require {} {}", w.main_module, w.pin);
            assert!(
                gomod.contains(&requires) || gomod.contains(&single),
                "{}: {} {}",
                w.dir,
                w.main_module,
                w.pin
            );
            for tool in w.tools {
                let line = gomod
                    .lines()
                    .any(|l| l.trim() == *tool || l.trim() == format!("tool {tool}"));
                assert!(line, "{}: tool {tool}", w.dir);
            }
            if w.kind == Kind::Kube {
                let staging = staging_version(w.pin).unwrap();
                let replaces: Vec<&str> = gomod.lines().filter(|l| l.contains(" => ")).collect();
                assert!(
                    replaces.len() >= 30,
                    "{}: {} replaces",
                    w.dir,
                    replaces.len()
                );
                for r in replaces {
                    let parts: Vec<&str> = r.split_whitespace().collect();
                    let (old, new, version) = match parts.as_slice() {
                        ["replace", old, "=>", new, version] | [old, "=>", new, version] => {
                            (*old, *new, *version)
                        }
                        _ => panic!("{}: unexpected replace {r:?}", w.dir),
                    };
                    assert!(old.starts_with("k8s.io/") && old == new, "{}: {r}", w.dir);
                    assert_eq!(version, staging, "{}: {r}", w.dir);
                }
            }
        }
    }
}
