//! The soak benchmark (issue 15): the release `contact-sync` daemon runs
//! for a given time against BigQuery (the local emulator, canonical), a
//! local SQLite store, a Postgres store (a private cluster) and Twenty (the
//! fake), while
//!
//! - a user per store edits, creates and deletes contacts directly in it
//!   (SQL, BigQuery DML, Twenty's REST API) and every acknowledged write is
//!   recorded in a history;
//! - faults strike in turn: the Postgres cluster is stopped and started
//!   again, the Twenty fake goes down and comes back, the daemon is killed
//!   with SIGKILL and restarted (sometimes during an outage);
//! - an observer polls every store, for the lag (write acknowledged →
//!   visible in every other store) and the users' targets.
//!
//! Then the faults stop, the daemon settles (a condition with a deadline),
//! it is stopped with SIGTERM and the checker (`checker.rs`) judges every
//! acknowledged write. Exit code 1 when a write was lost or duplicated, or
//! a store differs from canonical; 2 when the soak itself could not run.
//!
//! ```sh
//! scripts/bench/soak.sh --minutes 30
//! cargo bench -p contact-sync --bench soak -- --minutes 5   # the same
//! ```

mod checker;
mod env;
mod history;
mod lag;
mod observe;
mod snapshot;
mod users;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use contact_sync_bigquery::BigQueryClient;
use contact_sync_twenty_fake::{FakeConfig, FakeTwenty, RateLimit};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::env::Daemon;
use crate::lag::quantile;
use crate::snapshot::StoreId;
use crate::users::{lock, Shared};

