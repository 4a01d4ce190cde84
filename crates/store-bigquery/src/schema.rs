//! The `contacts` table: its default schema, the column mapping for
//! existing tables, and the layout (field → column, type) the store's SQL
//! is built from.

use std::collections::BTreeMap;

use contact_sync_core::model::ALL_FIELDS;

use crate::client::Field;
use crate::error::BqError;

/// How a canonical field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `contact_id`: STRING, or INT64 read as text.
    Id,
    /// A text field.
    Text,
    /// JSON (the five LLM fields, `external_ids`): a JSON column, or a
    /// STRING column holding JSON text.
    Json,
    /// `tags`: REPEATED STRING.
    Tags,
    /// TIMESTAMP.
    Timestamp,
    /// `emails` / `phones`: REPEATED RECORD.
    Emails,
    Phones,
    /// `version`: INT64.
    Version,
}

pub(crate) fn kind_of(field: &str) -> Kind {
    match field {
        "contact_id" => Kind::Id,
        "external_ids"
        | "llm_context"
        | "relationships"
        | "communication_stats"
        | "social_profiles"
        | "custom_attributes" => Kind::Json,
        "tags" => Kind::Tags,
        "created_at" | "last_updated" | "deleted_at" => Kind::Timestamp,
        "emails" => Kind::Emails,
        "phones" => Kind::Phones,
        "version" => Kind::Version,
        _ => Kind::Text,
    }
}

/// Canonical field → column name overrides, for existing tables whose
/// columns are named differently. Fields not listed use their own name.
///
/// ```
/// use contact_sync_bigquery::ColumnMap;
/// let map = ColumnMap::default()
///     .rename("contact_id", "id")
///     .rename("canonical_name", "full_name");
/// assert_eq!(map.column("contact_id"), "id");
/// assert_eq!(map.column("notes"), "notes");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnMap {
    renames: BTreeMap<String, String>,
}

impl ColumnMap {
    /// Stores canonical `field` in column `column`.
    pub fn rename(mut self, field: &str, column: &str) -> Self {
        self.renames.insert(field.to_string(), column.to_string());
        self
    }

    /// A map from `(field, column)` pairs (as read from config). Unknown
    /// field names are an error.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let mut m = ColumnMap::default();
        for (f, c) in pairs {
            if !ALL_FIELDS.contains(&f) {
                return Err(format!("column mapping: `{f}` is not a contact field"));
            }
            m = m.rename(f, c);
        }
        Ok(m)
    }

    /// The column holding canonical `field`.
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        self.renames.get(field).map(String::as_str).unwrap_or(field)
    }
}

fn record_fields(first: &str) -> Vec<Field> {
    vec![
        Field::nullable(first, "STRING"),
        Field::nullable("label", "STRING"),
        Field::nullable("is_primary", "BOOL"),
    ]
}

/// The schema `migrate` creates for the contacts table (DESIGN.md), with
/// column names from `map`.
pub fn contacts_schema(map: &ColumnMap) -> Vec<Field> {
    ALL_FIELDS
        .iter()
        .map(|f| {
            let col = map.column(f);
            match (*f, kind_of(f)) {
                ("contact_id", _) => Field::required(col, "STRING"),
                ("canonical_name", _) => Field::required(col, "STRING"),
                (_, Kind::Version) => Field::required(col, "INT64"),
                (_, Kind::Json) => Field::nullable(col, "JSON"),
                (_, Kind::Tags) => Field::repeated(col, "STRING"),
                (_, Kind::Timestamp) => Field::nullable(col, "TIMESTAMP"),
                (_, Kind::Emails) => Field::repeated_record(col, record_fields("address")),
                (_, Kind::Phones) => Field::repeated_record(col, record_fields("number")),
                _ => Field::nullable(col, "STRING"),
            }
        })
        .collect()
}

/// The schema of the optional `contact_changes` analytics table.
pub fn journal_schema() -> Vec<Field> {
    vec![
        Field::required("seq", "INT64"),
        Field::required("contact_id", "STRING"),
        Field::required("version", "INT64"),
        Field::nullable("prev_version", "INT64"),
        Field::required("op", "STRING"),
        Field::nullable("origin", "STRING"),
        Field::repeated("changed_fields", "STRING"),
        Field::nullable("changes", "JSON"),
        Field::nullable("conflicts", "JSON"),
        Field::nullable("after", "JSON"),
        Field::nullable("content_hash", "STRING"),
        Field::required("at", "TIMESTAMP"),
    ]
}

/// The fingerprint sidecar the store keeps next to the contacts table
/// (`<table>_sync_fingerprints`): the fingerprint of each row as the
/// engine last took it in. The sweep compares it with the table.
pub fn fingerprint_schema() -> Vec<Field> {
    vec![
        Field::required("contact_id", "STRING"),
        Field::required("fp", "INT64"),
    ]
}

