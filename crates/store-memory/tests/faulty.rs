//! FaultyStore: each fault kind does what it says, crashes persist until
//! healed (also across a restart), and the same seed gives the same faults.

use contact_sync_connector::{ChangeSource, RecordSink, RetryClass, StoreError, StoreInfo};
use contact_sync_core::Contact;
use contact_sync_memory::conformance::sink_contract;
use contact_sync_memory::{
    FaultControl, FaultKind, FaultPlan, FaultRates, FaultyStore, MemoryHandle, MemoryOptions,
    MemoryStore, Operation,
};

fn faulty(plan: FaultPlan) -> (FaultyStore<MemoryStore>, MemoryHandle, FaultControl) {
    let (store, handle) = MemoryStore::with_options(MemoryOptions::new("mem"));
    let control = FaultControl::new(plan);
    (FaultyStore::new(store, control.clone()), handle, control)
}

fn contact(id: &str) -> Contact {
    Contact::new(id, format!("Person {id}"))
}

#[tokio::test]
async fn lost_write_ack_is_applied_but_reported_as_transient() {
    let (mut store, handle, control) = faulty(FaultPlan::new(1).for_operation(
        Operation::WriteBatch,
        FaultRates {
            ack_lost: 1.0,
            ..FaultRates::default()
        },
    ));
    let err = store.write_batch(&[contact("c1")]).await.unwrap_err();
    assert_eq!(err.class, RetryClass::Transient);
    assert!(handle.get("c1").is_some(), "the write was applied");
    assert_eq!(handle.writes().len(), 1);
    assert_eq!(control.counts().ack_lost, 1);
    // Other operations are not affected.
    assert_eq!(store.count().await.unwrap(), 1);
}

#[tokio::test]
async fn lost_acknowledge_ack_still_discards() {
    let (mut store, handle, control) = faulty(FaultPlan::new(1).ack_lost(1.0));
    store.write_batch(&[contact("c1")]).await.unwrap_err();
    let batch = store.read_changes(None, 10).await.unwrap();
    assert_eq!(batch.changes.len(), 1);
    store.acknowledge(&batch.checkpoint).await.unwrap_err();
    assert!(handle.pending_changes().is_empty());
    assert_eq!(control.counts().ack_lost, 2);
}

#[tokio::test]
async fn fail_before_and_timeout_do_nothing() {
    let (mut store, handle, control) = faulty(FaultPlan::new(7).fail_before(1.0));
    let err = store.write_batch(&[contact("c1")]).await.unwrap_err();
    assert!(err.is_transient());
    assert!(handle.all().is_empty() && handle.writes().is_empty());

    let (mut store2, handle2, control2) = faulty(FaultPlan::new(7).timeout(1.0));
    let err = store2.write_batch(&[contact("c1")]).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.message.contains("timed out"), "{err}");
    assert!(handle2.all().is_empty());
    assert_eq!(control.counts().fail_before, 1);
    assert_eq!(control2.counts().timeout, 1);
}

#[tokio::test]
async fn crash_persists_until_heal_across_a_restart() {
    let (mut store, handle, control) = faulty(FaultPlan::new(3).crash_after_ops(2));
    store.write_batch(&[contact("c1")]).await.unwrap();
    store.count().await.unwrap();
    assert!(control.is_crashed());
    let is_crash = |e: &StoreError| e.class == RetryClass::Transient && e.message.contains("crash");
    for _ in 0..3 {
        let err = store.write_batch(&[contact("c2")]).await.unwrap_err();
        assert!(is_crash(&err), "{err}");
    }
    assert!(is_crash(&store.read_changes(None, 10).await.unwrap_err()));
    assert!(handle.get("c2").is_none(), "nothing is done while crashed");

    // Restart on the same data and control: still down until healed.
    drop(store);
    let mut store = FaultyStore::new(MemoryStore::new(handle.clone()), control.clone());
    assert!(is_crash(&store.count().await.unwrap_err()));
    assert_eq!(control.counts().crash, 5);
    control.heal();
    assert_eq!(store.count().await.unwrap(), 1);
    // Re-armed: crashes again after two more successful operations.
    store.count().await.unwrap();
    assert!(store.count().await.is_err());
    control.heal();
    control.set_crash_after(None);
    for _ in 0..5 {
        store.count().await.unwrap();
    }
}

#[tokio::test]
async fn a_permanent_failure_holds_even_while_disabled_until_healed() {
    let (mut store, handle, control) = faulty(FaultPlan::new(4));
    control.disable();
    control.fail_permanently("authentication failed (the key was revoked)");
    let err = store.write_batch(&[contact("c1")]).await.unwrap_err();
    assert_eq!(err.class, RetryClass::Permanent, "{err}");
    assert!(
        err.message.contains("write_batch: authentication failed"),
        "{err}"
    );
    assert!(handle.get("c1").is_none(), "nothing is done while failing");
    control.heal();
    store.write_batch(&[contact("c1")]).await.unwrap();
    assert!(handle.get("c1").is_some());
}

#[tokio::test]
async fn disabled_control_passes_everything_through() {
    let (mut store, handle, control) = faulty(FaultPlan::new(9).fail_before(1.0));
    control.disable();
    store.write_batch(&[contact("c1")]).await.unwrap();
    assert_eq!(control.counts().total(), 0);
    control.enable();
    assert!(store.count().await.is_err());
    assert_eq!(handle.all().len(), 1);
}

/// Runs a fixed sequence of calls and returns, per call, the outcome.
async fn run_sequence(seed: u64) -> (Vec<String>, Vec<(u64, Operation, FaultKind)>) {
    let plan = FaultPlan::new(seed)
        .fail_before(0.15)
        .timeout(0.1)
        .ack_lost(0.2);
    let (mut store, _, control) = faulty(plan);
    let mut outcomes = Vec::new();
    for i in 0..200 {
        let r = match i % 4 {
            0 => store
                .write_batch(&[contact(&format!("c{i}"))])
                .await
                .map(|o| format!("{o:?}")),
            1 => store.count().await.map(|n| n.to_string()),
            2 => store
                .read_changes(None, 5)
                .await
                .map(|b| b.checkpoint.to_string()),
            _ => store.scan(None, 3).await.map(|v| v.len().to_string()),
        };
        outcomes.push(match r {
            Ok(s) => format!("ok {s}"),
            Err(e) => format!("err {e}"),
        });
    }
    let faults = control
        .injected()
        .into_iter()
        .map(|f| (f.call, f.operation, f.kind))
        .collect();
    (outcomes, faults)
}

#[tokio::test]
async fn same_seed_gives_the_same_fault_sequence() {
    let (out_a, faults_a) = run_sequence(42).await;
    let (out_b, faults_b) = run_sequence(42).await;
    assert_eq!(faults_a, faults_b);
    assert_eq!(out_a, out_b);
    assert!(
        faults_a.len() > 20,
        "the rates should inject faults: {}",
        faults_a.len()
    );
    assert!(faults_a.iter().any(|f| f.2 == FaultKind::AckLost));
    let (_, faults_c) = run_sequence(43).await;
    assert_ne!(faults_a, faults_c, "another seed, other faults");
}

#[tokio::test]
async fn wrapper_keeps_the_contract_when_disabled() {
    let (mut store, _, control) = faulty(FaultPlan::new(5).fail_before(1.0));
    control.disable();
    assert_eq!(store.name(), "mem");
    assert!(store.keeps_version());
    sink_contract(&mut store).await;
}
