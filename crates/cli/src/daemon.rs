//! The daemon loop and the initial sync with its progress bar.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync_engine::{Engine, EngineOptions, StoreVerification, CANONICAL};
use contact_sync_ops::{
    AlertThresholds, Alerter, CycleOutcome, OpsHandle, StoreSample, WebhookNotifier,
};
use contact_sync_twenty::webhook::WebhookReceiver;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::Notify;

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
    let state = open_state(cfg)?;
    let canonical = stores::open_canonical(cfg).await?;
    let opened = stores::open_others(cfg, true).await?;
    let (others, hooks) = (
        opened.stores,
        Wakeups {
            webhooks: opened.webhooks,
            databases: opened.wakes,
        },
    );
    let batch = batch_size.unwrap_or(cfg.sync.batch_size);
    if batch == 0 {
        return Err(crate::config::ConfigError("--batch-size must be at least 1".into()).into());
    }
    let opts = EngineOptions {
        batch_size: batch,
        ..EngineOptions::default()
    };
    Ok((Engine::new(state, canonical, others, opts)?, hooks))
}

/// Stops the engine after the batch in flight on SIGINT or SIGTERM.
fn install_signal_handlers(engine: &Engine, wake: Arc<Notify>) {
    let flag = engine.shutdown_flag();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        flag.store(true, Ordering::SeqCst);
                        wake.notify_one();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested: finishing the batch in flight");
        flag.store(true, Ordering::SeqCst);
        wake.notify_one();
    });
}

