//! Moving a SQLite state database into Postgres (`contact-sync state
//! migrate-to-postgres`): every table copied row for row (ids and journal
//! seqs kept), in one Postgres transaction, then verified before it
//! commits.
//!
//! - The SQLite file is opened read-only, inside one read transaction (one
//!   snapshot), and never written; its instance lock (`<file>.lock`) is
//!   taken for the whole copy, so no daemon or command can start on it
//!   meanwhile, and a live holder refuses the copy.
//! - The Postgres database is migrated to this build's schema if it is new,
//!   its instance lock is taken, and it must hold no state: every table
//!   empty (the leases too), meta holding nothing but what the migration
//!   and the lock write. Otherwise nothing is copied.
//! - Rows go over as `text[]` arrays, one `INSERT … SELECT FROM UNNEST`
//!   per chunk (every value bound; integers and reals cast back by the
//!   server, so no value changes on the way). The search index gets its
//!   Postgres column `words` from the same tokenizer the engine uses.
//! - Identity columns (journal seq, conflict, dead-letter and request ids,
//!   search doc) continue after the largest id SQLite ever gave
//!   (`sqlite_sequence`, so seqs of entries removed by `compact` are not
//!   reused), or the largest copied.
//! - Before the commit: the row count of every table is read back and
//!   compared, and the journal is read back and checksummed (SHA-256 over
//!   every column of every entry, in seq order) against the checksum of
//!   what was read from SQLite. A difference rolls everything back.
//! - The leases are not copied (they belong to running daemons); neither
//!   is SQLite's own FTS5 index (Postgres has `words`) nor the migration
//!   history (Postgres has its own).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use crate::db::{p, Backend, Value};
use crate::pg::HOLDER_META;
use crate::{StateDb, StateError, SCHEMA_VERSION};

/// What a column holds (how it is read from SQLite and cast in Postgres).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Real,
    Text,
}

use Kind::{Int, Real, Text};

/// One table of the state database as copied.
struct Table {
    name: &'static str,
    /// Columns common to both backends, the key first (rows are read in
    /// key order and named by it in errors).
    cols: &'static [(&'static str, Kind)],
    /// Columns of the key (a prefix of `cols`).
    key: usize,
    /// The identity column, whose sequence must go on after the copy.
    identity: Option<&'static str>,
}

