//! The contact search index (schema V7): every canonical contact's names,
//! email addresses and phone numbers, for the console's search.
//!
//! - `search_docs`: one row per contact id (the FTS rowid `doc`), with the
//!   version it was indexed at, whether it is deleted, its display name and
//!   the indexed text. A deleted or erased contact keeps a row with its id
//!   and version only (no personal data), so an older image read later
//!   cannot bring it back.
//! - `search_fts`: an FTS5 index over `search_docs` (external content,
//!   `unicode61` tokens without diacritics, `secure-delete` so a removed
//!   contact's tokens are gone from the index pages, not only marked), kept
//!   in step by triggers.
//! - On Postgres instead: `search_docs.words`, the tokens of names and
//!   email addresses as [`tokens`] makes them (folded here: no extension
//!   needed), and `phones`, each under a GIN `to_tsvector('simple', …)`
//!   index; the same candidates, checked by the same code, so the same
//!   results.
//!
//! Fed in the same state transaction as the canonical change: every
//! journal entry ([`StateTx::append_journal`] calls [`StateTx::index_contacts`]),
//! every page of an initial sync, and once for a state database that
//! predates the index (the engine's fill from canonical, resumable through
//! the meta key [`SEARCH_FILL_META`]). A write never replaces a newer
//! version with an older one.

use crate::db::{p, Value};
use contact_sync_core::Contact;
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use crate::console::{ContactHit, Page};
use crate::{Result, StateDb, StateTx};

/// Meta key of the index's fill from canonical: absent or `done` when
/// nothing is left to do, `after\t<contact id>` after the last contact
/// indexed, `''` from the start (written by the V7 migration).
pub const SEARCH_FILL_META: &str = "search_fill";

/// The value of [`SEARCH_FILL_META`] once the index holds every contact.
pub const SEARCH_FILL_DONE: &str = "done";

/// What the index holds of one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchDoc {
    pub contact_id: String,
    pub version: i64,
    pub deleted: bool,
    /// `canonical_name` (shown in results).
    name: String,
    /// Every name field, space-separated (indexed).
    names: String,
    /// Email addresses, space-separated (indexed, shown).
    emails: String,
    /// Phone numbers as digits only (indexed).
    phones: String,
}

fn push_unique(out: &mut String, seen: &mut Vec<String>, s: &str) {
    let s = s.trim();
    if s.is_empty() || seen.iter().any(|x| x.eq_ignore_ascii_case(s)) {
        return;
    }
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(s);
    seen.push(s.to_string());
}

impl SearchDoc {
    /// The index's view of a contact: nothing but id and version when it is
    /// deleted.
    pub fn of(c: &Contact) -> SearchDoc {
        let deleted = c.is_deleted();
        let mut doc = SearchDoc {
            contact_id: c.contact_id.clone(),
            version: c.version,
            deleted,
            name: String::new(),
            names: String::new(),
            emails: String::new(),
            phones: String::new(),
        };
        if deleted {
            return doc;
        }
        doc.name = c.canonical_name.trim().to_string();
        let mut seen = Vec::new();
        for n in [
            Some(&c.canonical_name),
            c.display_name.as_ref(),
            c.first_name.as_ref(),
            c.middle_name.as_ref(),
            c.last_name.as_ref(),
            c.nickname.as_ref(),
            c.phonetic_name.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            push_unique(&mut doc.names, &mut seen, n);
        }
        let mut seen = Vec::new();
        for e in &c.emails {
            push_unique(&mut doc.emails, &mut seen, &e.address.to_lowercase());
        }
        let mut seen = Vec::new();
        for p in &c.phones {
            let digits: String = p.number.chars().filter(|ch| ch.is_ascii_digit()).collect();
            push_unique(&mut doc.phones, &mut seen, &digits);
        }
        doc
    }
}

const UPSERT: &str =
    "INSERT INTO search_docs (contact_id, version, deleted, name, names, emails, phones)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (contact_id) DO UPDATE SET version = excluded.version,
         deleted = excluded.deleted, name = excluded.name, names = excluded.names,
         emails = excluded.emails, phones = excluded.phones
     WHERE excluded.version > search_docs.version
        OR (excluded.version = search_docs.version
            AND (excluded.deleted, excluded.name, excluded.names, excluded.emails, excluded.phones)
                IS NOT (search_docs.deleted, search_docs.name, search_docs.names,
                        search_docs.emails, search_docs.phones))";