/// The soak benchmark: the daemon under users, outages and kill -9.
#[derive(Parser, Debug, Clone)]
#[command(name = "soak")]
struct Args {
    /// Minutes of users writing and faults striking (then it settles).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Contacts seeded into canonical before the run.
    #[arg(long, default_value_t = 300)]
    contacts: usize,
    /// The daemon's polling interval, seconds (`[sync] interval_secs`).
    #[arg(long, default_value_t = 5)]
    interval: u64,
    /// BigQuery's fingerprint sweep runs at least this often, seconds
    /// (`[canonical] sweep_interval_secs`; the product's default is 900,
    /// which a short soak would barely reach): half the BigQuery user's
    /// edits leave `last_updated` alone and 40 % of its deletes are hard
    /// DELETEs, which only the sweep finds.
    #[arg(long, default_value_t = 60)]
    sweep_interval: u64,
    /// Mean pause between two actions of one user, milliseconds.
    #[arg(long, default_value_t = 1500)]
    pause_ms: u64,
    /// Mean pause of the BigQuery user (an analyst edits less often; each
    /// edit is a DML job), milliseconds.
    #[arg(long, default_value_t = 4500)]
    bq_pause_ms: u64,
    /// Mean seconds between two faults (0: no faults).
    #[arg(long, default_value_t = 45)]
    fault_every: u64,
    /// Deadline for settling once the faults have ended, minutes.
    #[arg(long, default_value_t = 10.0)]
    settle_minutes: f64,
    /// The observer reads every store this often, milliseconds ...
    #[arg(long, default_value_t = 500)]
    poll_ms: u64,
    /// ... but BigQuery only this often (each read is a query job).
    #[arg(long, default_value_t = 5000)]
    bq_poll_ms: u64,
    /// The daemon's log filter (`CONTACT_SYNC_LOG`), in `daemon.log`.
    #[arg(long, default_value = "info")]
    daemon_log: String,
    /// Seed of the users' and faults' random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The stores whose users write (default: all four): canonical,
    /// local, postgres, twenty.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "canonical,local,postgres,twenty"
    )]
    users: Vec<String>,
    /// Working directory (default: a new one in the temp dir, removed
    /// after a clean run; kept when the check fails).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the working directory after a clean run.
    #[arg(long)]
    keep: bool,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> ExitCode {
    if std::env::args().len() == 1 {
        // `cargo test --benches` runs bench binaries without arguments.
        println!(
            "soak: not run (it takes minutes): scripts/bench/soak.sh [--minutes N] \
             or cargo bench -p contact-sync --bench soak -- --minutes N"
        );
        return ExitCode::SUCCESS;
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(soak(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("soak: could not run: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Elapsed time as `m:ss`.
fn mmss(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

/// One line of the per-minute table.
struct Minute {
    at: Duration,
    rss: Option<u64>,
    state_bytes: u64,
    acked: u64,
    lag_p99: Option<Duration>,
    lag_n: usize,
}

struct Faults {
    log: Vec<(Duration, String)>,
    kills: u32,
    pg_outages: u32,
    pg_down: Duration,
    twenty_outages: u32,
    twenty_down: Duration,
}

async fn soak(args: Args) -> anyhow::Result<bool> {
    let (dir, tmp) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.canonicalize()?, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("contact-sync-soak-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    // The Postgres cluster runs as the `postgres` user when we are root.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "== soak: {} min, seed {}, {} contacts, daemon interval {} s, working directory {}",
        args.minutes,
        args.seed,
        args.contacts,
        args.interval,
        dir.display()
    );

    // Services.
    let t = Instant::now();
    let pg = env::Postgres::start(dir.join("pg"), dir.join("services.log")).await?;
    let bq = env::BigQuery::start(&dir.join("bq"), &dir.join("services.log")).await?;
    let fake = FakeTwenty::start(FakeConfig {
        // Twenty's short window, and a long one roomier than its default
        // 100 per minute (the users share it with the daemon).
        short_rate_limit: Some(RateLimit::TWENTY_SHORT),
        rate_limit: Some(RateLimit {
            requests: 600,
            window: Duration::from_secs(60),
        }),
        ..FakeConfig::default()
    })
    .await?;
    let (fake_url, fake_key) = (fake.base_url(), fake.api_key().to_string());
    let fake = Arc::new(tokio::sync::Mutex::new(fake));
    println!(
        "services up in {:.1} s: Postgres {}, BigQuery emulator {}, Twenty fake {fake_url}",
        t.elapsed().as_secs_f64(),
        pg.url,
        bq.url
    );

    let result = run(&args, &dir, &pg, &bq, fake.clone(), &fake_url, &fake_key).await;

    fake.lock().await.go_offline(Duration::from_secs(1)).await;
    bq.stop().await;
    if let Err(e) = pg.delete().await {
        eprintln!("soak: stopping Postgres: {e:#}");
    }
    let keep = args.keep || !matches!(result, Ok(true));
    match tmp {
        Some(t) if keep => {
            let p = t.keep();
            println!(
                "working directory kept: {} (daemon.log, services.log)",
                p.display()
            );
        }
        Some(t) => drop(t),
        None => {}
    }
    result
}

async fn run(
    args: &Args,
    dir: &Path,
    pg: &env::Postgres,
    bq: &env::BigQuery,
    fake: Arc<tokio::sync::Mutex<FakeTwenty>>,
    fake_url: &str,
    fake_key: &str,
) -> anyhow::Result<bool> {
    let port = env::free_port()?;
    let dataset = "soak";
    let table = format!("`test-project.{dataset}.contacts`");
    std::fs::write(
        dir.join("contact-sync.toml"),
        format!(
            r#"data_dir = "data"

[sync]
interval_secs = {interval}

[server]
listen = "127.0.0.1:{port}"

[canonical]
kind = "bigquery"
base_url = "{bq}"
project = "test-project"
dataset = "{dataset}"
auth = "none"
# local-bigquery 0.4.0 updates no lastModifiedTime on DML: the idle check
# would hide users' edits.
idle_check = false
sweep_interval_secs = {sweep}

[stores.local]
kind = "sqlite"

[stores.postgres]
kind = "postgres"
url = {{ env = "SOAK_PG_URL" }}
slot_name = "contact_sync_soak"

[stores.twenty]
kind = "twenty"
base_url = "{fake_url}"
api_key = {{ env = "SOAK_TWENTY_KEY" }}
requests_per_minute = 300
webhook_secret = {{ env = "SOAK_TWENTY_HOOK" }}
webhook_url = "http://127.0.0.1:{port}/webhooks/twenty"
"#,
            interval = args.interval,
            sweep = args.sweep_interval,
            bq = bq.url,
        ),
    )?;
    let mut daemon = Daemon::new(
        dir,
        vec![
            ("SOAK_PG_URL".into(), pg.url.clone()),
            ("SOAK_TWENTY_KEY".into(), fake_key.into()),
            ("SOAK_TWENTY_HOOK".into(), "soak-webhook-secret".into()),
            ("CONTACT_SYNC_LOG".into(), args.daemon_log.clone()),
        ],
        port,
    );
    let t = Instant::now();
    daemon.cli_ok(&["migrate"]).await?;
    daemon
        .cli_ok(&["seed", "--contacts", &args.contacts.to_string()])
        .await?;
    let out = daemon.cli_ok(&["initial-sync"]).await?;
    println!(
        "migrate, seed and initial sync: {:.1} s\n{}",
        t.elapsed().as_secs_f64(),
        out.lines()
            .filter(|l| l.contains("expected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    daemon.start().await?;
    let pid = Arc::new(AtomicU32::new(daemon.pid().unwrap_or(0)));

    // Observer, users, per-minute samples.
    let shared = Arc::new(Shared::new());
    let bq_client = BigQueryClient::emulator(&bq.url, "test-project")?;
    let observer = observe::Observer::new(
        dir.join("data/local.db"),
        pg.url.clone(),
        bq_client.clone(),
        table.clone(),
        fake.clone(),
        Duration::from_millis(args.bq_poll_ms),
    );
    let obs_stop = Arc::new(AtomicBool::new(false));
    let obs_task = tokio::spawn(observe::run(
        observer,
        shared.clone(),
        Duration::from_millis(args.poll_ms),
        obs_stop.clone(),
    ));
    let ready = Instant::now();
    while lock(&shared.latest).len() < StoreId::ALL.len() {
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(60),
            "the observer could not read every store within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_start = Instant::now();
    let pause = Duration::from_millis(args.pause_ms);
    let user_list: Vec<Box<dyn users::StoreUser>> = vec![
        Box::new(users::BqUser::new(bq_client.clone(), table.clone())),
        Box::new(users::SqliteUser::new(dir.join("data/local.db"))),
        Box::new(users::PgUser::new(pg.url.clone())),
        Box::new(users::TwentyUser::new(fake_url.into(), fake_key.into())),
    ];
    let user_tasks: Vec<_> = user_list
        .into_iter()
        .filter(|u| args.users.iter().any(|n| n == u.store().name()))
        .map(|u| {
            let pause = match u.store() {
                StoreId::Canonical => Duration::from_millis(args.bq_pause_ms),
                _ => pause,
            };
            tokio::spawn(users::run(u, shared.clone(), args.seed, pause))
        })
        .collect();
    let minutes: Arc<Mutex<Vec<Minute>>> = Arc::default();
    let sampler_stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_every_minute(
        shared.clone(),
        pid.clone(),
        dir.join("data/state.db"),
        minutes.clone(),
        sampler_stop.clone(),
    ));

    // Faults until the end of the run.
    let run_end = run_start + Duration::from_secs_f64(args.minutes * 60.0);
    let faults = strike(args, &mut daemon, &pid, pg, &fake, run_start, run_end).await?;

    // The end: users stop, every store is up, the daemon settles.
    shared.stop_users();
    for t in user_tasks {
        t.await?;
    }
    let writes_end = Instant::now();
    println!(
        "{} users stopped; settling (deadline {} min)",
        mmss(run_start.elapsed()),
        args.settle_minutes
    );
    let settled = settle(
        &shared,
        &daemon,
        Duration::from_secs_f64(args.settle_minutes * 60.0),
    )
    .await;
    sampler_stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    obs_stop.store(true, Ordering::SeqCst);
    let mut observer = obs_task.await?;
    let status = daemon.terminate().await;
    pid.store(0, Ordering::SeqCst);

    let conflicts_json = daemon
        .cli_ok(&["conflicts", "list", "--all", "--json"])
        .await?;
    let conflicts = checker::Conflicts::parse(&serde_json::from_str(&conflicts_json)?)?;
    let dead: serde_json::Value =
        serde_json::from_str(&daemon.cli_ok(&["dead-letters", "list", "--json"]).await?)?;
    let drift = daemon.cli(&["drift"]).await?;

    let stores = observer.read_all(true).await;
    anyhow::ensure!(
        stores.len() == StoreId::ALL.len(),
        "the final read of every store failed: read {:?}",
        stores.keys().collect::<Vec<_>>()
    );
    let history = lock(&shared.history);
    let verdict = checker::check(&history, &stores, &conflicts);

    // Report.
    println!("\n== soak results (seed {})", args.seed);
    println!(
        "run: {} of users and faults, then settled {}",
        mmss(writes_end - run_start),
        match settled {
            Some(d) => format!("in {:.1} s", d.as_secs_f64()),
            None => format!("NOT within {} min", args.settle_minutes),
        }
    );
    println!(
        "faults: {} kill -9 of the daemon ({} starts), {} Postgres outages ({} down), {} Twenty outages ({} down)",
        faults.kills,
        daemon.starts,
        faults.pg_outages,
        mmss(faults.pg_down),
        faults.twenty_outages,
        mmss(faults.twenty_down)
    );
    let mut per_kind = [0u64; 3];
    for e in history.acked() {
        per_kind[match e.what {
            history::What::Edit { .. } => 0,
            history::What::Create { .. } => 1,
            history::What::Delete { .. } => 2,
        }] += 1;
    }
    println!(
        "edits made (acknowledged user writes): {} = {} edits, {} creates, {} deletes",
        verdict.checked, per_kind[0], per_kind[1], per_kind[2]
    );
    for (s, t) in &history.per_store {
        println!(
            "  {:<9} acknowledged {:>5}, outcome unknown {:>3}, refused/failed (no write) {:>4}",
            s.name(),
            t.acked,
            t.unknown,
            t.not_done
        );
    }
    println!(
        "converged {}, superseded {}, ended as a conflict {}, lost {}, duplicated {}, stores differing from canonical {}",
        verdict.converged,
        verdict.superseded,
        verdict.in_conflict,
        verdict.lost.len(),
        verdict.duplicated.len(),
        verdict.diverged.len()
    );
    // What only BigQuery's sweep can find: edits that left `last_updated`
    // alone and hard DELETEs of canonical rows.
    let sweep_only = |e: &&history::Event| {
        e.store == StoreId::Canonical
            && matches!(
                e.what,
                history::What::Edit { bumped: false, .. }
                    | history::What::Delete { hard: true, .. }
            )
    };
    let sweep_writes = history.acked().filter(sweep_only).count();
    let sweep_lost = verdict
        .lost
        .iter()
        .chain(&verdict.duplicated)
        .filter(|l| {
            l.contains(" in canonical: ")
                && (l.contains("(last_updated not bumped)") || l.contains(": hard delete "))
        })
        .count();
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    let sweeps_found = log
        .lines()
        .filter(|l| l.contains("the sweep found rows changed"))
        .count();
    println!(
        "BigQuery sweep (at least every {} s): {} acknowledged writes only it can find (unbumped UPDATEs, hard DELETEs), {} of them lost or duplicated; {} sweeps found rows (daemon.log)",
        args.sweep_interval, sweep_writes, sweep_lost, sweeps_found
    );
    println!(
        "conflicts recorded: {} ({} open); dead letters open: {}; `contact-sync drift`: exit {}",
        conflicts.total,
        conflicts.open,
        dead.as_array().map_or(0, Vec::len),
        drift.status.code().map_or("?".into(), |c| c.to_string())
    );
    let lag = lock(&shared.lag);
    let mut all: Vec<Duration> = lag.samples.iter().map(|s| s.lag).collect();
    all.sort();
    println!(
        "lag (acknowledged → visible in every other store; stores polled every {} ms, BigQuery every {} ms): {} writes, p50 {}, p99 {}, max {}; superseded before seen {}, never seen everywhere {}",
        args.poll_ms,
        args.bq_poll_ms,
        all.len(),
        ms(quantile(&all, 0.5)),
        ms(quantile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default()),
        lag.superseded,
        lag.pending()
    );
    for s in StoreId::ALL {
        let mut v: Vec<Duration> = lag
            .samples
            .iter()
            .filter(|x| x.origin == s)
            .map(|x| x.lag)
            .collect();
        v.sort();
        println!(
            "  from {:<9} {:>5} writes, p50 {:>8}, p99 {:>8}, max {:>8}",
            s.name(),
            v.len(),
            ms(quantile(&v, 0.5)),
            ms(quantile(&v, 0.99)),
            ms(v.last().copied().unwrap_or_default())
        );
    }
    println!("daemon RSS and state database (state.db + WAL), per minute:");
    println!(
        "  {:>5}  {:>8}  {:>9}  {:>8}  {:>12}",
        "t", "RSS MB", "state MB", "writes", "lag p99 (n)"
    );
    for m in lock(&minutes).iter() {
        println!(
            "  {:>5}  {:>8}  {:>9.2}  {:>8}  {:>12}",
            mmss(m.at),
            m.rss
                .map(|b| format!("{:.1}", b as f64 / 1048576.0))
                .unwrap_or_else(|| "down".into()),
            m.state_bytes as f64 / 1048576.0,
            m.acked,
            match m.lag_p99 {
                Some(d) => format!("{} ({})", ms(d), m.lag_n),
                None => "-".into(),
            }
        );
    }
    match &status {
        Ok(s) => println!("daemon stopped by SIGTERM: {s}"),
        Err(e) => println!("daemon stop: {e:#}"),
    }
    if !observer.failed.is_empty() {
        println!(
            "observer reads that failed (store down): {:?}",
            observer
                .failed
                .iter()
                .map(|(s, n)| (s.name(), *n))
                .collect::<BTreeMap<_, _>>()
        );
    }
    println!("fault log:");
    for (at, what) in &faults.log {
        println!("  {} {what}", mmss(*at));
    }
    for (title, lines) in [
        ("LOST", &verdict.lost),
        ("DUPLICATED", &verdict.duplicated),
        ("DIVERGED", &verdict.diverged),
    ] {
        if !lines.is_empty() {
            println!("{title} ({}):", lines.len());
            for l in lines.iter().take(40) {
                println!("  {l}");
            }
        }
    }
    let ok = verdict.ok() && settled.is_some() && status.is_ok_and(|s| s.success());
    println!("verdict: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// The faults, in turn, until `end`: kill -9 of the daemon, a Postgres
/// outage, a Twenty outage (an outage sometimes with a kill -9 in it).
async fn strike(
    args: &Args,
    daemon: &mut Daemon,
    pid: &AtomicU32,
    pg: &env::Postgres,
    fake: &tokio::sync::Mutex<FakeTwenty>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<Faults> {
    let mut f = Faults {
        log: Vec::new(),
        kills: 0,
        pg_outages: 0,
        pg_down: Duration::ZERO,
        twenty_outages: 0,
        twenty_down: Duration::ZERO,
    };
    let mut rng = SmallRng::seed_from_u64(args.seed ^ 0xfa17);
    if args.fault_every == 0 {
        tokio::time::sleep_until(end.into()).await;
        return Ok(f);
    }
    let every = Duration::from_secs(args.fault_every);
    let mut next = start + every.min(end.saturating_duration_since(start) / 5);
    let mut turn = rng.gen_range(0..3);
    loop {
        tokio::time::sleep_until(next.min(end).into()).await;
        if Instant::now() >= end {
            return Ok(f);
        }
        let outage = Duration::from_secs_f64(rng.gen_range(5.0..25.0));
        let kill_during = rng.gen_bool(0.3);
        match turn % 3 {
            0 => {
                kill_restart(daemon, pid, &mut f, &mut rng, start).await?;
            }
            1 => {
                pg.stop().await?;
                let down = Instant::now();
                f.log.push((start.elapsed(), "Postgres stopped".into()));
                f.pg_outages += 1;
                if kill_during {
                    tokio::time::sleep(outage / 2).await;
                    kill_restart(daemon, pid, &mut f, &mut rng, start).await?;
                }
                tokio::time::sleep_until((down + outage).into()).await;
                pg.restart().await?;
                f.pg_down += down.elapsed();
                f.log.push((
                    start.elapsed(),
                    format!(
                        "Postgres started again ({:.0} s down)",
                        down.elapsed().as_secs_f64()
                    ),
                ));
            }
            _ => {
                fake.lock().await.go_offline(Duration::from_secs(2)).await;
                let down = Instant::now();
                f.log.push((start.elapsed(), "Twenty down".into()));
                f.twenty_outages += 1;
                if kill_during {
                    tokio::time::sleep(outage / 2).await;
                    kill_restart(daemon, pid, &mut f, &mut rng, start).await?;
                }
                tokio::time::sleep_until((down + outage).into()).await;
                fake.lock().await.come_back().await?;
                f.twenty_down += down.elapsed();
                f.log.push((
                    start.elapsed(),
                    format!("Twenty back ({:.0} s down)", down.elapsed().as_secs_f64()),
                ));
            }
        }
        turn += 1;
        next = Instant::now() + every.mul_f64(rng.gen_range(0.5..1.5));
    }
}

async fn kill_restart(
    daemon: &mut Daemon,
    pid: &AtomicU32,
    f: &mut Faults,
    rng: &mut SmallRng,
    start: Instant,
) -> anyhow::Result<()> {
    daemon.kill9().await?;
    pid.store(0, Ordering::SeqCst);
    f.kills += 1;
    let down = Duration::from_secs_f64(rng.gen_range(0.0..3.0));
    f.log
        .push((start.elapsed(), "daemon killed (SIGKILL)".into()));
    tokio::time::sleep(down).await;
    daemon.start().await?;
    pid.store(daemon.pid().unwrap_or(0), Ordering::SeqCst);
    f.log.push((start.elapsed(), "daemon started".into()));
    Ok(())
}

/// Waits until every store equals canonical and stays so over three more
/// daemon cycles (so slower paths, like BigQuery's fingerprint sweep,
/// have had their turn). `None` when `deadline` passes first.
async fn settle(shared: &Shared, daemon: &Daemon, deadline: Duration) -> Option<Duration> {
    let begun = Instant::now();
    let http = reqwest::Client::new();
    let mut quiet_since: Option<f64> = None;
    let mut last_report = Instant::now();
    loop {
        let snaps: checker::Stores = lock(&shared.latest)
            .iter()
            .filter(|(_, s)| s.at > begun)
            .map(|(k, s)| (*k, (**s).clone()))
            .collect();
        let cycles = daemon
            .metric(&http, "contact_sync_cycles_total")
            .await
            .unwrap_or(0.0);
        if snaps.len() == StoreId::ALL.len() {
            let (dups, diverged) = checker::compare_stores(&snaps);
            if dups.is_empty() && diverged.is_empty() {
                match quiet_since {
                    None => quiet_since = Some(cycles),
                    Some(c0) if cycles >= c0 + 3.0 => return Some(begun.elapsed()),
                    _ => {}
                }
            } else {
                quiet_since = None;
                if last_report.elapsed() > Duration::from_secs(30) {
                    last_report = Instant::now();
                    println!(
                        "  settling: {} differences left, e.g. {}",
                        dups.len() + diverged.len(),
                        dups.iter()
                            .chain(&diverged)
                            .next()
                            .cloned()
                            .unwrap_or_default()
                    );
                }
            }
        }
        if begun.elapsed() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every minute: the daemon's RSS, the state database's size, the writes
/// so far and the lag of the writes seen everywhere that minute.
async fn sample_every_minute(
    shared: Arc<Shared>,
    pid: Arc<AtomicU32>,
    state_db: PathBuf,
    out: Arc<Mutex<Vec<Minute>>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = Instant::now();
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        let p = pid.load(Ordering::SeqCst);
        let mut lags: Vec<Duration> = lock(&shared.lag)
            .samples
            .iter()
            .filter(|s| s.done > last && s.done <= now)
            .map(|s| s.lag)
            .collect();
        lags.sort();
        let acked = lock(&shared.history).acked().count() as u64;
        lock(&out).push(Minute {
            at: shared.start.elapsed(),
            rss: (p != 0).then(|| env::rss_bytes(p)).flatten(),
            state_bytes: env::sqlite_size(&state_db),
            acked,
            lag_p99: (!lags.is_empty()).then(|| quantile(&lags, 0.99)),
            lag_n: lags.len(),
        });
        last = now;
        next += Duration::from_secs(60);
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
