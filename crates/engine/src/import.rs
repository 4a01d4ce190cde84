//! Import of address books (vCard, Google Contacts CSV) into canonical.
//!
//! [`Engine::import`] takes the records a file held (parsed by the
//! caller), in file order, and for each: normalizes it (phones to E.164
//! with the configured default region), finds the contact it is
//! (`urn:contact-sync:` UID, else primary email, else primary phone, as
//! capture's identity matching does; a record matching one earlier in the
//! same file joins it), lays the fields it carries over the contact's
//! current record (a field the file leaves empty is *missing*, never
//! cleared; emails, phones and tags are added to what is there), and
//! validates the result. Nothing is written until every record is
//! classified: new, updated (which fields), unchanged or refused (record,
//! field, reason). Without `dry_run` the new and updated contacts are
//! journaled with origin [`IMPORT_ORIGIN`] (`last_updated_by = "import"`)
//! one version above everything any store agreed with, and applied to
//! canonical; the other stores get them from the journal at the daemon's
//! next cycle, like any change.

use std::collections::HashMap;

use contact_sync_core::identity::mint_contact_id;
use contact_sync_core::{content_hash, diff, validate, Contact, JournalEntry, Op};
use serde::{Deserialize, Serialize};

use crate::{CycleReport, Engine, EngineError, CANONICAL};

/// The origin (and `last_updated_by`) of an import's journal entries.
pub const IMPORT_ORIGIN: &str = "import";

/// One record of the file: how to name it in the summary, and what it held.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRecord {
    /// e.g. `card 3 (Ada Lovelace)` or `row 7`.
    pub record: String,
    /// The record, or why it could not be read (refused as `record`).
    pub contact: Result<Contact, String>,
}

/// What happens to one record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportAction {
    New,
    Updated,
    Unchanged,
    Refused,
}

/// One line of the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportItem {
    pub record: String,
    pub action: ImportAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// Updated: the fields that change. Refused: the field at fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The summary of an import.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportReport {
    pub new: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub refused: usize,
    /// False for a dry run (or when there was nothing to write).
    pub written: bool,
    pub items: Vec<ImportItem>,
}

/// Lays what `from` carries over `into`: scalar fields `from` holds
/// replace (with `replace`; else they only fill what `into` lacks);
/// emails, phones and tags are added when not there yet.
pub(crate) fn overlay(into: &mut Contact, from: &Contact, replace: bool) {
    macro_rules! take {
        ($($f:ident),*) => {$(
            if from.$f.is_some() && (replace || into.$f.is_none()) {
                into.$f = from.$f.clone();
            }
        )*};
    }
    take!(
        display_name,
        first_name,
        middle_name,
        last_name,
        name_prefix,
        name_suffix,
        nickname,
        phonetic_name,
        organization,
        job_title,
        department,
        category_code,
        subcategory_code,
        relationship_label,
        notes,
        source
    );
    if !from.canonical_name.trim().is_empty() && (replace || into.canonical_name.trim().is_empty())
    {
        into.canonical_name = from.canonical_name.clone();
    }
    let has_primary = into.emails.iter().any(|e| e.is_primary);
    for e in &from.emails {
        if !into
            .emails
            .iter()
            .any(|x| x.address.eq_ignore_ascii_case(&e.address))
        {
            let mut e = e.clone();
            e.is_primary = e.is_primary && !has_primary;
            into.emails.push(e);
        }
    }
    let has_primary = into.phones.iter().any(|p| p.is_primary);
    for p in &from.phones {
        if !into.phones.iter().any(|x| x.number == p.number) {
            let mut p = p.clone();
            p.is_primary = p.is_primary && !has_primary;
            into.phones.push(p);
        }
    }
    for t in &from.tags {
        if !into.tags.contains(t) {
            into.tags.push(t.clone());
        }
    }
}

fn refused(record: &str, field: &str, reason: String) -> ImportItem {
    ImportItem {
        record: record.to_string(),
        action: ImportAction::Refused,
        contact_id: None,
        fields: vec![field.to_string()],
        reason: Some(reason),
    }
}

