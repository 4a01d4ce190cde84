//! Several daemons on one Postgres state database (issue 17), through the
//! release binary:
//!
//! - **failover**: `FAILOVER_KILLS` (default 20) times, the daemon holding
//!   a lease of the work (`engine` and `store:local` in turn) is killed
//!   with SIGKILL and restarted; the time from the kill to another daemon
//!   holding that lease is measured (p50, max), then the same for a clean
//!   stop (SIGTERM hands the leases over).
//!   `FAILOVER_SECS` sets `[cluster] failover_secs` (default 15).
//! - **throughput** with 1, 2 and 3 daemons over two SQLite stores
//!   (local.db, second.db): the initial sync of `FAILOVER_CONTACTS`
//!   (default 20,000) into both, then 2,000 edits made at once in each
//!   (other contacts) until all 4,000 are in canonical.db. Three leases
//!   (`engine`, `store:local`, `store:second`): with three daemons each
//!   store is captured by its own daemon and canonical written by a third.
//!
//! `cargo bench -p contact-sync --bench failover` (a private PostgreSQL
//! cluster is started by the harness, or CONTACT_SYNC_PG_URL is used).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contact_sync_postgres::harness;
use tokio_postgres::{Client, NoTls};

fn binary() -> PathBuf {
    // The release binary next to this bench (cargo bench builds it).
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("contact-sync");
    assert!(
        bin.exists(),
        "build the binary first: cargo build --release -p contact-sync ({})",
        bin.display()
    );
    bin
}

