//! Signing in on the web and from the CLI: `/auth/*`, the one part of the
//! API that is plain HTTP (browsers follow redirects and keep cookies; gRPC
//! cannot).
//!
//! - `GET /auth/config`: whether single sign-on is on (for the sign-in page).
//! - `GET /auth/login?next=/path`: starts single sign-on for the web UI;
//!   `GET /auth/login?cli_port=P&cli_state=S&challenge=C` for `viaduct login`.
//! - `GET /auth/callback`: the provider's redirect. The web UI gets a
//!   session — a short-lived token of the user in an `HttpOnly`, `Secure`,
//!   `SameSite=Strict` cookie, never visible to scripts; the CLI gets a
//!   one-time code at its loopback address, which it exchanges (with its
//!   PKCE verifier) at `POST /auth/cli-token` for an API token.
//! - `POST /auth/session`: signs the web UI in with an API token (put in
//!   the same cookie); `POST /auth/logout` ends the session.
//!
//! The two POSTs need the header `x-viaduct-request: 1`: a browser sends a
//! custom header cross-origin only after a CORS preflight, which this
//! server never grants, so another site cannot sign a visitor in or out.
//! Sign-in attempts count against the failed-authentication limit.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use cookie::{Cookie, SameSite};
use viaduct_proto::v1::Role;

use crate::{
    access::Grants,
    audit::Action,
    auth::{NewToken, Principal},
    error::Error,
    gate::{self, Gate},
    sso::{After, Sso},
    store::{now_ms, records::TokenKind},
};

/// The web UI's session cookie.
pub const SESSION_COOKIE: &str = "viaduct_session";
/// The state of a single sign-on in progress.
const LOGIN_COOKIE: &str = "viaduct_login";
/// How long a CLI's one-time code works.
const CLI_CODE_TTL: Duration = Duration::from_secs(120);
/// How long `viaduct login`'s token works.
const CLI_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The token in the session cookie of `headers`.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    cookie_value(headers, SESSION_COOKIE)
}

/// The value of the cookie `name` in `headers`.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_string())
}

/// A CLI's pending hand-off.
struct CliCode {
    user: String,
    challenge: String,
    issued: Instant,
}

/// State of the sign-in routes.
pub struct SignIn {
    /// Single sign-on, when configured.
    pub sso: Option<Sso>,
    /// Authentication and limits.
    pub gate: Arc<Gate>,
    /// How long a web session lasts.
    pub session_ttl: Duration,
    cli_codes: Mutex<HashMap<String, CliCode>>,
}

impl SignIn {
    /// Sign-in over `gate`, with single sign-on through `sso`.
    pub fn new(sso: Option<Sso>, gate: Arc<Gate>, session_ttl: Duration) -> Self {
        Self { sso, gate, session_ttl, cli_codes: Mutex::default() }
    }

    /// Writes a sign-in (`via` the web or the CLI) to the audit log.
    fn record(&self, user: &str, token_id: &str, via: &str, peer: &str, outcome: &str) {
        self.gate.audit.record(Action {
            actor: user.to_string(),
            token_id: token_id.to_string(),
            action: format!("sign in ({via})"),
            target: user.to_string(),
            peer: peer.to_string(),
            outcome: outcome.to_string(),
        });
    }
}

/// The `/auth/*` routes.
pub fn router(state: Arc<SignIn>) -> Router {
    Router::new()
        .route("/auth/config", get(config))
        .route("/auth/login", get(login))
        .route("/auth/callback", get(callback))
        .route("/auth/cli-token", post(cli_token))
        .route("/auth/session", post(session))
        .route("/auth/logout", post(logout))
        .with_state(state)
}

/// A refusal (never a Basic challenge: browsers would pop up a password
/// dialog), not to be cached.
fn error(e: &Error) -> Response {
    no_store(gate::http_error(e))
}

fn no_store(mut r: Response) -> Response {
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn set_cookie(r: &mut Response, c: Cookie<'_>) {
    if let Ok(v) = HeaderValue::from_str(&c.to_string()) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn session_cookie_of(token: String, ttl: Duration) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, token))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64))
        .build()
}

fn cleared(name: &'static str, path: &'static str) -> Cookie<'static> {
    Cookie::build((name, "")).http_only(true).secure(true).path(path).max_age(cookie::time::Duration::ZERO).build()
}

async fn config(State(s): State<Arc<SignIn>>) -> Response {
    no_store(Json(serde_json::json!({ "sso": s.sso.is_some() })).into_response())
}

/// Query of `/auth/login`.
#[derive(serde::Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: String,
    cli_port: Option<u16>,
    #[serde(default)]
    cli_state: String,
    #[serde(default)]
    challenge: String,
}