impl Engine {
    /// Imports address-book records into canonical (see the module docs).
    pub async fn import(
        &mut self,
        records: Vec<ImportRecord>,
        dry_run: bool,
    ) -> Result<ImportReport, EngineError> {
        let now = (self.clock)();
        let mut report = ImportReport::default();
        // Contacts this import touches, by id: (what canonical held, the result).
        let mut touched: HashMap<String, (Option<Contact>, Contact)> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut ordered: std::collections::HashSet<String> = std::collections::HashSet::new();
        // Identity keys of records met earlier in the file.
        let mut keys: HashMap<String, String> = HashMap::new();
        for rec in records {
            let mut c = match rec.contact {
                Ok(c) => c,
                Err(reason) => {
                    report.items.push(refused(&rec.record, "record", reason));
                    continue;
                }
            };
            c.normalize();
            if let Err(inv) =
                contact_sync_core::phone::normalize_phones(&mut c, self.opts.default_region)
            {
                report
                    .items
                    .push(refused(&rec.record, &inv.field, inv.reason));
                continue;
            }
            let email = c.primary_email().map(str::to_lowercase);
            let phone = c.primary_phone().map(str::to_string);
            let key_email = email.as_ref().map(|e| format!("email:{e}"));
            let key_phone = phone.as_ref().map(|p| format!("phone:{p}"));
            // Which contact is it?
            let mut id = (!c.contact_id.is_empty()).then(|| c.contact_id.clone());
            if id.is_none() {
                id = key_email
                    .iter()
                    .chain(key_phone.iter())
                    .find_map(|k| keys.get(k).cloned());
            }
            if id.is_none() && (email.is_some() || phone.is_some()) {
                let mut found = self
                    .canonical
                    .find_by_identity(
                        &email.iter().cloned().collect::<Vec<_>>(),
                        &phone.iter().cloned().collect::<Vec<_>>(),
                    )
                    .await
                    .map_err(EngineError::Canonical)?;
                found.retain(|f| !f.is_deleted());
                found.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
                let by_email = found.iter().find(|f| {
                    f.primary_email().map(str::to_lowercase).is_some()
                        && f.primary_email().map(str::to_lowercase) == email
                });
                id = by_email.or(found.first()).map(|f| f.contact_id.clone());
            }
            let id = id.unwrap_or_else(|| {
                let basis = key_email
                    .clone()
                    .or(key_phone.clone())
                    .unwrap_or_else(|| content_hash(&c));
                mint_contact_id(IMPORT_ORIGIN, &basis)
            });
            // What it is now: earlier in this file, else canonical's record.
            let (held, current) = match touched.get(&id) {
                Some((h, cur)) => (h.clone(), Some(cur.clone())),
                None => {
                    let h = self
                        .canonical
                        .read(std::slice::from_ref(&id))
                        .await
                        .map_err(EngineError::Canonical)?
                        .into_iter()
                        .next()
                        .map(|mut h| {
                            h.normalize();
                            h
                        })
                        .filter(|h| !h.is_deleted());
                    (h.clone(), h)
                }
            };
            if self.state.erasure(&id)?.is_some() {
                report.items.push(refused(
                    &rec.record,
                    "contact_id",
                    format!("contact {id} was erased (contact-sync forget); it is not brought back by an import"),
                ));
                continue;
            }
            let mut result = current.clone().unwrap_or_else(|| {
                let mut n = Contact::new(id.clone(), "");
                n.created_at = Some(now);
                n.source = Some(IMPORT_ORIGIN.to_string());
                n
            });
            overlay(&mut result, &c, true);
            result.contact_id = id.clone();
            result.normalize();
            if let Err(inv) = validate(&result) {
                report
                    .items
                    .push(refused(&rec.record, &inv.field, inv.reason));
                continue;
            }
            for k in key_email.iter().chain(key_phone.iter()) {
                keys.entry(k.clone()).or_insert_with(|| id.clone());
            }
            let changed: Vec<String> = diff(current.as_ref(), &result)
                .into_iter()
                .map(|f| f.field)
                .collect();
            let action = match (&held, changed.is_empty()) {
                (_, true) => ImportAction::Unchanged,
                (None, false) => ImportAction::New,
                (Some(_), false) => ImportAction::Updated,
            };
            if !changed.is_empty() {
                if ordered.insert(id.clone()) {
                    order.push(id.clone());
                }
                touched.insert(id.clone(), (held, result));
            } else if current.is_some() && !touched.contains_key(&id) {
                // Unchanged: later records of the file see it as it is.
                touched.insert(id.clone(), (held, result));
            }
            report.items.push(ImportItem {
                record: rec.record,
                action,
                contact_id: Some(id),
                fields: changed,
                reason: None,
            });
        }
        for i in &report.items {
            match i.action {
                ImportAction::New => report.new += 1,
                ImportAction::Updated => report.updated += 1,
                ImportAction::Unchanged => report.unchanged += 1,
                ImportAction::Refused => report.refused += 1,
            }
        }
        if dry_run || order.is_empty() {
            return Ok(report);
        }
        let writes: Vec<(Option<Contact>, Contact)> = order
            .iter()
            .map(|id| touched.remove(id).expect("touched"))
            .collect();
        self.journal_and_apply(writes, IMPORT_ORIGIN).await?;
        report.written = true;
        Ok(report)
    }

