//! The Postgres backend's connection: a dedicated OS thread per
//! [`crate::StateDb`] owning a `tokio_postgres` client on its own
//! current-thread runtime. Callers send commands over a channel and block
//! on the reply: the same blocking profile as SQLite's, usable from inside
//! the engine's tokio runtime (where a blocking client would panic), one
//! command at a time and in order.
//!
//! - Statements are prepared once per connection (cached by text).
//! - A batch of the same statement ([`PgConn::execute_many`]) is pipelined:
//!   one round trip for the lot.
//! - A write transaction takes the writers' transaction lock
//!   (`pg_advisory_xact_lock`), so writers on several connections commit
//!   one after another, like SQLite's single writer: journal seqs become
//!   visible in the order they were assigned.
//! - A commit under a [`Fence`] first checks, in the same transaction and
//!   with a row lock that a takeover's `UPDATE` waits for, that the lease
//!   is still held; otherwise it rolls back and answers
//!   [`StateError::Fenced`].

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::mpsc;
use std::sync::Arc;

use bytes::BytesMut;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use crate::db::{to_pg, Row, Value};
use crate::{Fence, Result, StateError};

/// Advisory lock key of the writers' transaction lock.
const WRITE_KEY: i64 = 0x6373_7374_6174_6501; // "csstate" 1
/// Advisory lock key of the single-instance lock (session level).
pub(crate) const INSTANCE_KEY: i64 = 0x6373_7374_6174_6502;
/// Advisory lock key held while migrating.
const MIGRATE_KEY: i64 = 0x6373_7374_6174_6503;

/// Meta key holding "pid since host" of the instance lock's holder.
pub(crate) const HOLDER_META: &str = "lock:holder";

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) => match *ty {
                Type::INT8 => n.to_sql(ty, out),
                Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
                Type::FLOAT8 => (*n as f64).to_sql(ty, out),
                Type::BOOL => (*n != 0).to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => n.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer as {ty}").into()),
            },
            Value::Real(x) => match *ty {
                Type::FLOAT8 => x.to_sql(ty, out),
                Type::FLOAT4 => (*x as f32).to_sql(ty, out),
                _ => Err(format!("cannot bind a real as {ty}").into()),
            },
            Value::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                _ => s.as_str().to_sql(ty, out),
            },
            Value::TextArray(v) => v.to_sql(ty, out),
            Value::IntArray(v) => v.to_sql(ty, out),
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

fn row_of(r: &tokio_postgres::Row, names: &Arc<Vec<String>>) -> Result<Row> {
    let mut values = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let v = match *c.type_() {
            Type::INT8 => r.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)?
                .map(|n| Value::Int(n.into())),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)?
                .map(|b| Value::Int(b.into())),
            Type::FLOAT8 => r.try_get::<_, Option<f64>>(i)?.map(Value::Real),
            Type::FLOAT4 => r
                .try_get::<_, Option<f32>>(i)?
                .map(|x| Value::Real(x.into())),
            _ => r
                .try_get::<_, Option<String>>(i)
                .ok()
                .flatten()
                .map(Value::Text),
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row {
        names: names.clone(),
        values,
    })
}

enum Op {
    /// Takes the instance lock (session advisory lock); whether it got it.
    Lock,
    Unlock,
    Query(String, Vec<Value>),
    Execute(String, Vec<Value>),
    ExecuteMany(String, Vec<Vec<Value>>),
    Begin,
    Commit(Vec<Fence>),
    Rollback,
}

impl Op {
    /// The same read or `BEGIN` again (only those are retried).
    fn clone_retry(&self) -> Op {
        match self {
            Op::Query(sql, params) => Op::Query(sql.clone(), params.clone()),
            _ => Op::Begin,
        }
    }
}

enum Reply {
    Rows(Vec<Row>),
    Count(u64),
}

struct Cmd {
    op: Op,
    reply: Option<mpsc::SyncSender<Result<Reply>>>,
}

/// The handle of a connection thread.
#[derive(Debug)]
pub(crate) struct PgConn {
    tx: mpsc::Sender<Cmd>,
    /// Where it is, for messages (no password).
    pub(crate) location: String,
}

