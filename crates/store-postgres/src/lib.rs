//! The Postgres / Supabase store of contact-sync.
//!
//! ```text
//! let mut store = PgStore::connect(PgConfig::new("supabase", url)).await?;
//! store.migrate().await?;                 // table, indexes, triggers, CDC objects
//! let wake = store.change_notifier().await?;
//! loop {
//!     let batch = store.read_changes(checkpoint.as_ref(), 100).await?;
//!     // … apply, persist batch.checkpoint durably …
//!     store.acknowledge(&batch.checkpoint).await?;
//!     if !batch.has_more { wake.wait().await }   // or the poll interval
//! }
//! ```
//!
//! - **Table** (`migrate`): `id uuid` primary key, `contact_id text unique
//!   not null`, the 33 fields with JSONB for JSON and arrays, TIMESTAMPTZ
//!   for timestamps, `version bigint not null default 1`, `updated_at`
//!   maintained by a trigger; column names configurable
//!   ([`PgConfig::columns`]). Existing tables get missing columns added;
//!   JSON kept in TEXT columns is read too (broken JSON becomes
//!   [`ChangeKind::Undecodable`](contact_sync_connector::ChangeKind) naming
//!   the row id and field).
//! - **Kept content hashes**: the engine's writes keep the `content_hash`
//!   they carry (their transaction sets `contact_sync.writing = 'on'`); a
//!   BEFORE INSERT OR UPDATE trigger (enabled ALWAYS) clears it on every
//!   other write. `migrate` clears every value when it installs (or
//!   replaces) that trigger, so `scan_hashes` answers from the column and
//!   reads and hashes only rows without one. A store whose table lacks the
//!   trigger (no `migrate` since) trusts no hash.
//! - **Change capture** ([`CdcMode`]): a logical replication slot with the
//!   built-in `pgoutput` plugin and a publication, peeked with plain SQL
//!   (`pg_logical_slot_peek_binary_changes`), acknowledged with
//!   `pg_replication_slot_advance`; or a trigger + outbox table.
//!   Checkpoints: slot mode `X/Y` (end LSN of the last commit delivered) or
//!   `X/Y:n` (n changes of that transaction delivered); outbox mode the last
//!   outbox `seq`.
//! - **Own writes** ([`Provenance`]): in slot mode every write transaction
//!   carries the store's replication origin (`contact_sync_<slot>`, created
//!   at connect; needs superuser or EXECUTE on
//!   `pg_replication_origin_session_setup/_reset` and `_create`). The
//!   capture skips those transactions whole (PostgreSQL 15 sends them
//!   marked by an Origin message; 16+ is asked for `origin 'none'` when no
//!   other origin exists) and advances the slot over runs of them, so a
//!   backfill's WAL is neither delivered nor retained. A bulk load (the
//!   initial sync) nobody else wrote in is not even decoded: a statement
//!   trigger watches the table during it, and the capture advances the slot
//!   over its WAL in fast-forward (see `bulk`). Without the rights
//!   (logged at connect, shown by [`PgStore::slot_health`]) and in outbox
//!   mode, own writes come back carrying the kept `content_hash`: an image
//!   whose hash is set is one of the engine's own writes; a foreign write's
//!   image has none. Without the trigger, images carry none.
//! - **Reading the slot**: one peek (which decodes from the slot's restart
//!   point) fills a read-ahead that serves the following reads; while it
//!   lasts, acknowledgements advance the slot at most every 250 ms (the
//!   acknowledged position is kept, nothing acknowledged comes back).
//! - **Conditional writes** ([`Conditional::Atomic`](contact_sync_connector::Conditional)):
//!   `write_batch_if` locks the rows of conditional writes (`SELECT … FOR
//!   UPDATE`, in the write's transaction) and compares each with its
//!   `Expect` (kept hash first, else decode and hash); refused writes are
//!   `Changed` and not written; a write expecting no row is a plain insert
//!   (`ON CONFLICT DO NOTHING`), so a row inserted meanwhile is kept.
//! - **Blank ids**: a write carrying `external_ids[store]` = a row's `id`
//!   whose `contact_id` is blank/NULL gives that row its id in place.
//! - **Schema guard** (`StoreError::paused`): a mapped column missing from
//!   the table or from a change's relation, the table left out of the
//!   publication, a TRUNCATE (published; outbox: a statement trigger), the
//!   table dropped or re-created (oid recorded in `contact_sync_meta`) pause
//!   the store with a message naming table, column and the command to run;
//!   `migrate` never re-creates a lost column of a table it set up;
//!   `cdc_reset` forgets the recorded table so the next migrate adopts it.
//! - **Wake-ups**: a statement-level trigger NOTIFYs
//!   [`PgConfig::notify_channel`]; [`ChangeNotifier`] LISTENs.
//! - **Writes**: binary COPY into a temp staging table, then one
//!   `INSERT … ON CONFLICT (contact_id) DO UPDATE … WHERE stored version <=
//!   new version`, per batch, in one transaction.
//! - **Safety**: [`PgStore::slot_health`] (retained WAL, wal_level),
//!   [`PgStore::cdc_reset`].
//!
//! With the `test-harness` feature, [`harness`] starts private PostgreSQL
//! clusters for tests.

mod bulk;
mod capture;
mod codec;
mod config;
mod guard;
mod notify;
mod origin;
pub mod pgoutput;
mod store;
mod write;

#[cfg(feature = "test-harness")]
pub mod harness;

pub use config::{redact_url, CdcMode, PgConfig};
pub use notify::ChangeNotifier;
pub use origin::Provenance;
pub use store::{PgStore, SlotHealth};