/// Whether column `c` can hold a field of kind `kind`.
fn fits(kind: Kind, c: &Field) -> bool {
    match kind {
        Kind::Id => !c.is_repeated() && matches!(c.ty.as_str(), "STRING" | "INT64"),
        Kind::Text => !c.is_repeated() && c.ty == "STRING",
        Kind::Json => !c.is_repeated() && matches!(c.ty.as_str(), "JSON" | "STRING"),
        Kind::Tags => c.is_repeated() && c.ty == "STRING",
        Kind::Timestamp => !c.is_repeated() && c.ty == "TIMESTAMP",
        Kind::Version => !c.is_repeated() && c.ty == "INT64",
        Kind::Emails | Kind::Phones => {
            let first = if kind == Kind::Emails {
                "address"
            } else {
                "number"
            };
            c.is_repeated()
                && c.ty == "RECORD"
                && [first, "label", "is_primary"]
                    .iter()
                    .all(|s| c.fields.iter().any(|x| x.name == *s))
        }
    }
}

/// What a field of kind `kind` needs, in words.
fn needs(kind: Kind) -> &'static str {
    match kind {
        Kind::Id => "STRING or INT64",
        Kind::Text => "STRING",
        Kind::Json => "JSON or STRING",
        Kind::Tags => "REPEATED STRING",
        Kind::Timestamp => "TIMESTAMP",
        Kind::Version => "INT64",
        Kind::Emails => "REPEATED RECORD (address STRING, label STRING, is_primary BOOL)",
        Kind::Phones => "REPEATED RECORD (number STRING, label STRING, is_primary BOOL)",
    }
}

/// A column type in DDL (`ARRAY<STRUCT<address STRING, …>>`), for
/// `ALTER TABLE … ADD COLUMN` hints.
fn ddl_type(f: &Field) -> String {
    let inner = if f.ty == "RECORD" {
        let fields: Vec<String> = f
            .fields
            .iter()
            .map(|x| format!("{} {}", x.name, ddl_type(x)))
            .collect();
        format!("STRUCT<{}>", fields.join(", "))
    } else {
        f.ty.clone()
    };
    if f.is_repeated() {
        format!("ARRAY<{inner}>")
    } else {
        inner
    }
}

/// Why an existing table cannot hold a canonical field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnProblem {
    /// No column for the field.
    Missing {
        field: String,
        column: String,
        /// The column's type as `migrate` would create it, in DDL.
        ddl_type: String,
    },
    /// The column exists with a mode or type that cannot hold the field.
    WrongType {
        field: String,
        column: String,
        /// `MODE TYPE` as the table has it.
        found: String,
        /// What the field needs.
        expected: String,
    },
}

impl std::fmt::Display for ColumnProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ColumnProblem::Missing { field, column, .. } => {
                write!(f, "field `{field}`: column `{column}` is missing")
            }
            ColumnProblem::WrongType {
                field,
                column,
                found,
                expected,
            } => write!(
                f,
                "field `{field}`: column `{column}` is {found}, expected {expected}"
            ),
        }
    }
}

/// Every canonical field the table `schema` cannot hold under the column
/// mapping `map` (empty: the table fits the contact).
pub fn column_problems(schema: &[Field], map: &ColumnMap) -> Vec<ColumnProblem> {
    let wanted = contacts_schema(map);
    ALL_FIELDS
        .iter()
        .zip(&wanted)
        .filter_map(|(f, want)| {
            let col = map.column(f);
            match schema.iter().find(|c| c.name.eq_ignore_ascii_case(col)) {
                None => Some(ColumnProblem::Missing {
                    field: f.to_string(),
                    column: col.to_string(),
                    ddl_type: ddl_type(want),
                }),
                Some(c) if !fits(kind_of(f), c) => Some(ColumnProblem::WrongType {
                    field: f.to_string(),
                    column: c.name.clone(),
                    found: format!("{} {}", c.mode, c.ty),
                    expected: needs(kind_of(f)).to_string(),
                }),
                Some(_) => None,
            }
        })
        .collect()
}

/// One canonical field's column in an actual table.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub field: &'static str,
    pub kind: Kind,
    /// The column name, backquoted for SQL.
    pub quoted: String,
    /// The column's (normalized) type.
    pub ty: String,
}

/// Where each canonical field lives in an existing table, checked against
/// its schema.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub columns: Vec<Column>,
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', ""))
}

