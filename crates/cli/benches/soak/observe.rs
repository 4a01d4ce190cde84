//! The observer: reads every store in turn, over and over (each read a
//! [`Snapshot`]), keeps the latest for the users to pick targets from, and
//! feeds the lag probes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync_bigquery::BigQueryClient;
use contact_sync_twenty_fake::FakeTwenty;

use crate::snapshot::{self, Snapshot, StoreId};
use crate::users::{lock, Shared};

pub struct Observer {
    pub local: PathBuf,
    pub pg_url: String,
    pg: Option<tokio_postgres::Client>,
    pub bq: BigQueryClient,
    pub bq_table: String,
    pub fake: Arc<tokio::sync::Mutex<FakeTwenty>>,
    /// Failed reads per store (a store that is down cannot be read).
    pub failed: BTreeMap<StoreId, u64>,
    /// BigQuery is read at most this often: every read is a query job,
    /// and the emulator serves the daemon and the users too.
    pub bq_every: Duration,
    bq_last: Option<Instant>,
}

impl Observer {
    pub fn new(
        local: PathBuf,
        pg_url: String,
        bq: BigQueryClient,
        bq_table: String,
        fake: Arc<tokio::sync::Mutex<FakeTwenty>>,
        bq_every: Duration,
    ) -> Observer {
        Observer {
            local,
            pg_url,
            pg: None,
            bq,
            bq_table,
            fake,
            failed: BTreeMap::new(),
            bq_every,
            bq_last: None,
        }
    }

    async fn read_one(&mut self, s: StoreId) -> anyhow::Result<Snapshot> {
        match s {
            StoreId::Canonical => snapshot::read_bigquery(&self.bq, &self.bq_table).await,
            StoreId::Local => {
                let p = self.local.clone();
                tokio::task::spawn_blocking(move || snapshot::read_sqlite(&p)).await?
            }
            StoreId::Postgres => {
                if self.pg.as_ref().is_none_or(|c| c.is_closed()) {
                    let connect = tokio_postgres::connect(&self.pg_url, tokio_postgres::NoTls);
                    let (client, conn) =
                        tokio::time::timeout(Duration::from_secs(5), connect).await??;
                    tokio::spawn(conn);
                    self.pg = Some(client);
                }
                let client = self.pg.as_ref().expect("connected above");
                let r = snapshot::read_postgres(client).await;
                if r.is_err() {
                    self.pg = None;
                }
                r
            }
            StoreId::Twenty => {
                let started = Instant::now();
                let people = self.fake.lock().await.people();
                Ok(snapshot::read_twenty(people, started))
            }
        }
    }

    /// Reads every store (BigQuery only when due, unless `all`); a store
    /// that cannot be read is left out.
    pub async fn read_all(&mut self, all: bool) -> BTreeMap<StoreId, Snapshot> {
        let mut out = BTreeMap::new();
        for s in StoreId::ALL {
            if s == StoreId::Canonical && !all {
                if self.bq_last.is_some_and(|t| t.elapsed() < self.bq_every) {
                    continue;
                }
                self.bq_last = Some(Instant::now());
            }
            match self.read_one(s).await {
                Ok(snap) => {
                    out.insert(s, snap);
                }
                Err(_) => *self.failed.entry(s).or_default() += 1,
            }
        }
        out
    }
}

/// Reads every store each `period` until `stop`; returns the observer.
pub async fn run(
    mut obs: Observer,
    shared: Arc<Shared>,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> Observer {
    while !stop.load(Ordering::SeqCst) {
        let round = Instant::now();
        let snaps = obs.read_all(false).await;
        let latest_canonical = lock(&shared.latest).get(&StoreId::Canonical).cloned();
        let canonical = snaps
            .get(&StoreId::Canonical)
            .or(latest_canonical.as_deref());
        {
            let mut lag = lock(&shared.lag);
            for (s, snap) in &snaps {
                lag.observe(*s, snap, canonical);
            }
        }
        {
            let mut latest = lock(&shared.latest);
            for (s, snap) in snaps {
                latest.insert(s, Arc::new(snap));
            }
        }
        tokio::time::sleep(period.saturating_sub(round.elapsed())).await;
    }
    obs
}
