//! Initial sync verifies what it wrote: a store that acknowledges a write
//! it did not keep, or holds different content, shows up in the summary.

mod support;

use async_trait::async_trait;
use contact_sync_connector::{
    ChangeBatch, ChangeSource, Checkpoint, RecordSink, Store, StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::Contact;
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_memory::{MemoryHandle, MemoryOptions, MemoryStore};
use contact_sync_state::StateDb;
use support::person;

/// A store that reports the write of contact `lose` as applied but keeps
/// nothing of it (a buggy or eventually-consistent store).
struct LosesOneWrite {
    inner: MemoryStore,
    lose: String,
}

#[async_trait]
impl ChangeSource for LosesOneWrite {
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        self.inner.read_changes(from, limit).await
    }
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        self.inner.acknowledge(upto).await
    }
}

#[async_trait]
impl RecordSink for LosesOneWrite {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let kept: Vec<Contact> = writes
            .iter()
            .filter(|c| c.contact_id != self.lose)
            .cloned()
            .collect();
        let mut done = self.inner.write_batch(&kept).await?.into_iter();
        Ok(writes
            .iter()
            .map(|c| {
                if c.contact_id == self.lose {
                    WriteOutcome::Applied {
                        native_id: c.contact_id.clone(),
                    }
                } else {
                    done.next().expect("one outcome per kept write")
                }
            })
            .collect())
    }
    async fn read(&mut self, ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        self.inner.read(ids).await
    }
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        self.inner.scan(after, limit).await
    }
    async fn count(&mut self) -> Result<u64, StoreError> {
        self.inner.count().await
    }
    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        self.inner.find_by_identity(emails, phones).await
    }
}

impl StoreInfo for LosesOneWrite {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn keeps_version(&self) -> bool {
        self.inner.keeps_version()
    }
}

fn engine(
    dir: &tempfile::TempDir,
    canonical: &MemoryHandle,
    stores: Vec<Box<dyn Store>>,
) -> Engine {
    Engine::new(
        StateDb::open(&dir.path().join("state.db")).expect("state"),
        Box::new(canonical.store()),
        stores,
        EngineOptions {
            batch_size: 7,
            backfill_page: 4,
            max_batches_per_cycle: 1000,
            ..Default::default()
        },
    )
    .expect("engine")
}

#[tokio::test]
async fn a_write_the_store_did_not_keep_is_reported_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canonical = MemoryHandle::new(MemoryOptions::new("canonical").echo_own_writes(false));
    for i in 0..10 {
        canonical.user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let local = MemoryHandle::new(MemoryOptions::new("local"));
    let other = MemoryHandle::new(MemoryOptions::new("other"));
    let mut e = engine(
        &dir,
        &canonical,
        vec![
            Box::new(LosesOneWrite {
                inner: local.store(),
                lose: "C006".into(),
            }),
            Box::new(other.store()),
        ],
    );
    let mut progress = |_: &str, _: u64, _: u64| {};
    let v = e.initial_sync(&mut progress).await.expect("initial sync");
    assert_eq!(v.len(), 2);
    let (lossy, fine) = (&v[0], &v[1]);
    assert_eq!(lossy.store, "local");
    assert_eq!(
        (
            lossy.expected,
            lossy.matching,
            lossy.missing,
            lossy.differing,
            lossy.extra
        ),
        (10, 9, 1, 0, 0),
        "{lossy:?}"
    );
    assert_eq!(lossy.sample, vec!["C006".to_string()]);
    assert!((lossy.drift_pct - 10.0).abs() < 1e-9, "{lossy:?}");
    assert_eq!(
        (
            fine.expected,
            fine.matching,
            fine.missing,
            fine.differing,
            fine.extra
        ),
        (10, 10, 0, 0, 0),
        "{fine:?}"
    );
    // What `status` shows: the drift recorded for the store.
    let drift = e
        .state()
        .meta("drift:local")
        .expect("meta")
        .expect("drift recorded");
    let drift: serde_json::Value = serde_json::from_str(&drift).expect("json");
    assert_eq!(drift["missing"], 1);
}

#[tokio::test]
async fn a_store_with_its_own_records_reports_extras_and_differences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let canonical = MemoryHandle::new(MemoryOptions::new("canonical").echo_own_writes(false));
    for i in 0..9 {
        canonical.user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let local = MemoryHandle::new(MemoryOptions::new("local"));
    // Already there before the first sync: one record canonical lacks (it
    // sorts last, after every canonical page) and one at a higher version
    // with other content (merged, not overwritten).
    local.user_upsert(person("Z999", "Only Local"));
    let mut newer = person("C004", "Someone Else");
    newer.version = 5;
    local.user_upsert(newer);
    let mut e = engine(&dir, &canonical, vec![Box::new(local.store())]);
    let mut progress = |_: &str, _: u64, _: u64| {};
    let v = e.initial_sync(&mut progress).await.expect("initial sync");
    assert_eq!(
        (
            v[0].expected,
            v[0].matching,
            v[0].missing,
            v[0].differing,
            v[0].extra
        ),
        (9, 8, 0, 1, 1),
        "{:?}",
        v[0]
    );
    assert_eq!(v[0].sample, vec!["C004".to_string(), "Z999".to_string()]);
    // The write of C004 was refused (local held a record the engine had
    // never seen): local's record was merged instead of overwritten. It
    // wins on version, so canonical and local now agree on it.
    let again = e.verify().await.expect("verify");
    assert_eq!(
        (again[0].matching, again[0].differing, again[0].extra),
        (9, 0, 1),
        "{:?}",
        again[0]
    );
    let c004 = canonical.get("C004").expect("C004 in canonical");
    assert_eq!(c004.canonical_name, "Someone Else");
    assert_eq!(
        local.get("C004").expect("C004 in local").canonical_name,
        "Someone Else"
    );
}
