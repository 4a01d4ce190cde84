//! Leases: which daemon does the work, when several share one state
//! database on Postgres.
//!
//! A lease is a row of the `leases` table (created by the Postgres state
//! migrations): its `holder`, a `token` that grows by one at every change
//! of holder (the fencing token), and an `expires_at` in the **server's**
//! clock, so machines whose clocks disagree still agree on who holds it.
//!
//! - [`Leases::try_acquire`] takes a lease that is free or expired (or
//!   already ours) and returns its new token.
//! - The holder renews it every `ttl / 5` ([`Held`] runs that heartbeat);
//!   when a renewal finds the token changed, or renewals have failed for
//!   longer than the lease lasts, the holder is told it lost the lease and
//!   must stop working at once.
//! - Losing the lease is not trusted to the heartbeat alone: every commit
//!   of the state database checks the token in the same transaction
//!   ([`crate::Fence`]), so a daemon that was paused (SIGSTOP, a long GC, a
//!   partition) and wakes up after another took over cannot commit.
//! - A clean shutdown releases the lease (expires it now): a standby takes
//!   it at its next poll instead of waiting for the expiry.
//!
//! Failover after a crash therefore takes at most `ttl` plus one standby
//! poll; [`LeaseTimings::for_failover`] derives both from the time the
//! user allows (`[cluster] failover_secs`, default 15 s).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// Errors of the lease table.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leases: cannot connect to the state database: {0}")]
    Connect(String),
    /// `permanent`: the server refused the statement itself (e.g. no
    /// `leases` table: the state database was not migrated); waiting does
    /// not help. Otherwise the connection or the server is down for now.
    #[error("leases: {message}")]
    Query { message: String, permanent: bool },
}

impl LeaseError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LeaseError::Query {
                permanent: true,
                ..
            }
        )
    }
}

fn q(e: tokio_postgres::Error) -> LeaseError {
    // The driver's message names the SQL state, never the connection
    // string, so no secret reaches the error.
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            // Connection (08), resources (53), a lock not available (55),
            // operator intervention (57) and rollbacks (40) pass; the rest
            // is the statement itself.
            let passing = ["08", "53", "55", "57", "40"]
                .iter()
                .any(|c| code.starts_with(c));
            LeaseError::Query {
                message: format!("{} ({code})", db.message()),
                permanent: !passing,
            }
        }
        None => LeaseError::Query {
            message: e.to_string(),
            permanent: false,
        },
    }
}

/// How long a lease lasts and how often it is renewed and polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimings {
    /// A lease not renewed for this long is free for another daemon.
    pub ttl: Duration,
    /// How often the holder renews it.
    pub heartbeat: Duration,
    /// How often a standby tries to take it.
    pub poll: Duration,
}

