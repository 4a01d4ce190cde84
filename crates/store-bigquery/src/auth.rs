//! Authentication, as a piece the client takes and never looks into.
//!
//! - [`NoAuth`]: no `Authorization` header (the local emulator).
//! - [`ServiceAccountKey`]: a service-account JSON key file; signs an RS256
//!   JWT and exchanges it at the OAuth token URL for an access token.
//! - [`MetadataServer`]: the GCE/GKE/Cloud Run metadata server's token.
//!
//! Tokens are cached until shortly before they expire. No secret (key,
//! assertion, token) appears in `Debug` output, logs or error messages.

use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::{truncate, BqError};

/// The scope asked for when none is configured.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
/// Google's OAuth token endpoint.
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The metadata server's default-service-account token URL.
pub const DEFAULT_METADATA_TOKEN_URL: &str =
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token";

/// A token is refreshed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// An OAuth access token. `Debug` and `Display` do not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken(token.into())
    }
    /// The token itself, for the `Authorization` header only.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// Where the client's bearer token comes from.
#[async_trait]
pub trait TokenProvider: Send + Sync + std::fmt::Debug {
    /// The token to send, or `None` to send no `Authorization` header.
    /// `http` is the client's own HTTP client, for token requests.
    async fn token(&self, http: &reqwest::Client) -> Result<Option<AccessToken>, BqError>;

    /// The server refused the last token (HTTP 401): forget any cached one.
    fn invalidate(&self) {}
}

/// No authentication (the local emulator).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuth;

#[async_trait]
impl TokenProvider for NoAuth {
    async fn token(&self, _http: &reqwest::Client) -> Result<Option<AccessToken>, BqError> {
        Ok(None)
    }
}

/// A fixed token (from a secret manager command, for instance).
pub struct StaticToken(AccessToken);

impl StaticToken {
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(AccessToken::new(token))
    }
}

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self, _http: &reqwest::Client) -> Result<Option<AccessToken>, BqError> {
        Ok(Some(self.0.clone()))
    }
}

/// A cached token with its expiry.
#[derive(Default)]
struct Cache(Mutex<Option<(AccessToken, Instant)>>);

impl Cache {
    async fn get_or_fetch<F, Fut>(&self, fetch: F) -> Result<AccessToken, BqError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(AccessToken, Duration), BqError>>,
    {
        let mut guard = self.0.lock().await;
        if let Some((tok, until)) = guard.as_ref() {
            if Instant::now() + REFRESH_MARGIN < *until {
                return Ok(tok.clone());
            }
        }
        let (tok, ttl) = fetch().await?;
        *guard = Some((tok.clone(), Instant::now() + ttl));
        Ok(tok)
    }

    fn clear(&self) {
        if let Ok(mut g) = self.0.try_lock() {
            *g = None;
        }
    }
}

/// The OAuth token endpoint's answer (success or error).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn read_token_response(
    what: &str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<(AccessToken, Duration), BqError> {
    let resp = resp.map_err(|e| BqError::transient(format!("{what}: {}", e.without_url())))?;
    let status = resp.status();
    let body: TokenResponse = resp.json().await.map_err(|e| {
        BqError::transient(format!(
            "{what}: HTTP {status}: unreadable answer: {}",
            e.without_url()
        ))
    })?;
    if !status.is_success() || body.access_token.is_none() {
        // `error` / `error_description` are OAuth's fixed texts, never the token.
        let msg = format!(
            "{what}: HTTP {status}: {} {}",
            body.error.as_deref().unwrap_or("no access_token in answer"),
            truncate(body.error_description.as_deref().unwrap_or(""), 300)
        );
        return Err(if status.is_server_error() || status.as_u16() == 429 {
            BqError::transient(msg)
        } else {
            BqError::permanent(msg)
        });
    }
    let token = body.access_token.unwrap_or_default();
    let ttl = Duration::from_secs(body.expires_in.unwrap_or(3600));
    Ok((AccessToken(token), ttl))
}