pub fn print_verification(results: &[StoreVerification]) {
    println!("verification:");
    for v in results {
        let verdict = if v.missing + v.differing + v.extra == 0 {
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
    }
}

async fn do_initial_sync(engine: &mut Engine) -> anyhow::Result<Vec<StoreVerification>> {
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
    let _lock = engine.state().lock()?;
    install_signal_handlers(&engine, Arc::new(Notify::new()));
    let results = do_initial_sync(&mut engine).await?;
    let ok = results
        .iter()
        .all(|v| v.missing + v.differing + v.extra == 0);
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Whether a store has never been backfilled, or `seed` asked for one since.
fn backfill_wanted(engine: &Engine) -> anyhow::Result<bool> {
    let state = engine.state();
    let requested = state.meta("backfill_requested_at")?.unwrap_or_default();
    for name in engine.store_names() {
        if state
            .meta(&format!("backfill:{name}"))?
            .is_some_and(|s| !s.is_empty())
        {
            return Ok(true); // an interrupted backfill
        }
        let done = state
            .meta(&format!("backfill_completed_at:{name}"))?
            .unwrap_or_default();
        if done.is_empty() || (!requested.is_empty() && requested > done) {
            return Ok(true);
        }
    }
    Ok(false)
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

/// Numbers for `/metrics` after a cycle: synced records per store.
/// `wal` holds a second connection to each Postgres store, used only to
/// read its replication slot's retained WAL.
async fn samples(
    engine: &Engine,
    wal: &mut [(String, contact_sync_postgres::PgStore)],
) -> anyhow::Result<Vec<StoreSample>> {
    let mut out = vec![StoreSample::new(CANONICAL, None)];
    for name in engine.store_names() {
        let n = engine.state().store_record_count(&name)?;
        let mut sample = StoreSample::new(name.clone(), Some(n));
        if let Some((_, pg)) = wal.iter_mut().find(|(n, _)| *n == name) {
            sample.retained_wal_bytes = pg
                .slot_health()
                .await
                .ok()
                .and_then(|h| h.retained_wal_bytes)
                .map(|b| b.max(0) as u64);
        }
        out.push(sample);
    }
    Ok(out)
}

/// `run`: the daemon.
pub async fn run(cfg: &Config, o: RunOptions) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs(o.interval.unwrap_or(cfg.sync.interval_secs).max(1));
    if o.safety_check {
        let report = crate::commands::safety_report(cfg, o.config_path.as_deref()).await?;
        if report.verdict() == contact_sync_ops::Verdict::Unsafe {
            eprint!("{}", report.render_human());
            anyhow::bail!("refusing to start: the safety check says UNSAFE");
        }
    }
    let (mut engine, hooks) = build_engine_with_hooks(cfg, o.batch_size).await?;
    let _lock = engine.state().lock()?;
    let wake = Arc::new(Notify::new());
    install_signal_handlers(&engine, wake.clone());
    let stop = engine.shutdown_flag();
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
    let ops = OpsHandle::default();
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
            wal_probes.push((name.clone(), stores::pg_store(name, p).await?));
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
    let mut alerter = Alerter::new(AlertThresholds::default(), notifier);
    let _server = if o.once || o.no_http {
        None
    } else {
        let mut sc = cfg.server.clone();
        if let Some(addr) = o.http_listen {
            sc.listen = addr;
        }
        let h = contact_sync_ops::serve(&sc, ops.clone(), extra).await?;
        tracing::info!(addr = %h.local_addr(), "HTTP server: /health /metrics{}", if hooks.is_empty() { "" } else { " /webhooks/twenty[/<store>]" });
        Some(h)
    };

    if o.initial_sync || backfill_wanted(&engine)? {
        if !o.initial_sync {
            tracing::info!("a store has not been backfilled yet: running the initial sync");
        }
        do_initial_sync(&mut engine).await?;
    }
    let mut failures = 0u32;
    let drift_every = Duration::from_secs(cfg.sync.drift_interval_secs.max(1));
    let mut last_drift = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if backfill_wanted(&engine)? {
            do_initial_sync(&mut engine).await?;
        }
        if !o.once && last_drift.elapsed() >= drift_every {
            last_drift = Instant::now();
            match engine.verify().await {
                Ok(v) => {
                    tracing::info!(stores = ?v.iter().map(|v| (&v.store, v.drift_pct)).collect::<Vec<_>>(), "drift check")
                }
                Err(e) => tracing::warn!(error = %e, "drift check failed"),
            }
        }
        let started = Instant::now();
        let result = engine.cycle().await;
        if let Ok(report) = &result {
            // Changes read from databases' change capture, for /metrics.
            for s in &report.stores {
                if wal_probes.iter().any(|(n, _)| *n == s.store) && s.stats.captured > 0 {
                    ops.add_cdc_events(&s.store, s.stats.captured);
                }
            }
        }
        let outcome =
            CycleOutcome::from_result(&result, started.elapsed(), contact_sync_core::model::now());
        let samples = samples(&engine, &mut wal_probes).await?;
        match ops.after_cycle(engine.state(), &samples, outcome) {
            Ok(snap) => {
                alerter.process(&snap).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot update metrics"),
        }
        match result {
            Ok(report) => {
                failures = 0;
                let errors = report.errors();
                let mut moved = 0u64;
                for s in &report.stores {
                    moved += s.stats.applied + s.stats.written + s.stats.dead_letters;
                }
                if moved > 0 || !errors.is_empty() {
                    tracing::info!(
                        millis = started.elapsed().as_millis() as u64,
                        ?report,
                        "cycle done"
                    );
                } else {
                    tracing::debug!(
                        millis = started.elapsed().as_millis() as u64,
                        "cycle done, nothing to do"
                    );
                }
                if o.once {
                    print_cycle(&report);
                    return Ok(if errors.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    });
                }
            }
            Err(e) => {
                failures += 1;
                tracing::error!(error = %e, alert = "sync_failure", "cycle failed");
                if o.once {
                    return Err(e.into());
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        // Back off after failures (up to 8 intervals), else wait for the interval or a wake-up.
        let wait = interval.saturating_mul(1u32 << failures.min(3));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {},
            _ = wake.notified() => {},
        }
    }
    tracing::info!("contact-sync stopped cleanly");
    Ok(ExitCode::SUCCESS)
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