/// `postgres://user@host:port/db` without the password or options.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "postgres (connection string)".into();
    };
    let rest = rest.split('?').next().unwrap_or(rest);
    let rest = match rest.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split(':').next().unwrap_or(user);
            format!("{user}@{host}")
        }
        None => rest.to_string(),
    };
    format!("{scheme}://{rest}")
}

struct Worker {
    client: Client,
    stmts: HashMap<String, Statement>,
    url: String,
    busy: std::time::Duration,
    /// Between `Begin` and `Commit`/`Rollback`.
    in_tx: bool,
    /// This session holds the instance lock.
    locked: bool,
    /// The connection was lost while holding the instance lock, and
    /// another session took it: this handle must not write any more.
    lock_lost: bool,
}

fn lost(url: &str, message: &str) -> StateError {
    StateError::Open {
        path: redact(url).into(),
        message: message.to_string(),
    }
}

impl Worker {
    /// A new connection after the old one was lost (a server restart, a
    /// network cut), outside any transaction; the instance lock is taken
    /// again if this session held it.
    async fn reconnect(&mut self) -> Result<()> {
        self.client = connect(&self.url, self.busy).await?;
        self.stmts.clear();
        if self.locked {
            let got: bool = self
                .client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&INSTANCE_KEY])
                .await?
                .get(0);
            if !got {
                self.locked = false;
                self.lock_lost = true;
            }
        }
        Ok(())
    }

    /// Whether `e` says the connection is over (closed, or ended by the
    /// server: shutdown, restart, a terminated backend).
    fn gone(&self, e: &tokio_postgres::Error) -> bool {
        use tokio_postgres::error::SqlState;
        e.is_closed()
            || self.client.is_closed()
            || e.code().is_some_and(|c| {
                [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c)
            })
    }

    /// Runs `op`, reconnecting first when the connection is gone and no
    /// transaction was open on it (one open on it is lost: the server
    /// rolled it back, and the op fails). A read or a `BEGIN` that fails
    /// because the connection closed under it is tried once more on a new
    /// one.
    async fn run(&mut self, op: Op) -> Result<Reply> {
        let refuse = |w: &Worker, op: &Op| -> Result<()> {
            if w.lock_lost && !matches!(op, Op::Rollback | Op::Unlock) {
                return Err(lost(
                    &w.url,
                    "the connection was lost and another contact-sync holds the state database's lock now; this one must stop",
                ));
            }
            Ok(())
        };
        refuse(self, &op)?;
        if self.client.is_closed() {
            if self.in_tx {
                if matches!(op, Op::Rollback) {
                    self.in_tx = false;
                    return Ok(Reply::Count(0));
                }
                return Err(lost(
                    &self.url,
                    "the connection was lost in the middle of a transaction (nothing of it was committed)",
                ));
            }
            self.reconnect().await?;
            refuse(self, &op)?;
        }
        let retry = matches!(op, Op::Query(..) | Op::Begin) && !self.in_tx;
        let again = if retry { Some(op.clone_retry()) } else { None };
        match self.run_once(op).await {
            Err(StateError::Postgres(e)) if again.is_some() && self.gone(&e) => {
                self.reconnect().await?;
                let op = again.expect("checked");
                refuse(self, &op)?;
                self.run_once(op).await
            }
            out => out,
        }
    }

    async fn stmt(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(&to_pg(sql)).await?;
        if self.stmts.len() >= 256 {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    async fn run_once(&mut self, op: Op) -> Result<Reply> {
        match op {
            Op::Lock => {
                let got: bool = self
                    .client
                    .query_one("SELECT pg_try_advisory_lock($1)", &[&INSTANCE_KEY])
                    .await?
                    .get(0);
                if got && self.locked {
                    // Session locks stack: keep one.
                    self.client
                        .execute("SELECT pg_advisory_unlock($1)", &[&INSTANCE_KEY])
                        .await?;
                }
                self.locked |= got;
                Ok(Reply::Count(u64::from(got)))
            }
            Op::Unlock => {
                if self.locked && !self.client.is_closed() {
                    self.client
                        .execute("SELECT pg_advisory_unlock($1)", &[&INSTANCE_KEY])
                        .await?;
                }
                self.locked = false;
                Ok(Reply::Count(0))
            }
            Op::Query(sql, params) => {
                let st = self.stmt(&sql).await?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                let rows = self.client.query(&st, &refs).await?;
                let names = Arc::new(
                    st.columns()
                        .iter()
                        .map(|c| c.name().to_string())
                        .collect::<Vec<_>>(),
                );
                Ok(Reply::Rows(
                    rows.iter()
                        .map(|r| row_of(r, &names))
                        .collect::<Result<_>>()?,
                ))
            }
            Op::Execute(sql, params) => {
                let st = self.stmt(&sql).await?;
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                Ok(Reply::Count(self.client.execute(&st, &refs).await?))
            }
            Op::ExecuteMany(sql, rows) => {
                let st = self.stmt(&sql).await?;
                let refs: Vec<Vec<&(dyn ToSql + Sync)>> = rows
                    .iter()
                    .map(|p| p.iter().map(|v| v as &(dyn ToSql + Sync)).collect())
                    .collect();
                let client = &self.client;
                let counts = futures_util::future::try_join_all(
                    refs.iter().map(|r| client.execute(&st, r.as_slice())),
                )
                .await?;
                Ok(Reply::Count(counts.iter().sum()))
            }
            Op::Begin => {
                self.client.batch_execute("BEGIN").await?;
                self.in_tx = true;
                if let Err(e) = self
                    .client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_KEY])
                    .await
                {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    self.in_tx = false;
                    return Err(e.into());
                }
                Ok(Reply::Count(0))
            }
            Op::Commit(fences) => {
                // The transaction ends here, whatever happens.
                self.in_tx = false;
                for f in fences {
                    let held = self
                        .client
                        .query_opt(
                            "SELECT 1 FROM leases WHERE name = $1 AND holder = $2 AND token = $3 FOR SHARE",
                            &[&f.lease, &f.holder, &f.token],
                        )
                        .await;
                    match held {
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            let _ = self.client.batch_execute("ROLLBACK").await;
                            return Err(StateError::Fenced {
                                lease: f.lease,
                                holder: f.holder,
                                token: f.token,
                            });
                        }
                        Err(e) => {
                            let _ = self.client.batch_execute("ROLLBACK").await;
                            return Err(e.into());
                        }
                    }
                }
                if let Err(e) = self.client.batch_execute("COMMIT").await {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    return Err(e.into());
                }
                Ok(Reply::Count(0))
            }
            Op::Rollback => {
                self.in_tx = false;
                self.client.batch_execute("ROLLBACK").await?;
                Ok(Reply::Count(0))
            }
        }
    }
}

