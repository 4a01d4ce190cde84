//! Schema of the store: the `contacts` table, the identity columns, the
//! change table and its triggers.
//!
//! Everything is created with `IF NOT EXISTS`, and a `contacts` table that
//! already exists is upgraded in place (missing canonical columns and the
//! identity columns are added), so a file created earlier, by an older
//! version or by hand, keeps working. The triggers are dropped and created
//! again on every open, inside the same transaction, so they always match
//! this version of the code.

use contact_sync_core::model::ALL_FIELDS;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

/// How a canonical field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Plain text.
    Text,
    /// JSON text (objects, arrays).
    Json,
    /// RFC 3339 text.
    Timestamp,
    /// `version`.
    Integer,
}

/// The storage kind of a canonical field.
pub(crate) fn kind(field: &str) -> Kind {
    match field {
        "external_ids"
        | "tags"
        | "llm_context"
        | "relationships"
        | "communication_stats"
        | "social_profiles"
        | "custom_attributes"
        | "emails"
        | "phones" => Kind::Json,
        "created_at" | "last_updated" | "deleted_at" => Kind::Timestamp,
        "version" => Kind::Integer,
        _ => Kind::Text,
    }
}

/// The column definition of a canonical field.
fn column_def(field: &str) -> String {
    match (field, kind(field)) {
        ("contact_id", _) => "contact_id TEXT UNIQUE".to_string(),
        (_, Kind::Integer) => format!("{field} INTEGER NOT NULL DEFAULT 1"),
        (_, _) => format!("{field} TEXT"),
    }
}

/// Column holding the primary email (lower-cased) for identity matching.
pub(crate) const PRIMARY_EMAIL: &str = "_primary_email";
/// Column holding the primary phone for identity matching.
pub(crate) const PRIMARY_PHONE: &str = "_primary_phone";
/// Index on [`PRIMARY_EMAIL`].
pub(crate) const PRIMARY_EMAIL_INDEX: &str = "contacts_primary_email";
/// Index on [`PRIMARY_PHONE`].
pub(crate) const PRIMARY_PHONE_INDEX: &str = "contacts_primary_phone";

/// `id, contact_id, external_ids, …, content_hash`: the columns every read
/// selects, in this order (index 0 = row id, index i = `ALL_FIELDS[i-1]`).
pub(crate) fn select_columns() -> String {
    let mut s = String::from("id");
    for f in ALL_FIELDS {
        s.push_str(", ");
        s.push_str(f);
    }
    s
}

/// The SQL expression, over a JSON array column reference `col` (e.g.
/// `NEW.emails`), that yields the primary entry's `key` (`address`, `number`)
/// the way [`contact_sync_core::Contact::primary_email`] picks it: the first
/// entry flagged `is_primary`, else the first entry. NULL when the column is
/// not a valid JSON array of objects: a broken edit must not make the user's
/// statement fail (the change capture reports it instead).
fn primary_expr(col: &str, key: &str, lower: bool) -> String {
    let value = if lower {
        format!("lower(trim(json_extract(value, '$.{key}')))")
    } else {
        format!("trim(json_extract(value, '$.{key}'))")
    };
    format!(
        "CASE WHEN json_valid({col}) THEN CASE WHEN json_type({col}) = 'array' THEN \
         (SELECT {value} FROM json_each({col}) WHERE type = 'object' \
          ORDER BY (json_extract(value, '$.is_primary') IS 1) DESC, key LIMIT 1) END END"
    )
}

