//! The web UI's debug shell: a WebSocket on the server's own port
//! (`GET /debug/shell`), authenticated like the API — a job's restored
//! workspace driven from a WebSocket client as the browser's terminal
//! drives it; who is refused (no token, a read-only token, a page of
//! another site with the session cookie); over TLS too.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest as _},
};
use viaduct_tests::{Runner, Server, finished, output, submit, v1, within};

/// A job that keeps snapshots and fails at step 2.
const FAILS_AT_STEP_2: &str = "snapshots: true\njobs:\n  j:\n    steps:\n      - run: echo kept > kept.txt\n      - run: echo later > later.txt; exit 1\n";

/// The upgrade request for `query` on `host` (`ws://` or `wss://` base),
/// with `headers`.
fn request(base: &str, query: &str, headers: &[(&str, &str)]) -> tungstenite::handshake::client::Request {
    let mut req = format!("{base}/debug/shell?{query}").into_client_request().expect("a request");
    for (k, v) in headers {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().expect("a header value"),
        );
    }
    req
}

/// Opens the socket over plain TCP; the HTTP status of a refusal.
async fn open(
    server: &Server,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, u16> {
    let req = request(&format!("ws://{}", server.addr()), query, headers);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status().as_u16(), 101);
            Ok(ws)
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("the WebSocket handshake failed: {e}"),
    }
}

/// What the browser sees of a session: the `started` frame, the terminal's
/// output, and the `ended` frame — after which the server closes.
#[derive(Debug, Default)]
struct Seen {
    started: Option<serde_json::Value>,
    output: String,
    ended: Option<serde_json::Value>,
}

/// Reads frames until the server closes the socket.
async fn read_to_end<S>(ws: &mut WebSocketStream<S>) -> Seen
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("the session's end", async {
        let mut seen = Seen::default();
        while let Some(frame) = ws.next().await {
            match frame.expect("a frame") {
                Message::Binary(b) => seen.output.push_str(&String::from_utf8_lossy(&b)),
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    assert!(seen.ended.is_none(), "nothing after `ended`: {v}");
                    if let Some(s) = v.get("started") {
                        seen.started = Some(s.clone());
                    } else if let Some(e) = v.get("ended") {
                        seen.ended = Some(e.clone());
                    } else {
                        panic!("an unknown text frame: {v}");
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        seen
    })
    .await
}

/// Waits for the `started` frame (the shell runs), keeping the output
/// that came before it.
async fn started<S>(ws: &mut WebSocketStream<S>) -> serde_json::Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within("the shell to start", async {
        loop {
            match ws.next().await.expect("a frame before the end").expect("a frame") {
                Message::Text(t) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                    return v.get("started").unwrap_or_else(|| panic!("`started` first, not {v}")).clone();
                }
                Message::Binary(_) | Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("{other:?} before the shell started"),
            }
        }
    })
    .await
}