/// A connection with the session set up.
async fn connect(url: &str, busy: std::time::Duration) -> Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // A transaction left open by a stalled process (a daemon paused, or
    // cut off, while another took its lease over) would hold the writers'
    // lock and its rows for ever: the server ends it after 10 s idle.
    client
        .batch_execute(&format!(
            "SET lock_timeout = '{}ms'; SET idle_in_transaction_session_timeout = '10s'; \
             SET application_name = 'contact-sync state'",
            busy.as_millis()
        ))
        .await?;
    Ok(client)
}

/// Session setup and migrations, before the connection serves anyone.
async fn start(url: &str, busy: std::time::Duration) -> Result<Worker> {
    let mut client = connect(url, busy).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_KEY])
        .await?;
    let migrated = crate::schema::migrate_pg(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATE_KEY])
        .await;
    migrated.map_err(|message| StateError::Open {
        path: redact(url).into(),
        message,
    })?;
    Ok(Worker {
        client,
        stmts: HashMap::new(),
        url: url.to_string(),
        busy,
        in_tx: false,
        locked: false,
        lock_lost: false,
    })
}

/// Whether the database at `url` holds a state database (its migration
/// history), without creating anything. On a thread of its own, like
/// every connection here.
pub(crate) fn has_state(url: &str) -> Result<bool> {
    let url = url.to_string();
    std::thread::spawn(move || -> Result<bool> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StateError::Open {
                path: redact(&url).into(),
                message: format!("starting the connection thread: {e}"),
            })?;
        rt.block_on(async {
            let (client, conn) =
                tokio_postgres::connect(&url, NoTls)
                    .await
                    .map_err(|e| StateError::Open {
                        path: redact(&url).into(),
                        message: format!("connecting: {e}"),
                    })?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(crate::schema::pg_version(&client).await? > 0)
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(StateError::Open {
            path: "postgres".into(),
            message: "the connection thread panicked".into(),
        })
    })
}

