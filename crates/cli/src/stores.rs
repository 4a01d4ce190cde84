//! Building the configured stores.

use anyhow::Context;
use contact_sync_connector::Store;
use contact_sync_sqlite::SqliteStore;

use contact_sync_twenty::webhook::WebhookReceiver;
use contact_sync_twenty::{Secret, TwentyConfig, TwentyStore};

use std::sync::Arc;

use contact_sync_bigquery::{
    BigQueryClient, BigQueryStore, BigQueryStoreConfig, ClientConfig, ColumnMap, MetadataServer,
    NoAuth, ServiceAccountKey, TokenProvider,
};

use contact_sync_postgres::{CdcMode, ChangeNotifier, PgConfig, PgStore};

use crate::config::{
    BigQueryConfig, Config, ConfigError, PostgresConfig, StoreConfig, TwentyStoreConfig,
};

/// Opens one store by its configuration.
pub async fn open_store(
    cfg: &Config,
    name: &str,
    sc: &StoreConfig,
) -> anyhow::Result<Box<dyn Store>> {
    match sc {
        StoreConfig::Sqlite { path } => {
            let path = cfg.sqlite_path(name, path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
            let s = SqliteStore::open(&path, name)
                .with_context(|| format!("store {name}: cannot open {}", path.display()))?;
            Ok(Box::new(s))
        }
        StoreConfig::Twenty(t) => Ok(Box::new(twenty_store(name, t)?)),
        StoreConfig::Postgres(p) => Ok(Box::new(pg_store(name, p).await?)),
        StoreConfig::Bigquery(b) => {
            let (client, bcfg) = bigquery_parts(name, b)?;
            let store = BigQueryStore::open(client, bcfg)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("store {name}: cannot open the BigQuery table (run `contact-sync migrate` first?)"))?;
            Ok(Box::new(store))
        }
    }
}

/// The Postgres store of a configuration (connected; not migrated).
pub async fn pg_store(name: &str, p: &PostgresConfig) -> anyhow::Result<PgStore> {
    let url = p.url.resolve(&format!("stores.{name}.url"))?;
    let mut cfg = PgConfig::new(name, url.expose());
    cfg.schema = p.schema.clone();
    cfg.table = p.table.clone();
    cfg.columns = p.columns.clone();
    cfg.cdc = match p.cdc.as_str() {
        "slot" => CdcMode::Slot,
        "outbox" => CdcMode::Outbox,
        other => {
            return Err(ConfigError(format!(
                "stores.{name}.cdc = {other:?}: use \"slot\" or \"outbox\""
            ))
            .into())
        }
    };
    if let Some(s) = &p.slot_name {
        cfg.slot_name = s.clone();
    }
    if let Some(s) = &p.publication {
        cfg.publication = s.clone();
    }
    cfg.check()
        .map_err(|e| ConfigError(format!("stores.{name}: {e}")))?;
    PgStore::connect(cfg)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("store {name}: cannot connect"))
}

/// The BigQuery client and store configuration of a configuration.
pub fn bigquery_parts(
    name: &str,
    b: &BigQueryConfig,
) -> anyhow::Result<(BigQueryClient, BigQueryStoreConfig)> {
    let auth: Arc<dyn TokenProvider> = match b.auth.as_str() {
        "none" => Arc::new(NoAuth),
        "metadata" => Arc::new(MetadataServer::new(b.metadata_url.clone().unwrap_or_else(
            || contact_sync_bigquery::DEFAULT_METADATA_TOKEN_URL.to_string(),
        ))),
        "service_account" => {
            let key = b.key_file.as_ref().ok_or_else(|| {
                ConfigError(format!("{name}: auth = \"service_account\" needs key_file"))
            })?;
            Arc::new(
                ServiceAccountKey::from_file(key)
                    .map_err(|e| ConfigError(format!("{name}.key_file: {e}")))?,
            )
        }
        other => {
            return Err(ConfigError(format!(
                "{name}.auth = {other:?}: use \"none\", \"metadata\" or \"service_account\""
            ))
            .into())
        }
    };
    let mut ccfg = ClientConfig::new(b.project.clone());
    ccfg.base_url = b.base_url.clone();
    ccfg.location = b.location.clone();
    let client = BigQueryClient::new(ccfg, auth).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let mut cfg = BigQueryStoreConfig::new(b.dataset.clone());
    cfg.name = name.to_string();
    cfg.table = b.table.clone();
    if let Some(j) = &b.journal_table {
        cfg.journal_table = (!j.is_empty()).then(|| j.clone());
    }
    if let Some(o) = b.overlap_secs {
        cfg.overlap = std::time::Duration::from_secs(o);
    }
    if let Some(n) = b.sweep_every {
        cfg.sweep_every = (n > 0).then_some(n);
    }
    if let Some(s) = b.sweep_interval_secs {
        cfg.sweep_interval = (s > 0).then(|| std::time::Duration::from_secs(s));
    }
    if let Some(i) = b.idle_check {
        cfg.idle_check = i;
    }
    let mut cols = ColumnMap::default();
    for (field, column) in &b.columns {
        cols = cols.rename(field, column);
    }
    cfg.columns = cols;
    Ok((client, cfg))
}

