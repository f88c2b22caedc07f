//! The host cost of a plugin step, measured inside the runner: cold start
//! (compile the component), warm from disk (deserialize this runner's
//! compiled copy), warm in memory (`InstancePre`: a fresh store,
//! instantiate, call) — compared with the host executor running a
//! `run: true` step.
//!
//! `cargo bench -p viaduct-runner --bench plugin_host` (or `cargo xtask
//! bench plugins`, which also runs the end-to-end plugin benchmarks). Needs
//! `target/plugins-test/noop.wasm` (`cargo xtask plugins`).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use viaduct_proto::v1::{JobRef, PluginManifest};
use viaduct_runner::{
    executor::{Backend, JobSetup, LogLimits, StepLog, StepSpec, StepStop, host::HostBackend},
    files::Files,
    mask::Secrets,
    outbox::Outbox,
    plugin_host::{PluginCall, PluginConfig, PluginHost, RunInfo, Source},
    report::Reports,
};

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[((v.len() - 1) as f64 * 0.99) as usize])
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn noop_component() -> (Vec<u8>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins-test/noop.wasm");
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run `cargo xtask plugins` first)", path.display()));
    let digest = format!("blake3:{}", blake3::hash(&bytes).to_hex());
    (bytes, digest)
}

/// A plugin host whose component cache holds the noop component (so no
/// server is needed to fetch it).
fn host(dir: &Path, bytes: &[u8], digest: &str) -> Arc<PluginHost> {
    std::fs::create_dir_all(dir).unwrap();
    let hex = digest.trim_start_matches("blake3:");
    std::fs::write(dir.join(format!("{hex}.wasm")), bytes).unwrap();
    // Never contacted: the component is already in the cache.
    let client = viaduct_sdk::Client::lazy("http://127.0.0.1:9", None).unwrap();
    let config = PluginConfig { default_memory_mb: 64, max_memory_mb: 64, mounts: HashMap::new() };
    PluginHost::new(dir.to_path_buf(), client.clone(), Arc::new(Files::new(client)), config).unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let (bytes, digest) = noop_component();

    // Cold: compile from the .wasm (a runner's first use of a plugin).
    let mut cold = Vec::new();
    for i in 0..5 {
        let h = host(&tmp.path().join(format!("cold{i}")), &bytes, &digest);
        let t = Instant::now();
        assert_eq!(h.prepare(&digest).await.unwrap(), Source::Compiled);
        cold.push(t.elapsed());
    }
    // Warm from disk: a restarted runner, its compiled copy on disk.
    let dir = tmp.path().join("cold0");
    let mut disk = Vec::new();
    for _ in 0..20 {
        let h = host(&dir, &bytes, &digest);
        let t = Instant::now();
        assert_eq!(h.prepare(&digest).await.unwrap(), Source::Disk);
        disk.push(t.elapsed());
    }
    // Warm in memory: every further call.
    let h = host(&dir, &bytes, &digest);
    h.prepare(&digest).await.unwrap();
    let workspace = tmp.path().join("workspace");
    std::fs::create_dir_all(&workspace).unwrap();
    let manifest = PluginManifest { name: "noop".into(), version: "1.0.0".into(), ..Default::default() };
    let job = JobRef { job_id: "1.1".into(), attempt: 1, ..Default::default() };
    let outbox: Arc<dyn Reports> = Arc::new(Outbox::default());
    let stop = StepStop { cancel: CancellationToken::new(), deadline: None };
    let mut warm = Vec::new();
    for i in 0..2000 {
        let call = PluginCall {
            job: &job,
            digest: &digest,
            manifest: &manifest,
            with: Vec::new(),
            allow_network: false,
            post_state: None,
            workspace: workspace.clone(),
            env: BTreeMap::from([("CI".to_string(), "true".to_string())]),
            programs: viaduct_runner::executor::programs::none(),
            meta: RunInfo::default(),
        };
        let mut log = StepLog::new(Arc::clone(&outbox), job.clone(), 1, Secrets::default(), LogLimits::new(0, 0));
        let t = Instant::now();
        let r = h.run(call, &mut log, &stop).await;
        let took = t.elapsed();
        assert_eq!(r.source, Some(Source::Memory), "{r:?}");
        assert!(r.outcome.message.is_empty(), "{r:?}");
        if i >= 100 {
            warm.push(took);
        }
    }
    // The same in the host executor: `run: true`.
    let backend = HostBackend::new(&tmp.path().join("hostjobs"), Duration::from_secs(1), false, None, None);
    let mut env = backend.setup(&JobSetup { job: job.clone(), ..Default::default() }).await.unwrap();
    let spec = StepSpec {
        index: 1,
        name: "true".into(),
        script: "true".into(),
        env: BTreeMap::new(),
        working_directory: String::new(),
    };
    let mut shell = Vec::new();
    for i in 0..300 {
        let mut log = StepLog::new(Arc::clone(&outbox), job.clone(), 1, Secrets::default(), LogLimits::new(0, 0));
        let t = Instant::now();
        let o = env.run_step(&spec, &mut log, &stop).await;
        let took = t.elapsed();
        assert_eq!(o.exit_code, Some(0));
        if i >= 20 {
            shell.push(took);
        }
    }
    env.teardown().await;

    let (c50, _) = summary(cold);
    let (d50, _) = summary(disk);
    let (w50, w99) = summary(warm);
    let (s50, s99) = summary(shell);
    println!("plugin host (noop component, {} KiB):", bytes.len() / 1024);
    println!("  cold start (compile + link)            p50 {}", ms(c50));
    println!("  warm from disk (deserialize + link)     p50 {}", ms(d50));
    println!("  warm call (store + instantiate + run)   p50 {}  p99 {}", us(w50), us(w99));
    println!("  host step `run: true` (sh -e -c true)   p50 {}  p99 {}", us(s50), us(s99));
    println!(
        "  → a warm plugin step costs {:.1}× less host time than `run: true`",
        s50.as_secs_f64() / w50.as_secs_f64()
    );
}
