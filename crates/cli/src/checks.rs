//! Store-specific safety checks for `check` and `run --safety-check`:
//! a Postgres store's change capture, a Twenty workspace's custom fields and
//! webhook, a BigQuery table; the clock of each.
//!
//! Messages name stores, tables, columns and counts, never contact data.

use async_trait::async_trait;
use contact_sync_bigquery::{BigQueryClient, BigQueryStore, BigQueryStoreConfig, ColumnProblem};
use contact_sync_core::clock::ClockSkew;
use contact_sync_ops::{Check, SafetyCheck};
use contact_sync_postgres::{CdcMode, PgStore};
use contact_sync_twenty::TwentyStore;

/// Clock difference with a store above this is a warning (`last_updated`
/// decides conflicts)...
pub const SKEW_WARN_SECS: f64 = 2.0;
/// ...and above this a failure (signed webhooks older than 5 minutes are
/// refused; conflict decisions would be wrong).
pub const SKEW_FAIL_SECS: f64 = 300.0;

/// The `<store>: clock` check from one measurement of the store's clock
/// (`how`: where the reading comes from). The thresholds apply to the part
/// of the offset the measurement is sure of (its size minus its
/// uncertainty), so a slow round trip or a coarse reading never warns on
/// its own; an offset within the uncertainty is reported as agreement.
pub fn clock_check(store: &str, skew: &ClockSkew, how: &str) -> Check {
    let name = format!("{store}: clock");
    let (secs, within) = (skew.secs(), skew.uncertainty_secs());
    let certain = skew.certain_secs();
    let msg = if certain == 0.0 {
        format!("the server's clock agrees with this machine's within ±{within:.3} s ({how})")
    } else {
        format!("the server's clock is {secs:+.3} s (±{within:.3} s) from this machine's ({how})")
    };
    let hint = "synchronize both clocks (NTP): last_updated decides conflicts";
    if certain > SKEW_FAIL_SECS {
        Check::fail(name, msg, hint)
    } else if certain > SKEW_WARN_SECS {
        Check::warn(name, msg, hint)
    } else {
        Check::ok(name, msg)
    }
}

/// A Postgres store's replication slot (or outbox): present, `wal_level`,
/// retained WAL.
pub struct PgCdcCheck {
    pub name: String,
    pub store: PgStore,
    /// Retained WAL above this is a warning (the disk of the database
    /// fills): `alerts.slot_wal_mib`.
    pub wal_warn_bytes: u64,
}

#[async_trait]
impl SafetyCheck for PgCdcCheck {
    async fn run(&mut self) -> Vec<Check> {
        let check = format!("{}: change capture", self.name);
        let h = match self.store.slot_health().await {
            Ok(h) => h,
            Err(e) => {
                return vec![Check::fail(
                    check,
                    e.to_string(),
                    "check the connection and the role's rights",
                )]
            }
        };
        let mut out = Vec::new();
        if h.mode == CdcMode::Slot {
            if h.wal_level != "logical" {
                out.push(Check::fail(
                    check.clone(),
                    format!("wal_level is {:?}, logical replication needs wal_level = logical", h.wal_level),
                    "set wal_level = logical in postgresql.conf and restart, or use cdc = \"outbox\"",
                ));
            } else if !h.exists {
                out.push(Check::fail(
                    check.clone(),
                    format!(
                        "replication slot {:?} is missing: changes made there are not captured",
                        self.store.config().slot_name
                    ),
                    format!(
                        "run `contact-sync cdc reset {}` (or `contact-sync migrate`)",
                        self.name
                    ),
                ));
            } else {
                match h.retained_wal_bytes {
                    Some(b) if u64::try_from(b).unwrap_or(0) > self.wal_warn_bytes => {
                        out.push(Check::warn(
                            check.clone(),
                            format!("the slot retains {:.1} GiB of WAL", b as f64 / 1073741824.0),
                            "is the daemon running? the slot keeps WAL until contact-sync reads it",
                        ))
                    }
                    b => out.push(Check::ok(
                        check.clone(),
                        format!(
                            "slot present; retains {:.1} MiB of WAL",
                            b.unwrap_or(0) as f64 / 1048576.0
                        ),
                    )),
                }
                // How contact-sync's own writes are told apart in the slot:
                // by replication origin (skipped whole), else by kept hash
                // (decoded, then dropped: slower after a large backfill).
                let prov = format!("{}: provenance", self.name);
                if h.provenance.contains("origin") && !h.provenance.contains("content_hash") {
                    out.push(Check::ok(prov, h.provenance.clone()));
                } else {
                    out.push(Check::warn(
                        prov,
                        h.provenance.clone(),
                        "grant the role the replication origin functions (see the reason) so the engine's own writes are skipped whole",
                    ));
                }
            }
        } else {
            out.push(Check::ok(check, "outbox mode"));
        }
        let clock = format!("{}: clock", self.name);
        match self.store.clock_skew().await {
            Ok(d) => {
                let secs = d.num_milliseconds() as f64 / 1000.0;
                let msg = format!("the server's clock is {secs:+.3} s from this machine's");
                let hint = "synchronize both clocks (NTP): last_updated decides conflicts";
                out.push(if secs.abs() > SKEW_FAIL_SECS {
                    Check::fail(clock, msg, hint)
                } else if secs.abs() > SKEW_WARN_SECS {
                    Check::warn(clock, msg, hint)
                } else {
                    Check::ok(clock, msg)
                });
            }
            Err(e) => out.push(Check::warn(clock, e.to_string(), "check the connection")),
        }
        out
    }
}