fn upsert_params(d: &SearchDoc) -> Vec<Value> {
    p![
        d.contact_id,
        d.version,
        d.deleted,
        d.name,
        d.names,
        d.emails,
        d.phones
    ]
}

impl StateTx<'_> {
    /// Puts contacts into the search index (a deleted one leaves it),
    /// unless the index holds a newer version. Unchanged contacts cost one
    /// look-up each.
    pub fn index_contacts<'c>(
        &self,
        contacts: impl IntoIterator<Item = &'c Contact>,
    ) -> Result<()> {
        if self.conn().is_pg() {
            return self.index_contacts_pg(contacts.into_iter().map(SearchDoc::of).collect());
        }
        let rows: Vec<Vec<Value>> = contacts
            .into_iter()
            .map(|c| upsert_params(&SearchDoc::of(c)))
            .collect();
        self.conn().execute_many(UPSERT, rows)?;
        Ok(())
    }

    /// [`StateTx::index_contacts`] on Postgres: one statement per chunk
    /// over `UNNEST` of arrays. One statement cannot upsert a contact twice:
    /// of several docs of one contact, the last of the newest version is
    /// kept, which is what upserting them one after another leaves.
    fn index_contacts_pg(&self, docs: Vec<SearchDoc>) -> Result<()> {
        let mut best: std::collections::HashMap<&str, usize> = Default::default();
        for (i, d) in docs.iter().enumerate() {
            match best.get(d.contact_id.as_str()) {
                Some(&j) if docs[j].version > d.version => {}
                _ => {
                    best.insert(d.contact_id.as_str(), i);
                }
            }
        }
        let kept: Vec<&SearchDoc> = docs
            .iter()
            .enumerate()
            .filter(|(i, d)| best[d.contact_id.as_str()] == *i)
            .map(|(_, d)| d)
            .collect();
        for chunk in kept.chunks(crate::PG_BULK) {
            let text = |f: &dyn Fn(&SearchDoc) -> String| {
                Value::TextArray(chunk.iter().map(|d| Some(f(d))).collect())
            };
            let int = |f: &dyn Fn(&SearchDoc) -> i64| {
                Value::IntArray(chunk.iter().map(|d| f(d)).collect())
            };
            self.conn().execute(
                "INSERT INTO search_docs (contact_id, version, deleted, name, names, emails, phones, words)
                 SELECT * FROM UNNEST(?1::text[], ?2::int8[], ?3::int8[], ?4::text[], ?5::text[],
                                      ?6::text[], ?7::text[], ?8::text[])
                 ON CONFLICT (contact_id) DO UPDATE SET version = excluded.version,
                     deleted = excluded.deleted, name = excluded.name, names = excluded.names,
                     emails = excluded.emails, phones = excluded.phones, words = excluded.words
                 WHERE excluded.version > search_docs.version
                    OR (excluded.version = search_docs.version
                        AND (excluded.deleted, excluded.name, excluded.names, excluded.emails,
                             excluded.phones)
                            IS DISTINCT FROM (search_docs.deleted, search_docs.name,
                                search_docs.names, search_docs.emails, search_docs.phones))",
                vec![
                    text(&|d| d.contact_id.clone()),
                    int(&|d| d.version),
                    int(&|d| i64::from(d.deleted)),
                    text(&|d| d.name.clone()),
                    text(&|d| d.names.clone()),
                    text(&|d| d.emails.clone()),
                    text(&|d| d.phones.clone()),
                    text(&|d| {
                        let mut words = tokens(&d.names);
                        words.extend(tokens(&d.emails));
                        words.join(" ")
                    }),
                ],
            )?;
        }
        Ok(())
    }

    /// Removes a contact's personal data from the index whatever its
    /// version (an erasure).
    pub(crate) fn unindex_contact(&self, contact_id: &str) -> Result<()> {
        let sql = if self.conn().is_pg() {
            "UPDATE search_docs SET deleted = 1, name = '', names = '', emails = '', phones = '',
                 words = '' WHERE contact_id = ?1"
        } else {
            "UPDATE search_docs SET deleted = 1, name = '', names = '', emails = '', phones = ''
             WHERE contact_id = ?1"
        };
        self.conn().execute(sql, p![contact_id])?;
        Ok(())
    }
}

