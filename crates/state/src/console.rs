//! Reads for the operator console: keyset-paged lists (newest first, by
//! id, so page N costs what page 1 costs) and contact search.

use contact_sync_core::{Contact, DeadLetter, JournalEntry};
use serde::Serialize;

use crate::db::{p, Backend as Connection};

use crate::read::{
    conflict_row, dead_letter_row, journal_row, sql_limit, CONFLICT_COLS, JOURNAL_COLS,
};
use crate::{ConflictRow, Result, StateDb, StoreRecord};

/// One page of a list, newest first. `next_before` is the id to pass as
/// `before` for the next (older) page; `None` on the last page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_before: Option<i64>,
}

/// A contact found by [`StateDb::search_contacts`], as of its newest
/// journal entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactHit {
    pub contact_id: String,
    pub name: String,
    pub emails: Vec<String>,
    pub version: i64,
    pub deleted: bool,
    /// What matched: `id`, `native_id:<store>`, `name` or `email`.
    pub matched: String,
}

fn page<T>(mut items: Vec<T>, limit: usize, id: impl Fn(&T) -> i64) -> Page<T> {
    let next_before = if items.len() > limit {
        items.truncate(limit);
        items.last().map(id)
    } else {
        None
    };
    Page { items, next_before }
}

fn before_id(before: Option<i64>) -> i64 {
    before.unwrap_or(i64::MAX)
}

fn hit(entry: &JournalEntry, matched: String) -> ContactHit {
    let c: &Contact = &entry.after;
    ContactHit {
        contact_id: entry.contact_id.clone(),
        name: c.canonical_name.clone(),
        emails: c.emails.iter().map(|e| e.address.clone()).collect(),
        version: entry.version,
        deleted: c.deleted_at.is_some(),
        matched,
    }
}

/// Ordered by the (contact_id, version) index: `ORDER BY seq` alone lets
/// SQLite walk the whole journal backwards (370 ms at 100k entries).
fn latest(conn: &Connection, contact_id: &str) -> Result<Option<JournalEntry>> {
    conn.query_opt(
        &format!(
            "SELECT {JOURNAL_COLS} FROM journal WHERE contact_id = ?1 \
             ORDER BY version DESC, seq DESC LIMIT 1"
        ),
        p![contact_id],
    )?
    .as_ref()
    .map(journal_row)
    .transpose()
}

/// The contact whose native id in `store` is `native_id`, by the
/// (store, native_id) index. (`StateDb::store_record_by_native` orders by
/// `deleted, contact_id`, which SQLite may serve by walking the primary key
/// over every record of the store: 170 ms at 1M records.)
fn by_native(conn: &Connection, store: &str, native_id: &str) -> Result<Option<StoreRecord>> {
    let id: Option<String> = conn
        .query_opt(
            "SELECT contact_id FROM store_records INDEXED BY store_records_native \
             WHERE store = ?1 AND native_id = ?2 LIMIT 1",
            p![store, native_id],
        )?
        .map(|r| r.get(0))
        .transpose()?;
    match id {
        Some(id) => crate::read::store_record(conn, store, &id),
        None => Ok(None),
    }
}

impl StateDb {
    /// Up to `limit` conflicts with `id < before` (all when `before` is
    /// `None`), newest first; open ones only when `open_only`.
    pub fn conflicts_page(
        &self,
        open_only: bool,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<ConflictRow>> {
        let sql = if open_only {
            format!(
                "SELECT {CONFLICT_COLS} FROM conflicts WHERE status = 'open' AND id < ?1 \
                 ORDER BY id DESC LIMIT ?2"
            )
        } else {
            format!("SELECT {CONFLICT_COLS} FROM conflicts WHERE id < ?1 ORDER BY id DESC LIMIT ?2")
        };
        let out = self
            .conn()
            .query(&sql, p![before_id(before), sql_limit(limit + 1)])?
            .iter()
            .map(conflict_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(out, limit, |c| c.id))
    }

    /// Up to `limit` dead letters with `id < before`, newest first.
    pub fn dead_letters_page(&self, before: Option<i64>, limit: usize) -> Result<Page<DeadLetter>> {
        let out = self
            .conn()
            .query(
                "SELECT id, store, record, field, reason, payload, at FROM dead_letters \
                 WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                p![before_id(before), sql_limit(limit + 1)],
            )?
            .iter()
            .map(dead_letter_row)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(out, limit, |d| d.id))
    }

