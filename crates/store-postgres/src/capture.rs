//! Change capture: the replication slot (pgoutput) and the outbox.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use contact_sync_connector::{
    Change, ChangeBatch, ChangeKind, ChangeSource, Checkpoint, StoreError,
};
use contact_sync_core::model::ALL_FIELDS;

use crate::codec::{self, RowText};
use crate::config::CdcMode;
use crate::origin::origin_name;
use crate::pgoutput::{self, Datum, Lsn, Message};
use crate::store::{pg_err, PgStore, TableInfo};

/// A position in the slot's stream: the end LSN of a transaction's commit
/// record, and how many of its changes were delivered when a batch ended
/// inside it (`None` = the whole transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SlotPos {
    lsn: Lsn,
    partial: Option<usize>,
}

impl SlotPos {
    fn parse(store: &str, c: Option<&Checkpoint>) -> Result<SlotPos, StoreError> {
        let Some(c) = c else {
            return Ok(SlotPos {
                lsn: Lsn(0),
                partial: None,
            });
        };
        let bad = || {
            StoreError::permanent(
                store,
                format!("checkpoint {c} is not a slot position (LSN X/Y or X/Y:n)"),
            )
        };
        let (lsn, partial) = match c.as_str().split_once(':') {
            Some((l, n)) => (l, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (c.as_str(), None),
        };
        Ok(SlotPos {
            lsn: Lsn::parse(lsn).ok_or_else(bad)?,
            partial,
        })
    }
    fn checkpoint(&self) -> Checkpoint {
        match self.partial {
            Some(n) => Checkpoint::new(format!("{}:{n}", self.lsn)),
            None => Checkpoint::new(self.lsn.to_string()),
        }
    }
}

/// One row change decoded from the slot, before it is turned into a contact.
pub(crate) struct RawChange {
    op: RawOp,
    row: RowText,
    /// Fields the update did not carry (unchanged TOAST without an old image).
    missing: Vec<&'static str>,
    /// The change cannot be read safely (its relation lacks a mapped
    /// column, a TRUNCATE): the capture delivers what came before it and
    /// then pauses with this error.
    problem: Option<StoreError>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum RawOp {
    Upsert,
    Delete,
}

pub(crate) struct Txn {
    end_lsn: Lsn,
    pub(crate) changes: Vec<RawChange>,
    /// The transaction carries the store's replication origin: one of the
    /// engine's writes, skipped whole (its changes are not even parsed).
    pub(crate) own: bool,
    /// Changes already removed from the front (delivered from a read-ahead).
    skipped: usize,
}

/// Transactions peeked beyond what the last read delivered, kept for the
/// next read that starts where it ended: one peek (which decodes the WAL
/// from the slot's restart point) serves many reads.
pub(crate) struct ReadAhead {
    after: SlotPos,
    txns: VecDeque<Txn>,
    exhausted: bool,
    flush: Lsn,
}

/// The slot is advanced at most this often (see `ack_slot`).
const ADVANCE_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Messages one peek asks for at least: a read-ahead of up to ~5,000
/// single-row transactions (begin, row, commit; an origin message for the
/// engine's own). Each peek decodes the WAL from the slot's restart point,
/// which PostgreSQL 15 moves only every ~15 s, so a backlog read in fewer,
/// larger peeks costs the server less: at 1,000 edits/s, 4,096 took a peek
/// of ~100 ms per ~400 edits; 16,384 cut the edit → local.db p99 from 4.1 s
/// to 1.5 s (BENCHMARKS.md). A peek returns what the WAL holds, so an
/// engine that keeps up reads small peeks as before.
const READ_AHEAD: i64 = 16384;

/// How often at most a capture that advances its slot has the slot's
/// restart point moved up (see `PgStore::nudge_restart`).
const RESTART_NUDGE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The most messages one peek returns: bounds the memory of a read that
/// skips a long run of the engine's own transactions.
const MAX_PEEK: i64 = 1 << 15;

impl PgStore {
    // ---- change capture: replication slot ----

    /// The field of each column of a relation (`None`: not mapped).
    pub(crate) fn relation_fields(&self, cols: &[String]) -> Arc<[Option<&'static str>]> {
        cols.iter()
            .map(|c| {
                std::iter::once("id")
                    .chain(ALL_FIELDS.iter().copied())
                    .find(|f| self.cfg.column(f) == c)
            })
            .collect()
    }