/// Creates or upgrades the schema. Runs in one IMMEDIATE transaction.
pub(crate) fn ensure(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut create =
        String::from("CREATE TABLE IF NOT EXISTS contacts (\n  id INTEGER PRIMARY KEY");
    for f in ALL_FIELDS {
        create.push_str(",\n  ");
        create.push_str(&column_def(f));
    }
    create.push_str(&format!(
        ",\n  {PRIMARY_EMAIL} TEXT,\n  {PRIMARY_PHONE} TEXT\n)"
    ));
    tx.execute_batch(&create)?;

    // Upgrade a table created earlier: add what is missing.
    let existing = columns(&tx)?;
    let mut added_identity = false;
    for f in ALL_FIELDS {
        if !existing.iter().any(|c| c.eq_ignore_ascii_case(f)) {
            // ALTER TABLE cannot add a UNIQUE column; the unique index below
            // takes care of `contact_id`.
            let def = if *f == "contact_id" {
                "contact_id TEXT".to_string()
            } else {
                column_def(f)
            };
            tx.execute_batch(&format!("ALTER TABLE contacts ADD COLUMN {def}"))?;
        }
    }
    for c in [PRIMARY_EMAIL, PRIMARY_PHONE] {
        if !existing.iter().any(|e| e.eq_ignore_ascii_case(c)) {
            tx.execute_batch(&format!("ALTER TABLE contacts ADD COLUMN {c} TEXT"))?;
            added_identity = true;
        }
    }
    if !has_unique_contact_id(&tx)? {
        tx.execute_batch(
            "CREATE UNIQUE INDEX IF NOT EXISTS contacts_contact_id_unique ON contacts(contact_id)",
        )?;
    }
    create_identity_indexes(&tx)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS _contact_sync_control (
           id INTEGER PRIMARY KEY CHECK (id = 0),
           suppress INTEGER NOT NULL DEFAULT 0
         );
         INSERT OR IGNORE INTO _contact_sync_control (id, suppress) VALUES (0, 0);
         UPDATE _contact_sync_control SET suppress = 0;
         CREATE TABLE IF NOT EXISTS _contact_sync_changes (
           seq INTEGER PRIMARY KEY AUTOINCREMENT,
           row_id INTEGER NOT NULL,
           contact_id TEXT,
           op TEXT NOT NULL,
           image TEXT
         );",
    )?;
    if added_identity {
        // Rows written before the identity columns existed.
        tx.execute_batch(&format!(
            "UPDATE contacts SET {PRIMARY_EMAIL} = {}, {PRIMARY_PHONE} = {}",
            primary_expr("emails", "address", true),
            primary_expr("phones", "number", false)
        ))?;
    }
    create_triggers(&tx)?;
    tx.commit()
}

/// The indexes identity matching searches (created when missing: on every
/// open, and after a bulk load dropped them).
pub(crate) fn create_identity_indexes(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {PRIMARY_EMAIL_INDEX} ON contacts({PRIMARY_EMAIL});
         CREATE INDEX IF NOT EXISTS {PRIMARY_PHONE_INDEX} ON contacts({PRIMARY_PHONE});"
    ))
}

/// Drops the identity indexes for a bulk load: rows land in `contact_id`
/// order, but emails and phones in random order, so every batch would
/// dirty (and write to the WAL) pages all over both indexes. Building them
/// once afterwards sorts the keys in one pass.
pub(crate) fn drop_identity_indexes(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "DROP INDEX IF EXISTS {PRIMARY_EMAIL_INDEX};
         DROP INDEX IF EXISTS {PRIMARY_PHONE_INDEX};"
    ))
}

/// Column names of `contacts`.
fn columns(tx: &Transaction<'_>) -> rusqlite::Result<Vec<String>> {
    let mut stmt = tx.prepare("SELECT name FROM pragma_table_info('contacts')")?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(names)
}

