//! Several daemons on one state database in Postgres (issue "Beyond one
//! machine"), through the binary, on the harness's private cluster.
//!
//! Three daemon processes share the state database and the stores
//! (canonical.db, local.db and a Postgres store), and split the work: one
//! holds `engine` (canonical's writes), one `store:local`, one
//! `store:supabase`. Writers edit every store while the holder of each
//! lease in turn is killed (-9) and restarted, or paused (SIGSTOP) past its
//! lease and resumed; batches of 7 make every round's backlog span many
//! batches, so a failover lands in the middle of one. A history of every
//! acknowledged write decides: each ends in every store, no contact is
//! duplicated, no write is applied twice, and no conflict is opened (each
//! contact has one writer).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use contact_sync_postgres::harness;
use rand::{Rng, SeedableRng};
use tokio_postgres::{Client, NoTls};

const CONTACTS: usize = 120;
const FAILOVER_SECS: u64 = 3;

struct Env {
    dir: tempfile::TempDir,
    state_url: String,
    store_url: String,
    /// Each daemon slot's HTTP port (kept across its restarts).
    ports: Vec<u16>,
}

impl Env {
    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_contact-sync"));
        c.current_dir(self.d())
            .args(["--config", "contact-sync.toml"])
            .args(args)
            .env("STATE_DB_URL", &self.state_url)
            .env("TEST_PG_URL", &self.store_url)
            .env("RUST_LOG", "info");
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().expect("run contact-sync");
        assert!(
            out.status.success(),
            "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A daemon polling every second on its slot's port (running the
    /// initial syncs that are not done yet), its log in
    /// `daemon-<n>-<generation>.log`.
    fn daemon(&self, n: usize, generation: usize) -> Child {
        let log = std::fs::File::create(self.log_path(n, generation)).unwrap();
        let listen = format!("127.0.0.1:{}", self.ports[n]);
        self.cmd(&[
            "run",
            "--initial-sync",
            "--interval",
            "1",
            "--http-listen",
            &listen,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn daemon")
    }

    /// The end of every daemon's log, for a failure's message.
    fn logs(&self, generation: usize) -> String {
        let mut logs = String::new();
        for n in 0..3 {
            for g in 0..=generation {
                if let Ok(t) = std::fs::read_to_string(self.log_path(n, g)) {
                    logs.push_str(&format!("--- daemon {n} gen {g}\n{}\n", tail(&t, 30)));
                }
            }
        }
        logs
    }

    fn log_path(&self, n: usize, generation: usize) -> PathBuf {
        self.d().join(format!("daemon-{n}-{generation}.log"))
    }
}

async fn pg(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    c
}

fn sqlite(d: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(d.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    c
}

async fn setup() -> Env {
    let server = harness::shared();
    let state_url = server.create_database().await;
    let store_url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let slot = format!("cs_cluster_{}", std::process::id());
    std::fs::write(
        dir.path().join("contact-sync.toml"),
        format!(
            "[state]\nurl = {{ env = \"STATE_DB_URL\" }}\n\n[cluster]\nfailover_secs = {FAILOVER_SECS}\n\n\
             [sync]\nbatch_size = 7\n\n\
             [stores.local]\nkind = \"sqlite\"\n\n\
             [stores.supabase]\nkind = \"postgres\"\nurl = {{ env = \"TEST_PG_URL\" }}\nslot_name = \"{slot}\"\n"
        ),
    )
    .unwrap();
    let ports = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let env = Env {
        dir,
        state_url,
        store_url,
        ports,
    };
    let n = CONTACTS.to_string();
    // Only canonical holds the contacts: the daemons run the initial
    // syncs (the primary does; the stores' holders wait for them).
    env.ok(&["seed", "--contacts", &n]);
    env
}

/// The leases of the work.
const LEASES: [&str; 3] = ["engine", "store:local", "store:supabase"];

/// Lease `name` while it is held: (holder, token).
async fn holder(state: &Client, name: &str) -> Option<(String, i64)> {
    state
        .query_opt(
            "SELECT holder, token FROM leases WHERE name = $1 AND expires_at > now()",
            &[&name],
        )
        .await
        .expect("leases")
        .map(|r| (r.get(0), r.get(1)))
}

/// The holders of the work's leases, once all three are held.
async fn holders(state: &Client) -> Option<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for name in LEASES {
        out.push(holder(state, name).await?);
    }
    Some(out)
}

fn signal(child: &Child, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig}");
}

fn id(i: usize) -> String {
    format!("c{i:09}")
}

/// Which store writes contact `i`: one writer per contact.
fn writer_of(i: usize) -> &'static str {
    ["canonical", "local", "supabase"][i % 3]
}

async fn write(env: &Env, store_pg: &Client, i: usize, value: &str) {
    match writer_of(i) {
        "supabase" => {
            let n = store_pg
                .execute(
                    "UPDATE contacts SET notes = $1 WHERE contact_id = $2",
                    &[&value, &id(i)],
                )
                .await
                .expect("update supabase");
            assert_eq!(n, 1);
        }
        db => {
            // Off the runtime's threads: a paused daemon may hold the
            // file's lock until it is resumed.
            let (d, db, value) = (env.d().to_path_buf(), db.to_string(), value.to_string());
            let n = tokio::task::spawn_blocking(move || {
                sqlite(&d, &format!("{db}.db"))
                    .execute(
                        "UPDATE contacts SET notes = ?1 WHERE contact_id = ?2",
                        [value.as_str(), &id(i)],
                    )
                    .expect("update sqlite")
            })
            .await
            .unwrap();
            assert_eq!(n, 1);
        }
    }
}

/// Every store's `notes` by contact id, and its row count.
async fn notes_of(
    env: &Env,
    store_pg: &Client,
) -> BTreeMap<&'static str, (BTreeMap<String, Option<String>>, i64)> {
    let mut out = BTreeMap::new();
    for db in ["canonical", "local"] {
        let c = sqlite(env.d(), &format!("{db}.db"));
        let mut stmt = c
            .prepare("SELECT contact_id, notes FROM contacts WHERE deleted_at IS NULL")
            .unwrap();
        let rows: BTreeMap<String, Option<String>> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let count: i64 = c
            .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
            .unwrap();
        out.insert(db, (rows, count));
    }
    let rows: BTreeMap<String, Option<String>> = store_pg
        .query(
            "SELECT contact_id, notes FROM contacts WHERE deleted_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let count: i64 = store_pg
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    out.insert("supabase", (rows, count));
    out
}

/// What differs from the history: (store, contact, expected, found).
fn mismatches(
    seen: &BTreeMap<&'static str, (BTreeMap<String, Option<String>>, i64)>,
    last: &BTreeMap<usize, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (store, (rows, count)) in seen {
        if *count != CONTACTS as i64 {
            out.push(format!("{store}: {count} rows, expected {CONTACTS}"));
        }
        for (i, want) in last {
            let got = rows.get(&id(*i)).cloned().flatten();
            if got.as_deref() != Some(want.as_str()) {
                out.push(format!(
                    "{store} {}: notes {got:?}, expected {want:?}",
                    id(*i)
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_lose_nothing_through_kills_and_pauses() {
    let env = setup().await;
    let state = pg(&env.state_url).await;
    let store_pg = pg(&env.store_url).await;
    let mut generation = 0usize;
    let mut daemons = Daemons((0..3).map(|n| env.daemon(n, 0)).collect());
    // The work spreads: each daemon holds one lease.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(h) = holders(&state).await {
            let distinct: std::collections::BTreeSet<&String> = h.iter().map(|(h, _)| h).collect();
            if distinct.len() == 3 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the three leases are not spread over the three daemons: {:?}\n{}",
            holders(&state).await,
            env.logs(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The primary copies canonical into both stores; the stores' holders
    // start syncing them when it is done.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: i64 = state
            .query_one(
                "SELECT count(*) FROM meta WHERE key IN ('backfill_completed_at:local', 'backfill_completed_at:supabase')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if done == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the initial syncs did not finish\n{}",
            env.logs(0)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The history: the last acknowledged value of each written contact.
    let mut last: BTreeMap<usize, String> = BTreeMap::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut failovers = Vec::new();
    let mut seq = 0u64;
    for round in 0..6 {
        // A burst of writes in every store...
        for _ in 0..20 {
            let i = rng.gen_range(0..CONTACTS);
            seq += 1;
            let value = format!("w{seq}");
            write(&env, &store_pg, i, &value).await;
            last.insert(i, value);
        }
        // ...then the holder of one lease (each in turn) is killed or
        // paused while more writes land.
        let lease = LEASES[round % 3];
        let deadline = Instant::now() + Duration::from_secs(60);
        let (lead, token) = loop {
            if let Some(h) = holder(&state, lease).await {
                break h;
            }
            assert!(
                Instant::now() < deadline,
                "nobody holds {lease}\n{}",
                env.logs(generation)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let victim = daemons
            .iter()
            .position(|d| lead.contains(&format!(":{}:", d.id())))
            .expect("the holder is one of ours");
        let pause = round % 2 == 1;
        let t0 = Instant::now();
        if pause {
            signal(&daemons[victim], "-STOP");
        } else {
            signal(&daemons[victim], "-KILL");
            let _ = daemons[victim].wait();
        }
        let planned: Vec<(usize, String)> = (0..10)
            .map(|_| {
                seq += 1;
                (rng.gen_range(0..CONTACTS), format!("w{seq}"))
            })
            .collect();
        // Writes land while the leader is down; a write may wait on a lock
        // the paused leader holds until it is resumed.
        let writes = async {
            for (i, value) in &planned {
                write(&env, &store_pg, *i, value).await;
            }
        };
        let takeover = async {
            // Another daemon takes over (a deadline, not a timing claim:
            // the failover time is measured by the benchmark).
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some((h, t)) = holder(&state, lease).await {
                    if t > token {
                        assert_ne!(h, lead, "a new token goes to another holder");
                        break;
                    }
                }
                if Instant::now() > deadline {
                    panic!(
                        "no daemon took {lease} over after round {round}\n{}",
                        env.logs(generation)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let took = t0.elapsed();
            if pause {
                // The paused leader wakes up without its lease: it must
                // not commit, and goes back to waiting.
                signal(&daemons[victim], "-CONT");
            }
            took
        };
        let ((), took) = tokio::join!(writes, takeover);
        failovers.push(took);
        for (i, value) in planned {
            last.insert(i, value);
        }
        if !pause {
            generation += 1;
            daemons[victim] = env.daemon(victim, generation);
        }
    }

    // Every acknowledged write ends everywhere.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = notes_of(&env, &store_pg).await;
        let wrong = mismatches(&seen, &last);
        if wrong.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let logs = env.logs(generation);
            // The journal of the first contacts that went wrong.
            let mut journal = String::new();
            for (i, _) in last
                .iter()
                .filter(|(i, v)| {
                    seen["canonical"]
                        .0
                        .get(&id(**i))
                        .cloned()
                        .flatten()
                        .as_deref()
                        != Some(v.as_str())
                })
                .take(3)
            {
                for r in state
                    .query(
                        "SELECT seq, version, prev_version, origin, op, after::jsonb->>'notes', at FROM journal WHERE contact_id = $1 ORDER BY seq",
                        &[&id(*i)],
                    )
                    .await
                    .unwrap()
                {
                    let (seq, v, pv, origin, op, notes, at): (i64, i64, i64, String, String, Option<String>, String) =
                        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6));
                    journal.push_str(&format!("{} #{seq} v{pv}→v{v} {origin} {op} {notes:?} {at}\n", id(*i)));
                }
                for r in state
                    .query(
                        "SELECT store || ' ' || field || ' base=' || base || ' canonical=' || canonical || ' incoming=' || incoming || ' ' || canonical_version || '/' || incoming_version || ' ' || status FROM conflicts WHERE contact_id = $1",
                        &[&id(*i)],
                    )
                    .await
                    .unwrap()
                {
                    let line: String = r.get(0);
                    journal.push_str(&format!("  conflict {line}\n"));
                }
            }
            if let Ok(keep) = std::env::var("CLUSTER_TEST_KEEP") {
                let _ = std::process::Command::new("cp")
                    .args(["-r", &env.d().display().to_string(), &keep])
                    .status();
            }
            panic!(
                "{} writes missing, e.g. {:?}\n{journal}\n{logs}",
                wrong.len(),
                &wrong[..wrong.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // No conflict (one writer per contact), no write applied twice: each
    // value is in the journal once.
    let open: i64 = state
        .query_one("SELECT count(*) FROM conflicts WHERE status = 'open'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(open, 0, "no conflict opened");
    for (i, value) in &last {
        let n: i64 = state
            .query_one(
                "SELECT count(*) FROM journal WHERE contact_id = $1 AND after LIKE '%' || $2 || '%'",
                &[&id(*i), &format!("\"{value}\"")],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{} = {value} journaled once", id(*i));
    }
    eprintln!(
        "failovers: {:?}",
        failovers.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );

    // Who holds what: `status` names each lease's holder and every running
    // daemon; each daemon's /metrics says which leases it holds (each
    // lease is held by exactly one); the primary's console lists them.
    // (The shares may still be settling after the last restart: a lease
    // handed over is free for a poll, a daemon just started is not a member
    // yet. Read until status shows the three daemons and a holder for each
    // lease.)
    let deadline = Instant::now() + Duration::from_secs(60);
    let held_now = loop {
        if let Some(h) = holders(&state).await {
            let status = env.ok(&["status"]);
            if status.matches(": running since ").count() == 3
                && LEASES.iter().zip(&h).all(|(name, (holder, _))| {
                    status.contains(&format!("lease {name}: held by {holder}"))
                })
            {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "status names a holder for every lease: {}\n{}",
            env.ok(&["status"]),
            env.logs(generation)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // `run --once` beside working daemons waits at most a crashed holder's
    // lease, then refuses, naming the holders.
    let once = env.cmd(&["run", "--once"]).output().unwrap();
    let err = String::from_utf8_lossy(&once.stderr);
    assert!(!once.status.success(), "{err}");
    assert!(
        err.contains("another daemon holds leases of the work") && err.contains(&held_now[0].0),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // Per daemon: the leases its /metrics says it holds.
        let mut held: Vec<Option<Vec<&str>>> = Vec::new();
        for port in &env.ports {
            let text = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            held.push(text.contains("contact_sync_lease_held{").then(|| {
                LEASES
                    .iter()
                    .copied()
                    .filter(|l| {
                        text.contains(&format!("contact_sync_lease_held{{lease=\"{l}\"}} 1"))
                    })
                    .collect()
            }));
        }
        let settled = held.iter().all(Option::is_some)
            && LEASES.iter().all(|l| {
                held.iter()
                    .filter(|h| h.as_ref().is_some_and(|h| h.contains(l)))
                    .count()
                    == 1
            });
        if settled {
            let i = held
                .iter()
                .position(|h| h.as_ref().is_some_and(|h| h.contains(&"engine")))
                .unwrap();
            let page = reqwest::get(format!("http://127.0.0.1:{}/", env.ports[i]))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert!(
                page.contains("Daemons")
                    && page.contains("this daemon")
                    && page.contains("store:supabase")
                    && page.contains("daemon (member)"),
                "{page}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "each lease held by exactly one daemon's /metrics: {held:?}\n{}",
            env.logs(generation)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A clean stop of every daemon ends each with success and frees the lease.
    for d in daemons.iter() {
        signal(d, "-TERM");
    }
    for (n, d) in daemons.iter_mut().enumerate() {
        let st = d.wait().unwrap();
        assert!(
            st.success(),
            "daemon {n} exits cleanly: {st:?}\n{}",
            env.logs(generation)
        );
    }
    for name in LEASES {
        assert_eq!(holder(&state, name).await, None, "{name} is released");
    }
    let status = env.ok(&["status"]);
    for name in LEASES {
        assert!(status.contains(&format!("lease {name}: free")), "{status}");
    }
    assert!(
        !status.contains(": running since "),
        "no daemon runs: {status}"
    );
}

/// The daemon processes, killed if the test fails before it stops them.
struct Daemons(Vec<Child>);

impl std::ops::Deref for Daemons {
    type Target = Vec<Child>;
    fn deref(&self) -> &Vec<Child> {
        &self.0
    }
}

impl std::ops::DerefMut for Daemons {
    fn deref_mut(&mut self) -> &mut Vec<Child> {
        &mut self.0
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.0 {
            // SIGKILL ends a paused daemon too; one already stopped is
            // only reaped.
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
