//! The web UI in a real headless Chromium, against the real server (serving
//! the built bundle and gRPC-web on one port) and a real runner. Every page
//! visited is saved as a screenshot under `target/ui-screenshots/`.

use fantoccini::{Client as Driver, Locator};
use viaduct_tests::{
    Server, Status,
    browser::{Browser, screenshot, wait_for, wait_for_js, wait_for_page},
    finished, http, run_where, submit, v1, within,
};

/// Signs in through the sign-in page with `token`.
async fn sign_in(c: &Driver, server: &Server, token: &str) {
    c.goto(&format!("{}/sign-in", server.url())).await.expect("open sign-in");
    wait_for_page(c, "sign-in").await;
    let input = wait_for(c, "#token").await;
    input.clear().await.expect("clear");
    input.send_keys(token).await.expect("type the token");
    c.find(Locator::Css("#sign-in")).await.expect("sign-in button").click().await.expect("click sign in");
}

/// The `data-status` of the first element matching `css`, if any.
async fn status_of(c: &Driver, css: &str) -> Option<String> {
    let el = c.find(Locator::Css(css)).await.ok()?;
    el.attr("data-status").await.ok().flatten()
}

#[test]
fn the_bundle_is_served_with_types_compression_and_caching() {
    let server = Server::with_ui();
    let page = |path: &str| http(server.addr(), "GET", path, &[("Accept", "text/html")], b"");
    let (code, html) = page("/");
    assert_eq!(code, 200);
    let html = String::from_utf8_lossy(&html).into_owned();
    // Client-side routes get the same page.
    assert_eq!(page("/runs/42/jobs/42.1").0, 200);
    // The server's own routes keep working beside the UI.
    assert_eq!(http(server.addr(), "GET", "/healthz", &[], b"").0, 200);
    assert_eq!(http(server.addr(), "GET", "/no-such-file.txt", &[], b"").0, 404);

    let asset = |ext: &str| {
        let start = html.find("/assets/").expect("an asset link");
        html[start..]
            .split(['"', '\''])
            .find(|s| s.starts_with("/assets/") && s.ends_with(ext))
            .map(str::to_string)
            .or_else(|| {
                html.split(['"', '\'']).find(|s| s.starts_with("/assets/") && s.ends_with(ext)).map(str::to_string)
            })
            .unwrap_or_else(|| panic!("index.html links no {ext}: {html}"))
    };
    let raw = |path: &str, headers: &[(&str, &str)]| {
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
        use std::io::{Read, Write};
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).expect("read");
        let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        String::from_utf8_lossy(&out[..head_end]).to_lowercase()
    };
    let head = raw("/", &[("Accept", "text/html")]);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    // A strict policy: the page's own scripts by hash, nothing injected runs
    // (every browser test below runs under it).
    let csp = head.lines().find_map(|l| l.strip_prefix("content-security-policy: ")).expect("a CSP header");
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let scripts = csp.split(';').find(|d| d.trim().starts_with("script-src")).expect("script-src");
    assert!(!scripts.contains("unsafe-inline") && scripts.contains("'sha256-"), "{csp}");

    for (ext, mime) in [(".wasm", "application/wasm"), (".js", "javascript"), (".css", "text/css")] {
        let path = asset(ext);
        let plain = raw(&path, &[]);
        assert!(plain.starts_with("http/1.1 200"), "{path}: {plain}");
        assert!(plain.contains(mime), "{path}: {plain}");
        assert!(plain.contains("immutable"), "{path}: {plain}");
        let gz = raw(&path, &[("Accept-Encoding", "gzip")]);
        assert!(gz.contains("content-encoding: gzip"), "{path}: {gz}");
        let br = raw(&path, &[("Accept-Encoding", "br, gzip")]);
        assert!(br.contains("content-encoding: br"), "{path}: {br}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_then_a_run_appears_and_turns_green_without_reload() {
    let server = Server::with_ui();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let token = server.admin_token();
    Browser::run(|c| async move {
        // Not signed in: any page leads to sign-in.
        c.goto(&format!("{}/runners", server.url())).await.expect("open");
        wait_for_page(&c, "sign-in").await;

        // A bad token is refused and keeps the sign-in page.
        sign_in(&c, &server, "vda_not-a-real-token").await;
        let err = wait_for(&c, "#sign-in-error").await;
        assert!(!err.text().await.expect("error text").trim().is_empty());
        wait_for_page(&c, "sign-in").await;
        screenshot(&c, "sign-in-error").await;

        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        screenshot(&c, "runs-empty").await;

        // A run submitted elsewhere (the CLI) shows up live and goes green.
        let id = {
            let dir = tempfile::tempdir().expect("tmp");
            let file = dir.path().join("pipeline.yml");
            std::fs::write(
                &file,
                "name: hello\njobs:\n  build:\n    steps:\n      - run: sleep 1; echo built\n  test:\n    needs: [build]\n    steps:\n      - run: echo tested\n",
            )
            .expect("write pipeline");
            let out = viaduct_tests::output(server.cli().arg("submit").arg(&file));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            // The CLI prints the run id first.
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.split(|ch: char| !ch.is_ascii_digit()).find(|s| !s.is_empty()).expect("a run id").to_string()
        };
        let row = format!("[data-run-id=\"{id}\"]");
        wait_for(&c, &row).await;
        let url_before = c.current_url().await.expect("url");
        wait_for_js(
            &c,
            "the run row to turn green",
            &format!("document.querySelector('{}[data-status=\"success\"]')", row.replace('"', "\\\"")),
        )
        .await;
        assert_eq!(c.current_url().await.expect("url"), url_before, "the page was not reloaded or left");
        assert_eq!(finished(&client, &id).await.status, Status::Success as i32);
        screenshot(&c, "runs").await;

        // The run page: the job graph with both jobs, green.
        c.goto(&format!("{}/runs/{id}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        for job in [format!("{id}.1"), format!("{id}.2")] {
            let css = format!("[data-job-id=\"{job}\"][data-status=\"success\"]");
            wait_for(&c, &css).await;
        }
        screenshot(&c, "run").await;

        // The token lives in a cookie scripts cannot read (an XSS could
        // not steal it), sent only to this site, never in local storage.
        let session = c.get_named_cookie("viaduct_session").await.expect("the session cookie");
        assert_eq!(session.http_only(), Some(true), "{session:?}");
        assert_eq!(session.same_site(), Some(cookie::SameSite::Strict), "{session:?}");
        assert_eq!(session.secure(), Some(true), "{session:?}");
        let visible = c.execute("return document.cookie + JSON.stringify(localStorage);", vec![]).await.expect("js");
        assert!(!visible.to_string().contains(&token), "scripts can see the token: {visible}");

        // Signing out forgets the token.
        wait_for(&c, "#sign-out").await.click().await.expect("sign out");
        wait_for_page(&c, "sign-in").await;
        assert!(c.get_named_cookie("viaduct_session").await.is_err(), "the session cookie is still set");
        c.goto(&format!("{}/", server.url())).await.expect("open");
        wait_for_page(&c, "sign-in").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_arrive_live_and_a_running_job_is_cancelled_from_the_ui() {
    let server = Server::with_ui();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let token = server.admin_token();
    let id = submit(
        &client,
        "name: slow\njobs:\n  count:\n    steps:\n      - name: count\n        run: |\n          printf '\\033[32mgreen start\\033[0m\\n'\n          i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo \"line $i\"; sleep 0.05; done\n  after:\n    needs: [count]\n    steps:\n      - run: echo never\n",
    )
    .await;
    let job = format!("{id}.1");
    run_where(&client, &id, "the step to start", |r| {
        r.jobs.first().is_some_and(|j| j.steps.first().is_some_and(|s| s.status == Status::Running as i32))
    })
    .await;
    Browser::run(|c| async move {
        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        c.goto(&format!("{}/runs/{id}/jobs/{job}", server.url())).await.expect("open log");
        wait_for_page(&c, "log").await;
        wait_for(&c, "#log .log-line").await;
        // ANSI colours are rendered as styles, not shown as escape codes
        // (checked first: the view is virtualised, and line 1 leaves the
        // DOM once the log has scrolled far enough).
        let coloured = wait_for_js(
            &c,
            "the green first line",
            "(() => { const l = [...document.querySelectorAll('#log .log-line .lt')].find(l => l.textContent.includes('green start')); \
             return l ? [l.textContent, l.querySelector('[style*=\"ansi-2\"]') !== null] : null; })()",
        )
        .await;
        assert_eq!(coloured[1], serde_json::json!(true), "no green span: {coloured}");
        assert!(!coloured[0].as_str().unwrap_or("").contains("[32m"), "ANSI escapes leaked: {coloured}");
        // Lines keep arriving while the step runs: the count of the last
        // line shown grows, with no reload.
        let last_line = "(() => { const ls = [...document.querySelectorAll('#log .log-line .lt')]; \
                         const m = ls.map(l => /^line (\\d+)$/.exec(l.textContent.trim())).filter(Boolean); \
                         return m.length ? Number(m[m.length - 1][1]) : 0; })()";
        let first = wait_for_js(&c, "a counted line", last_line).await.as_u64().unwrap_or(0);
        wait_for_js(&c, "later lines to arrive live", &format!("{last_line} > {} ", first + 20)).await;
        let run =
            client.runs().get(viaduct_tests::v1::GetRunRequest { id: id.clone() }).await.expect("get").into_inner();
        assert_eq!(run.jobs[0].status, Status::Running as i32, "lines arrived while the job was still running");
        screenshot(&c, "log-live").await;

        // Cancel the running job from its run page.
        c.goto(&format!("{}/runs/{id}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        wait_for(&c, &format!("[data-cancel-job=\"{job}\"]")).await.click().await.expect("click cancel");
        // Some UIs confirm: accept a confirm dialog if one is open.
        let _ = c.accept_alert().await;
        wait_for(&c, &format!("[data-job-id=\"{job}\"][data-status=\"cancelled\"]")).await;
        let run = finished(&client, &id).await;
        assert_eq!(run.jobs[0].status, Status::Cancelled as i32);
        assert_eq!(run.jobs[1].status, Status::Skipped as i32, "the dependant is skipped");
        screenshot(&c, "run-cancelled").await;
        assert_eq!(status_of(&c, &format!("[data-job-id=\"{id}.2\"]")).await.as_deref(), Some("skipped"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_or_bad_stored_token_leads_back_to_sign_in() {
    let server = Server::with_ui();
    let admin = server.client().await;
    let req = v1::CreateTokenRequest {
        name: "dashboard".into(),
        service: true,
        grants: vec![v1::Grant { role: v1::Role::Read as i32, repo: String::new() }],
        ..Default::default()
    };
    let created = admin.tokens().create(req).await.expect("create a token").into_inner();
    Browser::run(|c| async move {
        sign_in(&c, &server, &created.secret).await;
        wait_for_page(&c, "runs").await;
        // A read-only token sees no admin pages in the navigation.
        assert!(c.find(Locator::Css("a[href='/audit']")).await.is_err(), "a reader is offered the audit log");
        // The token is revoked elsewhere: the next page load leads to sign-in.
        let id = created.token.as_ref().expect("token").id.clone();
        admin.tokens().revoke(v1::RevokeTokenRequest { id }).await.expect("revoke");
        c.refresh().await.expect("reload");
        wait_for_page(&c, "sign-in").await;
        screenshot(&c, "sign-in-expired").await;
        // A forged cookie is no better.
        c.delete_all_cookies().await.expect("clear cookies");
        c.add_cookie(
            cookie::Cookie::build(("viaduct_session", "vds_forged"))
                .domain("127.0.0.1")
                .path("/")
                .same_site(cookie::SameSite::Strict)
                .into(),
        )
        .await
        .expect("set cookie");
        c.goto(&format!("{}/", server.url())).await.expect("open");
        wait_for_page(&c, "sign-in").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_with_live_data() {
    let server = Server::with_ui();
    let _runner = server.runner("linux,gpu", 3);
    let client = server.client().await;
    let token = server.admin_token();
    // A stored pipeline, a run with a plugin summary and an artifact, and a
    // failed one, so the pages have something to show.
    let out = viaduct_tests::output(server.cli().args(["pipelines", "create", "nightly"]).arg({
        let p = server.data_dir().join("nightly.yml");
        std::fs::write(&p, "name: nightly\njobs:\n  j:\n    steps:\n      - run: echo nightly\n").expect("write");
        p
    }));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ok = submit(
        &client,
        "name: release\njobs:\n  build:\n    artifacts: [out/app.txt]\n    steps:\n      - run: mkdir -p out && echo app > out/app.txt && echo 'fn main() {}' > main.rs && touch Cargo.toml\n      - uses: detect@1\n  test:\n    needs: [build]\n    matrix: { os: [linux, bsd] }\n    steps:\n      - run: echo ${{ matrix.os }}\n",
    )
    .await;
    let bad = submit(&client, "name: release\njobs:\n  j:\n    steps:\n      - run: echo failing; exit 3\n").await;
    let stuck = submit(&client, "jobs:\n  j:\n    runs_on: [nowhere]\n    steps:\n      - run: true\n").await;
    finished(&client, &ok).await;
    finished(&client, &bad).await;
    let runner_id =
        client.runners().list(v1::ListRunnersRequest {}).await.expect("list").into_inner().runners[0].id.clone();
    Browser::run(|c| async move {
        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        wait_for(&c, &format!("[data-run-id=\"{bad}\"][data-status=\"failure\"]")).await;
        screenshot(&c, "runs-mixed").await;

        c.goto(&format!("{}/runs/{ok}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        wait_for(&c, &format!("[data-job-id=\"{ok}.1\"][data-status=\"success\"]")).await;
        // The artifact has a signed download link that works.
        let link = wait_for_js(
            &c,
            "an artifact download link",
            "(() => { const a = [...document.querySelectorAll('a[href*=\"/artifacts/\"]')]; return a.length ? a[0].href : null; })()",
        )
        .await;
        let href = link.as_str().expect("href").to_string();
        let path = href.splitn(4, '/').nth(3).map(|p| format!("/{p}")).expect("a path");
        let (code, body) = http(server.addr(), "GET", &path, &[], b"");
        assert_eq!((code, String::from_utf8_lossy(&body).trim().to_string()), (200, "app".to_string()));
        screenshot(&c, "run-artifacts").await;

        // A job's steps, with the detect plugin's markdown summary rendered
        // (as HTML, not as markdown source).
        wait_for(&c, &format!("[data-job-id=\"{ok}.1\"] .job-duration")).await.click().await.expect("open the job");
        let summary = wait_for(&c, ".summary.markdown").await;
        let html = summary.html(true).await.expect("summary html");
        assert!(html.contains('<') && !html.contains("**"), "the summary is not rendered: {html}");
        assert!(summary.text().await.expect("text").to_lowercase().contains("rust"), "{html}");
        screenshot(&c, "run-job-summary").await;

        // A job no runner can take says why on its run page.
        c.goto(&format!("{}/runs/{stuck}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        let card = format!("[data-job-id=\"{stuck}.1\"]");
        wait_for(&c, &format!("{card}[data-status=\"queued\"]")).await;
        wait_for_js(
            &c,
            "why the job waits, in its card's title",
            &format!("document.querySelector('{card}').title.includes('lacks `nowhere`') || null"),
        )
        .await;
        wait_for(&c, &format!("{card} .job-duration")).await.click().await.expect("open the job");
        wait_for_js(
            &c,
            "why the job waits",
            "(document.querySelector('.job-waiting') || {}).innerText?.includes('lacks `nowhere`') || null",
        )
        .await;
        screenshot(&c, "run-waiting").await;

        for (path, page) in [
            ("/runners".to_string(), "runners"),
            ("/pipelines".to_string(), "pipelines"),
            ("/pipelines/nightly".to_string(), "pipeline"),
            ("/repos".to_string(), "repos"),
            ("/stats".to_string(), "stats"),
            ("/admin".to_string(), "admin"),
            (format!("/runs/{bad}/jobs/{bad}.1"), "log"),
        ] {
            c.goto(&format!("{}{path}", server.url())).await.expect("open page");
            wait_for_page(&c, page).await;
            if page == "runners" {
                wait_for_js(&c, "the runner's labels", "document.body.innerText.includes('gpu')").await;
                wait_for(&c, ".chip.toolchain").await;
                // Drained elsewhere (the API): the page shows it without a
                // reload (Runners.Watch), and again when it takes jobs.
                let row = format!("[data-runner-id=\"{runner_id}\"]");
                let drain = |drain: bool| {
                    let (mut runners, id) = (client.runners(), runner_id.clone());
                    async move { runners.drain(v1::DrainRunnerRequest { id, drain }).await.expect("drain") }
                };
                drain(true).await;
                let pill = |text: &str| {
                    format!("(document.querySelector('{row} td[data-label=State]') || {{}}).innerText === '{text}' || null")
                };
                wait_for_js(&c, "the runner shown draining, live", &pill("Draining")).await;
                drain(false).await;
                wait_for_js(&c, "the runner shown connected again, live", &pill("Connected")).await;
            }
            if page == "stats" {
                // From Stats.Get: the three runs submitted, per pipeline.
                wait_for_js(
                    &c,
                    "the runs of the range",
                    "(document.querySelector('#stats-totals [data-tile=runs] .tile-value') || {}).innerText === '3' || null",
                )
                .await;
                wait_for(&c, "#stats-pipelines [data-group=\"release\"]").await;
                wait_for(&c, "#stats-labels [data-group=\"nowhere\"]").await;
            }
            if page == "log" {
                wait_for_js(&c, "the failed step's output", "document.body.innerText.includes('failing')").await;
            }
            if page == "admin" {
                wait_for(&c, "#admin-trees [data-tree=\"runs\"]").await;
                let version = wait_for(&c, "[data-field=version]").await.text().await.expect("version");
                assert!(!version.trim().is_empty());
                wait_for(&c, "#retention-preview").await.click().await.expect("preview retention");
                let report = wait_for(&c, "#retention-report").await.text().await.expect("report");
                assert!(report.contains("would be removed"), "{report}");
            }
            screenshot(&c, page).await;
        }

        // Phone width.
        c.set_window_size(390, 844).await.expect("resize");
        c.goto(&format!("{}/runs/{ok}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        wait_for(&c, &format!("[data-job-id=\"{ok}.1\"]")).await;
        let overflow = c
            .execute("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
            .await
            .expect("js");
        screenshot(&c, "run-phone").await;
        assert!(overflow.as_i64().unwrap_or(0) <= 1, "the page scrolls sideways at phone width: {overflow}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_shows_and_the_page_reconnects_by_itself() {
    let mut server = Server::with_ui();
    let _runner = server.runner("linux", 1);
    let token = server.admin_token();
    let url = server.url();
    let client = server.client().await;
    let first = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    finished(&client, &first).await;
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let (shown_tx, shown_rx) = tokio::sync::oneshot::channel::<()>();
    let (back_tx, back_rx) = tokio::sync::oneshot::channel::<String>();
    let browser = tokio::spawn(async move {
        Browser::run(|c| async move {
            c.goto(&format!("{url}/sign-in")).await.expect("open");
            wait_for_page(&c, "sign-in").await;
            let input = wait_for(&c, "#token").await;
            input.send_keys(&token).await.expect("type");
            c.find(Locator::Css("#sign-in")).await.expect("button").click().await.expect("click");
            wait_for(&c, &format!("[data-run-id=\"{first}\"]")).await;
            let _ = lost_tx.send(());
            // The server is down: the page says so…
            wait_for_js(&c, "the connection banner", "document.querySelector('#connection-banner')").await;
            screenshot(&c, "reconnecting").await;
            let _ = shown_tx.send(());
            // …and once it is back, the banner goes and new runs appear live.
            let second = back_rx.await.expect("the second run");
            wait_for(&c, &format!("[data-run-id=\"{second}\"][data-status=\"success\"]")).await;
            wait_for_js(&c, "the banner to go", "document.querySelector('#connection-banner') === null").await;
        })
        .await;
    });
    lost_rx.await.expect("the page is live");
    server.kill9();
    within("the page to notice", shown_rx).await.expect("the banner was shown");
    server.restart();
    let client = server.client().await;
    let second = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    finished(&client, &second).await;
    let _ = back_tx.send(second);
    browser.await.expect("the browser part passed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_100000_lines_is_virtualised_searchable_and_linkable() {
    let server = Server::with_ui();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let token = server.admin_token();
    let id = submit(
        &client,
        "jobs:\n  big:\n    steps:\n      - name: setup\n        run: echo ready\n      - name: many\n        run: seq 1 100000 | sed 's/^/row /'\n",
    )
    .await;
    finished(&client, &id).await;
    let url = server.url();
    Browser::run(|c| async move {
        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        // A link to line 50,000 of step 2 scrolls to it and highlights it.
        c.goto(&format!("{url}/runs/{id}/jobs/{id}.1#L2-50000")).await.expect("open log");
        wait_for_page(&c, "log").await;
        let highlighted = wait_for(&c, ".log-line.highlighted").await;
        assert_eq!(highlighted.find(Locator::Css(".lt")).await.expect("text").text().await.expect("text"), "row 50000");
        // Only the rows near the viewport are in the DOM.
        let rows = c.execute("return document.querySelectorAll('#log .log-line').length;", vec![]).await.expect("js");
        let rows = rows.as_u64().unwrap_or(u64::MAX);
        assert!(rows > 10 && rows < 1000, "{rows} line rows in the DOM for 100,001 lines");
        screenshot(&c, "log-100k-anchor").await;

        // Search finds matches anywhere in the log, not just on screen.
        let search = wait_for(&c, "[data-search]").await;
        search.send_keys("row 9999").await.expect("type");
        // "row 9999" and "row 99990".."row 99999": 11 matches.
        wait_for_js(&c, "11 matches", "document.querySelector('.match-count').textContent.includes('11')").await;
        screenshot(&c, "log-100k-search").await;

        // Step sections collapse: the 100,000 lines of step 2 fold into its
        // header, and the scrollable height shrinks with them.
        c.execute("document.querySelector('#log').scrollTop = 0;", vec![]).await.expect("js");
        let header = wait_for(&c, &format!(".log-step[data-step-id=\"{id}.1.2\"]")).await;
        let height = "document.querySelector('#log').scrollHeight";
        let before = c.execute(&format!("return {height};"), vec![]).await.expect("js").as_f64().unwrap_or(0.0);
        header.click().await.expect("collapse");
        wait_for_js(&c, "the section to fold", &format!("{height} < {} / 10", before)).await;
        screenshot(&c, "log-100k-collapsed").await;
    })
    .await;
}

/// A stranger's pull request waits for approval: the run page says why
/// and what it will not get, and *Approve run* starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_pull_request_is_approved_from_its_run_page() {
    use viaduct_tests::forge::{PullRequest, create_mirror, git, runs_of, upstream};
    let server = Server::with_ui();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let token = server.admin_token();
    let pipeline = "on:\n  pull_request: {}\njobs:\n  test:\n    steps:\n      - run: echo contributed\n";
    let (_u, bare, wt) = upstream(pipeline);
    create_mirror(&client, "app", &format!("file://{}", bare.display()), "k").await;
    git(wt.path(), &["checkout", "-q", "-b", "idea"]);
    git(wt.path(), &["commit", "-q", "--allow-empty", "-m", "an idea"]);
    let head = git(wt.path(), &["rev-parse", "HEAD"]);
    git(wt.path(), &["push", "-q", bare.to_str().unwrap(), "idea:refs/pull/4/head"]);
    let pr = PullRequest {
        number: 4,
        head_sha: head,
        head_ref: "idea".into(),
        head_repo: "stranger/app".into(),
        base_ref: "main".into(),
        base_repo: "org/app".into(),
        author: "stranger".into(),
        association: "NONE".into(),
    };
    let (code, reply) = pr.deliver(&server, "app", "k", "d-1");
    assert_eq!(code, 200, "{reply}");
    let id = runs_of(&client, "app").await[0].id.clone();
    Browser::run(|c| async move {
        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        c.goto(&format!("{}/runs/{id}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        let notice = wait_for(&c, ".trust-notice").await.text().await.expect("notice text");
        assert!(notice.contains("Waiting for approval: pull request #4 by `stranger`"), "{notice}");
        assert!(notice.contains("no secrets"), "{notice}");
        screenshot(&c, "run-waiting-for-approval").await;
        wait_for(&c, "#approve-run").await.click().await.expect("approve");
        wait_for(&c, &format!("[data-job-id=\"{id}.1\"][data-status=\"success\"]")).await;
        let run = finished(&client, &id).await;
        assert_eq!(run.status, Status::Success as i32);
        assert_eq!(run.approval.map(|a| a.pending), Some(false));
        viaduct_tests::eventually("the button to go", || async {
            c.find(Locator::Css("#approve-run")).await.is_err().then_some(())
        })
        .await;
    })
    .await;
}

/// A failed job with snapshots: its run page offers *Resume from failed
/// steps*, and its panel a *Debug shell* whose terminal runs what is typed
/// in the restored workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_debugged_in_a_terminal_and_resumed_from_its_run_page() {
    let server = Server::with_ui();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let token = server.admin_token();
    let yaml =
        "snapshots: true\njobs:\n  j:\n    steps:\n      - run: echo kept-by-step-1 > kept.txt\n      - run: exit 1\n";
    let id = submit(&client, yaml).await;
    finished(&client, &id).await;
    let run_id = id.clone();
    Browser::run(|c| async move {
        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        c.goto(&format!("{}/runs/{run_id}", server.url())).await.expect("open run");
        wait_for_page(&c, "run").await;
        wait_for(&c, &format!("[data-job-id=\"{run_id}.1\"] .job-duration")).await.click().await.expect("open the job");
        wait_for(&c, "[data-debug-shell-open]").await.click().await.expect("open a debug shell");
        wait_for_js(
            &c,
            "the shell to start",
            "(document.querySelector('[data-debug-status]') || {}).innerText?.includes('after step 1') || null",
        )
        .await;
        let terminal = wait_for(&c, ".terminal").await;
        terminal.click().await.expect("focus the terminal");
        terminal.send_keys("cat kept.txt\u{E007}").await.expect("type");
        wait_for_js(
            &c,
            "the command's output",
            "(() => { const t = document.querySelector('.terminal').innerText; \
             return t.includes('kept-by-step-1') || null; })()",
        )
        .await;
        screenshot(&c, "run-debug-shell").await;
        wait_for(&c, "[data-debug-close]").await.click().await.expect("close the shell");
        wait_for(&c, "#resume-run").await.click().await.expect("resume");
        let run = run_where(&client, &run_id, "the second attempt to end", |r| {
            r.jobs[0].attempt == 2 && r.status == Status::Failure as i32
        })
        .await;
        assert_eq!(run.jobs[0].steps[0].restored_from, 1, "{run:#?}");
    })
    .await;
}

/// A deployment to a protected environment waits for approval: the run
/// page says where its job deploys; the repository's environments page
/// shows the environment's rules, variables and the waiting deployment; a
/// token without the approval role is refused inline, and *Approve* by an
/// admin lets it deploy — the page follows it to success, into the
/// environment's history, and shows the service it registered, probed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_deployment_is_approved_from_the_environments_page() {
    use viaduct_tests::forge::{create_hosted, git, runs_of, work_tree};
    let server = Server::with_ui();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let token = server.admin_token();
    let repo = create_hosted(&client, "shop").await;
    let rules = v1::EnvironmentRules {
        approval_role: v1::Role::Maintain as i32,
        probe_hosts: vec!["127.0.0.1".into()],
        ..Default::default()
    };
    client
        .environments()
        .put(v1::PutEnvironmentRequest {
            repo: "shop".into(),
            name: "production".into(),
            rules: Some(rules),
            variables: [("REGION".to_string(), "eu-west-1".to_string())].into(),
            url: "https://shop.example.com".into(),
            description: "What customers use".into(),
        })
        .await
        .expect("put the environment");
    // Someone who may start runs of the repository, but not approve.
    let req = v1::CreateTokenRequest {
        name: "intern".into(),
        service: true,
        grants: vec![v1::Grant { role: v1::Role::Trigger as i32, repo: "shop".into() }],
        ..Default::default()
    };
    let intern = client.tokens().create(req).await.expect("create a token").into_inner().secret;
    let pipeline = format!(
        "on:\n  push: {{ branches: [main] }}\njobs:\n  ship:\n    environment:\n      name: production\n      \
         services:\n        - name: web\n          endpoints: [\"https://shop.example.com\"]\n          probe: {{ \
         target: \"tcp://{}\", interval: 1s }}\n    steps:\n      - run: sleep 2; echo \"shipping to $REGION\"\n",
        server.addr()
    );
    let wt = work_tree(&pipeline);
    git(wt.path(), &["push", "-q", &repo.path, "main"]);
    let id = runs_of(&client, "shop").await[0].id.clone();
    let job = format!("{id}.1");
    let run = run_where(&client, &id, "the deployment to wait for approval", |r| {
        r.jobs.first().is_some_and(|j| j.deployment != 0 && j.status == Status::Pending as i32)
    })
    .await;
    let deployment = run.jobs[0].deployment;
    let url = server.url();
    Browser::run(|c| async move {
        let card = "[data-environment=\"production\"]";
        let open = format!("{card} .open-deployments [data-deployment-id=\"{deployment}\"]");

        // Without the approval role: refused, and the page says why.
        sign_in(&c, &server, &intern).await;
        wait_for_page(&c, "runs").await;
        c.goto(&format!("{url}/repos/shop/environments")).await.expect("open environments");
        wait_for_page(&c, "environments").await;
        wait_for(&c, &format!("{open}[data-state=\"waiting\"]")).await;
        wait_for(&c, &format!("{open} [data-approve-deployment=\"{deployment}\"]"))
            .await
            .click()
            .await
            .expect("approve");
        let refusal = wait_for(&c, &format!("{open} .review .form-error")).await.text().await.expect("refusal");
        assert!(refusal.contains("permission denied"), "{refusal}");
        screenshot(&c, "environments-refused").await;
        wait_for(&c, "#sign-out").await.click().await.expect("sign out");
        wait_for_page(&c, "sign-in").await;

        sign_in(&c, &server, &token).await;
        wait_for_page(&c, "runs").await;
        // The run page says where the job deploys, and offers the review too.
        c.goto(&format!("{url}/runs/{id}")).await.expect("open run");
        wait_for_page(&c, "run").await;
        wait_for(&c, &format!("[data-job-id=\"{job}\"] .job-duration")).await.click().await.expect("open the job");
        let note_css = format!("[data-job-deployment=\"{deployment}\"]");
        let note = wait_for(&c, &note_css).await.text().await.expect("note");
        assert!(note.contains(&format!("Deploys to production (deployment {deployment})")), "{note}");
        wait_for(&c, &format!("{note_css} [data-approve-deployment=\"{job}\"]")).await;
        screenshot(&c, "run-deployment-waiting").await;

        // The environments page, from the repository's page.
        c.goto(&format!("{url}/repos/shop")).await.expect("open the repository");
        wait_for_page(&c, "repo").await;
        wait_for(&c, "#repo-environments").await.click().await.expect("open environments");
        wait_for_page(&c, "environments").await;
        let rules = wait_for(&c, &format!("{card} .env-rules")).await.text().await.expect("rules");
        assert!(rules.contains("approval by someone with the maintain role"), "{rules}");
        let vars = wait_for(&c, &format!("{card} .env-variables")).await.text().await.expect("variables");
        assert!(vars.contains("REGION") && vars.contains("eu-west-1"), "{vars}");
        let waiting = wait_for(&c, &format!("{open}[data-state=\"waiting\"]")).await.text().await.expect("text");
        assert!(waiting.contains("waiting for approval"), "{waiting}");
        screenshot(&c, "environments-waiting").await;
        let url_before = c.current_url().await.expect("url");
        wait_for(&c, &format!("{open} [data-approve-deployment=\"{deployment}\"]"))
            .await
            .click()
            .await
            .expect("approve");
        // Read again at once, then every few seconds: deploying, then the
        // environment's current deployment and a success in its history.
        wait_for_js(
            &c,
            "the deployment to deploy",
            &format!(
                "document.querySelector('{card} [data-deployment-id=\"{deployment}\"][data-state=\"in_progress\"], \
                 {card} [data-current-deployment=\"{deployment}\"]') || null"
            ),
        )
        .await;
        let current = format!("{card} [data-current-deployment=\"{deployment}\"]");
        wait_for(&c, &current).await;
        wait_for(
            &c,
            &format!("{card} .deployment-history [data-deployment-id=\"{deployment}\"][data-state=\"success\"]"),
        )
        .await;
        assert_eq!(c.current_url().await.expect("url"), url_before, "the page was not reloaded or left");
        screenshot(&c, "environments-deployed").await;
        let run = finished(&client, &id).await;
        assert_eq!(run.status, Status::Success as i32);
        let d = client.deployments().get(v1::GetDeploymentRequest { id: deployment }).await.expect("get").into_inner();
        assert_eq!(d.state, v1::DeploymentState::Success as i32);
        assert!(!d.approved_by.is_empty(), "{d:?}");
        let shown = wait_for(&c, &current).await.text().await.expect("current");
        assert!(shown.contains(&d.approved_by), "{shown}");

        // The service the deployment registered, probed: up, with history.
        let service = "[data-service=\"production/web\"]";
        wait_for(&c, &format!("{service}[data-health=\"up\"]")).await;
        wait_for(&c, &format!("{service} [data-service-history]")).await.click().await.expect("show probes");
        wait_for(&c, "[data-probe-history=\"production/web\"] tr[data-health=\"up\"]").await;
        screenshot(&c, "environments-services").await;
    })
    .await;
}
