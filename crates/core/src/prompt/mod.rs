//! LLM prompt context from contacts.
//!
//! Pure functions: the caller fetches contacts from whatever store and
//! passes them in; nothing here does IO.
//!
//! * [`build_contact_context`]: one contact's context block.
//! * [`build_prompt_with_contact`]: a base prompt followed by one contact's
//!   context.
//! * [`build_multi_contact_context`]: several contacts sharing one budget.
//!
//! # What goes in
//!
//! The contact is [`Contact::normalize`]d first, so stores' differences in
//! saying "nothing" (`""` vs absent, e-mail case) do not change the output.
//! Absent and empty values are left out entirely. Text values have their
//! whitespace (line breaks included) collapsed to single spaces and control
//! characters removed, so in the text format every field is exactly one
//! line and contact data cannot fake a line of its own.
//!
//! Text format, in this order (each line only when it has content):
//!
//! ```text
//! Contact: <canonical name> [<contact_id>]            ┐
//! Also known as: <nickname> (nickname); <display name> (display name)
//! Relationship: <category name> [<subcategory>] — <label>  header: never
//! ⚠ Hostile relationship: handle with care  (category H) ┘ left out
//! Work: organization …; job title …; department …
//! Emails: <primary> (<label>, primary); <other> (<label>)
//! Phones: …
//! Relationship arc / Communication style / Personality: …
//! Key interests: a; b
//! Important dates: <date>: <event> (<significance>); …
//! Conversation topics: …
//! Closeness: 8/10; emotional depth: 7/10
//! How met / Current state: …
//! Strengths / Tensions / Blind spots: a; b
//! Related contacts: <contact_id> [<name, when in the same multi-contact context>] (<relation>: <notes>); …
//! Tags: a, b
//! Notes: …
//! [omitted for length: notes, tags]
//! ```
//!
//! `source`, `created_at`, `communication_stats`, `social_profiles`,
//! `custom_attributes` and the sync metadata are not included. The JSON
//! format ([`PromptFormat::Json`]) is the same content as one line of
//! compact JSON: [`ContactContext`] serialized, with `omitted` listing what
//! was left out.
//!
//! # Refusals
//!
//! * A deleted contact (tombstone) → [`PromptError::Deleted`].
//! * Category `X` (Exclude) → [`PromptError::Excluded`] unless
//!   [`PromptOptions::allow_excluded`]. A multi-contact context refuses the
//!   whole list; filter first with [`check_contact`].
//! * `llm_context` or `relationships` not of the documented shape (the rules
//!   of [`mod@crate::validate`]) → [`PromptError::InvalidContext`] naming the
//!   field (e.g. `llm_context.closeness_level`).
//! * A budget too small for even the header → [`PromptError::BudgetTooSmall`].
//!
//! Every error's message names the contact id. Nothing here panics.
//!
//! # Token budget
//!
//! Tokens are estimated by [`estimate_tokens`]: each line costs
//! `ceil((characters + 1) / 4)` (characters plus the line break, four per
//! token, rounded up per line), so costs add up line by line. The output's
//! estimate never exceeds [`PromptOptions::max_tokens`].
//!
//! When a contact does not fit, whole fields are dropped — never part of a
//! field, never mid-word — in this fixed order ([`ContextField::DROP_ORDER`]):
//!
//! notes, tags, relationships, blind_spots, tensions, conversation_topics,
//! phones, emails, personality_notes, strengths, important_dates, how_met,
//! key_interests, communication_style, current_state, relationship_arc,
//! closeness, organization.
//!
//! A field is dropped only after every present field before it in that order
//! was dropped; dropping stops as soon as the contact fits. The header (name,
//! id, other names, relationship, hostile marker) is never dropped. The block
//! then ends with `[omitted for length: notes, tags]` (beyond six fields:
//! the first five and `and N more fields`) and [`ContactContext::omitted`]
//! lists every omitted field.
//!
//! Multi-contact: blocks are separated by an empty line, in the order given.
//! The budget is shared max-min fairly: every contact first gets what its
//! header needs, then the rest is split so no contact gets more than another
//! that still wants more; budget left over after dropping whole fields goes
//! to earlier contacts first. If not even every header fits, trailing
//! contacts are left out and the output ends with
//! `[N contacts left out for length]` ([`Prompt::omitted_contacts`] lists
//! their ids).