/// A local path to go to after signing in (never another site).
fn local_path(next: &str) -> String {
    let ok =
        next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') && !next.chars().any(char::is_control);
    if ok { next.to_string() } else { "/".to_string() }
}

async fn login(State(s): State<Arc<SignIn>>, req: axum::extract::Request) -> Response {
    let Some(sso) = &s.sso else {
        return error(&Error::NotFound("single sign-on is not configured on this server (--oidc-issuer)".into()));
    };
    let Ok(Query(q)) = Query::<LoginQuery>::try_from_uri(req.uri()) else {
        return error(&Error::invalid("a malformed sign-in request"));
    };
    // A started sign-in holds server memory until it finishes or expires:
    // each counts against the address's failed-authentication budget, so
    // one client cannot fill the table of sign-ins in progress.
    let client = gate::peer_ip(&req);
    if let Err(e) = s.gate.throttle.admit(client) {
        return error(&e);
    }
    if let Some(e) = s.gate.throttle.failed(client) {
        return error(&e);
    }
    let then = match q.cli_port {
        Some(port) => {
            if q.cli_state.len() > 200 || q.challenge.len() != 43 {
                return error(&Error::invalid("a CLI sign-in needs cli_state and a 43-character PKCE challenge"));
            }
            After::Cli { port, state: q.cli_state, challenge: q.challenge }
        }
        None => After::Page(local_path(&q.next)),
    };
    match sso.start(then).await {
        Ok((url, state)) => {
            let mut r = Redirect::to(&url).into_response();
            // Lax: the provider's redirect back is a cross-site navigation.
            let c = Cookie::build((LOGIN_COOKIE, state))
                .http_only(true)
                .secure(true)
                .same_site(SameSite::Lax)
                .path("/auth")
                .max_age(cookie::time::Duration::minutes(10))
                .build();
            set_cookie(&mut r, c);
            no_store(r)
        }
        Err(e) => error(&e),
    }
}

/// Query of `/auth/callback`.
#[derive(serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    #[serde(default)]
    state: String,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(s): State<Arc<SignIn>>, req: axum::extract::Request) -> Response {
    let Some(sso) = &s.sso else {
        return error(&Error::NotFound("single sign-on is not configured on this server".into()));
    };
    let peer = gate::peer_of(&req).map(|a| a.to_string()).unwrap_or_default();
    let headers = req.headers();
    let Ok(Query(q)) = Query::<CallbackQuery>::try_from_uri(req.uri()) else {
        return error(&Error::invalid("a malformed callback"));
    };
    if let Some(e) = q.error {
        let why = q.error_description.unwrap_or_default();
        return error(&Error::Unauthenticated(format!("the sign-in provider said {e}: {why}")));
    }
    let Some(code) = q.code else { return error(&Error::invalid("the provider sent no code")) };
    let cookie = cookie_value(headers, LOGIN_COOKIE);
    let (who, then) = match sso.finish(&code, &q.state, cookie.as_deref()).await {
        Ok(r) => r,
        Err(e) => return error(&e),
    };
    let users = s.gate.auth.users();
    if let Err(e) = users.sign_in(&who.name, &who.display_name, who.groups.clone()).await {
        s.record(&who.name, "", "single sign-on", &peer, &format!("refused: {e}"));
        return error(&e);
    }
    tracing::info!(user = %who.name, groups = ?who.groups, "signed in with single sign-on");
    let mut r = match then {
        After::Page(next) => {
            let new = NewToken {
                name: "web session".into(),
                owner: who.name.clone(),
                grants: Grants::global(Role::Admin).0,
                expires_ms: now_ms() + s.session_ttl.as_millis() as i64,
                kind: TokenKind::Session,
                ..Default::default()
            };
            let token = match s.gate.auth.issue(new).await {
                Ok((t, info)) => {
                    s.record(&who.name, &info.id, "web session", &peer, "ok");
                    t
                }
                Err(e) => return error(&e),
            };
            let mut r = Redirect::to(&next).into_response();
            set_cookie(&mut r, session_cookie_of(token, s.session_ttl));
            r
        }
        After::Cli { port, state, challenge } => {
            let mut bytes = [0u8; 24];
            if getrandom::fill(&mut bytes).is_err() {
                return error(&Error::Internal("no randomness".into()));
            }
            let code = hex::encode(bytes);
            let mut codes = s.cli_codes.lock().unwrap_or_else(|p| p.into_inner());
            codes.retain(|_, c| c.issued.elapsed() < CLI_CODE_TTL);
            codes.insert(code.clone(), CliCode { user: who.name.clone(), challenge, issued: Instant::now() });
            let back = format!("http://127.0.0.1:{port}/callback");
            match reqwest::Url::parse_with_params(&back, [("code", code.as_str()), ("state", state.as_str())]) {
                Ok(url) => Redirect::to(url.as_str()).into_response(),
                Err(e) => return error(&Error::Internal(format!("the CLI's address: {e}"))),
            }
        }
    };
    set_cookie(&mut r, cleared(LOGIN_COOKIE, "/auth"));
    no_store(r)
}

