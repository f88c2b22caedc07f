//! Single sign-on with a real OpenID Provider (npm `oidc-provider`, see
//! `viaduct_tests::oidc`): the web UI in headless Chromium, `viaduct login`
//! from a terminal, and the attacks on both.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::PermissionsExt as _,
    process::Stdio,
};

use fantoccini::Locator;
use viaduct_tests::{
    Server,
    browser::{Browser, Driver, screenshot, ui_dir, wait_for, wait_for_js, wait_for_page},
    http, http_with_head, oidc, output, v1, within,
};

const ADMIN: i32 = v1::Role::Admin as i32;
const TRIGGER: i32 = v1::Role::Trigger as i32;

/// A server with the web UI and single sign-on at a provider that knows
/// alice (group `ci-admins`: admin), bob (group `devs`: trigger on `app`)
/// and carol (also a local user of the server).
fn start() -> Option<(Server, oidc::Provider)> {
    let planned = oidc::Planned::new()?;
    let secret = planned.secret_file();
    let ui = ui_dir();
    let server = Server::start_with(&[
        "--ui-dir",
        &ui.display().to_string(),
        "--oidc-issuer",
        &planned.issuer,
        "--oidc-client-id",
        oidc::CLIENT_ID,
        "--oidc-client-secret-file",
        &secret.display().to_string(),
        "--oidc-group-role",
        "ci-admins=admin",
        "--oidc-group-role",
        "devs=trigger:app",
    ]);
    let accounts = serde_json::json!({
        "alice": { "name": "Alice Liddell", "groups": ["ci-admins", "readers"] },
        "bob": { "groups": ["devs"] },
        "carol": { "groups": ["ci-admins"] },
    });
    let provider = planned.start(&format!("{}/auth/callback", server.url()), accounts);
    Some((server, provider))
}

/// Fills in the provider's login form (any password works there).
async fn provider_login(c: &Driver, who: &str) {
    let login = wait_for(c, "input[name=login]").await;
    login.send_keys(who).await.expect("type the login");
    c.find(Locator::Css("input[name=password]")).await.expect("password").send_keys("pw").await.expect("type");
    c.find(Locator::Css("button[type=submit]")).await.expect("submit").click().await.expect("sign in");
}

