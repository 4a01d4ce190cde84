//! A stateful fake Twenty CRM server (real HTTP on loopback) that reproduces
//! the behaviour recorded from Twenty 2.21 in `shared/twenty/samples`.
//!
//! What it does, as Twenty does:
//! - **Auth**: `Authorization: Bearer <key>`; no token → 403, bad token →
//!   401, with the recorded bodies.
//! - **People** (`/rest/people`, `/rest/batch/people`, `/rest/people/{id}`):
//!   the recorded envelopes (`data.people` + `totalCount` + `pageInfo`,
//!   `createPerson`, `createPeople`, `updatePerson`, `deletePerson`),
//!   `filter` (`and/or/not`, `eq neq in is gt gte lt lte …`, composite
//!   sub-fields), `order_by`, cursor paging (`starting_after`), default page
//!   60, `limit` silently capped at 200, soft-deleted rows hidden unless the
//!   filter names `deletedAt`, `?soft_delete=true`, destroy, `?upsert=true`
//!   matching on id, primary email and unique custom fields, batch create up
//!   to 200, emails lower-cased, null text stored as `""`, 400/404/duplicate
//!   errors as recorded, and the dangerous `PATCH /rest/people` without id
//!   (updates every matching record).
//! - **Companies** (`/rest/companies`): list/create/get, enough for
//!   find-or-create by name.
//! - **Metadata** (`/rest/metadata/objects|fields|webhooks`): list objects and
//!   fields, create custom fields on Person (TEXT, NUMBER, RAW_JSON,
//!   DATE_TIME, SELECT, BOOLEAN, … incl. `isUnique`), register webhooks.
//! - **GraphQL** `restorePerson` (REST restore fails with 400 in 2.21, as
//!   recorded).
//! - **Rate limit**: a token bucket of N requests per window per workspace;
//!   beyond it 429 with the recorded body and no `Retry-After`.
//! - **Webhooks**: sends `person.created/updated/deleted/destroyed/restored`
//!   to registered targets, signed with `X-Twenty-Webhook-Timestamp`,
//!   `X-Twenty-Webhook-Nonce`, `X-Twenty-Webhook-Signature` = hex
//!   HMAC-SHA256(secret, `timestamp:body`); 5 s timeout, never retried.
//! - **Workflow**: optionally, like a new workspace's active workflow, links
//!   a company to each new person about a second later, firing an extra
//!   `person.updated`.
//!
//! Test controls: [`FakeTwenty::counters`] (requests per route, 429s,
//! webhooks), [`FakeTwenty::set_drop_webhooks`],
//! [`FakeTwenty::set_rate_limit`], [`FakeTwenty::set_workflow`],
//! [`FakeTwenty::set_clock_skew`] (a clock ahead or behind: the `Date`
//! header every response carries, as Twenty's do, and the timestamps it
//! writes), and direct access to stored records.

pub mod filter;
mod server;
mod state;

pub use server::{Counters, FakeConfig, FakeTwenty, RateLimit};
pub use state::PERSON_OBJECT_ID;
