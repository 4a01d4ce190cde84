//! BigQuery as the daemon's canonical store, beyond what the engine does
//! with it: the analytics copy of the journal (`journal_table`) and what
//! BigQuery cost per cycle and per day.
//!
//! - **Journal table**: after each cycle, journal entries after a cursor
//!   kept in the state database (meta `journal_consumer:bigquery:<dataset>.<table>`)
//!   are appended with [`BigQueryStore::append_journal_rows`] (an
//!   idempotent MERGE by `seq`), in batches; the cursor advances only after
//!   BigQuery answered, so a failed append (transient or not) is retried
//!   at the next cycle and a retry inserts nothing twice. Retention
//!   (`contact-sync compact`) keeps every entry after a
//!   `journal_consumer:` cursor.
//! - **Cost**: the client's counters (shared by every clone of the client,
//!   so the engine's polls, sweeps, reads and MERGEs count as well as the
//!   journal appends) are read before and after each cycle; the difference
//!   goes into the cycle log line, and with the day's running total into
//!   the state database (meta `bigquery_usage:canonical`) for `status`;
//!   `/metrics` gets the process's totals as counters.

use anyhow::Context;
use contact_sync_bigquery::{BigQueryClient, BigQueryStore, StatsSnapshot};
use contact_sync_connector::Store;
use contact_sync_engine::CANONICAL;
use contact_sync_state::StateDb;
use serde::{Deserialize, Serialize};

use crate::config::{Config, StoreConfig};
use crate::stores;

// Retention keeps what a `journal_consumer:` cursor has not read.
use contact_sync_state::JOURNAL_CONSUMER_PREFIX;

/// Meta key of the canonical store's BigQuery cost (JSON [`UsageRecord`]).
pub const USAGE_META: &str = "bigquery_usage:canonical";

/// Journal entries per append request (each carries a full record; the
/// store splits requests by bytes as well).
const APPEND_BATCH: usize = 1_000;

/// Most entries appended after one cycle (a long backlog is worked off
/// over several cycles rather than stalling one).
const APPEND_PER_CYCLE: usize = 50_000;

/// What BigQuery cost over some span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Query jobs started.
    pub queries: u64,
    /// HTTP calls of any kind (jobs, result pages, `tables.get`).
    pub calls: u64,
    pub bytes_processed: u64,
    pub bytes_billed: u64,
}

impl Cost {
    fn between(a: &StatsSnapshot, b: &StatsSnapshot) -> Cost {
        Cost {
            queries: b.jobs.saturating_sub(a.jobs),
            calls: b.calls.saturating_sub(a.calls),
            bytes_processed: b.bytes_processed.saturating_sub(a.bytes_processed),
            bytes_billed: b.bytes_billed.saturating_sub(a.bytes_billed),
        }
    }

    fn add(&mut self, o: &Cost) {
        self.queries += o.queries;
        self.calls += o.calls;
        self.bytes_processed += o.bytes_processed;
        self.bytes_billed += o.bytes_billed;
    }

    /// `3 queries, 1.2 MB processed, 30.0 MB billed`.
    pub fn describe(&self) -> String {
        format!(
            "{} queries, {} processed, {} billed",
            self.queries,
            mb(self.bytes_processed),
            mb(self.bytes_billed)
        )
    }
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// What `status` shows (kept in meta [`USAGE_META`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The last cycle's cost.
    pub last_cycle: Cost,
    /// When that cycle ended (RFC 3339).
    pub last_cycle_at: String,
    /// UTC day of `today`.
    pub day: String,
    /// The day's cost so far.
    pub today: Cost,
}

/// Reads the canonical store's BigQuery cost from the state database.
pub fn usage_record(state: &StateDb) -> anyhow::Result<Option<UsageRecord>> {
    Ok(state
        .meta(USAGE_META)?
        .and_then(|s| serde_json::from_str(&s).ok()))
}

/// The meta key of a journal table's cursor.
pub fn journal_cursor_key(dataset: &str, table: &str) -> String {
    format!("{JOURNAL_CONSUMER_PREFIX}bigquery:{dataset}.{table}")
}

/// The daemon's side of a BigQuery canonical store.
pub struct BqCanonical {
    client: BigQueryClient,
    /// A second handle on the table for the journal appends (the engine
    /// owns the first); `None` without a journal table.
    journal: Option<(BigQueryStore, String)>,
    at_cycle_start: StatsSnapshot,
}

/// The canonical store, and the BigQuery side when it is BigQuery.
pub async fn open_canonical(cfg: &Config) -> anyhow::Result<(Box<dyn Store>, Option<BqCanonical>)> {
    let StoreConfig::Bigquery(b) = cfg.canonical() else {
        return Ok((stores::open_canonical(cfg).await?, None));
    };
    let (client, bcfg) = stores::bigquery_parts(CANONICAL, b)?;
    let open = |client: BigQueryClient, bcfg| async move {
        BigQueryStore::open(client, bcfg)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("store canonical: cannot open the BigQuery table (run `contact-sync migrate` first?)")
    };
    let store = open(client.clone(), bcfg.clone()).await?;
    let journal = match &bcfg.journal_table {
        Some(t) => {
            let key = journal_cursor_key(&bcfg.dataset, t);
            Some((open(client.clone(), bcfg.clone()).await?, key))
        }
        None => None,
    };
    let side = BqCanonical {
        at_cycle_start: client.stats(),
        client,
        journal,
    };
    Ok((Box::new(store), Some(side)))
}

impl BqCanonical {
    /// Call before a cycle: the cycle's cost is counted from here.
    pub fn begin_cycle(&mut self) {
        self.at_cycle_start = self.client.stats();
    }