impl LeaseTimings {
    /// Timings such that a crashed holder's lease is taken within
    /// `failover` (ttl + one poll), with five heartbeats per ttl so that a
    /// holder survives a few slow or failed renewals.
    pub fn for_failover(failover: Duration) -> LeaseTimings {
        let failover = failover.max(Duration::from_secs(2));
        let poll = (failover / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let ttl = failover - poll;
        LeaseTimings {
            ttl,
            heartbeat: ttl / 5,
            poll,
        }
    }
}

/// Every lease, by name, with whether it is live by the server's clock
/// (Postgres; also read by [`crate::StateDb::leases`]).
pub(crate) const LIST_SQL: &str = "SELECT name, holder, token,
        to_char(acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        to_char(heartbeat_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
        expires_at > now(), info
     FROM leases ORDER BY name";

/// One row of the lease table, for `status` and the console.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub token: i64,
    pub acquired_at: String,
    pub heartbeat_at: String,
    pub expires_at: String,
    /// Whether it is still held (not expired) by the server's clock.
    pub live: bool,
    /// What the holder said of itself (host, pid, HTTP address).
    pub info: String,
}

impl LeaseRow {
    /// The holder's process id, from what it wrote of itself ("pid N, …").
    pub fn pid(&self) -> &str {
        self.info
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches("pid ")
    }
}

/// Every lease, on the state database's own connection (Postgres).
pub(crate) fn rows(db: &crate::db::Backend) -> crate::Result<Vec<LeaseRow>> {
    db.query(LIST_SQL, Vec::new())?
        .iter()
        .map(|r| {
            Ok(LeaseRow {
                name: r.get(0)?,
                holder: r.get(1)?,
                token: r.get(2)?,
                acquired_at: r.get(3)?,
                heartbeat_at: r.get(4)?,
                expires_at: r.get(5)?,
                live: r.get(6)?,
                info: r.get(7)?,
            })
        })
        .collect()
}

/// A connection to the lease table.
pub struct Leases {
    client: Client,
}

impl Leases {
    /// Connects to the state database at `url` (its own connection: the
    /// heartbeat must not wait behind a long state transaction).
    pub async fn connect(url: &str) -> Result<Leases, LeaseError> {
        let (client, conn) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(|e| LeaseError::Connect(q(e).to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "lease connection closed");
            }
        });
        // A lease row locked by a stalled holder's transaction (until the
        // server ends it) must not block a renewal or a standby for ever.
        client
            .batch_execute("SET application_name = 'contact-sync lease'; SET lock_timeout = '2s'")
            .await
            .map_err(q)?;
        Ok(Leases { client })
    }

    /// Takes `name` for `holder` when it is free, expired or already held
    /// by `holder`; returns the fencing token, or None when another holds
    /// it. A change of holder increments the token.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        info: &str,
    ) -> Result<Option<i64>, LeaseError> {
        let ttl_ms = ttl.as_millis() as i64;
        let row = self
            .client
            .query_opt(
                "INSERT INTO leases AS l (name, holder, token, acquired_at, heartbeat_at, expires_at, info)
                 VALUES ($1, $2, 1, now(), now(), now() + $3::bigint * interval '1 millisecond', $4)
                 ON CONFLICT (name) DO UPDATE SET
                   token = CASE WHEN l.holder = EXCLUDED.holder THEN l.token ELSE l.token + 1 END,
                   acquired_at = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired_at ELSE now() END,
                   holder = EXCLUDED.holder,
                   heartbeat_at = now(),
                   expires_at = EXCLUDED.expires_at,
                   info = EXCLUDED.info
                 WHERE l.expires_at <= now() OR l.holder = EXCLUDED.holder
                 RETURNING token",
                &[&name, &holder, &ttl_ms, &info],
            )
            .await
            .map_err(q)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Extends the lease by `ttl`; false when it is no longer ours (another
    /// daemon took it: the token moved on).
    pub async fn renew(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        ttl: Duration,
    ) -> Result<bool, LeaseError> {
        let ttl_ms = ttl.as_millis() as i64;
        let n = self
            .client
            .execute(
                "UPDATE leases SET heartbeat_at = now(), expires_at = now() + $4::bigint * interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND token = $3",
                &[&name, &holder, &token, &ttl_ms],
            )
            .await
            .map_err(q)?;
        Ok(n == 1)
    }

    /// Gives the lease up now (a clean shutdown): it expires at once, the
    /// holder and token stay so that the next holder's token is higher.
    pub async fn release(&self, name: &str, holder: &str, token: i64) -> Result<bool, LeaseError> {
        let n = self
            .client
            .execute(
                "UPDATE leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND token = $3",
                &[&name, &holder, &token],
            )
            .await
            .map_err(q)?;
        Ok(n == 1)
    }

    /// Deletes the rows of leases named `prefix…` that expired more than
    /// `age` ago (the memberships of daemons long gone).
    pub async fn prune(&self, prefix: &str, age: Duration) -> Result<u64, LeaseError> {
        let age_ms = age.as_millis() as i64;
        self.client
            .execute(
                "DELETE FROM leases WHERE left(name, length($1)) = $1
                   AND expires_at < now() - $2::bigint * interval '1 millisecond'",
                &[&prefix, &age_ms],
            )
            .await
            .map_err(q)
    }

    /// How far the shared work has gone: the journal's head and the
    /// canonical store's cursor (a daemon wakes when another moved them).
    pub async fn progress(&self) -> Result<(i64, i64), LeaseError> {
        let row = self
            .client
            .query_one(
                "SELECT (SELECT COALESCE(MAX(seq), 0) FROM journal),
                        (SELECT COALESCE(MAX(seq), 0) FROM cursors WHERE consumer = 'canonical')",
                &[],
            )
            .await
            .map_err(q)?;
        Ok((row.get(0), row.get(1)))
    }

    /// Lease `name` while someone holds it.
    pub async fn live(&self, name: &str) -> Result<Option<LeaseRow>, LeaseError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .find(|r| r.name == name && r.live))
    }

    /// Every lease, by name.
    pub async fn list(&self) -> Result<Vec<LeaseRow>, LeaseError> {
        let rows = self.client.query(LIST_SQL, &[]).await.map_err(q)?;
        Ok(rows
            .iter()
            .map(|r| LeaseRow {
                name: r.get(0),
                holder: r.get(1),
                token: r.get(2),
                acquired_at: r.get(3),
                heartbeat_at: r.get(4),
                expires_at: r.get(5),
                live: r.get(6),
                info: r.get(7),
            })
            .collect())
    }
}

