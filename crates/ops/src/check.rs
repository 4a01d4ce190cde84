//! `contact-sync check`: safety checks, each a clear line with a fix hint,
//! and a verdict (SAFE / SAFE_WITH_WARNINGS / UNSAFE, exit 0 / 0 / 1).
//!
//! The built-in checks need only the configuration file, the state database
//! and the stores' [`RecordSink::count`]. Store-specific checks (schemas,
//! custom fields, webhooks, replication slots, rate-limit headroom) plug in
//! by implementing [`SafetyCheck`] and being passed to [`run_checks`] in
//! [`CheckInputs::extra`] (or run with [`CheckReport::run`]).
//!
//! [`RecordSink::count`]: contact_sync_connector::RecordSink::count

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use contact_sync_connector::Store;
use contact_sync_core::model::format_ts;
use contact_sync_core::Timestamp;
use contact_sync_state::{StateDb, StateTarget};
use serde::Serialize;

use crate::OpsError;

/// How one check came out. Ordered: `Ok < Warn < Fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn tag(self) -> &'static str {
        match self {
            Level::Ok => "[ OK ]",
            Level::Warn => "[WARN]",
            Level::Fail => "[FAIL]",
        }
    }
}

/// One check's result: a name (stable, e.g. `store twenty reachable`), a
/// level, a one-line message and, when not Ok, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub message: String,
    pub hint: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, message: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            level: Level::Ok,
            message: message.into(),
            hint: None,
        }
    }
    pub fn warn(
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Check {
            name: name.into(),
            level: Level::Warn,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn fail(
        name: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Check {
            name: name.into(),
            level: Level::Fail,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The overall verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    /// Every check passed.
    Safe,
    /// Something needs a look, but running is safe.
    SafeWithWarnings,
    /// At least one check failed: `run --safety-check` refuses to start.
    Unsafe,
}

impl Verdict {
    /// `SAFE`, `SAFE_WITH_WARNINGS`, `UNSAFE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Safe => "SAFE",
            Verdict::SafeWithWarnings => "SAFE_WITH_WARNINGS",
            Verdict::Unsafe => "UNSAFE",
        }
    }
    /// 0, 0, 1 (a usage error, 2, is the CLI's business).
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Safe | Verdict::SafeWithWarnings => 0,
            Verdict::Unsafe => 1,
        }
    }
}

/// A check that needs I/O (a store, a network call). Implement it for
/// store-specific checks; one check may report several lines.
#[async_trait]
pub trait SafetyCheck: Send {
    async fn run(&mut self) -> Vec<Check>;
}

/// The results of a set of checks, in the order they ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub checks: Vec<Check>,
}

impl CheckReport {
    pub fn new() -> Self {
        CheckReport::default()
    }

    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub fn extend(&mut self, checks: impl IntoIterator<Item = Check>) {
        self.checks.extend(checks);
    }

    /// Runs an async check and adds its lines.
    pub async fn run(&mut self, check: &mut (dyn SafetyCheck + '_)) {
        let lines = check.run().await;
        self.checks.extend(lines);
    }

    /// The check called `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn count(&self, level: Level) -> usize {
        self.checks.iter().filter(|c| c.level == level).count()
    }

    /// Unsafe if any check failed, with warnings if any warned, else safe.
    pub fn verdict(&self) -> Verdict {
        match self.checks.iter().map(|c| c.level).max() {
            Some(Level::Fail) => Verdict::Unsafe,
            Some(Level::Warn) => Verdict::SafeWithWarnings,
            _ => Verdict::Safe,
        }
    }

    /// The process exit code for this report (0 / 0 / 1).
    pub fn exit_code(&self) -> u8 {
        self.verdict().exit_code()
    }

