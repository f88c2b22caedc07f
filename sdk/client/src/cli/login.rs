//! `viaduct login` and `viaduct logout`: single sign-on from a terminal,
//! and the credentials the CLI keeps.
//!
//! `login` listens on a loopback port and sends the browser to the
//! server's `/auth/login` with that port, a state of its own and a PKCE
//! challenge. The server signs the person in at its OpenID provider and
//! redirects the browser to `http://127.0.0.1:PORT/callback?code=…&state=…`.
//! The CLI checks the state and exchanges the one-time code, with its PKCE
//! verifier, at `POST /auth/cli-token` for an API token of that person. A
//! program on the machine that catches the code cannot use it: it lacks
//! the verifier, and the code works once.
//!
//! The token is kept in `credentials.json` in the config directory
//! (`$VIADUCT_CONFIG_DIR`, else `$XDG_CONFIG_HOME/viaduct`, else
//! `~/.config/viaduct`), per server URL, readable by its owner only (0600
//! in a 0700 directory). Commands use it when no `--token`,
//! `VIADUCT_TOKEN` or `--token-file` is given.

use std::{
    collections::BTreeMap,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::PathBuf,
    time::Duration,
};

use base64::Engine as _;
use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, service::service_fn};
use tokio::sync::mpsc;
use viaduct_sdk::{Client, Transport};

use super::{Failure, args::Cli};

/// How long `viaduct login` waits for the browser.
const LOGIN_WAIT: Duration = Duration::from_secs(300);

/// The saved credentials, by server URL.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Credentials {
    servers: BTreeMap<String, Saved>,
}

/// A token `viaduct login` saved for one server.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Saved {
    token: String,
    user: String,
    id: String,
}

/// The CLI's config directory.
fn config_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("VIADUCT_CONFIG_DIR")
        .or_else(|| var("XDG_CONFIG_HOME").map(|d| d.join("viaduct")))
        .or_else(|| var("HOME").map(|h| h.join(".config").join("viaduct")))
}

fn credentials_path() -> Option<PathBuf> {
    config_dir().map(|d| d.join("credentials.json"))
}

/// The server URL as saved (no trailing slash).
fn key(server: &str) -> String {
    server.trim_end_matches('/').to_string()
}

fn load() -> Credentials {
    credentials_path()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Writes the credentials: a new file, 0600 from its creation, renamed
/// over the old one (never a moment world-readable or half-written).
fn store(creds: &Credentials) -> Result<PathBuf, Failure> {
    let path = credentials_path()
        .ok_or_else(|| Failure::Usage("no config directory: set HOME or VIADUCT_CONFIG_DIR".into()))?;
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    let fail = |what: &str, e: std::io::Error| Failure::Usage(format!("cannot {what} {}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(|e| fail("create", e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| fail("protect", e))?;
    let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
    let json = serde_json::to_vec_pretty(creds).map_err(|e| Failure::Usage(e.to_string()))?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&json).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail("write credentials in", e));
    }
    Ok(path)
}

/// The token `viaduct login` saved for `server`, if any.
pub fn saved_token(server: &str) -> Option<String> {
    load().servers.get(&key(server)).map(|s| s.token.clone())
}

fn random(n: usize) -> Result<Vec<u8>, Failure> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| Failure::Usage(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HTTP client for the server's `/auth` routes, trusting what the
/// gRPC client trusts, refusing what it refuses.
fn http_client(server: &str, transport: &Transport) -> Result<reqwest::Client, Failure> {
    transport.check(server)?;
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30)).redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &transport.ca_cert {
        let cert = reqwest::Certificate::from_pem(ca).map_err(|e| Failure::Usage(format!("--ca-cert: {e}")))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| Failure::Usage(format!("HTTP client: {e}")))
}

/// What the loopback listener heard.
enum Heard {
    Code(String),
    Refused(String),
}

