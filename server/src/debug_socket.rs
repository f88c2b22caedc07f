//! `GET /debug/shell?job=RUN.JOB&step=N&cols=C&rows=R`: a job's debug
//! shell (see `crate::debug`) over a WebSocket, for the web UI's terminal
//! — gRPC-web has no bidirectional streams, so the UI cannot use
//! `Debug.Shell`.
//!
//! Who may: exactly who may call `Debug.Shell` — a bearer token (or the
//! web UI's session cookie) through the gate, with the push role on the
//! job's repository; each upgrade counts against the token's rate limit
//! and is written to the audit log. Refusals are plain HTTP before the
//! upgrade (401, 403, 404, 429). Against cross-site WebSocket hijacking
//! (a browser sends the cookie with a WebSocket any page opens, and no
//! preflight guards it): a request with an `Origin` must come from the
//! server's own origin — the one its `Host` names on this connection's
//! scheme, or `--public-url`'s — and one authenticated by the cookie
//! must have an `Origin` (browsers always send one).
//!
//! Frames: from the browser, binary = keystrokes (at most 64 KiB each),
//! text = `{"resize":{"cols":N,"rows":N}}` or `{"signal":"INT"}`, checked
//! as `Debug.Shell` checks them (`api::debug::open_and_relay`); to the
//! browser, `{"started":{…}}` (text) once the shell runs, binary = the
//! terminal's output, and a last text frame `{"ended":{"exit_code":N|null,
//! "message":"…"}}` before the close — also when the session could not be
//! opened. Closing the socket ends the session, and so does revoking the
//! token. The shell's `TERM` is `dumb` (the UI's terminal is line-oriented).
//!
//! tonic's server cannot hand a connection over to a WebSocket: such
//! connections are served by `crate::upgrades`.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{
        FromRequestParts as _, Request, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures_util::{SinkExt as _, StreamExt as _, stream::SplitSink};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use viaduct_proto::v1::{Role, ShellOpen, ShellOutput, TerminalSize, shell_input::Msg, shell_output};

use crate::{
    access::Access,
    api::debug::{MAX_INPUT, allowed_job, open_and_relay},
    auth::{Auth, Principal},
    debug::DebugShells,
    engine::Engine,
    error::Error,
    gate::{self, Gate},
    store::keys::JobKey,
};

/// The route's path.
pub const PATH: &str = "/debug/shell";

/// What the route needs.
pub struct DebugSocket {
    /// Jobs (whose repository a job is in).
    pub engine: Arc<Engine>,
    /// Authentication, limits and the audit log.
    pub gate: Arc<Gate>,
    /// The sessions (the same as `Debug.Shell`'s).
    pub shells: Arc<DebugShells>,
    /// `--public-url` (or the listening address's URL).
    pub public_url: String,
}

/// `GET /debug/shell`.
pub fn router(state: Arc<DebugSocket>) -> Router {
    Router::new().route(PATH, get(handle)).with_state(state)
}

/// The query of `/debug/shell`.
#[derive(serde::Deserialize)]
struct ShellQuery {
    /// `RUN.JOB`.
    job: String,
    /// The snapshot after this step (0 or absent: the newest).
    #[serde(default)]
    step: u32,
    #[serde(default)]
    cols: u32,
    #[serde(default)]
    rows: u32,
    /// The live environment its runner holds for the failed attempt
    /// (`ShellOpen.live`).
    #[serde(default)]
    live: bool,
}

/// A text frame from the browser.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: Option<Size>,
    signal: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Size {
    cols: u32,
    rows: u32,
}

/// A refusal before the upgrade (no Basic challenge: a browser would ask
/// for a password).
fn refuse(e: &Error) -> Response {
    gate::http_error(e)
}

/// Whether the request may come from where its `Origin` says: absent, only
/// when it is not authenticated by the session cookie (a bearer token is
/// not sent by a browser on its own); present, only the server's own
/// origin — `Host` on this connection's scheme (`tls`), or `public_url`'s.
pub fn check_origin(headers: &HeaderMap, tls: bool, public_url: &str) -> Result<(), Error> {
    let by_cookie = !headers.contains_key(header::AUTHORIZATION) && crate::sign_in::session_cookie(headers).is_some();
    let Some(origin) = headers.get(header::ORIGIN) else {
        if by_cookie {
            return Err(Error::PermissionDenied(
                "a debug shell opened with the session cookie needs an `Origin` header".into(),
            ));
        }
        return Ok(());
    };
    let origin_of = |s: &str| url::Url::parse(s).ok().map(|u| u.origin()).filter(url::Origin::is_tuple);
    let theirs = origin.to_str().ok().and_then(origin_of);
    let scheme = if tls { "https" } else { "http" };
    let by_host =
        headers.get(header::HOST).and_then(|h| h.to_str().ok()).and_then(|h| origin_of(&format!("{scheme}://{h}/")));
    let ours = [by_host, origin_of(public_url)];
    match theirs {
        Some(o) if ours.iter().flatten().any(|ours| *ours == o) => Ok(()),
        _ => Err(Error::PermissionDenied(format!(
            "a debug shell is opened only from this server's own pages, not from `{}`",
            String::from_utf8_lossy(origin.as_bytes())
        ))),
    }
}

