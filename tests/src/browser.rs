//! A real headless Chromium (Debian's `chromium`), driven through Debian's
//! `chromedriver` with fantoccini, for the web UI's end-to-end tests.
//!
//! [`Browser::run`] closes the browser even when the test body panics, and
//! dropping a [`Browser`] kills chromedriver and every Chromium process of
//! its private profile, so a failed test never leaves a browser behind.

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub use fantoccini::Client as Driver;
use fantoccini::{ClientBuilder, Locator, elements::Element};
use futures_util::FutureExt;
use tempfile::TempDir;

use crate::{WAIT, bin_dir};

/// The web UI bundle to serve (`cargo xtask ui` builds it): `VIADUCT_UI_DIR`,
/// else `target/ui`.
pub fn ui_dir() -> PathBuf {
    let dir = std::env::var_os("VIADUCT_UI_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().parent().map(|t| t.join("ui")).unwrap_or_default());
    assert!(dir.join("index.html").exists(), "{} has no UI bundle: run `cargo xtask ui` first", dir.display());
    dir
}

/// Where screenshots of the test run go: `target/ui-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = bin_dir().parent().map(|t| t.join("ui-screenshots")).unwrap_or_else(|| PathBuf::from("ui-screenshots"));
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// How Chromium runs here: headless, as root (no sandbox), and without the
/// background connections a closed network refuses. `cargo xtask setup`
/// checks Chromium with the same flags.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// chromedriver and its headless Chromium with a fresh profile.
pub struct Browser {
    driver: Child,
    profile: TempDir,
    /// The WebDriver session.
    pub client: Driver,
}

impl Browser {
    /// Starts chromedriver and a Chromium session (1280×900).
    pub async fn start() -> Self {
        let chromedriver = std::env::var_os("VIADUCT_CHROMEDRIVER").unwrap_or_else(|| "/usr/bin/chromedriver".into());
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {} ({e}): `cargo xtask setup` installs it", Path::new(&chromedriver).display())
            });
        let profile = tempfile::tempdir().expect("profile dir");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
        args.push("--window-size=1280,900".into());
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let args = serde_json::json!(args);
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        let mut browser = Self {
            driver,
            profile,
            client: loop {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                    Ok(c) => break c,
                    // chromedriver is not listening yet.
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("cannot start a Chromium session through chromedriver: {e}"),
                }
            },
        };
        if let Ok(Some(status)) = browser.driver.try_wait() {
            panic!("chromedriver exited with {status}");
        }
        browser
    }

    /// Runs `body` with a browser, then closes it — also when `body`
    /// panics, whose panic is then resumed.
    pub async fn run<F, Fut>(body: F)
    where
        F: FnOnce(Driver) -> Fut,
        Fut: Future<Output = ()>,
    {
        let browser = Self::start().await;
        let result = std::panic::AssertUnwindSafe(body(browser.client.clone())).catch_unwind().await;
        let _ = browser.client.clone().close().await;
        drop(browser);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Chromium processes outlive chromedriver when a session was not
        // closed: kill those of this profile only.
        let _ = Command::new("pkill").arg("-9").arg("-f").arg(self.profile.path()).status();
    }
}

/// Waits up to [`WAIT`] for an element matching `css`.
pub async fn wait_for(c: &Driver, css: &str) -> Element {
    c.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no element `{css}`: {e}"))
}

/// Waits up to [`WAIT`] for the page whose root has `data-page="name"`.
pub async fn wait_for_page(c: &Driver, name: &str) -> Element {
    wait_for(c, &format!("[data-page=\"{name}\"]")).await
}

/// Waits up to [`WAIT`] until `script` (a JavaScript expression) is truthy.
pub async fn wait_for_js(c: &Driver, what: &str, script: &str) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = c.execute(&format!("return ({script});"), vec![]).await.unwrap_or(serde_json::Value::Null);
        let truthy = !matches!(&v, serde_json::Value::Null | serde_json::Value::Bool(false))
            && v != serde_json::json!(0)
            && v != serde_json::json!("");
        if truthy {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what} (`{script}`)");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Saves a PNG of the page as `target/ui-screenshots/<name>.png`.
pub async fn screenshot(c: &Driver, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(screenshot_dir().join(format!("{name}.png")), png).expect("writing the screenshot");
}
