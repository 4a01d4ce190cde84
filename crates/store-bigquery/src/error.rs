//! Errors of the BigQuery client, classified for retry.

use contact_sync_connector::{RetryClass, StoreError};

/// A failed BigQuery call. The message says what was being done (naming the
/// dataset or table), the HTTP status and BigQuery's `reason`; it never holds
/// a token, a key or row data.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BqError {
    /// Whether a retry can help.
    pub class: RetryClass,
    /// HTTP status, when the server answered.
    pub status: Option<u16>,
    /// BigQuery's error reason (`notFound`, `rateLimitExceeded`, ...).
    pub reason: Option<String>,
    pub message: String,
}

impl BqError {
    pub(crate) fn permanent(message: impl Into<String>) -> Self {
        BqError {
            class: RetryClass::Permanent,
            status: None,
            reason: None,
            message: message.into(),
        }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        BqError {
            class: RetryClass::Transient,
            status: None,
            reason: None,
            message: message.into(),
        }
    }

    /// True for a transient failure (429, 5xx, `backendError`,
    /// `rateLimitExceeded`, connection trouble).
    pub fn is_transient(&self) -> bool {
        self.class == RetryClass::Transient
    }

    /// True when the dataset, table or job does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404) || self.reason.as_deref() == Some("notFound")
    }

    /// True when the resource already exists (an insert raced another).
    pub fn is_duplicate(&self) -> bool {
        self.status == Some(409) || self.reason.as_deref() == Some("duplicate")
    }

    /// The same error as a [`StoreError`] of store `store`.
    pub fn into_store(self, store: &str) -> StoreError {
        StoreError::new(store, self.message, self.class)
    }
}

/// Reasons BigQuery uses for failures that pass on their own (per
/// <https://cloud.google.com/bigquery/docs/error-messages>): retried.
const TRANSIENT_REASONS: &[&str] = &[
    "backendError",
    "rateLimitExceeded",
    "internalError",
    "jobBackendError",
    "jobInternalError",
    "jobRateLimitExceeded",
    "tableUnavailable",
    "resourceInUse",
    "timeout",
    "stopped",
    // Also used for limits that reset (concurrent queries, table update
    // operations per table, daily load/append quotas): transient for the
    // engine (it tries again next cycle), but not retried inside the
    // client, where seconds do not help (see `retry_in_client`).
    "quotaExceeded",
];

/// Reasons that will not pass until someone acts.
const PERMANENT_REASONS: &[&str] = &[
    "accessDenied",
    "notFound",
    "invalid",
    "invalidQuery",
    "invalidUser",
    "duplicate",
    "responseTooLarge",
    "resourcesExceeded",
    "billingNotEnabled",
    "billingTierLimitExceeded",
    "blocked",
    "notImplemented",
    "proxyAuthenticationRequired",
];

/// Classifies a BigQuery error by HTTP status, reason and message. 429,
/// 5xx and the transient reasons above pass on their own; so does a DML
/// statement that lost a race with another (`Could not serialize access
/// to table … due to concurrent update`, reason `invalidQuery`).
pub(crate) fn classify_message(
    status: Option<u16>,
    reason: Option<&str>,
    message: &str,
) -> RetryClass {
    if message.contains("due to concurrent update") {
        return RetryClass::Transient;
    }
    classify(status, reason)
}

/// Classifies a BigQuery error by HTTP status and reason.
pub(crate) fn classify(status: Option<u16>, reason: Option<&str>) -> RetryClass {
    if let Some(r) = reason {
        if TRANSIENT_REASONS.contains(&r) {
            return RetryClass::Transient;
        }
        if PERMANENT_REASONS.contains(&r) {
            return RetryClass::Permanent;
        }
    }
    match status {
        Some(408 | 429) => RetryClass::Transient,
        Some(s) if s >= 500 && s != 501 => RetryClass::Transient,
        _ => RetryClass::Permanent,
    }
}

impl BqError {
    /// Whether the client itself retries this error with its short backoff
    /// (a quota that was exceeded is left to the engine's next cycle).
    pub(crate) fn retry_in_client(&self) -> bool {
        self.is_transient() && self.reason.as_deref() != Some("quotaExceeded")
    }
}

/// Builds an error from a BigQuery error object (`{code, message, errors:
/// [{reason, message, location}]}` or one element of `errors[]`).
pub(crate) fn from_body(context: &str, status: Option<u16>, err: &serde_json::Value) -> BqError {
    let first = err
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first());
    let reason = err
        .get("reason")
        .or_else(|| first.and_then(|f| f.get("reason")))
        .and_then(|r| r.as_str())
        .map(str::to_string);
    let message = err
        .get("message")
        .or_else(|| first.and_then(|f| f.get("message")))
        .and_then(|m| m.as_str())
        .unwrap_or("no message");
    let status = status.or_else(|| {
        err.get("code")
            .and_then(|c| c.as_u64())
            .and_then(|c| u16::try_from(c).ok())
    });
    let class = classify_message(status, reason.as_deref(), message);
    let mut text = format!("{context}: ");
    if let Some(s) = status {
        text.push_str(&format!("HTTP {s} "));
    }
    if let Some(r) = &reason {
        text.push_str(&format!("{r}: "));
    }
    text.push_str(&truncate(message, 600));
    match (class, reason.as_deref()) {
        (_, Some("quotaExceeded")) => {
            text.push_str(" (quota exceeded: raise the quota or lower the batch rate)")
        }
        (_, Some("accessDenied")) => text.push_str(
            " (permission denied: grant the service account BigQuery Data Editor and Job User)",
        ),
        _ => {}
    }
    BqError {
        class,
        status,
        reason,
        message: text,
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classification() {
        assert_eq!(classify(Some(429), None), RetryClass::Transient);
        assert_eq!(classify(Some(503), None), RetryClass::Transient);
        assert_eq!(
            classify(Some(400), Some("backendError")),
            RetryClass::Transient
        );
        assert_eq!(
            classify(Some(403), Some("rateLimitExceeded")),
            RetryClass::Transient
        );
        assert_eq!(
            classify(Some(403), Some("quotaExceeded")),
            RetryClass::Transient
        );
        assert_eq!(
            classify(Some(400), Some("jobRateLimitExceeded")),
            RetryClass::Transient
        );
        assert_eq!(
            classify(Some(400), Some("resourcesExceeded")),
            RetryClass::Permanent
        );
        assert_eq!(
            classify_message(
                Some(400),
                Some("invalidQuery"),
                "Could not serialize access to table p:d.t due to concurrent update"
            ),
            RetryClass::Transient
        );
        assert_eq!(classify(Some(501), None), RetryClass::Permanent);
        assert_eq!(
            classify(Some(403), Some("accessDenied")),
            RetryClass::Permanent
        );
        assert_eq!(classify(Some(404), Some("notFound")), RetryClass::Permanent);
        assert_eq!(classify(Some(400), None), RetryClass::Permanent);
    }

    #[test]
    fn body_errors_name_context_and_reason() {
        let e = from_body(
            "MERGE into p.d.contacts",
            Some(403),
            &json!({"code": 403, "message": "Quota exceeded", "errors": [{"reason": "quotaExceeded", "message": "Quota exceeded"}]}),
        );
        assert!(e.is_transient(), "the engine tries again next cycle");
        assert!(!e.retry_in_client(), "but not within seconds");
        assert!(e.message.contains("p.d.contacts"), "{}", e.message);
        assert!(e.message.contains("quotaExceeded"), "{}", e.message);
        let e = from_body(
            "q",
            None,
            &json!({"reason": "backendError", "message": "x"}),
        );
        assert!(e.is_transient());
    }
}
