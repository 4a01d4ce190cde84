//! The daemon loop and the initial sync with its progress bar.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync_engine::{Engine, EngineOptions, StoreVerification, CANONICAL};
use contact_sync_ops::{Alerter, CycleOutcome, OpsHandle, StoreSample, WebhookNotifier};
use contact_sync_twenty::webhook::WebhookReceiver;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::Notify;

use anyhow::Context;

use crate::commands::open_state;
use crate::config::Config;
use crate::stores;

/// Builds the engine over the configured stores (does not take the lock).
pub async fn build_engine(cfg: &Config, batch_size: Option<usize>) -> anyhow::Result<Engine> {
    Ok(build_engine_with_hooks(cfg, batch_size).await?.0)
}

/// What wakes the daemon between intervals.
pub struct Wakeups {
    /// Webhook receivers (store name, receiver).
    pub webhooks: Vec<(String, WebhookReceiver)>,
    /// Database change notifiers (store name, notifier).
    pub databases: Vec<(String, contact_sync_postgres::ChangeNotifier)>,
}

/// The engine, and what wakes it.
pub async fn build_engine_with_hooks(
    cfg: &Config,
    batch_size: Option<usize>,
) -> anyhow::Result<(Engine, Wakeups)> {
    let batch = checked_batch_size(cfg, batch_size)?;
    let state = open_state(cfg)?;
    let canonical = stores::open_canonical(cfg).await?;
    let opened = stores::open_others(cfg, true).await?;
    let hooks = Wakeups {
        webhooks: opened.webhooks,
        databases: opened.wakes,
    };
    Ok((
        Engine::new(state, canonical, opened.stores, engine_options(cfg, batch))?,
        hooks,
    ))
}

/// The engine's options from the configuration.
fn engine_options(cfg: &Config, batch: usize) -> EngineOptions {
    EngineOptions {
        batch_size: batch,
        guard: cfg.sync.guard(),
        default_region: cfg.sync.region(),
        config_hashes: cfg.store_fingerprints(),
        ..EngineOptions::default()
    }
}

/// An engine for reading only (`drift` without `--repair`): the stores
/// are opened without their set-up and without wake-ups, and no lock is
/// taken, so it runs beside a daemon.
pub async fn build_readonly_engine(cfg: &Config) -> anyhow::Result<Engine> {
    let batch = checked_batch_size(cfg, None)?;
    let state = open_state(cfg)?;
    let canonical = stores::open_canonical(cfg).await?;
    let mut others = Vec::new();
    for (name, sc) in cfg.stores() {
        others.push(stores::open_store(cfg, name, sc).await?);
    }
    Ok(Engine::new(
        state,
        canonical,
        others,
        engine_options(cfg, batch),
    )?)
}

/// The daemon's engine: every other store behind a gate (held while its
/// initial sync is pending; a store that cannot be opened is held too).
async fn build_daemon_engine(
    cfg: &Config,
    batch: usize,
    work: Option<std::collections::BTreeSet<String>>,
    fill_while_idle: bool,
) -> anyhow::Result<(
    Engine,
    Wakeups,
    Vec<crate::backfill::Gate>,
    Option<crate::bq_wiring::BqCanonical>,
)> {
    let state = open_state(cfg)?;
    let (canonical, bq) = crate::bq_wiring::open_canonical(cfg)
        .await
        .context("the canonical store cannot be opened (the daemon cannot run without it)")?;
    let (opened, gates) = stores::open_others_held(cfg).await?;
    let hooks = Wakeups {
        webhooks: opened.webhooks,
        databases: opened.wakes,
    };
    let mut opts = engine_options(cfg, batch);
    // The search index is never filled inside a cycle: a running daemon
    // fills it while it waits, `--once` after its cycle (`ONCE_FILL`).
    opts.search_fill_per_cycle = Duration::ZERO;
    if fill_while_idle {
        // A running daemon (not `--once`): a store's backlog is merged in
        // slices, the other stores written between them.
        opts.capture_budget = cfg.sync.capture_budget();
    }
    // Several daemons: this one does its leases' part, and merges check
    // that no other daemon journaled their contacts meanwhile.
    opts.concurrent = work.is_some();
    opts.only = work;
    Ok((
        Engine::new(state, canonical, opened.stores, opts)?,
        hooks,
        gates,
        bq,
    ))
}

/// `--batch-size`, else the configuration's; refused outside 1..=10000
/// like `sync.batch_size`.
pub fn checked_batch_size(cfg: &Config, batch_size: Option<usize>) -> anyhow::Result<usize> {
    let batch = batch_size.unwrap_or(cfg.sync.batch_size);
    if !(1..=crate::config::MAX_BATCH_SIZE).contains(&batch) {
        return Err(crate::config::ConfigError(format!(
            "--batch-size {batch} is out of range (1 to {})",
            crate::config::MAX_BATCH_SIZE
        ))
        .into());
    }
    Ok(batch)
}

