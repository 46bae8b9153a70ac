//! One supervised component: a plain process in a network namespace, its output in a log file.
//!
//! Every (re)start appends to the same file, after a header line, so a test keeps the whole
//! history of a component that was killed and restarted. Children are spawned from one
//! long-lived thread with `PR_SET_PDEATHSIG`, so that a test process killed outright (SIGKILL,
//! a CI timeout) takes its etcd, kube-apiserver and kube-proxy with it instead of leaving them
//! running; an orderly end (drop, panic) stops them explicitly.

use anyhow::{Context, Result, bail};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// What to run, where, and with which environment.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    /// The component's name: its log file is `<name>.log`.
    pub name: String,
    /// The network namespace it runs in (`ip netns exec`).
    pub netns: String,
    /// The program (an absolute path).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Its whole environment besides `PATH`: components start from an empty environment, so
    /// nothing of the developer's shell (`KUBECONFIG`, `CONNTRACK_RECONCILER_*`) leaks in.
    pub env: Vec<(String, String)>,
    /// `PATH` for the process (`None`: the standard system directories).
    pub path: Option<String>,
}

/// The `PATH` components get unless told otherwise.
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running (or stopped) component; killed when dropped.
#[derive(Debug)]
pub struct Component {
    spec: ComponentSpec,
    log_path: PathBuf,
    child: Option<Child>,
    starts: u32,
    started_at: Instant,
}

type SpawnRequest = (
    Box<dyn FnOnce() -> std::io::Result<Child> + Send>,
    mpsc::Sender<std::io::Result<Child>>,
);

/// The thread every component is forked from. `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked the child ends, so it must be one that lives as long as the process.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("real-spawner".into())
            .spawn(move || {
                for (spawn, reply) in rx {
                    let _ = reply.send(spawn());
                }
            })
            .expect("spawning the component spawner thread");
        Mutex::new(tx)
    })
}

/// `ip`'s absolute path: components get their own `PATH`, which is also what `Command` would
/// search for the program, so `ip` is resolved against ours first.
fn ip_binary() -> PathBuf {
    for dir in SYSTEM_PATH.split(':') {
        let candidate = Path::new(dir).join("ip");
        if candidate.is_file() {
            return candidate;
        }
    }
    PathBuf::from("ip")
}

impl Component {
    /// Starts the component, logging to `<log_dir>/<name>.log`.
    pub fn start(spec: ComponentSpec, log_dir: &Path) -> Result<Self> {
        let log_path = log_dir.join(format!("{}.log", spec.name));
        let mut component = Self {
            spec,
            log_path,
            child: None,
            starts: 0,
            started_at: Instant::now(),
        };
        component.spawn()?;
        Ok(component)
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        writeln!(
            log,
            "==== {} start #{} at unix {} µs: {} {}",
            self.spec.name,
            self.starts,
            crate::timeline::unix_micros(),
            self.spec.program.display(),
            self.spec.args.join(" ")
        )?;
        let stderr = log.try_clone()?;
        let mut cmd = Command::new(ip_binary());
        cmd.args(["netns", "exec", &self.spec.netns])
            .arg(&self.spec.program)
            .args(&self.spec.args)
            .env_clear()
            .env("PATH", self.spec.path.as_deref().unwrap_or(SYSTEM_PATH))
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        spawner()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send((Box::new(move || cmd.spawn()), reply_tx))
            .map_err(|_| anyhow::anyhow!("the spawner thread is gone"))?;
        let child = reply_rx
            .recv()
            .context("the spawner thread is gone")?
            .with_context(|| format!("starting {}", self.spec.program.display()))?;
        self.child = Some(child);
        self.started_at = Instant::now();
        Ok(())
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// What it runs.
    pub fn spec(&self) -> &ComponentSpec {
        &self.spec
    }

    /// The process id (of the component itself: `ip netns exec` execs it), while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// When the current run started.
    pub fn started_at(&self) -> Instant {
        self.started_at
    }

    /// Its exit status, if it has exited (None while it runs or after [`Component::stop`]).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Whether it is running.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exit_status().is_none()
    }

