//! The fake workspace's data and the operations on it (no IO).

use std::collections::{BTreeMap, HashMap};

use chrono::{SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::filter::{self, Filter};

/// The Person object's metadata id (as recorded).
pub const PERSON_OBJECT_ID: &str = "0055811a-b398-43aa-9849-3bfa83b2fcaf";
const COMPANY_OBJECT_ID: &str = "8b0d5c21-7f3e-4a11-9a55-2c4d1f6e0b77";
/// The workspace id (as recorded).
pub const WORKSPACE_ID: &str = "63beddfd-615d-416e-beec-5de10e35ddb4";

/// Twenty's limit on records per batch write and per page.
pub const MAX_RECORDS: usize = 200;

/// An error response: status and Twenty's JSON body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: Value,
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError {
            status: 400,
            body: json!({"statusCode": 400, "error": "BadRequestException", "messages": [msg.into()]}),
        }
    }
    pub fn not_found() -> Self {
        ApiError {
            status: 404,
            body: json!({"statusCode": 404, "error": "NotFoundException", "messages": ["Record not found"]}),
        }
    }
    pub fn duplicate() -> Self {
        ApiError::bad_request("A duplicate entry was detected")
    }
}

/// A change to announce over webhooks.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: String,
    pub record: Value,
    pub updated_fields: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct CustomField {
    name: String,
    ty: String,
    is_unique: bool,
    meta: Value,
}

/// Parsed list parameters.
#[derive(Debug, Default, Clone)]
pub struct ListQuery {
    pub limit: Option<String>,
    pub filter: Option<String>,
    pub order_by: Option<String>,
    pub starting_after: Option<String>,
}

