//! The two backends behind one small interface: statements written once
//! (SQLite syntax with `?N` parameters, which the Postgres backend turns
//! into `$N`), values and rows as plain data.
//!
//! - SQLite: a `rusqlite` connection in this thread, statements cached.
//! - Postgres: [`crate::pg::PgConn`], a dedicated thread owning the
//!   connection (the engine calls the state database synchronously from
//!   inside its tokio runtime, where a blocking client cannot run).
//!
//! Transactions are plain `BEGIN` / `COMMIT` / `ROLLBACK` on the one
//! connection; [`crate::StateTx`] guarantees one at a time.

use rusqlite::types::ValueRef;

use crate::pg::PgConn;
use crate::{Fence, Result, StateError};

/// One SQL value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// Postgres only: a `text[]` (bulk statements over `UNNEST`).
    TextArray(Vec<Option<String>>),
    /// Postgres only: a `bigint[]`.
    IntArray(Vec<i64>),
}

/// Something that can be bound as a parameter.
pub(crate) trait ToValue {
    fn to_value(&self) -> Value;
}

impl ToValue for i64 {
    fn to_value(&self) -> Value {
        Value::Int(*self)
    }
}
impl ToValue for i32 {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for bool {
    fn to_value(&self) -> Value {
        Value::Int(i64::from(*self))
    }
}
impl ToValue for f64 {
    fn to_value(&self) -> Value {
        Value::Real(*self)
    }
}
impl ToValue for str {
    fn to_value(&self) -> Value {
        Value::Text(self.to_string())
    }
}
impl ToValue for String {
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
}
impl<T: ToValue + ?Sized> ToValue for &T {
    fn to_value(&self) -> Value {
        (**self).to_value()
    }
}
impl<T: ToValue> ToValue for Option<T> {
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => Value::Null,
        }
    }
}

/// Parameters of a statement: `p![a, b, c]` (each by reference, like
/// `rusqlite::params!`).
macro_rules! p {
    () => { Vec::<$crate::db::Value>::new() };
    ($($x:expr),+ $(,)?) => { vec![$($crate::db::ToValue::to_value(&$x)),+] };
}
pub(crate) use p;

/// A column value read back.
pub(crate) trait FromValue: Sized {
    fn from_value(v: &Value) -> std::result::Result<Self, String>;
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Int(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::TextArray(_) | Value::IntArray(_) => "an array",
    }
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Int(n) => Ok(*n),
            other => Err(format!("expected an integer, found {}", kind(other))),
        }
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        i64::from_value(v).map(|n| n != 0)
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Real(x) => Ok(*x),
            Value::Int(n) => Ok(*n as f64),
            other => Err(format!("expected a real, found {}", kind(other))),
        }
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => Err(format!("expected text, found {}", kind(other))),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub(crate) names: std::sync::Arc<Vec<String>>,
    pub(crate) values: Vec<Value>,
}

impl Row {
    /// Column `idx`; a value of another type is [`StateError::Corrupt`].
    pub(crate) fn get<T: FromValue>(&self, idx: usize) -> Result<T> {
        let v = self.values.get(idx).ok_or_else(|| StateError::Corrupt {
            what: format!("column {idx}"),
            message: "missing".into(),
        })?;
        T::from_value(v).map_err(|message| StateError::Corrupt {
            what: format!(
                "column {}",
                self.names.get(idx).map(String::as_str).unwrap_or("?")
            ),
            message,
        })
    }
}

/// The connection of a [`crate::StateDb`].
#[derive(Debug)]
pub(crate) enum Backend {
    Sqlite(rusqlite::Connection),
    Pg(PgConn),
}

fn sqlite_rows(conn: &rusqlite::Connection, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let names: std::sync::Arc<Vec<String>> =
        std::sync::Arc::new(stmt.column_names().map(|s| s.to_string()).collect());
    let n = names.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut values = Vec::with_capacity(n);
        for i in 0..n {
            values.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(x) => Value::Int(x),
                ValueRef::Real(x) => Value::Real(x),
                ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(_) => Value::Null,
            });
        }
        out.push(Row {
            names: names.clone(),
            values,
        });
    }
    Ok(out)
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::ToSqlOutput;
        Ok(match self {
            Value::Null => ToSqlOutput::from(rusqlite::types::Null),
            Value::Int(n) => ToSqlOutput::from(*n),
            Value::Real(x) => ToSqlOutput::from(*x),
            Value::Text(s) => ToSqlOutput::from(s.as_str()),
            Value::TextArray(_) | Value::IntArray(_) => {
                return Err(rusqlite::Error::ToSqlConversionFailure(
                    "arrays are bound on Postgres only".into(),
                ))
            }
        })
    }
}

