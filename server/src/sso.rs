//! Single sign-on with an OpenID Provider: the authorization code flow with
//! PKCE (`openidconnect`), for the web UI and `viaduct login`.
//!
//! A login starts at `/auth/login`: the server makes a state, nonce and PKCE
//! verifier, keeps them in memory for ten minutes under the state (also set
//! as a cookie, so the callback must come back to the browser that
//! started), and sends the browser to the provider. The callback exchanges
//! the code, verifies the ID token (signature from the provider's keys,
//! issuer, audience, expiry, nonce), and turns its claims into a user: the
//! name from the configured claim (`preferred_username`, else the e-mail,
//! else the subject), the groups from the groups claim — their roles come
//! from `--oidc-group-role`. A local user of the same name is never taken
//! over. The provider is discovered on first use (and again after a
//! failure), so the server starts even while the provider is down.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope, TokenResponse as _,
    core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata},
};

use crate::error::{Error, Result};

/// How the server signs people in.
#[derive(Debug, Clone)]
pub struct SsoConfig {
    /// The provider's issuer URL.
    pub issuer: String,
    /// This server's client id at the provider.
    pub client_id: String,
    /// Its client secret (from a file; `None`: a public client, PKCE only).
    pub client_secret: Option<String>,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The claim that names the user.
    pub username_claim: String,
    /// The claim that lists the user's groups.
    pub groups_claim: String,
    /// Extra CA certificate (PEM) to trust for the provider.
    pub ca_cert: Option<PathBuf>,
}

type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// How long a started login may take.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// Logins in progress at most (the oldest are forgotten beyond it).
const MAX_PENDING: usize = 10_000;

/// A login in progress.
struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
    started: Instant,
    /// What to do after: where the browser goes, or the CLI's hand-off.
    then: After,
}

/// Where a finished login goes.
#[derive(Debug, Clone)]
pub enum After {
    /// The web UI: this local path.
    Page(String),
    /// `viaduct login`: its loopback port, its state and PKCE challenge.
    Cli {
        /// The CLI's loopback port.
        port: u16,
        /// The CLI's own state, echoed back to it.
        state: String,
        /// SHA-256 of the CLI's verifier (base64url).
        challenge: String,
    },
}

/// Who signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name.
    pub name: String,
    /// Shown name.
    pub display_name: String,
    /// Groups, from the groups claim.
    pub groups: Vec<String>,
}

/// The OpenID Connect client and the logins in progress.
pub struct Sso {
    config: SsoConfig,
    redirect: RedirectUrl,
    http: reqwest::Client,
    client: tokio::sync::Mutex<Option<Client>>,
    pending: Mutex<HashMap<String, Pending>>,
}

impl Sso {
    /// Single sign-on with `config`; the provider sends people back to
    /// `public_url/auth/callback`.
    pub fn new(config: SsoConfig, public_url: &str) -> anyhow::Result<Self> {
        let redirect = RedirectUrl::new(format!("{}/auth/callback", public_url.trim_end_matches('/')))?;
        let mut http = reqwest::ClientBuilder::new()
            // No redirects: a provider's endpoint must answer itself (SSRF).
            .redirect(reqwest::redirect::Policy::none())
            // Sign-ins are rare: a fresh connection each time, never one
            // the provider closed while it sat idle in a pool.
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(15));
        if let Some(ca) = &config.ca_cert {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(Self {
            config,
            redirect,
            http: http.build()?,
            client: tokio::sync::Mutex::new(None),
            pending: Mutex::default(),
        })
    }

    /// The client, discovering the provider when not yet done.
    async fn client(&self) -> Result<Client> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let issuer =
            IssuerUrl::new(self.config.issuer.clone()).map_err(|e| Error::Internal(format!("bad issuer URL: {e}")))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http).await.map_err(|e| {
            Error::precondition(format!(
                "the sign-in provider {} cannot be reached: {}",
                self.config.issuer,
                crate::error::with_causes(&e)
            ))
        })?;
        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            self.config.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(self.redirect.clone());
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Starts a login: the provider's URL to send the browser to, and the
    /// state (for the browser's cookie).
    pub async fn start(&self, then: After) -> Result<(String, String)> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut request = client
            .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            request = request.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = request.url();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.started.elapsed() < LOGIN_TTL);
        if pending.len() >= MAX_PENDING {
            return Err(Error::RateLimited {
                message: "too many sign-ins in progress".into(),
                retry_after: Duration::from_secs(60),
            });
        }
        pending.insert(state.secret().clone(), Pending { verifier, nonce, started: Instant::now(), then });
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes a login from the provider's callback: the identity, and
    /// where to go next. `cookie` is the state the browser kept.
    pub async fn finish(&self, code: &str, state: &str, cookie: Option<&str>) -> Result<(Identity, After)> {
        if cookie != Some(state) {
            return Err(Error::Unauthenticated(
                "this sign-in was not started by this browser (or took over 10 minutes): start again".into(),
            ));
        }
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(state);
        let pending = pending
            .filter(|p| p.started.elapsed() < LOGIN_TTL)
            .ok_or_else(|| Error::Unauthenticated("this sign-in expired or was already used: start again".into()))?;
        let client = self.client().await?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| Error::Internal(format!("the provider has no token endpoint: {e}")))?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| {
                Error::Unauthenticated(format!("the provider refused the sign-in: {}", crate::error::with_causes(&e)))
            })?;
        let id_token =
            response.id_token().ok_or_else(|| Error::Unauthenticated("the provider sent no ID token".into()))?;
        let verifier = client.id_token_verifier();
        let claims = id_token
            .claims(&verifier, &pending.nonce)
            .map_err(|e| Error::Unauthenticated(format!("the ID token is not valid: {e}")))?;
        // The token is verified: read the configured claims from its JSON.
        let payload = id_token.to_string();
        let json = payload
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let text = |claim: &str| json.get(claim).and_then(|v| v.as_str()).map(str::to_string);
        let name = text(&self.config.username_claim)
            .or_else(|| claims.email().map(|e| e.as_str().to_string()))
            .unwrap_or_else(|| claims.subject().as_str().to_string());
        let display_name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_string()).unwrap_or_default();
        let groups = match json.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|g| g.as_str().map(str::to_string)).collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        Ok((Identity { name, display_name, groups }, pending.then))
    }
}

/// The PKCE challenge of `verifier` (SHA-256, base64url), to check the
/// CLI's hand-off.
pub fn challenge_of(verifier: &str) -> String {
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}
