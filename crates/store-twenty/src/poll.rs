//! Change capture: webhook events, the `updatedAt` poll and its
//! checkpoint, and the destroy sweep.

use std::collections::{BTreeMap, HashMap};

use contact_sync_connector::{Change, ChangeBatch, ChangeKind, Checkpoint, StoreError};
use contact_sync_core::model::parse_ts;
use reqwest::Method;
use serde_json::Value;

use crate::client::{enc, StatsInner};
use crate::config::MAX_BATCH;
use crate::mapping::{person_id, person_updated_at};
use crate::store::{data_list, page_info, TwentyStore, ALL_ROWS};
use crate::webhook::Event;

/// Polling re-reads this far behind its watermark, so a row committed late
/// with a slightly older `updatedAt` is not missed; rows already seen at
/// the same `updatedAt` are skipped by the checkpoint.
const POLL_OVERLAP: chrono::Duration = chrono::Duration::seconds(1);

/// The polling checkpoint: the `updatedAt` watermark and the rows already
/// returned within [`POLL_OVERLAP`] of it (id → `updatedAt`), so nothing
/// is missed or repeated.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PollCheckpoint {
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    watermark: Option<String>,
    #[serde(rename = "s", default, skip_serializing_if = "BTreeMap::is_empty")]
    seen: BTreeMap<String, String>,
}

impl PollCheckpoint {
    pub(crate) fn parse(store: &str, cp: Option<&Checkpoint>) -> Result<Self, StoreError> {
        match cp.map(|c| c.as_str().trim()) {
            None | Some("") => Ok(PollCheckpoint::default()),
            Some(s) => serde_json::from_str(s).map_err(|e| {
                StoreError::permanent(store, format!("unreadable checkpoint {s:?}: {e}"))
            }),
        }
    }
    pub(crate) fn encode(&self) -> Checkpoint {
        if self.watermark.is_none() && self.seen.is_empty() {
            return Checkpoint::new("");
        }
        Checkpoint::new(serde_json::to_string(self).unwrap_or_default())
    }
}

impl TwentyStore {
    /// Forgets a person that is gone from Twenty.
    fn forget_person(&mut self, pid: &str) {
        self.seen.retain(|_, s| s.pid != pid);
        self.unlinked.remove(pid);
        self.held.remove(pid);
        if let Some(b) = self.baseline.as_mut() {
            b.remove(pid);
        }
    }

