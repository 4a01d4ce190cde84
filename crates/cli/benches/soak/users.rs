//! The users: one per store, each editing, creating and deleting contacts
//! directly in its store as a person or a program would (SQL in SQLite and
//! Postgres, DML through BigQuery's REST API, Twenty's REST API), at random
//! moments, and recording each write in the history once the store has
//! acknowledged it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use contact_sync_bigquery::{BigQueryClient, QueryParam};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::history::{History, What};
use crate::lag::Lag;
use crate::snapshot::{Snapshot, StoreId, FIELDS};

/// What the users, the observer and the checker share.
pub struct Shared {
    pub start: Instant,
    pub history: Mutex<History>,
    pub lag: Mutex<Lag>,
    /// Each store's latest snapshot (users pick their targets from it).
    pub latest: Mutex<BTreeMap<StoreId, Arc<Snapshot>>>,
    users_stop: AtomicBool,
    op: AtomicU64,
}

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            start: Instant::now(),
            history: Mutex::new(History::default()),
            lag: Mutex::new(Lag::default()),
            latest: Mutex::new(BTreeMap::new()),
            users_stop: AtomicBool::new(false),
            op: AtomicU64::new(0),
        }
    }

    pub fn stop_users(&self) {
        self.users_stop.store(true, Ordering::SeqCst);
    }

    fn users_stopped(&self) -> bool {
        self.users_stop.load(Ordering::SeqCst)
    }

    /// Records a write that happened (`acked`) or may have (`!acked`).
    fn record(&self, store: StoreId, contact_id: Option<String>, what: What, acked: bool) {
        let at = Instant::now();
        let mut h = lock(&self.history);
        let ev = h.push(store, contact_id, what, acked, at - self.start);
        lock(&self.lag).record(&ev, at);
    }
}

/// How a user's write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The store acknowledged it.
    Acked,
    /// Unknown: the statement was sent, the answer lost.
    Unknown,
    /// Refused or failed before having any effect (row gone, store down,
    /// 404, 429): no write.
    NotDone,
}

/// The record a user picked (a live one, as its store showed it).
pub struct Target {
    pub contact_id: String,
    pub person_id: Option<String>,
    pub email: Option<String>,
}

/// A new contact: `contact_id` is ignored by Twenty (its users know none).
pub struct New {
    pub contact_id: String,
    pub first: String,
    pub last: String,
    pub email: String,
}

#[async_trait]
pub trait StoreUser: Send {
    fn store(&self) -> StoreId;
    async fn edit(&mut self, t: &Target, field: usize, value: &str, bump: bool) -> Outcome;
    async fn create(&mut self, n: &New) -> Outcome;
    async fn delete(&mut self, t: &Target, hard: bool) -> Outcome;
}

/// Acts until stopped: a pause of `mean_pause` × 0.2–1.8, then an edit
/// (85 %), a create (10 %) or a delete (5 %).
pub async fn run(
    mut user: Box<dyn StoreUser>,
    shared: Arc<Shared>,
    seed: u64,
    mean_pause: Duration,
) {
    let store = user.store();
    let mut rng = SmallRng::seed_from_u64(seed ^ (store as u64 + 1).wrapping_mul(0x9e37_79b9));
    while !shared.users_stopped() {
        tokio::time::sleep(mean_pause.mul_f64(rng.gen_range(0.2..1.8))).await;
        if shared.users_stopped() {
            break;
        }
        let op = shared.op.fetch_add(1, Ordering::SeqCst) + 1;
        let roll: f64 = rng.gen();
        if roll < 0.10 {
            let n = New {
                contact_id: format!("soak-{}-{op}", store.name()),
                first: "Soak".into(),
                last: format!("Person {op}"),
                email: format!("soak-{op}@example.com"),
            };
            let out = user.create(&n).await;
            let id = (store != StoreId::Twenty).then(|| n.contact_id.clone());
            note(&shared, store, id, What::Create { email: n.email }, out);
            continue;
        }
        let Some(t) = pick(&shared, store, &mut rng) else {
            continue;
        };
        if roll < 0.15 {
            let hard = rng.gen_bool(0.4);
            let out = user.delete(&t, hard).await;
            let what = What::Delete {
                email: t.email.clone(),
                hard,
            };
            note(&shared, store, Some(t.contact_id), what, out);
        } else {
            let field = rng.gen_range(0..FIELDS.len());
            let value = format!("{}-{op}", store.name());
            // Half of BigQuery's edits leave `last_updated` alone (only
            // the sweep finds them); the other stores ignore `bump`.
            let bump = rng.gen_bool(0.5);
            let out = user.edit(&t, field, &value, bump).await;
            let bumped = bump || store != StoreId::Canonical;
            note(
                &shared,
                store,
                Some(t.contact_id),
                What::Edit {
                    field,
                    value,
                    bumped,
                },
                out,
            );
        }
    }
}