    /// Sends a signal (e.g. `SIGSTOP`/`SIGCONT` to freeze it across a change).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("not running")?;
        let pid = i32::try_from(pid)?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        if unsafe { libc::kill(pid, signal) } != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    /// Freezes it (`SIGSTOP`).
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Thaws it (`SIGCONT`).
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps it. A no-op when it is not running.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on our own child; a stopped process gets SIGCONT so it can exit.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::kill(pid, libc::SIGCONT);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, at once (a crash, an OOM kill).
    pub fn kill(&mut self) {
        self.stop(Duration::ZERO);
    }

    /// Stops it (SIGTERM, `grace`) and starts it again with the same spec.
    pub fn restart(&mut self, grace: Duration) -> Result<()> {
        self.stop(grace);
        self.spawn()
    }

    /// Replaces the arguments used by the next (re)start.
    pub fn set_args(&mut self, args: Vec<String>) {
        self.spec.args = args;
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log (every run).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path, lines)
    }

    /// The log's current size: an offset for [`Component::wait_for_log`] to start from.
    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log_path).map_or(0, |m| m.len())
    }

    /// Polls `check` until it says done; fails when the component exits first or at `timeout`.
    /// Returns how long it took since the call.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<bool>,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last_error = None;
        loop {
            match check() {
                Ok(true) => return Ok(start.elapsed()),
                Ok(false) => {}
                Err(e) => last_error = Some(format!("{e:#}")),
            }
            if let Some(status) = self.exit_status() {
                bail!(
                    "{} exited ({status}) while waiting for {what}; last lines of {}:\n{}",
                    self.spec.name,
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} not {what} within {timeout:?} (last check error: {}); last lines of {}:\n{}",
                    self.spec.name,
                    last_error.as_deref().unwrap_or("none"),
                    self.log_path.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a log line written after byte `from` satisfies `pred`; returns that line.
    pub fn wait_for_log(
        &mut self,
        from: u64,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let path = self.log_path.clone();
        let mut offset = from;
        let mut partial = String::new();
        let mut found = None;
        self.wait_until("logging the expected line", timeout, || {
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            offset += bytes.len() as u64;
            partial.push_str(&String::from_utf8_lossy(&bytes));
            // Keep an unfinished last line for the next round.
            let complete = partial.rfind('\n').map_or(0, |i| i + 1);
            let text: String = partial.drain(..complete).collect();
            found = text.lines().find(|l| pred(l)).map(str::to_string);
            Ok(found.is_some())
        })?;
        found.context("no line")
    }
}

/// The last `lines` lines of a file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Component {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::testing::{TestNetns, root_or_skip};

    #[test]
    fn logs_survive_restarts_and_waits_see_exits() {
        if !root_or_skip("real::component") {
            return;
        }
        let ns = TestNetns::new("e2e-comp").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spec = ComponentSpec {
            name: "sh".into(),
            netns: ns.name().into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo hello $FOO $HOME; exec sleep 30".into()],
            env: vec![("FOO".into(), "bar".into())],
            path: None,
        };
        let mut c = Component::start(spec, dir.path()).unwrap();
        let line = c
            .wait_for_log(0, Duration::from_secs(5), |l| l.starts_with("hello"))
            .unwrap();
        // The environment is exactly what the spec says: no HOME from the test process.
        assert_eq!(line.trim_end(), "hello bar");
        assert!(c.running());
        c.pause().unwrap();
        c.resume().unwrap();
        let offset = c.log_len();
        c.restart(Duration::from_secs(1)).unwrap();
        c.wait_for_log(offset, Duration::from_secs(5), |l| l.starts_with("hello"))
            .unwrap();
        let log = c.log_text();
        assert_eq!(log.matches("==== sh start").count(), 2, "{log}");
        c.set_args(vec!["-c".into(), "echo bye; exit 3".into()]);
        c.restart(Duration::from_secs(1)).unwrap();
        let err = c
            .wait_until("never", Duration::from_secs(5), || Ok(false))
            .unwrap_err();
        assert!(format!("{err:#}").contains("exited"), "{err:#}");
        assert!(format!("{err:#}").contains("bye"), "{err:#}");
    }
}
