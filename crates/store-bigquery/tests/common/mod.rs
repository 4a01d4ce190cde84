//! The BigQuery emulator for tests: found through `CONTACT_SYNC_BQ_URL`, or
//! started (scripts/bigquery/start.sh, one DuckDB thread) once per test
//! binary from the cache scripts/bigquery/setup.sh fills, and stopped by a
//! watchdog when the binary exits. The cache is the first installed one of
//! `CONTACT_SYNC_BQ_HOME`, `$CONTACT_SYNC_CACHE/bigquery` and
//! `.ci-cache/bigquery` in the repository or a folder above it; setup.sh
//! installs into the default one when none is. One dataset per test, with
//! a random suffix.
//!
//! `CI` plays no part: a plain `cargo test` runs every test. When the
//! emulator can be neither found nor installed (no CPython >= 3.13, no
//! network the first time) the test fails with what to do; no test returns
//! early as passed. setup.sh also installs Google's official Python
//! client, which tests use to edit tables as analysts do ([`python`]).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use contact_sync_bigquery::{BigQueryClient, BigQueryStore, BigQueryStoreConfig};

pub const PROJECT: &str = "test-project";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether `dir` holds both venvs setup.sh installs.
fn installed(dir: &std::path::Path) -> bool {
    dir.join(".installed-local-bigquery-0.4.0").exists()
        && dir.join(".installed-google-cloud-bigquery-3.47.0").exists()
}

/// Where the emulator and the official client are (or go): the first of
/// `CONTACT_SYNC_BQ_HOME`, `$CONTACT_SYNC_CACHE/bigquery` and
/// `.ci-cache/bigquery` in the repository or any folder above it (a git
/// worktree next to the main checkout finds the shared cache) that holds
/// them installed; else where setup.sh installs by default.
fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var(k)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(h) = env("CONTACT_SYNC_BQ_HOME") {
        candidates.push(PathBuf::from(h));
    }
    if let Some(c) = env("CONTACT_SYNC_CACHE") {
        candidates.push(PathBuf::from(c).join("bigquery"));
    }
    let root = repo_root().canonicalize().unwrap_or_else(|_| repo_root());
    candidates.extend(root.ancestors().map(|d| d.join(".ci-cache/bigquery")));
    candidates.into_iter().find(|d| installed(d))
}

/// Runs scripts/bigquery/setup.sh (installing only what is missing) and
/// returns its exports: (`CONTACT_SYNC_BQ_HOME`, `CONTACT_SYNC_BQ_PYTHON`).
fn setup() -> Result<(String, PathBuf), String> {
    static SETUP: OnceLock<Result<(String, PathBuf), String>> = OnceLock::new();
    SETUP
        .get_or_init(|| {
            let mut cmd = Command::new("bash");
            cmd.arg(repo_root().join("scripts/bigquery/setup.sh"));
            if let Some(dir) = cache_dir() {
                cmd.arg(dir);
            }
            let out = cmd
                .output()
                .map_err(|e| format!("running scripts/bigquery/setup.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/bigquery/setup.sh failed (it installs local-bigquery 0.4.0 and \
                     google-cloud-bigquery 3.47.0 from PyPI into a cache: it needs CPython >= 3.13 \
                     and, the first time, network access):\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            let export = |name: &str| {
                stdout
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("export {name}="))
                            .map(str::to_string)
                    })
                    .ok_or_else(|| format!("setup.sh printed no {name}"))
            };
            Ok((
                export("CONTACT_SYNC_BQ_HOME")?,
                PathBuf::from(export("CONTACT_SYNC_BQ_PYTHON")?),
            ))
        })
        .clone()
}