async fn handle(State(s): State<Arc<DebugSocket>>, req: Request) -> Response {
    let client = gate::peer_of(&req);
    let tls = req.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().is_some();
    let (mut parts, _) = req.into_parts();
    let peer = client.map(|a| a.to_string()).unwrap_or_default();
    if let Err(e) = check_origin(&parts.headers, tls, &s.public_url) {
        tracing::warn!(%peer, error = %e, "debug shell WebSocket refused");
        return refuse(&e);
    }
    let principal = match s.gate.authenticate_call(&parts.headers, client.map(|a| a.ip())) {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let Principal::Person(caller) = &principal else {
        return refuse(&Error::PermissionDenied("a runner token cannot open a debug shell".into()));
    };
    if let Err(e) = s.gate.throttle.call(&caller.hash, &caller.actor) {
        return refuse(&e);
    }
    let hash = caller.hash;
    let access = gate::access_of(&principal, Role::Push);
    let query = match axum::extract::Query::<ShellQuery>::try_from_uri(&parts.uri) {
        Ok(q) => q.0,
        Err(_) => return refuse(&Error::invalid("expected ?job=RUN.JOB[&step=N][&cols=C&rows=R]")),
    };
    let job = match allowed_job(&s.engine, &access, &query.job) {
        Ok(job) => job,
        Err(e) => {
            if matches!(e, Error::PermissionDenied(_)) {
                s.gate.write_route(
                    &principal,
                    "debug shell (web)",
                    &format!("job {}", query.job),
                    &peer,
                    "permission denied",
                );
            }
            return refuse(&e);
        }
    };
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    s.gate.write_route(&principal, "debug shell (web)", &format!("job {job}"), &peer, "ok");
    let open = ShellOpen {
        job_id: job.to_string(),
        step: query.step,
        size: Some(TerminalSize { cols: query.cols, rows: query.rows }).filter(|t| t.cols > 0 && t.rows > 0),
        term: "dumb".into(),
        timeout_seconds: 0,
        live: query.live,
    };
    // Room for a keystroke message of the most the runner takes (refused
    // with a reason past that), not much more.
    ws.max_message_size(2 * MAX_INPUT)
        .on_upgrade(move |socket| session(s, access, hash, job, open, socket))
        .into_response()
}

/// A browser's message as the user's input: keystrokes, a resize, a
/// signal (checked further by `open_and_relay`); `None` for pings.
fn user_input(m: Message) -> Option<Result<Msg, Error>> {
    match m {
        Message::Binary(b) => Some(Ok(Msg::Data(b.to_vec()))),
        Message::Text(t) => Some(control(t.as_str())),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => None,
    }
}

/// A text frame: `{"resize":{"cols":N,"rows":N}}` or `{"signal":"INT"}`.
fn control(text: &str) -> Result<Msg, Error> {
    let wrong = || Error::invalid(r#"a text frame is {"resize":{"cols":N,"rows":N}} or {"signal":"NAME"}"#);
    match serde_json::from_str::<Control>(text).map_err(|_| wrong())? {
        Control { resize: Some(Size { cols, rows }), signal: None } => Ok(Msg::Resize(TerminalSize { cols, rows })),
        Control { resize: None, signal: Some(s) } => Ok(Msg::Signal(s)),
        _ => Err(wrong()),
    }
}

/// How often an idle socket is pinged (proxies close silent ones).
const PING_EVERY: Duration = Duration::from_secs(30);
/// How long the browser has to answer the close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One upgraded socket: opens the session, relays both ways, ends it.
async fn session(s: Arc<DebugSocket>, access: Access, hash: [u8; 32], job: JobKey, open: ShellOpen, socket: WebSocket) {
    let (mut sink, stream) = socket.split();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // The user's frames until they close, the socket breaks, or the
    // server is done with it.
    let inbound = stream
        .take_until(stopped)
        .take_while(|m| std::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_)))))
        .filter_map(|m| std::future::ready(m.ok().and_then(user_input)));
    let (exit_code, message) = match open_and_relay(&s.shells, &access.actor, job, &open, inbound) {
        Ok(output) => relay_output(&s.gate.auth, hash, output, &mut sink).await,
        Err(e) => (None, e.to_string()),
    };
    let ended = serde_json::json!({ "ended": { "exit_code": exit_code, "message": message } });
    let _ = sink.send(Message::Text(ended.to_string().into())).await;
    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1000, reason: "".into() }))).await;
    tokio::time::sleep(CLOSE_GRACE).await;
    let _ = stop.send(());
}

