//! [`TwentyStore`]: the Twenty workspace as a contact-sync store.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeSource, Checkpoint, Conditional, Expect, HashScan, RecordHash,
    RecordSink, StoreError, StoreInfo, Unreadable, WriteOutcome,
};
use contact_sync_core::clock::ClockSkew;
use contact_sync_core::identity::store_uuid;
use contact_sync_core::{Contact, Timestamp};
use reqwest::Method;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::client::{enc, Client, StatsInner, TwentyStats};
use crate::config::{TwentyConfig, MAX_BATCH};
use crate::mapping::{
    contact_to_person, linkedin_url, person_id, person_to_contact, person_updated_at,
    CustomFieldSpec, CUSTOM_FIELDS,
};
use crate::poll::PollCheckpoint;
use crate::webhook::{NonceCache, WebhookReceiver};

/// Filter that lists soft-deleted and live people alike.
pub(crate) const ALL_ROWS: &str = "or(deletedAt[is]:NULL,deletedAt[is]:NOT_NULL)";
/// Ids per `[in]` filter (keeps URLs short).
pub(crate) const IDS_PER_QUERY: usize = 50;

/// What [`TwentyStore::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Custom fields created on Person now.
    pub fields_created: Vec<String>,
    /// Custom fields that were there already.
    pub fields_present: Vec<String>,
    /// The webhook: `Some(id)` when registered (now or before), `None`
    /// when no `webhook_url`/`webhook_secret` is configured.
    pub webhook_id: Option<String>,
    /// Whether the webhook was created by this run.
    pub webhook_created: bool,
}

/// What [`TwentyStore::check`] found (read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Custom fields `migrate` would create.
    pub missing_fields: Vec<String>,
    /// Fields present with another type: (name, expected, found).
    pub wrong_type_fields: Vec<(String, String, String)>,
    /// Whether a webhook to `webhook_url` is registered (`None` when no URL
    /// is configured).
    pub webhook_registered: Option<bool>,
    /// Live people in the workspace (with and without `contactId`).
    pub people: u64,
    /// Twenty's clock against this machine's, from the `Date` header of
    /// the last request (`None` when the answer had no readable one).
    pub clock_skew: Option<ClockSkew>,
}

/// The Twenty store. See the crate docs for the behaviour.
pub struct TwentyStore {
    pub(crate) cfg: TwentyConfig,
    pub(crate) client: Client,
    /// Company name → id, loaded once, extended on create.
    companies: Option<HashMap<String, String>>,
    pub(crate) receiver: Option<WebhookReceiver>,
    /// Person id → `updatedAt` of the last webhook change returned, to
    /// drop deliveries that arrive out of order.
    pub(crate) webhook_seen: HashMap<String, Timestamp>,
    /// When the last poll started: a cycle woken by webhooks skips the
    /// poll (it costs a request of a 100-per-minute budget) unless the last
    /// one is older than [`POLL_AT_LEAST_EVERY`].
    pub(crate) last_poll: Option<std::time::Instant>,
    /// What this store last read or wrote of each person (contact id →
    /// person id, `updatedAt`, content hashes): the `updatedAt` a
    /// conditional write names for the hash the engine expects.
    pub(crate) seen: HashMap<String, Seen>,
    /// The same for people without a `contactId` yet (created in Twenty),
    /// by person id: the state the engine's write-back of a contact id is
    /// conditional on.
    pub(crate) unlinked: HashMap<String, Seen>,
    /// Records Twenty refused: (contact id, content hash) → (field,
    /// reason). Not sent again until the record changes.
    pub(crate) refused: HashMap<(String, String), (String, String)>,
    /// Every person id (→ contact id) at the last destroy sweep.
    pub(crate) baseline: Option<HashMap<String, Option<String>>>,
    /// When the last destroy sweep ran, and how long it took.
    pub(crate) last_sweep: Option<std::time::Instant>,
    pub(crate) sweep_took: std::time::Duration,
    /// Destroys found by a sweep, returned by every read until acknowledged.
    pub(crate) unacked_destroys: Vec<Change>,
    /// Whether the engine told what its state says this store holds
    /// ([`ChangeSource::held`]).
    pub(crate) held_told: bool,
    /// Those people (person id → contact id), for the next sweep to compare
    /// with: a person destroyed while no engine ran is seen too.
    pub(crate) held: HashMap<String, Option<String>>,
}

/// What the store last saw of one person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub pid: String,
    pub updated_at: String,
    /// The content hashes this state of the person answers to: the hash of
    /// the person as read back and, after our own write, the hash of the
    /// record the engine wrote (they differ where Twenty rewrites a value,
    /// e.g. an empty JSON list stored as null).
    pub hashes: Vec<String>,
    /// The person's `linkedinLink` composite as last seen (see
    /// [`TwentyStore::keep_links`]).
    pub link: Option<Value>,
}

/// The catch-up poll runs at least this often even while webhooks keep
/// every cycle busy (Twenty never retries a lost webhook).
pub const POLL_AT_LEAST_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for TwentyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwentyStore")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn quote(s: &str) -> Option<String> {
    // Twenty's filter syntax has no escapes: a value holding a double quote
    // cannot be expressed.
    (!s.contains('"')).then(|| format!("\"{s}\""))
}

pub(crate) fn data_list<'a>(body: &'a Value, key: &str) -> Vec<&'a Value> {
    match body {
        Value::Array(a) => a.iter().collect(),
        _ => match body.get("data") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(Value::Object(o)) => o
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        },
    }
}