/// Stops engines after the batch in flight: the daemon's, and the ones
/// its per-store initial syncs run on.
#[derive(Clone, Default)]
pub struct Stopper {
    flags: Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>,
    stopped: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl Stopper {
    pub fn new(wake: Arc<Notify>) -> Stopper {
        Stopper {
            wake,
            ..Stopper::default()
        }
    }

    /// Sets `flag` when a shutdown is requested (at once if one was).
    pub fn watch(&self, flag: Arc<AtomicBool>) {
        let mut flags = self.flags.lock().unwrap_or_else(|p| p.into_inner());
        flags.retain(|f| Arc::strong_count(f) > 1);
        if self.is_stopped() {
            flag.store(true, Ordering::SeqCst);
        }
        flags.push(flag);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for f in self.flags.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            f.store(true, Ordering::SeqCst);
        }
        self.wake.notify_one();
    }
}

/// Exit status after a second interrupt (128 + SIGINT).
const INTERRUPTED_TWICE: i32 = 130;

/// SIGINT or SIGTERM: finish the batch in flight, then stop. A second one:
/// exit at once (non-zero). Nothing is lost either way: a batch not
/// recorded in the state database is sent again at the next start.
fn install_signal_handlers(stopper: Stopper) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    None
                }
            };
        for n in 0.. {
            #[cfg(unix)]
            {
                let term_recv = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = tokio::signal::ctrl_c() => if r.is_err() { return; },
                    _ = term_recv => {},
                }
            }
            #[cfg(not(unix))]
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if n == 0 {
                tracing::info!(
                    "shutdown requested: finishing the batch in flight (interrupt again to exit at once)"
                );
                stopper.stop();
            } else {
                eprintln!(
                    "second interrupt: exiting now without finishing the batch in flight \
                     (nothing is lost: it is sent again at the next start)"
                );
                std::process::exit(INTERRUPTED_TWICE);
            }
        }
    });
}

pub fn print_verification(results: &[StoreVerification]) {
    println!("verification:");
    for v in results {
        let verdict = if v.missing + v.differing + v.extra == 0 && v.unreadable.is_empty() {
            "OK"
        } else {
            "DRIFT"
        };
        println!(
            "  {:<12} {verdict:<5} expected {:>8}  present {:>8}  missing {:>6}  differing {:>6}  extra {:>6}  drift {:.2} %",
            v.store, v.expected, v.matching, v.missing, v.differing, v.extra, v.drift_pct
        );
        if !v.sample.is_empty() {
            println!(
                "  {:<12} e.g. {}",
                "",
                v.sample
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !v.unreadable.is_empty() {
            println!(
                "  {:<12} {} record(s) cannot be read as contacts (fix them in the store named; a repair leaves them alone):",
                "",
                v.unreadable.len(),
            );
            for u in v.unreadable.iter().take(50) {
                let contact = if u.contact_id.is_empty() {
                    "no contact id".to_string()
                } else {
                    format!("contact {}", u.contact_id)
                };
                println!(
                    "  {:<12}   {} {} ({contact}): field {}: {}",
                    "", u.store, u.native_id, u.field, u.reason
                );
            }
            if v.unreadable.len() > 50 {
                println!(
                    "  {:<12}   … and {} more (`drift --json` lists every one)",
                    "",
                    v.unreadable.len() - 50
                );
            }
        }
    }
}

pub(crate) async fn do_initial_sync(engine: &mut Engine) -> anyhow::Result<Vec<StoreVerification>> {
    let started = Instant::now();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:40}] {pos}/{len} contacts ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars: Vec<(String, ProgressBar)> = Vec::new();
    let mut progress = |store: &str, done: u64, total: u64| {
        let bar = match bars.iter().find(|(s, _)| s == store) {
            Some((_, b)) => b.clone(),
            None => {
                let b = multi.add(ProgressBar::new(total));
                b.set_style(style.clone());
                b.set_prefix(store.to_string());
                bars.push((store.to_string(), b.clone()));
                b
            }
        };
        bar.set_length(total.max(done));
        bar.set_position(done);
    };
    let results = engine.initial_sync(&mut progress).await?;
    for (_, b) in &bars {
        b.finish();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("initial sync finished in {secs:.1} s");
    print_verification(&results);
    Ok(results)
}

/// `initial-sync`: backfill, verify, summary. Exit 1 when a store drifts.
pub async fn initial_sync_only(
    cfg: &Config,
    batch_size: Option<usize>,
) -> anyhow::Result<ExitCode> {
    let mut engine = build_engine(cfg, batch_size).await?;
    let _lock = crate::commands::take_lock(engine.state())?;
    let stopper = Stopper::new(Arc::new(Notify::new()));
    stopper.watch(engine.shutdown_flag());
    install_signal_handlers(stopper);
    let results = do_initial_sync(&mut engine).await?;
    let ok = results
        .iter()
        .all(|v| v.missing + v.differing + v.extra == 0 && v.unreadable.is_empty());
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Options of `run`.
pub struct RunOptions {
    pub initial_sync: bool,
    pub once: bool,
    pub interval: Option<u64>,
    pub batch_size: Option<usize>,
    pub safety_check: bool,
    /// Overrides `[server] listen`; `None` keeps the configuration.
    pub http_listen: Option<std::net::SocketAddr>,
    pub no_http: bool,
    pub config_path: Option<std::path::PathBuf>,
}

/// A second connection to a Postgres store, used only to read its
/// replication slot's retained WAL; (re)connected when missing.
struct WalProbe {
    name: String,
    cfg: crate::config::PostgresConfig,
    store: Option<contact_sync_postgres::PgStore>,
}

impl WalProbe {
    async fn retained(&mut self) -> Option<u64> {
        if self.store.is_none() {
            match stores::pg_store(&self.name, &self.cfg).await {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    tracing::debug!(store = %self.name, error = %format!("{e:#}"), "no WAL probe");
                    return None;
                }
            }
        }
        let pg = self.store.as_mut()?;
        match pg.slot_health().await {
            Ok(h) => h.retained_wal_bytes.map(|b| b.max(0) as u64),
            Err(e) => {
                tracing::debug!(store = %self.name, error = %e, "WAL probe failed; reconnecting next time");
                self.store = None;
                None
            }
        }
    }
}

/// Numbers for `/metrics` after a cycle: synced records per store. A
/// number the state database cannot give is left out (logged), never the
/// end of the daemon.
async fn samples(engine: &Engine, wal: &mut [WalProbe]) -> Vec<StoreSample> {
    let mut out = vec![StoreSample::new(CANONICAL, None)];
    for name in engine.store_names() {
        let n = match engine.state().store_record_count(&name) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(store = %name, error = %e, "cannot read the store's record count from the state database");
                None
            }
        };
        let mut sample = StoreSample::new(name.clone(), n);
        if let Some(p) = wal.iter_mut().find(|p| p.name == name) {
            sample.retained_wal_bytes = p.retained().await;
        }
        out.push(sample);
    }
    out
}