/// A Twenty workspace: the custom fields contact-sync needs, the webhook,
/// whether the rate limit leaves room for the backlog, and its clock (from
/// the `Date` header of the check's last request).
pub struct TwentySetupCheck {
    pub name: String,
    pub store: TwentyStore,
    /// Journal entries the store has not received yet.
    pub pending: i64,
    /// Seconds between the daemon's cycles.
    pub interval_secs: u64,
}

#[async_trait]
impl SafetyCheck for TwentySetupCheck {
    async fn run(&mut self) -> Vec<Check> {
        let check = format!("{}: custom fields", self.name);
        let r = match self.store.check().await {
            Ok(r) => r,
            Err(e) => {
                return vec![Check::fail(
                    check,
                    e.to_string(),
                    "check base_url and the API key",
                )]
            }
        };
        let mut out = Vec::new();
        if r.missing_fields.is_empty() && r.wrong_type_fields.is_empty() {
            out.push(Check::ok(
                check,
                format!("all present ({} people)", r.people),
            ));
        } else {
            let mut what = Vec::new();
            if !r.missing_fields.is_empty() {
                what.push(format!("missing: {}", r.missing_fields.join(", ")));
            }
            for (f, want, found) in &r.wrong_type_fields {
                what.push(format!("{f} is {found}, expected {want}"));
            }
            out.push(Check::fail(
                check,
                what.join("; "),
                "run `contact-sync migrate`",
            ));
        }
        // Rate-limit headroom: the backlog in batch creates against the budget.
        let (rpm, batch) = (
            self.store.config().requests_per_minute.max(1) as f64,
            self.store.config().batch_size.max(1) as f64,
        );
        let requests = (self.pending.max(0) as f64 / batch).ceil() + 1.0;
        let minutes = requests / rpm;
        let check = format!("{}: rate-limit headroom", self.name);
        let msg = format!(
            "{} pending changes need about {requests:.0} requests: {minutes:.1} min at {rpm:.0} requests/min",
            self.pending.max(0)
        );
        out.push(if minutes * 60.0 > self.interval_secs as f64 {
            Check::warn(
                check,
                msg,
                "raise requests_per_minute (self-hosted Twenty) or batch_size (up to 200)",
            )
        } else {
            Check::ok(check, msg)
        });
        match r.webhook_registered {
            Some(true) => out.push(Check::ok(format!("{}: webhook", self.name), "registered")),
            Some(false) => out.push(Check::warn(
                format!("{}: webhook", self.name),
                "no webhook to webhook_url is registered: changes arrive only by polling",
                "run `contact-sync migrate`",
            )),
            None => {}
        }
        out.push(match &r.clock_skew {
            Some(skew) => clock_check(
                &self.name,
                skew,
                "read from the HTTP Date header, which has whole seconds, over one round trip",
            ),
            None => Check::warn(
                format!("{}: clock", self.name),
                "Twenty's answer had no Date header: its clock cannot be compared with this machine's",
                "check that a proxy in front of Twenty keeps the Date header, and that both clocks are synchronized (NTP)",
            ),
        });
        out
    }
}

/// A BigQuery store (canonical or not): the dataset and the contacts table
/// exist, every field has a fitting column, the credentials can run a
/// query on it, the journal table, and BigQuery's clock.
pub struct BigQueryCheck {
    pub name: String,
    pub client: BigQueryClient,
    pub cfg: BigQueryStoreConfig,
}