impl TwentyStore {
    /// A store for `cfg` (checked with [`TwentyConfig::validate`]). No
    /// request is sent until used.
    pub fn new(cfg: TwentyConfig) -> Result<TwentyStore, StoreError> {
        cfg.validate()
            .map_err(|e| StoreError::permanent(&cfg.name, e))?;
        let client = Client::new(&cfg)?;
        let receiver = cfg.webhook_secret.clone().map(|secret| WebhookReceiver {
            secret,
            nonces: std::sync::Arc::new(NonceCache::new()),
            queue: Default::default(),
            notify: Default::default(),
            stats: client.stats.clone(),
            store: cfg.name.clone(),
        });
        Ok(TwentyStore {
            cfg,
            client,
            companies: None,
            receiver,
            webhook_seen: HashMap::new(),
            last_poll: None,
            seen: HashMap::new(),
            unlinked: HashMap::new(),
            refused: HashMap::new(),
            baseline: None,
            last_sweep: None,
            sweep_took: std::time::Duration::ZERO,
            unacked_destroys: Vec::new(),
            held_told: false,
            held: HashMap::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TwentyConfig {
        &self.cfg
    }

    /// Counters: requests, 429s, retries, waits, records, webhooks.
    pub fn stats(&self) -> TwentyStats {
        self.client.stats.snapshot()
    }

    /// The webhook receiver (when `webhook_secret` is set): serve it with
    /// [`crate::webhook::router`] and await its [`WebhookReceiver::notify`].
    pub fn webhook_receiver(&self) -> Option<WebhookReceiver> {
        self.receiver.clone()
    }

    /// The person id Twenty holds (or will hold) for `contact_id`.
    pub fn person_id_for(&self, contact_id: &str) -> String {
        store_uuid(&self.cfg.name, contact_id).to_string()
    }

    pub(crate) fn err(&self, msg: impl Into<String>) -> StoreError {
        StoreError::permanent(&self.cfg.name, msg)
    }

    /// Records what a read or write showed of person `p` (decoded as `c`);
    /// `written` is the hash of the record we wrote, when this is our
    /// write's answer. An older state than the one kept is ignored.
    pub(crate) fn remember(&mut self, p: &Value, c: &Contact, written: Option<&str>) {
        let cid = c.contact_id.trim();
        let at = person_updated_at(p);
        if at.is_empty() {
            return;
        }
        let mut hashes = vec![contact_sync_core::content_hash(c)];
        if let Some(w) = written {
            if !hashes.iter().any(|h| h == w) {
                hashes.push(w.to_string());
            }
        }
        let pid = person_id(p).to_string();
        let link = p.get("linkedinLink").cloned();
        if cid.is_empty() {
            // Created in Twenty, no contact id yet (a new workspace has
            // five such demo people): remembered by person id.
            match self.unlinked.get(&pid) {
                Some(s) if s.updated_at.as_str() > at => {}
                _ => {
                    self.unlinked.insert(
                        pid.clone(),
                        Seen {
                            pid,
                            updated_at: at.to_string(),
                            hashes,
                            link,
                        },
                    );
                }
            }
            return;
        }
        self.unlinked.remove(&pid);
        if let Some(b) = self.baseline.as_mut() {
            b.insert(pid.clone(), Some(cid.to_string()));
        }
        match self.seen.get_mut(cid) {
            Some(s) if s.pid == pid && s.updated_at.as_str() > at => {}
            Some(s) if s.pid == pid && s.updated_at == at => {
                for h in hashes {
                    if !s.hashes.contains(&h) {
                        s.hashes.push(h);
                    }
                }
                s.link = link;
            }
            _ => {
                self.seen.insert(
                    cid.to_string(),
                    Seen {
                        pid,
                        updated_at: at.to_string(),
                        hashes,
                        link,
                    },
                );
            }
        }
    }

    /// Decodes a person read from Twenty and remembers it.
    pub(crate) fn decode_seen(&mut self, p: &Value) -> Result<Contact, contact_sync_core::Invalid> {
        let c = person_to_contact(p, &self.cfg.name)?;
        self.remember(p, &c, None);
        Ok(c)
    }

    // ---------- provisioning ----------

    /// The Person object's metadata id and its fields (name → type).
    async fn person_fields(&self) -> Result<(String, HashMap<String, String>), StoreError> {
        let body = self
            .client
            .send_ok(
                Method::GET,
                "/rest/metadata/objects?limit=1000",
                None,
                "listing objects",
            )
            .await?;
        let person = data_list(&body, "objects")
            .into_iter()
            .find(|o| o.get("nameSingular").and_then(Value::as_str) == Some("person"))
            .cloned()
            .ok_or_else(|| self.err("the workspace has no `person` object"))?;
        let object_id = person
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| self.err("the person object has no id"))?
            .to_string();
        let mut fields = HashMap::new();
        let collect = |list: Vec<&Value>, fields: &mut HashMap<String, String>| {
            for f in list {
                if let (Some(n), Some(t)) = (
                    f.get("name").and_then(Value::as_str),
                    f.get("type").and_then(Value::as_str),
                ) {
                    fields.insert(n.to_string(), t.to_string());
                }
            }
        };
        match person.get("fields").and_then(Value::as_array) {
            Some(list) => collect(list.iter().collect(), &mut fields),
            None => {
                // Objects without embedded fields: page through /fields.
                let mut after: Option<String> = None;
                loop {
                    let mut path = "/rest/metadata/fields?limit=1000".to_string();
                    if let Some(a) = &after {
                        path.push_str(&format!("&starting_after={}", enc(a)));
                    }
                    let body = self
                        .client
                        .send_ok(Method::GET, &path, None, "listing fields")
                        .await?;
                    let list: Vec<&Value> = data_list(&body, "fields")
                        .into_iter()
                        .filter(|f| {
                            f.get("objectMetadataId").and_then(Value::as_str) == Some(&object_id)
                        })
                        .collect();
                    collect(list, &mut fields);
                    let (next, cursor) = page_info(&body);
                    after = cursor;
                    if !next || after.is_none() {
                        break;
                    }
                }
            }
        }
        Ok((object_id, fields))
    }

    async fn webhooks(&self) -> Result<Vec<Value>, StoreError> {
        let body = self
            .client
            .send_ok(
                Method::GET,
                "/rest/metadata/webhooks",
                None,
                "listing webhooks",
            )
            .await?;
        Ok(data_list(&body, "webhooks").into_iter().cloned().collect())
    }

    /// Read-only: what `migrate` would do, and how many people there are.
    pub async fn check(&mut self) -> Result<CheckReport, StoreError> {
        let (_, fields) = self.person_fields().await?;
        let mut report = CheckReport::default();
        for f in CUSTOM_FIELDS {
            match fields.get(f.name) {
                None => report.missing_fields.push(f.name.to_string()),
                Some(t) if t != f.ty => {
                    report
                        .wrong_type_fields
                        .push((f.name.to_string(), f.ty.to_string(), t.clone()))
                }
                Some(_) => {}
            }
        }
        if let Some(url) = &self.cfg.webhook_url {
            let hooks = self.webhooks().await?;
            report.webhook_registered = Some(
                hooks
                    .iter()
                    .any(|w| w.get("targetUrl").and_then(Value::as_str) == Some(url)),
            );
        }
        let (body, skew) = self.count_people().await?;
        report.people = body.get("totalCount").and_then(Value::as_u64).unwrap_or(0);
        report.clock_skew = skew;
        Ok(report)
    }

    /// One page of one person (`totalCount` in the body), with the clock
    /// reading of its answer.
    async fn count_people(&self) -> Result<(Value, Option<ClockSkew>), StoreError> {
        let r = self
            .client
            .send(Method::GET, "/rest/people?limit=1", None)
            .await?;
        if !r.ok() {
            return Err(self.err(format!(
                "counting people: HTTP {}: {}",
                r.status,
                r.message()
            )));
        }
        let skew = r.timing.clock_skew();
        Ok((r.body, skew))
    }

    /// How far Twenty's clock is from this machine's: the `Date` header of
    /// one request (a page of one person) against the middle of its round
    /// trip. The header has whole seconds, so the result is at best ±0.5 s
    /// (see [`ClockSkew::uncertainty`]). An answer without a `Date` header
    /// is an error.
    pub async fn clock_skew(&self) -> Result<ClockSkew, StoreError> {
        self.count_people().await?.1.ok_or_else(|| {
            self.err("Twenty's answer has no readable Date header: its clock cannot be read")
        })
    }

    /// Provisions the workspace, idempotently: creates the missing custom
    /// fields on Person ([`CUSTOM_FIELDS`], listed first, so a second run
    /// creates nothing) and, when `webhook_url` and `webhook_secret` are
    /// set, registers the webhook (`POST /rest/metadata/webhooks`, person
    /// events) unless one to that URL exists. A field that exists with
    /// another type is a permanent error naming it.
    pub async fn migrate(&mut self) -> Result<MigrateReport, StoreError> {
        let (object_id, fields) = self.person_fields().await?;
        let mut report = MigrateReport::default();
        for f in CUSTOM_FIELDS {
            match fields.get(f.name) {
                Some(t) if t == f.ty => report.fields_present.push(f.name.to_string()),
                Some(t) => {
                    return Err(self.err(format!(
                        "Person field `{}` exists with type {t}, expected {} (holds `{}`); rename or remove it in Twenty",
                        f.name, f.ty, f.canonical
                    )))
                }
                None => {
                    self.create_field(&object_id, f).await?;
                    report.fields_created.push(f.name.to_string());
                }
            }
        }
        if let (Some(url), Some(secret)) = (&self.cfg.webhook_url, &self.cfg.webhook_secret) {
            let hooks = self.webhooks().await?;
            if let Some(w) = hooks
                .iter()
                .find(|w| w.get("targetUrl").and_then(Value::as_str) == Some(url))
            {
                report.webhook_id = w.get("id").and_then(Value::as_str).map(str::to_string);
            } else {
                let body = json!({
                    "targetUrl": url,
                    "operations": ["person.created", "person.updated", "person.deleted", "person.destroyed", "person.restored"],
                    "description": "contact-sync",
                    "secret": secret.expose(),
                });
                let r = self
                    .client
                    .send_ok(
                        Method::POST,
                        "/rest/metadata/webhooks",
                        Some(&body),
                        "registering the webhook",
                    )
                    .await?;
                report.webhook_id = r
                    .pointer("/data/createOneWebhook/id")
                    .or_else(|| r.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                report.webhook_created = true;
            }
        }
        tracing::info!(store = %self.cfg.name, created = report.fields_created.len(), present = report.fields_present.len(), webhook_created = report.webhook_created, "Twenty provisioned");
        Ok(report)
    }

    async fn create_field(&self, object_id: &str, f: &CustomFieldSpec) -> Result<(), StoreError> {
        let mut body = json!({
            "objectMetadataId": object_id,
            "type": f.ty,
            "name": f.name,
            "label": f.label,
            "description": format!("contact-sync: canonical `{}`", f.canonical),
            "isNullable": true,
        });
        if f.unique {
            body["isUnique"] = json!(true);
        }
        if f.ty == "NUMBER" {
            body["settings"] = json!({"decimals": 0, "type": "number"});
        }
        let r = self
            .client
            .send(Method::POST, "/rest/metadata/fields", Some(&body))
            .await?;
        if r.ok() {
            return Ok(());
        }
        // A retry after a lost response, or a concurrent migrate: accept the
        // field if it is there now with the right type.
        let (_, now) = self.person_fields().await?;
        if now.get(f.name).map(String::as_str) == Some(f.ty) {
            return Ok(());
        }
        Err(self.err(format!(
            "creating Person field `{}` ({}): HTTP {}: {}",
            f.name,
            f.ty,
            r.status,
            r.message()
        )))
    }

    /// Company ids for these names, creating the missing companies (in
    /// batches, with deterministic ids, so a retry creates nothing twice).
    pub(crate) async fn ensure_companies(&mut self, names: &[String]) -> Result<(), StoreError> {
        if names.is_empty() {
            return Ok(());
        }
        if self.companies.is_none() {
            let mut map = HashMap::new();
            let mut after: Option<String> = None;
            loop {
                let mut path = format!("/rest/companies?limit={MAX_BATCH}&order_by=id");
                if let Some(a) = &after {
                    path.push_str(&format!("&starting_after={}", enc(a)));
                }
                let body = self
                    .client
                    .send_ok(Method::GET, &path, None, "listing companies")
                    .await?;
                for c in data_list(&body, "companies") {
                    if let (Some(n), Some(id)) = (
                        c.get("name").and_then(Value::as_str),
                        c.get("id").and_then(Value::as_str),
                    ) {
                        map.entry(n.trim().to_string())
                            .or_insert_with(|| id.to_string());
                    }
                }
                let (next, cursor) = page_info(&body);
                after = cursor;
                if !next || after.is_none() {
                    break;
                }
            }
            self.companies = Some(map);
        }
        let known = self.companies.as_ref().cloned().unwrap_or_default();
        let mut missing: Vec<String> = names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty() && !known.contains_key(n))
            .collect();
        missing.sort();
        missing.dedup();
        let ns = format!("{}\u{1f}company", self.cfg.name);
        for chunk in missing.chunks(MAX_BATCH) {
            let body: Vec<Value> = chunk
                .iter()
                .map(|n| json!({"id": store_uuid(&ns, n).to_string(), "name": n}))
                .collect();
            let body = Value::Array(body);
            let r = self
                .client
                .send(
                    Method::POST,
                    "/rest/batch/companies?upsert=true",
                    Some(&body),
                )
                .await?;
            if !r.ok() {
                return Err(self.err(format!(
                    "creating {} companies: HTTP {}: {}",
                    chunk.len(),
                    r.status,
                    r.message()
                )));
            }
            let map = self.companies.get_or_insert_with(HashMap::new);
            for n in chunk {
                map.insert(n.clone(), store_uuid(&ns, n).to_string());
            }
        }
        Ok(())
    }

    pub(crate) fn company_for(&self, c: &Contact) -> Option<String> {
        let org = c.organization.as_deref()?.trim();
        self.companies.as_ref()?.get(org).cloned()
    }

    // ---------- low-level person operations ----------

    /// People by person id (live and soft-deleted): id → record.
    pub(crate) async fn people_by_ids(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Value>, StoreError> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().filter_map(|i| quote(i)).collect();
            if list.is_empty() {
                continue;
            }
            let filter = format!("and(id[in]:[{}],{ALL_ROWS})", list.join(","));
            for p in self.list_all(&filter, None, usize::MAX).await?.0 {
                out.insert(person_id(&p).to_string(), p);
            }
        }
        Ok(out)
    }

    /// Every person matching `filter` (paged), up to `max`.
    /// Returns the people and whether more were left.
    pub(crate) async fn list_all(
        &self,
        filter: &str,
        order_by: Option<&str>,
        max: usize,
    ) -> Result<(Vec<Value>, bool), StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let want = (max - out.len()).min(MAX_BATCH);
            let mut path = format!("/rest/people?limit={want}&filter={}", enc(filter));
            if let Some(o) = order_by {
                path.push_str(&format!("&order_by={}", enc(o)));
            }
            if let Some(a) = &after {
                path.push_str(&format!("&starting_after={}", enc(a)));
            }
            let body = self
                .client
                .send_ok(Method::GET, &path, None, "listing people")
                .await?;
            let page = data_list(&body, "people");
            StatsInner::add(&self.client.stats.records_read, page.len() as u64);
            out.extend(page.into_iter().cloned());
            let (next, cursor) = page_info(&body);
            after = cursor;
            if !next || after.is_none() {
                return Ok((out, next));
            }
            if out.len() >= max {
                return Ok((out, true));
            }
        }
    }

    pub(crate) async fn soft_delete(&self, pid: &str) -> Result<(), StoreError> {
        let r = self
            .client
            .send(
                Method::DELETE,
                &format!("/rest/people/{pid}?soft_delete=true"),
                None,
            )
            .await?;
        // 404: already soft-deleted or gone.
        if r.ok() || r.status == 404 {
            StatsInner::add(&self.client.stats.records_written, 1);
            Ok(())
        } else {
            Err(self.err(format!(
                "soft-deleting person {pid}: HTTP {}: {}",
                r.status,
                r.message()
            )))
        }
    }

    async fn restore(&self, pid: &str) -> Result<bool, StoreError> {
        let body = json!({
            "query": "mutation RestorePerson($id: UUID!) { restorePerson(id: $id) { id } }",
            "variables": {"id": pid},
        });
        let r = self
            .client
            .send(Method::POST, "/graphql", Some(&body))
            .await?;
        Ok(r.ok() && r.body.get("errors").is_none())
    }

    /// One upsert request for `bodies`: the people Twenty answered, by id.
    /// Live Twenty answers updated records first and created ones last
    /// (issue 13, observation 1), so answers are never paired by position.
    async fn upsert_batch(
        &self,
        bodies: &[Value],
    ) -> Result<Result<HashMap<String, Value>, crate::client::Reply>, StoreError> {
        let (path, payload) = if bodies.len() == 1 {
            ("/rest/people?upsert=true", bodies[0].clone())
        } else {
            (
                "/rest/batch/people?upsert=true",
                Value::Array(bodies.to_vec()),
            )
        };
        let r = self.client.send(Method::POST, path, Some(&payload)).await?;
        if !r.ok() {
            return Ok(Err(r));
        }
        let people: Vec<Value> = if bodies.len() == 1 {
            r.body
                .pointer("/data/createPerson")
                .cloned()
                .into_iter()
                .collect()
        } else {
            r.body
                .pointer("/data/createPeople")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        if people.len() != bodies.len() {
            return Err(StoreError::transient(
                &self.cfg.name,
                format!(
                    "upsert of {} people answered {} records",
                    bodies.len(),
                    people.len()
                ),
            ));
        }
        StatsInner::add(&self.client.stats.records_written, people.len() as u64);
        Ok(Ok(people
            .into_iter()
            .map(|p| (person_id(&p).to_string(), p))
            .collect()))
    }

    /// Upserts `items` (write index, body with `id`) in batches; sets their
    /// outcomes, pairing each answer with its request by person id (or
    /// `contactId`). An upsert onto a person in Twenty's trash restores it
    /// (live Twenty 2.21: tests/samples/live13/trash_upsert_same_id.json).
    /// A refused batch is not redone record by record: a record the error
    /// quotes is set aside, otherwise the batch is halved until the refused
    /// records are alone (about 2·log2(n) requests for one bad record in n). Each
    /// refused record is remembered with its content hash and not sent
    /// again until it changes.
    async fn upsert_all(
        &mut self,
        items: &[(usize, Value)],
        writes: &[Contact],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        let mut queue: Vec<Vec<(usize, Value)>> = items
            .chunks(self.cfg.batch_size)
            .rev()
            .map(|c| c.to_vec())
            .collect();
        // Created by this upsert although `keep_links` left their LinkedIn
        // URL out (destroyed in Twenty since the store last saw them).
        let mut relink: Vec<(usize, String, String)> = Vec::new();
        while let Some(group) = queue.pop() {
            let bodies: Vec<Value> = group.iter().map(|(_, b)| b.clone()).collect();
            let reply = match self.upsert_batch(&bodies).await? {
                Ok(answers) => {
                    for (i, body) in &group {
                        let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
                        let cid = writes[*i].contact_id.as_str();
                        let p = answers.get(id).or_else(|| {
                            answers
                                .values()
                                .find(|p| p.get("contactId").and_then(Value::as_str) == Some(cid))
                        });
                        let Some(p) = p else {
                            return Err(StoreError::transient(
                                &self.cfg.name,
                                format!("the upsert's answer holds no person for contact {cid}"),
                            ));
                        };
                        let p = p.clone();
                        if person_id(&p) != id {
                            // Twenty's upsert also matches on primary email:
                            // it updated another person than ours. Visible,
                            // never taken as this contact's person.
                            let other = person_id(&p).to_string();
                            tracing::warn!(store = %self.cfg.name, contact = %cid, person = %other, "Twenty's upsert matched the contact's primary email to another person and updated it");
                            outcomes[*i] = Some(WriteOutcome::Rejected {
                                field: "emails".into(),
                                reason: format!(
                                    "Twenty matched the primary email to person {other} (not {id}) and updated that person; resolve the shared email in Twenty"
                                ),
                            });
                            continue;
                        }
                        if let Ok(c) = person_to_contact(&p, &self.cfg.name) {
                            self.remember(&p, &c, Some(&hash_of(&writes[*i])));
                        }
                        let created = p.get("createdAt") == p.get("updatedAt");
                        if created && body.get("linkedinLink").is_none() {
                            if let Some(url) = linkedin_url(writes[*i].social_profiles.as_ref()) {
                                relink.push((*i, id.to_string(), url));
                            }
                        }
                        outcomes[*i] = Some(WriteOutcome::Applied {
                            native_id: person_id(&p).to_string(),
                        });
                    }
                    continue;
                }
                Err(r) => r,
            };
            if !(400..500).contains(&reply.status) {
                return Err(StoreError::transient(
                    &self.cfg.name,
                    format!(
                        "upserting {} people: HTTP {}: {}",
                        group.len(),
                        reply.status,
                        reply.message()
                    ),
                ));
            }
            tracing::debug!(store = %self.cfg.name, status = reply.status, records = group.len(), "batch upsert refused; isolating");
            if group.len() == 1 {
                let (i, _) = &group[0];
                self.refuse(&writes[*i], &reply, outcomes, *i);
                continue;
            }
            // A value quoted by the error (`Invalid string value 'x' for
            // email field …`) names the records holding it.
            if let Some(v) = quoted_value(&reply.message()) {
                let needle = Value::String(v).to_string();
                let (bad, rest): (Vec<_>, Vec<_>) = group
                    .iter()
                    .cloned()
                    .partition(|(_, b)| b.to_string().contains(&needle));
                if !bad.is_empty() && !rest.is_empty() {
                    for (i, _) in &bad {
                        self.refuse(&writes[*i], &reply, outcomes, *i);
                    }
                    queue.push(rest);
                    continue;
                }
            }
            let mut left = group;
            let right = left.split_off(left.len() / 2);
            queue.push(right);
            queue.push(left);
        }
        for (i, pid, url) in relink {
            let body = json!({"linkedinLink": {"primaryLinkUrl": url}});
            let r = self
                .client
                .send(Method::PATCH, &format!("/rest/people/{pid}"), Some(&body))
                .await?;
            if !r.ok() {
                return Err(StoreError::transient(
                    &self.cfg.name,
                    format!(
                        "writing the LinkedIn URL of person {pid}: HTTP {}: {}",
                        r.status,
                        r.message()
                    ),
                ));
            }
            if let Some(p) = r.body.pointer("/data/updatePerson").cloned() {
                if let Ok(c) = person_to_contact(&p, &self.cfg.name) {
                    self.remember(&p, &c, Some(&hash_of(&writes[i])));
                }
            }
        }
        Ok(())
    }

    /// Twenty's upsert matches a person in its trash by primary email,
    /// restores it and overwrites it (live Twenty 2.21:
    /// tests/samples/live13/trash_upsert_new_id_with_its_email.json answers
    /// 201 with the trashed person's id, `deletedAt` null, our fields laid
    /// over its own). So before the upserts of contacts this store has not
    /// seen yet, the trash is searched for their primary emails (one
    /// request for up to 50 emails or a trash of up to 200 people):
    /// - a trashed person carrying this contact's id is this contact's: the
    ///   upsert names it, and restores it;
    /// - one carrying another contact's id, or none, is not taken over: a
    ///   live contact is refused (`emails`, naming the person and its
    ///   contact; restore or destroy it in Twenty, then `drift --repair`),
    ///   a tombstone is done (Twenty never had this contact).
    async fn spare_the_trash(
        &mut self,
        upserts: Vec<(usize, Value)>,
        writes: &[Contact],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<Vec<(usize, Value)>, StoreError> {
        let email_of = |c: &Contact| {
            c.primary_email()
                .map(|e| e.trim().to_lowercase())
                .filter(|e| !e.is_empty())
        };
        let mut emails: Vec<String> = upserts
            .iter()
            .filter(|(i, _)| !self.seen.contains_key(&writes[*i].contact_id))
            .filter_map(|(i, _)| email_of(&writes[*i]))
            .collect();
        if emails.is_empty() {
            return Ok(upserts);
        }
        emails.sort();
        emails.dedup();
        const TRASH: &str = "deletedAt[is]:NOT_NULL";
        let mut trashed: Vec<Value> = Vec::new();
        let by_email = |emails: &[String]| -> Vec<String> {
            emails
                .chunks(IDS_PER_QUERY)
                .map(|chunk| {
                    let list: Vec<String> = chunk.iter().filter_map(|e| quote(e)).collect();
                    format!("and({TRASH},emails.primaryEmail[in]:[{}])", list.join(","))
                })
                .collect()
        };
        if emails.len() <= IDS_PER_QUERY {
            for f in by_email(&emails) {
                trashed.extend(self.list_all(&f, None, usize::MAX).await?.0);
            }
        } else {
            let (page, more) = self.list_all(TRASH, None, MAX_BATCH).await?;
            if more {
                for f in by_email(&emails) {
                    trashed.extend(self.list_all(&f, None, usize::MAX).await?.0);
                }
            } else {
                trashed = page;
            }
        }
        let mut in_trash: HashMap<String, &Value> = HashMap::new();
        for p in &trashed {
            let e = str_at(p, "/emails/primaryEmail").trim().to_lowercase();
            if !e.is_empty() {
                in_trash.insert(e, p);
            }
        }
        if in_trash.is_empty() {
            return Ok(upserts);
        }
        let mut kept = Vec::with_capacity(upserts.len());
        for (i, mut body) in upserts {
            let c = &writes[i];
            let id = body.get("id").and_then(Value::as_str).unwrap_or_default();
            let Some(p) = email_of(c).and_then(|e| in_trash.get(&e).copied()) else {
                kept.push((i, body));
                continue;
            };
            let tid = person_id(p).to_string();
            let holder = str_at(p, "/contactId").trim();
            if tid == id || self.seen.contains_key(&c.contact_id) {
                kept.push((i, body));
            } else if holder == c.contact_id {
                tracing::info!(store = %self.cfg.name, contact = %c.contact_id, person = %tid, "the contact's person is in Twenty's trash: restoring it");
                body["id"] = json!(tid);
                kept.push((i, body));
            } else if c.is_deleted() || !self.accepts(c) {
                outcomes[i] = Some(WriteOutcome::Applied {
                    native_id: id.to_string(),
                });
            } else {
                let whose = if holder.is_empty() {
                    "no contact id".to_string()
                } else {
                    format!("contact {holder}")
                };
                tracing::warn!(store = %self.cfg.name, contact = %c.contact_id, person = %tid, "primary email held by another contact's person in Twenty's trash; not taken over");
                outcomes[i] = Some(WriteOutcome::Rejected {
                    field: "emails".into(),
                    reason: format!(
                        "the primary email is that of person {tid} in Twenty's trash ({whose}); Twenty's upsert would restore that person and overwrite it with this contact. Restore it in Twenty (it is another contact) or destroy it, then run `contact-sync drift --repair`"
                    ),
                });
            }
        }
        Ok(kept)
    }

    /// Erasure tombstones ([`Contact::is_erasure`]): every person of the
    /// contact — its own id, the person it is mapped to, any person
    /// carrying its `contactId`, live or in the trash — is destroyed
    /// (`DELETE /rest/people/{id}`, no `soft_delete`). A soft delete would
    /// keep every field readable with a `deletedAt` filter, and the
    /// history of its edits in its timeline, until Twenty's trash
    /// retention (14 days by default) ends; a destroy removes the person
    /// and its timeline (issue 13 live run:
    /// tests/samples/live13/trash_list_with_deletedAt_filter.json,
    /// timeline_after_destroy.json). Nothing is created for a contact
    /// Twenty never had. Costs one list per 50 contacts and one DELETE per
    /// person.
    async fn erase_people(
        &mut self,
        items: &[(usize, String)],
        writes: &[Contact],
        outcomes: &mut [Option<WriteOutcome>],
    ) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut targets: Vec<String> = Vec::new();
        for (i, pid) in items {
            targets.push(pid.clone());
            targets.push(self.person_id_for(&writes[*i].contact_id));
        }
        let cids: Vec<String> = items
            .iter()
            .map(|(i, _)| writes[*i].contact_id.clone())
            .collect();
        for chunk in cids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().filter_map(|i| quote(i)).collect();
            if list.is_empty() {
                continue;
            }
            let filter = format!("and(contactId[in]:[{}],{ALL_ROWS})", list.join(","));
            for p in self.list_all(&filter, None, usize::MAX).await?.0 {
                targets.push(person_id(&p).to_string());
            }
        }
        targets.sort();
        targets.dedup();
        for pid in &targets {
            self.destroy(pid).await?;
        }
        for (i, pid) in items {
            self.seen.remove(&writes[*i].contact_id);
            outcomes[*i] = Some(WriteOutcome::Applied {
                native_id: pid.clone(),
            });
        }
        Ok(())
    }

    /// `DELETE /rest/people/{id}`: destroys the person (404: gone
    /// already). Our own destroy is no change to report: the person leaves
    /// the destroy sweep's baseline.
    async fn destroy(&mut self, pid: &str) -> Result<(), StoreError> {
        let r = self
            .client
            .send(Method::DELETE, &format!("/rest/people/{pid}"), None)
            .await?;
        if !(r.ok() || r.status == 404) {
            return Err(self.err(format!(
                "destroying person {pid}: HTTP {}: {}",
                r.status,
                r.message()
            )));
        }
        if r.ok() {
            StatsInner::add(&self.client.stats.records_written, 1);
        }
        if let Some(b) = self.baseline.as_mut() {
            b.remove(pid);
        }
        self.held.remove(pid);
        self.webhook_seen.remove(pid);
        Ok(())
    }

    /// Sets the outcome of a record Twenty refused and remembers it.
    fn refuse(
        &mut self,
        c: &Contact,
        r: &crate::client::Reply,
        outcomes: &mut [Option<WriteOutcome>],
        i: usize,
    ) {
        let field = refused_field(r).to_string();
        let reason = format!(
            "Twenty refused the person (HTTP {}): {}",
            r.status,
            r.message()
        );
        self.refused.insert(
            (c.contact_id.clone(), hash_of(c)),
            (field.clone(), reason.clone()),
        );
        outcomes[i] = Some(WriteOutcome::Rejected { field, reason });
    }

    /// Up to `limit` people with `contactId > after` in `contactId` order:
    /// the readable ones as contacts, the others as [`Unreadable`] (logged,
    /// values masked), and the last `contactId` of the page.
    async fn scan_people(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Contact>, Vec<Unreadable>, Option<String>), StoreError> {
        let after = after.unwrap_or("");
        let Some(q) = quote(after) else {
            return Err(self.err(format!(
                "cannot scan after {after:?}: contains a double quote"
            )));
        };
        let filter = format!("and(contactId[gt]:{q},{ALL_ROWS})");
        let (people, _) = self.list_all(&filter, Some("contactId,id"), limit).await?;
        let mut out = Vec::with_capacity(people.len());
        let mut unreadable = Vec::new();
        let mut last = None;
        for p in people.iter().take(limit) {
            let cid = p
                .get("contactId")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_string();
            match self.decode_seen(p) {
                Ok(c) => out.push(c),
                Err(invalid) => {
                    tracing::warn!(store = %self.cfg.name, person = %person_id(p), field = %invalid.field, error = %invalid.log_reason(), "scan: person cannot be read as a contact; left out of the scan");
                    unreadable.push(Unreadable {
                        contact_id: cid.clone(),
                        native_id: person_id(p).to_string(),
                        invalid,
                    });
                }
            }
            last = Some(cid);
        }
        Ok((out, unreadable, last))
    }

    fn body_with_id(&self, c: &Contact, pid: &str) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(pid));
        m.extend(self.person_body(c));
        Value::Object(m)
    }

    /// The write body of a live contact: [`contact_to_person`], its
    /// `linkedinLink` as [`keep_links`](Self::keep_links) says.
    pub(crate) fn person_body(&self, c: &Contact) -> Map<String, Value> {
        let mut body = contact_to_person(c, self.company_for(c).as_deref());
        self.keep_links(&c.contact_id, &mut body);
        body
    }

    /// Live Twenty 2.21 rewrites a LINKS composite whole: a write of
    /// `linkedinLink` with only `primaryLinkUrl` blanks the label and the
    /// secondary links a user set in Twenty
    /// (tests/samples/live13/partial_composites.json). So when the person
    /// was last seen with the contact's LinkedIn URL, `linkedinLink` is
    /// left out of the write; when the URL changed, the label and secondary
    /// links last seen go along with the new URL. A URL removed clears the
    /// composite (Twenty would promote a secondary link to primary). With
    /// nothing seen of the person (a new one, or a store just started)
    /// the URL is written alone. A person an upsert creates although its
    /// URL was left out (destroyed in Twenty since last seen) gets it in a
    /// follow-up PATCH (`upsert_all`).
    pub(crate) fn keep_links(&self, contact_id: &str, body: &mut Map<String, Value>) {
        let Some(seen) = self
            .seen
            .get(contact_id)
            .and_then(|s| s.link.as_ref())
            .and_then(Value::as_object)
        else {
            return;
        };
        let url = |m: &Map<String, Value>| {
            m.get("primaryLinkUrl")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let Some(Value::Object(new)) = body.get("linkedinLink") else {
            return;
        };
        let (new_url, old_url) = (url(new), url(seen));
        if new_url == old_url {
            body.remove("linkedinLink");
        } else if !new_url.is_empty() {
            let mut link = seen.clone();
            link.insert("primaryLinkUrl".into(), json!(new_url));
            body.insert("linkedinLink".into(), Value::Object(link));
        }
    }

    /// The person id a write targets: a user-created person named by
    /// `external_ids[name]`, else the deterministic id.
    fn target_id(&self, c: &Contact) -> (String, bool) {
        let own = self.person_id_for(&c.contact_id);
        match c.external_ids.get(&self.cfg.name) {
            Some(pid) if Uuid::parse_str(pid).is_ok() && *pid != own => (pid.clone(), true),
            _ => (own, false),
        }
    }
}