mod context;
mod render;

use std::collections::HashMap;

use serde::Serialize;

use crate::model::Contact;
use crate::validate::validate;

pub use context::{
    ContactContext, ContextField, EmailInfo, ImportantDate, OrganizationInfo, PhoneInfo,
    RelatedContact, RelationshipInfo, HOSTILE_WARNING,
};
pub use render::estimate_tokens;

use render::{left_out_line, render_text, to_json};

/// The default [`PromptOptions::max_tokens`].
pub const DEFAULT_MAX_TOKENS: usize = 2000;

/// Output format of the context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PromptFormat {
    /// Readable lines, one field per line.
    #[default]
    Text,
    /// One line of compact JSON per contact context (see
    /// [`ContactContext`]); a multi-contact context is
    /// `{"contacts":[…],"contacts_left_out":N}`.
    Json,
}

/// How to build a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptOptions {
    /// Budget for the whole output, in [`estimate_tokens`] tokens (default
    /// [`DEFAULT_MAX_TOKENS`]).
    pub max_tokens: usize,
    /// Let category X (Exclude) contacts into prompts (default false).
    pub allow_excluded: bool,
    pub format: PromptFormat,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            max_tokens: DEFAULT_MAX_TOKENS,
            allow_excluded: false,
            format: PromptFormat::Text,
        }
    }
}

/// Why a contact cannot be put into a prompt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("contact {contact_id} is in category X (Exclude): kept out of LLM prompts unless allow_excluded is set")]
    Excluded { contact_id: String },
    #[error("contact {contact_id} is deleted: deleted contacts are never put into prompts")]
    Deleted { contact_id: String },
    #[error("contact {contact_id}: field `{field}` is not valid LLM context: {reason}")]
    InvalidContext {
        contact_id: String,
        field: String,
        reason: String,
    },
    #[error("token budget of {max_tokens} is too small: {what} needs at least {needed}")]
    BudgetTooSmall {
        /// What did not fit, naming the contact id(s).
        what: String,
        needed: usize,
        max_tokens: usize,
    },
}

/// A finished prompt: the text to send and what it holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Prompt {
    /// The prompt text (for [`PromptFormat::Json`], the JSON, after the base
    /// prompt if any).
    pub text: String,
    /// [`estimate_tokens`] of `text`; never above the budget.
    pub estimated_tokens: usize,
    /// The contexts included, in order, each with its own omitted fields.
    pub contacts: Vec<ContactContext>,
    /// Ids of contacts left out entirely for length.
    pub omitted_contacts: Vec<String>,
}

/// Checks that `contact` may go into a prompt under `opts` (not deleted, not
/// excluded, valid `llm_context` and `relationships`), without building
/// anything. Use it to filter a list before [`build_multi_contact_context`].
pub fn check_contact(contact: &Contact, opts: &PromptOptions) -> Result<(), PromptError> {
    prepare(contact, opts).map(|_| ())
}

/// One contact's context block, within `opts.max_tokens`.
pub fn build_contact_context(
    contact: &Contact,
    opts: &PromptOptions,
) -> Result<ContactContext, PromptError> {
    let c = prepare(contact, opts)?;
    let full = full_context(&c, None, opts.format);
    fit(&full, allowance(opts.max_tokens, opts.format), opts.format).map_err(|min| {
        PromptError::BudgetTooSmall {
            what: format!("contact {}", display_id(&c.contact_id)),
            needed: tokens_of(min, opts.format),
            max_tokens: opts.max_tokens,
        }
    })
}