struct Env {
    dir: tempfile::TempDir,
    state_url: String,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(binary());
        c.current_dir(self.dir.path())
            .args(["--config", "contact-sync.toml"])
            .args(args)
            .env("STATE_DB_URL", &self.state_url);
        c
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn daemon(&self) -> Child {
        self.cmd(&["run", "--interval", "1", "--no-http"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

async fn env(failover: u64, initial_sync: bool, contacts: usize, stores: &str) -> Env {
    let state_url = harness::shared().create_database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("contact-sync.toml"),
        format!("[state]\nurl = {{ env = \"STATE_DB_URL\" }}\n\n[cluster]\nfailover_secs = {failover}\n\n{stores}"),
    )
    .unwrap();
    let e = Env { dir, state_url };
    e.ok(&["seed", "--contacts", &contacts.to_string()]);
    if initial_sync {
        e.ok(&["run", "--initial-sync", "--once"]);
    }
    e
}

async fn pg(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

async fn holder(state: &Client, lease: &str) -> Option<(String, i64)> {
    state
        .query_opt(
            "SELECT holder, token FROM leases WHERE name = $1 AND expires_at > now()",
            &[&lease],
        )
        .await
        .ok()
        .flatten()
        .map(|r| (r.get(0), r.get(1)))
}

fn signal(pid: u32, sig: &str) {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
}

async fn until(what: &str, deadline: Duration, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn failovers(failover: u64, kills: usize) {
    let e = env(failover, true, 1000, "").await;
    let state = pg(&e.state_url).await;
    let mut daemons: Vec<Child> = (0..3).map(|_| e.daemon()).collect();
    until("a leader", Duration::from_secs(60), async || {
        holder(&state, "engine").await.is_some() && holder(&state, "store:local").await.is_some()
    })
    .await;
    for (sig, n) in [("-KILL", kills), ("-TERM", kills.min(5))] {
        let mut times = Vec::new();
        for k in 0..n {
            let lease = ["engine", "store:local"][k % 2];
            // The shares settle after a restart (the newcomer is handed a
            // lease): wait until this one is held.
            until("a holder", Duration::from_secs(60), async || {
                holder(&state, lease).await.is_some()
            })
            .await;
            let (lead, token) = holder(&state, lease).await.unwrap();
            let i = daemons
                .iter()
                .position(|d| lead.contains(&format!(":{}:", d.id())))
                .unwrap();
            // Kill at a random point of the lease's renewal period.
            tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 1500)).await;
            let t0 = Instant::now();
            signal(daemons[i].id(), sig);
            until(
                "a takeover",
                Duration::from_secs(failover * 4),
                async || holder(&state, lease).await.is_some_and(|(_, t)| t > token),
            )
            .await;
            times.push(t0.elapsed());
            let _ = daemons[i].wait();
            daemons[i] = e.daemon();
        }
        let max = *times.iter().max().unwrap();
        println!(
            "failover_secs = {failover}, {sig} × {n}: p50 {:.2} s, max {:.2} s",
            pct(&mut times, 0.5).as_secs_f64(),
            max.as_secs_f64()
        );
    }
    for d in &mut daemons {
        signal(d.id(), "-TERM");
        let _ = d.wait();
    }
}

fn count(path: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

async fn throughput(n_daemons: usize, contacts: usize) {
    let e = env(
        15,
        false,
        contacts,
        "[stores.local]\nkind = \"sqlite\"\n\n[stores.second]\nkind = \"sqlite\"\n",
    )
    .await;
    let data = e.dir.path().join("contact-sync-data");
    let t0 = Instant::now();
    let mut daemons: Vec<Child> = (0..n_daemons)
        .map(|_| {
            // The primary runs the initial syncs; the others wait for them.
            e.cmd(&["run", "--initial-sync", "--interval", "1", "--no-http"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let (local, second) = (data.join("local.db"), data.join("second.db"));
    until("the initial syncs", Duration::from_secs(900), async || {
        count(&local, "SELECT count(*) FROM contacts") >= contacts as i64
            && count(&second, "SELECT count(*) FROM contacts") >= contacts as i64
    })
    .await;
    let initial = t0.elapsed();
    // Let the shares settle (the leases spread once the syncs are done).
    until("the leases", Duration::from_secs(60), async || {
        let state = pg(&e.state_url).await;
        let n: i64 = state
            .query_one(
                "SELECT count(DISTINCT holder) FROM leases WHERE name NOT LIKE 'member:%' AND expires_at > now()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n as usize == n_daemons.min(3)
    })
    .await;
    // 2,000 edits at once in each store (other contacts), until all are
    // in canonical.db.
    let edits = 2000.min(contacts / 2);
    let t1 = Instant::now();
    for (db, range) in [
        (&local, format!("rowid <= {edits}")),
        (&second, format!("rowid > {}", contacts - edits)),
    ] {
        let c = rusqlite::Connection::open(db).unwrap();
        c.busy_timeout(Duration::from_secs(30)).unwrap();
        c.execute(
            &format!("UPDATE contacts SET notes = 'bench edit' WHERE {range}"),
            [],
        )
        .unwrap();
    }
    let canonical = data.join("canonical.db");
    until(
        "the edits in canonical",
        Duration::from_secs(900),
        async || {
            count(
                &canonical,
                "SELECT count(*) FROM contacts WHERE notes = 'bench edit'",
            ) >= 2 * edits as i64
        },
    )
    .await;
    let steady = t1.elapsed();
    println!(
        "{n_daemons} daemon(s): initial sync of {contacts} into 2 stores {:.1} s; {} edits (2 stores) → canonical {:.2} s ({:.0}/s)",
        initial.as_secs_f64(),
        2 * edits,
        steady.as_secs_f64(),
        (2 * edits) as f64 / steady.as_secs_f64()
    );
    for d in &mut daemons {
        signal(d.id(), "-TERM");
        let _ = d.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let failover = env("FAILOVER_SECS").unwrap_or(15);
    let kills = env("FAILOVER_KILLS").unwrap_or(20) as usize;
    let contacts = env("FAILOVER_CONTACTS").unwrap_or(20_000) as usize;
    if env("FAILOVER_SKIP_KILLS").is_none() {
        failovers(failover, kills).await;
    }
    for n in 1..=3 {
        throughput(n, contacts).await;
    }
}