impl StoreInfo for TwentyStore {
    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// False: the version is written to the `contactVersion` custom field
    /// and read back, but people edit records in Twenty without bumping
    /// it, so it says nothing about the record's state; Twenty changes
    /// count as base version + 1.
    fn keeps_version(&self) -> bool {
        false
    }

    /// Category X (Exclude) only when `include_excluded` is set.
    fn accepts(&self, contact: &Contact) -> bool {
        self.cfg.include_excluded || contact.category_code.as_deref() != Some("X")
    }

    /// Updates are atomic (a PATCH filtered on id and `updatedAt`), but
    /// creates are upserts and tombstones a conditional PATCH then a soft
    /// delete: see the `conditional` module for the windows.
    fn conditional_writes(&self) -> Conditional {
        Conditional::ReadThenWrite
    }
}

#[async_trait]
impl RecordSink for TwentyStore {
    /// Live contacts: one `POST /rest/batch/people?upsert=true` per
    /// `batch_size` with deterministic ids (a contact whose
    /// `external_ids[name]` holds another person id, a person created in
    /// Twenty, is PATCHed by that id instead). Tombstones: the person's
    /// `contactDeletedAt` is PATCHed and it is soft-deleted (created first
    /// when Twenty never had it). Contacts the store does not accept
    /// (category X): soft-deleted when Twenty has them live, otherwise
    /// left out. No version guard (see `keeps_version`).
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut outcomes: Vec<Option<WriteOutcome>> = vec![None; writes.len()];
        // The last write of each contact in the batch speaks for all.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, c) in writes.iter().enumerate() {
            last.insert(c.contact_id.as_str(), i);
        }
        let mut upserts: Vec<(usize, Value)> = Vec::new();
        let mut patches: Vec<(usize, String)> = Vec::new();
        let mut removals: Vec<(usize, String, bool)> = Vec::new(); // (idx, pid, accepted)
        let mut erasures: Vec<(usize, String)> = Vec::new();
        let orgs: Vec<String> = writes
            .iter()
            .filter(|c| !c.is_deleted() && self.accepts(c))
            .filter_map(|c| c.organization.clone())
            .collect();
        self.ensure_companies(&orgs).await?;
        // Twenty's upsert also matches on primary email: two contacts of one
        // batch sharing it would land on one person. The later one is refused.
        let mut emails_in_batch: HashMap<String, &str> = HashMap::new();
        for (i, c) in writes.iter().enumerate() {
            if last.get(c.contact_id.as_str()) != Some(&i) {
                continue;
            }
            if !c.is_deleted() && self.accepts(c) {
                if let Some(e) = c.primary_email().map(|e| e.trim().to_lowercase()) {
                    if let Some(other) = emails_in_batch.get(&e) {
                        outcomes[i] = Some(WriteOutcome::Rejected {
                            field: "emails".into(),
                            reason: format!(
                                "primary email is also the primary email of contact {other}; Twenty would merge them into one person"
                            ),
                        });
                        continue;
                    }
                    emails_in_batch.insert(e, c.contact_id.as_str());
                }
            }
            if c.contact_id.trim().is_empty() {
                outcomes[i] = Some(WriteOutcome::Rejected {
                    field: "contact_id".into(),
                    reason: "is missing".into(),
                });
                continue;
            }
            // Refused before and unchanged since: not sent again (issue 13,
            // observation 6).
            if let Some((field, reason)) = self
                .refused
                .get(&(c.contact_id.clone(), hash_of(c)))
                .cloned()
            {
                outcomes[i] = Some(WriteOutcome::Rejected { field, reason });
                continue;
            }
            let (pid, external) = self.target_id(c);
            let accepted = self.accepts(c);
            if c.is_erasure() {
                erasures.push((i, pid));
            } else if c.is_deleted() || !accepted {
                removals.push((i, pid, accepted));
            } else if external {
                patches.push((i, pid));
            } else {
                upserts.push((i, self.body_with_id(c, &pid)));
            }
        }

        // People created in Twenty: PATCH by their id, unless that person
        // now carries another contact's id (a mapping broken by the old
        // position pairing, issue 13 observation 1): then the contact is
        // written under its own id and the outcome's id repairs the mapping.
        let mut in_trash: HashSet<String> = HashSet::new();
        if !patches.is_empty() {
            let ids: Vec<String> = patches.iter().map(|(_, p)| p.clone()).collect();
            let held = self.people_by_ids(&ids).await?;
            in_trash = held
                .iter()
                .filter(|(_, p)| !p.get("deletedAt").is_none_or(Value::is_null))
                .map(|(id, _)| id.clone())
                .collect();
            let mut kept = Vec::with_capacity(patches.len());
            for (i, pid) in patches {
                let c = &writes[i];
                let other = held
                    .get(&pid)
                    .and_then(|p| p.get("contactId"))
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|o| !o.is_empty() && *o != c.contact_id);
                if let Some(other) = other {
                    tracing::warn!(store = %self.cfg.name, contact = %c.contact_id, person = %pid, other = %other, "the mapped person carries another contact id; writing the contact under its own person id");
                    let own = self.person_id_for(&c.contact_id);
                    upserts.push((i, self.body_with_id(c, &own)));
                } else {
                    kept.push((i, pid));
                }
            }
            patches = kept;
        }
        for (i, pid) in patches {
            let c = &writes[i];
            // In Twenty's trash: a PATCH by id would update the person and
            // leave it there (live Twenty 2.21,
            // tests/samples/live13/trash_patch_by_id.json): bring it back
            // first.
            if in_trash.contains(&pid) && !self.restore(&pid).await? {
                outcomes[i] = Some(WriteOutcome::Rejected {
                    field: "record".into(),
                    reason: format!("Twenty did not restore person {pid} from its trash"),
                });
                continue;
            }
            let body = Value::Object(self.person_body(c));
            let r = self
                .client
                .send(Method::PATCH, &format!("/rest/people/{pid}"), Some(&body))
                .await?;
            if r.ok() {
                StatsInner::add(&self.client.stats.records_written, 1);
                if let Some(p) = r.body.pointer("/data/updatePerson").cloned() {
                    if let Ok(back) = person_to_contact(&p, &self.cfg.name) {
                        self.remember(&p, &back, Some(&hash_of(c)));
                    }
                }
                outcomes[i] = Some(WriteOutcome::Applied { native_id: pid });
            } else if r.status == 404 {
                // Gone from Twenty: write it under our own id.
                let own = self.person_id_for(&c.contact_id);
                upserts.push((i, self.body_with_id(c, &own)));
            } else if (400..500).contains(&r.status) {
                self.refuse(c, &r, &mut outcomes, i);
            } else {
                return Err(StoreError::transient(
                    &self.cfg.name,
                    format!("updating person {pid}: HTTP {}: {}", r.status, r.message()),
                ));
            }
        }

        // Removals need to know what Twenty holds.
        let mut create_then_delete: Vec<usize> = Vec::new();
        let mut to_soft_delete: Vec<(usize, String, bool)> = Vec::new();
        if !removals.is_empty() {
            let ids: Vec<String> = removals.iter().map(|(_, p, _)| p.clone()).collect();
            let held = self.people_by_ids(&ids).await?;
            for (i, pid, accepted) in removals {
                let live = held
                    .get(&pid)
                    .map(|p| p.get("deletedAt").is_none_or(Value::is_null));
                match (live, accepted) {
                    (Some(true), _) => to_soft_delete.push((i, pid, accepted)),
                    (Some(false), _) | (None, false) => {
                        outcomes[i] = Some(WriteOutcome::Applied { native_id: pid })
                    }
                    (None, true) => {
                        upserts.push((i, self.body_with_id(&writes[i], &pid)));
                        create_then_delete.push(i);
                    }
                }
            }
        }

        let upserts = self.spare_the_trash(upserts, writes, &mut outcomes).await?;
        self.upsert_all(&upserts, writes, &mut outcomes).await?;
        self.erase_people(&erasures, writes, &mut outcomes).await?;

        for i in create_then_delete {
            if let Some(WriteOutcome::Applied { native_id }) = &outcomes[i] {
                let pid = native_id.clone();
                self.soft_delete(&pid).await?;
            }
        }
        for (i, pid, accepted) in to_soft_delete {
            let c = &writes[i];
            if accepted {
                // Keep the canonical tombstone's time and version.
                let mut body = Map::new();
                let full = contact_to_person(c, None);
                for k in ["contactDeletedAt", "contactVersion", "lastUpdatedBy"] {
                    if let Some(v) = full.get(k) {
                        body.insert(k.to_string(), v.clone());
                    }
                }
                let r = self
                    .client
                    .send(
                        Method::PATCH,
                        &format!("/rest/people/{pid}"),
                        Some(&Value::Object(body)),
                    )
                    .await?;
                if !r.ok() && r.status != 404 {
                    return Err(self.err(format!(
                        "marking person {pid} deleted: HTTP {}: {}",
                        r.status,
                        r.message()
                    )));
                }
            }
            self.soft_delete(&pid).await?;
            outcomes[i] = Some(WriteOutcome::Applied { native_id: pid });
        }

        // Duplicates in the batch share the outcome of the last write.
        let mut out = Vec::with_capacity(writes.len());
        for (i, c) in writes.iter().enumerate() {
            let j = last.get(c.contact_id.as_str()).copied().unwrap_or(i);
            out.push(outcomes[j].clone().ok_or_else(|| {
                StoreError::transient(
                    &self.cfg.name,
                    format!("no outcome for contact {} (internal)", c.contact_id),
                )
            })?);
        }
        Ok(out)
    }

    /// Updates conditional on a content hash are filtered PATCHes (see the
    /// `conditional` module); everything else as `write_batch`.
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        self.conditional_batch(writes, expect).await
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        let mut by_cid: HashMap<String, Contact> = HashMap::new();
        let wanted: HashSet<&str> = contact_ids.iter().map(String::as_str).collect();
        for chunk in contact_ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().filter_map(|i| quote(i)).collect();
            if list.is_empty() {
                continue;
            }
            let filter = format!("and(contactId[in]:[{}],{ALL_ROWS})", list.join(","));
            for p in self.list_all(&filter, None, usize::MAX).await?.0 {
                let c = self
                    .decode_seen(&p)
                    .map_err(|e| self.err(format!("reading person {}: {e}", person_id(&p))))?;
                if !wanted.contains(c.contact_id.as_str()) {
                    continue;
                }
                // A live record wins over a soft-deleted duplicate.
                match by_cid.get(&c.contact_id) {
                    Some(prev) if !prev.is_deleted() && c.is_deleted() => {}
                    _ => {
                        by_cid.insert(c.contact_id.clone(), c);
                    }
                }
            }
        }
        Ok(by_cid.into_values().collect())
    }

    /// One undecodable person must not break drift or a full scan (issue
    /// 13, observation 7): it is logged (values masked) and left out;
    /// polling reports it as `Undecodable` (a dead letter), and
    /// [`scan_hashes_checked`](RecordSink::scan_hashes_checked) names it.
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        Ok(self.scan_people(after, limit).await?.0)
    }

    /// The same people as `scan` plus, per person that cannot be read as a
    /// contact, its person id, contact id, field and reason (drift reports
    /// them).
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        let (people, unreadable, last) = self.scan_people(after, limit).await?;
        Ok(HashScan {
            hashes: people.into_iter().map(RecordHash::of).collect(),
            unreadable,
            last,
        })
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        let path = format!("/rest/people?limit=1&filter={}", enc("contactId[gt]:\"\""));
        let body = self
            .client
            .send_ok(Method::GET, &path, None, "counting people")
            .await?;
        body.get("totalCount")
            .and_then(Value::as_u64)
            .ok_or_else(|| self.err("counting people: no totalCount in the answer"))
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        let mut preds: Vec<String> = Vec::new();
        let emails: Vec<String> = emails
            .iter()
            .map(|e| e.trim().to_lowercase())
            .filter(|e| !e.is_empty())
            .filter_map(|e| quote(&e))
            .collect();
        for chunk in emails.chunks(IDS_PER_QUERY) {
            preds.push(format!("emails.primaryEmail[in]:[{}]", chunk.join(",")));
        }
        for ph in phones {
            let (num, _, cc) = crate::mapping::split_phone(ph.trim());
            let (Some(n), Some(c)) = (quote(&num), quote(&cc)) else {
                continue;
            };
            if num.is_empty() {
                continue;
            }
            preds.push(if cc.is_empty() {
                format!("phones.primaryPhoneNumber[eq]:{n}")
            } else {
                format!(
                    "and(phones.primaryPhoneNumber[eq]:{n},phones.primaryPhoneCallingCode[eq]:{c})"
                )
            });
        }
        let mut out: HashMap<String, Contact> = HashMap::new();
        for group in preds.chunks(20) {
            let filter = if group.len() == 1 {
                group[0].clone()
            } else {
                format!("or({})", group.join(","))
            };
            for p in self.list_all(&filter, None, usize::MAX).await?.0 {
                if let Ok(c) = person_to_contact(&p, &self.cfg.name) {
                    if !c.contact_id.is_empty() && !c.is_deleted() {
                        out.insert(c.contact_id.clone(), c);
                    }
                }
            }
        }
        Ok(out.into_values().collect())
    }
}