/// The emulator's URL: `CONTACT_SYNC_BQ_URL`, or one started for this test
/// binary.
fn start() -> Result<String, String> {
    if let Ok(url) = std::env::var("CONTACT_SYNC_BQ_URL") {
        if !url.trim().is_empty() {
            return Ok(url.trim().to_string());
        }
    }
    let root = repo_root();
    let (home, _) = setup()?;
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
            // One DuckDB thread unless told otherwise: local-bigquery 0.4.0
            // can hang for good on a parallel scan calling its Python
            // functions (the sweep's FARM_FINGERPRINT; see start.sh).
            .env(
                "CONTACT_SYNC_BQ_DUCKDB_THREADS",
                std::env::var("CONTACT_SYNC_BQ_DUCKDB_THREADS")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
                    .unwrap_or_else(|| "1".into()),
            )
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

/// The emulator's base URL; panics (the test fails) when it cannot run.
pub fn url() -> String {
    static URL: OnceLock<Result<String, String>> = OnceLock::new();
    match URL.get_or_init(start) {
        Ok(u) => u.clone(),
        Err(e) => panic!(
            "the BigQuery emulator is not available, so this test cannot run: {e}\n\
             The tests start it themselves from a cache (CONTACT_SYNC_BQ_HOME, \
             $CONTACT_SYNC_CACHE/bigquery, or .ci-cache/bigquery in the repository or a folder \
             above it). Fill one with `CONTACT_SYNC_CACHE=<dir> bash scripts/bigquery/setup.sh` \
             (needs CPython >= 3.13, or PY313 set to one, and network access to PyPI once), or \
             point CONTACT_SYNC_BQ_URL at a running emulator. To leave the BigQuery tests out: \
             `cargo test --workspace --exclude contact-sync-bigquery --exclude contact-sync` \
             (the CLI's bigquery and bq_journal tests need it too)."
        ),
    }
}

/// The python of the venv holding Google's official client
/// (`google-cloud-bigquery`), installed by setup.sh.
fn client_python() -> PathBuf {
    if let Ok(p) = std::env::var("CONTACT_SYNC_BQ_PYTHON") {
        if !p.trim().is_empty() {
            return PathBuf::from(p.trim());
        }
    }
    match setup() {
        Ok((_, py)) => py,
        Err(e) => panic!("Google's official BigQuery client is not available: {e}"),
    }
}

/// Runs `body` with Google's official Python client against the emulator,
/// as an analyst's script would: `client` is a `bigquery.Client` on the
/// emulator's loopback URL with anonymous credentials, `T` the backquoted
/// contacts table, `DS` the dataset id. Panics with the script's stderr
/// when it fails; returns its stdout.
pub fn python(ds: &TestDataset, body: &str) -> String {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    let py = PY.get_or_init(client_python);
    let script = format!(
        "import datetime, json, os\n\
         from google.cloud import bigquery\n\
         from google.api_core.client_options import ClientOptions\n\
         from google.auth.credentials import AnonymousCredentials\n\
         client = bigquery.Client(project='{PROJECT}', credentials=AnonymousCredentials(), \
         client_options=ClientOptions(api_endpoint=os.environ['BQ_URL']))\n\
         DS = '{PROJECT}.{ds}'\n\
         T = '`{PROJECT}.{ds}.contacts`'\n\
         def run(sql, **params):\n\
         \x20   ps = [bigquery.ScalarQueryParameter(k, 'STRING', v) for k, v in params.items()]\n\
         \x20   job = client.query(sql, job_config=bigquery.QueryJobConfig(query_parameters=ps))\n\
         \x20   job.result()\n\
         \x20   return job.num_dml_affected_rows\n\
         {body}\n",
        ds = ds.dataset
    );
    let out = Command::new(py)
        .arg("-c")
        .arg(&script)
        .env("BQ_URL", url())
        .output()
        .expect("running the Python client");
    assert!(
        out.status.success(),
        "the google-cloud-bigquery script failed:\n{}\n--- script:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A dataset of its own for one test; `cleanup` deletes it.
pub struct TestDataset {
    pub client: BigQueryClient,
    pub dataset: String,
}

impl TestDataset {
    /// A dataset name of its own on the emulator; panics (the test fails)
    /// when the emulator cannot run.
    pub async fn create(test: &str) -> TestDataset {
        let url = url();
        let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
        let dataset = format!("t_{test}_{}", uuid::Uuid::new_v4().simple());
        TestDataset { client, dataset }
    }

    /// The store's config for tests: no overlap (rows are written and
    /// read on one machine, the emulator's clock is this one), a sweep on
    /// every caught-up poll, and no idle check (local-bigquery 0.4.0 does
    /// not update `lastModifiedTime` on DML nor `numRows` on DELETE; tests
    /// of the idle check turn it on).
    pub fn config(&self) -> BigQueryStoreConfig {
        let mut c = BigQueryStoreConfig::new(&self.dataset);
        c.overlap = std::time::Duration::ZERO;
        c.sweep_every = Some(1);
        c.idle_check = false;
        c
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
