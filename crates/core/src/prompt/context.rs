//! The content of one contact's prompt context, and how it is read out of a
//! [`Contact`].

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::{category_name, Contact};

/// The marker carried by every contact in category H (Hostile).
pub const HOSTILE_WARNING: &str = "⚠ Hostile relationship: handle with care";

/// A part of a contact's context that may be left out to fit the token
/// budget. The name, id and relationship header are never left out and have
/// no entry here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextField {
    Notes,
    Tags,
    Relationships,
    BlindSpots,
    Tensions,
    ConversationTopics,
    Phones,
    Emails,
    PersonalityNotes,
    Strengths,
    ImportantDates,
    HowMet,
    KeyInterests,
    CommunicationStyle,
    CurrentState,
    RelationshipArc,
    /// `closeness_level` and `emotional_depth` together (one line).
    Closeness,
    /// `organization`, `job_title` and `department` together (one line).
    Organization,
}

impl ContextField {
    /// The fixed order in which fields are left out when a contact does not
    /// fit its budget: first entry first. A field is dropped only once every
    /// field before it that is present has been dropped.
    pub const DROP_ORDER: [ContextField; 18] = [
        ContextField::Notes,
        ContextField::Tags,
        ContextField::Relationships,
        ContextField::BlindSpots,
        ContextField::Tensions,
        ContextField::ConversationTopics,
        ContextField::Phones,
        ContextField::Emails,
        ContextField::PersonalityNotes,
        ContextField::Strengths,
        ContextField::ImportantDates,
        ContextField::HowMet,
        ContextField::KeyInterests,
        ContextField::CommunicationStyle,
        ContextField::CurrentState,
        ContextField::RelationshipArc,
        ContextField::Closeness,
        ContextField::Organization,
    ];

    /// The name used in the omitted list (`notes`, `blind_spots`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ContextField::Notes => "notes",
            ContextField::Tags => "tags",
            ContextField::Relationships => "relationships",
            ContextField::BlindSpots => "blind_spots",
            ContextField::Tensions => "tensions",
            ContextField::ConversationTopics => "conversation_topics",
            ContextField::Phones => "phones",
            ContextField::Emails => "emails",
            ContextField::PersonalityNotes => "personality_notes",
            ContextField::Strengths => "strengths",
            ContextField::ImportantDates => "important_dates",
            ContextField::HowMet => "how_met",
            ContextField::KeyInterests => "key_interests",
            ContextField::CommunicationStyle => "communication_style",
            ContextField::CurrentState => "current_state",
            ContextField::RelationshipArc => "relationship_arc",
            ContextField::Closeness => "closeness",
            ContextField::Organization => "organization",
        }
    }
}

impl fmt::Display for ContextField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The relationship header: category (code and name), subcategory, label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelationshipInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subcategory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Where the contact works.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrganizationInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
}

/// An email address (primary first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmailInfo {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub primary: bool,
}

/// A phone number (primary first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PhoneInfo {
    pub number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub primary: bool,
}

/// An entry of `llm_context.important_dates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportantDate {
    pub date: String,
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub significance: Option<String>,
}

/// An entry of `relationships`; `name` is filled in when the related contact
/// is part of the same multi-contact context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RelatedContact {
    pub contact_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// One contact's prompt context: the structured content (serialized as the
/// JSON format), what was left out for length, and the rendered block.
///
/// Absent and empty values are `None`/empty and are left out of both
/// formats. Text values have their whitespace (including line breaks)
/// collapsed to single spaces and control characters removed, so one field
/// is always exactly one line of the text format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ContactContext {
    pub contact_id: String,
    /// The canonical name.
    pub name: String,
    /// Only when it differs from the canonical name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// Only when it differs from the canonical name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relationship: Option<RelationshipInfo>,
    /// [`HOSTILE_WARNING`] for category H.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<OrganizationInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<EmailInfo>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<PhoneInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relationship_arc: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub communication_style: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub personality_notes: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_interests: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub important_dates: Vec<ImportantDate>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conversation_topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closeness_level: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emotional_depth: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how_met: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_state: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strengths: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tensions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub blind_spots: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub related_contacts: Vec<RelatedContact>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Fields left out to fit the budget, in [`ContextField::DROP_ORDER`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub omitted: Vec<ContextField>,
    /// This context rendered in the requested format (a text block, or one
    /// line of JSON).
    #[serde(skip)]
    pub rendered: String,
    /// [`super::estimate_tokens`] of `rendered`.
    #[serde(skip)]
    pub estimated_tokens: usize,
}

