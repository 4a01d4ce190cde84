//! Filling the state database's contact search index from canonical: after
//! an initial sync (which does not index as it copies: indexing every page
//! made the copy 2.6× slower, see BENCHMARKS.md) and for a state database
//! that predates the index. It runs at the end of each cycle, after the
//! cycle's changes went out, for at most
//! [`EngineOptions::search_fill_per_cycle`](crate::EngineOptions) (the
//! daemon sets none and fills it in slices while it waits). Journaled
//! changes index themselves (`StateTx::append_journal`).

use std::time::{Duration, Instant};

use contact_sync_state::{SEARCH_FILL_DONE, SEARCH_FILL_META};

use crate::{Engine, EngineError};

impl Engine {
    /// Indexes canonical's contacts page by page from where the fill
    /// stopped, for at most the cycle's budget; nothing when the index is
    /// complete or the budget is none (the rest is done later: the position
    /// is kept in `meta`). A failure is logged and retried at the next
    /// cycle (search is not worth failing a cycle for).
    pub(crate) async fn fill_search_index(&mut self) {
        let budget = self.opts.search_fill_per_cycle;
        if budget.is_zero() {
            return;
        }
        if let Err(e) = self.fill_search_index_for(budget).await {
            tracing::warn!(error = %e, "filling the search index from canonical failed; retried at the next cycle");
        }
    }

    /// [`fill_search_index`](Engine::fill_search_index) with a time budget;
    /// returns whether the index is complete.
    pub async fn fill_search_index_for(&mut self, budget: Duration) -> Result<bool, EngineError> {
        let started = Instant::now();
        // '' from the start, `after\t<id>` after a contact id, or done.
        let Some(mut after) = self
            .state
            .meta(SEARCH_FILL_META)?
            .filter(|v| v != SEARCH_FILL_DONE)
            .map(|v| v.strip_prefix("after\t").unwrap_or("").to_string())
        else {
            return Ok(true);
        };
        let limit = self.opts.backfill_page.max(1);
        loop {
            if self.stopping() || started.elapsed() >= budget {
                return Ok(false);
            }
            let rows = self
                .canonical
                .scan((!after.is_empty()).then_some(after.as_str()), limit)
                .await
                .map_err(EngineError::Canonical)?;
            let tx = self.state.tx()?;
            match rows.last() {
                None => {
                    tx.set_meta(SEARCH_FILL_META, SEARCH_FILL_DONE)?;
                    tx.commit()?;
                    return Ok(true);
                }
                Some(last) => {
                    tx.index_contacts(&rows)?;
                    tx.set_meta(SEARCH_FILL_META, &format!("after\t{}", last.contact_id))?;
                    tx.commit()?;
                    after = last.contact_id.clone();
                }
            }
        }
    }
}