    /// Appends journal entries after the table's cursor (see the module
    /// docs). Returns how many entries the cursor moved over; a failure is
    /// logged and retried at the next cycle (the cursor stays).
    ///
    /// `backlog`: the cycle stopped at its capture budget and the next one
    /// follows at once; only whole requests of [`APPEND_BATCH`] entries are
    /// appended then, the rest after the backlog's last slice (each request
    /// is a MERGE query billed at least 10 MB: a backlog worked off in many
    /// short cycles must not cost a query per cycle).
    pub async fn append_journal(&mut self, state: &mut StateDb, backlog: bool) -> u64 {
        let Some((store, key)) = &self.journal else {
            return 0;
        };
        let mut moved = 0u64;
        while (moved as usize) < APPEND_PER_CYCLE {
            let read = (|| -> anyhow::Result<(i64, Vec<contact_sync_core::JournalEntry>)> {
                let cursor: i64 = match state.meta(key)? {
                    Some(v) => v
                        .parse()
                        .with_context(|| format!("state meta {key} = {v:?} is not a seq"))?,
                    None => 0,
                };
                let head = state.journal_head()?;
                Ok((cursor, state.journal_after(cursor, head, APPEND_BATCH)?))
            })();
            let (cursor, entries) = match read {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "journal table: cannot read the journal from the state database; retried next cycle");
                    return moved;
                }
            };
            let Some(last) = entries.last().map(|e| e.seq) else {
                return moved;
            };
            if backlog && entries.len() < APPEND_BATCH {
                return moved;
            }
            match store.append_journal_rows(&entries).await {
                Ok(inserted) => {
                    let saved = state.tx().and_then(|tx| {
                        tx.set_meta(key, &last.to_string())?;
                        tx.commit()
                    });
                    if let Err(e) = saved {
                        tracing::warn!(error = %e, "journal table: appended, but the cursor could not be saved; the append is repeated (idempotently) next cycle");
                        return moved;
                    }
                    tracing::debug!(
                        from = cursor,
                        to = last,
                        inserted,
                        "journal table: entries appended"
                    );
                    moved += entries.len() as u64;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry = ?e.class, "journal table: append failed; retried next cycle (nothing is appended twice)");
                    return moved;
                }
            }
        }
        moved
    }

    /// Call after a cycle (and its journal append): the cycle's cost,
    /// added to the day's in the state database.
    pub fn end_cycle(&mut self, state: &mut StateDb) -> Cost {
        let cost = Cost::between(&self.at_cycle_start, &self.client.stats());
        let now = contact_sync_core::model::now();
        let day = now.format("%Y-%m-%d").to_string();
        let saved = (|| -> anyhow::Result<()> {
            let mut rec = usage_record(state)?.unwrap_or_default();
            if rec.day != day {
                rec.day = day;
                rec.today = Cost::default();
            }
            rec.today.add(&cost);
            rec.last_cycle = cost;
            rec.last_cycle_at = contact_sync_core::model::format_ts(&now);
            let tx = state.tx()?;
            tx.set_meta(USAGE_META, &serde_json::to_string(&rec)?)?;
            tx.commit()?;
            Ok(())
        })();
        if let Err(e) = saved {
            tracing::warn!(error = %format!("{e:#}"), "cannot record BigQuery's cost in the state database");
        }
        cost
    }
}

/// The BigQuery lines of `status` (`--json`: the `bigquery` object).
#[derive(Debug, Serialize)]
pub struct BigQueryStatus {
    /// Cost of the daemon's last cycle and of the day so far (UTC); `None`
    /// before the daemon's first cycle.
    pub usage: Option<UsageRecord>,
    /// `dataset.table` of the journal table, when one is configured.
    pub journal_table: Option<String>,
    /// Last journal seq appended to it.
    pub journal_appended_seq: Option<i64>,
    /// Journal entries not appended yet.
    pub journal_pending: Option<i64>,
}

/// `status`'s BigQuery lines, when canonical is BigQuery.
pub fn status(cfg: &Config, state: &StateDb) -> anyhow::Result<Option<BigQueryStatus>> {
    let StoreConfig::Bigquery(b) = cfg.canonical() else {
        return Ok(None);
    };
    let (_, bcfg) = stores::bigquery_parts(CANONICAL, b)?;
    let mut out = BigQueryStatus {
        usage: usage_record(state)?,
        journal_table: None,
        journal_appended_seq: None,
        journal_pending: None,
    };
    if let Some(t) = &bcfg.journal_table {
        let seq = state
            .meta(&journal_cursor_key(&bcfg.dataset, t))?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        out.journal_table = Some(format!("{}.{t}", bcfg.dataset));
        out.journal_appended_seq = Some(seq);
        out.journal_pending = Some((state.journal_head()? - seq).max(0));
    }
    Ok(Some(out))
}

/// Prints [`BigQueryStatus`] for people.
pub fn print_status(s: &BigQueryStatus) {
    match &s.usage {
        Some(u) => {
            println!(
                "BigQuery last cycle ({}): {}",
                u.last_cycle_at,
                u.last_cycle.describe()
            );
            println!("BigQuery today ({} UTC): {}", u.day, u.today.describe());
        }
        None => println!("BigQuery cost: no cycle recorded yet"),
    }
    if let (Some(t), Some(seq), Some(p)) =
        (&s.journal_table, s.journal_appended_seq, s.journal_pending)
    {
        println!("journal table {t}: appended up to entry {seq}, {p} pending");
    }
}
