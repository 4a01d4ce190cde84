//! The BigQuery emulator for tests: found through `CONTACT_SYNC_BQ_URL`, or
//! installed (scripts/bigquery/setup.sh) and started (scripts/bigquery/
//! start.sh) once per test binary, stopped by a watchdog when the binary
//! exits. One dataset per test, with a random suffix.
//!
//! With `CI=true` a missing emulator fails the test; elsewhere the test is
//! skipped with a message on stderr.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use contact_sync_bigquery::{BigQueryClient, BigQueryStore, BigQueryStoreConfig};

pub const PROJECT: &str = "test-project";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn start() -> Result<String, String> {
    if let Ok(url) = std::env::var("CONTACT_SYNC_BQ_URL") {
        if !url.trim().is_empty() {
            return Ok(url.trim().to_string());
        }
    }
    let root = repo_root();
    let setup = Command::new("bash")
        .arg(root.join("scripts/bigquery/setup.sh"))
        .output()
        .map_err(|e| format!("running scripts/bigquery/setup.sh: {e}"))?;
    if !setup.status.success() {
        return Err(format!(
            "scripts/bigquery/setup.sh failed:\n{}",
            String::from_utf8_lossy(&setup.stderr)
        ));
    }
    let home = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("export CONTACT_SYNC_BQ_HOME=")
                .map(str::to_string)
        })
        .ok_or("setup.sh printed no CONTACT_SYNC_BQ_HOME")?;
    // A few tries: a port found free can be taken before the emulator binds it.
    let mut last = String::new();
    for _ in 0..3 {
        let (port, grpc) = free_ports().map_err(|e| format!("finding free ports: {e}"))?;
        let data =
            std::env::temp_dir().join(format!("contact-sync-bq-{}-{port}", std::process::id()));
        let out = Command::new("bash")
            .arg(root.join("scripts/bigquery/start.sh"))
            .arg(port.to_string())
            .arg(&data)
            .arg(grpc.to_string())
            .env("CONTACT_SYNC_BQ_HOME", &home)
            .env("CONTACT_SYNC_BQ_WATCH_PID", std::process::id().to_string())
            .output()
            .map_err(|e| format!("running scripts/bigquery/start.sh: {e}"))?;
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| {
                    l.strip_prefix("export CONTACT_SYNC_BQ_URL=")
                        .map(str::to_string)
                })
                .ok_or_else(|| "start.sh printed no CONTACT_SYNC_BQ_URL".to_string());
        }
        last = format!(
            "scripts/bigquery/start.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Err(last)
}

/// Two distinct free loopback ports (REST, gRPC).
fn free_ports() -> std::io::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// The emulator's base URL, or `None` (skip) outside CI when it cannot run.
pub fn emulator_url() -> Option<String> {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    match URL.get_or_init(start) {
        Ok(u) => Some(u.clone()),
        Err(e) if in_ci() => panic!(
            "CI=true and the BigQuery emulator is not available: {e}\n\
             (install it with scripts/bigquery/setup.sh, or set CONTACT_SYNC_BQ_URL)"
        ),
        Err(e) => {
            eprintln!("SKIPPED: BigQuery emulator not available: {e}");
            None
        }
    }
}

/// A dataset of its own for one test; `cleanup` deletes it.
pub struct TestDataset {
    pub client: BigQueryClient,
    pub dataset: String,
}

impl TestDataset {
    pub async fn new(test: &str) -> Option<TestDataset> {
        let url = emulator_url()?;
        let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
        let dataset = format!("t_{test}_{}", uuid::Uuid::new_v4().simple());
        Some(TestDataset { client, dataset })
    }

    pub fn config(&self) -> BigQueryStoreConfig {
        BigQueryStoreConfig::new(&self.dataset)
    }

    /// Migrates the default layout and opens the store.
    pub async fn store(&self) -> BigQueryStore {
        let cfg = self.config();
        BigQueryStore::migrate(&self.client, &cfg)
            .await
            .expect("migrate");
        BigQueryStore::open(self.client.clone(), cfg)
            .await
            .expect("open")
    }

    /// `project.dataset.table`, backquoted, for SQL written "by another tool".
    pub fn table_sql(&self, table: &str) -> String {
        format!("`{PROJECT}.{}.{table}`", self.dataset)
    }

    pub async fn cleanup(self) {
        self.client
            .delete_dataset(&self.dataset)
            .await
            .expect("delete test dataset");
    }
}