impl ContactContext {
    /// True when `field` has content (and so could be left out).
    pub fn has(&self, field: ContextField) -> bool {
        match field {
            ContextField::Notes => self.notes.is_some(),
            ContextField::Tags => !self.tags.is_empty(),
            ContextField::Relationships => !self.related_contacts.is_empty(),
            ContextField::BlindSpots => !self.blind_spots.is_empty(),
            ContextField::Tensions => !self.tensions.is_empty(),
            ContextField::ConversationTopics => !self.conversation_topics.is_empty(),
            ContextField::Phones => !self.phones.is_empty(),
            ContextField::Emails => !self.emails.is_empty(),
            ContextField::PersonalityNotes => self.personality_notes.is_some(),
            ContextField::Strengths => !self.strengths.is_empty(),
            ContextField::ImportantDates => !self.important_dates.is_empty(),
            ContextField::HowMet => self.how_met.is_some(),
            ContextField::KeyInterests => !self.key_interests.is_empty(),
            ContextField::CommunicationStyle => self.communication_style.is_some(),
            ContextField::CurrentState => self.current_state.is_some(),
            ContextField::RelationshipArc => self.relationship_arc.is_some(),
            ContextField::Closeness => {
                self.closeness_level.is_some() || self.emotional_depth.is_some()
            }
            ContextField::Organization => self.organization.is_some(),
        }
    }

    /// Removes `field`'s content (does not record it as omitted).
    pub(super) fn clear(&mut self, field: ContextField) {
        match field {
            ContextField::Notes => self.notes = None,
            ContextField::Tags => self.tags.clear(),
            ContextField::Relationships => self.related_contacts.clear(),
            ContextField::BlindSpots => self.blind_spots.clear(),
            ContextField::Tensions => self.tensions.clear(),
            ContextField::ConversationTopics => self.conversation_topics.clear(),
            ContextField::Phones => self.phones.clear(),
            ContextField::Emails => self.emails.clear(),
            ContextField::PersonalityNotes => self.personality_notes = None,
            ContextField::Strengths => self.strengths.clear(),
            ContextField::ImportantDates => self.important_dates.clear(),
            ContextField::HowMet => self.how_met = None,
            ContextField::KeyInterests => self.key_interests.clear(),
            ContextField::CommunicationStyle => self.communication_style = None,
            ContextField::CurrentState => self.current_state = None,
            ContextField::RelationshipArc => self.relationship_arc = None,
            ContextField::Closeness => {
                self.closeness_level = None;
                self.emotional_depth = None;
            }
            ContextField::Organization => self.organization = None,
        }
    }
}

/// Collapses whitespace runs (line breaks included) to one space, removes
/// other control characters and trims; `None` when nothing is left.
pub(super) fn clean(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut space = false;
    for ch in s.chars() {
        if ch.is_whitespace() {
            space = !out.is_empty();
        } else if ch.is_control() {
            continue;
        } else {
            if space {
                out.push(' ');
                space = false;
            }
            out.push(ch);
        }
    }
    (!out.is_empty()).then_some(out)
}

fn clean_opt(s: &Option<String>) -> Option<String> {
    s.as_deref().and_then(clean)
}

/// Text of a JSON value that is expected to be text: strings as they are,
/// anything else (number, boolean, object) as compact JSON; null → absent.
fn value_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => clean(s),
        other => clean(&other.to_string()),
    }
}

fn text_list(m: &Map<String, Value>, key: &str) -> Vec<String> {
    match m.get(key) {
        Some(Value::Array(items)) => items.iter().filter_map(|i| value_text(Some(i))).collect(),
        Some(other) => value_text(Some(other)).into_iter().collect(),
        None => Vec::new(),
    }
}

fn level(m: &Map<String, Value>, key: &str) -> Option<u8> {
    m.get(key)
        .and_then(Value::as_i64)
        .filter(|n| (1..=10).contains(n))
        .and_then(|n| u8::try_from(n).ok())
}