/// Most candidates one search call looks at before it answers with what
/// it found so far (and `next_before` to go on from there).
const SCAN_CAP: usize = 20_000;

/// Lower-cased, diacritics removed (as `unicode61 remove_diacritics 2`
/// does), split on anything not alphanumeric: the index's tokens.
pub(crate) fn tokens(s: &str) -> Vec<String> {
    let folded: String = s
        .nfd()
        .filter(|ch| !is_combining_mark(*ch))
        .flat_map(char::to_lowercase)
        .collect();
    folded
        .split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// What a person typed, made into a search: each word's tokens must be in
/// a contact's names or emails, the last token of each word as a prefix
/// (`ada@exa` finds ada@example.com); a query that is a phone number (digits
/// with `+`, spaces, dashes, dots, brackets) also matches phone numbers
/// starting with its digits.
///
/// FTS5 expands a prefix over every term that starts with it before it
/// looks at any other word (1.2 s for `pers*` among 1M contacts), unless
/// the index keeps that prefix as a term of its own (`prefix = '1 2 3'`).
/// So the index is asked for a driver it answers lazily: the words'
/// complete tokens (all but each word's last) as exact terms and each
/// word's last token cut to 3 characters as a kept prefix, all required;
/// the candidates are checked here.
struct Plan {
    /// The FTS5 MATCH expression.
    driver: String,
    /// Per word: its tokens, the last one a prefix.
    words: Vec<Vec<String>>,
    /// The digits of a phone-number query (3 or more).
    digits: Option<String>,
}

fn quoted(t: &str) -> String {
    format!("\"{}\"", t.replace('"', "\"\""))
}

impl Plan {
    fn new(q: &str) -> Option<Plan> {
        let words: Vec<Vec<String>> = q
            .split_whitespace()
            .map(tokens)
            .filter(|t| !t.is_empty())
            .collect();
        if words.is_empty() {
            return None;
        }
        // Every complete token as an exact term, and each word's last token
        // cut to its first 3 characters as a prefix the index keeps.
        let terms: Vec<String> = words
            .iter()
            .flat_map(|w| {
                let (last, rest) = w.split_last().expect("words are not empty");
                let cut: String = last.chars().take(3).collect();
                rest.iter()
                    .map(|t| quoted(t))
                    .chain(std::iter::once(format!("{} *", quoted(&cut))))
            })
            .collect();
        let text = format!("{{names emails}} : ({})", terms.join(" AND "));
        let phone_like = q
            .chars()
            .all(|ch| ch.is_ascii_digit() || " +-.()".contains(ch));
        let digits: String = q.chars().filter(char::is_ascii_digit).collect();
        let digits = (phone_like && digits.len() >= 3).then_some(digits);
        let driver = match &digits {
            Some(d) => format!("{text} OR phones : {} *", quoted(&d[..3])),
            None => text,
        };
        Some(Plan {
            driver,
            words,
            digits,
        })
    }

    /// The Postgres driver: a `tsquery` over the words (every complete
    /// token exact, each word's last token as a prefix: Postgres looks a
    /// prefix up in the GIN index without expanding it first), and one
    /// over the phones for a phone-number query.
    fn tsqueries(&self) -> (String, Option<String>) {
        let words: Vec<String> = self
            .words
            .iter()
            .flat_map(|w| {
                let (last, rest) = w.split_last().expect("words are not empty");
                rest.iter()
                    .map(|t| format!("'{t}'"))
                    .chain(std::iter::once(format!("'{last}':*")))
            })
            .collect();
        (
            words.join(" & "),
            self.digits.as_ref().map(|d| format!("'{d}':*")),
        )
    }

    /// Whether every word is in `text`'s tokens (the last token of a word as
    /// a prefix).
    fn words_in(&self, text: &[String]) -> bool {
        self.words.iter().all(|w| {
            let (last, rest) = w.split_last().expect("words are not empty");
            rest.iter().all(|t| text.contains(t))
                && text.iter().any(|t| t.starts_with(last.as_str()))
        })
    }

    /// What of the contact matched (`name`, `email`, `phone`), if anything.
    fn matches(&self, names: &str, emails: &str, phones: &str) -> Option<&'static str> {
        let names = tokens(names);
        if self.words_in(&names) {
            return Some("name");
        }
        if let Some(d) = &self.digits {
            if phones.split(' ').any(|p| p.starts_with(d.as_str())) {
                return Some("phone");
            }
        }
        let mut all = names;
        all.extend(tokens(emails));
        if self.words_in(&all) {
            return Some("email");
        }
        None
    }
}

