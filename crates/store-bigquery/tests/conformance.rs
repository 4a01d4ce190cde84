//! The shared RecordSink / ChangeSource contract suite against the
//! BigQuery store on the local emulator.

mod common;

use common::TestDataset;

#[tokio::test]
async fn bigquery_store_keeps_the_sink_contract() {
    let ds = TestDataset::create("sink").await;
    let mut store = ds.store().await;
    contact_sync_memory::conformance::sink_contract(&mut store).await;
    ds.cleanup().await;
}

#[tokio::test]
async fn bigquery_store_keeps_the_source_contract() {
    let ds = TestDataset::create("source").await;
    let mut store = ds.store().await;
    contact_sync_memory::conformance::source_contract(&mut store).await;
    ds.cleanup().await;
}
