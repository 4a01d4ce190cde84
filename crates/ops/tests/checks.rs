//! Each safety check failing for its real cause, and the verdict.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use contact_sync_connector::Store;
use contact_sync_core::model::now;
use contact_sync_memory::{FaultControl, FaultPlan, FaultyStore, MemoryOptions, MemoryStore};
use contact_sync_ops::check::{
    check_clock, check_config_file, check_last_sync, check_pending, check_state_db,
    check_store_reachable, state_checks,
};
use contact_sync_ops::{
    run_checks, Check, CheckInputs, CheckReport, CheckThresholds, Level, SafetyCheck, Verdict,
};
use support::{add_dead_letter_and_conflict, World};

fn write_config(dir: &Path, mode: u32) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(
        &p,
        "[stores.twenty]\nkind = \"twenty\"\napi_key = \"sk-live-123\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

#[test]
fn config_file_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_config(dir.path(), 0o666);
    let c = check_config_file(Some(&p), true);
    assert_eq!(c.level, Level::Fail, "{c:?}");
    assert!(c.message.contains("world-writable"), "{c:?}");
    assert!(c.hint.as_deref().unwrap().contains("chmod 600"), "{c:?}");
    // The file's content never shows.
    assert!(!c.message.contains("sk-live"));

    let p = write_config(dir.path(), 0o644);
    let c = check_config_file(Some(&p), true);
    assert_eq!(c.level, Level::Warn, "{c:?}");
    assert!(c.message.contains("readable by group or others"), "{c:?}");
    // Without secrets, readable is fine.
    assert_eq!(check_config_file(Some(&p), false).level, Level::Ok);

    let p = write_config(dir.path(), 0o600);
    assert_eq!(check_config_file(Some(&p), true).level, Level::Ok);
    assert_eq!(check_config_file(None, false).level, Level::Ok);
    let c = check_config_file(Some(&dir.path().join("missing.toml")), false);
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.contains("missing.toml"), "{c:?}");
}

#[tokio::test]
async fn unreachable_store_fails_naming_the_store_and_its_error() {
    let (inner, _handle) = MemoryStore::with_options(MemoryOptions::new("supabase"));
    let control = FaultControl::new(FaultPlan::new(1));
    control.crash_now();
    let mut down = FaultyStore::new(inner, control.clone());
    let c = check_store_reachable(&mut down, Duration::from_secs(5)).await;
    assert_eq!(c.name, "store supabase reachable");
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.starts_with("supabase: "), "{c:?}");
    assert!(c.message.contains("injected crash"), "{c:?}");
    // A store that is down (a transient error) points at waiting.
    assert!(c.hint.as_deref().unwrap().contains("may be down"), "{c:?}");
    // A permanent error points at configuration, not at waiting.
    control.heal();
    control.fail_permanently("authentication failed");
    let c = check_store_reachable(&mut down, Duration::from_secs(5)).await;
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.contains("authentication failed"), "{c:?}");
    assert!(c.hint.as_deref().unwrap().contains("credentials"), "{c:?}");
    control.heal();
    control.crash_now();

    let (mut up, handle) = MemoryStore::with_options(MemoryOptions::new("local"));
    handle.user_upsert(contact_sync_core::synth::Generator::new(1).contact(0));
    let c = check_store_reachable(&mut up, Duration::from_secs(5)).await;
    assert_eq!(
        (c.level, c.message.as_str()),
        (Level::Ok, "1 live contacts")
    );

    let mut report = CheckReport::new();
    report.push(c);
    report.push(check_store_reachable(&mut down, Duration::from_secs(5)).await);
    assert_eq!(report.verdict(), Verdict::Unsafe);
    assert_eq!(report.exit_code(), 1);
    let text = report.render_human();
    assert!(
        text.contains("[FAIL] store supabase reachable: supabase: count: injected crash"),
        "{text}"
    );
    assert!(
        text.ends_with("verdict: UNSAFE (1 failed, 0 warnings, 1 ok)\n"),
        "{text}"
    );
}

