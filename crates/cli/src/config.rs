//! Configuration: a TOML file, or the embedded default when there is none.
//!
//! ```toml
//! data_dir = "contact-sync-data"      # default; relative to the working directory
//!
//! [sync]
//! interval_secs = 300
//! batch_size = 100
//!
//! [canonical]
//! kind = "sqlite"                      # the embedded default
//! path = "contact-sync-data/canonical.db"
//!
//! [stores.local]
//! kind = "sqlite"
//! path = "contact-sync-data/local.db"
//!
//! [alerts]                             # the defaults
//! drift_percent = 5.0
//! latency_secs = 300
//! consecutive_failures = 1
//! slot_wal_mib = 1024
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::secret::SecretRef;

/// Most changes per batch (`sync.batch_size`, `--batch-size`).
pub const MAX_BATCH_SIZE: usize = 10_000;

/// Why the configuration cannot be used. Printed as is, then exit 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub sync: SyncConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub canonical: Option<StoreConfig>,
    /// Stores other than canonical, by name. `None` → the default `local`.
    #[serde(default)]
    pub stores: Option<BTreeMap<String, StoreConfig>>,
    /// The daemon's HTTP server (`/health`, `/metrics`, `/webhooks/twenty`).
    #[serde(default)]
    pub server: contact_sync_ops::ServerConfig,
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The operator console on the daemon's listener.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Several daemons on one Postgres state database.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `[cluster]`: several daemons sharing a state database on Postgres
/// (`[state] url`). One of them holds the work's lease; the others wait
/// and take over when it stops renewing it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The longest a crashed daemon's work waits for another daemon to take
    /// it over, in seconds (default 15). The lease lasts a little less;
    /// a clean shutdown hands it over at once.
    #[serde(default = "default_failover_secs")]
    pub failover_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            failover_secs: default_failover_secs(),
        }
    }
}

fn default_failover_secs() -> u64 {
    15
}

/// `[console]`: the operator console (pages and `/api/...`) on the
/// daemon's HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A bearer token every console request must carry (required when
    /// `[server] allow_remote = true`); a secret reference.
    #[serde(default)]
    pub token: Option<SecretRef>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            token: None,
        }
    }
}

/// `[alerts]`: where alerts go besides the log, and when to alert.
/// The defaults are those of [`contact_sync_ops::AlertThresholds`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// A URL that receives each alert as a JSON POST (a secret: it often
    /// carries a token).
    #[serde(default)]
    pub webhook_url: Option<SecretRef>,
    /// Alert when a store's drift from canonical is above this percent
    /// (more than 0, at most 100; default 5).
    #[serde(default = "default_drift_percent")]
    pub drift_percent: f64,
    /// Alert when a store's last successful sync is older than this many
    /// seconds (at least 1; default 300).
    #[serde(default = "default_latency_secs")]
    pub latency_secs: u64,
    /// Alert after this many failed runs of a store in a row (at least 1;
    /// default 1: every failure).
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u64,
    /// Alert (and `check` warns) when a replication slot retains more than
    /// this many MiB of WAL (at least 1; default 1024).
    #[serde(default = "default_slot_wal_mib")]
    pub slot_wal_mib: u64,
}

fn default_drift_percent() -> f64 {
    contact_sync_ops::AlertThresholds::default().drift_pct
}
fn default_latency_secs() -> u64 {
    contact_sync_ops::AlertThresholds::default()
        .latency
        .as_secs()
}
fn default_consecutive_failures() -> u64 {
    contact_sync_ops::AlertThresholds::default().sync_failures
}
fn default_slot_wal_mib() -> u64 {
    contact_sync_ops::AlertThresholds::default().slot_wal_bytes >> 20
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            drift_percent: default_drift_percent(),
            latency_secs: default_latency_secs(),
            consecutive_failures: default_consecutive_failures(),
            slot_wal_mib: default_slot_wal_mib(),
        }
    }
}

impl AlertsConfig {
    /// The thresholds the daemon's alerter uses.
    pub fn thresholds(&self) -> contact_sync_ops::AlertThresholds {
        contact_sync_ops::AlertThresholds {
            drift_pct: self.drift_percent,
            latency: std::time::Duration::from_secs(self.latency_secs),
            slot_wal_bytes: self.slot_wal_bytes(),
            sync_failures: self.consecutive_failures,
        }
    }