/// How often the daemon looks for edits other programs made to an SQLite
/// store (a read of `PRAGMA data_version`: no IO when nothing changed).
const SQLITE_WATCH_EVERY: Duration = Duration::from_millis(200);

/// `run`: the daemon.
pub async fn run(cfg: &Config, o: RunOptions) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs(o.interval.unwrap_or(cfg.sync.interval_secs).max(1));
    let batch = checked_batch_size(cfg, o.batch_size)?;
    if o.safety_check {
        let report = crate::commands::safety_report(cfg, o.config_path.as_deref()).await?;
        if report.verdict() == contact_sync_ops::Verdict::Unsafe {
            eprint!("{}", report.render_human());
            anyhow::bail!("refusing to start: the safety check says UNSAFE");
        }
    }
    if !o.initial_sync {
        crate::commands::refuse_missing_state(cfg).await?;
    }
    let wake = Arc::new(Notify::new());
    let stopper = Stopper::new(wake.clone());
    install_signal_handlers(stopper.clone());
    let ops = OpsHandle::default();
    let http = (!o.once && !o.no_http).then(|| {
        let mut sc = cfg.server.clone();
        if let Some(addr) = o.http_listen {
            sc.listen = addr;
        }
        sc
    });
    let Some(cluster) =
        crate::cluster::Cluster::from_config(cfg, http.as_ref().map(|h| h.listen)).await?
    else {
        let led = lead(cfg, &o, interval, batch, &stopper, &wake, &ops, None).await?;
        return Ok(led.code());
    };
    // Several daemons share the state database: take a fair share of the
    // work's leases (serving /health and /metrics while holding none), do
    // that part while it is ours, and set up again when it changes.
    let mut cluster = cluster;
    if !o.once {
        // `--once` takes all the work or none, and is no member: the
        // daemons keep their shares.
        cluster.join(|| stopper.is_stopped()).await?;
    }
    let share = o.once.then(|| cluster.units());
    let mut standby = None;
    loop {
        ops.set_leases(cluster.gauges());
        let waited = Instant::now();
        // `--once` waits only as long as a crashed holder's lease lasts: it
        // never waits behind a running daemon.
        let patience = cluster.timings.ttl + cluster.timings.poll * 2;
        let mut logged = false;
        loop {
            if stopper.is_stopped() {
                break;
            }
            cluster.rebalance(share).await;
            if if o.once {
                cluster.holds_all()
            } else {
                cluster.holds_any()
            } {
                break;
            }
            if o.once && waited.elapsed() > patience {
                let holders = cluster.describe_holders().await;
                cluster.release_work().await;
                anyhow::bail!(
                    "another daemon holds leases of the work of this state database ({holders}); `run --once` does not wait for it: stop it, or let it do the work"
                );
            }
            if !logged {
                tracing::info!("standby: the other daemons hold every lease of the work; taking one over when a daemon stops");
                logged = true;
            }
            if standby.is_none() {
                if let Some(sc) = &http {
                    standby = serve_standby(sc, &ops).await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(cluster.timings.poll) => {}
                _ = wake.notified() => {}
            }
        }
        if let Some(server) = standby.take() {
            // The daemon doing work binds the same address.
            let _ = tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await;
        }
        if stopper.is_stopped() {
            cluster.release_all().await;
            tracing::info!("contact-sync stopped cleanly (standby)");
            return Ok(ExitCode::SUCCESS);
        }
        ops.set_leases(cluster.gauges());
        crate::cluster::set_fences(cluster.fences());
        let led = lead(
            cfg,
            &o,
            interval,
            batch,
            &stopper,
            &wake,
            &ops,
            Some(&mut cluster),
        )
        .await;
        crate::cluster::set_fences(Vec::new());
        match led {
            Ok(Led::LeaseLost) => {
                tracing::warn!(
                    "a lease was lost: this daemon stopped that work and takes its share again"
                );
            }
            Ok(Led::Rebalanced) => {
                tracing::info!(work = ?cluster.work(), "the daemons' shares of the work changed: setting up again");
            }
            Ok(Led::Done(code)) => {
                cluster.release_all().await;
                return Ok(code);
            }
            Err(e) => {
                // Refused by the fence anywhere (opening the engine, an
                // initial sync, a request): a lease went to another daemon
                // while this one was stalled; take the share again.
                if fenced(&e) || !cluster.confirm().await {
                    tracing::warn!(error = %e, "a lease was lost: this daemon stopped that work and takes its share again");
                    continue;
                }
                cluster.release_all().await;
                return Err(e);
            }
        }
    }
}