/// The fake's clock (this machine's plus `skew`) as Twenty writes
/// timestamps.
pub fn now_ts(skew: TimeDelta) -> String {
    (Utc::now() + skew).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn actor(source: &str, name: &str) -> Value {
    json!({"source": source, "workspaceMemberId": null, "name": name, "context": {}})
}

/// The workspace.
pub struct State {
    people: HashMap<String, Map<String, Value>>,
    companies: BTreeMap<String, Map<String, Value>>,
    customs: Vec<CustomField>,
    standard_fields: Vec<Value>,
    webhooks: Vec<Value>,
    position: i64,
    email_index: HashMap<String, String>,
    unique_index: HashMap<(String, String), String>,
    key_name: String,
    /// How far the fake's clock is ahead of this machine's (tests of clock
    /// checks): applies to every timestamp it writes and sends.
    pub(crate) skew: TimeDelta,
}

const COMPOSITES: &[(&str, &[&str])] = &[
    ("name", &["firstName", "lastName"]),
    ("emails", &["primaryEmail", "additionalEmails"]),
    (
        "linkedinLink",
        &["primaryLinkLabel", "primaryLinkUrl", "secondaryLinks"],
    ),
    (
        "phones",
        &[
            "primaryPhoneNumber",
            "primaryPhoneCountryCode",
            "primaryPhoneCallingCode",
            "additionalPhones",
        ],
    ),
];

impl State {
    pub fn new(key_name: &str) -> Self {
        let stamp = "2026-11-23T05:41:29.870Z";
        let std_field = |name: &str, ty: &str, label: &str, system: bool| {
            json!({
                "id": Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("person.{name}").as_bytes()).to_string(),
                "type": ty, "name": name, "label": label, "description": label,
                "icon": "IconUser", "isActive": true, "isSystem": system, "isCustom": false,
                "isUIEditable": !system, "isUIReadOnly": system, "isNullable": true, "isUnique": name == "id",
                "workspaceId": WORKSPACE_ID, "objectMetadataId": PERSON_OBJECT_ID,
                "isLabelSyncedWithName": false, "createdAt": stamp, "updatedAt": stamp,
            })
        };
        let standard_fields = vec![
            std_field("id", "UUID", "Id", true),
            std_field("createdAt", "DATE_TIME", "Creation date", true),
            std_field("updatedAt", "DATE_TIME", "Last update", true),
            std_field("deletedAt", "DATE_TIME", "Deleted at", true),
            std_field("name", "FULL_NAME", "Name", false),
            std_field("emails", "EMAILS", "Emails", false),
            std_field("linkedinLink", "LINKS", "Linkedin", false),
            std_field("jobTitle", "TEXT", "Job Title", false),
            std_field("phones", "PHONES", "Phones", false),
            std_field("avatarUrl", "TEXT", "Avatar", false),
            std_field("position", "POSITION", "Position", true),
            std_field("createdBy", "ACTOR", "Created by", true),
            std_field("updatedBy", "ACTOR", "Updated by", true),
            std_field("company", "RELATION", "Company", false),
        ];
        State {
            people: HashMap::new(),
            companies: BTreeMap::new(),
            customs: Vec::new(),
            standard_fields,
            webhooks: Vec::new(),
            position: 0,
            email_index: HashMap::new(),
            unique_index: HashMap::new(),
            key_name: key_name.to_string(),
            skew: TimeDelta::zero(),
        }
    }

    // ---------- records and indexes ----------

    fn render(&self, rec: &Map<String, Value>) -> Value {
        let mut out = Map::new();
        for k in [
            "id",
            "createdAt",
            "updatedAt",
            "deletedAt",
            "name",
            "emails",
            "linkedinLink",
            "jobTitle",
            "phones",
            "avatarUrl",
            "avatarFile",
            "position",
            "createdBy",
            "updatedBy",
            "searchVector",
            "companyId",
        ] {
            out.insert(k.to_string(), rec.get(k).cloned().unwrap_or(Value::Null));
        }
        for f in &self.customs {
            let v = rec
                .get(&f.name)
                .cloned()
                .unwrap_or_else(|| default_for(&f.ty));
            out.insert(f.name.clone(), v);
        }
        Value::Object(out)
    }

    /// The unique values of `rec`. Soft-deleted people keep theirs: live
    /// Twenty 2.21's unique indexes have no `deletedAt` condition, so a
    /// create with the primary email of a person in the trash is a
    /// duplicate (samples/live13/trash_create_with_its_email.json).
    fn index_keys(&self, rec: &Map<String, Value>) -> (Option<String>, Vec<(String, String)>) {
        let email = rec
            .get("emails")
            .and_then(|e| e.get("primaryEmail"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let uniques = self
            .customs
            .iter()
            .filter(|f| f.is_unique)
            .filter_map(|f| {
                let v = rec.get(&f.name)?;
                let s = match v {
                    Value::Null => return None,
                    Value::String(s) if s.is_empty() => return None,
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((f.name.clone(), s))
            })
            .collect();
        (email, uniques)
    }

    fn unindex(&mut self, id: &str) {
        if let Some(old) = self.people.get(id) {
            let (e, u) = self.index_keys(old);
            if let Some(e) = e {
                if self.email_index.get(&e).map(String::as_str) == Some(id) {
                    self.email_index.remove(&e);
                }
            }
            for k in u {
                if self.unique_index.get(&k).map(String::as_str) == Some(id) {
                    self.unique_index.remove(&k);
                }
            }
        }
    }

    fn put(&mut self, rec: Map<String, Value>) {
        let id = rec
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.unindex(&id);
        let (e, u) = self.index_keys(&rec);
        if let Some(e) = e {
            self.email_index.insert(e, id.clone());
        }
        for k in u {
            self.unique_index.insert(k, id.clone());
        }
        self.people.insert(id, rec);
    }

    fn remove(&mut self, id: &str) -> Option<Map<String, Value>> {
        self.unindex(id);
        self.people.remove(id)
    }

    /// Another record (live or soft-deleted) holds one of `rec`'s unique
    /// values.
    fn clashes(&self, rec: &Map<String, Value>, self_id: &str) -> bool {
        let (e, u) = self.index_keys(rec);
        if let Some(e) = e {
            if self.email_index.get(&e).is_some_and(|o| o != self_id) {
                return true;
            }
        }
        u.iter()
            .any(|k| self.unique_index.get(k).is_some_and(|o| o != self_id))
    }

    /// A stored person, rendered.
    pub fn person(&self, id: &str) -> Option<Value> {
        self.people.get(id).map(|r| self.render(r))
    }

    /// Every stored person (soft-deleted included), rendered.
    pub fn all_people(&self) -> Vec<Value> {
        let mut v: Vec<Value> = self.people.values().map(|r| self.render(r)).collect();
        v.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        v
    }

    // ---------- writes ----------

    fn new_person(&mut self, id: String, now: &str) -> Map<String, Value> {
        self.position += 1;
        let mut m = Map::new();
        m.insert("id".into(), json!(id));
        m.insert("createdAt".into(), json!(now));
        m.insert("updatedAt".into(), json!(now));
        m.insert("deletedAt".into(), Value::Null);
        m.insert("name".into(), json!({"firstName": "", "lastName": ""}));
        m.insert(
            "emails".into(),
            json!({"primaryEmail": "", "additionalEmails": []}),
        );
        m.insert(
            "linkedinLink".into(),
            json!({"primaryLinkLabel": "", "primaryLinkUrl": "", "secondaryLinks": []}),
        );
        m.insert("jobTitle".into(), json!(""));
        m.insert(
            "phones".into(),
            json!({"primaryPhoneNumber": "", "primaryPhoneCountryCode": "", "primaryPhoneCallingCode": "", "additionalPhones": []}),
        );
        m.insert("avatarUrl".into(), json!(""));
        m.insert("avatarFile".into(), Value::Null);
        m.insert("position".into(), json!(-(self.position + 208)));
        m.insert("createdBy".into(), actor("API", &self.key_name));
        m.insert("updatedBy".into(), actor("API", &self.key_name));
        m.insert("searchVector".into(), json!(""));
        m.insert("companyId".into(), Value::Null);
        for f in &self.customs {
            m.insert(f.name.clone(), default_for(&f.ty));
        }
        m
    }

    /// Applies a write body to a record; returns the names of changed fields.
    fn apply(
        &self,
        rec: &mut Map<String, Value>,
        body: &Map<String, Value>,
    ) -> Result<Vec<String>, ApiError> {
        let mut changed = Vec::new();
        for (k, v) in body {
            let before = rec.get(k).cloned();
            match k.as_str() {
                "id" | "createdAt" | "updatedAt" | "deletedAt" | "searchVector" | "createdBy"
                | "updatedBy" | "avatarFile" => continue,
                "jobTitle" | "avatarUrl" => {
                    rec.insert(k.clone(), json!(text(k, v)?));
                }
                "position" => {
                    if !(v.is_number() || v.is_null()) {
                        return Err(ApiError::bad_request(format!(
                            "Invalid value for field \"position\": {v}"
                        )));
                    }
                    rec.insert(k.clone(), v.clone());
                }
                "companyId" => match v {
                    Value::Null => {
                        rec.insert(k.clone(), Value::Null);
                    }
                    Value::String(s) if self.companies.contains_key(s) => {
                        rec.insert(k.clone(), v.clone());
                    }
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "Invalid foreign key: company {v} does not exist"
                        )))
                    }
                },
                name => {
                    if let Some((_, subs)) = COMPOSITES.iter().find(|(n, _)| *n == name) {
                        let Value::Object(parts) = v else {
                            if v.is_null() {
                                continue;
                            }
                            return Err(ApiError::bad_request(format!(
                                "Invalid value for composite field \"{name}\": {v}"
                            )));
                        };
                        // Live Twenty 2.21 merges a partial `name` or
                        // `emails`, but rewrites a LINKS composite whole and
                        // drops `additionalPhones` not sent
                        // (samples/live13/partial_composites.json).
                        let mut cur = match name {
                            "linkedinLink" => Map::new(),
                            _ => rec
                                .get(name)
                                .and_then(Value::as_object)
                                .cloned()
                                .unwrap_or_default(),
                        };
                        if name == "phones" {
                            cur.insert("additionalPhones".into(), json!([]));
                        }
                        for (sk, sv) in parts {
                            if !subs.contains(&sk.as_str()) {
                                return Err(ApiError::bad_request(format!(
                                    "Object person doesn't have any \"{name}.{sk}\" field."
                                )));
                            }
                            let nv = match sk.as_str() {
                                "additionalEmails" => match sv {
                                    Value::Null => json!([]),
                                    Value::Array(a) => Value::Array(
                                        a.iter()
                                            .map(|e| {
                                                json!(e
                                                    .as_str()
                                                    .unwrap_or_default()
                                                    .trim()
                                                    .to_lowercase())
                                            })
                                            .collect(),
                                    ),
                                    _ => {
                                        return Err(ApiError::bad_request(
                                            "additionalEmails must be an array",
                                        ))
                                    }
                                },
                                "primaryEmail" => {
                                    let e = text(sk, sv)?.trim().to_lowercase();
                                    // Live Twenty 2.21: "not-an-email" → 400
                                    // with this message; "x@y" is accepted
                                    // (shared/twenty/README.md, observed).
                                    if !e.is_empty() && !e.contains('@') {
                                        return Err(ApiError::bad_request(format!(
                                            "Invalid string value '{e}' for email field \"emails.primaryEmail\""
                                        )));
                                    }
                                    json!(e)
                                }
                                "additionalPhones" | "secondaryLinks" => match sv {
                                    Value::Null => json!([]),
                                    Value::Array(_) => sv.clone(),
                                    _ => {
                                        return Err(ApiError::bad_request(format!(
                                            "{sk} must be an array"
                                        )))
                                    }
                                },
                                _ => json!(text(sk, sv)?),
                            };
                            cur.insert(sk.clone(), nv);
                        }
                        if name == "phones" {
                            check_phones(&cur)?;
                        }
                        if name == "linkedinLink" {
                            cur = normalize_links(&cur);
                        }
                        rec.insert(name.to_string(), Value::Object(cur));
                    } else if let Some(f) = self.customs.iter().find(|f| f.name == name) {
                        rec.insert(name.to_string(), custom_value(f, v)?);
                    } else {
                        return Err(ApiError::bad_request(format!(
                            "Object person doesn't have any \"{name}\" field."
                        )));
                    }
                }
            }
            if rec.get(k) != before.as_ref() {
                changed.push(k.clone());
            }
        }
        Ok(changed)
    }

    fn search_vector(rec: &Map<String, Value>) -> String {
        let mut words: Vec<String> = Vec::new();
        for p in [
            "/name/firstName",
            "/name/lastName",
            "/emails/primaryEmail",
            "/jobTitle",
        ] {
            if let Some(s) = Value::Object(rec.clone())
                .pointer(p)
                .and_then(Value::as_str)
            {
                words.extend(s.split_whitespace().map(|w| w.to_lowercase()));
            }
        }
        words
            .iter()
            .enumerate()
            .map(|(i, w)| format!("'{w}':{}", i + 1))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Finds the record an upsert of `body` targets: by id, primary email
    /// or a unique custom field, soft-deleted people included (live Twenty
    /// 2.21 restores and updates them: samples/live13/trash_upsert_same_id.json,
    /// trash_upsert_new_id_with_its_email.json).
    fn upsert_target(&self, id: Option<&str>, body: &Map<String, Value>) -> Option<String> {
        if let Some(id) = id {
            if self.people.contains_key(id) {
                return Some(id.to_string());
            }
        }
        if let Some(e) = body
            .get("emails")
            .and_then(|e| e.get("primaryEmail"))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
        {
            if let Some(id) = self.email_index.get(&e) {
                return Some(id.clone());
            }
        }
        for f in self.customs.iter().filter(|f| f.is_unique) {
            if let Some(v) = body.get(&f.name) {
                let s = match v {
                    Value::String(s) if !s.is_empty() => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                if let Some(id) = self.unique_index.get(&(f.name.clone(), s)) {
                    return Some(id.clone());
                }
            }
        }
        None
    }

    /// `POST /rest/people` and `/rest/batch/people`: creates (or with
    /// `upsert`, updates the matched records), all or nothing.
    pub fn create_people(
        &mut self,
        bodies: &[Value],
        upsert: bool,
    ) -> Result<(Vec<Value>, Vec<Event>), ApiError> {
        if bodies.len() > MAX_RECORDS {
            return Err(ApiError::bad_request(format!(
                "Maximum number of records to upsert is {MAX_RECORDS}."
            )));
        }
        let now = now_ts(self.skew);
        let mut undo: Vec<(String, Option<Map<String, Value>>)> = Vec::new();
        let mut out = Vec::new();
        // Live Twenty 2.21 answers an upsert batch with the updated records
        // first and the created ones last (issue 13, observation 1: [A
        // (exists), B (new), C (exists)] → [A, C, B]).
        let mut created_out = Vec::new();
        let mut events = Vec::new();
        let mut result: Result<(), ApiError> = Ok(());
        let saved_position = self.position;
        for b in bodies {
            let Some(body) = b.as_object() else {
                result = Err(ApiError::bad_request("Each record must be an object"));
                break;
            };
            let id = match body.get("id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => match Uuid::parse_str(s) {
                    Ok(u) => Some(u.to_string()),
                    Err(_) => {
                        result = Err(ApiError::bad_request(format!("Invalid UUID: {s}")));
                        break;
                    }
                },
                Some(other) => {
                    result = Err(ApiError::bad_request(format!("Invalid UUID: {other}")));
                    break;
                }
            };
            let target = if upsert {
                self.upsert_target(id.as_deref(), body)
            } else {
                None
            };
            let (mut rec, created) = match &target {
                Some(t) => match self.people.get(t) {
                    Some(r) => (r.clone(), false),
                    None => {
                        result = Err(ApiError::not_found());
                        break;
                    }
                },
                None => {
                    let nid = id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
                    if self.people.contains_key(&nid) {
                        result = Err(ApiError::duplicate());
                        break;
                    }
                    (self.new_person(nid, &now), true)
                }
            };
            let changed = match self.apply(&mut rec, body) {
                Ok(c) => c,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            };
            let rid = rec["id"].as_str().unwrap_or_default().to_string();
            if self.clashes(&rec, &rid) {
                result = Err(ApiError::duplicate());
                break;
            }
            if !created {
                rec.insert("updatedAt".into(), json!(now));
                rec.insert("updatedBy".into(), actor("API", &self.key_name));
                // An upsert that lands on a soft-deleted person restores it.
                rec.insert("deletedAt".into(), Value::Null);
            }
            rec.insert("searchVector".into(), json!(Self::search_vector(&rec)));
            undo.push((rid.clone(), self.people.get(&rid).cloned()));
            self.put(rec);
            let rendered = self.person(&rid).unwrap_or(Value::Null);
            events.push(Event {
                name: if created {
                    "person.created"
                } else {
                    "person.updated"
                }
                .into(),
                record: rendered.clone(),
                updated_fields: if created { None } else { Some(changed) },
            });
            if created {
                created_out.push(rendered);
            } else {
                out.push(rendered);
            }
        }
        out.append(&mut created_out);
        if let Err(e) = result {
            for (id, old) in undo.into_iter().rev() {
                self.remove(&id);
                if let Some(o) = old {
                    self.put(o);
                }
            }
            self.position = saved_position;
            return Err(e);
        }
        Ok((out, events))
    }

    /// `PATCH /rest/people/{id}`. A soft-deleted person is updated too and
    /// stays in the trash (live Twenty 2.21:
    /// samples/live13/trash_patch_by_id.json); only a missing id is 404.
    pub fn update_person(
        &mut self,
        id: &str,
        body: &Value,
    ) -> Result<(Value, Vec<Event>), ApiError> {
        let Some(body) = body.as_object() else {
            return Err(ApiError::bad_request("Body must be an object"));
        };
        let Some(mut rec) = self.people.get(id).cloned() else {
            return Err(ApiError::not_found());
        };
        let changed = self.apply(&mut rec, body)?;
        if self.clashes(&rec, id) {
            return Err(ApiError::duplicate());
        }
        rec.insert("updatedAt".into(), json!(now_ts(self.skew)));
        rec.insert("updatedBy".into(), actor("API", &self.key_name));
        rec.insert("searchVector".into(), json!(Self::search_vector(&rec)));
        self.put(rec);
        let r = self.person(id).unwrap_or(Value::Null);
        Ok((
            r.clone(),
            vec![Event {
                name: "person.updated".into(),
                record: r,
                updated_fields: Some(changed),
            }],
        ))
    }

    /// `PATCH /rest/people` without id: updates every record the filter
    /// matches (all of them without a filter), as Twenty does. Unlike a
    /// list, the filter is not narrowed to live people: soft-deleted ones
    /// match too and stay deleted (live Twenty 2.21:
    /// samples/live13/trash_filtered_patch.json).
    pub fn update_many(
        &mut self,
        q: &ListQuery,
        body: &Value,
    ) -> Result<(Vec<Value>, Vec<Event>), ApiError> {
        let f = self.parse_filter_as_given(q.filter.as_deref())?;
        let ids: Vec<String> = self
            .people
            .values()
            .filter(|r| f.matches(&Value::Object((*r).clone())))
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect();
        let mut out = Vec::new();
        let mut events = Vec::new();
        for id in ids {
            let (r, mut e) = self.update_person(&id, body)?;
            out.push(r);
            events.append(&mut e);
        }
        Ok((out, events))
    }

    /// `DELETE /rest/people/{id}` (destroy) or with `soft_delete=true`.
    pub fn delete_person(&mut self, id: &str, soft: bool) -> Result<(Value, Vec<Event>), ApiError> {
        let Some(rec) = self.people.get(id).cloned() else {
            return Err(ApiError::not_found());
        };
        if soft {
            // Again on a soft-deleted person: 200, `deletedAt` and
            // `updatedAt` stamped anew (live Twenty 2.21:
            // samples/live13/trash_soft_delete_again.json).
            let mut rec = rec;
            let now = now_ts(self.skew);
            rec.insert("deletedAt".into(), json!(now));
            rec.insert("updatedAt".into(), json!(now));
            self.put(rec);
            let r = self.person(id).unwrap_or(Value::Null);
            Ok((
                r.clone(),
                vec![Event {
                    name: "person.deleted".into(),
                    record: r,
                    updated_fields: Some(vec!["deletedAt".into()]),
                }],
            ))
        } else {
            let r = self.render(&rec);
            self.remove(id);
            Ok((
                json!({"id": id}),
                vec![Event {
                    name: "person.destroyed".into(),
                    record: r,
                    updated_fields: None,
                }],
            ))
        }
    }

    /// GraphQL `restorePerson`.
    pub fn restore_person(&mut self, id: &str) -> Result<(Value, Vec<Event>), ApiError> {
        let Some(mut rec) = self.people.get(id).cloned() else {
            return Err(ApiError::not_found());
        };
        // A live person is "restored" too: answered, `updatedAt` bumped
        // (live Twenty 2.21: samples/live13/graphql_restore_live_person.json).
        rec.insert("deletedAt".into(), Value::Null);
        rec.insert("updatedAt".into(), json!(now_ts(self.skew)));
        if self.clashes(&rec, id) {
            return Err(ApiError::duplicate());
        }
        self.put(rec);
        let r = self.person(id).unwrap_or(Value::Null);
        Ok((
            r.clone(),
            vec![Event {
                name: "person.restored".into(),
                record: r,
                updated_fields: Some(vec!["deletedAt".into()]),
            }],
        ))
    }

    /// The workflow of a new workspace: links a company (named after the
    /// email domain) to the person, as Twenty's workflow user.
    pub fn workflow_link_company(&mut self, id: &str) -> Option<Event> {
        let mut rec = self
            .people
            .get(id)
            .filter(|r| r.get("deletedAt").is_none_or(Value::is_null))
            .cloned()?;
        let domain = rec
            .get("emails")
            .and_then(|e| e.get("primaryEmail"))
            .and_then(Value::as_str)
            .and_then(|e| e.split('@').nth(1))
            .unwrap_or("unknown.invalid")
            .to_string();
        let company_id = self.find_or_create_company(&domain);
        rec.insert("companyId".into(), json!(company_id));
        rec.insert("updatedAt".into(), json!(now_ts(self.skew)));
        rec.insert("updatedBy".into(), actor("WORKFLOW", "Workflow"));
        self.put(rec);
        let r = self.person(id)?;
        Some(Event {
            name: "person.updated".into(),
            record: r,
            updated_fields: Some(vec!["companyId".into()]),
        })
    }

    // ---------- reads ----------

    fn person_field_names(&self) -> Vec<String> {
        let mut v: Vec<String> = [
            "id",
            "createdAt",
            "updatedAt",
            "deletedAt",
            "name",
            "emails",
            "linkedinLink",
            "jobTitle",
            "phones",
            "avatarUrl",
            "position",
            "createdBy",
            "updatedBy",
            "companyId",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(self.customs.iter().map(|f| f.name.clone()));
        v
    }

    /// A person filter as written (field names checked), without the
    /// implicit `deletedAt[is]:NULL` of lists.
    fn parse_filter_as_given(&self, raw: Option<&str>) -> Result<Filter, ApiError> {
        let f = filter::parse(raw.unwrap_or("")).map_err(ApiError::bad_request)?;
        let mut names = Vec::new();
        f.fields(&mut names);
        let known = self.person_field_names();
        for n in names {
            if !known.contains(&n) {
                return Err(ApiError::bad_request(format!(
                    "field '{n}' does not exist in 'person' object"
                )));
            }
        }
        Ok(f)
    }

    /// A list filter: soft-deleted people are left out unless it names
    /// `deletedAt`.
    fn parse_person_filter(&self, raw: Option<&str>) -> Result<Filter, ApiError> {
        let f = self.parse_filter_as_given(raw)?;
        Ok(if f.names_deleted_at() {
            f
        } else {
            Filter::And(vec![
                f,
                filter::parse("deletedAt[is]:NULL").map_err(ApiError::bad_request)?,
            ])
        })
    }

    /// `GET /rest/people`.
    pub fn list_people(&self, q: &ListQuery) -> Result<Value, ApiError> {
        let f = self.parse_person_filter(q.filter.as_deref())?;
        let recs: Vec<Value> = self
            .people
            .values()
            .map(|r| self.render(r))
            .filter(|r| f.matches(r))
            .collect();
        page("people", recs, q, &self.person_field_names())
    }

    /// `GET /rest/people/{id}`.
    pub fn get_person(&self, id: &str) -> Result<Value, ApiError> {
        self.people
            .get(id)
            .filter(|r| r.get("deletedAt").is_none_or(Value::is_null))
            .map(|r| json!({"data": {"person": self.render(r)}}))
            .ok_or_else(ApiError::not_found)
    }

    // ---------- companies ----------

    fn find_or_create_company(&mut self, name: &str) -> String {
        if let Some((id, _)) = self
            .companies
            .iter()
            .find(|(_, c)| c.get("name").and_then(Value::as_str) == Some(name))
        {
            return id.clone();
        }
        let id = Uuid::new_v4().to_string();
        self.insert_company(&id, name);
        id
    }

    fn insert_company(&mut self, id: &str, name: &str) -> Value {
        let now = now_ts(self.skew);
        self.position += 1;
        let c = json!({
            "id": id, "createdAt": now, "updatedAt": now, "deletedAt": null,
            "name": name,
            "domainName": {"primaryLinkLabel": "", "primaryLinkUrl": "", "secondaryLinks": []},
            "employees": null,
            "linkedinLink": {"primaryLinkLabel": "", "primaryLinkUrl": "", "secondaryLinks": []},
            "position": -self.position,
            "createdBy": actor("API", &self.key_name),
            "updatedBy": actor("API", &self.key_name),
        });
        if let Value::Object(m) = &c {
            self.companies.insert(id.to_string(), m.clone());
        }
        c
    }

    /// `POST /rest/companies`.
    pub fn create_company(&mut self, body: &Value) -> Result<Value, ApiError> {
        let name = body
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_request("Company name is required"))?;
        let id = match body.get("id").and_then(Value::as_str) {
            Some(s) => Uuid::parse_str(s)
                .map_err(|_| ApiError::bad_request(format!("Invalid UUID: {s}")))?
                .to_string(),
            None => Uuid::new_v4().to_string(),
        };
        if self.companies.contains_key(&id) {
            return Err(ApiError::duplicate());
        }
        let c = self.insert_company(&id, name);
        Ok(json!({"data": {"createCompany": c}}))
    }

    /// `POST /rest/batch/companies` (`upsert` matches on id).
    pub fn create_companies(&mut self, bodies: &[Value], upsert: bool) -> Result<Value, ApiError> {
        if bodies.len() > MAX_RECORDS {
            return Err(ApiError::bad_request(format!(
                "Maximum number of records to upsert is {MAX_RECORDS}."
            )));
        }
        // Validate all first: the batch is all or nothing.
        for b in bodies {
            if b.get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::bad_request("Company name is required"));
            }
            if let Some(id) = b.get("id").and_then(Value::as_str) {
                if Uuid::parse_str(id).is_err() {
                    return Err(ApiError::bad_request(format!("Invalid UUID: {id}")));
                }
                if !upsert && self.companies.contains_key(id) {
                    return Err(ApiError::duplicate());
                }
            }
        }
        let mut out = Vec::new();
        for b in bodies {
            let name = b.get("name").and_then(Value::as_str).unwrap_or_default();
            let id = b
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| Uuid::new_v4().to_string());
            if let Some(c) = self.companies.get_mut(&id) {
                c.insert("name".into(), json!(name));
                c.insert("updatedAt".into(), json!(now_ts(self.skew)));
                out.push(Value::Object(c.clone()));
            } else {
                out.push(self.insert_company(&id, name));
            }
        }
        Ok(json!({"data": {"createCompanies": out}}))
    }

    /// `GET /rest/companies`.
    pub fn list_companies(&self, q: &ListQuery) -> Result<Value, ApiError> {
        let f = filter::parse(q.filter.as_deref().unwrap_or("")).map_err(ApiError::bad_request)?;
        let recs: Vec<Value> = self
            .companies
            .values()
            .map(|c| Value::Object(c.clone()))
            .filter(|c| f.matches(c) && c["deletedAt"].is_null())
            .collect();
        page(
            "companies",
            recs,
            q,
            &[
                "id".into(),
                "name".into(),
                "createdAt".into(),
                "updatedAt".into(),
                "position".into(),
            ],
        )
    }

    /// `GET /rest/companies/{id}`.
    pub fn get_company(&self, id: &str) -> Result<Value, ApiError> {
        self.companies
            .get(id)
            .map(|c| json!({"data": {"company": c}}))
            .ok_or_else(ApiError::not_found)
    }

    // ---------- metadata ----------

    fn person_fields_meta(&self) -> Vec<Value> {
        let mut v = self.standard_fields.clone();
        v.extend(self.customs.iter().map(|f| f.meta.clone()));
        v
    }

    /// `GET /rest/metadata/objects`: objects with their fields.
    pub fn objects(&self) -> Value {
        let stamp = "2026-11-23T05:41:29.870Z";
        let objs = vec![
            json!({
                "id": PERSON_OBJECT_ID, "nameSingular": "person", "namePlural": "people",
                "labelSingular": "Person", "labelPlural": "People", "description": "A person",
                "icon": "IconUser", "isCustom": false, "isActive": true, "isSystem": false,
                "createdAt": stamp, "updatedAt": stamp, "fields": self.person_fields_meta(),
            }),
            json!({
                "id": COMPANY_OBJECT_ID, "nameSingular": "company", "namePlural": "companies",
                "labelSingular": "Company", "labelPlural": "Companies", "description": "A company",
                "icon": "IconBuildingSkyscraper", "isCustom": false, "isActive": true, "isSystem": false,
                "createdAt": stamp, "updatedAt": stamp, "fields": [],
            }),
        ];
        let n = objs.len();
        json!({"data": objs, "pageInfo": {"hasNextPage": false, "startCursor": null, "endCursor": null}, "totalCount": n})
    }

    /// `GET /rest/metadata/fields`.
    pub fn fields(&self) -> Value {
        let f = self.person_fields_meta();
        let n = f.len();
        json!({"data": f, "pageInfo": {"hasNextPage": false, "startCursor": null, "endCursor": null}, "totalCount": n})
    }

    /// `POST /rest/metadata/fields`.
    pub fn create_field(&mut self, body: &Value) -> Result<Value, ApiError> {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(obj), Some(ty), Some(name), Some(label)) =
            (s("objectMetadataId"), s("type"), s("name"), s("label"))
        else {
            return Err(ApiError::bad_request(
                "objectMetadataId, type, name and label are required",
            ));
        };
        if obj != PERSON_OBJECT_ID {
            return Err(ApiError::bad_request(format!(
                "Object metadata {obj} not found or not supported by this fake"
            )));
        }
        const TYPES: &[&str] = &[
            "TEXT",
            "NUMBER",
            "NUMERIC",
            "BOOLEAN",
            "DATE_TIME",
            "DATE",
            "SELECT",
            "MULTI_SELECT",
            "RAW_JSON",
            "RATING",
            "UUID",
            "ARRAY",
        ];
        if !TYPES.contains(&ty.as_str()) {
            return Err(ApiError::bad_request(format!(
                "Field type {ty} is not supported by this fake"
            )));
        }
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_alphanumeric());
        if !valid {
            return Err(ApiError::bad_request(format!(
                "Name \"{name}\" is not in camelCase"
            )));
        }
        if self.person_field_names().contains(&name)
            || self
                .standard_fields
                .iter()
                .any(|f| f["name"] == json!(name))
        {
            return Err(ApiError::bad_request(format!(
                "Name \"{name}\" is not available"
            )));
        }
        let is_unique = body
            .get("isUnique")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let now = now_ts(self.skew);
        let meta = json!({
            "id": Uuid::new_v4().to_string(),
            "type": ty, "name": name, "label": label,
            "description": body.get("description").cloned().unwrap_or(Value::Null),
            "icon": body.get("icon").cloned().unwrap_or(json!("IconAbc")),
            "isActive": true, "isSystem": false, "isCustom": true,
            "isUIEditable": true, "isUIReadOnly": false,
            "isNullable": body.get("isNullable").and_then(Value::as_bool).unwrap_or(true),
            "isUnique": is_unique,
            "defaultValue": body.get("defaultValue").cloned().unwrap_or(Value::Null),
            "settings": body.get("settings").cloned().unwrap_or(Value::Null),
            "options": body.get("options").cloned().unwrap_or(Value::Null),
            "workspaceId": WORKSPACE_ID, "objectMetadataId": obj,
            "isLabelSyncedWithName": false, "createdAt": now, "updatedAt": now,
        });
        let f = CustomField {
            name: name.clone(),
            ty: ty.clone(),
            is_unique,
            meta: meta.clone(),
        };
        // Existing records get the new column's default.
        for r in self.people.values_mut() {
            r.entry(name.clone()).or_insert_with(|| default_for(&ty));
        }
        self.customs.push(f);
        Ok(json!({"data": {"createOneField": meta}}))
    }

    /// `GET /rest/metadata/webhooks`: a bare array, as recorded.
    pub fn webhooks(&self) -> Value {
        Value::Array(self.webhooks.clone())
    }

    /// `POST /rest/metadata/webhooks`.
    pub fn create_webhook(&mut self, body: &Value) -> Result<Value, ApiError> {
        let Some(url) = body.get("targetUrl").and_then(Value::as_str) else {
            return Err(ApiError::bad_request("targetUrl is required"));
        };
        let now = now_ts(self.skew);
        let w = json!({
            "id": Uuid::new_v4().to_string(),
            "targetUrl": url,
            "operations": body.get("operations").cloned().unwrap_or(json!(["*.*"])),
            "description": body.get("description").cloned().unwrap_or(json!("")),
            "secret": body.get("secret").cloned().unwrap_or(json!("")),
            "workspaceId": WORKSPACE_ID,
            "createdAt": now, "updatedAt": now, "deletedAt": null,
        });
        self.webhooks.push(w.clone());
        Ok(json!({"data": {"createOneWebhook": w}}))
    }

    /// `DELETE /rest/metadata/webhooks/{id}`.
    pub fn delete_webhook(&mut self, id: &str) -> Result<Value, ApiError> {
        let before = self.webhooks.len();
        self.webhooks.retain(|w| w["id"] != json!(id));
        if self.webhooks.len() == before {
            return Err(ApiError::not_found());
        }
        Ok(json!({"data": {"deleteOneWebhook": {"id": id}}}))
    }

    /// Registered webhooks that want `event` (`person.updated`):
    /// (id, target URL, secret).
    pub fn targets(&self, event: &str) -> Vec<(String, String, String)> {
        let object = event.split('.').next().unwrap_or_default();
        self.webhooks
            .iter()
            .filter(|w| {
                w["operations"].as_array().is_some_and(|ops| {
                    ops.iter()
                        .filter_map(Value::as_str)
                        .any(|op| op == event || op == "*.*" || op == format!("{object}.*"))
                })
            })
            .map(|w| {
                (
                    w["id"].as_str().unwrap_or_default().to_string(),
                    w["targetUrl"].as_str().unwrap_or_default().to_string(),
                    w["secret"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

fn default_for(ty: &str) -> Value {
    match ty {
        "TEXT" => json!(""),
        "BOOLEAN" => json!(false),
        "ARRAY" | "MULTI_SELECT" => Value::Null,
        _ => Value::Null,
    }
}

fn text(field: &str, v: &Value) -> Result<String, ApiError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        other => Err(ApiError::bad_request(format!(
            "Invalid value for field \"{field}\": expected a string, got {other}"
        ))),
    }
}

fn custom_value(f: &CustomField, v: &Value) -> Result<Value, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "Invalid value for field \"{}\" of type {}: {v}",
            f.name, f.ty
        ))
    };
    Ok(match f.ty.as_str() {
        "TEXT" => json!(text(&f.name, v)?),
        "NUMBER" | "NUMERIC" | "RATING" => match v {
            Value::Null | Value::Number(_) => v.clone(),
            _ => return Err(bad()),
        },
        "BOOLEAN" => match v {
            Value::Null => json!(false),
            Value::Bool(_) => v.clone(),
            _ => return Err(bad()),
        },
        "DATE_TIME" | "DATE" => match v {
            Value::Null => Value::Null,
            Value::String(s) => {
                let t = chrono::DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
                json!(t
                    .with_timezone(&Utc)
                    .to_rfc3339_opts(SecondsFormat::Millis, true))
            }
            _ => return Err(bad()),
        },
        "SELECT" | "UUID" => match v {
            Value::Null | Value::String(_) => v.clone(),
            _ => return Err(bad()),
        },
        "MULTI_SELECT" | "ARRAY" => match v {
            Value::Null | Value::Array(_) => v.clone(),
            _ => return Err(bad()),
        },
        // Live Twenty 2.21 stores a RAW_JSON `[]` or `{}` as null (issue 13,
        // observation 3: written `[]`, read back `null`).
        "RAW_JSON" => match v {
            Value::Array(a) if a.is_empty() => Value::Null,
            Value::Object(o) if o.is_empty() => Value::Null,
            _ => v.clone(),
        },
        _ => v.clone(),
    })
}

