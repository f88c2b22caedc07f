//! `cargo xtask up`: the whole system on this machine.
//!
//! Data lives in `.viaduct-dev/` at the workspace root: the server's sled
//! database and token files in `data/`, the local runner's work directory
//! in `runner/`. Ctrl-C stops everything; the next `up` continues with the
//! same data (`--fresh` starts over).

use std::{
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run, target_dir};

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so the runner stops its jobs' process groups.
            let _ = Command::new("kill").arg(c.id().to_string()).status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// Builds and runs server + local runner until Ctrl-C.
pub fn up(listen: &str, fresh: bool, slots: u32) -> Result<()> {
    let dev = root().join(".viaduct-dev");
    let data = dev.join("data");
    let work = dev.join("runner");
    if fresh {
        let _ = std::fs::remove_dir_all(&dev);
    }
    if !data.join("db").exists() {
        // A runner identity is only valid for the database that issued it.
        let _ = std::fs::remove_file(work.join("runner.json"));
    }
    crate::plugins::build(false)?;
    let ui = crate::ui::build()?;
    // Embedding them too (as `cargo xtask test` does: no rebuild between the
    // two); this server is still given both directories, read at start.
    run(cargo().args(["build", "--bins"]).envs(crate::dist::embed_env(&ui)))?;
    let bin = target_dir().join("debug");
    // A container engine for jobs with an image, when Podman can be set up.
    let podman = match crate::setup::podman().and_then(|conf| crate::setup::PodmanService::start(&conf, None)) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("xtask: no container engine ({e:#}): jobs with an image will wait");
            None
        }
    };
    let _ = std::fs::remove_file(data.join("address"));
    let tls = local_ca(&dev.join("tls"))?;
    let server = Command::new(bin.join("viaduct-server"))
        .args(["--listen", listen, "--data-dir"])
        .arg(&data)
        .arg("--tls-cert")
        .arg(&tls.cert)
        .arg("--tls-key")
        .arg(&tls.key)
        .arg("--plugins-dir")
        .arg(crate::plugins::output_dir(false))
        .arg("--ui-dir")
        .arg(&ui)
        .spawn()
        .context("starting viaduct-server")?;
    let mut children = Kill(vec![server]);
    let addr = wait_for_address(&data, &mut children.0[0])?;
    let port = addr.rsplit(':').next().unwrap_or("7700");
    let url = format!("https://localhost:{port}");
    let labels = format!("linux,{}", std::env::consts::ARCH);
    let mut runner = Command::new(bin.join("viaduct-runner"));
    runner
        .args(["--server", &url, "--labels", &labels, "--slots", &slots.to_string(), "--name", "local", "--token-file"])
        .arg(data.join("runner-token"))
        .arg("--ca-cert")
        .arg(&tls.ca)
        .arg("--work-dir")
        .arg(&work);
    match &podman {
        Some(p) => runner.arg("--container-socket").arg(&p.socket),
        None => runner.arg("--no-containers"),
    };
    let runner = runner.spawn().context("starting viaduct-runner")?;
    children.0.push(runner);
    let token = data.join("admin-token");
    println!(
        "\nViaduct is up.\n  server   {url}  (gRPC, gRPC-web and HTTP on one port, TLS)\n  token    {}\n  runner   local  (labels {labels}, {slots} slots{})\n  data     {}\n  CA       {}  (made on first start: trust it, see README)\n\nTry:\n  export VIADUCT_SERVER={url} VIADUCT_TOKEN_FILE={} VIADUCT_CA_CERT={}\n  {}/viaduct submit examples/hello.yml --follow\n  grpcurl -cacert {} localhost:{port} list\n\nCtrl-C stops everything.\n",
        token.display(),
        if podman.is_some() { ", host and container jobs (Podman)" } else { ", host jobs" },
        data.display(),
        tls.ca.display(),
        token.display(),
        tls.ca.display(),
        bin.display(),
        tls.ca.display(),
    );
    wait_for_ctrl_c(&mut children.0)
}

/// The local CA and the server's certificate (for `localhost` and
/// 127.0.0.1) of `cargo xtask up`.
struct LocalTls {
    ca: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// Makes the local CA and a server certificate under `dir` on first start
/// (rcgen); later starts reuse them, so a CA the user trusted stays valid.
fn local_ca(dir: &Path) -> Result<LocalTls> {
    let tls = LocalTls { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server.key") };
    if tls.ca.exists() && tls.cert.exists() && tls.key.exists() {
        return Ok(tls);
    }
    std::fs::create_dir_all(dir)?;
    let ca = viaduct_tests::pki::Ca::new("Viaduct local development CA");
    std::fs::write(&tls.ca, &ca.cert_pem)?;
    ca.server(&["localhost", "127.0.0.1", "::1"], viaduct_tests::pki::Validity::Current).write(dir, "server");
    eprintln!("xtask: made a local CA for TLS: {} (trust it: see the README)", tls.ca.display());
    Ok(tls)
}

fn wait_for_address(data: &Path, server: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(a) = std::fs::read_to_string(data.join("address")) {
            return Ok(a.trim().to_string());
        }
        if let Some(status) = server.try_wait()? {
            bail!("viaduct-server exited with {status}");
        }
        if Instant::now() > deadline {
            bail!("viaduct-server did not start listening within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_ctrl_c(children: &mut [Child]) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = tick.tick() => {
                    for c in children.iter_mut() {
                        if let Some(status) = c.try_wait()? {
                            bail!("a Viaduct process exited with {status}; stopping");
                        }
                    }
                }
            }
        }
    })
}
