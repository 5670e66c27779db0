//! The processes the soak runs and breaks: the relay binary's two commands, a PostgreSQL cluster
//! and a Tansu broker of its own (never the tests' or the demo's).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use tokio::process::{Child, Command};
use tracing::warn;
use tributary_testkit::http::wait_for_status;

/// How long a SIGTERMed process may take to exit before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(30);

/// A `tributary-relay` command, started again and again with the same arguments.
pub struct Relay {
    pub name: &'static str,
    binary: PathBuf,
    arguments: Vec<OsString>,
    /// Its /readyz, /metrics… address.
    pub address: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
}

impl Relay {
    pub fn new(name: &'static str, binary: &Path, arguments: Vec<OsString>, address: SocketAddr, log: PathBuf) -> Self {
        Relay { name, binary: binary.to_owned(), arguments, address, log, child: None }
    }

    pub fn start(&mut self) -> anyhow::Result<()> {
        let log = append(&self.log)?;
        let child = Command::new(&self.binary)
            .args(&self.arguments)
            .arg("--listen-address")
            .arg(self.address.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {}", self.binary.display(), self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until /readyz says ready (false after `within`).
    pub async fn ready_within(&self, within: Duration) -> bool {
        wait_for_status(self.address, "/readyz", 200, within).await.is_some_and(|(status, _)| status == 200)
    }

    /// SIGKILL: no shutdown path runs.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            self.check_alive(&mut child)?;
            child.kill().await.with_context(|| format!("killing {}", self.name))?;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited after a grace period.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(pid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if tokio::time::timeout(TERMINATE_GRACE, child.wait()).await.is_err() {
            warn!(process = self.name, "did not exit within the grace period after SIGTERM; killing it");
            child.kill().await?;
        }
        Ok(())
    }

    /// A process that exited on its own is a finding, not something to restart silently.
    fn check_alive(&self, child: &mut Child) -> anyhow::Result<()> {
        if let Some(status) = child.try_wait()? {
            bail!("{} exited on its own with {status}; see {}", self.name, self.log.display());
        }
        Ok(())
    }
}

fn append(path: &Path) -> anyhow::Result<File> {
    OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))
}

/// Runs a command to its end; fails naming it and its output when it fails.
async fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command.stdin(Stdio::null()).output().await.with_context(|| format!("running {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A PostgreSQL cluster in a directory of the soak's own, on a port of its own, run as the
/// `postgres` OS user when the soak runs as root (PostgreSQL refuses to run as root).
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pub port: u16,
}

impl Postgres {
    /// initdb (trust authentication for user postgres) and start.
    pub async fn create(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let bin = newest_postgres_bin()?;
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        if is_root() {
            run(Command::new("chown").arg("-R").arg("postgres:").arg(dir), "chown postgres").await?;
        }
        let postgres = Postgres { bin, log: dir.join("postgres.log"), data, port };
        let initdb = postgres.bin.join("initdb");
        run(
            postgres.as_postgres(&initdb).arg("-D").arg(&postgres.data).args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]),
            "initdb",
        )
        .await?;
        postgres.start().await?;
        Ok(postgres)
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn as_postgres(&self, program: &Path) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self) -> Command {
        let mut command = self.as_postgres(&self.bin.join("pg_ctl"));
        command.arg("-D").arg(&self.data).arg("-w");
        command
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        let options = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.data.display());
        run(self.pg_ctl().arg("-l").arg(&self.log).arg("-o").arg(options).arg("start"), "pg_ctl start").await
    }

    /// `immediate`: a crash (no checkpoint; the relay's unflushed cleanups may be undone, which
    /// re-sends records: duplicates, never losses). Otherwise a fast, clean shutdown.
    pub async fn stop(&self, immediate: bool) -> anyhow::Result<()> {
        run(self.pg_ctl().args(["-m", if immediate { "immediate" } else { "fast" }, "stop"]), "pg_ctl stop").await
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `bin` of the newest PostgreSQL server installed (Debian layout, as scripts/postgres.sh).
fn newest_postgres_bin() -> anyhow::Result<PathBuf> {
    let versions = std::fs::read_dir("/usr/lib/postgresql").context("no PostgreSQL server in /usr/lib/postgresql")?;
    let newest = versions
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .context("no PostgreSQL version in /usr/lib/postgresql")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin")))
}

/// A Tansu broker run by scripts/broker.sh in a run directory of the soak's own.
pub struct Broker {
    ctl: PathBuf,
    run_dir: PathBuf,
}

impl Broker {
    /// Starts one on a free port.
    pub async fn start(ctl: &Path, run_dir: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&run_dir)?;
        let broker = Broker { ctl: ctl.to_owned(), run_dir };
        broker.ctl("start").await?;
        Ok(broker)
    }

    pub fn port(&self) -> anyhow::Result<u16> {
        let path = self.run_dir.join("broker.port");
        Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().parse()?)
    }

    pub async fn stop(&self) -> anyhow::Result<()> {
        self.ctl("stop").await
    }

    /// Suspends the broker process (SIGSTOP: it keeps its connections and state but answers
    /// nothing) or resumes it (SIGCONT).
    pub fn suspend(&self, suspended: bool) -> anyhow::Result<()> {
        let path = self.run_dir.join("broker.pid");
        let pid = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let signal = if suspended { "-STOP" } else { "-CONT" };
        let status = std::process::Command::new("kill").arg(signal).arg(pid.trim()).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {} failed: {status}", pid.trim());
        Ok(())
    }

    async fn ctl(&self, action: &str) -> anyhow::Result<()> {
        let mut command = Command::new("bash");
        command
            .arg(&self.ctl)
            .arg(action)
            .env("TRIBUTARY_RUN_DIR", &self.run_dir)
            .env_remove("TRIBUTARY_BROKER_HOST")
            .env_remove("TRIBUTARY_BROKER_PORT");
        run(&mut command, &format!("broker.sh {action}")).await
    }
}