/// A standby's /health and /metrics; a standby without HTTP still takes
/// leases over.
async fn serve_standby(
    sc: &contact_sync_ops::ServerConfig,
    ops: &OpsHandle,
) -> Option<contact_sync_ops::ServerHandle> {
    match serve_retrying(sc, ops, axum::Router::new()).await {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "standby: no HTTP server (/health, /metrics) while waiting");
            None
        }
    }
}

/// The HTTP server. The address may still be held for a moment by the
/// server of this daemon's previous turn at the work (several daemons): tried
/// for a few seconds.
async fn serve_retrying(
    sc: &contact_sync_ops::ServerConfig,
    ops: &OpsHandle,
    extra: axum::Router,
) -> anyhow::Result<contact_sync_ops::ServerHandle> {
    let mut tries = 0;
    loop {
        match contact_sync_ops::serve(sc, ops.clone(), extra.clone()).await {
            Ok(h) => return Ok(h),
            Err(e) if tries < 25 => {
                tracing::debug!(error = %e, "HTTP address busy; trying again");
                tries += 1;
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `e` is a commit refused by the lease's fence.
fn fenced(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<contact_sync_state::StateError>()
            .is_some_and(|s| s.is_fenced())
            || c.downcast_ref::<contact_sync_engine::EngineError>()
                .is_some_and(|s| s.is_fenced())
    })
}

/// How long `run --once` fills the search index at most, after its cycle
/// (the engine's budget per cycle when it filled it inside one).
const ONCE_FILL: Duration = Duration::from_secs(20);

/// One slice of the search index's fill between checks for a wake-up.
const SEARCH_FILL_SLICE: Duration = Duration::from_millis(300);

/// Watchers that live as long as the process, started by the first turn
/// at the work that needs them.
static REQUESTS_WATCHED: AtomicBool = AtomicBool::new(false);
static SQLITE_WATCHED: AtomicBool = AtomicBool::new(false);

/// Tasks of one turn at the work, ended with it.
#[derive(Default)]
struct LeadTasks(Vec<tokio::task::JoinHandle<()>>);

impl LeadTasks {
    fn push(&mut self, t: tokio::task::JoinHandle<()>) {
        self.0.push(t);
    }
}

impl Drop for LeadTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// How a daemon's turn at the work ended.
enum Led {
    Done(ExitCode),
    /// Another daemon holds one of this daemon's leases now.
    LeaseLost,
    /// This daemon's share of the work changed (a daemon joined or left).
    Rebalanced,
}

impl Led {
    fn code(self) -> ExitCode {
        match self {
            Led::Done(c) => c,
            Led::LeaseLost | Led::Rebalanced => ExitCode::from(1),
        }
    }
}

/// The daemon's work: initial syncs and cycles until stopped (or, with a
/// lease, until the lease is lost).
#[allow(clippy::too_many_arguments)]
async fn lead(
    cfg: &Config,
    o: &RunOptions,
    interval: Duration,
    batch: usize,
    stopper: &Stopper,
    wake: &Arc<Notify>,
    ops: &OpsHandle,
    mut lease: Option<&mut crate::cluster::Cluster>,
) -> anyhow::Result<Led> {
    // Several daemons: this one does its leases' part of the work; the
    // `engine` lease's holder (the primary) also serves the requests, the
    // initial syncs, the console, the drift checks and retention.
    let mut lead_tasks = LeadTasks::default();
    let work = lease.as_ref().map(|c| c.work());
    let primary = lease.as_ref().is_none_or(|c| c.is_primary());
    let (mut engine, hooks, gates, mut bq) = build_daemon_engine(cfg, batch, work, !o.once).await?;
    let lost_flags = lease.as_ref().map(|c| c.lost_flags()).unwrap_or_default();
    let lost = || lost_flags.iter().any(|f| f.load(Ordering::SeqCst));
    // With leases, the leases (and the fences on every commit) stand for
    // the single-instance lock.
    let _lock = match lease {
        None => Some(crate::commands::take_lock(engine.state())?),
        Some(_) => {
            // A command that took the instance lock before the lease was
            // taken finishes first (commands refuse while a lease is held).
            let mut logged = false;
            while let Some((pid, _)) = engine.state().command_lock_holder()? {
                if !logged {
                    tracing::info!(pid = %pid, "waiting for a command that drives the stores to finish");
                    logged = true;
                }
                if lost() || stopper.is_stopped() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None
        }
    };
    if primary {
        crate::requests::fail_interrupted(engine.state_mut())?;
    }
    stopper.watch(engine.shutdown_flag());
    if let Some(cluster) = lease.as_ref() {
        // Losing a lease stops the engine after the batch in flight (its
        // commit would be refused anyway) and wakes the loop.
        let (flag, lost_wake) = (engine.shutdown_flag(), wake.clone());
        cluster.on_lost(move || {
            flag.store(true, Ordering::SeqCst);
            lost_wake.notify_one();
        });
        // Another daemon's journal entries and canonical writes wake this
        // one (its stores are owed them).
        let leases_wake = wake.clone();
        let timings = cluster.timings;
        let progress = cluster.progress_probe();
        lead_tasks.push(tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(timings.poll).await;
                let now = progress.progress().await.ok();
                if now.is_some() && last.is_some() && now != last {
                    leases_wake.notify_one();
                }
                if now.is_some() {
                    last = now;
                }
            }
        }));
    }
    if !o.once && primary && !REQUESTS_WATCHED.swap(true, Ordering::SeqCst) {
        // Operator requests (`conflicts resolve`, `drift --repair`, `cdc
        // reset` while the daemon runs) wake the loop (one watcher for
        // the process's life).
        crate::requests::watch(cfg, wake.clone())?;
    }
    tracing::info!(stores = ?engine.store_names(), interval_secs = interval.as_secs(), "contact-sync started");

    // Database changes and webhooks wake the loop at once.
    let Wakeups {
        webhooks: hooks,
        databases,
    } = hooks;
    for (name, n) in &databases {
        tracing::debug!(store = %name, "database change wake-ups on");
        let (notify, wake) = (n.handle(), wake.clone());
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                wake.notify_one();
            }
        });
    }
    // SQLite stores (canonical.db, local.db): an edit by another program
    // wakes the loop within SQLITE_WATCH_EVERY, as NOTIFY does for Postgres
    // (watched once for the process's life).
    if !o.once && !SQLITE_WATCHED.swap(true, Ordering::SeqCst) {
        let sqlite = std::iter::once((contact_sync_engine::CANONICAL, cfg.canonical()))
            .chain(cfg.stores().iter().map(|(n, sc)| (n.as_str(), sc)));
        for (name, sc) in sqlite {
            if let crate::config::StoreConfig::Sqlite { path } = sc {
                let file = cfg.sqlite_path(name, path);
                let wake = wake.clone();
                contact_sync_sqlite::watch::spawn_watch(&file, SQLITE_WATCH_EVERY, move || {
                    wake.notify_one()
                })
                .with_context(|| {
                    format!("store {name}: cannot start watching {}", file.display())
                })?;
                tracing::debug!(store = %name, "SQLite change wake-ups on");
            }
        }
    }
    let mut extra = axum::Router::new();
    for (i, (name, rx)) in hooks.iter().enumerate() {
        // Every Twenty store at /webhooks/twenty/<name>; the first also at
        // /webhooks/twenty. Accepted deliveries are counted for /metrics.
        let mut paths = vec![contact_sync_twenty::webhook::path_for(name)];
        if i == 0 {
            paths.push(contact_sync_twenty::webhook::PATH.to_string());
        }
        for path in paths {
            let (counter, store) = (ops.clone(), name.clone());
            let counted = contact_sync_twenty::webhook::router_at(rx.clone(), &path).layer(
                axum::middleware::from_fn(
                    move |req: axum::extract::Request, next: axum::middleware::Next| {
                        let (ops, store) = (counter.clone(), store.clone());
                        async move {
                            let resp = next.run(req).await;
                            if resp.status().is_success() {
                                ops.add_webhook_events(&store, 1);
                            }
                            resp
                        }
                    },
                ),
            );
            extra = extra.merge(counted);
        }
        let (notify, wake) = (rx.notify(), wake.clone());
        tokio::spawn(async move {
            loop {
                notify.notified().await;
                wake.notify_one();
            }
        });
    }
    let mut wal_probes = Vec::new();
    for (name, sc) in cfg.stores() {
        if let crate::config::StoreConfig::Postgres(p) = sc {
            wal_probes.push(WalProbe {
                name: name.clone(),
                cfg: p.clone(),
                store: None,
            });
        }
    }
    let notifier = match &cfg.alerts.webhook_url {
        Some(url) => Some(
            WebhookNotifier::new(
                url.resolve("alerts.webhook_url")?.expose(),
                Duration::from_secs(10),
            )
            .map_err(|e| anyhow::anyhow!("alerts.webhook_url: {e}"))?,
        ),
        None => None,
    };
    let mut alerter = Alerter::new(cfg.alerts.thresholds(), notifier);
    let mut console_requests = None;
    let _server = if o.once || o.no_http {
        None
    } else {
        let mut sc = cfg.server.clone();
        if let Some(addr) = o.http_listen {
            sc.listen = addr;
        }
        // The console acts on the whole work: the primary's.
        if cfg.console.enabled && primary {
            let (router, rx) = console_router(cfg, &sc, ops.clone())?;
            extra = extra.merge(router);
            console_requests = Some(rx);
        }
        let h = serve_retrying(&sc, ops, extra).await?;
        tracing::info!(addr = %h.local_addr(), "HTTP server: /health /metrics{}{}", if console_requests.is_some() { " and the console at /" } else { "" }, if hooks.is_empty() { "" } else { " /webhooks/twenty[/<store>]" });
        Some(h)
    };

    // Stores whose backfill has not finished are held out of the cycles
    // and backfilled (retried with backoff), one at a time; a finished
    // backfill is never redone by a restart.
    let mut backfills = crate::backfill::Backfills::new(gates, batch, wake.clone());
    backfills
        .refresh(engine.state())
        .context("the state database cannot be read")?;
    if !primary {
        // Canonical's journal goes to BigQuery from the primary, which also
        // runs the initial syncs (the stores waiting for one are held out
        // of this daemon's cycles meanwhile).
        bq = None;
    } else if o.initial_sync && backfills.waiting().is_empty() {
        println!(
            "initial sync: every store has finished its backfill already (`contact-sync initial-sync` copies everything again)"
        );
    } else if !o.initial_sync && !backfills.waiting().is_empty() {
        tracing::info!(stores = ?backfills.waiting(), "a store has not been backfilled yet: running its initial sync");
    }
    let mut failures = 0u32;
    let mut next_rebalance = tokio::time::Instant::now();
    let drift_every = Duration::from_secs(cfg.sync.drift_interval_secs.max(1));
    let mut last_drift = Instant::now();
    loop {
        if lost() {
            return Ok(Led::LeaseLost);
        }
        if stopper.is_stopped() {
            break;
        }
        // Between cycles: what commands asked of the daemon.
        if primary {
            crate::requests::serve(cfg, &mut engine, &backfills, stopper).await;
        }
        backfills.refresh_logged(engine.state());
        if primary {
            backfills.run_due(cfg, stopper).await;
        } else {
            // The primary runs the initial syncs: a store is let into this
            // daemon's cycles once its backfill is done.
            match backfills.take_finished(cfg, engine.state()).await {
                Ok(done) if !done.is_empty() => {
                    tracing::info!(stores = ?done, "initial sync finished by the primary: syncing the store");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot let a backfilled store into the cycles")
                }
            }
        }
        if lost() {
            return Ok(Led::LeaseLost);
        }
        if stopper.is_stopped() {
            break;
        }
        if !o.once
            && primary
            && last_drift.elapsed() >= drift_every
            && backfills.waiting().is_empty()
        {
            last_drift = Instant::now();
            match engine.verify().await {
                Ok(v) => {
                    tracing::info!(stores = ?v.iter().map(|v| (&v.store, v.drift_pct)).collect::<Vec<_>>(), "drift check")
                }
                Err(e) => tracing::warn!(error = %e, "drift check failed"),
            }
        }
        let started = Instant::now();
        if let Some(bq) = bq.as_mut() {
            bq.begin_cycle();
        }
        let result = engine.cycle().await;
        // A store's capture stopped at its time budget with changes left.
        let more = matches!(&result, Ok(r) if r.more);
        // BigQuery: the journal table gets the cycle's entries (and any
        // left by a failed append); the cycle's cost is recorded.
        let bq_cost = match bq.as_mut() {
            Some(bq) => {
                bq.append_journal(engine.state_mut(), more).await;
                let cost = bq.end_cycle(engine.state_mut());
                ops.add_query_cost(
                    CANONICAL,
                    contact_sync_ops::QueryCost {
                        queries: cost.queries,
                        bytes_processed: cost.bytes_processed,
                        bytes_billed: cost.bytes_billed,
                    },
                );
                Some(cost)
            }
            None => None,
        };
        if let Ok(report) = &result {
            // Changes read from databases' change capture, for /metrics.
            for s in &report.stores {
                if wal_probes.iter().any(|p| p.name == s.store) && s.stats.captured > 0 {
                    ops.add_cdc_events(&s.store, s.stats.captured);
                }
            }
        }
        let outcome =
            CycleOutcome::from_result(&result, started.elapsed(), contact_sync_core::model::now());
        let samples = samples(&engine, &mut wal_probes).await;
        match ops.after_cycle(engine.state(), &samples, outcome) {
            Ok(snap) => {
                alerter.process(&snap).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot update metrics"),
        }
        let millis = started.elapsed().as_millis() as u64;
        match result {
            Ok(report) => {
                failures = 0;
                log_cycle(&report, millis, bq_cost.as_ref());
                if o.once {
                    print_cycle(&report);
                    if let Some(c) = &bq_cost {
                        println!("  BigQuery: {}", c.describe());
                    }
                    // The search index's fill from canonical (after an
                    // initial sync), once the cycle's changes went out and
                    // it was reported, as a daemon fills it between cycles.
                    if primary {
                        let at = Instant::now();
                        match engine.fill_search_index_for(ONCE_FILL).await {
                            Ok(done) => tracing::debug!(
                                done,
                                secs = at.elapsed().as_secs_f64(),
                                "search index fill from canonical"
                            ),
                            Err(e) => tracing::warn!(error = %e,
                                "filling the search index from canonical failed; retried at the next run"),
                        }
                    }
                    return Ok(Led::Done(if report.errors().is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }));
                }
            }
            Err(e) if e.is_fenced() && lease.is_some() => {
                // Another daemon holds a lease of this one now: nothing of
                // this cycle was committed.
                tracing::warn!(error = %e, "a commit was refused: another daemon holds a lease of this daemon's work");
                return Ok(Led::LeaseLost);
            }
            Err(e) => {
                // A commit refused by the fence means another daemon took
                // a lease: not a failure of the cycle.
                if let Some(cluster) = lease.as_ref() {
                    if !cluster.confirm().await {
                        return Ok(Led::LeaseLost);
                    }
                }
                failures += 1;
                tracing::error!(error = %e, alert = "sync_failure", "cycle failed");
                if o.once {
                    return Err(e.into());
                }
            }
        }
        if primary {
            crate::retention::run_if_due(engine.state_mut(), cfg.state.retention_days);
        }
        if stopper.is_stopped() {
            break;
        }
        // Back off after failures (up to 8 intervals), else wait for the
        // interval, a wake-up, or the next retry of a store's backfill.
        let mut wait = interval.saturating_mul(1u32 << failures.min(3));
        // A parked backfill resumed by this cycle is due at once.
        backfills.refresh_logged(engine.state());
        if let Some(due) = backfills.next_due().filter(|_| primary) {
            wait = wait.min(due.saturating_duration_since(Instant::now()));
        }
        if more {
            // The rest of a backlog: the next cycle at once.
            wait = Duration::ZERO;
        }
        let until = tokio::time::Instant::now() + wait;
        // `--once` never waits: its cycle filled the index already.
        let mut filling = primary && !o.once && !more;
        loop {
            // While nothing is due: the search index's fill from canonical
            // (after an initial sync), a slice at a time, so that an edit
            // arriving meanwhile never waits behind it.
            if filling && console_requests.as_ref().is_some_and(|r| !r.is_empty()) {
                // A person waits on the console: served first (below).
                filling = false;
            }
            if filling {
                if tokio::time::timeout(Duration::ZERO, wake.notified())
                    .await
                    .is_ok()
                {
                    break;
                }
                match engine.fill_search_index_for(SEARCH_FILL_SLICE).await {
                    Ok(done) => filling = !done,
                    Err(e) => {
                        tracing::warn!(error = %e, "filling the search index from canonical failed; retried later");
                        filling = false;
                    }
                }
                if tokio::time::Instant::now() >= until {
                    break;
                }
            }
            // Several daemons: the shares are looked at every poll, cycles
            // or not (a daemon joined or left).
            if let Some(cluster) = lease.as_deref_mut() {
                if tokio::time::Instant::now() >= next_rebalance {
                    next_rebalance = tokio::time::Instant::now() + cluster.timings.poll;
                    if cluster.rebalance(None).await {
                        return Ok(Led::Rebalanced);
                    }
                }
            }
            if lost() {
                return Ok(Led::LeaseLost);
            }
            let rebalance_at = if lease.is_some() {
                next_rebalance
            } else {
                until
            };
            if filling {
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = wake.notified() => break,
                _ = tokio::time::sleep_until(rebalance_at), if rebalance_at < until => continue,
                Some(req) = recv_console(&mut console_requests) => {
                    serve_console(&mut engine, req).await;
                    // Settle whatever else is waiting, then run a cycle.
                    while let Some(Ok(req)) = console_requests.as_mut().map(|r| r.try_recv()) {
                        serve_console(&mut engine, req).await;
                    }
                    break;
                },
            }
        }
    }
    tracing::info!("contact-sync stopped cleanly");
    Ok(Led::Done(ExitCode::SUCCESS))
}