    pub fn slot_wal_bytes(&self) -> u64 {
        self.slot_wal_mib.saturating_mul(1 << 20)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(self.drift_percent > 0.0 && self.drift_percent <= 100.0) {
            return Err(ConfigError(format!(
                "alerts.drift_percent = {} is out of range (more than 0, at most 100)",
                self.drift_percent
            )));
        }
        if self.latency_secs == 0 {
            return Err(ConfigError(
                "alerts.latency_secs must be at least 1 (seconds since a store's last successful sync)".into(),
            ));
        }
        if self.consecutive_failures == 0 {
            return Err(ConfigError(
                "alerts.consecutive_failures must be at least 1 (failed runs of a store in a row)"
                    .into(),
            ));
        }
        if self.slot_wal_mib == 0 || self.slot_wal_mib > 1 << 30 {
            return Err(ConfigError(format!(
                "alerts.slot_wal_mib = {} is out of range (1 to {} MiB of retained WAL)",
                self.slot_wal_mib,
                1u64 << 30
            )));
        }
        Ok(())
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("contact-sync-data")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Seconds between the daemon's drift checks (every store compared
    /// with canonical by content hash).
    #[serde(default = "default_drift_interval")]
    pub drift_interval_secs: u64,
    /// The mass-change guard: a store whose window of changes deletes (or
    /// blanks one field of) more than `guard_percent` % of its contacts —
    /// at least `guard_min`, at most `guard_max` — is paused until a person
    /// approves or rejects. `guard_enabled = false` turns it off.
    #[serde(default = "default_true")]
    pub guard_enabled: bool,
    #[serde(default = "default_guard_percent")]
    pub guard_percent: f64,
    #[serde(default = "default_guard_min")]
    pub guard_min: u64,
    #[serde(default = "default_guard_max")]
    pub guard_max: u64,
    /// The region national phone numbers are read in (`"US"`, `"GB"`):
    /// `(415) 555-0100` becomes `+14155550100`. Unset: only numbers
    /// written with their country code are accepted.
    #[serde(default)]
    pub default_region: Option<String>,
    /// Milliseconds a running daemon's cycle merges one store's backlog at
    /// most before it writes what it merged to the other stores and starts
    /// the next cycle (0: no bound, each store drained first). Keeps an
    /// edit's lag short while another store's backlog is worked off.
    #[serde(default = "default_capture_budget_ms")]
    pub capture_budget_ms: u64,
}

fn default_capture_budget_ms() -> u64 {
    250
}

fn default_true() -> bool {
    true
}
fn default_guard_percent() -> f64 {
    contact_sync_engine::MassChangeGuard::default().percent
}
fn default_guard_min() -> u64 {
    contact_sync_engine::MassChangeGuard::default().min
}
fn default_guard_max() -> u64 {
    contact_sync_engine::MassChangeGuard::default().max
}

impl SyncConfig {
    /// The engine's mass-change guard from these settings.
    pub fn guard(&self) -> contact_sync_engine::MassChangeGuard {
        contact_sync_engine::MassChangeGuard {
            enabled: self.guard_enabled,
            percent: self.guard_percent,
            min: self.guard_min,
            max: self.guard_max,
            ..Default::default()
        }
    }

    /// The default phone region (checked at load).
    pub fn region(&self) -> Option<contact_sync_core::phone::Region> {
        self.default_region.as_deref().and_then(|r| r.parse().ok())
    }

    /// A running daemon's time budget per store capture (`None`: 0, no bound).
    pub fn capture_budget(&self) -> Option<std::time::Duration> {
        (self.capture_budget_ms > 0)
            .then(|| std::time::Duration::from_millis(self.capture_budget_ms))
    }
}

fn default_drift_interval() -> u64 {
    3600
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            interval_secs: default_interval(),
            batch_size: default_batch(),
            drift_interval_secs: default_drift_interval(),
            guard_enabled: true,
            guard_percent: default_guard_percent(),
            guard_min: default_guard_min(),
            guard_max: default_guard_max(),
            default_region: None,
            capture_budget_ms: default_capture_budget_ms(),
        }
    }
}

fn default_interval() -> u64 {
    300
}

