//! Configuration of a Postgres store.

use std::collections::BTreeMap;
use std::fmt;

use contact_sync_core::model::ALL_FIELDS;

/// How the store captures changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CdcMode {
    /// A logical replication slot (pgoutput plugin + a publication on the
    /// table), peeked with plain SQL. Needs `wal_level = logical` and a role
    /// with REPLICATION (or superuser).
    #[default]
    Slot,
    /// A row trigger that copies every row image into an outbox table with
    /// a sequence number. For roles without REPLICATION. Writers to the
    /// table serialize on a transaction-level advisory lock so that the
    /// sequence order is the commit order.
    Outbox,
}

/// Where and how to reach one Postgres store.
///
/// `Debug` never shows the password of `url`.
#[derive(Clone)]
pub struct PgConfig {
    /// Connection string (`postgres://user:pass@host:port/db` or
    /// `host=… user=… password=…`). A secret: never logged.
    pub url: String,
    /// Store name in config, logs and the state database (`supabase`).
    pub name: String,
    /// Schema of the contacts table (default `public`).
    pub schema: String,
    /// Contacts table (default `contacts`).
    pub table: String,
    /// Column-name overrides: canonical field name (one of the 33, or `id`
    /// for the row's own uuid key) → column name. Unlisted fields use their
    /// canonical name.
    pub columns: BTreeMap<String, String>,
    /// Change capture mode.
    pub cdc: CdcMode,
    /// Logical replication slot (slot mode; default `contact_sync`). Slots
    /// are cluster-wide: two stores (or two databases) on one server need
    /// different slot names; `migrate` refuses a slot of another database.
    pub slot_name: String,
    /// Publication of the table (slot mode; default `contact_sync`).
    pub publication: String,
    /// Outbox table, in `schema` (outbox mode; default `contact_sync_outbox`).
    pub outbox_table: String,
    /// NOTIFY channel that wakes the poller (default `contact_sync_changes`).
    pub notify_channel: String,
}

impl PgConfig {
    /// A config with every default: `public.contacts`, slot mode, slot and
    /// publication `contact_sync`.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            name: name.into(),
            schema: "public".into(),
            table: "contacts".into(),
            columns: BTreeMap::new(),
            cdc: CdcMode::Slot,
            slot_name: "contact_sync".into(),
            publication: "contact_sync".into(),
            outbox_table: "contact_sync_outbox".into(),
            notify_channel: "contact_sync_changes".into(),
        }
    }

    /// The column holding canonical field `field` (or `id`).
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        self.columns.get(field).map(String::as_str).unwrap_or(field)
    }

    /// Checks names: overrides name known fields and distinct columns; the
    /// slot name is valid for Postgres (`[a-z0-9_]`, at most 63 bytes).
    pub fn check(&self) -> Result<(), String> {
        for (field, col) in &self.columns {
            if field != "id" && !ALL_FIELDS.contains(&field.as_str()) {
                return Err(format!("column override for unknown field `{field}`"));
            }
            if col.trim().is_empty() {
                return Err(format!("column override for `{field}` is empty"));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in ALL_FIELDS.iter().copied().chain(["id", "updated_at"]) {
            if !seen.insert(self.column(f)) {
                return Err(format!(
                    "column `{}` is mapped to more than one field",
                    self.column(f)
                ));
            }
        }
        let slot_ok = !self.slot_name.is_empty()
            && self.slot_name.len() <= 63
            && self
                .slot_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(format!(
                "slot name `{}` must be 1 to 63 characters of a-z, 0-9 and _",
                self.slot_name
            ));
        }
        for (what, v) in [
            ("schema", &self.schema),
            ("table", &self.table),
            ("publication", &self.publication),
            ("outbox table", &self.outbox_table),
            ("notify channel", &self.notify_channel),
        ] {
            if v.trim().is_empty() || v.len() > 63 {
                return Err(format!("{what} name must be 1 to 63 characters"));
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConfig")
            .field("url", &redact_url(&self.url))
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("columns", &self.columns)
            .field("cdc", &self.cdc)
            .field("slot_name", &self.slot_name)
            .field("publication", &self.publication)
            .field("outbox_table", &self.outbox_table)
            .field("notify_channel", &self.notify_channel)
            .finish()
    }
}

/// The connection string with its password replaced by `***`, in both the
/// URL form (`postgres://user:pass@host`, `?password=`) and the key/value
/// form (`password=…`).
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    // URL userinfo.
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map(|i| rest_start + i)
            .unwrap_or(out.len());
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                let end = rest_start + at;
                out.replace_range(start..end, "***");
            }
        }
    }
    // `password=value` in a query string or a key/value string.
    let lower = out.to_ascii_lowercase();
    let mut result = String::with_capacity(out.len());
    let mut i = 0;
    while let Some(pos) = lower[i..].find("password=") {
        let start = i + pos + "password=".len();
        result.push_str(&out[i..start]);
        result.push_str("***");
        let bytes = out.as_bytes();
        let mut end = start;
        if bytes.get(start) == Some(&b'\'') {
            end += 1;
            while end < bytes.len() && bytes[end] != b'\'' {
                end += if bytes[end] == b'\\' { 2 } else { 1 };
            }
            end = (end + 1).min(bytes.len());
        } else {
            while end < bytes.len() && !matches!(bytes[end], b' ' | b'&' | b'\t') {
                end += 1;
            }
        }
        i = end;
    }
    result.push_str(&out[i..]);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_password_in_every_form() {
        for url in [
            "postgres://app:s3cret@db.example.com:5432/postgres",
            "postgresql://app:s3cret@host/db?sslmode=require",
            "postgres://app@host/db?password=s3cret&sslmode=require",
            "host=localhost user=app password=s3cret dbname=x",
            "host=localhost user=app password='s3 cret' dbname=x",
        ] {
            let cfg = PgConfig::new("supabase", url);
            let shown = format!("{cfg:?}");
            assert!(
                !shown.contains("s3cret") && !shown.contains("s3 cret"),
                "{shown}"
            );
            assert!(shown.contains("***"), "{shown}");
        }
        let shown = redact_url("postgres://app:s3cret@host/db");
        assert_eq!(shown, "postgres://app:***@host/db");
    }

    #[test]
    fn check_refuses_bad_names() {
        let mut cfg = PgConfig::new("s", "postgres://x@h/d");
        assert!(cfg.check().is_ok());
        cfg.columns.insert("nope".into(), "x".into());
        assert!(cfg.check().unwrap_err().contains("nope"));
        cfg.columns.clear();
        cfg.columns.insert("notes".into(), "display_name".into());
        assert!(cfg.check().unwrap_err().contains("display_name"));
        cfg.columns.clear();
        cfg.slot_name = "Bad-Name".into();
        assert!(cfg.check().unwrap_err().contains("slot name"));
    }
}