    /// One line per check (`[ OK ] name: message`), an indented `fix:`
    /// line under each warning or failure, and the verdict last.
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{} {}: {}\n", c.level.tag(), c.name, c.message));
            if let (Some(hint), true) = (&c.hint, c.level != Level::Ok) {
                out.push_str(&format!("       fix: {hint}\n"));
            }
        }
        out.push_str(&format!(
            "verdict: {} ({} failed, {} warnings, {} ok)\n",
            self.verdict().as_str(),
            self.count(Level::Fail),
            self.count(Level::Warn),
            self.count(Level::Ok)
        ));
        out
    }

    /// `{"verdict": "SAFE"|…, "exit_code": 0|1, "failed": n, "warnings": n,
    /// "ok": n, "checks": [{"name", "level": "ok"|"warn"|"fail", "message", "hint"}]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "verdict": self.verdict().as_str(),
            "exit_code": self.exit_code(),
            "failed": self.count(Level::Fail),
            "warnings": self.count(Level::Warn),
            "ok": self.count(Level::Ok),
            "checks": self.checks,
        })
    }
}

/// Limits of the built-in checks.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckThresholds {
    /// Pending journal entries for one store above this warn.
    pub pending_warn: u64,
    /// A last successful sync older than this warns …
    pub last_sync_warn: Duration,
    /// … and older than this fails.
    pub last_sync_fail: Duration,
    /// How long a store may take to answer `count()`.
    pub store_timeout: Duration,
    /// How far the system clock may be behind the newest journal entry.
    pub clock_tolerance: Duration,
}

impl Default for CheckThresholds {
    /// 1,000 pending; 1 h / 24 h since the last success; 30 s per store;
    /// 2 s of clock tolerance.
    fn default() -> Self {
        CheckThresholds {
            pending_warn: 1000,
            last_sync_warn: Duration::from_secs(3600),
            last_sync_fail: Duration::from_secs(24 * 3600),
            store_timeout: Duration::from_secs(30),
            clock_tolerance: Duration::from_secs(2),
        }
    }
}

fn human_secs(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

// --- configuration file ---

/// Permissions of the configuration file (or a secrets file): fails when
/// anyone may write it (they could point the sync anywhere); warns when it
/// holds secrets and its group or others may read it. Unix only (elsewhere
/// Ok with a note). `None` is the embedded default configuration.
pub fn check_config_file(path: Option<&Path>, contains_secrets: bool) -> Check {
    let name = "config file";
    let Some(path) = path else {
        return Check::ok(name, "embedded default configuration (no file)");
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read {}: {e}", path.display()),
                "check the --config path and that this user may read it",
            )
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        let shown = path.display();
        if mode & 0o002 != 0 {
            return Check::fail(
                name,
                format!("{shown} is world-writable (mode {mode:04o}): anyone on this machine can change where contacts go"),
                format!("chmod 600 {shown}"),
            );
        }
        if contains_secrets && mode & 0o044 != 0 {
            return Check::warn(
                name,
                format!("{shown} contains secrets and is readable by group or others (mode {mode:04o})"),
                format!("chmod 600 {shown}, or move the secrets to the environment file (secrets = {{ env = \"…\" }})"),
            );
        }
        Check::ok(name, format!("{shown} (mode {mode:04o})"))
    }
    #[cfg(not(unix))]
    {
        let _ = (meta, contains_secrets);
        Check::ok(
            name,
            format!(
                "{} (permissions not checked on this platform)",
                path.display()
            ),
        )
    }
}

// --- state database ---

/// Whether a directory accepts a new file (a probe created and removed).
fn dir_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".contact-sync-check-{}", std::process::id()));
    std::fs::write(&probe, b"probe")?;
    std::fs::remove_file(&probe)
}