/// `base_prompt` (trailing whitespace trimmed, otherwise untouched), an
/// empty line, then the contact's context; the whole within
/// `opts.max_tokens`. Only the contact's context is trimmed to fit.
pub fn build_prompt_with_contact(
    base_prompt: &str,
    contact: &Contact,
    opts: &PromptOptions,
) -> Result<Prompt, PromptError> {
    let c = prepare(contact, opts)?;
    let full = full_context(&c, None, opts.format);
    let base = base_prompt.trim_end();
    // The empty line between base prompt and block costs one token.
    let base_cost = if base.is_empty() {
        0
    } else {
        estimate_tokens(base) + 1
    };
    let too_small = |min_block: usize| PromptError::BudgetTooSmall {
        what: format!("the base prompt with contact {}", display_id(&c.contact_id)),
        needed: base_cost + tokens_of(min_block, opts.format),
        max_tokens: opts.max_tokens,
    };
    let Some(remaining) = opts.max_tokens.checked_sub(base_cost) else {
        return Err(too_small(size(&minimal(&full, opts.format), opts.format)));
    };
    let ctx = fit(&full, allowance(remaining, opts.format), opts.format).map_err(too_small)?;
    let text = if base.is_empty() {
        ctx.rendered.clone()
    } else {
        format!("{base}\n\n{}", ctx.rendered)
    };
    Ok(Prompt {
        estimated_tokens: estimate_tokens(&text),
        text,
        contacts: vec![ctx],
        omitted_contacts: Vec::new(),
    })
}

/// The contexts of several contacts sharing `opts.max_tokens` (see the
/// module docs for how the budget is shared). Related contacts that are in
/// the list are shown with their names.
pub fn build_multi_contact_context(
    contacts: &[Contact],
    opts: &PromptOptions,
) -> Result<Prompt, PromptError> {
    let format = opts.format;
    let prepared = contacts
        .iter()
        .map(|c| prepare(c, opts))
        .collect::<Result<Vec<_>, _>>()?;
    let names: HashMap<String, String> = prepared
        .iter()
        .map(|c| (c.contact_id.clone(), c.canonical_name.clone()))
        .collect();
    let fulls: Vec<ContactContext> = prepared
        .iter()
        .map(|c| full_context(c, Some(&names), format))
        .collect();
    let n = fulls.len();
    if n == 0 {
        return Ok(Prompt {
            text: String::new(),
            estimated_tokens: 0,
            contacts: Vec::new(),
            omitted_contacts: Vec::new(),
        });
    }
    let minimals: Vec<ContactContext> = fulls.iter().map(|f| minimal(f, format)).collect();
    let mins: Vec<usize> = minimals.iter().map(|m| size(m, format)).collect();

    // The longest prefix whose headers fit (prefix[k] = sum of mins[..k]).
    let prefix: Vec<usize> = std::iter::once(0)
        .chain(mins.iter().scan(0usize, |acc, &m| {
            *acc = acc.saturating_add(m);
            Some(*acc)
        }))
        .collect();
    let mut k = n;
    loop {
        if let Some(avail) = multi_allowance(k, n - k, opts.max_tokens, format) {
            if prefix[k] <= avail {
                break;
            }
        }
        if k == 0 {
            let left = assemble(&[], n, format);
            return Err(PromptError::BudgetTooSmall {
                what: format!(
                    "{n} contacts ({}{}) even as a line saying they were left out",
                    display_id(&fulls[0].contact_id),
                    if n > 1 { ", …" } else { "" }
                ),
                needed: estimate_tokens(&left),
                max_tokens: opts.max_tokens,
            });
        }
        k -= 1;
    }

    // Defensive: the arithmetic above makes the first attempt fit; should
    // it not, fewer contacts are tried rather than exceeding the budget.
    for k in (0..=k).rev() {
        let Some(avail) = multi_allowance(k, n - k, opts.max_tokens, format) else {
            continue;
        };
        let chosen = share(&fulls[..k], &minimals[..k], &mins[..k], avail, format);
        let text = assemble(&chosen, n - k, format);
        let estimated_tokens = estimate_tokens(&text);
        if estimated_tokens <= opts.max_tokens {
            return Ok(Prompt {
                text,
                estimated_tokens,
                contacts: chosen,
                omitted_contacts: fulls[k..].iter().map(|f| f.contact_id.clone()).collect(),
            });
        }
    }
    Err(PromptError::BudgetTooSmall {
        what: format!("{n} contacts"),
        needed: estimate_tokens(&assemble(&[], n, format)),
        max_tokens: opts.max_tokens,
    })
}