impl PgConn {
    /// Connects (on a new thread), migrates, and returns once ready.
    pub(crate) fn open(url: &str, busy: std::time::Duration) -> Result<PgConn> {
        let location = redact(url);
        let open_err = |message: String| StateError::Open {
            path: location.clone().into(),
            message,
        };
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<()>>(1);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("state-pg".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StateError::Open {
                            path: redact(&url).into(),
                            message: format!("starting the connection thread: {e}"),
                        }));
                        return;
                    }
                };
                let mut worker = match rt.block_on(start(&url, busy)) {
                    Ok(w) => {
                        let _ = ready_tx.send(Ok(()));
                        w
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(cmd) = rx.recv() {
                    let out = rt.block_on(worker.run(cmd.op));
                    if let Some(reply) = cmd.reply {
                        let _ = reply.send(out);
                    }
                }
            })
            .map_err(|e| open_err(format!("starting the connection thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(PgConn { tx, location }),
            Ok(Err(StateError::Postgres(e))) => Err(open_err(format!("connecting: {e}"))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(open_err("the connection thread ended".into())),
        }
    }

    fn call(&self, op: Op) -> Result<Reply> {
        let (reply, rx) = mpsc::sync_channel(1);
        let gone = || StateError::Open {
            path: self.location.clone().into(),
            message: "the connection thread ended".into(),
        };
        self.tx
            .send(Cmd {
                op,
                reply: Some(reply),
            })
            .map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())?
    }

    pub(crate) fn query(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Row>> {
        match self.call(Op::Query(sql.to_string(), params))? {
            Reply::Rows(r) => Ok(r),
            Reply::Count(_) => Ok(Vec::new()),
        }
    }
    pub(crate) fn execute(&self, sql: &str, params: Vec<Value>) -> Result<u64> {
        match self.call(Op::Execute(sql.to_string(), params))? {
            Reply::Count(n) => Ok(n),
            Reply::Rows(r) => Ok(r.len() as u64),
        }
    }
    pub(crate) fn execute_many(&self, sql: &str, rows: Vec<Vec<Value>>) -> Result<u64> {
        match self.call(Op::ExecuteMany(sql.to_string(), rows))? {
            Reply::Count(n) => Ok(n),
            Reply::Rows(r) => Ok(r.len() as u64),
        }
    }
    /// Takes the instance lock on this connection (kept across
    /// reconnections while no one else takes it); whether it got it.
    pub(crate) fn try_lock(&self) -> Result<bool> {
        match self.call(Op::Lock)? {
            Reply::Count(n) => Ok(n > 0),
            Reply::Rows(_) => Ok(false),
        }
    }
    pub(crate) fn unlock(&self) {
        let _ = self.call(Op::Unlock);
    }
    pub(crate) fn begin(&self) -> Result<()> {
        self.call(Op::Begin).map(|_| ())
    }
    pub(crate) fn commit(&self, fences: Vec<Fence>) -> Result<()> {
        self.call(Op::Commit(fences)).map(|_| ())
    }
    /// Queued behind whatever was sent before; not waited for.
    pub(crate) fn rollback(&self) {
        let _ = self.tx.send(Cmd {
            op: Op::Rollback,
            reply: None,
        });
    }
    /// Another handle on the same connection (the instance lock keeps one
    /// to release itself).
    pub(crate) fn handle(&self) -> PgConn {
        PgConn {
            tx: self.tx.clone(),
            location: self.location.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn locations_leave_the_password_out() {
        assert_eq!(
            redact("postgres://u:secret@db.example:5432/state?sslmode=disable"),
            "postgres://u@db.example:5432/state"
        );
        assert_eq!(redact("host=x password=y"), "postgres (connection string)");
    }
}