/// A row the index offered, to be checked against the plan.
struct Candidate {
    doc: i64,
    contact_id: String,
    version: i64,
    name: String,
    names: String,
    emails: String,
    phones: String,
}

/// Checks candidates (newest first, from `next`) until a page is full or
/// [`SCAN_CAP`] were looked at.
fn collect(
    plan: &Plan,
    limit: usize,
    mut next: impl FnMut() -> Result<Option<Candidate>>,
) -> Result<Page<ContactHit>> {
    let mut items = Vec::new();
    let mut last = None;
    let mut scanned = 0;
    while let Some(c) = next()? {
        if items.len() == limit || scanned == SCAN_CAP {
            // More may follow: the next page starts after the last one
            // looked at.
            return Ok(Page {
                items,
                next_before: last,
            });
        }
        scanned += 1;
        last = Some(c.doc);
        let Some(matched) = plan.matches(&c.names, &c.emails, &c.phones) else {
            continue;
        };
        items.push(ContactHit {
            contact_id: c.contact_id,
            version: c.version,
            name: c.name,
            emails: c
                .emails
                .split(' ')
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
            deleted: false,
            matched: matched.to_string(),
        });
    }
    Ok(Page {
        items,
        next_before: None,
    })
}

impl StateDb {
    /// Contacts whose names, email addresses (by words, each word a prefix:
    /// `love` finds Lovelace, `ada@exa` finds ada@example.com) or phone
    /// numbers (by leading digits) match `q`, newest indexed first, `limit`
    /// per page; `before` is the previous page's `next_before`.
    pub fn search_index(
        &self,
        q: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<ContactHit>> {
        let Some(plan) = Plan::new(q) else {
            return Ok(Page {
                items: Vec::new(),
                next_before: None,
            });
        };
        let conn = match self.conn() {
            crate::db::Backend::Sqlite(c) => c,
            crate::db::Backend::Pg(_) => return self.search_index_pg(&plan, before, limit),
        };
        let mut st = conn.prepare_cached(
            "SELECT d.doc, d.contact_id, d.version, d.name, d.names, d.emails, d.phones
             FROM search_fts JOIN search_docs d ON d.doc = search_fts.rowid
             WHERE search_fts MATCH ?1 AND search_fts.rowid < ?2
             ORDER BY search_fts.rowid DESC",
        )?;
        let mut rows = st.query(rusqlite::params![plan.driver, before.unwrap_or(i64::MAX)])?;
        collect(&plan, limit, || {
            let Some(r) = rows.next()? else {
                return Ok(None);
            };
            Ok(Some(Candidate {
                doc: r.get(0)?,
                contact_id: r.get(1)?,
                version: r.get(2)?,
                name: r.get(3)?,
                names: r.get(4)?,
                emails: r.get(5)?,
                phones: r.get(6)?,
            }))
        })
    }

    /// [`StateDb::search_index`] on Postgres: candidates from the GIN
    /// indexes, newest first, fetched in pages as the scan goes.
    fn search_index_pg(
        &self,
        plan: &Plan,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Page<ContactHit>> {
        let (words, phones) = plan.tsqueries();
        let sql = if phones.is_some() {
            "SELECT doc, contact_id, version, name, names, emails, phones FROM search_docs
             WHERE deleted = 0 AND doc < ?2
               AND (to_tsvector('simple', words) @@ to_tsquery('simple', ?1)
                    OR to_tsvector('simple', phones) @@ to_tsquery('simple', ?4))
             ORDER BY doc DESC LIMIT ?3"
        } else {
            "SELECT doc, contact_id, version, name, names, emails, phones FROM search_docs
             WHERE deleted = 0 AND doc < ?2
               AND to_tsvector('simple', words) @@ to_tsquery('simple', ?1)
             ORDER BY doc DESC LIMIT ?3"
        };
        let batch = (limit + 1).clamp(64, SCAN_CAP) as i64;
        let mut buf: std::collections::VecDeque<Candidate> = Default::default();
        let mut cursor = before.unwrap_or(i64::MAX);
        let mut exhausted = false;
        collect(plan, limit, || {
            if buf.is_empty() && !exhausted {
                let mut params = p![words, cursor, batch];
                if let Some(ph) = &phones {
                    params.push(Value::Text(ph.clone()));
                }
                let rows = self.conn().query(sql, params)?;
                exhausted = (rows.len() as i64) < batch;
                for r in rows {
                    let c = Candidate {
                        doc: r.get(0)?,
                        contact_id: r.get(1)?,
                        version: r.get(2)?,
                        name: r.get(3)?,
                        names: r.get(4)?,
                        emails: r.get(5)?,
                        phones: r.get(6)?,
                    };
                    cursor = c.doc;
                    buf.push_back(c);
                }
            }
            Ok(buf.pop_front())
        })
    }

    /// The indexed contact with id `contact_id` (live ones only).
    pub(crate) fn indexed(&self, contact_id: &str) -> Result<Option<ContactHit>> {
        self.conn()
            .query_opt(
                "SELECT version, name, emails FROM search_docs WHERE contact_id = ?1 AND deleted = 0",
                p![contact_id],
            )?
            .map(|r| {
                let emails: String = r.get(2)?;
                Ok(ContactHit {
                    contact_id: contact_id.to_string(),
                    version: r.get(0)?,
                    name: r.get(1)?,
                    emails: emails
                        .split(' ')
                        .filter(|e| !e.is_empty())
                        .map(String::from)
                        .collect(),
                    deleted: false,
                    matched: "id".into(),
                })
            })
            .transpose()
    }

    /// Contacts in the search index (live ones), and whether its fill from
    /// canonical is still to finish.
    pub fn search_index_status(&self) -> Result<(u64, bool)> {
        let n: i64 = self
            .conn()
            .query_value("SELECT COUNT(*) FROM search_docs WHERE deleted = 0", p![])?;
        let pending = crate::read::meta(self.conn(), SEARCH_FILL_META)?
            .is_some_and(|v| v != SEARCH_FILL_DONE);
        Ok((n as u64, pending))
    }
}

#[cfg(test)]
mod tests {
    use contact_sync_core::model::{now, Email, Phone};

    use super::*;

    fn person(i: usize, name: &str) -> Contact {
        let mut c = Contact::new(format!("c{i}"), name);
        c.version = 1;
        c.emails = vec![Email {
            address: format!("Person{i}@Example.com"),
            label: None,
            is_primary: true,
        }];
        c.phones = vec![Phone {
            number: format!("+4420794600{i:02}"),
            label: None,
            is_primary: true,
        }];
        c
    }

    fn ids(db: &StateDb, q: &str) -> Vec<String> {
        let mut out: Vec<String> = db
            .search_index(q, None, 100)
            .unwrap()
            .items
            .into_iter()
            .map(|h| h.contact_id)
            .collect();
        out.sort();
        out
    }

    #[test]
    fn indexed_contacts_are_found_by_name_email_and_phone_and_leave_when_deleted() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let tx = db.tx().unwrap();
            let people = [
                person(1, "Ada Lovelace"),
                person(2, "Zoë Ångström"),
                person(3, "Grace Hopper"),
            ];
            tx.index_contacts(&people).unwrap();
            tx.commit().unwrap();
            assert_eq!(ids(&db, "lovel"), ["c1"]);
            assert_eq!(ids(&db, "ADA love"), ["c1"]);
            assert_eq!(ids(&db, "zoe angs"), ["c2"], "diacritics are folded");
            assert_eq!(ids(&db, "person3@example.com"), ["c3"]);
            assert_eq!(ids(&db, "person3@exa"), ["c3"]);
            assert_eq!(ids(&db, "example.com"), ["c1", "c2", "c3"]);
            assert_eq!(ids(&db, "+44 20 7946 0002"), ["c2"]);
            assert_eq!(
                db.search_index("+442079460003", None, 5).unwrap().items[0].matched,
                "phone"
            );
            assert!(ids(&db, "hopper lovelace").is_empty());
            // An older image never replaces a newer one; a newer one does.
            let mut old = person(1, "Ada Byron");
            old.version = 0;
            let mut newer = person(1, "Ada King");
            newer.version = 2;
            let tx = db.tx().unwrap();
            tx.index_contacts([&old]).unwrap();
            tx.commit().unwrap();
            assert_eq!(ids(&db, "lovelace"), ["c1"]);
            let tx = db.tx().unwrap();
            tx.index_contacts([&newer]).unwrap();
            tx.commit().unwrap();
            assert!(ids(&db, "lovelace").is_empty());
            assert_eq!(ids(&db, "king"), ["c1"]);
            // A tombstone leaves the index; the older live image cannot return.
            let mut gone = person(3, "Grace Hopper");
            gone.version = 2;
            gone.deleted_at = Some(now());
            let tx = db.tx().unwrap();
            tx.index_contacts([&gone]).unwrap();
            tx.index_contacts([&person(3, "Grace Hopper")]).unwrap();
            tx.commit().unwrap();
            assert!(ids(&db, "hopper").is_empty());
            assert_eq!(db.search_index_status().unwrap().0, 2);
        }
    }