/// Every table copied, in order. Leases are left out on purpose.
const TABLES: &[Table] = &[
    Table {
        name: "meta",
        cols: &[("key", Text), ("value", Text)],
        key: 1,
        identity: None,
    },
    Table {
        name: "checkpoints",
        cols: &[("store", Text), ("checkpoint", Text), ("updated_at", Text)],
        key: 1,
        identity: None,
    },
    Table {
        name: "cursors",
        cols: &[("consumer", Text), ("seq", Int), ("updated_at", Text)],
        key: 1,
        identity: None,
    },
    Table {
        name: "store_records",
        cols: &[
            ("store", Text),
            ("contact_id", Text),
            ("native_id", Text),
            ("synced_version", Int),
            ("hash", Text),
            ("deleted", Int),
            ("needs_write", Int),
            ("late", Text),
        ],
        key: 2,
        identity: None,
    },
    Table {
        name: "journal",
        cols: &[
            ("seq", Int),
            ("contact_id", Text),
            ("version", Int),
            ("prev_version", Int),
            ("op", Text),
            ("origin", Text),
            ("changes", Text),
            ("conflicts", Text),
            ("after", Text),
            ("hash", Text),
            ("at", Text),
        ],
        key: 1,
        identity: Some("seq"),
    },
    Table {
        name: "conflicts",
        cols: &[
            ("id", Int),
            ("contact_id", Text),
            ("store", Text),
            ("field", Text),
            ("base", Text),
            ("canonical", Text),
            ("incoming", Text),
            ("canonical_version", Int),
            ("incoming_version", Int),
            ("resolution", Text),
            ("status", Text),
            ("created_at", Text),
            ("resolved_at", Text),
        ],
        key: 1,
        identity: Some("id"),
    },
    Table {
        name: "dead_letters",
        cols: &[
            ("id", Int),
            ("store", Text),
            ("record", Text),
            ("field", Text),
            ("reason", Text),
            ("payload", Text),
            ("at", Text),
            ("count", Int),
            ("last_seen", Text),
            ("status", Text),
            ("closed_at", Text),
        ],
        key: 1,
        identity: Some("id"),
    },
    Table {
        name: "store_stats",
        cols: &[
            ("store", Text),
            ("runs", Int),
            ("captured", Int),
            ("applied", Int),
            ("written", Int),
            ("skipped_echo", Int),
            ("dead_letters", Int),
            ("conflicts", Int),
            ("last_success", Text),
            ("last_error", Text),
            ("last_error_at", Text),
            ("consecutive_errors", Int),
            ("updated_at", Text),
        ],
        key: 1,
        identity: None,
    },
    Table {
        name: "paused_stores",
        cols: &[
            ("store", Text),
            ("kind", Text),
            ("reason", Text),
            ("details", Text),
            ("since", Text),
            ("decision", Text),
            ("decided_at", Text),
            ("config_hash", Text),
        ],
        key: 1,
        identity: None,
    },
    Table {
        name: "operator_requests",
        cols: &[
            ("id", Int),
            ("kind", Text),
            ("args", Text),
            ("status", Text),
            ("result", Text),
            ("error", Text),
            ("created_at", Text),
            ("started_at", Text),
            ("finished_at", Text),
        ],
        key: 1,
        identity: Some("id"),
    },
    Table {
        name: "run_history",
        cols: &[
            ("bucket", Int),
            ("store", Text),
            ("runs", Int),
            ("captured", Int),
            ("applied", Int),
            ("written", Int),
            ("errors", Int),
            ("max_lag_secs", Real),
        ],
        key: 2,
        identity: None,
    },
    Table {
        name: "search_docs",
        cols: &[
            ("doc", Int),
            ("contact_id", Text),
            ("version", Int),
            ("deleted", Int),
            ("name", Text),
            ("names", Text),
            ("emails", Text),
            ("phones", Text),
        ],
        key: 1,
        identity: Some("doc"),
    },
    Table {
        name: "erasures",
        cols: &[
            ("contact_id", Text),
            ("erased_at", Text),
            ("version", Int),
            ("confirmed", Text),
        ],
        key: 1,
        identity: None,
    },
];

/// Tables checked for emptiness besides [`TABLES`].
const ALSO_EMPTY: &[&str] = &["leases"];

/// Rows per `INSERT` at most, and text bytes per `INSERT` at most.
const CHUNK_ROWS: usize = 5_000;
const CHUNK_BYTES: usize = 16 << 20;

/// Why a copy was refused or failed. Nothing was committed in any case.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("there is no SQLite state database at {}", path.display())]
    NoSource { path: PathBuf },
    #[error("the SQLite state database {} is in use by another contact-sync (pid {pid}, since {since}); stop the daemon or command using it first: the copy must see its last write", path.display())]
    SourceLocked {
        path: PathBuf,
        pid: String,
        since: String,
    },
    #[error("the SQLite state database {} is at schema version {found}; this build copies version {SCHEMA_VERSION}{hint}", path.display())]
    SourceVersion {
        path: PathBuf,
        found: i64,
        hint: &'static str,
    },
    #[error("the Postgres state database {target} is in use by another contact-sync (pid {pid}, since {since}); nothing was copied")]
    TargetLocked {
        target: String,
        pid: String,
        since: String,
    },
    #[error("the Postgres state database {target} is not empty ({rows}); the copy goes into a new, empty state database only: nothing was copied")]
    TargetNotEmpty { target: String, rows: String },
    #[error("table {table}, row {key}, column {column}: {message}; nothing was copied")]
    Row {
        table: &'static str,
        key: String,
        column: &'static str,
        message: String,
    },
    #[error("verification failed: {0}; the copy was rolled back, nothing was committed")]
    Verify(String),
    #[error("reading the SQLite state database {}: {source}", path.display())]
    Source {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// What was copied (and verified).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MigrationReport {
    pub source: PathBuf,
    /// The Postgres database, without its password.
    pub target: String,
    /// Rows copied per table, in copy order; each count read back equal.
    pub tables: Vec<TableRows>,
    /// The largest journal seq copied (0 when the journal was empty).
    pub journal_max_seq: i64,
    /// The seq the next journal entry gets.
    pub journal_next_seq: i64,
    /// SHA-256 of the journal (hex), the same read from SQLite and read
    /// back from Postgres.
    pub journal_sha256: String,
    /// Seconds the whole move took (the checks and the verification
    /// included).
    pub seconds: f64,
}