/// Twenty 2.21 checks a phone's country code against the one it infers from
/// the number (libphonenumber) and refuses a conflict with this body
/// (issue 13, observation 2: +1 416… with `US` → 400; with `CA` → 201).
fn check_phone_country(number: &str, country: &str, calling: &str) -> Result<(), ApiError> {
    let (number, country) = (number.trim(), country.trim());
    if number.is_empty() || country.is_empty() {
        return Ok(());
    }
    let full = if number.starts_with('+') {
        number.to_string()
    } else {
        let digits: String = number.chars().filter(char::is_ascii_digit).collect();
        format!("+{}{digits}", calling.trim().trim_start_matches('+'))
    };
    let inferred = phonenumber::parse(None, &full)
        .ok()
        .and_then(|n| n.country().id())
        .map(|id| id.as_ref().to_string());
    match inferred {
        Some(i) if !i.eq_ignore_ascii_case(country) => Err(ApiError {
            status: 400,
            // Live Twenty 2.21 (issue 13 live run):
            // samples/live13/error_conflicting_phone_country.json.
            body: json!({"statusCode": 400, "error": "Error", "messages": ["Provided and inferred country code are conflicting"], "code": "CONFLICTING_PHONE_COUNTRY_CODE"}),
        }),
        _ => Ok(()),
    }
}