    /// The row of a tuple: `fields` says which field each column holds; an
    /// unchanged TOAST value is taken from the old tuple when it has one,
    /// else listed as missing.
    pub(crate) fn row_from_tuple(
        fields: &[Option<&'static str>],
        new: Vec<Datum>,
        old: Option<Vec<Datum>>,
    ) -> RawChange {
        let mut row = RowText::default();
        let mut missing = Vec::new();
        let mut old = old;
        for (i, d) in new.into_iter().enumerate() {
            let Some(field) = fields.get(i).copied().flatten() else {
                continue;
            };
            let d = if d == Datum::Unchanged {
                old.as_mut()
                    .and_then(|o| o.get_mut(i))
                    .map(|o| std::mem::replace(o, Datum::Null))
                    .unwrap_or(Datum::Unchanged)
            } else {
                d
            };
            let v = match d {
                Datum::Null => None,
                Datum::Text(s) => Some(s),
                Datum::Unchanged => {
                    missing.push(field);
                    None
                }
            };
            if field == "id" {
                row.row_id = v;
            } else {
                row.fields.insert(field, v);
            }
        }
        RawChange {
            op: RawOp::Upsert,
            row,
            missing,
            problem: None,
        }
    }

    /// The paused error of a TRUNCATE of the table.
    fn truncate_error(&self, at: &str) -> StoreError {
        let (tkey, store) = (self.table_key(), &self.cfg.name);
        StoreError::paused(
            store,
            format!(
                "table {tkey} was truncated ({at}): contact-sync does not replay a TRUNCATE as deletes \
                 of every contact, so {store} is paused. If it was a mistake, restore the rows and run \
                 `contact-sync cdc reset {store}` (canonical is copied to it again); to delete the \
                 contacts everywhere, delete them in canonical"
            ),
        )
    }

    /// Peeks up to `n` messages; with `upto`, decoding stops at the first
    /// record ending at or after it.
    pub(crate) async fn peek(
        &mut self,
        n: i32,
        upto: Option<Lsn>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let name = self.cfg.name.clone();
        let slot = self.cfg.slot_name.clone();
        let publication = self.cfg.publication.clone();
        let origin_none = self.origin_none;
        let upto = upto.map(|l| l.to_string());
        let client = self.client().await?;
        let rows = if origin_none {
            client
                .query(
                    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, $4::text::pg_lsn, $2, \
                     'proto_version', '1', 'publication_names', $3, 'origin', 'none')",
                    &[&slot, &n, &publication, &upto],
                )
                .await
        } else {
            client
                .query(
                    "SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes($1, $4::text::pg_lsn, $2, \
                     'proto_version', '1', 'publication_names', $3)",
                    &[&slot, &n, &publication, &upto],
                )
                .await
        };
        match rows {
            Ok(rows) => Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect()),
            Err(e) => {
                let code = e.as_db_error().map(|d| d.code().code().to_string());
                if code.as_deref() == Some("42704") {
                    return Err(StoreError::permanent(
                        &name,
                        format!("replication slot `{slot}` does not exist: run `contact-sync migrate` (or `cdc reset`)"),
                    ));
                }
                if code.as_deref() == Some("55000") {
                    if let Ok(level) = self.wal_level().await {
                        if level != "logical" {
                            return Err(self.wal_level_error(&level));
                        }
                    }
                }
                Err(pg_err(
                    &name,
                    &format!("reading replication slot `{slot}`"),
                    &e,
                ))
            }
        }
    }