fn note(shared: &Shared, store: StoreId, id: Option<String>, what: What, out: Outcome) {
    match out {
        Outcome::Acked => shared.record(store, id, what, true),
        Outcome::Unknown => shared.record(store, id, what, false),
        Outcome::NotDone => lock(&shared.history).not_done(store),
    }
}

/// A random live contact of the store's latest snapshot.
fn pick(shared: &Shared, store: StoreId, rng: &mut SmallRng) -> Option<Target> {
    let snap = lock(&shared.latest).get(&store).cloned()?;
    let live: Vec<(&str, &crate::snapshot::Row)> = snap
        .live_rows()
        .filter_map(|(id, r)| Some((id?, r)))
        .filter(|(_, r)| store != StoreId::Twenty || r.person_id.is_some())
        .collect();
    if live.is_empty() {
        return None;
    }
    let (id, r) = live[rng.gen_range(0..live.len())];
    Some(Target {
        contact_id: id.to_string(),
        person_id: r.person_id.clone(),
        email: r.email.clone(),
    })
}

fn emails_json(email: &str) -> String {
    json!([{"address": email, "label": "home", "is_primary": true}]).to_string()
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// local.db, written with SQL as another program on this machine would.
pub struct SqliteUser {
    pub path: PathBuf,
    conn: Option<rusqlite::Connection>,
}

impl SqliteUser {
    pub fn new(path: PathBuf) -> SqliteUser {
        SqliteUser { path, conn: None }
    }

    /// Runs one statement: acknowledged when it changed one row. SQLite
    /// statements are atomic: an error means nothing was written.
    async fn exec(&mut self, sql: String, params: Vec<String>) -> Outcome {
        let path = self.path.clone();
        let conn = self.conn.take();
        let res = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => {
                    let c = rusqlite::Connection::open(&path)?;
                    c.busy_timeout(Duration::from_secs(5))?;
                    c
                }
            };
            let n = conn.execute(&sql, rusqlite::params_from_iter(params.iter()));
            Ok::<_, rusqlite::Error>((conn, n))
        })
        .await;
        match res {
            Ok(Ok((conn, n))) => {
                self.conn = Some(conn);
                match n {
                    Ok(1) => Outcome::Acked,
                    _ => Outcome::NotDone,
                }
            }
            _ => Outcome::NotDone,
        }
    }
}