/// The console's routes and the receiving end of its requests. A
/// non-loopback listener needs `[console] token`.
fn console_router(
    cfg: &Config,
    server: &contact_sync_ops::ServerConfig,
    ops: OpsHandle,
) -> anyhow::Result<(
    axum::Router,
    tokio::sync::mpsc::Receiver<contact_sync_ops::console::ConsoleRequest>,
)> {
    use contact_sync_ops::console;
    let token = match &cfg.console.token {
        Some(t) => Some(t.resolve("console.token")?.expose().to_string()),
        None => None,
    };
    let mut stores = vec![CANONICAL.to_string()];
    stores.extend(cfg.stores().keys().cloned());
    let (c, rx) = console::Console::new(
        console::ConsoleConfig {
            state: cfg.state_target()?,
            stores,
            token,
            allow_remote: server.allow_remote,
        },
        ops,
    )?;
    Ok((console::router(c), rx))
}

async fn recv_console(
    rx: &mut Option<tokio::sync::mpsc::Receiver<contact_sync_ops::console::ConsoleRequest>>,
) -> Option<contact_sync_ops::console::ConsoleRequest> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Carries out a console request on the daemon's engine, between cycles,
/// as the CLI's command does.
async fn serve_console(engine: &mut Engine, req: contact_sync_ops::console::ConsoleRequest) {
    match req {
        contact_sync_ops::console::ConsoleRequest::ResolveConflict {
            id,
            keep_incoming,
            reply,
        } => {
            let r = engine.resolve_conflict(id, keep_incoming).await;
            match &r {
                Ok(()) => tracing::info!(
                    conflict = id,
                    keep_incoming,
                    "conflict settled from the console"
                ),
                Err(e) => {
                    tracing::warn!(conflict = id, error = %e, "the console could not settle a conflict")
                }
            }
            let _ = reply.send(r.map_err(|e| e.to_string()));
        }
        contact_sync_ops::console::ConsoleRequest::ReadContact { contact_id, reply } => {
            let mut names = vec![CANONICAL.to_string()];
            names.extend(engine.store_names());
            let mut out = Vec::new();
            for name in names {
                let Some(store) = engine.store_mut(&name) else {
                    continue;
                };
                let (record, error) = match store.read(std::slice::from_ref(&contact_id)).await {
                    Ok(v) => (v.into_iter().next(), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                out.push(contact_sync_ops::console::StoreRead {
                    store: name,
                    record,
                    error,
                });
            }
            let _ = reply.send(out);
        }
    }
}

/// One line per cycle at info: what moved, or that nothing did.
fn log_cycle(
    report: &contact_sync_engine::CycleReport,
    millis: u64,
    bq: Option<&crate::bq_wiring::Cost>,
) {
    let errors = report.errors();
    let mut moved = 0u64;
    for s in &report.stores {
        moved += s.stats.applied + s.stats.written + s.stats.dead_letters;
    }
    let mut cost = bq
        .map(|c| format!("; BigQuery: {}", c.describe()))
        .unwrap_or_default();
    if report.more {
        cost.push_str("; a backlog is left: the next cycle starts at once");
    }
    if moved == 0 && errors.is_empty() {
        tracing::info!("cycle: nothing to do ({millis} ms{cost})");
        return;
    }
    let per_store: Vec<String> = report
        .stores
        .iter()
        .filter(|s| {
            s.error.is_some() || s.stats.applied + s.stats.written + s.stats.dead_letters > 0
        })
        .map(|s| {
            let mut t = format!(
                "{}: merged {} written {}",
                s.store, s.stats.applied, s.stats.written
            );
            if s.stats.dead_letters > 0 {
                t.push_str(&format!(" dead letters {}", s.stats.dead_letters));
            }
            if s.stats.conflicts > 0 {
                t.push_str(&format!(" conflicts {}", s.stats.conflicts));
            }
            if s.error.is_some() {
                t.push_str(" (error)");
            }
            t
        })
        .collect();
    tracing::info!("cycle: {} ({millis} ms{cost})", per_store.join("; "));
}

fn print_cycle(report: &contact_sync_engine::CycleReport) {
    println!("cycle:");
    for s in &report.stores {
        println!(
            "  {:<12} captured {:>6}  merged {:>6}  written {:>6}  echoes skipped {:>6}  dead letters {:>4}  conflicts {:>4}{}",
            s.store,
            s.stats.captured,
            s.stats.applied,
            s.stats.written,
            s.stats.skipped_echo,
            s.stats.dead_letters,
            s.stats.conflicts,
            s.error.as_ref().map(|e| format!("  ERROR: {e}")).unwrap_or_default()
        );
    }
}