fn display_id(id: &str) -> String {
    if id.trim().is_empty() {
        "<no id>".to_string()
    } else {
        id.to_string()
    }
}

/// A normalized copy of `contact`, after the refusal checks.
fn prepare(contact: &Contact, opts: &PromptOptions) -> Result<Contact, PromptError> {
    let contact_id = display_id(contact.contact_id.trim());
    if contact.is_deleted() {
        return Err(PromptError::Deleted { contact_id });
    }
    let mut c = contact.clone();
    c.normalize();
    let excluded = c
        .category_code
        .as_deref()
        .is_some_and(|code| code.eq_ignore_ascii_case("X"));
    if excluded && !opts.allow_excluded {
        return Err(PromptError::Excluded { contact_id });
    }
    // Reuse validate's rules for the rich fields alone: other defects of
    // the record (a bad phone, say) do not keep it out of a prompt.
    let mut probe = Contact::new("prompt-check", "prompt-check");
    probe.llm_context = c.llm_context.take();
    probe.relationships = c.relationships.take();
    let checked = validate(&probe);
    c.llm_context = probe.llm_context.take();
    c.relationships = probe.relationships.take();
    checked.map_err(|e| PromptError::InvalidContext {
        contact_id,
        field: e.field,
        reason: e.reason,
    })?;
    Ok(c)
}

fn full_context(
    c: &Contact,
    names: Option<&HashMap<String, String>>,
    format: PromptFormat,
) -> ContactContext {
    let mut ctx = context::extract(c, names);
    render(&mut ctx, format);
    ctx
}

fn render(ctx: &mut ContactContext, format: PromptFormat) {
    ctx.rendered = match format {
        PromptFormat::Text => render_text(ctx),
        PromptFormat::Json => to_json(ctx),
    };
    ctx.estimated_tokens = estimate_tokens(&ctx.rendered);
}

// Budgets are kept in "units" that add up exactly when blocks are joined:
// tokens for text (blocks are whole lines), characters for JSON (everything
// is one line, whose tokens are ceil((chars + 1) / 4)).

/// A rendered context's size in units.
fn size(ctx: &ContactContext, format: PromptFormat) -> usize {
    match format {
        PromptFormat::Text => ctx.estimated_tokens,
        PromptFormat::Json => ctx.rendered.chars().count(),
    }
}

/// Units available to a block (or a JSON line) allowed `tokens` tokens.
fn allowance(tokens: usize, format: PromptFormat) -> usize {
    match format {
        PromptFormat::Text => tokens,
        PromptFormat::Json => tokens.saturating_mul(4).saturating_sub(1),
    }
}

/// Tokens of a block (or JSON line) of `units`.
fn tokens_of(units: usize, format: PromptFormat) -> usize {
    match format {
        PromptFormat::Text => units,
        PromptFormat::Json => (units + 1).div_ceil(4),
    }
}

/// `full` trimmed to at most `budget` units, dropping fields in
/// [`ContextField::DROP_ORDER`]; `Err(size of the header alone)` when even
/// that does not fit.
fn fit(
    full: &ContactContext,
    budget: usize,
    format: PromptFormat,
) -> Result<ContactContext, usize> {
    let mut ctx = full.clone();
    if size(&ctx, format) <= budget {
        return Ok(ctx);
    }
    for field in ContextField::DROP_ORDER {
        if !ctx.has(field) {
            continue;
        }
        ctx.clear(field);
        ctx.omitted.push(field);
        render(&mut ctx, format);
        if size(&ctx, format) <= budget {
            return Ok(ctx);
        }
    }
    Err(size(&ctx, format))
}