#[tokio::test]
async fn dead_letters_conflicts_and_a_held_lock_warn() {
    let w = World::new(6);
    let mut engine = w.synced_engine().await;
    let names = vec!["canonical".to_string(), "local".to_string()];
    // Clean state: every state check passes.
    let clean = state_checks(engine.state(), &names, now(), &CheckThresholds::default());
    assert!(clean.iter().all(|c| c.level == Level::Ok), "{clean:#?}");

    add_dead_letter_and_conflict(engine.state_mut(), &w.contacts[1]);
    let _lock = engine.state().lock().unwrap();
    let mut report = CheckReport::new();
    let (db, state) = check_state_db(&contact_sync_state::StateTarget::Path(w.state_path()));
    report.extend(db);
    report.extend(state_checks(
        state.as_ref().unwrap(),
        &names,
        now(),
        &CheckThresholds::default(),
    ));
    let dl = report.get("dead letters").unwrap();
    assert_eq!(dl.level, Level::Warn);
    assert!(dl.message.starts_with("1 open dead letters"), "{dl:?}");
    assert!(dl.hint.as_deref().unwrap().contains("dead-letters list"));
    let cf = report.get("conflicts").unwrap();
    assert_eq!(cf.level, Level::Warn);
    assert!(cf.message.starts_with("1 open conflicts"), "{cf:?}");
    let lock = report.get("state lock").unwrap();
    assert_eq!(lock.level, Level::Warn);
    assert!(
        lock.message
            .contains(&format!("pid {}", std::process::id())),
        "{lock:?}"
    );
    assert_eq!(report.get("state database").unwrap().level, Level::Ok);
    assert_eq!(report.verdict(), Verdict::SafeWithWarnings);
    assert_eq!(report.exit_code(), 0);
    let json = report.to_json();
    assert_eq!(json["verdict"], "SAFE_WITH_WARNINGS");
    assert_eq!(json["warnings"], 3);
}

#[tokio::test]
async fn pending_old_sync_and_clock_going_back() {
    let w = World::new(6);
    let engine = w.synced_engine().await;
    let state = engine.state();
    let t = CheckThresholds {
        pending_warn: 5,
        ..CheckThresholds::default()
    };
    // A store that has applied nothing of the journal yet.
    let pending = check_pending(state, &["local".into(), "newcrm".into()], t.pending_warn).unwrap();
    assert_eq!(pending[0].level, Level::Ok);
    assert_eq!(pending[1].level, Level::Warn);
    assert!(
        pending[1].message.starts_with("6 journal entries"),
        "{:?}",
        pending[1]
    );

    let stores = ["local".to_string(), "newcrm".to_string()];
    let soon = check_last_sync(state, &stores, now(), &t).unwrap();
    assert_eq!(soon[0].level, Level::Ok, "{:?}", soon[0]);
    assert_eq!(soon[1].level, Level::Warn);
    assert!(soon[1].message.contains("never synced"), "{:?}", soon[1]);
    let later = now() + chrono::Duration::hours(2);
    assert_eq!(
        check_last_sync(state, &stores, later, &t).unwrap()[0].level,
        Level::Warn
    );
    let much_later = now() + chrono::Duration::days(2);
    let c = &check_last_sync(state, &stores, much_later, &t).unwrap()[0];
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.starts_with("2 days ago"), "{c:?}");

    assert_eq!(
        check_clock(state, now(), t.clock_tolerance).unwrap().level,
        Level::Ok
    );
    let earlier = now() - chrono::Duration::hours(1);
    let c = check_clock(state, earlier, t.clock_tolerance).unwrap();
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.message.contains("behind the newest journal entry"),
        "{c:?}"
    );
}

/// A store-specific check plugged in from outside.
struct SlotPresent {
    present: bool,
}

#[async_trait]
impl SafetyCheck for SlotPresent {
    async fn run(&mut self) -> Vec<Check> {
        vec![if self.present {
            Check::ok("store supabase slot", "present and active")
        } else {
            Check::fail(
                "store supabase slot",
                "replication slot contact_sync is missing",
                "contact-sync migrate --store supabase",
            )
        }]
    }
}

