//! Helpers shared by the store's tests on the real cluster.

#![allow(dead_code)]

use contact_sync_connector::Checkpoint;
use contact_sync_postgres::pgoutput::Lsn;
use contact_sync_postgres::PgConfig;
use tokio_postgres::{Client, NoTls};

/// The store's configuration for a test database: its slot named after it.
pub fn cfg_for(url: &str) -> PgConfig {
    let mut cfg = PgConfig::new("supabase", url);
    cfg.slot_name = url.rsplit('/').next().unwrap().to_string();
    cfg
}

/// A plain connection (an admin, a user, another application).
pub async fn sql(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// The WAL position a query returns as text.
pub async fn lsn(c: &Client, q: &str) -> Lsn {
    let s: String = c.query_one(q, &[]).await.expect(q).get(0);
    Lsn::parse(&s).expect("lsn")
}

/// The slot's confirmed position.
pub async fn confirmed(c: &Client, slot: &str) -> Lsn {
    let s: String = c
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot")
        .get(0);
    Lsn::parse(&s).expect("lsn")
}

/// The WAL position of a slot checkpoint (`<lsn>` or `<lsn>:<k>`).
pub fn cp_lsn(cp: &Checkpoint) -> Lsn {
    Lsn::parse(cp.as_str().split(':').next().unwrap()).expect("checkpoint is an LSN")
}
