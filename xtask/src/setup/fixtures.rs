//! Services `cargo xtask test` (and `up`, and the benchmarks) start for the
//! duration of a run: Podman's Docker-compatible API service and a private
//! image registry. Each stops when dropped.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::target_dir;

/// A running `podman system service` on a socket of our own; stopped on drop.
pub struct PodmanService {
    child: std::process::Child,
    /// Its unix socket.
    pub socket: PathBuf,
}

impl PodmanService {
    /// Starts the Docker-compatible API service and waits for its socket.
    /// `registries` replaces the machine's registries.conf (the tests' own
    /// registry is plain HTTP and must be named insecure).
    pub fn start(conf: &std::path::Path, registries: Option<&std::path::Path>) -> Result<Self> {
        let socket = target_dir().join("tools").join("podman").join(format!("podman-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("podman");
        cmd.args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .env("CONTAINERS_CONF", conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if let Some(r) = registries {
            cmd.env("CONTAINERS_REGISTRIES_CONF", r);
        }
        let child = cmd.spawn().context("starting podman system service")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "podman system service did not create {}",
                socket.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(Self { child, socket })
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The Nix daemon, for Nix as a non-root user (jobs run as per-slot users):
/// started unless one already answers, stopped on drop if started here.
pub struct NixDaemon {
    child: Option<std::process::Child>,
}

/// Where Debian's nix-daemon listens.
const NIX_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";

impl NixDaemon {
    /// Starts `nix-daemon` (Debian's nix-bin) when its socket does not
    /// answer, and waits until it does.
    pub fn start() -> Result<Self> {
        if std::os::unix::net::UnixStream::connect(NIX_SOCKET).is_ok() {
            return Ok(Self { child: None });
        }
        let child = Command::new("nix-daemon")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nix-daemon")?;
        let daemon = Self { child: Some(child) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(NIX_SOCKET).is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "nix-daemon did not listen on {NIX_SOCKET}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(daemon)
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A private image registry for the pull tests: Debian's `docker-registry`
/// (the CNCF distribution registry) on a free loopback port, plain HTTP,
/// with htpasswd (bcrypt, from `apache2-utils`) authentication and empty
/// storage each time; stopped on drop.
pub struct Registry {
    child: std::process::Child,
    /// `127.0.0.1:PORT`, the registry part of image names.
    pub addr: String,
    /// `user:password` it accepts.
    pub auth: String,
    /// A registries.conf that names it insecure (plain HTTP), for Podman.
    pub registries_conf: PathBuf,
}

impl Registry {
    /// Starts the registry (installed by the set-up) and waits until it
    /// answers.
    pub fn start() -> Result<Self> {
        let dir = target_dir().join("tools").join("registry");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let (user, password) = ("viaduct", format!("pw-{}", std::process::id()));
        let hash = Command::new("htpasswd").args(["-B", "-b", "-n", user, &password]).output()?;
        anyhow::ensure!(hash.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&hash.stderr));
        std::fs::write(dir.join("htpasswd"), &hash.stdout)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {data} }}\n\
                 http:\n  addr: {addr}\n  secret: {password}\n\
                 auth:\n  htpasswd: {{ realm: viaduct-test, path: {htpasswd} }}\n",
                data = dir.join("data").display(),
                htpasswd = dir.join("htpasswd").display(),
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let registries_conf = dir.join("registries.conf");
        std::fs::write(
            &registries_conf,
            format!("# Written by cargo xtask test.\n[[registry]]\nlocation = \"{addr}\"\ninsecure = true\n"),
        )?;
        let registry = Self { child, addr, auth: format!("{user}:{password}"), registries_conf };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}",
                registry.addr
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(registry)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
