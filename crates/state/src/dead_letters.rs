//! Dead letters as a person works them: each refusal once (with how often
//! and when it was last seen; see schema V3), and closed by `retry` or
//! `dismiss` — ordinary state transactions, so the CLI does it while the
//! daemon runs.
//!
//! **Retry** marks the dead letter `retried` and, for a store other than
//! canonical, marks the engine's record of the contact in that store as
//! owed a write (`store_records.needs_write`), keeping the hash of what the
//! engine last saw there. At the next cycle the engine writes canonical's
//! record to the store on condition of that hash: a record refused by the
//! store is tried again, and a record that differs there (the bad record
//! the dead letter is about, or its fix) fails the condition, so the engine
//! reads it and merges it like a captured change (validating it again: a
//! record still bad is a new open dead letter, a fixed one is merged). A
//! contact the engine has no record of in the store is noted with an
//! unknown hash, which makes the engine read before it writes. For
//! canonical there is no owed write: the record is read again when it
//! changes there (the BigQuery sweep, the SQLite triggers).

use crate::db::{p, Backend as Connection, Row};
use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::{DeadLetter, Timestamp};
use serde::Serialize;

use crate::{Result, StateDb, StateError, StateTx, StoreRecord};

/// Where a dead letter stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterStatus {
    Open,
    /// A person said to leave it; later repeats are counted on it.
    Dismissed,
    /// A person asked for the record to be tried again.
    Retried,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterStatus::Open => "open",
            DeadLetterStatus::Dismissed => "dismissed",
            DeadLetterStatus::Retried => "retried",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(DeadLetterStatus::Open),
            "dismissed" => Some(DeadLetterStatus::Dismissed),
            "retried" => Some(DeadLetterStatus::Retried),
            _ => None,
        }
    }
}

/// A dead letter with its history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetterRow {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Times the same refusal was seen (1 the first time).
    pub count: u64,
    /// When it was last seen.
    pub last_seen: Timestamp,
    pub status: DeadLetterStatus,
    /// When it was dismissed or retried.
    pub closed_at: Option<Timestamp>,
}

const COLUMNS: &str =
    "id, store, record, field, reason, payload, at, count, last_seen, status, closed_at";

fn row(r: &Row) -> Result<DeadLetterRow> {
    let id: i64 = r.get(0)?;
    let bad = |c: &str, v: &str| StateError::Invalid {
        what: format!("dead letter {id} ({c})"),
        message: format!("cannot read {v:?}"),
    };
    let at: String = r.get(6)?;
    let at = parse_ts(&at).ok_or_else(|| bad("at", &at))?;
    let payload: Option<String> = r.get(5)?;
    let payload = match payload {
        Some(p) => Some(serde_json::from_str(&p).map_err(|_| bad("payload", &p))?),
        None => None,
    };
    let last_seen: Option<String> = r.get(8)?;
    let status: String = r.get(9)?;
    let closed_at: Option<String> = r.get(10)?;
    let count: i64 = r.get(7)?;
    Ok(DeadLetterRow {
        letter: DeadLetter {
            id,
            store: r.get(1)?,
            record: r.get(2)?,
            field: r.get(3)?,
            reason: r.get(4)?,
            payload,
            at,
        },
        count: count.max(1) as u64,
        last_seen: last_seen.as_deref().and_then(parse_ts).unwrap_or(at),
        status: DeadLetterStatus::parse(&status).ok_or_else(|| bad("status", &status))?,
        closed_at: closed_at.as_deref().and_then(parse_ts),
    })
}

fn list(conn: &Connection, open_only: bool, limit: usize) -> Result<Vec<DeadLetterRow>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM dead_letters {} ORDER BY id DESC LIMIT ?1",
        if open_only {
            "WHERE status = 'open'"
        } else {
            ""
        }
    );
    conn.query(&sql, p![crate::read::sql_limit(limit)])?
        .iter()
        .map(row)
        .collect()
}

fn one(conn: &Connection, id: i64) -> Result<Option<DeadLetterRow>> {
    let sql = format!("SELECT {COLUMNS} FROM dead_letters WHERE id = ?1");
    conn.query_opt(&sql, p![id])?.as_ref().map(row).transpose()
}