impl Backend {
    pub(crate) fn is_pg(&self) -> bool {
        matches!(self, Backend::Pg(_))
    }

    /// The SQLite connection (tests of SQLite's own structures).
    #[cfg(test)]
    pub(crate) fn sqlite(&self) -> &rusqlite::Connection {
        match self {
            Backend::Sqlite(c) => c,
            Backend::Pg(_) => panic!("not a SQLite database"),
        }
    }

    /// Every row of a query.
    pub(crate) fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match self {
            Backend::Sqlite(c) => sqlite_rows(c, sql, &params),
            Backend::Pg(pg) => pg.query(sql, params),
        }
    }

    /// The first row of a query, if any.
    pub(crate) fn query_opt(&self, sql: &str, params: Vec<Value>) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// The first column of the first row (a query that always has one).
    pub(crate) fn query_value<T: FromValue>(&self, sql: &str, params: Vec<Value>) -> Result<T> {
        match self.query_opt(sql, params)? {
            Some(r) => r.get(0),
            None => Err(StateError::Corrupt {
                what: "query result".into(),
                message: format!("no row from {sql}"),
            }),
        }
    }

    /// Runs a statement; returns the rows it changed.
    pub(crate) fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64> {
        match self {
            Backend::Sqlite(c) => {
                let n = c
                    .prepare_cached(sql)?
                    .execute(rusqlite::params_from_iter(params.iter()))?;
                Ok(n as u64)
            }
            Backend::Pg(pg) => pg.execute(sql, params),
        }
    }

    /// Runs one statement once per parameter list (Postgres: pipelined,
    /// one round trip for the lot); returns the rows changed in all.
    pub(crate) fn execute_many(&self, sql: &str, rows: Vec<Vec<Value>>) -> Result<u64> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            Backend::Sqlite(c) => {
                let mut stmt = c.prepare_cached(sql)?;
                let mut n = 0;
                for params in &rows {
                    n += stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64;
                }
                Ok(n)
            }
            Backend::Pg(pg) => pg.execute_many(sql, rows),
        }
    }

    /// Starts a write transaction: SQLite `BEGIN IMMEDIATE` (the write lock
    /// now); Postgres `BEGIN` and the writers' transaction lock, so that
    /// writers of several connections commit one after another (journal
    /// seqs become visible in order).
    pub(crate) fn begin(&self) -> Result<()> {
        match self {
            Backend::Sqlite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Backend::Pg(pg) => pg.begin(),
        }
    }

    /// Commits; on Postgres with a fence, only while the lease is held.
    pub(crate) fn commit(&self, fences: &[Fence]) -> Result<()> {
        match self {
            Backend::Sqlite(c) => Ok(c.execute_batch("COMMIT")?),
            Backend::Pg(pg) => pg.commit(fences.to_vec()),
        }
    }

    /// Rolls back (best effort: dropping a transaction).
    pub(crate) fn rollback(&self) {
        match self {
            Backend::Sqlite(c) => {
                if !c.is_autocommit() {
                    let _ = c.execute_batch("ROLLBACK");
                }
            }
            Backend::Pg(pg) => pg.rollback(),
        }
    }
}

/// A statement of SQLite syntax for Postgres: `?N` parameters become
/// `$N`, and SQLite's index hints (`INDEXED BY name`) are left out.
/// Quoted text is copied as it is.
pub(crate) fn to_pg(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(ch) = chars.next() {
        if let Some(q) = quote {
            out.push(ch);
            if ch == q {
                quote = None;
            }
            continue;
        }
        match ch {
            '\'' | '"' => {
                quote = Some(ch);
                out.push(ch);
            }
            '?' if chars.peek().is_some_and(char::is_ascii_digit) => out.push('$'),
            _ => out.push(ch),
        }
    }
    strip_indexed_by(&out)
}

fn strip_indexed_by(sql: &str) -> String {
    let mut s = sql.to_string();
    while let Some(i) = s.find("INDEXED BY ") {
        let rest = &s[i + "INDEXED BY ".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let cut = i + "INDEXED BY ".len() + end;
        s.replace_range(i..cut, "");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_rewritten_for_postgres() {
        assert_eq!(
            to_pg("SELECT a FROM t INDEXED BY t_a WHERE a = ?1 AND b = '?2' AND c > ?12"),
            "SELECT a FROM t  WHERE a = $1 AND b = '?2' AND c > $12"
        );
    }
}