fn default_batch() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The SQLite file (default `<data_dir>/state.db`).
    pub path: Option<PathBuf>,
    /// A Postgres database for the whole state database instead
    /// (`postgres://user:password@host:port/db`: a secret, e.g.
    /// `{ env = "STATE_DB_URL" }`). Not with `path`.
    #[serde(default)]
    pub url: Option<SecretRef>,
    /// The audit window in days: journal entries, settled conflicts and
    /// dismissed dead letters older than this are compacted or expire
    /// (`contact-sync compact`; the daemon once a day). Default 30.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: None,
            url: None,
            retention_days: default_retention_days(),
        }
    }
}

fn default_retention_days() -> u32 {
    30
}

/// One store.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// An SQLite file (table `contacts`).
    Sqlite { path: Option<PathBuf> },
    /// A Twenty CRM workspace.
    Twenty(TwentyStoreConfig),
    /// A BigQuery table (as the canonical store).
    Bigquery(BigQueryConfig),
    /// A Postgres table (Supabase, or a local Postgres) with change capture.
    Postgres(PostgresConfig),
}

/// `kind = "postgres"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection string (`postgres://user:password@host:port/db`): a secret.
    pub url: SecretRef,
    #[serde(default = "default_pg_schema")]
    pub schema: String,
    #[serde(default = "default_bq_table")]
    pub table: String,
    /// `slot` (logical replication; needs REPLICATION) or `outbox` (triggers).
    #[serde(default = "default_pg_cdc")]
    pub cdc: String,
    /// Replication slot name (unique per server).
    #[serde(default)]
    pub slot_name: Option<String>,
    #[serde(default)]
    pub publication: Option<String>,
    /// Canonical field → column name, for existing tables.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

fn default_pg_schema() -> String {
    "public".into()
}

fn default_pg_cdc() -> String {
    "slot".into()
}

/// `kind = "bigquery"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// API root; default `https://bigquery.googleapis.com` (an emulator: `http://127.0.0.1:PORT`).
    #[serde(default = "default_bq_url")]
    pub base_url: String,
    pub project: String,
    pub dataset: String,
    #[serde(default = "default_bq_table")]
    pub table: String,
    /// `US`, `EU`, …
    #[serde(default)]
    pub location: Option<String>,
    /// `none` (emulator), `metadata` (the metadata server's token), or
    /// `service_account` (a key file: `key_file`).
    #[serde(default = "default_bq_auth")]
    pub auth: String,
    /// Service-account JSON key (for `auth = "service_account"`).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Token URL of the metadata server (for `auth = "metadata"`).
    #[serde(default)]
    pub metadata_url: Option<String>,
    /// Also append the journal to this table (analytics); `""` turns it off.
    #[serde(default)]
    pub journal_table: Option<String>,
    /// Seconds re-read behind the change watermark (late commits).
    #[serde(default)]
    pub overlap_secs: Option<u64>,
    /// Run the fingerprint sweep (edits that leave `last_updated` alone,
    /// back-dated and loaded rows, hard deletes) every this many caught-up
    /// polls; `0` turns it off. Default 3.
    #[serde(default)]
    pub sweep_every: Option<u32>,
    /// And at least every this many seconds, whether or not polling is
    /// caught up (steady load); `0`: only `sweep_every`. Default 900.
    #[serde(default)]
    pub sweep_interval_secs: Option<u64>,
    /// Skip the poll query when the table's metadata (`tables.get`, free)
    /// shows no change since the last poll. Default true.
    #[serde(default)]
    pub idle_check: Option<bool>,
    /// Canonical field → column name, for existing tables.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

fn default_bq_url() -> String {
    "https://bigquery.googleapis.com".into()
}

fn default_bq_table() -> String {
    "contacts".into()
}

fn default_bq_auth() -> String {
    "none".into()
}

/// `kind = "twenty"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwentyStoreConfig {
    /// `https://crm.example.com` (without `/rest`).
    pub base_url: String,
    /// The API key: `{ env = "…" }`, `{ file = "…" }` or `{ command = […] }`.
    pub api_key: SecretRef,
    /// Records per batch create (default 60, at most 200).
    #[serde(default = "default_twenty_batch")]
    pub batch_size: usize,
    /// Requests per minute allowed by the workspace (default 100).
    #[serde(default = "default_twenty_rpm")]
    pub requests_per_minute: u32,
    /// Push category X (Exclude) contacts too (default false).
    #[serde(default)]
    pub include_excluded: bool,
    /// Secret of the webhook (enables `/webhooks/twenty` on the daemon).
    #[serde(default)]
    pub webhook_secret: Option<SecretRef>,
    /// Public URL of the daemon's `/webhooks/twenty/<store name>` (the
    /// first Twenty store also answers at `/webhooks/twenty`), registered
    /// by `migrate`.
    #[serde(default)]
    pub webhook_url: Option<String>,
    /// Rate-limit window in seconds (default 60; tests shorten it).
    #[serde(default = "default_twenty_window")]
    pub rate_window_secs: f64,
}