/// Body of `POST /auth/cli-token`.
#[derive(serde::Deserialize)]
struct CliTokenRequest {
    code: String,
    verifier: String,
    #[serde(default)]
    name: String,
}

async fn cli_token(State(s): State<Arc<SignIn>>, req: axum::extract::Request) -> Response {
    let client = gate::peer_ip(&req);
    let peer = gate::peer_of(&req).map(|a| a.to_string()).unwrap_or_default();
    if let Err(e) = s.gate.throttle.admit(client) {
        return error(&e);
    }
    let body = match axum::body::to_bytes(req.into_body(), 16 * 1024).await {
        Ok(b) => b,
        Err(_) => return error(&Error::TooLarge("the request is over 16 KiB".into())),
    };
    let Ok(r) = serde_json::from_slice::<CliTokenRequest>(&body) else {
        return error(&Error::invalid("expected JSON {code, verifier}"));
    };
    let found = s.cli_codes.lock().unwrap_or_else(|p| p.into_inner()).remove(&r.code);
    let Some(found) = found.filter(|c| c.issued.elapsed() < CLI_CODE_TTL) else {
        let e = Error::Unauthenticated("unknown, used or expired sign-in code".into());
        return error(&s.gate.throttle.failed(client).unwrap_or(e));
    };
    if crate::sso::challenge_of(&r.verifier) != found.challenge {
        let e = Error::Unauthenticated("the PKCE verifier does not match this sign-in".into());
        return error(&s.gate.throttle.failed(client).unwrap_or(e));
    }
    let name: String = r.name.chars().filter(|c| !c.is_control()).take(80).collect();
    let new = NewToken {
        name: if name.is_empty() { "viaduct login".into() } else { format!("viaduct login ({name})") },
        owner: found.user.clone(),
        grants: Grants::global(Role::Admin).0,
        expires_ms: now_ms() + CLI_TOKEN_TTL.as_millis() as i64,
        kind: TokenKind::Api,
        ..Default::default()
    };
    match s.gate.auth.issue(new).await {
        Ok((token, info)) => {
            s.record(&found.user, &info.id, "viaduct login", &peer, "ok");
            no_store(Json(serde_json::json!({ "token": token, "user": found.user, "id": info.id })).into_response())
        }
        Err(e) => error(&e),
    }
}

/// Refuses a POST without the header only same-origin scripts can send.
fn same_origin(headers: &HeaderMap) -> Result<(), Error> {
    if headers.get("x-viaduct-request").is_some_and(|v| v == "1") {
        Ok(())
    } else {
        Err(Error::PermissionDenied("this request needs the header `x-viaduct-request: 1`".into()))
    }
}

async fn session(State(s): State<Arc<SignIn>>, req: axum::extract::Request) -> Response {
    if let Err(e) = same_origin(req.headers()) {
        return error(&e);
    }
    let client = gate::peer_ip(&req);
    let body = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return error(&Error::TooLarge("a token is under 4 KiB".into())),
    };
    let token = String::from_utf8_lossy(&body).trim().to_string();
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, v);
    }
    match s.gate.authenticate(&headers, client) {
        Ok(Principal::Person(c)) => {
            // The cookie lives as long as a session; the token's own expiry
            // and revocation still apply at every call.
            let mut r = Json(serde_json::json!({ "name": c.actor })).into_response();
            set_cookie(&mut r, session_cookie_of(token, s.session_ttl));
            no_store(r)
        }
        Ok(Principal::Runner(_)) => error(&Error::PermissionDenied("a runner token cannot sign in".into())),
        Err(e) => error(&e),
    }
}

async fn logout(State(s): State<Arc<SignIn>>, headers: HeaderMap) -> Response {
    if let Err(e) = same_origin(&headers) {
        return error(&e);
    }
    if let Some(token) = session_cookie(&headers)
        && let Err(e) = s.gate.auth.end_session(&token).await
    {
        return error(&e);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut r, cleared(SESSION_COOKIE, "/"));
    no_store(r)
}

#[cfg(test)]
mod tests {
    use super::local_path;

    #[test]
    fn after_signing_in_the_browser_stays_on_this_site() {
        assert_eq!(local_path("/runs/42?x=1"), "/runs/42?x=1");
        for hostile in ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", "", "/\n"]
        {
            assert_eq!(local_path(hostile), "/", "{hostile:?}");
        }
    }
}