    #[test]
    fn an_erasure_leaves_nothing_of_the_contact_in_the_index() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let tx = db.tx().unwrap();
            tx.index_contacts(&[person(1, "Ada Lovelace"), person(2, "Ada Byron")])
                .unwrap();
            tx.commit().unwrap();
            let tx = db.tx().unwrap();
            tx.scrub_contact("c1", now()).unwrap();
            tx.commit().unwrap();
            assert_eq!(ids(&db, "ada"), ["c2"]);
            assert!(ids(&db, "lovelace").is_empty());
            assert!(ids(&db, "person1").is_empty());
            let row = db
                .conn()
                .query_opt(
                    "SELECT name, names, emails, phones FROM search_docs WHERE contact_id = 'c1'",
                    p![],
                )
                .unwrap()
                .unwrap();
            for i in 0..4 {
                assert_eq!(row.get::<String>(i).unwrap(), "");
            }
            if db.is_postgres() {
                // Nothing of c1 left to index either.
                let words: String = db
                    .conn()
                    .query_value(
                        "SELECT words FROM search_docs WHERE contact_id = 'c1'",
                        p![],
                    )
                    .unwrap();
                assert_eq!(words, "");
                continue;
            }
            // The FTS vocabulary holds no token only c1 had.
            db.conn()
                .sqlite()
                .execute_batch("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, search_fts, row)")
                .unwrap();
            let n: i64 = db
                .conn()
                .sqlite()
                .query_row(
                    "SELECT COUNT(*) FROM temp.v WHERE term IN ('lovelace', 'person1')",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 0);
        }
    }

    #[test]
    fn journal_entries_feed_the_index() {
        for mut db in crate::testing::both() {
            eprintln!("on {}", db.location());
            let tx = db.tx().unwrap();
            tx.append_journal(&contact_sync_core::JournalEntry::snapshot(
                person(7, "Katherine Johnson"),
                "local",
                now(),
            ))
            .unwrap();
            tx.commit().unwrap();
            assert_eq!(ids(&db, "kath"), ["c7"]);
            // A fresh database has its fill from canonical still to do.
            assert_eq!(db.search_index_status().unwrap(), (1, true));
        }
    }

    #[test]
    fn the_index_is_driven_by_complete_words_or_a_short_prefix() {
        let p = Plan::new("Ada love").unwrap();
        assert_eq!(p.driver, "{names emails} : (\"ada\" * AND \"lov\" *)");
        assert_eq!(p.words, vec![vec!["ada"], vec!["love"]]);
        let p = Plan::new("person12@EXAMPLE.co").unwrap();
        assert_eq!(
            p.driver,
            "{names emails} : (\"person12\" AND \"example\" AND \"co\" *)"
        );
        // Quotes and FTS syntax are nothing but separators.
        let p = Plan::new("a\"b OR*").unwrap();
        assert_eq!(
            p.driver,
            "{names emails} : (\"a\" AND \"b\" * AND \"or\" *)"
        );
        assert!(Plan::new(" @ - ").is_none());
        let p = Plan::new("+44 20 79").unwrap();
        assert_eq!(
            p.driver,
            "{names emails} : (\"44\" * AND \"20\" * AND \"79\" *) OR phones : \"442\" *"
        );
        assert_eq!(p.digits.as_deref(), Some("442079"));
        assert_eq!(tokens("Zoë Ångström-Smith"), ["zoe", "angstrom", "smith"]);
    }
}