fn default_twenty_batch() -> usize {
    60
}

fn default_twenty_rpm() -> u32 {
    100
}

fn default_twenty_window() -> f64 {
    60.0
}

impl Config {
    /// Reads `path`, or the embedded default when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg: Config = match path {
            None => toml::from_str("").map_err(|e| ConfigError(e.to_string()))?,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", p.display()))
                })?;
                toml::from_str(&text).map_err(|e| {
                    ConfigError(format!(
                        "config file {}: {}",
                        p.display(),
                        e.to_string().trim()
                    ))
                })?
            }
        };
        cfg.check()?;
        if cfg.canonical.is_none() {
            cfg.canonical = Some(StoreConfig::Sqlite { path: None });
        }
        if cfg.stores.is_none() {
            let mut m = BTreeMap::new();
            m.insert("local".to_string(), StoreConfig::Sqlite { path: None });
            cfg.stores = Some(m);
        }
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        if self.sync.batch_size == 0 || self.sync.batch_size > MAX_BATCH_SIZE {
            return Err(ConfigError(format!(
                "sync.batch_size = {} is out of range (1 to {MAX_BATCH_SIZE})",
                self.sync.batch_size
            )));
        }
        if !(self.sync.guard_percent > 0.0 && self.sync.guard_percent <= 100.0) {
            return Err(ConfigError(format!(
                "sync.guard_percent = {} is out of range (more than 0, at most 100)",
                self.sync.guard_percent
            )));
        }
        if self.sync.guard_min > self.sync.guard_max {
            return Err(ConfigError(format!(
                "sync.guard_min = {} is above sync.guard_max = {}",
                self.sync.guard_min, self.sync.guard_max
            )));
        }
        if self.state.path.is_some() && self.state.url.is_some() {
            return Err(ConfigError(
                "state.path and state.url are mutually exclusive: set path for a SQLite file, or url for a Postgres database".into(),
            ));
        }
        if self.state.retention_days == 0 {
            return Err(ConfigError(
                "state.retention_days must be at least 1 (days of history kept for audit)".into(),
            ));
        }
        if !(2..=3600).contains(&self.cluster.failover_secs) {
            return Err(ConfigError(format!(
                "cluster.failover_secs = {} must be between 2 and 3600 (seconds a crashed daemon's work waits for another daemon)",
                self.cluster.failover_secs
            )));
        }
        if let Some(r) = &self.sync.default_region {
            r.parse::<contact_sync_core::phone::Region>()
                .map_err(|e| ConfigError(format!("sync.default_region: {e}")))?;
        }
        self.alerts.check()?;
        if self.sync.interval_secs == 0 {
            return Err(ConfigError("sync.interval_secs must be at least 1".into()));
        }
        if let Some(stores) = &self.stores {
            for name in stores.keys() {
                let ok = !name.is_empty()
                    && name.len() <= 32
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                    });
                if !ok || name == "canonical" {
                    return Err(ConfigError(format!(
                        "store name {name:?} is not allowed: use lower-case letters, digits, _ or - (and not \"canonical\")"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Where the state database is: `[state] url` (resolved) or the SQLite file.
    pub fn state_target(&self) -> Result<contact_sync_state::StateTarget, ConfigError> {
        Ok(match &self.state.url {
            Some(url) => contact_sync_state::StateTarget::Url(
                url.resolve("state.url")?.expose().trim().to_string(),
            ),
            None => contact_sync_state::StateTarget::Path(self.state_path()),
        })
    }

    /// The SQLite state file (meaningless with `[state] url`).
    pub fn state_path(&self) -> PathBuf {
        self.state
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("state.db"))
    }

    pub fn canonical(&self) -> &StoreConfig {
        self.canonical.as_ref().expect("filled by load")
    }

    pub fn stores(&self) -> &BTreeMap<String, StoreConfig> {
        self.stores.as_ref().expect("filled by load")
    }

    /// The file of an SQLite store: its configured path, or `<data_dir>/<name>.db`.
    pub fn sqlite_path(&self, name: &str, path: &Option<PathBuf>) -> PathBuf {
        path.clone()
            .unwrap_or_else(|| self.data_dir.join(format!("{name}.db")))
    }

    /// A fingerprint of each other store's configuration section, by name:
    /// a store parked after a permanent error is tried again by a daemon
    /// whose configuration of it differs. Secrets are references here
    /// (`{ env = … }`), never values: a secret changed behind the same
    /// reference needs `contact-sync resume STORE`.
    pub fn store_fingerprints(&self) -> BTreeMap<String, String> {
        use sha2::{Digest, Sha256};
        self.stores()
            .iter()
            .map(|(name, sc)| {
                let mut text = format!("{sc:?}");
                if let StoreConfig::Sqlite { path } = sc {
                    text.push_str(&self.sqlite_path(name, path).display().to_string());
                }
                let digest = Sha256::digest(text.as_bytes());
                let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                (name.clone(), hex)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_embedded() {
        let c = Config::load(None).unwrap();
        assert!(matches!(c.canonical(), StoreConfig::Sqlite { path: None }));
        assert!(c.stores().contains_key("local"));
        assert_eq!(c.state_path(), PathBuf::from("contact-sync-data/state.db"));
        assert_eq!(c.sync.interval_secs, 300);
        assert_eq!(c.sync.batch_size, 100);
    }

    #[test]
    fn the_state_is_a_file_or_a_postgres_url_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[state]\npath = \"s.db\"\nurl = { env = \"CS_TEST_STATE_URL_BOTH\" }\n",
        )
        .unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(
            e.0.contains("state.path and state.url are mutually exclusive"),
            "{e}"
        );
        std::fs::write(&p, "[state]\nurl = { env = \"CS_TEST_STATE_URL_UNSET\" }\n").unwrap();
        let c = Config::load(Some(&p)).unwrap();
        let e = c.state_target().unwrap_err();
        assert!(
            e.0.contains("state.url: environment variable CS_TEST_STATE_URL_UNSET is not set"),
            "{e}"
        );
        assert!(matches!(
            Config::load(None).unwrap().state_target().unwrap(),
            contact_sync_state::StateTarget::Path(_)
        ));
    }

    #[test]
    fn bad_config_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "[sync]\nbatch_size = 0\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e.0.contains("batch_size"), "{e}");
        std::fs::write(&p, "[sync]\nbatchsize = 5\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e.0.contains("batchsize"), "{e}");
        std::fs::write(&p, "[stores.local]\nkind = \"oracle\"\n").unwrap();
        let e = Config::load(Some(&p)).unwrap_err();
        assert!(e.0.contains("oracle"), "{e}");
        let e = Config::load(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(e.0.contains("cannot read config file"), "{e}");
    }

    #[test]
    fn alert_thresholds_default_to_todays_values_and_are_configurable() {
        let c = Config::load(None).unwrap();
        assert_eq!(
            c.alerts.thresholds(),
            contact_sync_ops::AlertThresholds::default()
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "[alerts]\ndrift_percent = 2.5\nlatency_secs = 60\nconsecutive_failures = 3\nslot_wal_mib = 256\n",
        )
        .unwrap();
        let t = Config::load(Some(&p)).unwrap().alerts.thresholds();
        assert_eq!(t.drift_pct, 2.5);
        assert_eq!(t.latency, std::time::Duration::from_secs(60));
        assert_eq!(t.sync_failures, 3);
        assert_eq!(t.slot_wal_bytes, 256 << 20);
        for (bad, says) in [
            (
                "drift_percent = 0",
                "alerts.drift_percent = 0 is out of range",
            ),
            (
                "drift_percent = 101",
                "alerts.drift_percent = 101 is out of range",
            ),
            ("latency_secs = 0", "alerts.latency_secs must be at least 1"),
            (
                "consecutive_failures = 0",
                "alerts.consecutive_failures must be at least 1",
            ),
            (
                "slot_wal_mib = 0",
                "alerts.slot_wal_mib = 0 is out of range",
            ),
            ("latency_secs = -5", "latency_secs"),
            ("drift_pct = 3", "unknown field `drift_pct`"),
        ] {
            std::fs::write(&p, format!("[alerts]\n{bad}\n")).unwrap();
            let e = Config::load(Some(&p)).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