/// A LINKS composite as live Twenty 2.21 stores it: the links in order
/// (the primary one when it has a URL, then the secondary ones), the first
/// as primary (URL and label), the rest as secondary; sub-fields not sent
/// are empty (samples/live13/partial_composites.json: a label alone leaves
/// nothing; secondary links without a primary URL promote the first).
fn normalize_links(parts: &Map<String, Value>) -> Map<String, Value> {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let mut links: Vec<(String, String)> = Vec::new();
    let url = s(parts.get("primaryLinkUrl"));
    if !url.trim().is_empty() {
        links.push((url, s(parts.get("primaryLinkLabel"))));
    }
    if let Some(Value::Array(extra)) = parts.get("secondaryLinks") {
        for l in extra {
            links.push((s(l.get("url")), s(l.get("label"))));
        }
    }
    let mut out = Map::new();
    let mut it = links.into_iter();
    let (u, l) = it.next().unwrap_or_default();
    out.insert("primaryLinkLabel".into(), json!(l));
    out.insert("primaryLinkUrl".into(), json!(u));
    let rest: Vec<Value> = it.map(|(u, l)| json!({"url": u, "label": l})).collect();
    out.insert("secondaryLinks".into(), Value::Array(rest));
    out
}

/// Checks the primary and additional phones of a `phones` composite.
fn check_phones(phones: &Map<String, Value>) -> Result<(), ApiError> {
    let g = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let whole = Value::Object(phones.clone());
    check_phone_country(
        &g(&whole, "primaryPhoneNumber"),
        &g(&whole, "primaryPhoneCountryCode"),
        &g(&whole, "primaryPhoneCallingCode"),
    )?;
    if let Some(Value::Array(extra)) = phones.get("additionalPhones") {
        for p in extra {
            check_phone_country(&g(p, "number"), &g(p, "countryCode"), &g(p, "callingCode"))?;
        }
    }
    Ok(())
}