/// Whether some UNIQUE index covers exactly `contact_id` (needed by
/// `ON CONFLICT(contact_id)`).
fn has_unique_contact_id(tx: &Transaction<'_>) -> rusqlite::Result<bool> {
    let found: Option<i64> = tx
        .query_row(
            "SELECT 1 FROM pragma_index_list('contacts') AS l
             WHERE l.\"unique\" = 1
               AND (SELECT count(*) FROM pragma_index_info(l.name)) = 1
               AND (SELECT name FROM pragma_index_info(l.name)) = 'contact_id'
             LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

/// Whether `id` is the table's INTEGER PRIMARY KEY (the row id alias) —
/// native ids are row ids.
pub(crate) fn id_is_rowid(conn: &Connection) -> rusqlite::Result<bool> {
    let found: Option<String> = conn
        .query_row(
            "SELECT type FROM pragma_table_info('contacts') WHERE name = 'id' AND pk = 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    let pk_cols: i64 = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('contacts') WHERE pk > 0",
        [],
        |r| r.get(0),
    )?;
    Ok(pk_cols == 1 && found.is_some_and(|t| t.eq_ignore_ascii_case("INTEGER")))
}

/// `json_object('id', R.id, 'contact_id', R.contact_id, …)`.
fn image(row: &str) -> String {
    let mut s = format!("json_object('id', {row}.id");
    for f in ALL_FIELDS {
        s.push_str(&format!(", '{f}', {row}.{f}"));
    }
    s.push(')');
    s
}

const SUPPRESSED_OFF: &str = "(SELECT suppress FROM _contact_sync_control WHERE id = 0) = 0";

fn create_triggers(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut watched = String::from("id");
    for f in ALL_FIELDS {
        watched.push_str(", ");
        watched.push_str(f);
    }
    let new_image = image("NEW");
    let ident = format!(
        "UPDATE contacts SET {PRIMARY_EMAIL} = {}, {PRIMARY_PHONE} = {} WHERE id = NEW.id;",
        primary_expr("NEW.emails", "address", true),
        primary_expr("NEW.phones", "number", false)
    );
    // `content_hash` is trusted as the hash of the row only while the row
    // is as the engine wrote it (the engine's writes run with capture
    // suppressed): any other write clears it, so hash scans decode that row.
    // The `IS NOT NULL` guard ends the nested update even with
    // `recursive_triggers` on.
    let forget_hash =
        "UPDATE contacts SET content_hash = NULL WHERE id = NEW.id AND content_hash IS NOT NULL;";
    // Rows of a file whose triggers did not forget hashes yet (an older
    // version, or a table contact-sync did not create) may hold a
    // `content_hash` that is not their content's: none is trusted.
    let trusted: Option<String> = tx
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' \
             AND name = '_contact_sync_capture_update'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if !trusted.is_some_and(|sql| sql.contains(forget_hash)) {
        tx.execute_batch(
            "DROP TRIGGER IF EXISTS _contact_sync_capture_update;
             UPDATE contacts SET content_hash = NULL WHERE content_hash IS NOT NULL;",
        )?;
    }
    tx.execute_batch(&format!(
        "DROP TRIGGER IF EXISTS _contact_sync_capture_insert;
         DROP TRIGGER IF EXISTS _contact_sync_capture_update;
         DROP TRIGGER IF EXISTS _contact_sync_capture_delete;
         DROP TRIGGER IF EXISTS _contact_sync_identity_insert;
         DROP TRIGGER IF EXISTS _contact_sync_identity_update;
         CREATE TRIGGER _contact_sync_capture_insert AFTER INSERT ON contacts
         WHEN {SUPPRESSED_OFF}
         BEGIN
           INSERT INTO _contact_sync_changes (row_id, contact_id, op, image)
           VALUES (NEW.id, NEW.contact_id, 'insert', {new_image});
           {forget_hash}
         END;
         CREATE TRIGGER _contact_sync_capture_update AFTER UPDATE OF {watched} ON contacts
         WHEN {SUPPRESSED_OFF}
         BEGIN
           INSERT INTO _contact_sync_changes (row_id, contact_id, op, image)
           VALUES (NEW.id, NEW.contact_id, 'update', {new_image});
           {forget_hash}
         END;
         CREATE TRIGGER _contact_sync_capture_delete AFTER DELETE ON contacts
         WHEN {SUPPRESSED_OFF}
         BEGIN
           INSERT INTO _contact_sync_changes (row_id, contact_id, op, image)
           VALUES (OLD.id, OLD.contact_id, 'delete', NULL);
         END;
         CREATE TRIGGER _contact_sync_identity_insert AFTER INSERT ON contacts
         WHEN {SUPPRESSED_OFF}
         BEGIN
           {ident}
         END;
         CREATE TRIGGER _contact_sync_identity_update AFTER UPDATE OF emails, phones ON contacts
         WHEN {SUPPRESSED_OFF}
         BEGIN
           {ident}
         END;"
    ))
}