    /// Journals each `(held, new)` one version above everything journaled
    /// or any store agreed with, with `origin` as its origin and
    /// `last_updated_by`, and applies the entries to canonical. `held` is
    /// what canonical was just read holding: canonical is written on
    /// condition of it (as `forget` does), and `new` was built from it, so
    /// nothing in it is lost.
    pub(crate) async fn journal_and_apply(
        &mut self,
        writes: Vec<(Option<Contact>, Contact)>,
        origin: &str,
    ) -> Result<(), EngineError> {
        let now = (self.clock)();
        let mut entries = Vec::with_capacity(writes.len());
        let mut recs = Vec::new();
        for (held, mut c) in writes {
            let id = c.contact_id.clone();
            let id = &id;
            let last = self.state.journal_of(id, 1)?.into_iter().next();
            let mut top = last.as_ref().map_or(0, |e| e.version);
            top = top.max(held.as_ref().map_or(0, |h| h.version));
            for n in std::iter::once(CANONICAL).chain(self.stores.iter().map(|s| s.name())) {
                if let Some(r) = self.state.store_record(n, id)? {
                    top = top.max(r.synced_version);
                }
            }
            c.version = top + 1;
            c.last_updated = Some(now);
            c.last_updated_by = Some(origin.to_string());
            let hash = content_hash(&c);
            c.content_hash = Some(hash.clone());
            let before = last.as_ref().map(|e| e.after.clone()).or(held.clone());
            entries.push(JournalEntry {
                seq: 0,
                contact_id: id.clone(),
                version: c.version,
                prev_version: last.as_ref().map_or(0, |e| e.version),
                op: Op::of(&c),
                origin: origin.to_string(),
                changes: diff(before.as_ref(), &c),
                conflicts: vec![],
                hash,
                after: c,
                at: now,
            });
            if let Some(h) = &held {
                let prev = self.state.store_record(CANONICAL, id)?;
                recs.push(contact_sync_state::StoreRecord {
                    store: CANONICAL.to_string(),
                    contact_id: id.clone(),
                    native_id: prev.and_then(|p| p.native_id).or_else(|| Some(id.clone())),
                    synced_version: h.version,
                    hash: content_hash(h),
                    deleted: h.is_deleted(),
                    ..Default::default()
                });
            }
        }
        {
            let tx = self.state.tx()?;
            for e in &entries {
                tx.append_journal(e)?;
            }
            for r in &recs {
                tx.put_store_record(r)?;
            }
            tx.commit()?;
        }
        let mut cycle = CycleReport::default();
        self.apply_canonical(&mut cycle).await
    }
}
