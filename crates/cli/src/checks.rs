//! Store-specific safety checks for `check` and `run --safety-check`:
//! a Postgres store's change capture, a Twenty workspace's custom fields and
//! webhook.

use async_trait::async_trait;
use contact_sync_ops::{Check, SafetyCheck};
use contact_sync_postgres::{CdcMode, PgStore};
use contact_sync_twenty::TwentyStore;

/// Retained WAL above this is a warning (the disk of the database fills).
pub const WAL_WARN_BYTES: i64 = 1024 * 1024 * 1024;

/// Clock difference with a store above this is a warning (`last_updated`
/// decides conflicts)...
pub const SKEW_WARN_SECS: f64 = 2.0;
/// ...and above this a failure (signed webhooks older than 5 minutes are
/// refused; conflict decisions would be wrong).
pub const SKEW_FAIL_SECS: f64 = 300.0;

/// A Postgres store's replication slot (or outbox): present, `wal_level`,
/// retained WAL.
pub struct PgCdcCheck {
    pub name: String,
    pub store: PgStore,
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
                    Some(b) if b > WAL_WARN_BYTES => out.push(Check::warn(
                        check.clone(),
                        format!("the slot retains {:.1} GiB of WAL", b as f64 / 1073741824.0),
                        "is the daemon running? the slot keeps WAL until contact-sync reads it",
                    )),
                    b => out.push(Check::ok(
                        check.clone(),
                        format!(
                            "slot present; retains {:.1} MiB of WAL",
                            b.unwrap_or(0) as f64 / 1048576.0
                        ),
                    )),
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
/// and whether the rate limit leaves room for the backlog.
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
        out
    }
}

/// Results known before the checks run (a store that could not be opened).
pub struct Fixed(pub Vec<Check>);

#[async_trait]
impl SafetyCheck for Fixed {
    async fn run(&mut self) -> Vec<Check> {
        std::mem::take(&mut self.0)
    }
}