    pub(crate) fn parse_txns(
        &mut self,
        rows: &[(String, Vec<u8>)],
    ) -> Result<VecDeque<Txn>, StoreError> {
        let mut txns = VecDeque::new();
        let mut cur: Option<Vec<RawChange>> = None;
        let mut own = false;
        let origin = origin_name(&self.cfg.slot_name);
        for (lsn, data) in rows {
            // The row changes of our own transactions are not parsed.
            if own && matches!(data.first(), Some(b'I' | b'U' | b'D')) {
                continue;
            }
            let msg = pgoutput::parse(data).map_err(|e| {
                StoreError::permanent(
                    self.name(),
                    format!("slot `{}` at {lsn}: {e}", self.cfg.slot_name),
                )
            })?;
            match msg {
                Message::Begin { .. } => {
                    cur = Some(Vec::new());
                    own = false;
                }
                Message::Origin { name } => own = name == origin,
                Message::Commit { end_lsn, .. } => {
                    txns.push_back(Txn {
                        end_lsn,
                        changes: cur.take().unwrap_or_default(),
                        own,
                        skipped: 0,
                    });
                    own = false;
                }
                Message::Relation { oid, columns, .. } => {
                    let cols: Vec<String> = columns.into_iter().map(|c| c.name).collect();
                    // A mapped column the relation lacks (renamed, dropped)
                    // is never read as NULL: its changes are a problem.
                    let lost = self.missing_columns(|c| cols.iter().any(|x| x == c));
                    if lost.is_empty() {
                        self.relation_lost.remove(&oid);
                    } else {
                        let e = self.missing_column_error(&lost);
                        self.relation_lost.insert(oid, e);
                    }
                    let fields = self.relation_fields(&cols);
                    self.relations.insert(oid, fields);
                }
                Message::Insert { rel, new } => {
                    let fields = self.relation(rel, lsn)?;
                    let mut ch = Self::row_from_tuple(&fields, new, None);
                    ch.problem = self.relation_lost.get(&rel).cloned();
                    cur.get_or_insert_with(Vec::new).push(ch);
                }
                Message::Update { rel, old, new } => {
                    let fields = self.relation(rel, lsn)?;
                    let mut ch = Self::row_from_tuple(&fields, new, old);
                    ch.problem = self.relation_lost.get(&rel).cloned();
                    cur.get_or_insert_with(Vec::new).push(ch);
                }
                Message::Delete { rel, old } => {
                    let fields = self.relation(rel, lsn)?;
                    let mut ch = Self::row_from_tuple(&fields, old, None);
                    ch.op = RawOp::Delete;
                    ch.missing.clear();
                    ch.problem = self.relation_lost.get(&rel).cloned();
                    cur.get_or_insert_with(Vec::new).push(ch);
                }
                Message::Truncate { .. } if !own => {
                    let ch = RawChange {
                        op: RawOp::Delete,
                        row: RowText::default(),
                        missing: Vec::new(),
                        problem: Some(self.truncate_error(&format!("WAL position {lsn}"))),
                    };
                    cur.get_or_insert_with(Vec::new).push(ch);
                }
                Message::Truncate { .. } | Message::Other(_) => {}
            }
        }
        Ok(txns)
    }

    pub(crate) fn relation(
        &self,
        rel: u32,
        lsn: &str,
    ) -> Result<Arc<[Option<&'static str>]>, StoreError> {
        self.relations.get(&rel).cloned().ok_or_else(|| {
            StoreError::permanent(
                self.name(),
                format!(
                    "slot `{}` at {lsn}: change of relation {rel} before its Relation message",
                    self.cfg.slot_name
                ),
            )
        })
    }

    /// Fills values an update did not carry from the current row.
    pub(crate) async fn fill_missing(&mut self, ch: &mut RawChange) -> Result<(), StoreError> {
        let Some(row_id) = ch.row.row_id.clone() else {
            return Ok(());
        };
        let info = self.table_info().await?;
        let name = self.cfg.name.clone();
        let sql = format!(
            "SELECT {} FROM {} t WHERE t.{}::text = $1",
            info.select_list,
            self.qtable(),
            self.col("id")
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&row_id])
            .await
            .map_err(|e| pg_err(&name, "reading a row for unchanged TOAST values", &e))?;
        if let Some(r) = row {
            for f in std::mem::take(&mut ch.missing) {
                if let Some(i) = ALL_FIELDS.iter().position(|x| *x == f) {
                    ch.row.fields.insert(f, r.get(i + 1));
                }
            }
        }
        Ok(())
    }

