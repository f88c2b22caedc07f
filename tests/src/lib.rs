//! Harness for end-to-end tests: the real `viaduct-server`,
//! `viaduct-runner` and `viaduct` binaries, started as processes on loopback
//! with temporary directories, and clients to talk to them.
//!
//! The binaries are built once per test run (by `cargo xtask test`, or any
//! `cargo build --bins`) and found next to the test executable, or in
//! `VIADUCT_BIN_DIR`. Waiting is always on a condition with a deadline
//! (usually a `Runs.Watch` event), never a fixed sleep.

use std::{
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tempfile::TempDir;

pub mod browser;
pub mod forge;
pub mod forge_api;
pub mod oidc;
pub mod otlp;
pub mod pki;
pub mod smtp;
pub mod sshd;
pub mod webhook_sink;
pub use viaduct_sdk::{
    Client,
    proto::{
        StatusWord,
        v1::{self, Status},
    },
};

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(60);

static BIN_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Uses the binaries in `dir` (e.g. a release build, for benchmarks).
pub fn set_bin_dir(dir: PathBuf) {
    let _ = BIN_DIR.set(dir);
}

static PRODUCTION_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Servers and runners started from now on log what they would in
/// production (`info`), not the debug lines kept for a failing test's
/// report: for benchmarks, which measure what users run.
pub fn production_logs() {
    PRODUCTION_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The `VIADUCT_LOG` filter of a server or runner, whose own crate is
/// `krate`: see [`production_logs`].
fn log_filter(krate: &str) -> String {
    if PRODUCTION_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
        "info".into()
    } else {
        format!("info,{krate}=debug")
    }
}

/// The directory holding the binaries under test: [`set_bin_dir`], else
/// `VIADUCT_BIN_DIR`, else the directory of the running executable's
/// profile (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = BIN_DIR.get() {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("VIADUCT_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-exe> → target/<profile>
    let exe = std::env::current_exe().expect("the test executable has a path");
    exe.parent().and_then(Path::parent).expect("tests run from target/<profile>/deps").to_path_buf()
}

/// Path of binary `name`, which must have been built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: build the binaries first (`cargo xtask test` does)", p.display());
    p
}