#[async_trait]
impl SafetyCheck for BigQueryCheck {
    async fn run(&mut self) -> Vec<Check> {
        let name = &self.name;
        let check = format!("{name}: table");
        let migrate = "run `contact-sync migrate`";
        let mut out = Vec::new();
        match BigQueryStore::check_setup(&self.client, &self.cfg).await {
            Err(e) => out.push(Check::fail(
                check,
                e.to_string(),
                "check project, dataset, base_url and the credentials (auth, key_file)",
            )),
            Ok(r) if !r.dataset_exists => out.push(Check::fail(
                check,
                format!(
                    "dataset {}.{} does not exist",
                    self.client.project(),
                    self.cfg.dataset
                ),
                migrate,
            )),
            Ok(r) if !r.table_exists => out.push(Check::fail(
                check,
                format!("table {} does not exist", r.table),
                migrate,
            )),
            Ok(r) if !r.problems.is_empty() => {
                let what: Vec<String> = r.problems.iter().map(|p| p.to_string()).collect();
                out.push(Check::fail(
                    check,
                    format!(
                        "table {} does not fit the contact: {}",
                        r.table,
                        what.join("; ")
                    ),
                    columns_hint(&r.table, &r.problems),
                ));
            }
            Ok(r) => {
                match &r.rows {
                    Some(Ok(n)) => out.push(Check::ok(
                        check,
                        format!("{} fits the contact ({n} rows)", r.table),
                    )),
                    Some(Err(e)) => out.push(Check::fail(
                        check,
                        format!("{} fits the contact, but a query on it failed: {e}", r.table),
                        "the credentials need to run query jobs (roles/bigquery.jobUser) and to read and write the dataset (roles/bigquery.dataEditor)",
                    )),
                    None => {}
                }
                if let Some(why) = &r.full_scan {
                    let id = self.cfg.columns.column("contact_id");
                    let at = self.cfg.columns.column("last_updated");
                    out.push(Check::warn(
                        format!("{name}: table layout"),
                        why.clone(),
                        format!(
                            "copy it into a clustered table and swap the names: CREATE TABLE `{t}_clustered` PARTITION BY DATE_TRUNC(DATE(`{at}`), MONTH) CLUSTER BY `{id}` AS SELECT * FROM `{t}` (or point `table` at a new name and let `contact-sync migrate` create it)",
                            t = r.table
                        ),
                    ));
                }
                if let Some((n, ids)) = r.duplicate_ids.as_ref().filter(|d| d.0 > 0) {
                    let id = self.cfg.columns.column("contact_id");
                    out.push(Check::warn(
                        format!("{name}: duplicate contact ids"),
                        format!(
                            "contact ids held by more than one row of {}: {n} ({}{}); contact-sync writes none of them (each write goes to dead letters) until the duplicates are removed",
                            r.table,
                            ids.join(", "),
                            if *n as usize > ids.len() { ", …" } else { "" }
                        ),
                        format!(
                            "keep one row per id, e.g. find them with SELECT `{id}`, COUNT(*) FROM `{t}` GROUP BY 1 HAVING COUNT(*) > 1, then DELETE the extra rows",
                            t = r.table
                        ),
                    ));
                }
                if r.journal_table_exists == Some(false) {
                    out.push(Check::warn(
                        format!("{name}: journal table"),
                        format!(
                            "table {}.{}.{} does not exist: the analytics copy of the journal is not kept",
                            self.client.project(),
                            self.cfg.dataset,
                            self.cfg.journal_table.as_deref().unwrap_or_default()
                        ),
                        format!("{migrate}, or set journal_table = \"\" to keep no copy"),
                    ));
                }
            }
        }
        out.push(match self.client.clock_skew().await {
            Ok(skew) => clock_check(
                name,
                &skew,
                "CURRENT_TIMESTAMP() of a query job, over its round trip",
            ),
            Err(e) => Check::fail(
                format!("{name}: query"),
                format!("the credentials cannot run a query job: {e}"),
                "grant the service account roles/bigquery.jobUser on the project",
            ),
        });
        out
    }
}

/// How to fix a table that lacks columns or has misfit ones.
fn columns_hint(table: &str, problems: &[ColumnProblem]) -> String {
    let adds: Vec<String> = problems
        .iter()
        .filter_map(|p| match p {
            ColumnProblem::Missing {
                column, ddl_type, ..
            } => Some(format!("ADD COLUMN `{column}` {ddl_type}")),
            ColumnProblem::WrongType { .. } => None,
        })
        .collect();
    let mut hint = String::new();
    if !adds.is_empty() {
        hint.push_str(&format!("ALTER TABLE `{table}` {}; ", adds.join(", ")));
    }
    hint.push_str(
        "or map the fields to existing columns with `columns = { field = \"column\" }` (`contact-sync migrate` creates a new table, it never alters one)",
    );
    hint
}

/// Results known before the checks run (a store that could not be opened).
pub struct Fixed(pub Vec<Check>);

#[async_trait]
impl SafetyCheck for Fixed {
    async fn run(&mut self) -> Vec<Check> {
        std::mem::take(&mut self.0)
    }
}