    /// The change of a raw image. Without the table's hash trigger a kept
    /// `content_hash` proves nothing: it is dropped from the image.
    pub(crate) fn to_change(raw: RawChange, hash_trusted: bool) -> Change {
        let native_id = raw
            .row
            .row_id
            .clone()
            .or_else(|| raw.row.fields.get("contact_id").cloned().flatten())
            .unwrap_or_default();
        let kind = match raw.op {
            RawOp::Delete => ChangeKind::Delete {
                contact_id: raw
                    .row
                    .fields
                    .get("contact_id")
                    .cloned()
                    .flatten()
                    .filter(|s| !s.trim().is_empty()),
            },
            RawOp::Upsert => match codec::decode(&raw.row) {
                Ok(mut c) => {
                    if !hash_trusted {
                        c.content_hash = None;
                    }
                    ChangeKind::Upsert(Box::new(c))
                }
                Err(e) => ChangeKind::Undecodable {
                    invalid: e.invalid,
                    payload: Some(e.payload),
                },
            },
        };
        Change { native_id, kind }
    }

    /// Reads whole transactions from the slot after `from`.
    ///
    /// The engine's own transactions (replication origin, see `origin`)
    /// deliver nothing but move the position past them. A window holding
    /// nothing else, read from a position the slot has confirmed (so
    /// nothing before it waits to be merged), advances the slot over it
    /// and reads on, so a backfill's WAL is skipped once and released as
    /// it is skipped. When a peek reaches the end of the WAL, the position
    /// becomes at least the flush position taken before it: every
    /// transaction that committed before it was seen.
    pub(crate) async fn read_slot(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let mut from_pos = SlotPos::parse(self.name(), from)?;
        let from_given = from_pos;
        // Nothing at or before an acknowledged position comes again.
        if let Some(a) = self.acked {
            if a > from_pos.lsn || (a == from_pos.lsn && from_pos.partial.is_some()) {
                from_pos = SlotPos {
                    lsn: a,
                    partial: None,
                };
            }
        }
        self.check_wal_level().await?;
        self.detect_provenance().await?;
        self.check_origin_filter().await?;
        let hash_trusted = self.table_info().await?.hash_trusted;
        // The table's identity (dropped, re-created, unpublished, columns
        // gone) is checked before every peek, not before a read served
        // from the read-ahead: that holds transactions a checked peek
        // decoded, committed before it (the check's catalog query was
        // 7 % of a busy capture's time when it ran for every read).
        let mut identity_checked = false;
        let limit = limit.max(1);
        let mut n: i64 = ((limit as i64) * 4 + 16).max(READ_AHEAD);
        loop {
            let ahead = self
                .read_ahead
                .take()
                .filter(|ra| ra.after == from_pos && !ra.txns.is_empty());
            let mut bound = None;
            if ahead.is_none() && !identity_checked {
                self.check_identity().await?;
                identity_checked = true;
            }
            if ahead.is_none() {
                if let Some((start, end)) = self.bulk_window {
                    if from_pos.lsn >= end {
                        self.forget_bulk_window(end).await?;
                    } else if from_pos.lsn >= start && from_pos.partial.is_none() {
                        // Everything before the bulk load is delivered.
                        if self.skip_bulk_window(from_pos, end).await? {
                            from_pos = SlotPos {
                                lsn: end,
                                partial: None,
                            };
                            continue;
                        }
                        // Delivered but not yet acknowledged (a window of
                        // batches the engine has not merged): nothing more
                        // in this read; the next skips.
                        return Ok(ChangeBatch {
                            changes: Vec::new(),
                            checkpoint: if from_pos == from_given {
                                from.cloned().unwrap_or_else(|| from_pos.checkpoint())
                            } else {
                                from_pos.checkpoint()
                            },
                            has_more: false,
                        });
                    } else if from_pos.lsn < start {
                        // Read only up to the bulk load: what follows it is
                        // skipped once this is delivered.
                        bound = Some(start);
                    }
                }
            }
            let (mut window, exhausted, flush) = match ahead {
                Some(ra) => (ra.txns, ra.exhausted, ra.flush),
                None => {
                    let mut flush = self.flush_lsn().await?;
                    let nn = i32::try_from(n).unwrap_or(i32::MAX);
                    let rows = self.peek(nn, bound).await?;
                    let exhausted = (rows.len() as i64) < n;
                    if let Some(b) = bound {
                        // A peek that stopped at the bound saw every
                        // transaction committed before it.
                        flush = flush.min(b);
                    }
                    (self.parse_txns(&rows)?, exhausted, flush)
                }
            };
            let mut out: Vec<RawChange> = Vec::new();
            let mut pos = from_pos;
            let mut stopped_inside = false;
            let mut left_over = false;
            while let Some(mut txn) = window.pop_front() {
                let skip = if txn.end_lsn < from_pos.lsn {
                    continue;
                } else if txn.end_lsn == from_pos.lsn {
                    match from_pos.partial {
                        None => continue,
                        Some(k) => k,
                    }
                } else {
                    0
                };
                if txn.own {
                    // Nothing to deliver: the position moves past it.
                    pos = SlotPos {
                        lsn: txn.end_lsn,
                        partial: None,
                    };
                    continue;
                }
                if out.len() >= limit {
                    window.push_front(txn);
                    left_over = true;
                    break;
                }
                let drop_n = skip.saturating_sub(txn.skipped).min(txn.changes.len());
                txn.changes.drain(..drop_n);
                txn.skipped += drop_n;
                let problem_at = txn.changes.iter().position(|c| c.problem.is_some());
                if problem_at == Some(0) && out.is_empty() {
                    let problem = txn.changes[0].problem.clone();
                    return Err(problem.unwrap_or_else(|| {
                        StoreError::permanent(self.name(), "unreadable change")
                    }));
                }
                let k = (limit - out.len()).min(problem_at.unwrap_or(txn.changes.len()));
                out.extend(txn.changes.drain(..k));
                txn.skipped += k;
                if !txn.changes.is_empty() {
                    // Ended inside it (the limit, or a change that pauses the
                    // store: the next read returns that error).
                    pos = SlotPos {
                        lsn: txn.end_lsn,
                        partial: Some(txn.skipped),
                    };
                    window.push_front(txn);
                    stopped_inside = true;
                    break;
                }
                pos = SlotPos {
                    lsn: txn.end_lsn,
                    partial: None,
                };
            }
            let whole = !stopped_inside && !left_over;
            if exhausted && whole && flush > pos.lsn && pos.partial.is_none() {
                pos = SlotPos {
                    lsn: flush,
                    partial: None,
                };
            }
            if out.is_empty() && whole && pos.lsn > from_pos.lsn && pos.partial.is_none() {
                // Only our own transactions (or none) since `from`: when the
                // slot has confirmed `from`, move it past them now.
                if self.skip_ahead(from_pos, pos.lsn).await? {
                    from_pos = pos;
                    if !exhausted || bound.is_some() {
                        n = n.saturating_mul(2).min(MAX_PEEK.max(n));
                        continue;
                    }
                }
            }
            if out.len() < limit && !exhausted && whole && n < MAX_PEEK {
                // Not enough whole transactions in this window: look further.
                n = n.saturating_mul(2);
                continue;
            }
            let has_more = !whole || !exhausted;
            if !window.is_empty() {
                self.read_ahead = Some(ReadAhead {
                    after: pos,
                    txns: window,
                    exhausted,
                    flush,
                });
            }
            if out.is_empty() {
                // Idle: pass on an acknowledgement held back.
                self.pass_on_ack().await?;
            }
            let mut changes = Vec::with_capacity(out.len());
            for mut raw in out {
                if !raw.missing.is_empty() {
                    self.fill_missing(&mut raw).await?;
                }
                changes.push(Self::to_change(raw, hash_trusted));
            }
            let checkpoint = if changes.is_empty() && pos == from_given {
                from.cloned().unwrap_or_else(|| pos.checkpoint())
            } else {
                pos.checkpoint()
            };
            return Ok(ChangeBatch {
                changes,
                checkpoint,
                has_more,
            });
        }
    }

