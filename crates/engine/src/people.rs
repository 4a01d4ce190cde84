//! People data: erasure (right to erasure) and access (everything held
//! about one contact).
//!
//! **Erase.** [`Engine::forget`] notes the erasure first (from then on
//! every image of the contact that capture meets is a delete, never an
//! edit: see `merge_batch`), journals an empty tombstone one version above
//! everything any store agreed with (origin `erase`), scrubs the contact
//! from the journal's history, its conflicts and dead letters, marks every
//! store that ever held it as owed the tombstone (a store already holding
//! a tombstone still gets the empty one: all tombstones hash alike), then
//! runs one cycle and reports which stores confirmed. A store that is down
//! is owed the write and gets it when it returns; running `forget` again
//! refreshes the list of confirmed stores.

use contact_sync_core::{content_hash, Contact, JournalEntry, Op};
use serde::Serialize;
use serde_json::{json, Value};

use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The origin of an erasure's journal entry (stores know its tombstone by
/// it: [`Contact::is_erasure`]).
pub use contact_sync_core::ERASE_ORIGIN;

/// Per store: did it confirm it holds nothing of the contact?
#[derive(Debug, Clone, Serialize)]
pub struct ErasureStore {
    pub store: String,
    pub confirmed: bool,
    /// Why not (the store's error in this cycle, or "pending").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What an erasure did.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureReport {
    pub erasure: contact_sync_state::Erasure,
    pub stores: Vec<ErasureStore>,
    pub journal_entries_scrubbed: usize,
    pub conflicts_removed: usize,
    pub dead_letters_removed: usize,
}