/// Sends the session's output to the browser until it ends (or the token
/// is revoked, or the browser is gone); how it ended.
async fn relay_output(
    auth: &Arc<Auth>,
    hash: [u8; 32],
    mut output: tokio::sync::mpsc::Receiver<Result<ShellOutput, tonic::Status>>,
    sink: &mut SplitSink<WebSocket, Message>,
) -> (Option<i32>, String) {
    let mut revoked = tokio_stream::wrappers::WatchStream::from_changes(auth.revocations());
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        let frame = tokio::select! {
            out = output.recv() => match out {
                Some(Ok(ShellOutput { msg: Some(shell_output::Msg::Data(d)) })) => Message::Binary(d.into()),
                Some(Ok(ShellOutput { msg: Some(shell_output::Msg::Started(st)) })) => {
                    let started = serde_json::json!({ "started": {
                        "session_id": st.session_id,
                        "runner_id": st.runner_id,
                        "step": st.step,
                        "attempt": st.attempt,
                    }});
                    Message::Text(started.to_string().into())
                }
                Some(Ok(ShellOutput { msg: Some(shell_output::Msg::Ended(e)) })) => return (e.exit_code, e.message),
                Some(Ok(ShellOutput { msg: None })) => continue,
                Some(Err(status)) => return (None, status.message().to_string()),
                None => return (None, "the session ended".into()),
            },
            Some(_) = revoked.next() => {
                if auth.still_valid(&hash) {
                    continue;
                }
                return (None, "the token was revoked".into());
            }
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        if sink.send(frame).await.is_err() {
            return (None, "the user left".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_cookie_opens_a_shell_only_from_the_servers_own_pages() {
        let public = "https://ci.example.com";
        let cookie = ("cookie", "viaduct_session=vdt_x");
        let ok = |pairs: &[(&str, &str)], tls: bool| check_origin(&headers(pairs), tls, public).is_ok();
        // The page's own origin: by Host on this connection's scheme, or
        // by --public-url (a proxy in front terminating TLS).
        assert!(ok(&[cookie, ("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8080")], false));
        assert!(ok(&[cookie, ("host", "ci.example.com"), ("origin", "https://ci.example.com")], false));
        assert!(ok(&[cookie, ("host", "CI.example.com:443"), ("origin", "https://ci.example.com")], true));
        // Another site, another scheme or port, an opaque origin, none.
        assert!(!ok(&[cookie, ("host", "10.0.0.5:8080"), ("origin", "http://evil.example")], false));
        assert!(!ok(&[cookie, ("host", "10.0.0.5:8080"), ("origin", "https://10.0.0.5:8080")], false));
        assert!(!ok(&[cookie, ("host", "10.0.0.5:8080"), ("origin", "http://10.0.0.5:8081")], false));
        assert!(!ok(&[cookie, ("host", "10.0.0.5:8080"), ("origin", "null")], false));
        assert!(!ok(&[cookie, ("host", "10.0.0.5:8080")], false));
        // A bearer token is no ambient credential: no Origin needed, but
        // one that is there must still be ours (cached Basic credentials).
        let bearer = ("authorization", "Bearer vdt_x");
        assert!(ok(&[bearer, ("host", "10.0.0.5:8080")], false));
        assert!(!ok(&[bearer, ("host", "10.0.0.5:8080"), ("origin", "http://evil.example")], false));
    }

    #[test]
    fn text_frames_are_a_resize_or_a_signal() {
        assert!(matches!(
            control(r#"{"resize":{"cols":100,"rows":30}}"#),
            Ok(Msg::Resize(TerminalSize { cols: 100, rows: 30 }))
        ));
        assert!(matches!(control(r#"{"signal":"INT"}"#), Ok(Msg::Signal(s)) if s == "INT"));
        for wrong in [
            "",
            "{}",
            "hello",
            r#"{"resize":{"cols":1}}"#,
            r#"{"signal":"INT","resize":{"cols":1,"rows":1}}"#,
            r#"{"open":{}}"#,
        ] {
            assert!(control(wrong).is_err(), "{wrong}");
        }
    }
}