/// `viaduct login`.
pub async fn login(cli: &Cli, transport: &Transport, no_browser: bool) -> Result<(), Failure> {
    let server = key(&cli.server);
    let http = http_client(&server, transport)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Failure::Usage(format!("cannot listen on loopback: {e}")))?;
    let port = listener.local_addr().map_err(|e| Failure::Usage(e.to_string()))?.port();
    let state = hex::encode(random(16)?);
    let verifier = b64(&random(32)?);
    let challenge = {
        use sha2::Digest as _;
        b64(&sha2::Sha256::digest(verifier.as_bytes()))
    };
    let url = format!("{server}/auth/login?cli_port={port}&cli_state={state}&challenge={challenge}");
    eprintln!("Open this address in a browser to sign in:\n\n  {url}\n");
    if !no_browser {
        let _ = std::process::Command::new("xdg-open")
            .arg(&url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
    let (tx, mut rx) = mpsc::channel::<Heard>(1);
    let serving = tokio::spawn(serve_callback(listener, state.clone(), tx));
    let heard = tokio::time::timeout(LOGIN_WAIT, rx.recv()).await;
    serving.abort();
    let code = match heard {
        Ok(Some(Heard::Code(code))) => code,
        Ok(Some(Heard::Refused(why))) => return Err(Failure::Server(format!("sign-in failed: {why}"))),
        Ok(None) | Err(_) => {
            return Err(Failure::Server(format!("nobody signed in within {} minutes", LOGIN_WAIT.as_secs() / 60)));
        }
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let body = serde_json::json!({ "code": code, "verifier": verifier, "name": host.trim() });
    let answer = http
        .post(format!("{server}/auth/cli-token"))
        .json(&body)
        .send()
        .await
        .map_err(|e| Failure::Server(format!("cannot reach {server}: {e}")))?;
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(Failure::Server(format!("the server refused the sign-in ({status}): {}", text.trim())));
    }
    let saved: Saved =
        serde_json::from_str(&text).map_err(|e| Failure::Server(format!("unexpected answer from the server: {e}")))?;
    let mut creds = load();
    let user = saved.user.clone();
    creds.servers.insert(server.clone(), saved);
    let path = store(&creds)?;
    eprintln!("Signed in to {server} as {user}; the token is in {}", path.display());
    Ok(())
}

/// Answers the browser's redirect to `/callback` until one carries our
/// state; anything else is refused and waited past.
async fn serve_callback(listener: tokio::net::TcpListener, state: String, tx: mpsc::Sender<Heard>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { return };
        let (state, tx) = (state.clone(), tx.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (state, tx) = (state.clone(), tx.clone());
                async move { Ok::<_, std::convert::Infallible>(callback(&req, &state, &tx).await) }
            });
            let io = hyper_util::rt::TokioIo::new(conn);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
        });
    }
}

async fn callback(
    req: &Request<hyper::body::Incoming>,
    state: &str,
    tx: &mpsc::Sender<Heard>,
) -> Response<Full<Bytes>> {
    let page = |status: u16, text: &str| {
        let html = format!("<!doctype html><meta charset=utf-8><title>Viaduct</title><p>{text}</p>");
        let mut r = Response::new(Full::new(Bytes::from(html)));
        *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_REQUEST);
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/html"));
        r
    };
    if req.uri().path() != "/callback" {
        return page(404, "Not found.");
    }
    let query = reqwest::Url::parse(&format!("http://127.0.0.1{}", req.uri())).ok();
    let pairs: BTreeMap<String, String> = query.map(|u| u.query_pairs().into_owned().collect()).unwrap_or_default();
    if pairs.get("state").map(String::as_str) != Some(state) {
        return page(400, "This sign-in was not started by this terminal.");
    }
    match pairs.get("code") {
        Some(code) => {
            let _ = tx.send(Heard::Code(code.clone())).await;
            page(200, "Signed in: you can close this tab and return to the terminal.")
        }
        None => {
            let why = pairs.get("error").cloned().unwrap_or_else(|| "no code".into());
            let _ = tx.send(Heard::Refused(why)).await;
            page(400, "The sign-in failed: see the terminal.")
        }
    }
}

/// `viaduct logout`: revokes the saved token at the server and forgets it.
pub async fn logout(cli: &Cli, transport: &Transport) -> Result<(), Failure> {
    let server = key(&cli.server);
    let mut creds = load();
    let Some(saved) = creds.servers.remove(&server) else {
        eprintln!("Not signed in to {server}.");
        return Ok(());
    };
    let client = Client::connect_with(&server, Some(saved.token.clone()), transport).await?;
    let revoked = client.tokens().revoke(viaduct_proto::v1::RevokeTokenRequest { id: saved.id.clone() }).await;
    match revoked {
        Ok(_) => {}
        // Already revoked or expired: forgetting it is all that is left.
        Err(s) if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::NotFound) => {}
        Err(s) => return Err(s.into()),
    }
    store(&creds)?;
    eprintln!("Signed out of {server} (token {} revoked).", saved.id);
    Ok(())
}