/// The identity of the web session in the browser (WebDriver sees the
/// cookie that scripts cannot).
async fn session_identity(c: &Driver, server: &Server) -> v1::Identity {
    let cookie = c.get_named_cookie("viaduct_session").await.expect("a session cookie");
    assert!(cookie.value().starts_with("vds_"), "not a session token: {cookie:?}");
    let client =
        viaduct_tests::Client::connect(&server.url(), Some(cookie.value().to_string())).await.expect("connect");
    client.tokens().whoami(v1::WhoamiRequest {}).await.expect("whoami with the session").into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_the_provider_gives_the_roles_of_ones_groups() {
    let Some((server, provider)) = start() else { return };
    let admin = server.client().await;
    // carol is a local user: the provider's carol must not become her.
    let carol = v1::User { name: "carol".into(), ..Default::default() };
    admin.users().create(carol).await.expect("create carol");
    let url = server.url();
    Browser::run(|c| async move {
        // Not signed in: the sign-in page offers single sign-on.
        c.goto(&format!("{url}/")).await.expect("open");
        wait_for_page(&c, "sign-in").await;
        screenshot(&c, "sign-in-sso").await;
        wait_for(&c, "#sso").await.click().await.expect("single sign-on");
        provider_login(&c, "alice").await;

        // Back at Viaduct, signed in as alice, an admin through her group.
        wait_for_page(&c, "runs").await;
        let shown = wait_for(&c, "#signed-in-as").await.text().await.expect("text");
        assert!(shown.contains("alice"), "{shown}");
        wait_for(&c, "a[href='/audit']").await;
        let me = session_identity(&c, &server).await;
        assert_eq!(me.name, "alice");
        assert_eq!(me.grants, vec![v1::Grant { role: ADMIN, repo: String::new() }]);
        let session = c.get_named_cookie("viaduct_session").await.expect("cookie");
        assert_eq!(session.http_only(), Some(true));
        assert_eq!(session.same_site(), Some(cookie::SameSite::Strict));
        let visible = c.execute("return document.cookie;", vec![]).await.expect("js");
        assert!(!visible.to_string().contains("vds_"), "scripts can read the session: {visible}");

        // The user exists now, from single sign-on, with her groups.
        let alice = admin.users().get(v1::GetUserRequest { name: "alice".into() }).await.expect("alice").into_inner();
        assert_eq!((alice.source.as_str(), alice.display_name.as_str()), ("oidc", "Alice Liddell"));
        assert_eq!(alice.groups, vec!["ci-admins".to_string(), "readers".to_string()]);

        // Her sign-in is in the audit log, shown in the UI.
        c.goto(&format!("{url}/audit")).await.expect("open audit");
        wait_for_page(&c, "audit").await;
        wait_for_js(
            &c,
            "her sign-in in the audit log",
            "[...document.querySelectorAll('[data-audit-id]')].some(r => r.innerText.includes('sign in (web session)'))",
        )
        .await;
        screenshot(&c, "audit").await;

        // Signing out ends the session on the server: the token is dead.
        let token = c.get_named_cookie("viaduct_session").await.expect("cookie").value().to_string();
        wait_for(&c, "#sign-out").await.click().await.expect("sign out");
        wait_for_page(&c, "sign-in").await;
        let dead = viaduct_tests::Client::connect(&url, Some(token)).await.expect("connect");
        let err = dead.tokens().whoami(v1::WhoamiRequest {}).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

        // bob, in `devs`, may trigger on `app` and nothing else.
        c.delete_all_cookies().await.expect("forget the provider's session");
        c.goto(&format!("{url}/auth/login?next=/runners")).await.expect("start");
        provider_login(&c, "bob").await;
        wait_for_page(&c, "runners").await;
        let me = session_identity(&c, &server).await;
        assert_eq!(me.name, "bob");
        assert_eq!(me.grants, vec![v1::Grant { role: TRIGGER, repo: "app".into() }]);
        assert!(c.find(Locator::Css("a[href='/audit']")).await.is_err(), "bob is offered the audit log");

        // The provider's carol is refused: carol is a local user here.
        c.delete_all_cookies().await.expect("forget");
        c.goto(&format!("{url}/auth/login")).await.expect("start");
        provider_login(&c, "carol").await;
        wait_for_js(&c, "a refusal", "document.body.innerText.includes('local user')").await;
        assert!(c.get_named_cookie("viaduct_session").await.is_err(), "carol got a session");
        let req = v1::ListAuditRequest { actor: "carol".into(), ..Default::default() };
        let log = admin.audit().list(req).await.expect("audit").into_inner().entries;
        assert!(log.iter().any(|e| e.outcome.starts_with("refused")), "{log:?}");
    })
    .await;
    drop(provider);
}

#[test]
fn forged_callbacks_open_redirects_and_stolen_codes_are_refused() {
    let Some((server, provider)) = start() else { return };
    let addr = server.addr();
    // A callback that this browser did not start (no login cookie) or with
    // a made-up state: refused.
    let (code, body) = http(addr, "GET", "/auth/callback?code=abc&state=forged", &[], b"");
    assert_eq!(code, 401, "{}", String::from_utf8_lossy(&body));
    let cookie = [("Cookie", "viaduct_login=forged")];
    let (code, _) = http(addr, "GET", "/auth/callback?code=abc&state=forged", &cookie, b"");
    assert_eq!(code, 401);
    // The provider's errors are passed on, not followed.
    let (code, body) = http(addr, "GET", "/auth/callback?error=access_denied&error_description=no", &[], b"");
    assert_eq!(code, 401);
    assert!(String::from_utf8_lossy(&body).contains("access_denied"));

    // A login goes to the provider with PKCE and a state bound to a cookie.
    let (code, head, _) = http_with_head(addr, "GET", "/auth/login?next=https://evil.example/", &[], b"");
    assert_eq!(code, 303, "{head}");
    let location = head.lines().find_map(|l| l.strip_prefix("location: ")).expect("a redirect").to_string();
    assert!(location.starts_with(&provider.issuer), "{location}");
    assert!(location.contains("code_challenge_method=S256"), "{location}");
    let set = head.to_ascii_lowercase();
    assert!(set.contains("set-cookie: viaduct_login=") && set.contains("httponly"), "{head}");

    // A CLI hand-off needs a real PKCE challenge.
    let (code, _) = http(addr, "GET", "/auth/login?cli_port=4000&cli_state=s&challenge=short", &[], b"");
    assert_eq!(code, 400);
    // A guessed one-time code, or a stolen one without its verifier: 401.
    let json = [("Content-Type", "application/json")];
    let body = br#"{"code":"0000","verifier":"guess"}"#;
    let (code, _) = http(addr, "POST", "/auth/cli-token", &json, body);
    assert_eq!(code, 401);
    // Signing the browser in or out needs the same-origin header (CSRF).
    let (code, _) = http(addr, "POST", "/auth/session", &[], server.admin_token().as_bytes());
    assert_eq!(code, 403);
    let (code, _) = http(addr, "POST", "/auth/logout", &[], b"");
    assert_eq!(code, 403);
    // A registration token cannot sign a browser in.
    let header = [("x-viaduct-request", "1")];
    let (code, _) = http(addr, "POST", "/auth/session", &header, server.runner_token().as_bytes());
    assert_eq!(code, 403);
    // One address cannot fill the server with sign-ins in progress: starts
    // count against its failed-authentication budget (30 a minute).
    let codes: Vec<u16> = (0..40).map(|_| http(addr, "GET", "/auth/login", &[], b"").0).collect();
    assert!(codes.contains(&429), "{codes:?}");
    let (code, head, _) = http_with_head(addr, "GET", "/auth/login", &[], b"");
    assert_eq!(code, 429);
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viaduct_login_keeps_a_token_only_its_owner_can_read() {
    let Some((server, _provider)) = start() else { return };
    let config = tempfile::tempdir().expect("config dir");
    let cli = || {
        let mut c = server.cli();
        c.env_remove("VIADUCT_TOKEN").env("VIADUCT_CONFIG_DIR", config.path().join("viaduct"));
        c
    };
    // Without a token, the CLI says how to get one.
    let out = output(cli().arg("whoami"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("viaduct login"), "{out:?}");

    let mut login = cli().args(["login", "--no-browser"]).stderr(Stdio::piped()).spawn().expect("viaduct login");
    let mut stderr = BufReader::new(login.stderr.take().expect("stderr"));
    let url = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).expect("read") > 0, "viaduct login printed no address");
        if let Some(u) = line.trim().strip_prefix("http") {
            break format!("http{u}");
        }
    };
    assert!(url.starts_with(&format!("{}/auth/login?cli_port=", server.url())), "{url}");
    Browser::run(|c| async move {
        c.goto(&url).await.expect("open the address");
        provider_login(&c, "alice").await;
        wait_for_js(&c, "the CLI's page", "document.body.innerText.includes('return to the terminal')").await;
    })
    .await;
    let status = within("viaduct login to finish", async { tokio::task::spawn_blocking(move || login.wait()).await })
        .await
        .expect("join")
        .expect("wait");
    let mut rest = String::new();
    std::io::Read::read_to_string(stderr.get_mut(), &mut rest).expect("read");
    assert!(status.success(), "viaduct login failed: {rest}");
    assert!(rest.contains("as alice"), "{rest}");

    let file = config.path().join("viaduct").join("credentials.json");
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&config.path().join("viaduct")), 0o700);

    // Later commands use it.
    let out = output(cli().arg("whoami"));
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice"), "{out:?}");

    // Logging out revokes it at the server, not only here.
    let token: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    let token = token["servers"][server.url()]["token"].as_str().expect("the saved token").to_string();
    let out = output(cli().arg("logout"));
    assert!(out.status.success(), "{out:?}");
    let gone = viaduct_tests::Client::connect(&server.url(), Some(token)).await.expect("connect");
    let err = gone.tokens().whoami(v1::WhoamiRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let out = output(cli().arg("whoami"));
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}