// ---------- ordering and paging ----------

fn order_spec(
    raw: Option<&str>,
    known: &[String],
) -> Result<Vec<(Vec<String>, bool, bool)>, ApiError> {
    // (path, ascending, nulls_first)
    let mut spec = Vec::new();
    if let Some(raw) = raw.filter(|s| !s.trim().is_empty()) {
        for part in raw.split(',') {
            let part = part.trim();
            let (field, dir) = match part.find('[') {
                Some(i) if part.ends_with(']') => (&part[..i], &part[i + 1..part.len() - 1]),
                _ => (part, "AscNullsFirst"),
            };
            let (asc, nulls_first) = match dir {
                "AscNullsFirst" => (true, true),
                "AscNullsLast" => (true, false),
                "DescNullsFirst" => (false, true),
                "DescNullsLast" => (false, false),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "'order_by' direction '{other}' invalid. Allowed values are 'AscNullsFirst', 'AscNullsLast', 'DescNullsFirst', 'DescNullsLast'. eg: ?order_by=field_1[AscNullsFirst],field_2[DescNullsLast],field_3"
                    )))
                }
            };
            let path: Vec<String> = field.split('.').map(str::to_string).collect();
            if !known.contains(&path[0]) {
                return Err(ApiError::bad_request(format!(
                    "field '{}' does not exist in object",
                    path[0]
                )));
            }
            spec.push((path, asc, nulls_first));
        }
    }
    if !spec.iter().any(|(p, _, _)| p.len() == 1 && p[0] == "id") {
        spec.push((vec!["id".to_string()], true, true));
    }
    Ok(spec)
}