impl StateDb {
    /// Dead letters, newest first: the open ones, or all with their status.
    pub fn dead_letter_rows(&self, open_only: bool, limit: usize) -> Result<Vec<DeadLetterRow>> {
        list(self.conn(), open_only, limit)
    }
    /// One dead letter by id.
    pub fn dead_letter(&self, id: i64) -> Result<Option<DeadLetterRow>> {
        one(self.conn(), id)
    }
    /// Dead letters nobody has dismissed or retried.
    pub fn open_dead_letter_count(&self) -> Result<u64> {
        let n: i64 = self.conn().query_value(
            "SELECT COUNT(*) FROM dead_letters WHERE status = 'open'",
            p![],
        )?;
        Ok(n.max(0) as u64)
    }
}

/// What [`StateDb::retry_or_dismiss_dead_letter`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum DeadLetterClosed {
    /// Closed now; `owed`: a retry left the record owed a write in its
    /// store (see the module docs).
    Closed { letter: DeadLetterRow, owed: bool },
    /// It was retried or dismissed already: nothing done.
    AlreadyClosed { letter: DeadLetterRow },
}

impl StateDb {
    /// Up to `limit` dead letters (any status) with `id < before`, newest
    /// first, with their status.
    pub fn dead_letter_rows_page(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<crate::Page<DeadLetterRow>> {
        let sql =
            format!("SELECT {COLUMNS} FROM dead_letters WHERE id < ?1 ORDER BY id DESC LIMIT ?2");
        let rows = self.conn().query(
            &sql,
            p![
                before.unwrap_or(i64::MAX),
                crate::read::sql_limit(limit.saturating_add(1))
            ],
        )?;
        let mut items = rows.iter().map(row).collect::<Result<Vec<_>>>()?;
        let next_before = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|d| d.letter.id)
        } else {
            None
        };
        Ok(crate::Page { items, next_before })
    }

    /// `dead-letters retry ID` / `dismiss ID` (the CLI and the console):
    /// closes an open dead letter in one transaction. An unknown id is
    /// [`StateError::NotFound`]; one closed already is answered as such.
    pub fn retry_or_dismiss_dead_letter(
        &mut self,
        id: i64,
        retry: bool,
        canonical: &str,
        at: Timestamp,
    ) -> Result<DeadLetterClosed> {
        let tx = self.tx()?;
        let Some(before) = one(tx.conn(), id)? else {
            return Err(StateError::NotFound {
                what: format!("dead letter {id}"),
            });
        };
        if before.status != DeadLetterStatus::Open {
            return Ok(DeadLetterClosed::AlreadyClosed { letter: before });
        }
        let (letter, owed) = if retry {
            tx.retry_dead_letter(id, at, canonical)?
        } else {
            (tx.dismiss_dead_letter(id, at)?, false)
        };
        tx.commit()?;
        Ok(DeadLetterClosed::Closed { letter, owed })
    }
}