/// The fields of a service-account key file this provider uses.
#[derive(Deserialize)]
struct KeyFile {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A service-account JSON key: signs a JWT (RS256) and exchanges it for an
/// access token at the token URL (the key file's `token_uri`, or
/// [`DEFAULT_TOKEN_URL`], or [`with_token_url`](Self::with_token_url)).
pub struct ServiceAccountKey {
    client_email: String,
    key: jsonwebtoken::EncodingKey,
    key_id: Option<String>,
    token_url: String,
    scope: String,
    cache: Cache,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_url", &self.token_url)
            .field("scope", &self.scope)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl ServiceAccountKey {
    /// Reads a key file. Errors name the file, never its contents.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BqError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            BqError::permanent(format!(
                "service-account key file {}: cannot read: {e}",
                path.display()
            ))
        })?;
        Self::from_json(&text).map_err(|e| {
            BqError::permanent(format!(
                "service-account key file {}: {}",
                path.display(),
                e.message
            ))
        })
    }

    /// Parses a key from its JSON text.
    pub fn from_json(json: &str) -> Result<Self, BqError> {
        let k: KeyFile = serde_json::from_str(json).map_err(|e| {
            // serde_json's messages name fields and positions, not values.
            BqError::permanent(format!("not a service-account key: {e}"))
        })?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(k.private_key.as_bytes())
            .map_err(|e| BqError::permanent(format!("private_key is not an RSA PEM key ({e})")))?;
        Ok(ServiceAccountKey {
            client_email: k.client_email,
            key,
            key_id: k.private_key_id,
            token_url: k.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URL.to_string()),
            scope: DEFAULT_SCOPE.to_string(),
            cache: Cache::default(),
        })
    }

    /// Exchanges assertions at `url` instead (a test server, a proxy).
    pub fn with_token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// Asks for `scope` instead of [`DEFAULT_SCOPE`].
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// The service account's email.
    pub fn client_email(&self) -> &str {
        &self.client_email
    }

    fn assertion(&self) -> Result<String, BqError> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: &'a str,
            iat: i64,
            exp: i64,
        }
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: &self.client_email,
            scope: &self.scope,
            aud: &self.token_url,
            iat: now,
            exp: now + 3600,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| BqError::permanent(format!("signing the token request failed ({e})")))
    }
}

#[async_trait]
impl TokenProvider for ServiceAccountKey {
    async fn token(&self, http: &reqwest::Client) -> Result<Option<AccessToken>, BqError> {
        let tok = self
            .cache
            .get_or_fetch(|| async {
                let assertion = self.assertion()?;
                let what = format!(
                    "token exchange for {} at {}",
                    self.client_email, self.token_url
                );
                let resp = http
                    .post(&self.token_url)
                    .form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", assertion.as_str()),
                    ])
                    .send()
                    .await;
                read_token_response(&what, resp).await
            })
            .await?;
        Ok(Some(tok))
    }

    fn invalidate(&self) {
        self.cache.clear();
    }
}

/// The metadata server's token for the instance's service account
/// (Compute Engine, GKE workload identity, Cloud Run).
pub struct MetadataServer {
    url: String,
    cache: Cache,
}

impl std::fmt::Debug for MetadataServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataServer")
            .field("url", &self.url)
            .finish()
    }
}

impl Default for MetadataServer {
    fn default() -> Self {
        Self::new(DEFAULT_METADATA_TOKEN_URL)
    }
}

impl MetadataServer {
    /// A provider asking the token URL `url` (see
    /// [`DEFAULT_METADATA_TOKEN_URL`]).
    pub fn new(url: impl Into<String>) -> Self {
        MetadataServer {
            url: url.into(),
            cache: Cache::default(),
        }
    }
}

#[async_trait]
impl TokenProvider for MetadataServer {
    async fn token(&self, http: &reqwest::Client) -> Result<Option<AccessToken>, BqError> {
        let tok = self
            .cache
            .get_or_fetch(|| async {
                let what = format!("metadata-server token at {}", self.url);
                let resp = http
                    .get(&self.url)
                    .header("Metadata-Flavor", "Google")
                    .send()
                    .await;
                read_token_response(&what, resp).await
            })
            .await?;
        Ok(Some(tok))
    }

    fn invalidate(&self) {
        self.cache.clear();
    }
}