fn key_of(rec: &Value, spec: &[(Vec<String>, bool, bool)]) -> Vec<Option<String>> {
    spec.iter()
        .map(|(path, _, _)| {
            let mut cur = rec;
            for p in path {
                cur = cur.get(p).unwrap_or(&Value::Null);
            }
            match cur {
                Value::Null => None,
                Value::String(s) if s.is_empty() => None,
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(filter::num_key(n)),
                other => Some(other.to_string()),
            }
        })
        .collect()
}

fn cmp_keys(
    a: &[Option<String>],
    b: &[Option<String>],
    spec: &[(Vec<String>, bool, bool)],
) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    for (i, (_, asc, nulls_first)) in spec.iter().enumerate() {
        let o = match (&a[i], &b[i]) {
            (None, None) => Equal,
            (None, Some(_)) => {
                if *nulls_first {
                    Less
                } else {
                    Greater
                }
            }
            (Some(_), None) => {
                if *nulls_first {
                    Greater
                } else {
                    Less
                }
            }
            (Some(x), Some(y)) => {
                let o = filter::order(x, y);
                if *asc {
                    o
                } else {
                    o.reverse()
                }
            }
        };
        if o != Equal {
            return o;
        }
    }
    Equal
}

fn encode_cursor(key: &[Option<String>]) -> String {
    hex::encode(serde_json::to_vec(key).unwrap_or_default())
}

