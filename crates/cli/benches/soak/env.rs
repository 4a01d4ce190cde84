//! The soak's services: a private Postgres cluster and the BigQuery
//! emulator (both through the repository's scripts), the Twenty fake (in
//! this process, so it can go down and come back with its data), and the
//! release `contact-sync` daemon (a child process, killed with SIGKILL and
//! started again).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs a repository script; returns its stdout (its stderr goes to `log`).
async fn script(
    path: &str,
    args: &[&str],
    envs: &[(&str, &str)],
    log: &Path,
) -> anyhow::Result<String> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let out = tokio::process::Command::new("bash")
        .arg(repo_root().join(path))
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::from(err))
        .output()
        .await
        .with_context(|| format!("running {path}"))?;
    if !out.status.success() {
        bail!(
            "{path} {args:?} failed ({}); its messages are in {}",
            out.status,
            log.display()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of `export NAME=value` in a script's output.
fn exported(out: &str, name: &str) -> anyhow::Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("the script printed no {name}"))
}

/// A private cluster from `scripts/postgres/start-cluster.sh` in its own
/// data directory; an outage is `stop-cluster.sh`, the recovery
/// `start-cluster.sh` again (same directory, same port).
pub struct Postgres {
    data: PathBuf,
    log: PathBuf,
    pub url: String,
}

impl Postgres {
    pub async fn start(data: PathBuf, log: PathBuf) -> anyhow::Result<Postgres> {
        let mut pg = Postgres {
            data,
            log,
            url: String::new(),
        };
        let out = pg
            .run("scripts/postgres/start-cluster.sh", &["--install"])
            .await?;
        pg.url = exported(&out, "CONTACT_SYNC_PG_URL")?;
        Ok(pg)
    }

    async fn run(&self, path: &str, args: &[&str]) -> anyhow::Result<String> {
        let data = self.data.to_string_lossy().into_owned();
        script(path, args, &[("PGDATA_DIR", &data)], &self.log).await
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.run("scripts/postgres/stop-cluster.sh", &[])
            .await
            .map(drop)
    }

    /// Starts it again.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.run("scripts/postgres/start-cluster.sh", &[])
            .await
            .map(drop)
    }

    /// Stops it and deletes its data directory.
    pub async fn delete(&self) -> anyhow::Result<()> {
        self.run("scripts/postgres/stop-cluster.sh", &["--delete"])
            .await
            .map(drop)
    }
}

/// The local BigQuery emulator: `scripts/bigquery/setup.sh` (installs it
/// once, cached) and `scripts/bigquery/start.sh` on free ports, watched by
/// this process (it stops when the soak exits), with DuckDB on one thread.
pub struct BigQuery {
    pub url: String,
    pid: String,
}

impl BigQuery {
    pub async fn start(data: &Path, log: &Path) -> anyhow::Result<BigQuery> {
        let out = script("scripts/bigquery/setup.sh", &[], &[], log).await?;
        let home = exported(&out, "CONTACT_SYNC_BQ_HOME")?;
        let (port, grpc) = (free_port()?, free_port()?);
        let me = std::process::id().to_string();
        let out = script(
            "scripts/bigquery/start.sh",
            &[
                &port.to_string(),
                &data.to_string_lossy(),
                &grpc.to_string(),
            ],
            &[
                ("CONTACT_SYNC_BQ_HOME", &home),
                ("CONTACT_SYNC_BQ_WATCH_PID", &me),
                // local-bigquery 0.4.0 hangs under a long run of DML with
                // DuckDB's worker threads (see start.sh).
                ("CONTACT_SYNC_BQ_DUCKDB_THREADS", "1"),
            ],
            log,
        )
        .await?;
        Ok(BigQuery {
            url: exported(&out, "CONTACT_SYNC_BQ_URL")?,
            pid: exported(&out, "CONTACT_SYNC_BQ_PID")?,
        })
    }

    pub async fn stop(&self) {
        let _ = tokio::process::Command::new("kill")
            .arg(&self.pid)
            .status()
            .await;
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The `contact-sync` binary (the release build under `cargo bench`),
/// run in `dir` with `dir/contact-sync.toml`.
pub struct Daemon {
    dir: PathBuf,
    envs: Vec<(String, String)>,
    port: u16,
    child: Option<tokio::process::Child>,
    /// How many times it was started.
    pub starts: u32,
    log: PathBuf,
}

impl Daemon {
    pub fn new(dir: &Path, envs: Vec<(String, String)>, port: u16) -> Daemon {
        Daemon {
            dir: dir.to_path_buf(),
            envs,
            port,
            child: None,
            starts: 0,
            log: dir.join("daemon.log"),
        }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_contact-sync"));
        c.current_dir(&self.dir)
            .args(["--config", "contact-sync.toml"])
            .envs(self.envs.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs a command of the CLI to its end.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command()
            .args(args)
            .output()
            .await
            .context("running contact-sync")
    }

    /// Runs a command of the CLI; fails with its output unless it exits 0.
    pub async fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(args).await?;
        if !out.status.success() {
            bail!(
                "contact-sync {args:?} failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `contact-sync run` and waits (deadline 60 s) until its HTTP
    /// server answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = self
            .command()
            .arg("run")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("starting the daemon")?;
        self.child = Some(child);
        self.starts += 1;
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if http.get(self.url("/health")).send().await.is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "the daemon exited at start ({status}); see {}",
                        self.log.display()
                    );
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!(
                    "the daemon did not answer within 60 s; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// SIGKILL, and waits for it to be gone.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await.context("kill -9 of the daemon")?;
        }
        Ok(())
    }

    /// SIGTERM, and waits (deadline 120 s): the daemon finishes the batch
    /// in flight and exits. Its exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut c) = self.child.take() else {
            bail!("the daemon is not running");
        };
        let pid = c.id().context("the daemon has no pid")?.to_string();
        tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        match tokio::time::timeout(Duration::from_secs(120), c.wait()).await {
            Ok(s) => Ok(s?),
            Err(_) => {
                c.kill().await?;
                bail!("the daemon did not stop within 120 s of SIGTERM (killed)")
            }
        }
    }

    /// The daemon's `/metrics` value of `name` (a series without labels,
    /// or with its labels spelled out), if it answers.
    pub async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        let text = http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Resident set size of a process, in bytes (Linux `/proc`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Size of a SQLite database with its WAL, in bytes.
pub fn sqlite_size(path: &Path) -> u64 {
    let len = |p: PathBuf| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    len(path.to_path_buf()) + len(PathBuf::from(wal))
}