/// The first-party plugins (`cargo xtask plugins` builds them):
/// `VIADUCT_PLUGINS_DIR`, else `target/plugins`.
pub fn plugins_dir() -> PathBuf {
    let dir = std::env::var_os("VIADUCT_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().parent().map(|t| t.join("plugins")).unwrap_or_default());
    assert!(dir.join("cache.wasm").exists(), "{} has no plugins: run `cargo xtask plugins` first", dir.display());
    dir
}

/// A test-only plugin's component and manifest (`target/plugins-test`).
pub fn test_plugin(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("VIADUCT_TEST_PLUGINS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin_dir().parent().map(|t| t.join("plugins-test")).unwrap_or_default());
    let wasm = dir.join(format!("{name}.wasm"));
    assert!(wasm.exists(), "{} is missing: run `cargo xtask plugins` first", wasm.display());
    (wasm, dir.join(format!("{name}.toml")))
}

/// Waits for `cond` to return `Some`, polling a cheap local condition
/// (a file appearing, a process exiting) every 10 ms, up to `WAIT`.
pub fn wait_until<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `fut` with the standard deadline.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Asks `probe` every 20 ms until it answers `Some`, up to the standard
/// deadline: for state the API has no event for (a log's growth, a list).
pub async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    within(what, async {
        loop {
            if let Some(v) = probe().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A running `viaduct-server` with its own data directory.
pub struct Server {
    child: Option<Child>,
    dir: TempDir,
    addr: String,
    args: Vec<String>,
    env: Vec<(String, PathBuf)>,
    /// With TLS: the CA clients trust (PEM file).
    tls_ca: Option<PathBuf>,
}

impl Server {
    /// Starts a server on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server that publishes the first-party plugins at start.
    pub fn with_plugins() -> Self {
        let dir = plugins_dir();
        Self::start_with(&["--plugins-dir", &dir.display().to_string()])
    }

    /// Starts a server that serves the web UI bundle ([`browser::ui_dir`])
    /// and publishes the first-party plugins.
    pub fn with_ui() -> Self {
        let ui = browser::ui_dir();
        let plugins = plugins_dir();
        Self::start_with(&["--ui-dir", &ui.display().to_string(), "--plugins-dir", &plugins.display().to_string()])
    }

    /// Publishes a test-only plugin through the CLI.
    pub fn publish_test_plugin(&self, name: &str) {
        let (wasm, manifest) = test_plugin(name);
        let out = output(self.cli().args(["plugins", "publish"]).arg(&wasm).arg("--manifest").arg(&manifest));
        assert!(out.status.success(), "publishing {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts a server with extra command-line arguments.
    pub fn start_with(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// Starts a server speaking TLS with a certificate for `localhost` and
    /// 127.0.0.1 from a fresh CA; its clients, CLI and runners trust it.
    pub fn start_tls(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = pki::Ca::new("Viaduct test CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem).expect("write the CA");
        let (cert, key) = ca.server(&["localhost", "127.0.0.1"], pki::Validity::Current).write(dir.path(), "server");
        let mut all: Vec<String> = vec!["--tls-cert".into(), path(&cert), "--tls-key".into(), path(&key)];
        all.extend(args.iter().map(ToString::to_string));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        Self::start_tls_files(dir, &ca_file, &all)
    }

    /// Starts a TLS server with `args` (which name its certificate files),
    /// trusting `ca_file`; `dir` holds them and is kept with the server.
    pub fn start_tls_files(keep: TempDir, ca_file: &Path, args: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            dir: keep,
            addr: String::new(),
            args: args.iter().map(ToString::to_string).collect(),
            env: Vec::new(),
            tls_ca: Some(ca_file.to_path_buf()),
        };
        s.spawn("127.0.0.1:0");
        s
    }

    /// The CA file a TLS server's clients trust.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// Starts a server with extra command-line arguments and environment
    /// variables (kept across restarts), e.g. its own `HOME`.
    pub fn start_env(args: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), args, env)
    }

    /// Starts a server whose data directory is `dir/data` (e.g. a
    /// filesystem the test mounted there).
    pub fn start_in(dir: TempDir, args: &[&str], env: &[(&str, &Path)]) -> Self {
        let mut s = Self {
            child: None,
            dir,
            addr: String::new(),
            args: args.iter().map(ToString::to_string).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_path_buf())).collect(),
            tls_ca: None,
        };
        s.spawn("127.0.0.1:0");
        s
    }

    fn spawn(&mut self, listen: &str) {
        let data = self.data_dir();
        std::fs::create_dir_all(&data).expect("data dir");
        let _ = std::fs::remove_file(data.join("address"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .expect("log");
        let child = Command::new(bin("viaduct-server"))
            .args(["--listen", listen, "--data-dir"])
            .arg(&data)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("VIADUCT_LOG", log_filter("viaduct_server"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start viaduct-server");
        self.child = Some(child);
        let addr_file = data.join("address");
        self.addr = wait_until("the server to listen", || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("viaduct-server exited with {status}: see {}", self.log_path().display());
            }
            std::fs::read_to_string(&addr_file).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
        });
    }

    /// The data directory (database, token files).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `host:port`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://host:port`, or `https://localhost:port` with TLS.
    pub fn url(&self) -> String {
        match &self.tls_ca {
            Some(_) => format!("https://localhost:{}", self.addr.rsplit(':').next().unwrap_or_default()),
            None => format!("http://{}", self.addr),
        }
    }

    /// How clients reach it (trusting its CA when it speaks TLS).
    pub fn transport(&self) -> viaduct_sdk::Transport {
        viaduct_sdk::Transport::from_files(self.tls_ca.as_deref(), false, None, None).expect("the CA file")
    }

    /// The admin token written on first start.
    pub fn admin_token(&self) -> String {
        read_token(&self.data_dir().join("admin-token"))
    }

    /// The value of the metric sample `sample` (`name{labels}` as
    /// `/metrics` prints it), 0 when absent (a plain-HTTP server).
    pub fn metric(&self, sample: &str) -> u64 {
        self.metrics(&[sample])[0]
    }

    /// The values of `samples` (see [`Server::metric`]) from one scrape:
    /// consistent with each other.
    pub fn metrics(&self, samples: &[&str]) -> Vec<u64> {
        let auth = format!("Bearer {}", self.admin_token());
        let (code, body) = http(self.addr(), "GET", "/metrics", &[("authorization", &auth)], b"");
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        let value = |sample: &str| {
            text.lines().find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
        };
        samples.iter().map(|s| value(s)).collect()
    }

    /// The runner registration token written on first start.
    pub fn runner_token(&self) -> String {
        read_token(&self.data_dir().join("runner-token"))
    }

    /// A client with the admin token.
    pub async fn client(&self) -> Client {
        Client::connect_with(&self.url(), Some(self.admin_token()), &self.transport())
            .await
            .expect("connect to the server")
    }

    /// A `viaduct` CLI command aimed at this server with the admin token.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(bin("viaduct"));
        c.env("VIADUCT_SERVER", self.url()).env("VIADUCT_TOKEN", self.admin_token()).env_remove("VIADUCT_TOKEN_FILE");
        match &self.tls_ca {
            Some(ca) => c.env("VIADUCT_CA_CERT", ca),
            None => c.env_remove("VIADUCT_CA_CERT"),
        };
        c
    }

    /// The server process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no shutdown, no flush).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM and waits (up to [`WAIT`]) for it to
    /// exit; returns how long that took and whether it exited cleanly.
    pub fn terminate(&mut self) -> (Duration, bool) {
        let mut c = self.child.take().expect("the server is running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
        let t0 = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal the server");
        let status = wait_until("the server to exit after SIGTERM", || c.try_wait().ok().flatten());
        (t0.elapsed(), status.success())
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("the server is running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid")), signal)
            .expect("signal the server");
    }

    /// Whether the server process still runs; its exit status once not.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the server again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.clone();
        self.spawn(&listen);
    }

    /// Starts a runner registered with this server.
    pub fn runner(&self, labels: &str, slots: u32) -> Runner {
        Runner::start(self, labels, slots, &[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- server log ({}) ----\n{}", self.log_path().display(), tail(&self.log(), 80));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn read_token(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).trim().to_string()
}

/// A running `viaduct-runner`.
pub struct Runner {
    child: Option<Child>,
    dir: TempDir,
    args: Vec<String>,
    /// Its process's environment: the test's, these set over it.
    env: Vec<(String, String)>,
}

impl Runner {
    /// Starts a runner for `server` with `labels` (comma-separated), `slots`,
    /// and extra arguments (registering with the server's registration
    /// token unless they name another `--token-file`).
    pub fn start(server: &Server, labels: &str, slots: u32, extra: &[&str]) -> Self {
        Self::start_env(server, labels, slots, extra, &[])
    }

    /// [`Runner::start`] with variables set in the runner process's own
    /// environment (what `--inherit-env` reads).
    pub fn start_env(server: &Server, labels: &str, slots: u32, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), server, labels, slots, extra, env)
    }

    /// [`Runner::start_env`] in `dir`: its work dir is `dir/work` (a test
    /// may mount a filesystem there first).
    pub fn start_in(
        dir: TempDir,
        server: &Server,
        labels: &str,
        slots: u32,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args: Vec<String> = vec!["--server".into(), server.url()];
        if !extra.contains(&"--token-file") {
            args.extend(["--token-file".into(), server.data_dir().join("runner-token").display().to_string()]);
        }
        args.extend(Self::shape(labels, slots));
        if let Some(ca) = &server.tls_ca {
            args.extend(["--ca-cert".to_string(), path(ca)]);
        }
        args.extend(extra.iter().map(ToString::to_string));
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut r = Self { child: None, dir, args, env };
        r.spawn();
        r
    }

    /// Labels, slots and a short kill grace: what every test runner is given.
    fn shape(labels: &str, slots: u32) -> [String; 6] {
        ["--labels".into(), labels.into(), "--slots".into(), slots.to_string(), "--kill-grace".into(), "1s".into()]
    }

    /// Starts a runner for the servers `urls` (comma-separated: replicas),
    /// registering with the token in `token_file`.
    pub fn start_replicas(urls: &str, token_file: &Path, labels: &str, slots: u32) -> Self {
        Self::start_replicas_with(urls, token_file, labels, slots, &[])
    }

    /// [`Runner::start_replicas`] with more arguments (`--ca-cert`…).
    pub fn start_replicas_with(urls: &str, token_file: &Path, labels: &str, slots: u32, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = vec!["--server".into(), urls.to_string(), "--token-file".into(), path(token_file)];
        args.extend(Self::shape(labels, slots));
        args.extend(extra.iter().map(ToString::to_string));
        args.push("--no-containers".into());
        let mut r = Self { child: None, dir, args, env: Vec::new() };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log");
        let child = Command::new(bin("viaduct-runner"))
            .args(&self.args)
            .arg("--work-dir")
            .arg(self.work_dir())
            .env("VIADUCT_LOG", log_filter("viaduct_runner"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start viaduct-runner");
        self.child = Some(child);
    }

    /// Changes command-line options for its next start (`--labels`,
    /// `--slots`…): `pairs` are option and value, replacing earlier values.
    pub fn set_args(&mut self, pairs: &[&str]) {
        for pair in pairs.chunks(2) {
            let (name, value) = (pair[0], pair.get(1).copied().unwrap_or_default());
            match self.args.iter().position(|a| a == name) {
                Some(i) if i + 1 < self.args.len() => self.args[i + 1] = value.to_string(),
                _ => self.args.extend([name.to_string(), value.to_string()]),
            }
        }
    }

    /// The runner's work directory.
    pub fn work_dir(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("runner.log")
    }

    /// The runner's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the runner with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same work directory (same identity).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends `signal` to the runner process (only: not its jobs), e.g.
    /// SIGSTOP to make it go silent and SIGCONT to bring it back.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).expect("pid"));
            nix::sys::signal::kill(pid, signal).expect("signal the runner");
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- runner log ----\n{}", tail(&self.log(), 60));
        }
    }
}

/// Submits pipeline YAML and returns the run id.
pub async fn submit(client: &Client, yaml: &str) -> String {
    let req = v1::SubmitRequest {
        source: Some(v1::submit_request::Source::PipelineYaml(yaml.to_string())),
        ..Default::default()
    };
    client.runs().submit(req).await.expect("submit").into_inner().run_id
}

/// Waits (through `Runs.Watch`) until run `id` finishes.
pub async fn finished(client: &Client, id: &str) -> v1::Run {
    within(&format!("run {id} to finish"), client.wait_for_run(id)).await.expect("wait for run")
}

/// Waits until `pred` holds for run `id`, re-reading it on every event.
pub async fn run_where(client: &Client, id: &str, what: &str, pred: impl Fn(&v1::Run) -> bool) -> v1::Run {
    use tokio_stream::StreamExt;
    within(what, async {
        let mut events = client
            .runs()
            .watch(v1::WatchRequest { run_id: id.to_string(), from_start: true, ..Default::default() })
            .await
            .expect("watch")
            .into_inner();
        loop {
            let run = client.runs().get(v1::GetRunRequest { id: id.to_string() }).await.expect("get run").into_inner();
            if pred(&run) {
                return run;
            }
            assert!(events.next().await.is_some(), "event stream ended");
        }
    })
    .await
}

/// All log bytes of a step (by public id), as text.
pub async fn step_log(client: &Client, step_id: &str) -> String {
    let r = client
        .logs()
        .get(v1::GetLogRequest { step_id: step_id.to_string(), ..Default::default() })
        .await
        .expect("get log")
        .into_inner();
    String::from_utf8_lossy(&r.data).into_owned()
}

/// The status of a run/job/step field as a word.
pub fn word(status: i32) -> &'static str {
    Status::try_from(status).map_or("unspecified", StatusWord::word)
}

/// Runs a command to completion, returning its output (stdin closed).
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

/// Whether process `pid` is gone (or a zombie waiting to be reaped).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A temporary directory the steps of a host job may write to (flags, pid
/// files): a runner running as root runs each slot's jobs as their own
/// unprivileged user, so it is world-writable. Not sticky: consecutive jobs
/// may run as different slot users, and with `fs.protected_regular` (on in
/// many distributions) a sticky directory refuses to let one user open
/// another's file with `O_CREAT` even when its mode allows the write.
pub fn shared_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

/// One HTTP/1.1 request over a plain socket: returns (status code, body).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    let (code, _, body) = http_with_head(addr, method, path, headers, body);
    (code, body)
}

/// One HTTP/1.1 request over a plain socket: returns (status code,
/// response head, body).
pub fn http_with_head(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(req.as_bytes()).and_then(|()| s.write_all(body)).expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).expect("read");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut body = buf[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (code, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + size]);
        b = &b[end + 2 + size + 2..];
    }
    out
}

