//! Building the configured stores.

use anyhow::Context;
use contact_sync_connector::Store;
use contact_sync_sqlite::SqliteStore;

use crate::config::{Config, StoreConfig};

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
    }
}

/// The canonical store.
pub async fn open_canonical(cfg: &Config) -> anyhow::Result<Box<dyn Store>> {
    open_store(cfg, contact_sync_engine::CANONICAL, cfg.canonical()).await
}

/// Every other store, in name order.
pub async fn open_others(cfg: &Config) -> anyhow::Result<Vec<Box<dyn Store>>> {
    let mut out = Vec::new();
    for (name, sc) in cfg.stores() {
        out.push(open_store(cfg, name, sc).await?);
    }
    Ok(out)
}
