//! Conditional writes ([`RecordSink::write_batch_if`]) for Twenty.
//!
//! An update of a person the engine has seen is
//! `PATCH /rest/people?filter=and(id[eq]:<id>,updatedAt[eq]:"<updatedAt>")`:
//! Twenty applies a filtered update in one statement, so it writes only
//! while the person still has the `updatedAt` the engine's expected content
//! hash belongs to. Live Twenty 2.21 answers
//! `{"data":{"updatePeople":[<person>]}}` when it matched and
//! `{"data":{"updatePeople":[]}}` when the person changed since: nothing
//! is written (shared/twenty/README.md, "Conditional update"; the answer
//! shape is `update<Plural>` in twenty-server's `RestApiUpdateManyHandler`).
//! That empty answer is [`WriteOutcome::Changed`].
//!
//! The engine names what it expects by content hash only, so the store
//! keeps, per contact, the `updatedAt` and hashes of the person it last
//! read or wrote ([`TwentyStore::remember`]); a hash it does not know is
//! looked up (one list request per 50 contacts) and compared first.
//!
//! Creates ([`Expect::Absent`], or the tombstone hash) stay idempotent
//! batch upserts by deterministic id, and writes without a condition go
//! through [`RecordSink::write_batch`]. Hence
//! [`Conditional::ReadThenWrite`]: an upsert is not conditional (a person a
//! user creates in between with the same primary email is matched by
//! Twenty's upsert), and a tombstone is a conditional PATCH of its
//! `contactDeletedAt` followed by the soft delete (one round trip apart).
//! Two writes of one person within the same millisecond share an
//! `updatedAt` (Twenty keeps milliseconds), the last window of an update.

use contact_sync_connector::{Expect, RecordSink, StoreError, StoreInfo, WriteOutcome};
use contact_sync_core::Contact;
use reqwest::Method;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::client::{enc, StatsInner};
use crate::mapping::{contact_to_person, person_id, person_to_contact};
use crate::store::{hash_of, refused_field, TwentyStore, ALL_ROWS, IDS_PER_QUERY};

/// One write whose condition is a content hash.
struct Guarded {
    /// Index in the batch.
    idx: usize,
    /// The expected content hash.
    hash: String,
}

impl TwentyStore {
    /// See the module docs.
    pub(crate) async fn conditional_batch(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        assert_eq!(writes.len(), expect.len(), "one condition per write");
        let tomb = contact_sync_core::hash::tombstone_hash();
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        let mut plain: Vec<usize> = Vec::new();
        let mut guarded: Vec<Guarded> = Vec::new();
        for (i, e) in expect.iter().enumerate() {
            match e.hash() {
                Some(h) if h != tomb && !writes[i].contact_id.trim().is_empty() => {
                    guarded.push(Guarded {
                        idx: i,
                        hash: h.to_string(),
                    })
                }
                _ => plain.push(i),
            }
        }

        if !guarded.is_empty() {
            self.write_guarded(&writes, &guarded, &mut outcomes).await?;
        }

        if !plain.is_empty() {
            let batch: Vec<Contact> = plain.iter().map(|i| writes[*i].clone()).collect();
            let res = self.write_batch(&batch).await?;
            for (i, o) in plain.iter().zip(res) {
                outcomes[*i] = Some(o);
            }
        }
        let mut out = Vec::with_capacity(writes.len());
        for (i, o) in outcomes.into_iter().enumerate() {
            out.push(o.ok_or_else(|| {
                StoreError::transient(
                    self.name_str(),
                    format!("no outcome for contact {} (internal)", writes[i].contact_id),
                )
            })?);
        }
        Ok((out, writes))
    }

    fn name_str(&self) -> &str {
        &self.config().name
    }