/// A test cannot run for want of a fixture (`why` says which, and how to
/// get it). Under `cargo xtask test` — which installs, checks and starts
/// every fixture, and says so with `VIADUCT_FIXTURES_REQUIRED` — that is a
/// broken set-up, and the test fails; a bare `cargo test` prints why it
/// skips.
pub fn missing_fixture(why: &str) {
    if std::env::var_os("VIADUCT_FIXTURES_REQUIRED").is_some() {
        panic!("missing fixture under `cargo xtask test`: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// The container engine the tests may use: `VIADUCT_CONTAINER_SOCKET`, set
/// by `cargo xtask test` (which starts Podman's API service). `None` when
/// there is none, so container tests can skip (see [`missing_fixture`]).
pub fn container_socket() -> Option<String> {
    match std::env::var("VIADUCT_CONTAINER_SOCKET") {
        Ok(s) if Path::new(&s).exists() => Some(s),
        _ => {
            missing_fixture(
                "no container engine (VIADUCT_CONTAINER_SOCKET is unset): run `cargo xtask test`, which starts Podman",
            );
            None
        }
    }
}

/// A fresh, empty database on the test PostgreSQL server
/// (`VIADUCT_TEST_POSTGRES`, started by `cargo xtask test`): its URL. `None`
/// when there is none (see [`missing_fixture`]).
pub fn postgres_database(name: &str) -> Option<String> {
    let Ok(base) = std::env::var("VIADUCT_TEST_POSTGRES") else {
        missing_fixture("no PostgreSQL (VIADUCT_TEST_POSTGRES is unset): run `cargo xtask test`, which starts one");
        return None;
    };
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let db = format!("{name}_{}_{n}", std::process::id());
    assert!(db.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{db}");
    let out = output(
        Command::new("psql")
            .arg(format!("{base}/postgres"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
            .arg(format!("CREATE DATABASE \"{db}\"")),
    );
    assert!(out.status.success(), "creating database {db}: {}", String::from_utf8_lossy(&out.stderr));
    Some(format!("{base}/{db}"))
}

/// A fresh, empty database on the test PostgreSQL server reached over TCP
/// with TLS (`VIADUCT_TEST_POSTGRES_TLS`, whose certificate — for
/// `localhost` and `127.0.0.1` — the CA in `VIADUCT_TEST_POSTGRES_CA`
/// issued; the server takes no plaintext TCP): its URL (no parameters) and
/// the CA file. `None` when there is none (see [`missing_fixture`]).
pub fn postgres_tls_database(name: &str) -> Option<(String, PathBuf)> {
    let (Ok(base), Ok(ca)) = (std::env::var("VIADUCT_TEST_POSTGRES_TLS"), std::env::var("VIADUCT_TEST_POSTGRES_CA"))
    else {
        missing_fixture(
            "no PostgreSQL over TLS (VIADUCT_TEST_POSTGRES_TLS or _CA is unset): run `cargo xtask test`, which starts one",
        );
        return None;
    };
    // Made over the Unix socket, like every test database.
    let url = postgres_database(name)?;
    let (_, db) = url.rsplit_once('/').expect("a database in the URL");
    Some((format!("{base}/{db}"), PathBuf::from(ca)))
}

/// A fresh bucket on the test S3 server (`VIADUCT_TEST_S3*`, an `s3s-fs`
/// started by `cargo xtask test`). `None` when there is none (see
/// [`missing_fixture`]).
pub struct S3Bucket {
    /// `--blob-store` (`s3://BUCKET/PREFIX?endpoint=…&access_key_id=…`).
    pub spec: String,
    /// `--blob-store-secret-file`.
    pub secret_file: PathBuf,
    /// The bucket's directory on the server (s3s-fs keeps objects as files).
    pub dir: PathBuf,
    _keep: TempDir,
}

impl S3Bucket {
    /// Makes the bucket `name-<pid>`.
    pub fn new(name: &str) -> Option<Self> {
        let Ok(endpoint) = std::env::var("VIADUCT_TEST_S3") else {
            missing_fixture("no S3 server (VIADUCT_TEST_S3 is unset): run `cargo xtask test`, which starts one");
            return None;
        };
        let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} goes with VIADUCT_TEST_S3"));
        let bucket = format!("{name}-{}", std::process::id());
        let dir = Path::new(&var("VIADUCT_TEST_S3_ROOT")).join(&bucket);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bucket");
        let keep = tempfile::tempdir().expect("temp dir");
        let secret_file = keep.path().join("s3-secret");
        std::fs::write(&secret_file, var("VIADUCT_TEST_S3_SECRET_KEY")).expect("secret file");
        let spec = format!("s3://{bucket}/ci?endpoint={endpoint}&access_key_id={}", var("VIADUCT_TEST_S3_ACCESS_KEY"));
        Some(Self { spec, secret_file, dir, _keep: keep })
    }

    /// The server arguments that put blobs in this bucket.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--blob-store".into(),
            self.spec.clone(),
            "--blob-store-secret-file".into(),
            self.secret_file.display().to_string(),
        ]
    }

    /// The blobs stored in the bucket (their file names: blake3 hex).
    pub fn blobs(&self) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![self.dir.join("ci/blobs")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    found.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }
}

/// The offline test image (busybox-static), built by `cargo xtask setup`.
pub fn test_image() -> String {
    std::env::var("VIADUCT_TEST_IMAGE").unwrap_or_else(|_| "viaduct-test/busybox:latest".into())
}

/// The private registry the pull tests may use (`127.0.0.1:PORT`, and the
/// `user:password` it takes), started by `cargo xtask test`. `None` when
/// there is none (see [`missing_fixture`]).
pub fn test_registry() -> Option<(String, String)> {
    match (std::env::var("VIADUCT_TEST_REGISTRY"), std::env::var("VIADUCT_TEST_REGISTRY_AUTH")) {
        (Ok(addr), Ok(auth)) => Some((addr, auth)),
        _ => {
            missing_fixture(
                "no image registry (VIADUCT_TEST_REGISTRY is unset): run `cargo xtask test`, which starts one",
            );
            None
        }
    }
}

/// Runs `podman` with these arguments, panicking with its stderr when it
/// fails; returns its stdout.
pub fn podman(args: &[&str]) -> String {
    let out = output(Command::new("podman").args(args));
    assert!(out.status.success(), "podman {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of the containers (running or not) labelled as this runner's.
pub fn containers_of(runner_id: &str) -> Vec<String> {
    podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=viaduct.runner={runner_id}")])
        .lines()
        .map(String::from)
        .collect()
}