    /// `pg_current_wal_flush_lsn()`.
    async fn flush_lsn(&mut self) -> Result<Lsn, StoreError> {
        self.wal_lsn("pg_current_wal_flush_lsn").await
    }

    /// A WAL position the server reports through `function` (one of the
    /// `pg_current_wal_*_lsn` functions, called without arguments).
    pub(crate) async fn wal_lsn(&mut self, function: &str) -> Result<Lsn, StoreError> {
        let name = self.cfg.name.clone();
        let row = self
            .client()
            .await?
            .query_one(&format!("SELECT {function}()::text"), &[])
            .await
            .map_err(|e| pg_err(&name, &format!("reading the WAL position ({function})"), &e))?;
        let s: String = row.get(0);
        Ok(Lsn::parse(&s).unwrap_or_default())
    }

    /// The slot's `confirmed_flush_lsn`.
    pub(crate) async fn confirmed_lsn(&mut self) -> Result<Lsn, StoreError> {
        let name = self.cfg.name.clone();
        let slot = self.cfg.slot_name.clone();
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg_err(&name, "reading the replication slot", &e))?
            .ok_or_else(|| {
                StoreError::permanent(
                    &name,
                    format!("replication slot `{slot}` does not exist: run `contact-sync migrate`"),
                )
            })?;
        let confirmed: Option<String> = row.get(0);
        Ok(confirmed
            .as_deref()
            .and_then(Lsn::parse)
            .unwrap_or_default())
    }

    /// Advances the slot from `from` to `to` when everything between them
    /// holds nothing to deliver and the slot has confirmed `from` (so no
    /// change before `from` waits to be merged). Returns whether it did.
    async fn skip_ahead(&mut self, from: SlotPos, to: Lsn) -> Result<bool, StoreError> {
        if from.partial.is_some() {
            return Ok(false);
        }
        let confirmed = self.confirmed_lsn().await?;
        if from.lsn > confirmed {
            return Ok(false);
        }
        if to > confirmed {
            self.advance_slot(to).await?;
        }
        Ok(true)
    }

    /// Moves the slot from `from` over a bulk load's WAL to `end` (see
    /// `bulk`) when the slot has confirmed `from` (passing on an
    /// acknowledgement held back first): `pg_replication_slot_advance`
    /// reads the WAL without decoding its rows. Returns whether it did.
    async fn skip_bulk_window(&mut self, from: SlotPos, end: Lsn) -> Result<bool, StoreError> {
        self.pass_on_ack().await?;
        let confirmed = self.confirmed_lsn().await?;
        if from.lsn > confirmed {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        if end > confirmed {
            self.advance_slot(end).await?;
        }
        self.read_ahead = None;
        tracing::info!(store = %self.cfg.name, from = %from.lsn, to = %end,
            secs = started.elapsed().as_secs_f64(),
            "skipped the initial sync's WAL (nobody else wrote to the table meanwhile)");
        self.forget_bulk_window(end).await?;
        Ok(true)
    }

    /// Asks the slot to leave the engine's transactions out (`origin
    /// 'none'`, PostgreSQL 16+) when the store tags its writes and no other
    /// replication origin exists (`none` would leave those out too).
    async fn check_origin_filter(&mut self) -> Result<(), StoreError> {
        if self.origin_checked {
            return Ok(());
        }
        let mut none = false;
        if self.server_version >= 160000 {
            if let Some(origin) = self.write_origin().map(str::to_owned) {
                let name = self.cfg.name.clone();
                let row = self
                    .client()
                    .await?
                    .query_one(
                        "SELECT count(*) FROM pg_replication_origin WHERE roname <> $1",
                        &[&origin],
                    )
                    .await
                    .map_err(|e| pg_err(&name, "reading replication origins", &e))?;
                let others: i64 = row.get(0);
                none = others == 0;
            }
        }
        self.origin_none = none;
        self.origin_checked = true;
        Ok(())
    }

    /// Acknowledges up to a whole transaction. The slot is advanced at
    /// most every [`ADVANCE_EVERY`] (each advance decodes the WAL from the
    /// slot's restart point, which a busy database makes costly); an
    /// acknowledgement not yet passed on is kept here, so this store never
    /// delivers anything at or before it again, and is passed on by the
    /// next acknowledgement after that interval or the next read that finds
    /// nothing new. A store dropped in between leaves the slot behind by
    /// that much: the engine acknowledges its stored checkpoint again when
    /// it starts capturing.
    pub(crate) async fn ack_slot(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let pos = SlotPos::parse(self.name(), Some(upto))?;
        if pos.partial.is_some() || pos.lsn == Lsn(0) {
            // The slot only moves by whole transactions.
            return Ok(());
        }
        if self.acked.is_none_or(|a| pos.lsn > a) {
            self.acked = Some(pos.lsn);
        }
        if pos.lsn <= self.advanced_to {
            return Ok(());
        }
        // Held back for up to [`ADVANCE_EVERY`] after the last advance,
        // with or without a read-ahead: an engine merging a window of
        // batches acknowledges each one after the window's reads ended, and
        // advancing for each cost more than the batch's merge (measured:
        // 30 advances of 34 ms for a window of 3,000 changes at 1,000
        // edits/s). A peek before the slot caught up returns the delivered
        // transactions again; `read_slot` drops them (they end before the
        // read's position), which costs less than decoding the WAL once
        // more for an advance.
        if self
            .advanced_at
            .is_some_and(|t| t.elapsed() < ADVANCE_EVERY)
        {
            return Ok(());
        }
        self.pass_on_ack().await
    }

    /// Advances the slot to the acknowledged position, if it is behind.
    async fn pass_on_ack(&mut self) -> Result<(), StoreError> {
        let Some(acked) = self.acked else {
            return Ok(());
        };
        if acked <= self.advanced_to {
            return Ok(());
        }
        if acked <= self.confirmed_lsn().await? {
            self.advanced_to = acked;
            return Ok(());
        }
        self.advance_slot(acked).await
    }

    /// `pg_replication_slot_advance` to `target`.
    pub(crate) async fn advance_slot(&mut self, target: Lsn) -> Result<(), StoreError> {
        self.advanced_to = self.advanced_to.max(target);
        let name = self.cfg.name.clone();
        let slot = self.cfg.slot_name.clone();
        let target = target.to_string();
        self.client()
            .await?
            .execute(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &target],
            )
            .await
            .map_err(|e| {
                pg_err(
                    &name,
                    &format!("advancing replication slot `{slot}` to {target}"),
                    &e,
                )
            })?;
        self.advanced_at = Some(std::time::Instant::now());
        self.nudge_restart();
        Ok(())
    }

    /// After an advance, at most every [`RESTART_NUDGE_EVERY`]: logs a
    /// running-transactions record on a connection of its own, in the
    /// background, so that the slot's restart point follows the capture.
    /// PostgreSQL logs one only every 15 s of activity, and every peek and
    /// advance decodes all the WAL from the restart point: on a database
    /// taking 1,000 edits a second that was up to 15 s of WAL decoded again
    /// by every peek.
    fn nudge_restart(&mut self) {
        if self
            .restart_nudge
            .as_ref()
            .is_some_and(|(t, at)| !t.is_finished() || at.elapsed() < RESTART_NUDGE_EVERY)
        {
            return;
        }
        let cfg = self.cfg.clone();
        let task = tokio::spawn(async move {
            match crate::store::open(&cfg).await {
                Ok((client, conn)) => {
                    crate::bulk::log_running_xacts(&client, &cfg.name, &cfg.slot_name, "restart")
                        .await;
                    drop(client);
                    let _ = conn.await;
                }
                Err(e) => tracing::debug!(store = %cfg.name, error = %e,
                    "could not connect to log a running-transactions record"),
            }
        });
        self.restart_nudge = Some((task, std::time::Instant::now()));
    }

    // ---- change capture: outbox ----

    pub(crate) async fn read_outbox(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        let name = self.cfg.name.clone();
        let from_seq: i64 = match from {
            None => 0,
            Some(c) => c.as_str().parse().map_err(|_| {
                StoreError::permanent(
                    &name,
                    format!("checkpoint {c} is not an outbox sequence number"),
                )
            })?,
        };
        let info = self.table_info().await?;
        self.check_identity().await?;
        let sql = format!(
            "SELECT seq, op, old_row::text, new_row::text FROM {} WHERE tbl = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            self.qoutbox()
        );
        let tkey = self.table_key();
        let lim = limit.max(1) as i64;
        let rows = self
            .client()
            .await?
            .query(&sql, &[&tkey, &from_seq, &lim])
            .await
            .map_err(|e| pg_err(&name, "reading the outbox", &e))?;
        let mut changes = Vec::with_capacity(rows.len());
        let mut last = from_seq;
        let mut stopped = false;
        for r in &rows {
            let seq: i64 = r.get(0);
            let op: String = r.get(1);
            let problem = if op == "TRUNCATE" {
                Some(self.truncate_error(&format!("outbox row {seq}")))
            } else {
                let image: Option<String> = if op == "DELETE" { r.get(2) } else { r.get(3) };
                let obj: BTreeMap<String, serde_json::Value> =
                    serde_json::from_str(image.as_deref().unwrap_or("{}")).map_err(|e| {
                        StoreError::permanent(
                            &name,
                            format!("outbox row {seq}: not a JSON object: {e}"),
                        )
                    })?;
                // A mapped column missing from the row image (renamed,
                // dropped) is never read as NULL.
                let lost = self.missing_columns(|c| obj.contains_key(c));
                if lost.is_empty() {
                    let raw = RawChange {
                        op: if op == "DELETE" {
                            RawOp::Delete
                        } else {
                            RawOp::Upsert
                        },
                        row: image_to_row(&info, obj),
                        missing: Vec::new(),
                        problem: None,
                    };
                    changes.push(Self::to_change(raw, info.hash_trusted));
                    last = seq;
                    None
                } else {
                    Some(self.missing_column_error(&lost))
                }
            };
            if let Some(problem) = problem {
                if changes.is_empty() {
                    return Err(problem);
                }
                // Deliver what came before it; the next read pauses.
                stopped = true;
                break;
            }
        }
        let has_more = stopped || rows.len() as i64 == lim;
        let checkpoint = if rows.is_empty() {
            from.cloned().unwrap_or_else(|| Checkpoint::new("0"))
        } else {
            Checkpoint::new(last.to_string())
        };
        Ok(ChangeBatch {
            changes,
            checkpoint,
            has_more,
        })
    }

    pub(crate) async fn ack_outbox(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        let name = self.cfg.name.clone();
        let seq: i64 = upto.as_str().parse().map_err(|_| {
            StoreError::permanent(
                &name,
                format!("checkpoint {upto} is not an outbox sequence number"),
            )
        })?;
        let sql = format!(
            "DELETE FROM {} WHERE tbl = $1 AND seq <= $2",
            self.qoutbox()
        );
        let tkey = self.table_key();
        self.client()
            .await?
            .execute(&sql, &[&tkey, &seq])
            .await
            .map_err(|e| pg_err(&name, "deleting acknowledged outbox rows", &e))?;
        Ok(())
    }
}