/// The Twenty store of a configuration (secrets resolved).
pub fn twenty_store(name: &str, t: &TwentyStoreConfig) -> anyhow::Result<TwentyStore> {
    let key = t.api_key.resolve(&format!("stores.{name}.api_key"))?;
    let mut cfg = TwentyConfig::new(t.base_url.clone(), Secret::new(key.expose()));
    cfg.name = name.to_string();
    cfg.batch_size = t.batch_size;
    cfg.requests_per_minute = t.requests_per_minute;
    cfg.include_excluded = t.include_excluded;
    cfg.webhook_url = t.webhook_url.clone();
    cfg.rate_window = std::time::Duration::from_secs_f64(t.rate_window_secs.max(0.001));
    if let Some(s) = &t.webhook_secret {
        cfg.webhook_secret = Some(Secret::new(
            s.resolve(&format!("stores.{name}.webhook_secret"))?
                .expose(),
        ));
    }
    cfg.validate().map_err(ConfigError)?;
    TwentyStore::new(cfg).with_context(|| format!("store {name}"))
}

/// Runs each configured store's own set-up (Twenty: custom fields and the
/// webhook); prints what was done.
pub async fn migrate_all(cfg: &Config) -> anyhow::Result<()> {
    for (name, sc) in cfg.stores() {
        match sc {
            StoreConfig::Sqlite { path } => {
                let path = cfg.sqlite_path(name, path);
                open_store(cfg, name, sc).await?;
                println!("{name}: SQLite table contacts ready in {}", path.display());
            }
            StoreConfig::Twenty(t) => {
                let mut store = twenty_store(name, t)?;
                let report = store
                    .migrate()
                    .await
                    .with_context(|| format!("store {name}: migrate"))?;
                println!("{name}: {report:?}");
            }
            StoreConfig::Bigquery(b) => migrate_bigquery(name, b).await?,
            StoreConfig::Postgres(p) => {
                let mut store = pg_store(name, p).await?;
                store.migrate().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                println!("{name}: table, triggers and change capture ready");
            }
        }
    }
    if let StoreConfig::Bigquery(b) = cfg.canonical() {
        migrate_bigquery(contact_sync_engine::CANONICAL, b).await?;
    }
    open_canonical(cfg).await?;
    println!("canonical: ready");
    Ok(())
}

async fn migrate_bigquery(name: &str, b: &BigQueryConfig) -> anyhow::Result<()> {
    let (client, bcfg) = bigquery_parts(name, b)?;
    let report = BigQueryStore::migrate(&client, &bcfg)
        .await
        .map_err(|e| anyhow::anyhow!("{name}: migrate: {e}"))?;
    println!("{name}: {report:?}");
    Ok(())
}

/// The canonical store.
pub async fn open_canonical(cfg: &Config) -> anyhow::Result<Box<dyn Store>> {
    open_store(cfg, contact_sync_engine::CANONICAL, cfg.canonical()).await
}

/// The non-canonical stores, with what wakes the daemon for them.
pub struct Opened {
    pub stores: Vec<Box<dyn Store>>,
    /// Webhook receivers (store name, receiver).
    pub webhooks: Vec<(String, WebhookReceiver)>,
    /// Change notifiers of databases (store name, notifier).
    pub wakes: Vec<(String, ChangeNotifier)>,
    /// The daemon's gates of held stores ([`open_others_held`] only).
    pub gates: Vec<crate::backfill::Gate>,
}

/// Every other store, in name order. With `setup`, stores that set
/// themselves up (Postgres: table and change capture) do so first.
pub async fn open_others(cfg: &Config, setup: bool) -> anyhow::Result<Opened> {
    let names: Vec<&str> = cfg.stores().keys().map(String::as_str).collect();
    open_others_inner(cfg, &names, setup, false).await
}

/// The named stores as [`open_others`] with set-up opens them.
pub async fn open_others_named(cfg: &Config, names: &[&str]) -> anyhow::Result<Opened> {
    open_others_inner(cfg, names, true, false).await
}