#[async_trait]
impl ChangeSource for TwentyStore {
    /// Queued webhook changes first (checkpoint unchanged, `has_more` set
    /// so the engine reads on); then `updatedAt[gte]` polling with
    /// `order_by=updatedAt,id`, cursor paging, soft-deleted rows included.
    /// People created in Twenty come with an empty `contact_id` and
    /// `native_id` = person id.
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        if let Some(rx) = self.receiver.clone() {
            let events = rx.drain(limit.max(1));
            if !events.is_empty() {
                let changes: Vec<Change> =
                    events.iter().filter_map(|e| self.decode_event(e)).collect();
                let checkpoint = from
                    .cloned()
                    .unwrap_or_else(|| PollCheckpoint::default().encode());
                let poll_due = self
                    .last_poll
                    .is_none_or(|t| t.elapsed() >= POLL_AT_LEAST_EVERY);
                return Ok(ChangeBatch {
                    changes,
                    checkpoint,
                    has_more: rx.queued() > 0 || poll_due,
                });
            }
        }
        self.poll(from, limit).await
    }

    /// Polling keeps no state in Twenty; destroys found by a sweep are
    /// returned by every read until an acknowledge follows them.
    async fn acknowledge(&mut self, _upto: &Checkpoint) -> Result<(), StoreError> {
        self.unacked_destroys.clear();
        Ok(())
    }

    /// Wanted once: the first destroy sweep compares with it, so a person
    /// destroyed while the daemon was stopped is reported (issue 13,
    /// observation 4).
    fn wants_held(&self) -> bool {
        !self.held_told
    }

    /// A read polls (a request of the 100-per-minute budget) unless
    /// webhook events are queued.
    fn metered_reads(&self) -> bool {
        true
    }

    fn held(&mut self, records: Vec<(String, String)>) {
        self.held_told = true;
        self.held = records
            .into_iter()
            .filter(|(_, pid)| Uuid::parse_str(pid).is_ok())
            .map(|(cid, pid)| (pid, Some(cid)))
            .collect();
    }
}