/// An outbox row image (`to_jsonb(row)`) as text values.
pub(crate) fn image_to_row(info: &TableInfo, obj: BTreeMap<String, serde_json::Value>) -> RowText {
    let mut row = RowText::default();
    for (col, v) in obj {
        let Some(field) = info.field_of.get(&col).copied() else {
            continue;
        };
        let is_json = matches!(
            info.types.get(&col).map(String::as_str),
            Some("jsonb" | "json")
        );
        let text = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) if !is_json => Some(s),
            other => Some(other.to_string()),
        };
        if field == "id" {
            row.row_id = text;
        } else {
            row.fields.insert(field, text);
        }
    }
    row
}

#[async_trait]
impl ChangeSource for PgStore {
    /// Slot mode: peeks (never consumes) the slot, skips every transaction
    /// whose commit ends at or before `from`, and returns whole transactions
    /// in commit order; the checkpoint is the end LSN of the last commit
    /// (`X/Y`), or `X/Y:n` when `limit` ended the batch inside a transaction.
    /// Outbox mode: rows with `seq > from`; the checkpoint is the last `seq`.
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        match self.cfg.cdc {
            CdcMode::Slot => self.read_slot(from, limit).await,
            CdcMode::Outbox => self.read_outbox(from, limit).await,
        }
    }

    /// Slot mode: `pg_replication_slot_advance` to the checkpoint (only
    /// forward; a checkpoint inside a transaction waits for its end).
    /// Outbox mode: deletes the outbox rows up to it.
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        match self.cfg.cdc {
            CdcMode::Slot => self.ack_slot(upto).await,
            CdcMode::Outbox => self.ack_outbox(upto).await,
        }
    }
}