/// Every other store for the daemon: each wrapped in a
/// [`Held`](crate::backfill::Held) store with its gate; a store that cannot
/// be opened is a held placeholder (its backfill opens it later) instead of
/// an error.
pub async fn open_others_held(
    cfg: &Config,
) -> anyhow::Result<(Opened, Vec<crate::backfill::Gate>)> {
    let names: Vec<&str> = cfg.stores().keys().map(String::as_str).collect();
    let mut opened = open_others_inner(cfg, &names, true, true).await?;
    let gates = std::mem::take(&mut opened.gates);
    Ok((opened, gates))
}

/// A store ready to sync (Postgres: table and change capture set up).
pub async fn open_for_sync(
    cfg: &Config,
    name: &str,
    sc: &StoreConfig,
) -> anyhow::Result<Box<dyn Store>> {
    match sc {
        StoreConfig::Postgres(p) => {
            let mut store = pg_store(name, p).await?;
            store
                .migrate()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
                .with_context(|| format!("store {name}: set-up"))?;
            Ok(Box::new(store))
        }
        _ => open_store(cfg, name, sc).await,
    }
}

async fn open_others_inner(
    cfg: &Config,
    names: &[&str],
    setup: bool,
    held: bool,
) -> anyhow::Result<Opened> {
    let mut out = Opened {
        stores: Vec::new(),
        webhooks: Vec::new(),
        wakes: Vec::new(),
        gates: Vec::new(),
    };
    for name in names {
        let Some(sc) = cfg.stores().get(*name) else {
            anyhow::bail!("no store named {name:?} in the configuration");
        };
        let name = name.to_string();
        let opened = match sc {
            StoreConfig::Twenty(t) => twenty_store(&name, t).map(|store| {
                if let Some(rx) = store.webhook_receiver() {
                    out.webhooks.push((name.clone(), rx));
                }
                Box::new(store) as Box<dyn Store>
            }),
            StoreConfig::Postgres(p) => match pg_store(&name, p).await {
                Ok(mut store) => {
                    let set_up = if setup {
                        // Idempotent: creates the table and change capture on first start.
                        store
                            .migrate()
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))
                            .with_context(|| format!("store {name}: set-up"))
                    } else {
                        Ok(())
                    };
                    match set_up {
                        Ok(()) => {
                            match store.change_notifier().await {
                                Ok(n) => out.wakes.push((name.clone(), n)),
                                Err(e) => {
                                    tracing::warn!(store = %name, error = %e, "no change wake-ups; polling only")
                                }
                            }
                            Ok(Box::new(store) as Box<dyn Store>)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            _ => open_store(cfg, &name, sc).await,
        };
        if !held {
            out.stores.push(opened?);
            continue;
        }
        let (store, gate) = match opened {
            Ok(s) => crate::backfill::Held::new(s),
            Err(e) => {
                // Bad configuration stays fatal: no retry fixes it.
                if e.downcast_ref::<ConfigError>().is_some() {
                    return Err(e);
                }
                tracing::warn!(store = %name, error = %format!("{e:#}"), alert = "sync_failure",
                    "store cannot be opened; the other stores keep syncing, this one is retried");
                crate::backfill::Held::unopened(&name, &format!("{e:#}"))
            }
        };
        out.stores.push(Box::new(store));
        out.gates.push(gate);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, StoreConfig};
    use std::time::Duration;

    fn bq_cfg(extra: &str) -> contact_sync_bigquery::BigQueryStoreConfig {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!("[canonical]\nkind = \"bigquery\"\nproject = \"p\"\ndataset = \"d\"\nauth = \"none\"\n{extra}"),
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        let StoreConfig::Bigquery(b) = c.canonical() else {
            panic!("bigquery canonical")
        };
        super::bigquery_parts("canonical", b).unwrap().1
    }

    #[test]
    fn the_sweep_schedule_defaults_to_every_3_caught_up_polls_and_at_least_every_900_s() {
        let c = bq_cfg("");
        assert_eq!(c.sweep_every, Some(3));
        assert_eq!(c.sweep_interval, Some(Duration::from_secs(900)));
        let c = bq_cfg("sweep_every = 1\nsweep_interval_secs = 60\n");
        assert_eq!(c.sweep_every, Some(1));
        assert_eq!(c.sweep_interval, Some(Duration::from_secs(60)));
        let c = bq_cfg("sweep_interval_secs = 0\n");
        assert_eq!(c.sweep_interval, None, "0: only sweep_every");
        let c = bq_cfg("sweep_every = 0\n");
        assert_eq!(c.sweep_every, None, "0: no sweep at all");
    }
}