#[tokio::test]
async fn run_checks_covers_everything_in_order() {
    let w = World::new(4);
    let engine = w.synced_engine().await;
    drop(engine);
    let config = write_config(w.dir.path(), 0o600);
    let mut canonical = w.canonical.store();
    let mut local = w.local.store();
    let stores: Vec<&mut dyn Store> = vec![&mut canonical, &mut local];
    let report = run_checks(CheckInputs {
        config_path: Some(&config),
        config_has_secrets: true,
        state: &contact_sync_state::StateTarget::Path(w.state_path()),
        stores,
        extra: vec![Box::new(SlotPresent { present: true })],
        thresholds: CheckThresholds::default(),
        now: now(),
    })
    .await;
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "config file",
            "state database",
            "state lock",
            "store canonical reachable",
            "store local reachable",
            "clock",
            "store canonical last sync",
            "store local last sync",
            "store canonical pending",
            "store local pending",
            "dead letters",
            "conflicts",
            "store supabase slot",
        ]
    );
    assert_eq!(report.verdict(), Verdict::Safe, "{}", report.render_human());

    // The same with a missing slot: UNSAFE, exit 1.
    let mut canonical = w.canonical.store();
    let report = run_checks(CheckInputs {
        config_path: Some(&config),
        config_has_secrets: true,
        state: &contact_sync_state::StateTarget::Path(w.state_path()),
        stores: vec![&mut canonical],
        extra: vec![Box::new(SlotPresent { present: false })],
        thresholds: CheckThresholds::default(),
        now: now(),
    })
    .await;
    assert_eq!(report.verdict(), Verdict::Unsafe);
    assert_eq!(report.exit_code(), 1);

    // A state database not created yet is fine, and is not created by the check.
    let fresh = w.dir.path().join("fresh").join("state.db");
    std::fs::create_dir_all(fresh.parent().unwrap()).unwrap();
    let (checks, db) = check_state_db(&contact_sync_state::StateTarget::Path(fresh.clone()));
    assert!(db.is_none());
    assert_eq!(checks[0].level, Level::Ok, "{checks:?}");
    assert!(!fresh.exists());
}

/// A store that never answers `count()` (a firewall dropping packets).
struct Silent(MemoryStore);

impl contact_sync_connector::StoreInfo for Silent {
    fn name(&self) -> &str {
        "bigquery"
    }
    fn keeps_version(&self) -> bool {
        true
    }
}

#[async_trait]
impl contact_sync_connector::ChangeSource for Silent {
    async fn read_changes(
        &mut self,
        from: Option<&contact_sync_connector::Checkpoint>,
        limit: usize,
    ) -> Result<contact_sync_connector::ChangeBatch, contact_sync_connector::StoreError> {
        self.0.read_changes(from, limit).await
    }
    async fn acknowledge(
        &mut self,
        upto: &contact_sync_connector::Checkpoint,
    ) -> Result<(), contact_sync_connector::StoreError> {
        self.0.acknowledge(upto).await
    }
}

#[async_trait]
impl contact_sync_connector::RecordSink for Silent {
    async fn write_batch(
        &mut self,
        writes: &[contact_sync_core::Contact],
    ) -> Result<Vec<contact_sync_connector::WriteOutcome>, contact_sync_connector::StoreError> {
        self.0.write_batch(writes).await
    }
    async fn read(
        &mut self,
        ids: &[String],
    ) -> Result<Vec<contact_sync_core::Contact>, contact_sync_connector::StoreError> {
        self.0.read(ids).await
    }
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<contact_sync_core::Contact>, contact_sync_connector::StoreError> {
        self.0.scan(after, limit).await
    }
    async fn count(&mut self) -> Result<u64, contact_sync_connector::StoreError> {
        std::future::pending().await
    }
    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<contact_sync_core::Contact>, contact_sync_connector::StoreError> {
        self.0.find_by_identity(emails, phones).await
    }
}

#[tokio::test]
async fn a_store_that_never_answers_fails_after_the_timeout() {
    let (inner, _h) = MemoryStore::with_options(MemoryOptions::new("bigquery"));
    let mut silent = Silent(inner);
    let c = check_store_reachable(&mut silent, Duration::from_millis(50)).await;
    assert_eq!(c.name, "store bigquery reachable");
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.starts_with("bigquery: no answer within"), "{c:?}");
    assert!(c.hint.as_deref().unwrap().contains("firewall"), "{c:?}");
}
