//! BigQuery as the canonical store.
//!
//! - [`BigQueryClient`]: a thin REST v2 client (datasets, tables,
//!   insertAll, jobs.query / getQueryResults) with bounded retries of
//!   transient failures, errors classified for the engine, and a job
//!   counter. Auth is a separate [`TokenProvider`]: [`NoAuth`] (emulator),
//!   [`ServiceAccountKey`] (key file → JWT → OAuth token),
//!   [`MetadataServer`], [`StaticToken`].
//! - [`BigQueryStore`]: the `contacts` table as a `RecordSink` (one MERGE
//!   job per batch with a `version` guard) and a `ChangeSource` (polling
//!   `last_updated` with an overlap window); [`BigQueryStore::migrate`]
//!   creates the dataset and tables; [`ColumnMap`] fits existing tables;
//!   [`BigQueryStore::check_setup`] and [`BigQueryClient::clock_skew`]
//!   serve `contact-sync check`.
//!
//! Wiring (the engine / CLI):
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use contact_sync_bigquery::*;
//! let client = BigQueryClient::new(
//!     ClientConfig::new("my-project"),
//!     Arc::new(ServiceAccountKey::from_file("/etc/contact-sync/sa.json")?),
//! )?;
//! // or, for the emulator: BigQueryClient::emulator("http://127.0.0.1:9050", "test-project")?
//! let cfg = BigQueryStoreConfig::new("contacts_ds");
//! BigQueryStore::migrate(&client, &cfg).await?;
//! let store = BigQueryStore::open(client, cfg).await?;
//! # let _ = store; Ok(()) }
//! ```

mod auth;
mod capture;
mod client;
mod error;
mod journal;
mod rows;
mod schema;
mod store;
mod write;

pub use auth::{
    AccessToken, MetadataServer, NoAuth, ServiceAccountKey, StaticToken, TokenProvider,
    DEFAULT_METADATA_TOKEN_URL, DEFAULT_SCOPE, DEFAULT_TOKEN_URL,
};
pub use capture::CaptureCounters;
pub use client::{
    normalize_type, BigQueryClient, ClientConfig, Field, InsertRow, ParamType, ParamValue,
    QueryParam, QueryResult, StatsSnapshot, TableOptions,
};
pub use error::BqError;
pub use schema::{
    column_problems, contacts_schema, fingerprint_schema, journal_schema, ColumnMap, ColumnProblem,
};
pub use store::{BigQueryStore, BigQueryStoreConfig, BigQueryUsage, MigrateReport, SetupReport};

#[cfg(test)]
mod tests {
    /// The engine holds stores across awaits and threads.
    #[test]
    fn store_is_a_sendable_store() {
        fn assert_store<T: contact_sync_connector::Store + Send + Sync + 'static>() {}
        assert_store::<crate::BigQueryStore>();
        fn assert_client<T: Send + Sync + Clone + 'static>() {}
        assert_client::<crate::BigQueryClient>();
    }
}