    /// The writes conditional on a content hash: resolve the `updatedAt`
    /// each hash belongs to, then one filtered PATCH per record.
    async fn write_guarded(
        &mut self,
        writes: &[Contact],
        guarded: &[Guarded],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        // Hashes the store's memory does not hold: read those people now.
        let unknown: Vec<String> = guarded
            .iter()
            .filter(|g| {
                let cid = &writes[g.idx].contact_id;
                !self
                    .seen
                    .get(cid)
                    .is_some_and(|s| s.hashes.contains(&g.hash))
            })
            .map(|g| writes[g.idx].contact_id.clone())
            .collect();
        if !unknown.is_empty() {
            self.refresh(&unknown).await?;
            self.recall_unlinked(writes, guarded).await?;
        }
        let orgs: Vec<String> = guarded
            .iter()
            .map(|g| &writes[g.idx])
            .filter(|c| !c.is_deleted() && self.accepts(c))
            .filter_map(|c| c.organization.clone())
            .collect();
        self.ensure_companies(&orgs).await?;

        for g in guarded {
            let c = &writes[g.idx];
            let Some(seen) = self
                .seen
                .get(&c.contact_id)
                .filter(|s| s.hashes.contains(&g.hash))
                .cloned()
            else {
                // Not what the engine last saw (edited, deleted, destroyed).
                outcomes[g.idx] = Some(WriteOutcome::Changed);
                continue;
            };
            let written = hash_of(c);
            if let Some((field, reason)) = self
                .refused
                .get(&(c.contact_id.clone(), written.clone()))
                .cloned()
            {
                outcomes[g.idx] = Some(WriteOutcome::Rejected { field, reason });
                continue;
            }
            let removal = c.is_deleted() || !self.accepts(c);
            let body = if removal {
                // Keep the canonical tombstone's time and version.
                let full = contact_to_person(c, None);
                let mut m = Map::new();
                let keys: &[&str] = if c.is_deleted() {
                    &["contactDeletedAt", "contactVersion", "lastUpdatedBy"]
                } else {
                    &["contactVersion"]
                };
                for k in keys {
                    if let Some(v) = full.get(*k) {
                        m.insert(k.to_string(), v.clone());
                    }
                }
                Value::Object(m)
            } else {
                Value::Object(contact_to_person(c, self.company_for(c).as_deref()))
            };
            match self.patch_if(&seen.pid, &seen.updated_at, &body).await? {
                PatchIf::Changed => outcomes[g.idx] = Some(WriteOutcome::Changed),
                PatchIf::Refused(r) => {
                    let field = refused_field(&r).to_string();
                    let reason = format!(
                        "Twenty refused the update (HTTP {}): {}",
                        r.status,
                        r.message()
                    );
                    self.refused.insert(
                        (c.contact_id.clone(), written),
                        (field.clone(), reason.clone()),
                    );
                    outcomes[g.idx] = Some(WriteOutcome::Rejected { field, reason });
                }
                PatchIf::Applied(p) => {
                    if removal {
                        self.soft_delete(&seen.pid).await?;
                        self.seen.remove(&c.contact_id);
                    } else if let Ok(back) = person_to_contact(&p, self.name_str()) {
                        self.remember(&p, &back, Some(&written));
                    }
                    outcomes[g.idx] = Some(WriteOutcome::Applied {
                        native_id: seen.pid.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// A person created in Twenty has no `contactId` until the engine
    /// writes back the id it minted (or matched), so [`refresh`](Self::refresh)
    /// cannot find it by contact id: the engine names it by person id
    /// (`external_ids[store]`). Each such person that still has no
    /// `contactId` is read by person id and remembered under the write's
    /// contact id, with the hashes the engine knows it by: the person read
    /// with that id, and as read (without one; the engine's hash when it
    /// brought the person's phones to E.164). The write-back is then a
    /// conditional update like any other. A person someone edited since
    /// has another hash: `Changed`, as before.
    async fn recall_unlinked(
        &mut self,
        writes: &[Contact],
        guarded: &[Guarded],
    ) -> Result<(), StoreError> {
        let name = self.name_str().to_string();
        let mut wanted: Vec<(usize, String)> = Vec::new();
        for g in guarded {
            let c = &writes[g.idx];
            if self
                .seen
                .get(&c.contact_id)
                .is_some_and(|s| s.hashes.contains(&g.hash))
            {
                continue;
            }
            if let Some(pid) = c
                .external_ids
                .get(&name)
                .filter(|p| Uuid::parse_str(p).is_ok())
            {
                wanted.push((g.idx, pid.clone()));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let pids: Vec<String> = wanted.iter().map(|(_, p)| p.clone()).collect();
        let people = self.people_by_ids(&pids).await?;
        for (idx, pid) in wanted {
            let Some(p) = people.get(&pid) else {
                continue;
            };
            let Ok(mut c) = person_to_contact(p, &name) else {
                continue;
            };
            if !c.contact_id.is_empty() || c.is_deleted() {
                // Linked (to this or another contact) or deleted since: the
                // id-based lookup above has the final word.
                continue;
            }
            let as_read = contact_sync_core::content_hash(&c);
            c.contact_id = writes[idx].contact_id.clone();
            self.remember(p, &c, Some(&as_read));
        }
        Ok(())
    }

    /// Reads the people of these contacts (live and soft-deleted) into the
    /// store's memory; a contact Twenty does not have is forgotten.
    async fn refresh(&mut self, contact_ids: &[String]) -> Result<(), StoreError> {
        for chunk in contact_ids.chunks(IDS_PER_QUERY) {
            for cid in chunk {
                self.seen.remove(cid);
            }
            let list: Vec<String> = chunk
                .iter()
                .filter(|i| !i.contains('"'))
                .map(|i| format!("\"{i}\""))
                .collect();
            if list.is_empty() {
                continue;
            }
            let filter = format!("and(contactId[in]:[{}],{ALL_ROWS})", list.join(","));
            let (people, _) = self.list_all(&filter, None, usize::MAX).await?;
            for p in people {
                // Undecodable: not remembered, so the write is `Changed`
                // and the engine reads (and dead-letters) it.
                if let Ok(c) = person_to_contact(&p, self.name_str()) {
                    // A soft-deleted duplicate never hides the live person.
                    let live_known = self.seen.get(&c.contact_id).is_some_and(|s| {
                        s.hashes
                            .iter()
                            .all(|h| h != contact_sync_core::hash::tombstone_hash())
                    });
                    if c.is_deleted() && live_known {
                        continue;
                    }
                    self.seen.remove(&c.contact_id);
                    self.remember(&p, &c, None);
                }
            }
        }
        Ok(())
    }

    /// `PATCH /rest/people?filter=and(id[eq]:…,updatedAt[eq]:"…")`.
    async fn patch_if(
        &self,
        pid: &str,
        updated_at: &str,
        body: &Value,
    ) -> Result<PatchIf, StoreError> {
        // Never a PATCH of /rest/people without an id in its filter: it
        // would update every person (shared/twenty/README.md, DANGER).
        if Uuid::parse_str(pid).is_err() || updated_at.is_empty() || updated_at.contains('"') {
            return Err(StoreError::permanent(
                self.name_str(),
                format!("refusing a conditional update of person {pid:?} at {updated_at:?}"),
            ));
        }
        let filter = format!("and(id[eq]:{pid},updatedAt[eq]:\"{updated_at}\")");
        let path = format!("/rest/people?filter={}", enc(&filter));
        let r = self.client.send(Method::PATCH, &path, Some(body)).await?;
        if (400..500).contains(&r.status) {
            return Ok(PatchIf::Refused(r));
        }
        if !r.ok() {
            return Err(StoreError::transient(
                self.name_str(),
                format!("updating person {pid}: HTTP {}: {}", r.status, r.message()),
            ));
        }
        let list = r
            .body
            .pointer("/data/updatePeople")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match list.into_iter().find(|p| person_id(p) == pid) {
            None => Ok(PatchIf::Changed),
            Some(p) => {
                StatsInner::add(&self.client.stats.records_written, 1);
                Ok(PatchIf::Applied(p))
            }
        }
    }
}

enum PatchIf {
    Applied(Value),
    Changed,
    Refused(crate::client::Reply),
}