fn decode_cursor(s: &str) -> Result<Vec<Option<String>>, ApiError> {
    hex::decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::bad_request(format!("Invalid cursor: {s}")))
}

fn page(
    plural: &str,
    mut recs: Vec<Value>,
    q: &ListQuery,
    known: &[String],
) -> Result<Value, ApiError> {
    let limit = match q.limit.as_deref() {
        None | Some("") => 60,
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("limit must be an integer, got {l}")))?
            .clamp(0, MAX_RECORDS as i64) as usize,
    };
    let spec = order_spec(q.order_by.as_deref(), known)?;
    let total = recs.len();
    let mut keyed: Vec<(Vec<Option<String>>, Value)> =
        recs.drain(..).map(|r| (key_of(&r, &spec), r)).collect();
    keyed.sort_by(|a, b| cmp_keys(&a.0, &b.0, &spec));
    if let Some(c) = q.starting_after.as_deref().filter(|s| !s.is_empty()) {
        let ck = decode_cursor(c)?;
        if ck.len() != spec.len() {
            return Err(ApiError::bad_request(format!("Invalid cursor: {c}")));
        }
        keyed.retain(|(k, _)| cmp_keys(k, &ck, &spec) == std::cmp::Ordering::Greater);
    }
    let has_next = keyed.len() > limit;
    keyed.truncate(limit);
    let start = keyed.first().map(|(k, _)| encode_cursor(k));
    let end = keyed.last().map(|(k, _)| encode_cursor(k));
    let items: Vec<Value> = keyed.into_iter().map(|(_, r)| r).collect();
    let mut data = Map::new();
    data.insert(plural.to_string(), Value::Array(items));
    Ok(json!({
        "data": data,
        "totalCount": total,
        "pageInfo": {"startCursor": start, "endCursor": end, "hasNextPage": has_next, "hasPreviousPage": q.starting_after.is_some()},
    }))
}