impl Engine {
    /// Erases a contact's personal data everywhere (see the module docs).
    /// Fails when the engine has never known the contact.
    pub async fn forget(&mut self, contact_id: &str) -> Result<ErasureReport, EngineError> {
        let now = (self.clock)();
        let ids = vec![contact_id.to_string()];
        let mut names = vec![CANONICAL.to_string()];
        names.extend(self.store_names());
        let last = self.state.journal_of(contact_id, 1)?.into_iter().next();
        let held = self
            .canonical
            .read(&ids)
            .await
            .map_err(EngineError::Canonical)?
            .into_iter()
            .next();
        let mut top = last.as_ref().map_or(0, |e| e.version);
        top = top.max(held.as_ref().map_or(0, |c| c.version));
        let mut known = last.is_some() || held.is_some();
        for n in &names {
            if let Some(r) = self.state.store_record(n, contact_id)? {
                top = top.max(r.synced_version);
                known = true;
            }
        }
        let previous = self.state.erasure(contact_id)?;
        if !known && previous.is_none() {
            return Err(EngineError::Request(format!(
                "no contact {contact_id} in canonical or the state database"
            )));
        }
        let mut owed = Vec::new();
        for n in names.iter().filter(|n| *n != CANONICAL) {
            if let Some(mut r) = self.state.store_record(n, contact_id)? {
                r.needs_write = true;
                r.late.clear();
                owed.push(r);
            }
        }
        let (scrubbed, conflicts, dead) = {
            let tx = self.state.tx()?;
            let already = previous.as_ref().is_some_and(|p| {
                last.as_ref()
                    .is_some_and(|e| e.version == p.version && e.after.is_deleted())
            });
            let version = match &previous {
                Some(p) if already => p.version,
                _ => top + 1,
            };
            let at = previous
                .as_ref()
                .filter(|_| already)
                .map_or(now, |p| p.erased_at);
            tx.record_erasure(contact_id, at, version)?;
            if !already {
                let mut t = Contact::new(contact_id, "");
                t.version = version;
                t.deleted_at = Some(now);
                t.last_updated = Some(now);
                t.last_updated_by = Some(ERASE_ORIGIN.to_string());
                let hash = content_hash(&t);
                t.content_hash = Some(hash.clone());
                tx.append_journal(&JournalEntry {
                    seq: 0,
                    contact_id: contact_id.to_string(),
                    version,
                    prev_version: last.as_ref().map_or(0, |e| e.version),
                    op: Op::Delete,
                    origin: ERASE_ORIGIN.to_string(),
                    changes: vec![],
                    conflicts: vec![],
                    hash,
                    after: t,
                    at: now,
                })?;
                // Every store that ever held it is owed the empty tombstone.
                for r in &owed {
                    tx.put_store_record(r)?;
                }
                // Canonical is written on condition of what it was just
                // read holding (an initial sync's copy the engine never
                // journaled would otherwise refuse the tombstone as an edit).
                if let Some(mut h) = held.clone() {
                    h.normalize();
                    tx.put_store_record(&contact_sync_state::StoreRecord {
                        store: CANONICAL.to_string(),
                        contact_id: contact_id.to_string(),
                        native_id: Some(contact_id.to_string()),
                        synced_version: h.version,
                        hash: content_hash(&h),
                        deleted: h.is_deleted(),
                        ..Default::default()
                    })?;
                }
            }
            let counts = tx.scrub_contact(contact_id, at)?;
            tx.commit()?;
            counts
        };
        let report = match self.cycle().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(contact_id = %contact_id, error = %e,
                    "erasure noted and journaled; the stores get it at the next cycle");
                CycleReport::default()
            }
        };
        // The cycle may have journaled nothing of it (the hook turns its
        // images into deletes), but dead letters may have been written by
        // stores refusing stale images: scrub again.
        {
            let tx = self.state.tx()?;
            tx.scrub_contact(contact_id, now)?;
            tx.commit()?;
        }
        let erasure = self.state.erasure(contact_id)?.expect("recorded above");
        let mut stores = Vec::with_capacity(names.len());
        let upto = self.state.cursor(CANONICAL)?;
        let entry_seq = self
            .state
            .journal_version(contact_id, erasure.version)?
            .map_or(i64::MAX, |e| e.seq);
        for n in &names {
            let confirmed = if n == CANONICAL {
                upto >= entry_seq
            } else {
                match self.state.store_record(n, contact_id)? {
                    None => true,
                    Some(r) => r.deleted && !r.needs_write && r.synced_version >= erasure.version,
                }
            };
            let detail = (!confirmed).then(|| {
                report
                    .stores
                    .iter()
                    .find(|s| s.store == *n)
                    .and_then(|s| s.error.clone())
                    .unwrap_or_else(|| "pending: the next cycle writes it".into())
            });
            stores.push(ErasureStore {
                store: n.clone(),
                confirmed,
                detail,
            });
        }
        let confirmed: Vec<String> = stores
            .iter()
            .filter(|s| s.confirmed)
            .map(|s| s.store.clone())
            .collect();
        let tx = self.state.tx()?;
        tx.set_erasure_confirmed(contact_id, &confirmed)?;
        tx.commit()?;
        Ok(ErasureReport {
            erasure: contact_sync_state::Erasure {
                confirmed,
                ..erasure
            },
            stores,
            journal_entries_scrubbed: scrubbed,
            conflicts_removed: conflicts,
            dead_letters_removed: dead,
        })
    }

    /// Everything held about a contact (right of access): canonical's
    /// record, each store's record as the store holds it now, the engine's
    /// records of it per store, its journal, conflicts and dead letters,
    /// and the erasure record if it was erased. A store that cannot be read
    /// says why.
    pub async fn export_contact(&mut self, contact_id: &str) -> Result<Value, EngineError> {
        let ids = vec![contact_id.to_string()];
        let canonical = match self.canonical.read(&ids).await {
            Ok(v) => json!(v.into_iter().next()),
            Err(e) => json!({ "error": e.to_string() }),
        };
        let mut stores = serde_json::Map::new();
        for i in 0..self.stores.len() {
            let name = self.stores[i].name().to_string();
            let v = match self.stores[i].read(&ids).await {
                Ok(v) => json!(v.into_iter().next()),
                Err(e) => json!({ "error": e.to_string() }),
            };
            stores.insert(name, v);
        }
        let journal = self.state.journal_of(contact_id, 1_000_000)?;
        let journal: Vec<JournalEntry> = journal.into_iter().rev().collect();
        Ok(json!({
            "contact_id": contact_id,
            "canonical": canonical,
            "stores": stores,
            "sync_records": self.state.store_records_json_of(contact_id)?,
            "journal": journal,
            "conflicts": self.state.conflicts_of(contact_id)?,
            "dead_letters": self.state.dead_letters_of(contact_id)?,
            "erasure": self.state.erasure(contact_id)?,
        }))
    }
}