/// The state database: writable (a write transaction is begun and rolled
/// back, nothing is changed) and its lock (free, or held by a running
/// daemon: a warning naming its pid). A database not created yet is fine
/// when its directory is writable; it is not created here.
///
/// Returns the checks and the open database, for [`state_checks`].
pub fn check_state_db(target: &StateTarget) -> (Vec<Check>, Option<StateDb>) {
    let path = match target {
        StateTarget::Path(p) => p.as_path(),
        StateTarget::Url(_) => return check_state_pg(target),
    };
    let name = "state database";
    let shown = path.display();
    if !path.exists() {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let check = if !dir.exists() {
            Check::ok(
                name,
                format!(
                    "{shown} does not exist yet; it and {} will be created on the first run",
                    dir.display()
                ),
            )
        } else {
            match dir_writable(dir) {
                Ok(()) => Check::ok(
                    name,
                    format!("{shown} does not exist yet; {} is writable", dir.display()),
                ),
                Err(e) => Check::fail(
                    name,
                    format!(
                        "{shown} does not exist and {} is not writable: {e}",
                        dir.display()
                    ),
                    format!("give this user write access to {}", dir.display()),
                ),
            }
        };
        return (vec![check], None);
    }
    let state = match StateDb::open(path) {
        Ok(s) => s,
        Err(e) => {
            return (
                vec![Check::fail(
                    name,
                    e.to_string(),
                    format!("check that {shown} and its directory are writable by this user and not on a network filesystem"),
                )],
                None,
            )
        }
    };
    writable_and_lock(state, &shown.to_string(), |shown| {
        format!("check the permissions of {shown} and of its -wal and -shm files")
    })
}

/// The state database on Postgres: it opens (and migrates), takes a write
/// transaction, and the lock is free or held.
fn check_state_pg(target: &StateTarget) -> (Vec<Check>, Option<StateDb>) {
    let shown = target.describe();
    match StateDb::open_target(target) {
        Ok(state) => writable_and_lock(state, &shown, |shown| {
            format!("check that the user of {shown} owns the database (or may create tables in its schema) and that the server is reachable")
        }),
        Err(e) => (
            vec![Check::fail(
                "state database",
                e.to_string(),
                format!("check [state] url: the server must be reachable from here and {shown} must exist, owned by its user (no extension is needed)"),
            )],
            None,
        ),
    }
}

fn writable_and_lock(
    mut state: StateDb,
    shown: &str,
    hint: impl Fn(&str) -> String,
) -> (Vec<Check>, Option<StateDb>) {
    let name = "state database";
    let mut out = Vec::new();
    match state.tx() {
        // Dropping the transaction rolls it back: nothing is written.
        Ok(tx) => {
            drop(tx);
            out.push(Check::ok(name, format!("{shown} is writable")));
        }
        Err(e) => out.push(Check::fail(
            name,
            format!("{shown} is not writable: {e}"),
            hint(shown),
        )),
    }
    out.push(match state.lock_holder() {
        Ok(None) => Check::ok("state lock", "free (no daemon running)"),
        Ok(Some((pid, since))) => Check::warn(
            "state lock",
            format!("held by a running contact-sync (pid {pid}, since {since})"),
            "normal while the daemon runs; stop it before commands that need the lock (initial-sync, repair)",
        ),
        Err(e) => Check::fail(
            "state lock",
            e.to_string(),
            "check the permissions of the .lock file beside the state database",
        ),
    });
    (out, Some(state))
}

// --- stores ---

/// A store answers `count()` within `timeout`. Fails with the store's own
/// error text (which never holds secrets) when it does not.
pub async fn check_store_reachable(store: &mut dyn Store, timeout: Duration) -> Check {
    let name = format!("store {} reachable", store.name());
    let store_name = store.name().to_string();
    match tokio::time::timeout(timeout, store.count()).await {
        Ok(Ok(n)) => Check::ok(name, format!("{n} live contacts")),
        Ok(Err(e)) => {
            let missing_table = e.message.contains("SQLSTATE 42P01")
                || e.message.contains("does not exist")
                || e.message.contains("Not found: Table");
            let hint = if missing_table {
                format!("{store_name}'s contacts table is missing: run `contact-sync migrate` (it creates it), or check the schema and table names in the configuration")
            } else if e.is_transient() {
                format!("{store_name} may be down or overloaded: check it is running and reachable from here, then retry")
            } else {
                format!("{store_name} refuses us: check its address, credentials and permissions in the configuration")
            };
            Check::fail(name, e.to_string(), hint)
        }
        Err(_) => Check::fail(
            name,
            format!("{store_name}: no answer within {}", human_secs(timeout.as_secs_f64())),
            format!("check that {store_name} is running and reachable from this machine (firewall, DNS, VPN)"),
        ),
    }
}