#[async_trait]
impl StoreUser for SqliteUser {
    fn store(&self) -> StoreId {
        StoreId::Local
    }
    async fn edit(&mut self, t: &Target, field: usize, value: &str, _bump: bool) -> Outcome {
        let sql = format!(
            "UPDATE contacts SET {} = ?1 WHERE contact_id = ?2 AND deleted_at IS NULL",
            FIELDS[field].0
        );
        self.exec(sql, vec![value.into(), t.contact_id.clone()])
            .await
    }
    async fn create(&mut self, n: &New) -> Outcome {
        self.exec(
            "INSERT INTO contacts (contact_id, canonical_name, first_name, last_name, emails) \
             VALUES (?1, ?2, ?3, ?4, ?5)"
                .into(),
            vec![
                n.contact_id.clone(),
                format!("{} {}", n.first, n.last),
                n.first.clone(),
                n.last.clone(),
                emails_json(&n.email),
            ],
        )
        .await
    }
    async fn delete(&mut self, t: &Target, hard: bool) -> Outcome {
        if hard {
            self.exec(
                "DELETE FROM contacts WHERE contact_id = ?1 AND deleted_at IS NULL".into(),
                vec![t.contact_id.clone()],
            )
            .await
        } else {
            self.exec(
                "UPDATE contacts SET deleted_at = ?1 WHERE contact_id = ?2 AND deleted_at IS NULL"
                    .into(),
                vec![now_rfc3339(), t.contact_id.clone()],
            )
            .await
        }
    }
}

/// The Postgres store's table, written over a connection of its own
/// (re-established after an outage).
pub struct PgUser {
    url: String,
    client: Option<tokio_postgres::Client>,
}

impl PgUser {
    pub fn new(url: String) -> PgUser {
        PgUser { url, client: None }
    }

    async fn exec(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Outcome {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let connect = tokio_postgres::connect(&self.url, tokio_postgres::NoTls);
            match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok((client, conn))) => {
                    tokio::spawn(conn);
                    self.client = Some(client);
                }
                _ => return Outcome::NotDone,
            }
        }
        let Some(client) = self.client.as_ref() else {
            return Outcome::NotDone;
        };
        match tokio::time::timeout(Duration::from_secs(20), client.execute(sql, params)).await {
            Ok(Ok(1)) => Outcome::Acked,
            Ok(Ok(_)) => Outcome::NotDone,
            // The server refused the statement: nothing was written.
            Ok(Err(e)) if e.as_db_error().is_some() => Outcome::NotDone,
            // The connection broke after the statement was sent.
            _ => {
                self.client = None;
                Outcome::Unknown
            }
        }
    }
}

#[async_trait]
impl StoreUser for PgUser {
    fn store(&self) -> StoreId {
        StoreId::Postgres
    }
    async fn edit(&mut self, t: &Target, field: usize, value: &str, _bump: bool) -> Outcome {
        let sql = format!(
            "UPDATE contacts SET {} = $1 WHERE contact_id = $2 AND deleted_at IS NULL",
            FIELDS[field].0
        );
        self.exec(&sql, &[&value, &t.contact_id]).await
    }
    async fn create(&mut self, n: &New) -> Outcome {
        let name = format!("{} {}", n.first, n.last);
        let emails = emails_json(&n.email);
        self.exec(
            "INSERT INTO contacts (contact_id, canonical_name, first_name, last_name, emails) \
             VALUES ($1, $2, $3, $4, $5::text::jsonb)",
            &[&n.contact_id, &name, &n.first, &n.last, &emails],
        )
        .await
    }
    async fn delete(&mut self, t: &Target, hard: bool) -> Outcome {
        if hard {
            self.exec(
                "DELETE FROM contacts WHERE contact_id = $1 AND deleted_at IS NULL",
                &[&t.contact_id],
            )
            .await
        } else {
            self.exec(
                "UPDATE contacts SET deleted_at = now() WHERE contact_id = $1 AND deleted_at IS NULL",
                &[&t.contact_id],
            )
            .await
        }
    }
}

/// The canonical BigQuery table, written with DML through the REST API,
/// as an analyst's script would (half the edits bump `last_updated`).
pub struct BqUser {
    client: BigQueryClient,
    table: String,
}

impl BqUser {
    pub fn new(client: BigQueryClient, table: String) -> BqUser {
        BqUser { client, table }
    }

    async fn exec(&self, sql: String, params: Vec<QueryParam>) -> Outcome {
        match self
            .client
            .query(&sql, &params, "soak: a user's DML in BigQuery")
            .await
        {
            Ok(r) if r.dml_affected_rows == Some(1) => Outcome::Acked,
            Ok(_) => Outcome::NotDone,
            Err(_) => Outcome::Unknown,
        }
    }
}