/// Rows copied into one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

/// One value as carried over: text, or NULL.
type Cell = Option<String>;

/// The journal's checksum, fed row by row.
#[derive(Default)]
struct Checksum(Sha256);

impl Checksum {
    fn row(&mut self, cells: &[Cell]) {
        for c in cells {
            match c {
                None => self.0.update([0u8]),
                Some(s) => {
                    self.0.update([1u8]);
                    self.0.update((s.len() as u64).to_le_bytes());
                    self.0.update(s.as_bytes());
                }
            }
        }
    }
    fn hex(self) -> String {
        self.0
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn quoted(name: &str) -> String {
    format!("\"{name}\"")
}

fn col_list(t: &Table) -> String {
    t.cols
        .iter()
        .map(|(c, _)| quoted(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_search(t: &Table) -> bool {
    t.name == "search_docs"
}

/// The `INSERT … SELECT … FROM UNNEST(text[] …)` of a table (the search
/// index with its `words` column last).
fn insert_sql(t: &Table) -> String {
    let mut names: Vec<String> = t.cols.iter().map(|(c, _)| quoted(c)).collect();
    let mut select: Vec<String> = t
        .cols
        .iter()
        .map(|(c, k)| match k {
            Int => format!("u.{}::int8", quoted(c)),
            Real => format!("u.{}::float8", quoted(c)),
            Text => format!("u.{}", quoted(c)),
        })
        .collect();
    if is_search(t) {
        names.push(quoted("words"));
        select.push(format!("u.{}", quoted("words")));
    }
    let arrays: Vec<String> = (1..=names.len()).map(|i| format!("?{i}::text[]")).collect();
    format!(
        "INSERT INTO {table} ({cols}) SELECT {select} FROM UNNEST({arrays}) AS u({cols})",
        table = t.name,
        cols = names.join(", "),
        select = select.join(", "),
        arrays = arrays.join(", "),
    )
}

/// A Postgres value read back, as the text it was carried as.
fn cell_of(v: &Value) -> Cell {
    match v {
        Value::Null => None,
        Value::Int(n) => Some(n.to_string()),
        Value::Real(x) => Some(real_text(*x)),
        Value::Text(s) => Some(s.clone()),
        Value::TextArray(_) | Value::IntArray(_) => Some(String::new()),
    }
}

/// A real as text Postgres reads back to the same `float8`.
fn real_text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // Rust prints the shortest text that reads back to the same f64.
        format!("{x:?}")
    }
}

/// One SQLite value as carried: checked against the column's kind.
fn cell(v: ValueRef<'_>, kind: Kind) -> std::result::Result<Cell, String> {
    let text = |bytes: &[u8]| -> std::result::Result<String, String> {
        let s = std::str::from_utf8(bytes).map_err(|e| format!("text is not UTF-8 ({e})"))?;
        if s.contains('\0') {
            return Err("text holds a NUL character, which Postgres cannot store".into());
        }
        Ok(s.to_string())
    };
    Ok(match (v, kind) {
        (ValueRef::Null, _) => None,
        (ValueRef::Integer(n), _) => Some(n.to_string()),
        (ValueRef::Real(x), Int) => return Err(format!("expected an integer, found the real {x}")),
        (ValueRef::Real(x), _) => Some(real_text(x)),
        (ValueRef::Text(t), Text) => Some(text(t)?),
        (ValueRef::Text(t), Int) => {
            let s = text(t)?;
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("expected an integer, found the text {s:?}"))?;
            Some(s.trim().to_string())
        }
        (ValueRef::Text(t), Real) => {
            let s = text(t)?;
            let x = s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("expected a real, found the text {s:?}"))?;
            Some(real_text(x))
        }
        (ValueRef::Blob(_), _) => return Err("found a blob, which no state column holds".into()),
    })
}

/// A row's key, for messages ("seq 17", "store local, contact_id c1").
fn key_text(t: &Table, cells: &[Cell]) -> String {
    t.cols[..t.key]
        .iter()
        .zip(cells)
        .map(|((c, _), v)| format!("{c} {}", v.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The words the Postgres search index keeps for a doc (see `search.rs`).
fn words(names: &str, emails: &str) -> String {
    let mut w = crate::search::tokens(names);
    w.extend(crate::search::tokens(emails));
    w.join(" ")
}

/// Columns gathered for the next `INSERT`.
struct Chunk {
    cols: Vec<Vec<Cell>>,
    rows: usize,
    bytes: usize,
}

impl Chunk {
    fn new(n: usize) -> Chunk {
        Chunk {
            cols: vec![Vec::new(); n],
            rows: 0,
            bytes: 0,
        }
    }
    fn push(&mut self, cells: Vec<Cell>) {
        for (col, c) in self.cols.iter_mut().zip(cells) {
            self.bytes += c.as_ref().map_or(0, String::len);
            col.push(c);
        }
        self.rows += 1;
    }
    fn full(&self) -> bool {
        self.rows >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES
    }
    fn flush(&mut self, dst: &Backend, sql: &str) -> Result<u64, MigrateError> {
        if self.rows == 0 {
            return Ok(0);
        }
        let n = self.cols.len();
        let params = std::mem::replace(&mut self.cols, vec![Vec::new(); n])
            .into_iter()
            .map(Value::TextArray)
            .collect();
        self.rows = 0;
        self.bytes = 0;
        Ok(dst.execute(sql, params)?)
    }
}

/// What one table's copy saw.
struct Copied {
    rows: u64,
    /// The largest value of the identity column (0 when none).
    max_id: i64,
}

/// Copies one table from the snapshot of `src` into `dst`'s transaction.
fn copy_table(
    src: &Connection,
    path: &Path,
    dst: &Backend,
    t: &Table,
    mut sum: Option<&mut Checksum>,
) -> Result<Copied, MigrateError> {
    let src_err = |source| MigrateError::Source {
        path: path.to_path_buf(),
        source,
    };
    let keys: Vec<String> = t.cols[..t.key].iter().map(|(c, _)| quoted(c)).collect();
    let select = format!(
        "SELECT {} FROM {} ORDER BY {}",
        col_list(t),
        t.name,
        keys.join(", ")
    );
    let insert = insert_sql(t);
    let id_col = t
        .identity
        .map(|id| t.cols.iter().position(|(c, _)| *c == id).expect("identity"));
    let mut stmt = src.prepare(&select).map_err(src_err)?;
    let mut rows = stmt.query([]).map_err(src_err)?;
    let width = t.cols.len() + usize::from(is_search(t));
    let mut chunk = Chunk::new(width);
    let mut copied = Copied { rows: 0, max_id: 0 };
    let mut inserted = 0u64;
    while let Some(r) = rows.next().map_err(src_err)? {
        let mut cells: Vec<Cell> = Vec::with_capacity(width);
        for (i, (name, kind)) in t.cols.iter().enumerate() {
            let v = r.get_ref(i).map_err(src_err)?;
            match cell(v, *kind) {
                Ok(c) => cells.push(c),
                Err(message) => {
                    // The key columns come first, so they are read already
                    // (or this is one of them).
                    let key = if i >= t.key {
                        key_text(t, &cells)
                    } else {
                        "(its key)".to_string()
                    };
                    return Err(MigrateError::Row {
                        table: t.name,
                        key,
                        column: name,
                        message,
                    });
                }
            }
        }
        if t.name == "meta" && cells[0].as_deref() == Some(HOLDER_META) {
            continue;
        }
        if let Some(i) = id_col {
            let id = cells[i].as_deref().and_then(|s| s.parse::<i64>().ok());
            copied.max_id = copied.max_id.max(id.unwrap_or(0));
        }
        if let Some(sum) = sum.as_deref_mut() {
            sum.row(&cells);
        }
        if is_search(t) {
            let w = words(
                cells[5].as_deref().unwrap_or(""),
                cells[6].as_deref().unwrap_or(""),
            );
            cells.push(Some(w));
        }
        chunk.push(cells);
        copied.rows += 1;
        if chunk.full() {
            inserted += chunk.flush(dst, &insert)?;
        }
    }
    inserted += chunk.flush(dst, &insert)?;
    if inserted != copied.rows {
        return Err(MigrateError::Verify(format!(
            "table {}: {} rows read from SQLite, {inserted} inserted",
            t.name, copied.rows
        )));
    }
    Ok(copied)
}

/// The largest id SQLite ever gave a table's `AUTOINCREMENT` column.
fn sqlite_sequence(src: &Connection, table: &str) -> rusqlite::Result<i64> {
    let exists: bool = src.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let mut st = src.prepare("SELECT seq FROM sqlite_sequence WHERE name = ?1")?;
    let mut rows = st.query([table])?;
    Ok(match rows.next()? {
        Some(r) => r.get::<_, Option<i64>>(0)?.unwrap_or(0),
        None => 0,
    })
}

/// Rows of every table that must be empty, as "table: n rows" for those
/// that are not.
fn not_empty(dst: &Backend) -> Result<Vec<String>, MigrateError> {
    let mut out = Vec::new();
    for name in TABLES
        .iter()
        .map(|t| t.name)
        .filter(|n| *n != "meta")
        .chain(ALSO_EMPTY.iter().copied())
    {
        let n: i64 = dst.query_value(&format!("SELECT count(*) FROM {name}"), vec![])?;
        if n > 0 {
            out.push(format!("{name}: {n} rows"));
        }
    }
    // The migration writes `search_fill` = '' and the lock its holder.
    let n: i64 = dst.query_value(
        "SELECT count(*) FROM meta WHERE key <> ?1 AND NOT (key = ?2 AND value = '')",
        p![HOLDER_META, crate::SEARCH_FILL_META],
    )?;
    if n > 0 {
        out.push(format!("meta: {n} rows"));
    }
    Ok(out)
}

/// Reads the journal back from Postgres in seq order, checksummed.
fn journal_back(dst: &Backend) -> Result<(u64, String), MigrateError> {
    let t = TABLES
        .iter()
        .find(|t| t.name == "journal")
        .expect("journal");
    let sql = format!(
        "SELECT {} FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        col_list(t)
    );
    let mut sum = Checksum::default();
    let mut after = i64::MIN;
    let mut n = 0u64;
    loop {
        let rows = dst.query(&sql, p![after, CHUNK_ROWS as i64])?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let cells: Vec<Cell> = r.values.iter().map(cell_of).collect();
            sum.row(&cells);
            after = r.get(0)?;
            n += 1;
        }
    }
    Ok((n, sum.hex()))
}

/// Copies the SQLite state database at `from` into the Postgres database
/// at `url` (see the module's notes). The SQLite file is not written.
pub fn copy_sqlite_to_postgres(from: &Path, url: &str) -> Result<MigrationReport, MigrateError> {
    let start = Instant::now();
    if !from.is_file() {
        return Err(MigrateError::NoSource {
            path: from.to_path_buf(),
        });
    }
    // No daemon or command on the file now, and none until the copy ends.
    let lock_file = crate::lock::acquire(from).map_err(|e| match e {
        StateError::Locked { pid, since, .. } => MigrateError::SourceLocked {
            path: from.to_path_buf(),
            pid,
            since,
        },
        e => e.into(),
    })?;
    let out = copy_locked(from, url, start);
    crate::lock::release(&lock_file);
    drop(lock_file);
    out
}

fn copy_locked(from: &Path, url: &str, start: Instant) -> Result<MigrationReport, MigrateError> {
    let src_err = |source| MigrateError::Source {
        path: from.to_path_buf(),
        source,
    };
    let src = Connection::open_with_flags(
        from,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(src_err)?;
    src.busy_timeout(Duration::from_secs(5)).map_err(src_err)?;
    let found = crate::schema::version_sqlite(&src).map_err(src_err)?;
    if found != SCHEMA_VERSION {
        return Err(MigrateError::SourceVersion {
            path: from.to_path_buf(),
            found,
            hint: if found < SCHEMA_VERSION {
                ": run this build on it once first (e.g. `contact-sync status` with its SQLite configuration), which brings it up to date"
            } else {
                ": it was written by a newer contact-sync; upgrade contact-sync"
            },
        });
    }
    // One snapshot of the whole file.
    src.execute_batch("BEGIN").map_err(src_err)?;

    let mut db = StateDb::open_url(url)?;
    let target = db.location();
    let _lock = db.lock().map_err(|e| match e {
        StateError::Locked { pid, since, .. } => MigrateError::TargetLocked {
            target: target.clone(),
            pid,
            since,
        },
        e => e.into(),
    })?;
    let tx = db.tx()?;
    let dst = tx.conn();
    let full = not_empty(dst)?;
    if !full.is_empty() {
        return Err(MigrateError::TargetNotEmpty {
            target,
            rows: full.join(", "),
        });
    }
    // Meta as in the file (the migration's `search_fill` default goes).
    dst.execute("DELETE FROM meta WHERE key <> ?1", p![HOLDER_META])?;

    let mut tables = Vec::new();
    let mut journal_sum = Checksum::default();
    let mut journal_max_seq = 0;
    let mut journal_next_seq = 1;
    let mut journal_rows = 0;
    for t in TABLES {
        let is_journal = t.name == "journal";
        let sum = if is_journal {
            Some(&mut journal_sum)
        } else {
            None
        };
        let copied = copy_table(&src, from, dst, t, sum)?;
        if let Some(id) = t.identity {
            let ever = sqlite_sequence(&src, t.name).map_err(src_err)?;
            let last = copied.max_id.max(ever);
            dst.query(
                "SELECT setval(pg_get_serial_sequence(?1, ?2), ?3, ?4)",
                p![t.name, id, last.max(1), last > 0],
            )?;
            if is_journal {
                journal_max_seq = copied.max_id;
                journal_next_seq = last + 1;
            }
        }
        if is_journal {
            journal_rows = copied.rows;
        }
        tables.push(TableRows {
            table: t.name.to_string(),
            rows: copied.rows,
        });
    }

    // Verify inside the transaction: a difference commits nothing.
    for TableRows { table: name, rows } in &tables {
        let back: i64 = if name == "meta" {
            dst.query_value("SELECT count(*) FROM meta WHERE key <> ?1", p![HOLDER_META])?
        } else {
            dst.query_value(&format!("SELECT count(*) FROM {name}"), vec![])?
        };
        if u64::try_from(back).ok() != Some(*rows) {
            return Err(MigrateError::Verify(format!(
                "table {name}: {rows} rows copied, {back} in Postgres"
            )));
        }
    }
    let journal_sha256 = journal_sum.hex();
    let (back_rows, back_sum) = journal_back(dst)?;
    if back_rows != journal_rows || back_sum != journal_sha256 {
        return Err(MigrateError::Verify(format!(
            "the journal read back from Postgres ({back_rows} entries, sha256 {back_sum}) differs from SQLite's ({journal_rows} entries, sha256 {journal_sha256})"
        )));
    }
    let next: i64 = dst.query_value(
        "SELECT COALESCE(pg_sequence_last_value(pg_get_serial_sequence(?1, ?2)::regclass) + 1, 1)",
        p!["journal", "seq"],
    )?;
    if next != journal_next_seq {
        return Err(MigrateError::Verify(format!(
            "the journal's next seq is {next} in Postgres, {journal_next_seq} expected"
        )));
    }
    tx.commit()?;
    src.execute_batch("COMMIT").map_err(src_err)?;
    Ok(MigrationReport {
        source: from.to_path_buf(),
        target,
        tables,
        journal_max_seq,
        journal_next_seq,
        journal_sha256,
        seconds: start.elapsed().as_secs_f64(),
    })
}