async fn user_token(admin: &viaduct_tests::Client, name: &str, role: v1::Role) -> String {
    let grants = vec![v1::Grant { role: role as i32, repo: String::new() }];
    admin.users().create(v1::User { name: name.into(), grants, ..Default::default() }).await.unwrap();
    let req = v1::CreateTokenRequest { name: format!("{name}'s token"), user: name.into(), ..Default::default() };
    admin.tokens().create(req).await.unwrap().into_inner().secret
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_browser_terminal_drives_a_debug_shell_over_a_websocket() {
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let id = submit(&client, FAILS_AT_STEP_2).await;
    finished(&client, &id).await;
    let bearer = format!("Bearer {}", server.admin_token());
    let query = format!("job={id}.1&step=1&cols=90&rows=30");
    let mut ws = open(&server, &query, &[("authorization", &bearer)]).await.expect("the upgrade");
    let st = started(&mut ws).await;
    assert_eq!(st["step"], 1, "{st}");
    assert!(st["runner_id"].as_str().is_some_and(|r| !r.is_empty()), "{st}");
    // A resize, then keystrokes (a terminal sends Enter as CR).
    ws.send(Message::Text(r#"{"resize":{"cols":100,"rows":40}}"#.into())).await.unwrap();
    ws.send(Message::Binary(b"cat kept.txt; ls; stty size; echo \"term=$TERM\"; exit 5\r".to_vec().into()))
        .await
        .unwrap();
    let seen = read_to_end(&mut ws).await;
    assert!(seen.output.contains("kept\r\n"), "{seen:?}");
    assert!(!seen.output.contains("later.txt"), "the snapshot after step 1: {seen:?}");
    assert!(seen.output.contains("40 100"), "the resize reached the terminal: {seen:?}");
    assert!(seen.output.contains("term=dumb"), "{seen:?}");
    let ended = seen.ended.expect("an `ended` frame");
    assert_eq!(ended["exit_code"], 5, "{ended}");

    // Input the gRPC stream would refuse ends the session the same way.
    let mut ws = open(&server, &query, &[("authorization", &bearer)]).await.expect("the upgrade");
    started(&mut ws).await;
    ws.send(Message::Text(r#"{"signal":"NOPE"}"#.into())).await.unwrap();
    let ended = read_to_end(&mut ws).await.ended.expect("an `ended` frame");
    assert!(ended["message"].as_str().unwrap_or_default().contains("refused input"), "{ended}");

    // Closing the socket ends the session: a new one may open at once
    // (one per user and job), and both are in the audit log.
    let mut ws = open(&server, &query, &[("authorization", &bearer)]).await.expect("the upgrade");
    started(&mut ws).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let mut ws = viaduct_tests::eventually("the closed session to end", || async {
        let mut ws = open(&server, &query, &[("authorization", &bearer)]).await.ok()?;
        match ws.next().await? {
            Ok(Message::Text(t)) if t.as_str().contains("started") => Some(ws),
            _ => None,
        }
    })
    .await;
    ws.send(Message::Binary(b"exit 3\r".to_vec().into())).await.unwrap();
    assert_eq!(read_to_end(&mut ws).await.ended.expect("ended")["exit_code"], 3);
    let audit = output(server.cli().args(["audit", "--limit", "40"]));
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("debug shell (web)") && audit.contains("debug shell opened"), "{audit}");
    assert!(audit.contains("the user left"), "a closed socket ended its session: {audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_who_may_push_from_this_servers_own_pages_opens_a_shell() {
    let server = Server::start();
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let id = submit(&client, FAILS_AT_STEP_2).await;
    finished(&client, &id).await;
    let query = format!("job={id}.1");
    let admin = server.admin_token();
    let ours = format!("http://{}", server.addr());

    // No token; a bogus one; a read-only user's; a runner's.
    assert_eq!(open(&server, &query, &[]).await.err(), Some(401));
    assert_eq!(open(&server, &query, &[("authorization", "Bearer vdt_bogus")]).await.err(), Some(401));
    let reader = format!("Bearer {}", user_token(&client, "reader", v1::Role::Read).await);
    assert_eq!(open(&server, &query, &[("authorization", &reader)]).await.err(), Some(403));
    let trigger = format!("Bearer {}", user_token(&client, "triggerer", v1::Role::Trigger).await);
    assert_eq!(open(&server, &query, &[("authorization", &trigger)]).await.err(), Some(403));
    // A job that was given a secret needs maintain: push is not enough.
    client
        .secrets()
        .set(v1::SetSecretRequest { name: "DEPLOY_KEY".into(), value: "k3y-for-deploys".into(), ..Default::default() })
        .await
        .unwrap();
    let with_secret = submit(
        &client,
        "snapshots: true\njobs:\n  j:\n    secrets: [DEPLOY_KEY]\n    steps:\n      - run: echo made > made.txt\n      - run: exit 1\n",
    )
    .await;
    finished(&client, &with_secret).await;
    let pusher = format!("Bearer {}", user_token(&client, "committer", v1::Role::Push).await);
    let secret_query = format!("job={with_secret}.1");
    assert_eq!(open(&server, &secret_query, &[("authorization", &pusher)]).await.err(), Some(403));
    let maintainer = format!("Bearer {}", user_token(&client, "keeper", v1::Role::Maintain).await);
    let mut ws = open(&server, &secret_query, &[("authorization", &maintainer)]).await.expect("a maintainer");
    started(&mut ws).await;
    ws.send(Message::Binary(b"exit 0\r".to_vec().into())).await.unwrap();
    assert_eq!(read_to_end(&mut ws).await.ended.expect("ended")["exit_code"], 0);
    // A job that does not exist, a malformed one.
    let bearer = format!("Bearer {admin}");
    assert_eq!(open(&server, "job=999999.1", &[("authorization", &bearer)]).await.err(), Some(404));
    assert_eq!(open(&server, "job=nope", &[("authorization", &bearer)]).await.err(), Some(400));

    // The session cookie (the web UI's): a page of another site, or a
    // request without an Origin, is refused; the server's own page is let in.
    let cookie = format!("viaduct_session={admin}");
    let foreign = [("cookie", cookie.as_str()), ("origin", "http://evil.example")];
    assert_eq!(open(&server, &query, &foreign).await.err(), Some(403));
    assert_eq!(open(&server, &query, &[("cookie", cookie.as_str())]).await.err(), Some(403));
    let port: u16 = server.addr().rsplit(':').next().unwrap().parse().unwrap();
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    assert_eq!(open(&server, &query, &[("cookie", &cookie), ("origin", &other_port)]).await.err(), Some(403));
    // An Origin that is not ours is refused whatever the credentials.
    assert_eq!(
        open(&server, &query, &[("authorization", &bearer), ("origin", "http://evil.example")]).await.err(),
        Some(403)
    );
    let mut ws = open(&server, &query, &[("cookie", &cookie), ("origin", &ours)]).await.expect("our own page");
    started(&mut ws).await;
    ws.send(Message::Binary(b"exit 0\r".to_vec().into())).await.unwrap();
    assert_eq!(read_to_end(&mut ws).await.ended.expect("ended")["exit_code"], 0);

    // A job without a snapshot: the reason comes in the `ended` frame (a
    // browser cannot read a refused handshake's body).
    let plain = submit(&client, "jobs:\n  j:\n    steps:\n      - run: exit 1\n").await;
    finished(&client, &plain).await;
    let mut ws = open(&server, &format!("job={plain}.1"), &[("authorization", &bearer)]).await.expect("the upgrade");
    let seen = read_to_end(&mut ws).await;
    let ended = seen.ended.clone().expect("ended");
    assert!(seen.started.is_none() && ended["exit_code"].is_null(), "{seen:?}");
    assert!(ended["message"].as_str().unwrap_or_default().contains("has no snapshot"), "{ended}");

    // A pusher's shell lasts as long as their token: revoked, it ends.
    client
        .users()
        .create(v1::User {
            name: "pusher".into(),
            grants: vec![v1::Grant { role: v1::Role::Push as i32, repo: String::new() }],
            ..Default::default()
        })
        .await
        .unwrap();
    let req = v1::CreateTokenRequest { name: "pusher's token".into(), user: "pusher".into(), ..Default::default() };
    let made = client.tokens().create(req).await.unwrap().into_inner();
    let pusher = format!("Bearer {}", made.secret);
    let mut ws = open(&server, &query, &[("authorization", &pusher)]).await.expect("a pusher may");
    started(&mut ws).await;
    let revoke = v1::RevokeTokenRequest { id: made.token.expect("the token").id };
    client.tokens().revoke(revoke).await.unwrap();
    let ended = read_to_end(&mut ws).await.ended.expect("ended");
    assert_eq!(ended["message"], "the token was revoked", "{ended}");

    // The gRPC API on the same port is unchanged by all this.
    assert!(client.tokens().whoami(v1::WhoamiRequest {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_works_over_tls_beside_grpc() {
    let server = Server::start_tls(&[]);
    let _runner = Runner::start(&server, "linux", 1, &[]);
    let client = server.client().await;
    let id = submit(&client, FAILS_AT_STEP_2).await;
    finished(&client, &id).await;
    // A browser's WebSocket connection: TLS, ALPN http/1.1.
    let ca = server.tls_ca().expect("a CA");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject as _;
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    // ring, as everywhere here (the server's `tls::provider`).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("TLS");
    let base = server.url().replace("https://", "wss://");
    let cookie = format!("viaduct_session={}", server.admin_token());
    let req = request(&base, &format!("job={id}.1"), &[("cookie", &cookie), ("origin", &server.url())]);
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.expect("the upgrade over TLS");
    started(&mut ws).await;
    ws.send(Message::Binary(b"cat kept.txt; exit 2\r".to_vec().into())).await.unwrap();
    let seen = read_to_end(&mut ws).await;
    assert!(seen.output.contains("kept"), "{seen:?}");
    assert_eq!(seen.ended.expect("ended")["exit_code"], 2);
    assert!(client.tokens().whoami(v1::WhoamiRequest {}).await.is_ok());
}