/// `full` with every droppable field dropped.
fn minimal(full: &ContactContext, format: PromptFormat) -> ContactContext {
    let mut ctx = full.clone();
    for field in ContextField::DROP_ORDER {
        if ctx.has(field) {
            ctx.clear(field);
            ctx.omitted.push(field);
        }
    }
    render(&mut ctx, format);
    ctx
}

#[derive(Serialize)]
struct MultiJson<'a> {
    contacts: &'a [ContactContext],
    #[serde(skip_serializing_if = "is_zero")]
    contacts_left_out: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The multi-contact output: blocks in order, then the left-out note.
fn assemble(chosen: &[ContactContext], left_out: usize, format: PromptFormat) -> String {
    match format {
        PromptFormat::Text => {
            let mut parts: Vec<&str> = chosen.iter().map(|c| c.rendered.as_str()).collect();
            let note = left_out_line(left_out);
            if left_out > 0 {
                parts.push(&note);
            }
            parts.join("\n\n")
        }
        PromptFormat::Json => to_json(&MultiJson {
            contacts: chosen,
            contacts_left_out: left_out,
        }),
    }
}

/// Units left for `k` contact blocks once the joining and the left-out note
/// are paid for; `None` when those alone exceed the budget.
fn multi_allowance(
    k: usize,
    left_out: usize,
    max_tokens: usize,
    format: PromptFormat,
) -> Option<usize> {
    let separators = k.saturating_sub(1);
    match format {
        PromptFormat::Text => {
            // One empty line (one token) between parts.
            let note = if left_out > 0 {
                estimate_tokens(&left_out_line(left_out)) + usize::from(k > 0)
            } else {
                0
            };
            max_tokens.checked_sub(separators + note)
        }
        PromptFormat::Json => {
            // Commas between contacts; the wrapper around them.
            let wrapper = assemble(&[], left_out, format).chars().count();
            allowance(max_tokens, format).checked_sub(wrapper + separators)
        }
    }
}

/// Trims each of `fulls` so that their sizes add up to at most `avail`
/// (which covers the `mins`), sharing max-min fairly.
fn share(
    fulls: &[ContactContext],
    minimals: &[ContactContext],
    mins: &[usize],
    avail: usize,
    format: PromptFormat,
) -> Vec<ContactContext> {
    let full_sizes: Vec<usize> = fulls.iter().map(|f| size(f, format)).collect();
    let allot = |level: usize| -> Vec<usize> {
        mins.iter()
            .zip(&full_sizes)
            .map(|(&lo, &hi)| level.clamp(lo, hi.max(lo)))
            .collect()
    };
    // The highest water level whose allotments fit.
    let (mut lo, mut hi) = (0usize, full_sizes.iter().copied().max().unwrap_or(0));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if allot(mid).iter().sum::<usize>() <= avail {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut chosen: Vec<ContactContext> = fulls
        .iter()
        .zip(allot(lo))
        .zip(minimals)
        .map(|((full, budget), min)| fit(full, budget, format).unwrap_or_else(|_| min.clone()))
        .collect();
    // Whole-field drops leave some of each allotment unused: offer it to the
    // trimmed contacts, earlier ones first.
    let mut used: usize = chosen.iter().map(|c| size(c, format)).sum();
    for (i, full) in fulls.iter().enumerate() {
        if chosen[i].omitted.is_empty() || used >= avail {
            continue;
        }
        let current = size(&chosen[i], format);
        if let Ok(better) = fit(full, current + (avail - used), format) {
            if better.omitted.len() < chosen[i].omitted.len() {
                used = used - current + size(&better, format);
                chosen[i] = better;
            }
        }
    }
    chosen
}
