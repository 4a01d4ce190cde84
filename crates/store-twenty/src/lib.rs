//! Twenty CRM as a contact-sync store.
//!
//! # Wiring (for the engine / CLI)
//!
//! ```ignore
//! use contact_sync_twenty::{TwentyConfig, TwentyStore, Secret, webhook};
//!
//! let mut cfg = TwentyConfig::new("https://crm.example.com", Secret::new(api_key));
//! cfg.webhook_secret = Some(Secret::new(hook_secret));               // enables the receiver
//! cfg.webhook_url = Some("https://me.example.com/webhooks/twenty".into()); // registered by migrate
//! let mut store = TwentyStore::new(cfg)?;
//! store.migrate().await?;                 // `contact-sync migrate`: custom fields + webhook
//! let report = store.check().await?;      // `contact-sync check`: missing fields, webhook, clock
//! if let Some(rx) = store.webhook_receiver() {
//!     app = app.merge(webhook::router(rx.clone()));   // POST /webhooks/twenty
//!     let wake = rx.notify();                          // wake.notified().await → run a cycle
//! }
//! // then use it as any `Store` (ChangeSource + RecordSink + StoreInfo);
//! // `store.stats()` gives progress counters (requests, 429s, waits, records).
//! ```
//!
//! # Behaviour
//! - **Client**: Twenty's two windows per workspace (`requests_per_minute`
//!   per `rate_window`, default 100/60 s; `requests_per_short_window` per
//!   `short_rate_window`, default 100/1 s) kept with `governor`, one
//!   request per `window / limit` and no burst, because Twenty's buckets
//!   refill nothing between requests closer than that (see `client`); a
//!   429 (no `Retry-After`) is backed off with `backon` (jittered,
//!   exponential) and resumed: a long sync never fails because of the
//!   limit. 5xx/network errors are retried a few times, then a transient
//!   [`StoreError`]; 401/403 are permanent. Errors and logs never hold the
//!   API key.
//! - **Mapping** ([`mapping`]): Twenty's composite fields exactly, the rest
//!   in custom fields ([`mapping::CUSTOM_FIELDS`]); reading back normalizes
//!   (`""` and null JSON → absent, lower-cased emails) so an untouched
//!   record hashes like canonical. A phone's country is libphonenumber's
//!   (Twenty refuses a conflicting one), or left out. Only mapped fields
//!   (and sub-fields) are sent: a user's own custom fields and the avatar
//!   are never blanked. Twenty rewrites a LINKS composite whole, so
//!   `linkedinLink` is left out while its URL is the one last seen (a
//!   link's label and secondary links survive; see `keep_links`).
//! - **Writes** ([`RecordSink`]): deterministic ids
//!   (`identity::store_uuid(name, contact_id)`) + `?upsert=true` in batches
//!   of `batch_size` (default 200), so an initial sync of N contacts costs
//!   ceil(N / batch_size) requests plus provisioning (company lookups and
//!   creates). Answers are paired by person id, never by position (Twenty
//!   answers updated records first). A refused batch is split by the value
//!   its error quotes, else halved, until the refused records are alone;
//!   each is remembered with its content hash and not sent again until it
//!   changes. PATCH by id only for people created in Twenty (id in
//!   `external_ids[name]`, unless that person carries another contact's
//!   id); never a PATCH without id. A person in Twenty's trash is restored
//!   before such a PATCH (live Twenty would update it and leave it there).
//!   Tombstones: soft delete; erasure tombstones (`contact-sync forget`):
//!   destroy of every person of the contact, trash included (a soft-deleted
//!   person stays readable). Category X is
//!   not pushed (and soft-deleted when a contact becomes X) unless
//!   `include_excluded`.
//! - **Conditional writes** (`write_batch_if`): an update expected at a
//!   content hash is a PATCH filtered on id and the `updatedAt` of that
//!   hash (remembered from reads and writes, by contact id, or by person
//!   id for people created in Twenty without one, whose id the engine
//!   writes back; else looked up); an empty answer is `Changed` (live
//!   Twenty 2.21 confirmed it conditional: nothing is written). An erasure
//!   is never conditional. Creates stay upserts, hence
//!   `conditional_writes() = ReadThenWrite` (see `conditional`).
//! - **Changes** ([`ChangeSource`]): verified webhook events first (no
//!   checkpoint advance), then `updatedAt[gte]` polling, the durable
//!   catch-up path (Twenty never retries a webhook). Checkpoint = watermark
//!   and the ids seen near it, so nothing is missed or repeated. People created in
//!   Twenty arrive with an empty `contact_id` and `native_id` = person id.
//!   A destroyed person (plain `DELETE`) never shows in that poll: a sweep
//!   of every person id (every `destroy_sweep_every`, at most ~5 % of the
//!   request budget) reports those gone as `ChangeKind::Delete`. The first
//!   sweep of a process compares with what the engine's state database says
//!   the store holds (`ChangeSource::held`), so a person destroyed while
//!   the daemon was stopped is a delete too.
//! - **Version**: `keeps_version()` is false (see
//!   [`TwentyStore::keeps_version`](StoreInfo::keeps_version)).
//!
//! [`StoreError`]: contact_sync_connector::StoreError
//! [`RecordSink`]: contact_sync_connector::RecordSink
//! [`ChangeSource`]: contact_sync_connector::ChangeSource
//! [`StoreInfo`]: contact_sync_connector::StoreInfo

mod client;
mod conditional;
mod config;
pub mod mapping;
mod poll;
mod store;
pub mod webhook;

pub use client::TwentyStats;
pub use config::{Secret, TwentyConfig, MAX_BATCH};
pub use store::{CheckReport, MigrateReport, TwentyStore};
pub use webhook::{NonceCache, WebhookError, WebhookReceiver};

// Re-exported for the `StoreInfo` doc link above.
#[doc(hidden)]
pub use contact_sync_connector::StoreInfo;
