//! Signing in to GitHub as a GitHub App: a JWT signed with the app's
//! private key (RS256, valid 9 minutes, issued a minute in the past against
//! clock drift, as GitHub advises), exchanged for an installation token
//! (`POST /app/installations/{id}/access_tokens`, valid an hour). Tokens are
//! kept in memory only, and fetched again 5 minutes before they expire; the
//! installation is looked up (`GET /repos/{owner}/{repo}/installation`) when
//! the connection does not name it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;
use viaduct_proto::v1::ForgeConnection;

use crate::outbound::{self as reply, Reply};

/// A token is fetched again this long before it expires.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// The claims GitHub reads.
#[derive(serde::Serialize)]
struct Claims<'a> {
    iat: i64,
    exp: i64,
    iss: &'a str,
}

/// The JWT that signs in as app `app_id` at Unix time `now_s`.
pub fn jwt(app_id: &str, key_pem: &str, now_s: i64) -> Result<String, String> {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(key_pem.as_bytes())
        .map_err(|e| format!("the GitHub App's private key is not an RSA key in PEM: {e}"))?;
    let claims = Claims { iat: now_s - 60, exp: now_s + 540, iss: app_id };
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
        .map_err(|e| format!("cannot sign the GitHub App's JWT: {e}"))
}

/// Installation tokens, by connection.
#[derive(Default)]
pub struct AppTokens {
    tokens: Mutex<HashMap<String, (String, Instant)>>,
}

impl AppTokens {
    /// A valid installation token for `conn`, whose app key is `key_pem`.
    pub async fn token(&self, http: &reqwest::Client, conn: &ForgeConnection, key_pem: &str) -> Result<String, Reply> {
        let id = format!("{}\0{}\0{}\0{}", conn.api_url, conn.app_id, conn.installation_id, conn.project);
        if let Some((token, until)) = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&id)
            && Instant::now() + REFRESH_BEFORE < *until
        {
            return Ok(token.clone());
        }
        let now_s = crate::store::now_ms() / 1000;
        let jwt = jwt(&conn.app_id, key_pem, now_s).map_err(|why| Reply::Retry { wait: None, why })?;
        let api = conn.api_url.trim_end_matches('/');
        let installation = match conn.installation_id {
            0 => {
                let url = format!("{api}/repos/{}/installation", conn.project);
                let found = call(http.get(url), &jwt, now_s).await?;
                found["id"].as_u64().ok_or_else(|| Reply::Refused("GitHub named no installation of the app".into()))?
            }
            id => id,
        };
        let url = format!("{api}/app/installations/{installation}/access_tokens");
        let granted = call(http.post(url), &jwt, now_s).await?;
        let token = granted["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Reply::Retry { wait: None, why: "GitHub gave no installation token".into() })?;
        let expires = granted["expires_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map_or(0, |t| t.timestamp());
        let left = Duration::from_secs(u64::try_from(expires - now_s).unwrap_or(0));
        tracing::info!(app = %conn.app_id, installation, valid_s = left.as_secs(), "GitHub App installation token");
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (token.to_string(), Instant::now() + left));
        Ok(token.to_string())
    }

    /// Forgets the token of `conn` (GitHub refused it).
    pub fn forget(&self, conn: &ForgeConnection) {
        let id = format!("{}\0{}\0{}\0{}", conn.api_url, conn.app_id, conn.installation_id, conn.project);
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// One call signed with the app's JWT; its JSON answer.
async fn call(req: reqwest::RequestBuilder, jwt: &str, now_s: i64) -> Result<Value, Reply> {
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {jwt}"))
        .map_err(|_| Reply::Refused("the JWT is not a header value".into()))?;
    auth.set_sensitive(true);
    let answer = req
        .header("authorization", auth)
        .header("accept", "application/vnd.github+json")
        .header("x-github-api-version", "2022-11-28")
        .send()
        .await
        .map_err(|e| Reply::Retry { wait: None, why: format!("cannot reach GitHub: {}", e.without_url()) })?;
    let (code, headers) = (answer.status(), answer.headers().clone());
    let body = crate::outbound::body_of(answer).await;
    match reply::classify(code, &headers, &body, u64::try_from(now_s).unwrap_or(0)) {
        Reply::Accepted(v) => Ok(v),
        Reply::Retry { wait, why } => Err(Reply::Retry { wait, why: format!("GitHub App sign-in: {why}") }),
        Reply::Refused(why) => Err(Reply::Refused(format!("GitHub App sign-in: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_is_said_plainly() {
        let e = jwt("1", "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n", 0).unwrap_err();
        assert!(e.contains("not an RSA key"), "{e}");
    }
}