/// `pageInfo` of a list response: whether another page follows, and the
/// cursor to ask for it with.
pub(crate) fn page_info(body: &Value) -> (bool, Option<String>) {
    let next = body
        .pointer("/pageInfo/hasNextPage")
        .and_then(Value::as_bool)
        == Some(true);
    let cursor = body
        .pointer("/pageInfo/endCursor")
        .and_then(Value::as_str)
        .map(str::to_string);
    (next, cursor)
}

/// The content hash of a record as the engine computes it.
pub(crate) fn hash_of(c: &Contact) -> String {
    RecordHash::of(c.clone()).hash
}

/// The first value quoted in single quotes in Twenty's error text, e.g.
/// `not-an-email` in `Invalid string value 'not-an-email' for email field
/// "emails.primaryEmail"` (issue 13's live observations).
fn quoted_value(msg: &str) -> Option<String> {
    let start = msg.find('\'')? + 1;
    let len = msg[start..].find('\'')?;
    let v = &msg[start..start + len];
    (!v.is_empty()).then(|| v.to_string())
}

/// The contact field a Twenty refusal names, from its body (`code`,
/// message): phones for `CONFLICTING_PHONE_COUNTRY_CODE` and
/// `INVALID_PHONE_NUMBER`, emails for an email value or a duplicate, else
/// `record`.
pub(crate) fn refused_field(r: &crate::client::Reply) -> &'static str {
    let code = r.body.get("code").and_then(Value::as_str).unwrap_or("");
    let msg = r.message().to_lowercase();
    if code.contains("PHONE") || msg.contains("phone") {
        "phones"
    } else if msg.contains("email") || r.is_duplicate() {
        "emails"
    } else {
        "record"
    }
}

/// The string at `ptr` in `p`, empty when absent or not a string.
fn str_at<'a>(p: &'a Value, ptr: &str) -> &'a str {
    p.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}