#[async_trait]
impl StoreUser for BqUser {
    fn store(&self) -> StoreId {
        StoreId::Canonical
    }
    async fn edit(&mut self, t: &Target, field: usize, value: &str, bump: bool) -> Outcome {
        let bump = if bump {
            ", last_updated = CURRENT_TIMESTAMP()"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {} SET {} = @v{bump} WHERE contact_id = @id AND deleted_at IS NULL",
            self.table, FIELDS[field].0
        );
        self.exec(
            sql,
            vec![
                QueryParam::string("v", value),
                QueryParam::string("id", &t.contact_id),
            ],
        )
        .await
    }
    async fn create(&mut self, n: &New) -> Outcome {
        let sql = format!(
            "INSERT INTO {} (contact_id, canonical_name, first_name, last_name, emails, version, last_updated, created_at) \
             VALUES (@id, @name, @first, @last, [STRUCT(@email AS address, 'home' AS label, TRUE AS is_primary)], 1, CURRENT_TIMESTAMP(), CURRENT_TIMESTAMP())",
            self.table
        );
        self.exec(
            sql,
            vec![
                QueryParam::string("id", &n.contact_id),
                QueryParam::string("name", format!("{} {}", n.first, n.last)),
                QueryParam::string("first", &n.first),
                QueryParam::string("last", &n.last),
                QueryParam::string("email", &n.email),
            ],
        )
        .await
    }
    async fn delete(&mut self, t: &Target, hard: bool) -> Outcome {
        let sql = if hard {
            format!(
                "DELETE FROM {} WHERE contact_id = @id AND deleted_at IS NULL",
                self.table
            )
        } else {
            format!(
                "UPDATE {} SET deleted_at = CURRENT_TIMESTAMP(), last_updated = CURRENT_TIMESTAMP() \
                 WHERE contact_id = @id AND deleted_at IS NULL",
                self.table
            )
        };
        self.exec(sql, vec![QueryParam::string("id", &t.contact_id)])
            .await
    }
}

/// Twenty, through its REST API with the workspace's API key, as its UI
/// or an integration would.
pub struct TwentyUser {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl TwentyUser {
    pub fn new(base: String, key: String) -> TwentyUser {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        TwentyUser { http, base, key }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Outcome {
        match req.bearer_auth(&self.key).send().await {
            Ok(r) if r.status().is_success() => Outcome::Acked,
            Ok(r) if r.status().is_client_error() => Outcome::NotDone,
            Ok(_) => Outcome::Unknown,
            Err(e) if e.is_connect() => Outcome::NotDone,
            Err(_) => Outcome::Unknown,
        }
    }
}

#[async_trait]
impl StoreUser for TwentyUser {
    fn store(&self) -> StoreId {
        StoreId::Twenty
    }
    async fn edit(&mut self, t: &Target, field: usize, value: &str, _bump: bool) -> Outcome {
        let Some(pid) = &t.person_id else {
            return Outcome::NotDone;
        };
        let mut body = serde_json::Map::new();
        body.insert(FIELDS[field].1.into(), json!(value));
        let req = self
            .http
            .patch(format!("{}/rest/people/{pid}", self.base))
            .json(&body);
        self.send(req).await
    }
    async fn create(&mut self, n: &New) -> Outcome {
        let body = json!({
            "name": {"firstName": n.first, "lastName": n.last},
            "emails": {"primaryEmail": n.email, "additionalEmails": []},
        });
        let req = self
            .http
            .post(format!("{}/rest/people", self.base))
            .json(&body);
        self.send(req).await
    }
    async fn delete(&mut self, t: &Target, hard: bool) -> Outcome {
        let Some(pid) = &t.person_id else {
            return Outcome::NotDone;
        };
        let q = if hard { "" } else { "?soft_delete=true" };
        let req = self
            .http
            .delete(format!("{}/rest/people/{pid}{q}", self.base));
        self.send(req).await
    }
}
