//! The conformance suite must fail stores that break the contract: each
//! test wraps a MemoryStore that breaks one rule and expects the suite's
//! panic message for it.

use async_trait::async_trait;
use contact_sync_connector::{
    ChangeBatch, ChangeSource, Checkpoint, RecordSink, StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::Contact;
use contact_sync_memory::conformance::{sink_contract, source_contract};
use contact_sync_memory::{MemoryOptions, MemoryStore};

#[derive(Clone, Copy, PartialEq)]
enum Flaw {
    /// Claims to keep versions but applies stale writes.
    NoVersionGuard,
    /// Scan pages come in reverse order.
    ReverseScan,
    /// Count includes tombstones.
    CountsTombstones,
    /// Reads return records as stored, not normalized.
    RawReads,
    /// A write applied twice creates a second record.
    DuplicatesOnRetry,
    /// Reading changes consumes them.
    ConsumingReads,
}

struct Broken {
    inner: MemoryStore,
    flaw: Flaw,
    name: String,
}

fn broken(flaw: Flaw) -> Broken {
    // The inner store applies every write, while `Broken` claims to keep versions.
    let keeps = flaw != Flaw::NoVersionGuard;
    let (inner, _) = MemoryStore::with_options(MemoryOptions::new("broken").keeps_version(keeps));
    Broken {
        inner,
        flaw,
        name: "broken".into(),
    }
}

impl StoreInfo for Broken {
    fn name(&self) -> &str {
        &self.name
    }
    fn keeps_version(&self) -> bool {
        true
    }
}

#[async_trait]
impl ChangeSource for Broken {
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let b = self.inner.read_changes(from, limit).await?;
        if self.flaw == Flaw::ConsumingReads && !b.changes.is_empty() {
            self.inner.acknowledge(&b.checkpoint).await?;
            return Ok(ChangeBatch {
                checkpoint: from.cloned().unwrap_or(b.checkpoint.clone()),
                ..b
            });
        }
        Ok(b)
    }
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        self.inner.acknowledge(upto).await
    }
}

#[async_trait]
impl RecordSink for Broken {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut out = Vec::new();
        for w in writes {
            let mut w = w.clone();
            if self.flaw == Flaw::RawReads {
                w.canonical_name = format!("  {} ", w.canonical_name);
            }
            if self.flaw == Flaw::DuplicatesOnRetry
                && self.inner.handle().get(&w.contact_id).is_some()
            {
                w.contact_id = format!("{}-dup", w.contact_id);
            }
            out.extend(self.inner.write_batch(std::slice::from_ref(&w)).await?);
        }
        Ok(out)
    }
    async fn read(&mut self, ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        let mut v = self.inner.read(ids).await?;
        if self.flaw == Flaw::RawReads {
            for c in &mut v {
                c.canonical_name = format!("  {} ", c.canonical_name);
            }
        }
        Ok(v)
    }
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        let mut v = self.inner.scan(after, limit).await?;
        if self.flaw == Flaw::ReverseScan {
            v.reverse();
        }
        Ok(v)
    }
    async fn count(&mut self) -> Result<u64, StoreError> {
        if self.flaw == Flaw::CountsTombstones {
            return Ok(self.inner.handle().all().len() as u64);
        }
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

#[tokio::test]
#[should_panic(expected = "broken: conformance `version guard`")]
async fn catches_a_missing_version_guard() {
    sink_contract(&mut broken(Flaw::NoVersionGuard)).await;
}

#[tokio::test]
#[should_panic(expected = "scan must be ordered by contact_id")]
async fn catches_unordered_scan() {
    sink_contract(&mut broken(Flaw::ReverseScan)).await;
}

#[tokio::test]
#[should_panic(expected = "conformance `tombstones`")]
async fn catches_counted_tombstones() {
    sink_contract(&mut broken(Flaw::CountsTombstones)).await;
}

#[tokio::test]
#[should_panic(expected = "read must return normalized records")]
async fn catches_unnormalized_reads() {
    sink_contract(&mut broken(Flaw::RawReads)).await;
}

#[tokio::test]
#[should_panic(expected = "conformance `idempotent double write`")]
async fn catches_duplicates_on_retry() {
    sink_contract(&mut broken(Flaw::DuplicatesOnRetry)).await;
}

#[tokio::test]
#[should_panic(expected = "reading again before acknowledging must return the same changes")]
async fn catches_consuming_change_reads() {
    source_contract(&mut broken(Flaw::ConsumingReads)).await;
}