    /// The open conflicts of one contact, oldest first (the console's
    /// per-field choice).
    pub fn open_conflicts_of(&self, contact_id: &str) -> Result<Vec<ConflictRow>> {
        self.conn()
            .query(
                &format!(
                    "SELECT {CONFLICT_COLS} FROM conflicts INDEXED BY conflicts_contact \
                     WHERE contact_id = ?1 AND status = 'open' ORDER BY id"
                ),
                p![contact_id],
            )?
            .iter()
            .map(conflict_row)
            .collect()
    }

    /// The sync record of `contact_id` in every known store.
    pub fn store_records_of(&self, contact_id: &str) -> Result<Vec<StoreRecord>> {
        let mut out = Vec::new();
        for store in self.known_stores()? {
            if let Some(r) = self.store_record(&store, contact_id)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The newest journal entry of a contact (its canonical record as the
    /// engine last wrote or read it).
    pub fn latest_journal_entry(&self, contact_id: &str) -> Result<Option<JournalEntry>> {
        latest(self.conn(), contact_id)
    }

    /// Contacts whose id or a store's native id is `q` (first page only);
    /// when there is none, contacts whose names, email addresses or phone
    /// numbers match `q` in the search index ([`StateDb::search_index`]:
    /// words as prefixes, newest indexed first), `limit` per page, `before`
    /// being the previous page's `next_before`.
    pub fn search_contacts(
        &self,
        q: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<ContactHit>> {
        let q = q.trim();
        if q.is_empty() || limit == 0 {
            return Ok(page(Vec::new(), limit, |_| 0));
        }
        if before.is_none() {
            let mut out: Vec<ContactHit> = Vec::new();
            // The journal's newest entry first (it also knows deleted
            // contacts), then the index (contacts never journaled).
            if let Some(e) = latest(self.conn(), q)? {
                out.push(hit(&e, "id".into()));
            } else if let Some(h) = self.indexed(q)? {
                out.push(h);
            }
            for store in self.known_stores()? {
                if let Some(r) = by_native(self.conn(), &store, q)? {
                    if out.iter().any(|h| h.contact_id == r.contact_id) {
                        continue;
                    }
                    let matched = format!("native_id:{store}");
                    if let Some(e) = latest(self.conn(), &r.contact_id)? {
                        out.push(hit(&e, matched));
                    } else if let Some(mut h) = self.indexed(&r.contact_id)? {
                        h.matched = matched;
                        out.push(h);
                    }
                }
            }
            // An exact id is what was meant.
            if !out.is_empty() {
                return Ok(Page {
                    items: out,
                    next_before: None,
                });
            }
        }
        self.search_index(q, before, limit)
    }
}

#[cfg(test)]
mod tests {
    use contact_sync_core::model::{now, Email};
    use contact_sync_core::{Contact, DeadLetter};

    use super::*;

    fn db_with(mut db: StateDb, n: usize) -> StateDb {
        let tx = db.tx().unwrap();
        for i in 0..n {
            tx.add_dead_letter(&DeadLetter {
                id: 0,
                store: "local".into(),
                record: format!("r{i}"),
                field: "emails".into(),
                reason: "bad".into(),
                payload: None,
                at: now(),
            })
            .unwrap();
            let mut c = Contact::new(format!("c{i}"), format!("Ada {i}% Lovelace"));
            c.emails = vec![Email {
                address: format!("ada{i}@example.com"),
                label: None,
                is_primary: true,
            }];
            tx.append_journal(&JournalEntry::snapshot(c, "local", now()))
                .unwrap();
        }
        tx.put_store_record(&StoreRecord {
            store: "local".into(),
            contact_id: "c3".into(),
            native_id: Some("row-77".into()),
            synced_version: 1,
            hash: "h".into(),
            ..StoreRecord::default()
        })
        .unwrap();
        tx.commit().unwrap();
        db
    }

    #[test]
    fn pages_walk_every_row_once_newest_first() {
        for db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let db = db_with(db, 7);
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let p = db.dead_letters_page(before, 3).unwrap();
                seen.extend(p.items.iter().map(|d| d.id));
                match p.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);
        }
    }

    #[test]
    fn a_contacts_open_conflicts_and_dead_letters_closed_once() {
        use contact_sync_core::{FieldConflict, Resolution};
        for db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let mut db = db_with(db, 3);
            let f = |field: &str, resolution: Resolution| FieldConflict {
                field: field.into(),
                base: serde_json::json!(null),
                canonical: serde_json::json!("a"),
                incoming: serde_json::json!("b"),
                canonical_version: 1,
                incoming_version: 1,
                resolution,
            };
            let tx = db.tx().unwrap();
            let org = tx
                .add_conflict("c1", "local", &f("organization", Resolution::Open), now())
                .unwrap();
            let dept = tx
                .add_conflict("c1", "local", &f("department", Resolution::Open), now())
                .unwrap();
            tx.add_conflict("c2", "local", &f("department", Resolution::Open), now())
                .unwrap();
            tx.commit().unwrap();
            let open = db.open_conflicts_of("c1").unwrap();
            assert_eq!(
                open.iter().map(|c| c.id).collect::<Vec<_>>(),
                vec![org, dept]
            );
            let tx = db.tx().unwrap();
            tx.resolve_conflict(org, "kept_canonical", now()).unwrap();
            tx.commit().unwrap();
            assert_eq!(db.open_conflicts_of("c1").unwrap().len(), 1);

            // Dead letters: closed once, the second time answered as closed.
            use crate::{DeadLetterClosed, DeadLetterStatus, StateError};
            let page = db.dead_letter_rows_page(None, 2).unwrap();
            assert_eq!(page.items.len(), 2);
            assert_eq!(page.next_before, Some(2));
            let id = page.items[0].letter.id;
            match db
                .retry_or_dismiss_dead_letter(id, false, "canonical", now())
                .unwrap()
            {
                DeadLetterClosed::Closed { letter, owed } => {
                    assert_eq!(letter.status, DeadLetterStatus::Dismissed);
                    assert!(!owed);
                }
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                db.retry_or_dismiss_dead_letter(id, true, "canonical", now())
                    .unwrap(),
                DeadLetterClosed::AlreadyClosed { .. }
            ));
            assert!(matches!(
                db.retry_or_dismiss_dead_letter(999, true, "canonical", now()),
                Err(StateError::NotFound { .. })
            ));
            let row = db.dead_letter_rows_page(None, 1).unwrap().items.remove(0);
            assert_eq!(row.status, DeadLetterStatus::Dismissed);
        }
    }

