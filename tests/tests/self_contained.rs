//! One self-contained server: started with nothing but its data directory
//! (and a loopback port), a `viaduct-server` built to embed the web UI and
//! the first-party plugins (`VIADUCT_EMBED_UI`, `VIADUCT_EMBED_PLUGINS`, set
//! by `cargo xtask test` and `cargo xtask dist`) serves the UI to a real
//! headless Chromium and runs `uses: detect@1` on a real runner.
//!
//! One test in this file: it drops the variables that would give the server
//! `--ui-dir` or `--plugins-dir` from this process's environment (the
//! servers it starts inherit it), before any thread of its own runs.

use fantoccini::Locator;
use viaduct_tests::{
    Server,
    browser::{Browser, screenshot, wait_for, wait_for_js, wait_for_page},
    finished, http, missing_fixture, submit, word,
};

#[test]
fn a_server_started_with_only_its_data_dir_serves_the_ui_and_runs_first_party_plugins() {
    // `cargo xtask test` names the UI bundle in VIADUCT_UI_DIR for the other
    // tests, and the server reads it as --ui-dir: not this one.
    // SAFETY: no other thread of this process reads or writes the
    // environment now (the test harness's main thread only waits for this
    // test, the only one here; the runtime starts below).
    unsafe {
        std::env::remove_var("VIADUCT_UI_DIR");
        std::env::remove_var("VIADUCT_PLUGINS_DIR");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(self_contained());
}

async fn self_contained() {
    let server = Server::start();
    // What it serves, it says at start (before it listens).
    let log = server.log();
    if log.contains("no web UI:") || log.contains("no first-party plugins:") {
        missing_fixture(
            "the viaduct-server under test embeds no web UI or no plugins: build it after `cargo xtask ui` and \
             `cargo xtask plugins` with VIADUCT_EMBED_UI=target/ui VIADUCT_EMBED_PLUGINS=target/plugins \
             (`cargo xtask test` does)",
        );
        return;
    }
    for what in ["web UI served at /", "first-party plugins published"] {
        let line = log.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no `{what}` in\n{log}"));
        assert!(line.contains("embedded in this build"), "{line}");
    }

    // The page, with the same policy as from a directory.
    let (code, html) = http(server.addr(), "GET", "/runs", &[("Accept", "text/html")], b"");
    assert_eq!(code, 200);
    let html = String::from_utf8_lossy(&html).into_owned();
    let wasm = html
        .split(['"', '\''])
        .find(|s| s.starts_with("/assets/") && s.ends_with(".wasm"))
        .unwrap_or_else(|| panic!("index.html links no .wasm: {html}"))
        .to_string();
    let head = |path: &str, headers: &[(&str, &str)]| {
        let (code, head, _) = viaduct_tests::http_with_head(server.addr(), "GET", path, headers, b"");
        (code, head.to_lowercase())
    };
    let (_, page) = head("/", &[("Accept", "text/html")]);
    let csp = page.lines().find_map(|l| l.strip_prefix("content-security-policy: ")).expect("a CSP header");
    assert!(csp.contains("default-src 'none'") && csp.contains("'sha256-"), "{csp}");
    let (code, asset) = head(&wasm, &[("Accept-Encoding", "br, gzip")]);
    assert_eq!(code, 200, "{wasm}: {asset}");
    assert!(asset.contains("content-type: application/wasm") && asset.contains("immutable"), "{asset}");
    assert!(asset.contains("content-encoding: br"), "{asset}");
    // API clients still get 404 for what is not there.
    assert_eq!(http(server.addr(), "GET", "/no-such-file.txt", &[], b"").0, 404);

    // A first-party plugin it published itself, on a real runner.
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "name: detected\njobs:\n  j:\n    steps:\n      - run: printf '[package]\\nname = \"x\"\\n' > Cargo.toml\n      \
         - uses: detect@1\n        id: d\n      - run: echo rust\n        if: ${{ steps.d.outputs.rust == 'true' }}\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let steps = &run.jobs[0].steps;
    assert_eq!(steps[1].outputs.get("rust").map(String::as_str), Some("true"), "{run:#?}");
    assert_eq!(word(steps[2].status), "success", "{run:#?}");

    // The UI in a browser: the app runs (WebAssembly under the policy),
    // signs in over its own routes and shows the run over gRPC-web.
    let token = server.admin_token();
    Browser::run(|c| async move {
        c.goto(&format!("{}/", server.url())).await.expect("open");
        wait_for_page(&c, "sign-in").await;
        let input = wait_for(&c, "#token").await;
        input.send_keys(&token).await.expect("type the token");
        c.find(Locator::Css("#sign-in")).await.expect("sign-in button").click().await.expect("sign in");
        wait_for_page(&c, "runs").await;
        let row = format!("[data-run-id=\"{id}\"][data-status=\"success\"]");
        wait_for_js(&c, "the detect run, green", &format!("document.querySelector('{}')", row.replace('"', "\\\"")))
            .await;
        screenshot(&c, "self-contained-runs").await;
    })
    .await;
}
