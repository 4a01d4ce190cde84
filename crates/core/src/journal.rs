//! Journal entries, conflicts and dead letters: the records the engine keeps
//! about what it did. Plain data; the state store persists them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Contact, Timestamp};
use crate::validate::Invalid;

/// What a journal entry did to the canonical contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Created or updated (including an undelete).
    Upsert,
    /// Turned into a tombstone.
    Delete,
}

impl Op {
    /// The op that leaves `c` as it is: a delete for a tombstone.
    pub fn of(c: &Contact) -> Op {
        if c.is_deleted() {
            Op::Delete
        } else {
            Op::Upsert
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
        }
    }
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "upsert" => Some(Op::Upsert),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

/// One field's change, old → new (JSON `null` when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Value,
    pub new: Value,
}

/// How a field changed on both sides was settled (DESIGN.md rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The incoming side had the higher version.
    IncomingByVersion,
    /// The canonical side had the higher version.
    CanonicalByVersion,
    /// Equal versions; the incoming side was updated later.
    IncomingByTime,
    /// Equal versions; the canonical side was updated later.
    CanonicalByTime,
    /// Equal versions and timestamps: canonical kept, a person must decide.
    Open,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::IncomingByVersion => "incoming_by_version",
            Resolution::CanonicalByVersion => "canonical_by_version",
            Resolution::IncomingByTime => "incoming_by_time",
            Resolution::CanonicalByTime => "canonical_by_time",
            Resolution::Open => "open",
        }
    }
    pub fn parse(s: &str) -> Option<Resolution> {
        Some(match s {
            "incoming_by_version" => Resolution::IncomingByVersion,
            "canonical_by_version" => Resolution::CanonicalByVersion,
            "incoming_by_time" => Resolution::IncomingByTime,
            "canonical_by_time" => Resolution::CanonicalByTime,
            "open" => Resolution::Open,
            _ => return None,
        })
    }
    /// True when the incoming value was taken.
    pub fn incoming_won(self) -> bool {
        matches!(
            self,
            Resolution::IncomingByVersion | Resolution::IncomingByTime
        )
    }
}

/// A field changed differently on both sides since the last sync.
/// `field` is `"deleted_at"` for a delete racing an edit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldConflict {
    pub field: String,
    pub base: Value,
    pub canonical: Value,
    pub incoming: Value,
    pub canonical_version: i64,
    pub incoming_version: i64,
    pub resolution: Resolution,
}

/// One entry of the change journal: the audit trail and the feed every
/// store's writer consumes. It carries the full new record so that a writer
/// needs nothing else (the seam for moving the journal to a log service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Position in the journal (assigned by the state store; 0 before).
    pub seq: i64,
    pub contact_id: String,
    /// The canonical version this entry produced.
    pub version: i64,
    /// The version before (0 for a new contact).
    pub prev_version: i64,
    pub op: Op,
    /// Store the change came from (`last_updated_by` of the new version).
    pub origin: String,
    pub changes: Vec<FieldChange>,
    /// Fields changed on both sides, with how each was settled (losers too).
    pub conflicts: Vec<FieldConflict>,
    /// The canonical record after this entry.
    pub after: Contact,
    /// Content hash of `after`.
    pub hash: String,
    pub at: Timestamp,
}

impl JournalEntry {
    /// An entry that records `c` as it already is (no change, no
    /// conflict): what a store must hold to agree with canonical, used by
    /// backfill and drift repair.
    pub fn snapshot(c: Contact, origin: &str, at: Timestamp) -> JournalEntry {
        let hash = crate::hash::content_hash(&c);
        JournalEntry::snapshot_with_hash(c, hash, origin, at)
    }

    /// [`snapshot`](JournalEntry::snapshot) of a contact whose content hash
    /// is already known (`hash` must be `content_hash(&c)`).
    pub fn snapshot_with_hash(
        c: Contact,
        hash: String,
        origin: &str,
        at: Timestamp,
    ) -> JournalEntry {
        JournalEntry {
            seq: 0,
            contact_id: c.contact_id.clone(),
            version: c.version,
            prev_version: c.version,
            op: Op::of(&c),
            origin: origin.to_string(),
            changes: vec![],
            conflicts: vec![],
            hash,
            after: c,
            at,
        }
    }

    /// The record as it was before this entry, when `changes` says enough to
    /// rebuild it (always, for entries the engine wrote).
    pub fn before(&self) -> Option<Contact> {
        if self.prev_version == 0 {
            return None;
        }
        let mut old = serde_json::Map::new();
        for ch in &self.changes {
            old.insert(ch.field.clone(), ch.old.clone());
        }
        let mut c = self.after.clone();
        c.set_fields(&old).ok()?;
        c.version = self.prev_version;
        if self.op == Op::Delete {
            c.deleted_at = None;
        }
        Some(c)
    }
}

/// A record refused by validation or by a store, kept for a person to see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    /// Store the record came from or was going to.
    pub store: String,
    /// The record's contact id, or the store's own id when it has none.
    pub record: String,
    pub field: String,
    pub reason: String,
    /// The record as received, when there was one.
    pub payload: Option<Value>,
    pub at: Timestamp,
}

impl DeadLetter {
    /// The dead letter of a record from `store` that could not be decoded
    /// or failed validation, with the full reason (`id` is set when it is
    /// stored).
    pub fn refused(store: &str, invalid: Invalid, payload: Option<Value>, at: Timestamp) -> Self {
        DeadLetter {
            id: 0,
            store: store.to_string(),
            record: invalid.record,
            field: invalid.field,
            reason: invalid.reason,
            payload,
            at,
        }
    }
}