    #[test]
    fn search_by_id_native_id_name_and_email() {
        for db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let db = db_with(db, 5);
            let hit = |q: &str| db.search_contacts(q, None, 10).unwrap().items;
            assert_eq!(hit("c2")[0].matched, "id");
            assert_eq!(hit("row-77")[0].contact_id, "c3");
            assert_eq!(hit("row-77")[0].matched, "native_id:local");
            let by_email = hit("ADA4@example");
            assert_eq!(by_email.len(), 1);
            assert_eq!(by_email[0].matched, "email");
            // Words are prefixes of a name's words, in any order.
            let by_name = hit("love 1");
            assert_eq!(by_name.len(), 1);
            assert_eq!(by_name[0].contact_id, "c1");
            assert_eq!(by_name[0].matched, "name");
            assert!(hit("_").is_empty());
            assert!(hit("  ").is_empty());
            assert!(hit("\"").is_empty());
            // Pages: newest indexed first, every contact once.
            let mut seen = Vec::new();
            let mut before = None;
            loop {
                let p = db.search_contacts("lovelace", before, 2).unwrap();
                seen.extend(p.items.into_iter().map(|h| h.contact_id));
                match p.next_before {
                    Some(b) => before = Some(b),
                    None => break,
                }
            }
            assert_eq!(seen, vec!["c4", "c3", "c2", "c1", "c0"]);
        }
    }
}