/// A lease this process holds, kept alive by a heartbeat task.
pub struct Held {
    pub name: String,
    pub holder: String,
    pub token: i64,
    lost: Arc<AtomicBool>,
    lost_wake: Arc<tokio::sync::Notify>,
    stop: Arc<tokio::sync::Notify>,
    task: Option<tokio::task::JoinHandle<()>>,
    leases: Arc<Leases>,
}

impl Held {
    /// Waits until `name` can be taken for `holder` (polling every
    /// `timings.poll`), or `give_up` says to stop waiting (then None).
    pub async fn acquire(
        leases: Arc<Leases>,
        name: &str,
        holder: &str,
        info: &str,
        timings: LeaseTimings,
        give_up: impl Fn() -> bool,
    ) -> Result<Option<Held>, LeaseError> {
        let mut logged = false;
        loop {
            if give_up() {
                return Ok(None);
            }
            match leases.try_acquire(name, holder, timings.ttl, info).await {
                Ok(Some(token)) => {
                    return Ok(Some(Held::start(leases, name, holder, token, timings)))
                }
                Ok(None) => {
                    if !logged {
                        let by = leases
                            .live(name)
                            .await
                            .ok()
                            .flatten()
                            .map(|r| format!("{} ({})", r.holder, r.info))
                            .unwrap_or_default();
                        tracing::info!(lease = name, held_by = %by, "standby: another daemon holds the lease; taking it over when it stops renewing");
                        logged = true;
                    }
                }
                Err(e) if e.is_permanent() => return Err(e),
                // The database may be down for a while: a standby keeps
                // trying (the holder, if any, is as blocked as we are).
                Err(e) => {
                    tracing::warn!(lease = name, error = %e, "standby: cannot reach the lease table")
                }
            }
            tokio::time::sleep(timings.poll).await;
        }
    }

    /// Takes `name` now if it is free (or expired, or ours), without
    /// waiting: None when another daemon holds it.
    pub async fn try_take(
        leases: Arc<Leases>,
        name: &str,
        holder: &str,
        info: &str,
        timings: LeaseTimings,
    ) -> Result<Option<Held>, LeaseError> {
        Ok(leases
            .try_acquire(name, holder, timings.ttl, info)
            .await?
            .map(|token| Held::start(leases, name, holder, token, timings)))
    }

