//! An HTTP endpoint that takes webhooks (notifications, Slack and Matrix
//! incoming webhooks) and records them, and can refuse on demand.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};

/// One request received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Its path.
    pub path: String,
    /// Its headers (names in lower case).
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    /// Answers to give before 200, in order.
    refusals: VecDeque<u16>,
    /// While set, every request gets 503 (and is not recorded).
    down: bool,
}

/// A running sink; stops when dropped.
pub struct WebhookSink {
    shared: Arc<Mutex<Shared>>,
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn take(State(s): State<Arc<Mutex<Shared>>>, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut s = s.lock().unwrap();
    if s.down {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if let Some(code) = s.refusals.pop_front() {
        return StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let headers =
        headers.iter().map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or_default().to_string())).collect();
    s.received.push(Received { path: uri.path().to_string(), headers, body: body.to_vec() });
    StatusCode::OK
}

impl WebhookSink {
    /// Starts one on a loopback port, on a thread and runtime of its own
    /// (so it outlives no test and needs none of the test's).
    pub fn start() -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let app = axum::Router::new().fallback(take).with_state(Arc::clone(&shared));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self { shared, url, stop: Some(stop), thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`; any path is taken.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What was received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    /// What was received on `path`, in order.
    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.path == path).collect()
    }

    /// The next requests get these statuses (then 200 again).
    pub fn refuse_next(&self, codes: &[u16]) {
        self.shared.lock().unwrap().refusals.extend(codes);
    }

    /// While down, every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().unwrap().down = down;
    }

    /// Waits (polling, at most a minute) until `probe` holds for what was
    /// received on `path`.
    pub async fn wait_for<T>(&self, what: &str, path: &str, mut probe: impl FnMut(&[Received]) -> Option<T>) -> T {
        let waited = tokio::time::timeout(
            crate::WAIT - Duration::from_secs(1),
            crate::eventually(what, || {
                let found = probe(&self.received_on(path));
                async move { found }
            }),
        )
        .await;
        waited.unwrap_or_else(|_| panic!("timed out waiting for {what}; received: {:#?}", self.received()))
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
