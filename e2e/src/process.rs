//! Child processes run inside lab namespaces, killed when dropped, with their output collected.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// Where the lab's own binaries are (`udp-echo`, `udp-client`).
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `udp-echo`.
    pub echo: PathBuf,
    /// `udp-client`.
    pub client: PathBuf,
}

impl Binaries {
    /// The binaries next to the running executable (for the lab's own binaries, e.g.
    /// `lab-demo`, which cargo builds into the same directory).
    pub fn beside_current_exe() -> Result<Self> {
        let exe = std::env::current_exe().context("locating the current executable")?;
        let mut dirs = exe.ancestors().skip(1);
        let found = dirs.find(|d| d.join("udp-echo").is_file() && d.join("udp-client").is_file());
        let dir = found.with_context(|| {
            format!(
                "udp-echo and udp-client not found near {}; run `cargo build -p e2e --bins`",
                exe.display()
            )
        })?;
        Ok(Self {
            echo: dir.join("udp-echo"),
            client: dir.join("udp-client"),
        })
    }
}

/// A line of output and when it was read (Unix µs).
pub type Line = (u64, String);

/// A running process; killed and reaped on drop.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<Line>>>,
}

impl Process {
    /// Starts `program args` inside network namespace `netns` with `ip netns exec`.
    ///
    /// Every stdout and stderr line is kept (see [`Process::lines`]) and passed to `on_line`.
    pub fn spawn_in(
        name: &str,
        netns: &str,
        program: &Path,
        args: &[String],
        on_line: impl Fn(&Line) + Send + Sync + 'static,
    ) -> Result<Self> {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} in {netns}", program.display()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let on_line = Arc::new(on_line);
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        for reader in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let lines = lines.clone();
            let on_line = on_line.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let Ok(line) = line else { break };
                    let entry = (crate::timeline::unix_micros(), line);
                    on_line(&entry);
                    lines.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines,
        })
    }

    /// The process's name in the lab.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Every line it printed so far.
    pub fn lines(&self) -> Vec<Line> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a printed line satisfies `pred`; fails if the process exits first.
    pub fn wait_for_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.lines().iter().any(|(_, l)| pred(l)) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before it was ready; output:\n{}",
                    self.name,
                    self.output_text()
                );
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "{} not ready within {timeout:?}; output:\n{}",
                    self.name,
                    self.output_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything it printed, one line each.
    pub fn output_text(&self) -> String {
        self.lines().iter().map(|(_, l)| format!("{l}\n")).collect()
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let (tx, rx) = mpsc::channel();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                let _ = tx.send(());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if rx.try_recv().is_err() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