/// Reads the full (untrimmed) context out of a normalized contact whose
/// `llm_context` and `relationships` have been checked.
pub(super) fn extract(c: &Contact, names: Option<&HashMap<String, String>>) -> ContactContext {
    let name = clean(&c.canonical_name).unwrap_or_else(|| "(unnamed)".to_string());
    let differs = |v: Option<String>| v.filter(|v| *v != name);
    let nickname = differs(clean_opt(&c.nickname));
    let display_name = differs(clean_opt(&c.display_name));

    let category_code = clean_opt(&c.category_code);
    let relationship = {
        let info = RelationshipInfo {
            category: category_code
                .as_deref()
                .and_then(category_name)
                .map(str::to_string),
            category_code: category_code.clone(),
            subcategory: clean_opt(&c.subcategory_code),
            label: clean_opt(&c.relationship_label),
        };
        (info.category_code.is_some() || info.subcategory.is_some() || info.label.is_some())
            .then_some(info)
    };
    let warning = category_code
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case("H"))
        .then(|| HOSTILE_WARNING.to_string());

    let organization = {
        let info = OrganizationInfo {
            name: clean_opt(&c.organization),
            job_title: clean_opt(&c.job_title),
            department: clean_opt(&c.department),
        };
        (info.name.is_some() || info.job_title.is_some() || info.department.is_some())
            .then_some(info)
    };

    let mut emails: Vec<EmailInfo> = Vec::with_capacity(c.emails.len());
    for e in c
        .emails
        .iter()
        .filter(|e| e.is_primary)
        .chain(c.emails.iter().filter(|e| !e.is_primary))
    {
        let Some(address) = clean(&e.address.to_lowercase()) else {
            continue;
        };
        if emails.iter().any(|x| x.address == address) {
            continue;
        }
        emails.push(EmailInfo {
            address,
            label: clean_opt(&e.label),
            primary: e.is_primary,
        });
    }
    let mut phones: Vec<PhoneInfo> = Vec::with_capacity(c.phones.len());
    for p in c
        .phones
        .iter()
        .filter(|p| p.is_primary)
        .chain(c.phones.iter().filter(|p| !p.is_primary))
    {
        let Some(number) = clean(&p.number) else {
            continue;
        };
        if phones.iter().any(|x| x.number == number) {
            continue;
        }
        phones.push(PhoneInfo {
            number,
            label: clean_opt(&p.label),
            primary: p.is_primary,
        });
    }

    let empty = Map::new();
    let ctx = match &c.llm_context {
        Some(Value::Object(m)) => m,
        _ => &empty,
    };
    let important_dates = match ctx.get("important_dates") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|d| {
                Some(ImportantDate {
                    date: value_text(d.get("date"))?,
                    event: value_text(d.get("event"))?,
                    significance: value_text(d.get("significance")),
                })
            })
            .collect(),
        _ => Vec::new(),
    };
    let related_contacts = match &c.relationships {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|r| {
                let contact_id = value_text(r.get("contact_id"))?;
                Some(RelatedContact {
                    name: names
                        .and_then(|n| n.get(&contact_id))
                        .and_then(|n| clean(n)),
                    contact_id,
                    relation: value_text(r.get("relation")),
                    notes: value_text(r.get("notes")),
                })
            })
            .collect(),
        _ => Vec::new(),
    };

    ContactContext {
        contact_id: c.contact_id.clone(),
        name,
        nickname,
        display_name,
        relationship,
        warning,
        organization,
        emails,
        phones,
        relationship_arc: value_text(ctx.get("relationship_arc")),
        communication_style: value_text(ctx.get("communication_style")),
        personality_notes: value_text(ctx.get("personality_notes")),
        key_interests: text_list(ctx, "key_interests"),
        important_dates,
        conversation_topics: text_list(ctx, "conversation_topics"),
        closeness_level: level(ctx, "closeness_level"),
        emotional_depth: level(ctx, "emotional_depth"),
        how_met: value_text(ctx.get("how_met")),
        current_state: value_text(ctx.get("current_state")),
        strengths: text_list(ctx, "strengths"),
        tensions: text_list(ctx, "tensions"),
        blind_spots: text_list(ctx, "blind_spots"),
        related_contacts,
        tags: c.tags.iter().filter_map(|t| clean(t)).collect(),
        notes: clean_opt(&c.notes),
        omitted: Vec::new(),
        rendered: String::new(),
        estimated_tokens: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_collapses_whitespace_and_drops_controls() {
        assert_eq!(clean("  a \n\n b\tc\u{7} "), Some("a b c".to_string()));
        assert_eq!(clean(" \n "), None);
        assert_eq!(clean("Ünïcode ⚠"), Some("Ünïcode ⚠".to_string()));
    }

    #[test]
    fn drop_order_lists_every_field_once() {
        let mut seen = std::collections::HashSet::new();
        for f in ContextField::DROP_ORDER {
            assert!(seen.insert(f.as_str()));
        }
        assert_eq!(seen.len(), ContextField::DROP_ORDER.len());
    }
}