/// [`check_store_reachable`] as a [`SafetyCheck`].
pub struct StoreReachable<'a> {
    pub store: &'a mut dyn Store,
    pub timeout: Duration,
}

#[async_trait]
impl SafetyCheck for StoreReachable<'_> {
    async fn run(&mut self) -> Vec<Check> {
        vec![check_store_reachable(&mut *self.store, self.timeout).await]
    }
}

// --- what the state database says ---

/// Pending journal entries per store: a warning above the threshold.
pub fn check_pending(
    state: &StateDb,
    stores: &[String],
    threshold: u64,
) -> Result<Vec<Check>, OpsError> {
    let head = state.journal_head()?;
    let mut out = Vec::new();
    for store in stores {
        let pending = u64::try_from(head - state.cursor(store)?).unwrap_or(0);
        let name = format!("store {store} pending");
        out.push(if pending > threshold {
            Check::warn(
                name,
                format!("{pending} journal entries not applied yet (more than {threshold})"),
                format!("{store} is behind: check it is reachable (contact-sync status); the daemon catches up on its own once it is"),
            )
        } else {
            Check::ok(name, format!("{pending} journal entries not applied yet"))
        });
    }
    Ok(out)
}

/// Dead letters: a warning when there are any.
pub fn check_dead_letters(state: &StateDb) -> Result<Check, OpsError> {
    let n = state.open_dead_letter_count()?;
    Ok(if n > 0 {
        Check::warn(
            "dead letters",
            format!("{n} open dead letters (records refused by validation or by a store)"),
            "look at them with `contact-sync dead-letters list`, fix the records at their source, then              `contact-sync dead-letters retry ID` (or `dismiss ID`)",
        )
    } else {
        Check::ok("dead letters", "none")
    })
}

/// Paused stores: a failure each (a person must decide before the store
/// syncs again), parked ones (a permanent error) included.
pub fn check_paused(state: &StateDb) -> Result<Vec<Check>, OpsError> {
    Ok(state
        .paused_stores()?
        .into_iter()
        .map(|p| {
            let fix = match (p.kind, &p.parked) {
                (contact_sync_state::PauseKind::MassChange, _) => format!(
                    "`contact-sync paused` shows what is held back; `contact-sync approve {0}` applies it, `contact-sync reject {0}` restores canonical's records",
                    p.store
                ),
                (contact_sync_state::PauseKind::Schema, Some(_)) => format!(
                    "fix what the error names (credentials, permissions, the store's set-up), then `contact-sync resume {0}` (a daemon started with a changed [stores.{0}] configuration tries it again by itself)",
                    p.store
                ),
                (contact_sync_state::PauseKind::Schema, None) => format!(
                    "fix what the reason names, then `contact-sync resume {}`",
                    p.store
                ),
            };
            let what = if p.parked.is_some() {
                format!("parked after a permanent error: {}", p.reason)
            } else {
                format!("{} guard: {}", p.kind.as_str(), p.reason)
            };
            Check::fail(format!("{} paused", p.store), what, fix)
        })
        .collect())
}