/// The capture hook of an erased contact: an image of it (a stale row in a
/// backlog, an edit of the row before the erasure reached the store, a
/// re-insert under its id) is never merged. The store is noted as holding
/// that image and owed the erasure's tombstone, written on condition of
/// that image like any owed write. A tombstone image is the store's
/// confirmation when the store already agreed with one; a row removed
/// outright leaves nothing to erase. Returns whether `recs` changed.
pub(crate) fn erased_image(
    store: &str,
    native_id: &str,
    contact_id: &str,
    incoming: Option<&Contact>,
    held: Option<&str>,
    recs: &mut std::collections::HashMap<String, contact_sync_state::StoreRecord>,
) -> bool {
    tracing::info!(store = %store, contact_id = %contact_id,
        "image of an erased contact: not merged; the store is owed the erasure");
    let r = recs
        .entry(contact_id.to_string())
        .or_insert_with(|| contact_sync_state::StoreRecord {
            store: store.to_string(),
            contact_id: contact_id.to_string(),
            native_id: Some(native_id.to_string()),
            ..Default::default()
        });
    match incoming {
        None => {
            r.hash = contact_sync_core::hash::tombstone_hash().to_string();
            r.deleted = true;
            r.needs_write = false;
        }
        Some(c) if c.is_deleted() => {
            if r.deleted && !r.needs_write {
                return false;
            }
            r.hash = contact_sync_core::hash::tombstone_hash().to_string();
            r.deleted = true;
            r.needs_write = true;
        }
        Some(c) => {
            r.hash = held.map_or_else(|| content_hash(c), str::to_string);
            r.deleted = false;
            r.needs_write = true;
        }
    }
    r.late.clear();
    r.writeback = false;
    true
}

/// The canonical-capture hook of an erased contact: what canonical holds
/// (`held`, at `held_version`; `hash` its content hash) is compared with
/// an empty tombstone; anything more (an edit made directly in canonical,
/// an old row delivered late) is answered by journaling the empty
/// tombstone again one version above, which canonical apply then writes
/// on condition of what was just read. Returns the entry and canonical's
/// record, or `None` when canonical already holds nothing of the contact.
pub(crate) fn reassert_erasure(
    store: &str,
    held: &Contact,
    native_id: &str,
    held_version: i64,
    prev: Option<&Contact>,
    hash: &str,
    now: contact_sync_core::Timestamp,
) -> Option<(JournalEntry, contact_sync_state::StoreRecord)> {
    let id = held.contact_id.clone();
    let empty = Contact::new(id.clone(), "");
    if held.is_deleted() && held.content_fields() == empty.content_fields() {
        return None;
    }
    tracing::info!(store = %store, contact_id = %id,
        "image of an erased contact above its erasure's version: erased again");
    let prev_version = prev.map_or(0, |p| p.version);
    let mut t = empty;
    t.version = prev_version.max(held_version) + 1;
    t.deleted_at = Some(held.deleted_at.unwrap_or(now));
    t.last_updated = Some(now);
    t.last_updated_by = Some(ERASE_ORIGIN.to_string());
    let th = content_hash(&t);
    t.content_hash = Some(th.clone());
    let entry = JournalEntry {
        seq: 0,
        contact_id: id.clone(),
        version: t.version,
        prev_version,
        op: Op::Delete,
        origin: ERASE_ORIGIN.to_string(),
        changes: vec![],
        conflicts: vec![],
        hash: th,
        after: t,
        at: now,
    };
    let rec = contact_sync_state::StoreRecord {
        store: CANONICAL.to_string(),
        contact_id: id,
        native_id: Some(native_id.to_string()),
        synced_version: held_version,
        hash: hash.to_string(),
        deleted: held.is_deleted(),
        ..Default::default()
    };
    Some((entry, rec))
}