    fn start(
        leases: Arc<Leases>,
        name: &str,
        holder: &str,
        token: i64,
        timings: LeaseTimings,
    ) -> Held {
        let lost = Arc::new(AtomicBool::new(false));
        let lost_wake = Arc::new(tokio::sync::Notify::new());
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (leases, name, holder) = (leases.clone(), name.to_string(), holder.to_string());
            let (lost, lost_wake, stop) = (lost.clone(), lost_wake.clone(), stop.clone());
            tokio::spawn(async move {
                let mut renewed = Instant::now();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(timings.heartbeat) => {}
                        _ = stop.notified() => return,
                    }
                    // A renewal that hangs counts as failed once the lease
                    // could have expired.
                    let attempt = tokio::time::timeout(
                        timings.heartbeat,
                        leases.renew(&name, &holder, token, timings.ttl),
                    )
                    .await;
                    let gone = match attempt {
                        Ok(Ok(true)) => {
                            renewed = Instant::now();
                            false
                        }
                        Ok(Ok(false)) => {
                            tracing::warn!(lease = %name, token, "lease lost: another daemon holds it now");
                            true
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(lease = %name, error = %e, "cannot renew the lease");
                            // Stop before the server could give it away.
                            renewed.elapsed() + timings.heartbeat >= timings.ttl
                        }
                        Err(_) => {
                            tracing::warn!(lease = %name, "renewing the lease timed out");
                            renewed.elapsed() + timings.heartbeat >= timings.ttl
                        }
                    };
                    if gone {
                        lost.store(true, Ordering::SeqCst);
                        lost_wake.notify_waiters();
                        return;
                    }
                }
            })
        };
        tracing::info!(lease = name, token, "lease taken");
        Held {
            name: name.to_string(),
            holder: holder.to_string(),
            token,
            lost,
            lost_wake,
            stop,
            task: Some(task),
            leases,
        }
    }

    /// Whether the lease was lost (the work must stop at once).
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// The flag the heartbeat sets when the lease is lost.
    pub fn lost_flag(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        wait_lost(self.lost.clone(), self.lost_wake.clone()).await
    }

    /// Runs `f` once when the lease is lost (e.g. to stop the engine after
    /// the batch in flight).
    pub fn on_lost(&self, f: impl FnOnce() + Send + 'static) {
        let (lost, wake) = (self.lost.clone(), self.lost_wake.clone());
        tokio::spawn(async move {
            wait_lost(lost, wake).await;
            f();
        });
    }

    /// Renews the lease now and says whether it is still ours (after an
    /// error that may have been a fenced commit). A lease found taken is
    /// marked lost.
    pub async fn confirm(&self, ttl: Duration) -> bool {
        if self.is_lost() {
            return false;
        }
        match self
            .leases
            .renew(&self.name, &self.holder, self.token, ttl)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                self.lost.store(true, Ordering::SeqCst);
                self.lost_wake.notify_waiters();
                false
            }
            // Unknown: the heartbeat decides.
            Err(_) => true,
        }
    }

    /// Stops the heartbeat and gives the lease up at once (clean shutdown).
    pub async fn release(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if self.is_lost() {
            return;
        }
        match self
            .leases
            .release(&self.name, &self.holder, self.token)
            .await
        {
            Ok(_) => tracing::info!(lease = %self.name, "lease released"),
            Err(e) => {
                tracing::warn!(lease = %self.name, error = %e, "cannot release the lease; it expires by itself")
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn wait_lost(lost: Arc<AtomicBool>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let wait = wake.notified();
        tokio::pin!(wait);
        // Registered before the check, so a notification in between is
        // not missed.
        wait.as_mut().enable();
        if lost.load(Ordering::SeqCst) {
            return;
        }
        wait.await;
    }
}

/// This process's name in the lease table: host, pid and a random part (a
/// restarted daemon with a reused pid is a new holder).
pub fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{:08x}", std::process::id(), nanos)
}