/// Open conflicts: a warning when there are any.
pub fn check_conflicts(state: &StateDb) -> Result<Check, OpsError> {
    let n = state.open_conflict_count()?;
    Ok(if n > 0 {
        Check::warn(
            "conflicts",
            format!("{n} open conflicts wait for a person"),
            "settle them with `contact-sync conflicts list` and `contact-sync conflicts resolve ID --keep canonical|incoming`",
        )
    } else {
        Check::ok("conflicts", "none open")
    })
}

/// Last successful sync per store: warn or fail when too old, warn when never.
pub fn check_last_sync(
    state: &StateDb,
    stores: &[String],
    now: Timestamp,
    thresholds: &CheckThresholds,
) -> Result<Vec<Check>, OpsError> {
    let mut out = Vec::new();
    for store in stores {
        let st = state.store_status(store)?;
        let name = format!("store {store} last sync");
        let failing = if st.consecutive_errors > 0 {
            format!(
                "; {} failed runs since{}",
                st.consecutive_errors,
                st.last_error
                    .as_deref()
                    .map(|e| format!(", last error: {e}"))
                    .unwrap_or_default()
            )
        } else {
            String::new()
        };
        let Some(last) = st.last_success else {
            out.push(Check::warn(
                name,
                format!("never synced successfully{failing}"),
                "run `contact-sync run --once` (or start the daemon) and check the result",
            ));
            continue;
        };
        let age = (now - last).num_milliseconds().max(0) as f64 / 1000.0;
        let msg = format!("{} ago ({}){failing}", human_secs(age), format_ts(&last));
        let hint = format!("{store} has not synced for a while: is the daemon running (contact-sync status)? does the store answer?");
        out.push(if age > thresholds.last_sync_fail.as_secs_f64() {
            Check::fail(name, msg, hint)
        } else if age > thresholds.last_sync_warn.as_secs_f64() {
            Check::warn(name, msg, hint)
        } else {
            Check::ok(name, msg)
        });
    }
    Ok(out)
}

/// The system clock is not before the newest journal entry (a clock that
/// went back would make new changes look older than recorded ones).
pub fn check_clock(
    state: &StateDb,
    now: Timestamp,
    tolerance: Duration,
) -> Result<Check, OpsError> {
    let name = "clock";
    let head = state.journal_head()?;
    let newest = state.journal_after(head - 1, head, 1)?.pop();
    let Some(entry) = newest else {
        return Ok(Check::ok(name, "no journal entries to compare with yet"));
    };
    let behind = (entry.at - now).num_milliseconds() as f64 / 1000.0;
    Ok(if behind > tolerance.as_secs_f64() {
        Check::fail(
            name,
            format!(
                "the system clock ({}) is {} behind the newest journal entry ({})",
                format_ts(&now),
                human_secs(behind),
                format_ts(&entry.at)
            ),
            "fix the system time (timedatectl status; enable NTP) before syncing",
        )
    } else {
        Check::ok(
            name,
            format!(
                "system time {} is after the newest journal entry",
                format_ts(&now)
            ),
        )
    })
}

/// Every check that reads only the state database, for `stores` (canonical
/// included when wanted). A read error becomes a failed check naming it.
pub fn state_checks(
    state: &StateDb,
    stores: &[String],
    now: Timestamp,
    thresholds: &CheckThresholds,
) -> Vec<Check> {
    let mut out = Vec::new();
    let unreadable = |what: &str, e: OpsError| {
        Check::fail(
            what.to_string(),
            format!("cannot read it from the state database: {e}"),
            "the state database may be damaged: back it up and run `contact-sync status`",
        )
    };
    match check_clock(state, now, thresholds.clock_tolerance) {
        Ok(c) => out.push(c),
        Err(e) => out.push(unreadable("clock", e)),
    }
    match check_last_sync(state, stores, now, thresholds) {
        Ok(c) => out.extend(c),
        Err(e) => out.push(unreadable("last sync", e)),
    }
    match check_pending(state, stores, thresholds.pending_warn) {
        Ok(c) => out.extend(c),
        Err(e) => out.push(unreadable("pending", e)),
    }
    match check_dead_letters(state) {
        Ok(c) => out.push(c),
        Err(e) => out.push(unreadable("dead letters", e)),
    }
    match check_conflicts(state) {
        Ok(c) => out.push(c),
        Err(e) => out.push(unreadable("conflicts", e)),
    }
    match check_paused(state) {
        Ok(c) => out.extend(c),
        Err(e) => out.push(unreadable("paused stores", e)),
    }
    out
}