impl Layout {
    /// Checks the table's schema against what each field needs. Errors name
    /// the table, the field, the column and the types.
    pub fn from_schema(table: &str, schema: &[Field], map: &ColumnMap) -> Result<Layout, BqError> {
        let mut columns = Vec::with_capacity(ALL_FIELDS.len());
        let mut problems = Vec::new();
        for f in ALL_FIELDS {
            let col = map.column(f);
            let Some(c) = schema.iter().find(|c| c.name.eq_ignore_ascii_case(col)) else {
                problems.push(format!("field `{f}`: column `{col}` is missing"));
                continue;
            };
            let kind = kind_of(f);
            let ok = fits(kind, c);
            if !ok {
                problems.push(format!(
                    "field `{f}`: column `{}` is {} {}, which cannot hold it",
                    c.name, c.mode, c.ty
                ));
                continue;
            }
            columns.push(Column {
                field: f,
                kind,
                quoted: quote(&c.name),
                ty: c.ty.clone(),
            });
        }
        if !problems.is_empty() {
            return Err(BqError::permanent(format!(
                "table {table} does not fit the contact (fix the table or the column mapping): {}",
                problems.join("; ")
            )));
        }
        Ok(Layout { columns })
    }

    pub fn col(&self, field: &str) -> &Column {
        self.columns
            .iter()
            .find(|c| c.field == field)
            .unwrap_or_else(|| unreachable!("layout has every field"))
    }

    /// True when `contact_id` is stored as INT64.
    pub fn int_id(&self) -> bool {
        self.col("contact_id").ty == "INT64"
    }

    /// `contact_id` as text, for comparisons and ordering.
    pub fn id_text(&self, alias: &str) -> String {
        let c = self.col("contact_id");
        if self.int_id() {
            format!("CAST({alias}.{} AS STRING)", c.quoted)
        } else {
            format!("{alias}.{}", c.quoted)
        }
    }

    /// The row's server-side fingerprint: `FARM_FINGERPRINT(TO_JSON_STRING(
    /// STRUCT(<every mapped column>)))`, an INT64 that changes whenever any
    /// mapped column of the row changes, whoever changed it. What the
    /// conditional MERGE guards on and what the sweep compares.
    pub fn fingerprint(&self, alias: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{alias}.{} AS {}", c.quoted, c.field))
            .collect();
        format!(
            "FARM_FINGERPRINT(TO_JSON_STRING(STRUCT({})))",
            cols.join(", ")
        )
    }

    /// The select list that reads a row as the canonical fields (aliased by
    /// field name).
    pub fn select_list(&self, alias: &str) -> String {
        self.columns
            .iter()
            .map(|c| {
                let expr = match c.kind {
                    Kind::Id => self.id_text(alias),
                    _ => format!("{alias}.{}", c.quoted),
                };
                format!("{expr} AS {}", c.field)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schema_fits_its_layout() {
        let map = ColumnMap::default().rename("contact_id", "id");
        let schema = contacts_schema(&map);
        assert_eq!(schema.len(), 33);
        let layout = Layout::from_schema("t", &schema, &map).unwrap();
        assert_eq!(layout.col("contact_id").quoted, "`id`");
        assert!(!layout.int_id());
    }

    #[test]
    fn column_problems_name_each_field_with_what_it_needs() {
        let map = ColumnMap::default().rename("contact_id", "id");
        let mut schema = contacts_schema(&map);
        assert_eq!(column_problems(&schema, &map), vec![]);
        // An INT64 id is fine.
        schema[0].ty = "INT64".into();
        assert_eq!(column_problems(&schema, &map), vec![]);
        schema.retain(|f| f.name != "emails" && f.name != "notes");
        for f in &mut schema {
            if f.name == "llm_context" {
                f.ty = "INT64".into();
            }
        }
        let p = column_problems(&schema, &map);
        let text: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            text,
            [
                "field `notes`: column `notes` is missing",
                "field `llm_context`: column `llm_context` is NULLABLE INT64, expected JSON or STRING",
                "field `emails`: column `emails` is missing",
            ]
        );
        assert!(matches!(&p[2], ColumnProblem::Missing { ddl_type, .. }
            if ddl_type == "ARRAY<STRUCT<address STRING, label STRING, is_primary BOOL>>"));
    }

    #[test]
    fn misfit_tables_are_named() {
        let mut schema = contacts_schema(&ColumnMap::default());
        schema.retain(|f| f.name != "notes");
        for f in &mut schema {
            if f.name == "version" {
                f.ty = "STRING".into();
            }
        }
        let e = Layout::from_schema("p.d.contacts", &schema, &ColumnMap::default()).unwrap_err();
        assert!(e.message.contains("p.d.contacts"), "{}", e.message);
        assert!(e.message.contains("`notes`"), "{}", e.message);
        assert!(e.message.contains("`version`"), "{}", e.message);
    }
}
