//! Private PostgreSQL clusters for tests (feature `test-harness`).
//!
//! - [`shared`]: one cluster per test binary, started on first use, stopped
//!   at process exit; or the server named by `CONTACT_SYNC_PG_URL`
//!   (`postgres://user[:pass]@host:port[/db]`, a superuser, `wal_level =
//!   logical`), e.g. started by `scripts/postgres/start-cluster.sh`.
//! - [`PgCluster::start`]: a cluster of one's own (restart tests, other
//!   settings), stopped and deleted on drop.
//! - [`Server::create_database`]: a fresh database per test.
//!
//! The binaries come from `CONTACT_SYNC_PG_BINDIR`, `pg_config --bindir`, or
//! `/usr/lib/postgresql/*/bin`. Running as root, the cluster runs as the
//! `postgres` OS user (`runuser`). When no PostgreSQL can be found or
//! started this panics with what to do: tests never skip silently.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Settings of a private cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `wal_level` (`logical` by default; `replica` to test the error).
    pub wal_level: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical".into(),
        }
    }
}

/// A private cluster: own data directory, own port on 127.0.0.1, trust
/// authentication for user `postgres`.
#[derive(Debug)]
pub struct PgCluster {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

fn fail(msg: impl std::fmt::Display) -> String {
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    format!(
        "PostgreSQL test harness: {msg}. Install PostgreSQL (apt-get install postgresql-15, or run \
         scripts/postgres/start-cluster.sh --install and export the CONTACT_SYNC_PG_URL it prints).{}",
        if ci { " (CI=true: Postgres tests never skip.)" } else { "" }
    )
}

/// Finds the directory of `initdb`, `pg_ctl` and `postgres`.
pub fn find_bindir() -> Result<PathBuf, String> {
    let has = |d: &Path| d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Ok(d) = std::env::var("CONTACT_SYNC_PG_BINDIR") {
        let d = PathBuf::from(d);
        if has(&d) {
            return Ok(d);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let d = e.path().join("bin");
                    has(&d).then_some((v, d))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .map(|(_, d)| d)
        .ok_or_else(|| fail("no PostgreSQL binaries (initdb, pg_ctl) found"))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail(format!("no free port: {e}")))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PgCluster {
    /// initdb + start a new cluster.
    pub fn start(opts: ClusterOptions) -> Result<PgCluster, String> {
        let bindir = find_bindir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("contact-sync-pg-")
            .tempdir()
            .map_err(|e| fail(format!("cannot create a data directory: {e}")))?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)
            .map_err(|e| fail(format!("cannot create {}: {e}", data.display())))?;
        if as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| fail(format!("chown: {e}")))?;
            if !st.success() {
                return Err(fail(
                    "cannot chown the data directory to the postgres user (does it exist?)",
                ));
            }
        }
        let c = PgCluster {
            bindir,
            dir,
            port: free_port()?,
            as_postgres,
        };
        c.run(
            "initdb",
            &[
                "-D",
                &c.data().to_string_lossy(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = {}\nmax_replication_slots = 64\nmax_wal_senders = 16\nmax_connections = 300\n\
             fsync = off\nfull_page_writes = off\nshared_buffers = 128MB\n\
             max_wal_size = 1GB\nmax_slot_wal_keep_size = 1GB\n",
            c.port,
            c.dir.path().display(),
            opts.wal_level
        );
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(c.data().join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .map_err(|e| fail(format!("cannot write postgresql.conf: {e}")))?;
        c.start_server()?;
        Ok(c)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, bin: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bindir.join(bin);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .current_dir(self.dir.path())
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .map_err(|e| fail(format!("cannot run {}: {e}", exe.display())))?;
        if !out.status.success() {
            return Err(fail(format!(
                "{bin} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Starts the server (after [`stop`](Self::stop)).
    pub fn start_server(&self) -> Result<(), String> {
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    /// Stops the server (fast shutdown: committed data is kept).
    pub fn stop(&self) -> Result<(), String> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
    }

    /// Stops and starts the server.
    pub fn restart(&self) -> Result<(), String> {
        self.stop()?;
        self.start_server()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for database `db` as superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// This cluster as a [`Server`] to create databases on.
    pub fn server(&self) -> Server {
        Server {
            base: self.url("postgres"),
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// A PostgreSQL server reachable by URL, on which tests create databases.
#[derive(Debug, Clone)]
pub struct Server {
    /// URL of a maintenance database (`…/postgres`).
    base: String,
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Server {
    /// The URL with its database replaced by `db`.
    pub fn url(&self, db: &str) -> String {
        let base = self.base.split('?').next().unwrap_or(&self.base);
        let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
        let path_start = base[authority_start..]
            .find('/')
            .map(|i| authority_start + i)
            .unwrap_or(base.len());
        format!("{}/{db}", &base[..path_start])
    }

    /// Creates a new empty database and returns its URL.
    pub async fn create_database(&self) -> String {
        let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let db = format!("t_{}_{n}", std::process::id());
        let (client, conn) = tokio_postgres::connect(&self.base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}",
                    fail(format!("cannot connect to the test server: {e}"))
                )
            });
        let task = tokio::spawn(conn);
        if !SWEPT.swap(true, Ordering::SeqCst) {
            sweep_leftovers(&client).await;
        }
        client
            .batch_execute(&format!("CREATE DATABASE \"{db}\""))
            .await
            .unwrap_or_else(|e| panic!("{}", fail(format!("CREATE DATABASE failed: {e}"))));
        drop(client);
        let _ = task.await;
        self.url(&db)
    }
}

static SWEPT: AtomicBool = AtomicBool::new(false);

/// Drops the databases, and first their replication slots, that test
/// binaries which have ended left on a shared server (`t_<pid>_<n>` with no
/// process `<pid>` alive). A logical slot keeps every WAL segment written
/// after it, cluster-wide: left in place, one CI run's slots filled the
/// disk ("could not write to file pg_wal/xlogtemp: No space left on
/// device"). Runs once per test binary, before its first database; a
/// database of a live binary, or of a pid that cannot be read, is kept.
async fn sweep_leftovers(client: &tokio_postgres::Client) {
    let rows = match client
        .query(
            "SELECT datname FROM pg_database WHERE datname ~ '^t_[0-9]+_[0-9]+$'",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(_) => return,
    };
    if !Path::new("/proc/self").exists() {
        return; // no way to tell a live binary from an ended one
    }
    let me = std::process::id();
    for row in rows {
        let name: String = row.get(0);
        let Some(pid) = name
            .strip_prefix("t_")
            .and_then(|r| r.split('_').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE database = $1 AND NOT active",
                &[&name],
            )
            .await;
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
    // Replication origins are cluster-wide and outlive the databases: each
    // keeps a replication state (`max_replication_slots` of them), and once
    // they are used up no session can tag its writes, so a store falls back
    // to recognising them by hash and tests of the origin path fail (seen
    // on a long-lived cluster after a few runs). An origin whose slot is
    // gone is dropped; one in use by a live session refuses, and stays.
    if let Ok(rows) = client
        .query(
            "SELECT roname FROM pg_replication_origin o WHERE roname LIKE 'contact\\_sync\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_replication_slots s \
               WHERE 'contact_sync_' || s.slot_name = o.roname)",
            &[],
        )
        .await
    {
        for row in rows {
            let origin: String = row.get(0);
            let _ = client
                .execute("SELECT pg_replication_origin_drop($1)", &[&origin])
                .await;
        }
    }
}

struct Shared {
    server: Server,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static SHARED_CLUSTER: Mutex<Option<PgCluster>> = Mutex::new(None);

extern "C" fn stop_shared() {
    if let Ok(mut g) = SHARED_CLUSTER.lock() {
        drop(g.take());
    }
}

/// The server shared by this test binary: `CONTACT_SYNC_PG_URL` when set,
/// else a private cluster started once and stopped at process exit.
/// Panics with instructions when none can be had.
pub fn shared() -> Server {
    SHARED
        .get_or_init(|| {
            if let Ok(url) = std::env::var("CONTACT_SYNC_PG_URL") {
                if !url.trim().is_empty() {
                    let s = Server {
                        base: url.trim().to_string(),
                    };
                    return Shared {
                        server: Server {
                            base: s.url("postgres"),
                        },
                    };
                }
            }
            let c = PgCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
            let server = c.server();
            if let Ok(mut g) = SHARED_CLUSTER.lock() {
                *g = Some(c);
            }
            // SAFETY: registers a plain extern "C" function with no captures.
            unsafe {
                libc::atexit(stop_shared);
            }
            Shared { server }
        })
        .server
        .clone()
}