    /// Lists every person id (live and soft-deleted, `MAX_BATCH` per
    /// request) and compares with the previous sweep and the people this
    /// store has seen since: those missing were destroyed in Twenty (a
    /// plain `DELETE /rest/people/{id}` destroys, issue 13 observation 4)
    /// and are queued as `ChangeKind::Delete`. Before the first sweep of a
    /// process, what the engine's state says this store holds
    /// ([`ChangeSource::held`](contact_sync_connector::ChangeSource::held))
    /// stands for the previous sweep, so people destroyed while the daemon
    /// was stopped are found too.
    pub(crate) async fn sweep_destroys(&mut self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let (people, _) = self.list_all(ALL_ROWS, Some("id"), usize::MAX).await?;
        self.last_sweep = Some(std::time::Instant::now());
        self.sweep_took = started.elapsed();
        let now: HashMap<String, Option<String>> = people
            .iter()
            .map(|p| {
                let cid = p
                    .get("contactId")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_string);
                (person_id(p).to_string(), cid)
            })
            .collect();
        let mut before: HashMap<String, Option<String>> = self.baseline.take().unwrap_or_default();
        for (pid, cid) in std::mem::take(&mut self.held) {
            before.entry(pid).or_insert(cid);
        }
        for (cid, s) in &self.seen {
            before
                .entry(s.pid.clone())
                .or_insert_with(|| Some(cid.clone()));
        }
        let mut gone: Vec<(String, Option<String>)> = before
            .into_iter()
            .filter(|(pid, _)| !now.contains_key(pid))
            .collect();
        gone.sort();
        for (pid, cid) in gone {
            tracing::info!(store = %self.cfg.name, person = %pid, contact = ?cid, "person destroyed in Twenty");
            self.seen.retain(|_, s| s.pid != pid);
            self.unlinked.remove(&pid);
            self.unacked_destroys.push(Change {
                native_id: pid,
                kind: ChangeKind::Delete { contact_id: cid },
            });
        }
        self.baseline = Some(now);
        Ok(())
    }

    fn decode(&mut self, p: &Value) -> Change {
        let native_id = person_id(p).to_string();
        match self.decode_seen(p) {
            Ok(c) => Change {
                native_id,
                kind: ChangeKind::Upsert(Box::new(c)),
            },
            Err(invalid) => Change {
                native_id,
                kind: ChangeKind::Undecodable {
                    invalid,
                    payload: Some(p.clone()),
                },
            },
        }
    }

    pub(crate) fn decode_event(&mut self, ev: &Event) -> Option<Change> {
        let pid = person_id(&ev.record).to_string();
        if pid.is_empty() {
            return None;
        }
        let at = parse_ts(person_updated_at(&ev.record));
        if let (Some(at), Some(prev)) = (at, self.webhook_seen.get(&pid)) {
            if at < *prev {
                return None; // an older state delivered late
            }
        }
        if let Some(at) = at {
            self.webhook_seen.insert(pid.clone(), at);
        }
        StatsInner::add(&self.client.stats.records_read, 1);
        if ev.operation() == "destroyed" {
            self.forget_person(&pid);
            let cid = ev
                .record
                .get("contactId")
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            return Some(Change {
                native_id: pid,
                kind: ChangeKind::Delete { contact_id: cid },
            });
        }
        // Older than the person as this store last wrote or read it: a copy
        // that arrived late (the engine wrote since, e.g. after merging that
        // very edit out of turn when its write was refused). Merged now, its
        // stale fields would read as edits and undo the newer state (found
        // by the soak benchmark, issue 15). The poll delivers the current one.
        let cid = ev
            .record
            .get("contactId")
            .and_then(Value::as_str)
            .map(str::trim)
            .unwrap_or_default();
        let known = self
            .seen
            .get(cid)
            .filter(|s| s.pid == pid)
            .and_then(|s| parse_ts(&s.updated_at));
        if let (Some(at), Some(known)) = (at, known) {
            if at < known {
                return None;
            }
        }
        Some(self.decode(&ev.record))
    }

    pub(crate) async fn poll(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        self.last_poll = Some(std::time::Instant::now());
        let mut cp = PollCheckpoint::parse(&self.cfg.name, from)?;
        // Destroys never appear in the `updatedAt` poll (issue 13,
        // observation 4): a sweep of every person id finds them.
        // A sweep costs one request per 200 people: on a large workspace it
        // runs at most every 20 times its own duration (≤ 5 % of the
        // request budget), `destroy_sweep_every` at the most often.
        let every = if self.cfg.destroy_sweep_every.is_zero() {
            std::time::Duration::ZERO
        } else {
            self.cfg.destroy_sweep_every.max(self.sweep_took * 20)
        };
        let sweep_due = self.last_sweep.is_none_or(|t| t.elapsed() >= every);
        if sweep_due {
            self.sweep_destroys().await?;
        }
        if !self.unacked_destroys.is_empty() {
            let take = self.unacked_destroys.len().min(limit.max(1));
            let changes: Vec<Change> = self.unacked_destroys[..take].to_vec();
            return Ok(ChangeBatch {
                has_more: true,
                changes,
                checkpoint: from.cloned().unwrap_or_else(|| cp.encode()),
            });
        }
        let input = cp.encode();
        let limit = limit.max(1);
        let filter = match cp.watermark.as_deref().and_then(parse_ts) {
            Some(w) => {
                let since = (w - POLL_OVERLAP).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                format!("and(updatedAt[gte]:\"{since}\",{ALL_ROWS})")
            }
            None => ALL_ROWS.to_string(),
        };
        let mut changes = Vec::new();
        let mut has_more = false;
        let mut after: Option<String> = None;
        'pages: loop {
            let want = (limit + cp.seen.len() + 1 - changes.len()).min(MAX_BATCH);
            let mut path = format!(
                "/rest/people?limit={want}&order_by={}&filter={}",
                enc("updatedAt,id"),
                enc(&filter)
            );
            if let Some(a) = &after {
                path.push_str(&format!("&starting_after={}", enc(a)));
            }
            let body = self
                .client
                .send_ok(Method::GET, &path, None, "polling people")
                .await?;
            let page = data_list(&body, "people");
            StatsInner::add(&self.client.stats.records_read, page.len() as u64);
            for p in page {
                let pid = person_id(p).to_string();
                let at = person_updated_at(p).to_string();
                if cp.seen.get(&pid) == Some(&at) {
                    continue;
                }
                let (Some(at_ts), w_ts) =
                    (parse_ts(&at), cp.watermark.as_deref().and_then(parse_ts))
                else {
                    continue;
                };
                if let Some(w) = w_ts {
                    // Older than the overlap and not in `seen`: returned by an
                    // earlier read whose `seen` entry was pruned.
                    if at_ts < w - POLL_OVERLAP {
                        continue;
                    }
                }
                if changes.len() >= limit {
                    has_more = true;
                    break 'pages;
                }
                changes.push(self.decode(p));
                cp.seen.insert(pid, at.clone());
                if w_ts.is_none_or(|w| at_ts > w) {
                    cp.watermark = Some(at);
                }
            }
            let (next, cursor) = page_info(&body);
            after = cursor;
            if !next || after.is_none() {
                break;
            }
        }
        if changes.is_empty() {
            return Ok(ChangeBatch {
                changes,
                checkpoint: from.cloned().unwrap_or(input),
                has_more: false,
            });
        }
        if let Some(w) = cp.watermark.as_deref().and_then(parse_ts) {
            let horizon = w - POLL_OVERLAP;
            cp.seen
                .retain(|_, at| parse_ts(at).is_some_and(|t| t >= horizon));
        }
        Ok(ChangeBatch {
            changes,
            checkpoint: cp.encode(),
            has_more,
        })
    }
}