impl StateTx<'_> {
    fn dead_letter_status(&self, id: i64) -> Result<Option<DeadLetterStatus>> {
        Ok(one(self.conn(), id)?.map(|d| d.status))
    }

    fn close_dead_letter(
        &self,
        id: i64,
        status: DeadLetterStatus,
        at: Timestamp,
    ) -> Result<DeadLetterRow> {
        let Some(dl) = one(self.conn(), id)? else {
            return Err(StateError::NotFound {
                what: format!("dead letter {id}"),
            });
        };
        // Only an open dead letter is closed; a closed one is answered as
        // it is (the caller tells the person).
        if dl.status != DeadLetterStatus::Open {
            return Ok(dl);
        }
        self.conn().execute(
            "UPDATE dead_letters SET status = ?2, closed_at = ?3 WHERE id = ?1",
            p![id, status.as_str(), format_ts(&at)],
        )?;
        Ok(DeadLetterRow {
            status,
            closed_at: Some(at),
            ..dl
        })
    }

    /// Dismisses a dead letter: it leaves the open list (and `status`);
    /// the same refusal later is counted on it without reopening it.
    pub fn dismiss_dead_letter(&self, id: i64, at: Timestamp) -> Result<DeadLetterRow> {
        self.close_dead_letter(id, DeadLetterStatus::Dismissed, at)
    }

    /// Retries a dead letter (see the module docs): closed as `retried`,
    /// and the contact owed a write in its store (not canonical). Returns
    /// the dead letter and whether a write is now owed. A dead letter that
    /// is not open is returned as it is, nothing owed.
    pub fn retry_dead_letter(
        &self,
        id: i64,
        at: Timestamp,
        canonical: &str,
    ) -> Result<(DeadLetterRow, bool)> {
        let was_open = self.dead_letter_status(id)? == Some(DeadLetterStatus::Open);
        let dl = self.close_dead_letter(id, DeadLetterStatus::Retried, at)?;
        let (store, record) = (&dl.letter.store, &dl.letter.record);
        if !was_open || store == canonical {
            return Ok((dl, false));
        }
        let rec = match self.store_record(store, record)? {
            Some(r) => Some(r),
            None => self.store_record_by_native(store, record)?,
        };
        let owed = match rec {
            Some(r) => StoreRecord {
                needs_write: true,
                ..r
            },
            None => StoreRecord {
                store: store.clone(),
                contact_id: record.clone(),
                native_id: None,
                synced_version: 0,
                // Unknown: the engine reads before it writes.
                hash: String::new(),
                deleted: false,
                needs_write: true,
                writeback: false,
                late: vec![],
            },
        };
        self.put_store_record(&owed)?;
        Ok((dl, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contact_sync_core::model::now;

    fn letter(record: &str, reason: &str) -> DeadLetter {
        DeadLetter {
            id: 0,
            store: "twenty".into(),
            record: record.into(),
            field: "emails".into(),
            reason: reason.into(),
            payload: None,
            at: now(),
        }
    }

    fn add(db: &mut StateDb, dl: &DeadLetter) {
        let tx = db.tx().unwrap();
        tx.add_dead_letter(dl).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn the_same_refusal_is_recorded_once_and_counted() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            for _ in 0..5 {
                add(&mut db, &letter("c1", "invalid email"));
            }
            add(&mut db, &letter("c1", "another reason"));
            add(&mut db, &letter("c2", "invalid email"));
            let rows = db.dead_letter_rows(true, 100).unwrap();
            assert_eq!(rows.len(), 3, "{rows:?}");
            let c1 = rows
                .iter()
                .find(|r| r.letter.record == "c1" && r.letter.reason == "invalid email")
                .unwrap();
            assert_eq!(c1.count, 5);
            assert!(c1.last_seen >= c1.letter.at);
            assert_eq!(db.open_dead_letter_count().unwrap(), 3);
        }
    }

    #[test]
    fn dismissed_stays_dismissed_retried_reopens_and_owes_a_write() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            add(&mut db, &letter("c1", "bad"));
            add(&mut db, &letter("c2", "bad"));
            let ids: Vec<i64> = db
                .dead_letter_rows(true, 10)
                .unwrap()
                .iter()
                .map(|r| r.letter.id)
                .collect();
            let (c2, c1) = (ids[0], ids[1]);
            let tx = db.tx().unwrap();
            tx.put_store_record(&StoreRecord {
                store: "twenty".into(),
                contact_id: "c1".into(),
                native_id: Some("p1".into()),
                synced_version: 3,
                hash: "h3".into(),
                deleted: false,
                needs_write: false,
                writeback: false,
                late: vec![],
            })
            .unwrap();
            let (dl, owed) = tx.retry_dead_letter(c1, now(), "canonical").unwrap();
            assert!(owed);
            assert_eq!(dl.status, DeadLetterStatus::Retried);
            tx.dismiss_dead_letter(c2, now()).unwrap();
            tx.commit().unwrap();
            let rec = db.store_record("twenty", "c1").unwrap().unwrap();
            assert!(rec.needs_write);
            assert_eq!(rec.hash, "h3", "the condition keeps what the engine saw");
            assert_eq!(db.open_dead_letter_count().unwrap(), 0);

            // Seen again: the retried one is a new open dead letter, the
            // dismissed one is counted and stays dismissed.
            add(&mut db, &letter("c1", "bad"));
            add(&mut db, &letter("c2", "bad"));
            let open = db.dead_letter_rows(true, 10).unwrap();
            assert_eq!(open.len(), 1);
            assert_eq!(open[0].letter.record, "c1");
            let d2 = db.dead_letter(c2).unwrap().unwrap();
            assert_eq!((d2.status, d2.count), (DeadLetterStatus::Dismissed, 2));
            assert!(matches!(
                db.tx().unwrap().dismiss_dead_letter(999, now()),
                Err(StateError::NotFound { .. })
            ));
        }
    }
}