/// What [`run_checks`] looks at.
pub struct CheckInputs<'a> {
    /// The configuration file; `None` for the embedded default.
    pub config_path: Option<&'a Path>,
    /// Whether that file holds secrets inline (then it must not be
    /// readable by group or others).
    pub config_has_secrets: bool,
    /// The state database.
    pub state: &'a StateTarget,
    /// Every store to check, canonical included (its name is `canonical`).
    pub stores: Vec<&'a mut dyn Store>,
    /// Store-specific checks, run last, in order.
    pub extra: Vec<Box<dyn SafetyCheck + 'a>>,
    pub thresholds: CheckThresholds,
    pub now: Timestamp,
}

/// Runs every built-in check and then `extra`, in this order: config file,
/// state database and lock, each store reachable, clock, last sync per
/// store, pending per store, dead letters, conflicts, extra checks.
pub async fn run_checks(inputs: CheckInputs<'_>) -> CheckReport {
    let CheckInputs {
        config_path,
        config_has_secrets,
        state,
        mut stores,
        mut extra,
        thresholds,
        now,
    } = inputs;
    let mut report = CheckReport::new();
    report.push(check_config_file(config_path, config_has_secrets));
    let names: Vec<String> = stores.iter().map(|s| s.name().to_string()).collect();
    // Everything from the state database first, so it is closed before any await.
    let (db_checks, state) = check_state_db(state);
    report.extend(db_checks);
    let from_state = state
        .as_ref()
        .map(|s| state_checks(s, &names, now, &thresholds));
    drop(state);
    for store in stores.iter_mut() {
        report.push(check_store_reachable(&mut **store, thresholds.store_timeout).await);
    }
    if let Some(checks) = from_state {
        report.extend(checks);
    }
    for check in extra.iter_mut() {
        report.run(check.as_mut()).await;
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_follows_the_worst_level() {
        let mut r = CheckReport::new();
        assert_eq!(r.verdict(), Verdict::Safe);
        r.push(Check::ok("a", "fine"));
        assert_eq!(r.verdict(), Verdict::Safe);
        assert_eq!(r.exit_code(), 0);
        r.push(Check::warn("b", "hmm", "look"));
        assert_eq!(r.verdict(), Verdict::SafeWithWarnings);
        assert_eq!(r.exit_code(), 0);
        r.push(Check::fail("c", "broken", "fix it"));
        assert_eq!(r.verdict(), Verdict::Unsafe);
        assert_eq!(r.exit_code(), 1);
        let text = r.render_human();
        assert!(
            text.contains("[FAIL] c: broken\n       fix: fix it\n"),
            "{text}"
        );
        assert!(
            text.ends_with("verdict: UNSAFE (1 failed, 1 warnings, 1 ok)\n"),
            "{text}"
        );
        let json = r.to_json();
        assert_eq!(json["verdict"], "UNSAFE");
        assert_eq!(json["exit_code"], 1);
        assert_eq!(json["checks"][1]["level"], "warn");
        assert_eq!(json["checks"][0]["hint"], serde_json::Value::Null);
    }

    #[test]
    fn durations_read_like_a_person_wrote_them() {
        assert_eq!(human_secs(5.0), "5 s");
        assert_eq!(human_secs(600.0), "10 min");
        assert_eq!(human_secs(3.0 * 3600.0), "3 h");
        assert_eq!(human_secs(3.0 * 86_400.0), "3 days");
    }
}
