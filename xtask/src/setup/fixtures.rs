//! Services `cargo xtask test` (and `up`, and the benchmarks) start for the
//! duration of a run: Podman's Docker-compatible API service and a private
//! image registry. Each stops when dropped.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

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

/// A private PostgreSQL server for the store's tests: a fresh cluster
/// (`initdb` as the `postgres` user, which Debian's package creates —
/// PostgreSQL refuses to run as root) in a temporary directory (which that
/// user can reach wherever the checkout is),
/// listening on a socket in that directory (the cluster trusts whoever
/// connects there, so only root and `postgres` may) and, for the TLS
/// tests, on a free loopback TCP port with TLS only: its certificate (for
/// `localhost` and `127.0.0.1`) is issued by a CA made at start, and
/// `pg_hba.conf` has `hostssl` lines and no `host` line, so plaintext TCP
/// is refused. Tests make a database each (`CREATE DATABASE`), so they
/// never share state.
pub struct PostgresServer {
    child: std::process::Child,
    /// `postgresql://viaduct@%2FSOCKET%2FDIR:PORT` (append `/DATABASE`).
    pub url: String,
    /// `postgresql://viaduct@localhost:PORT`: the same server over TCP,
    /// TLS only (append `/DATABASE`).
    pub tls_url: String,
    /// The CA (PEM) that issued the server's certificate.
    pub ca_file: PathBuf,
    data: PathBuf,
    /// Removed once the server has stopped.
    _dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Starts the server and waits until it accepts connections.
    pub fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("viaduct-postgres-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let as_postgres = |program: &Path| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        };
        // TLS: a CA of this run, the server's certificate and key (the key
        // the postgres user's, 0600, as PostgreSQL demands), and who may
        // connect how: anyone on the socket, TLS only over TCP. `localhost`
        // is all of its loopback addresses, so each has a hostssl line.
        use viaduct_tests::pki::{Ca, Validity};
        let ca = Ca::new("Viaduct test PostgreSQL CA");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &ca.cert_pem)?;
        let (cert, key) = ca.server(&["localhost", "127.0.0.1", "::1"], Validity::Current).write(&dir, "server");
        let hba = dir.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "# Written by cargo xtask: no plain `host` line, so TCP without TLS is refused.\n\
             local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostssl all all ::1/128 trust\n",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
        let owned = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status()?;
        anyhow::ensure!(owned.success(), "cannot give {} to the postgres user", dir.display());
        let data = dir.join("data");
        let out = as_postgres(&super::postgres_bin("initdb")?)
            .args(["-A", "trust", "-U", "viaduct", "--no-sync", "-E", "UTF8", "-D"])
            .arg(&data)
            .output()
            .context("running initdb")?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let log = std::fs::File::create(dir.join("postgres.log"))?;
        let setting = |name: &str, path: &Path| format!("{name}={}", path.display());
        let child = as_postgres(&super::postgres_bin("postgres")?)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port, "-c", "listen_addresses=localhost", "-c", "max_connections=300"])
            .args(["-c", "ssl=on", "-c"])
            .arg(setting("ssl_cert_file", &cert))
            .arg("-c")
            .arg(setting("ssl_key_file", &key))
            .arg("-c")
            .arg(setting("hba_file", &hba))
            .arg("-k")
            .arg(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting postgres")?;
        let host = dir.to_str().context("a temp dir that is not UTF-8")?.replace('/', "%2F");
        let server = Self {
            child,
            url: format!("postgresql://viaduct@{host}:{port}"),
            tls_url: format!("postgresql://viaduct@localhost:{port}"),
            ca_file,
            data,
            _dir: tmp,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let isready = super::postgres_bin("pg_isready")?;
        loop {
            let ready = Command::new(&isready)
                .arg("-q")
                .arg("-h")
                .arg(&dir)
                .args(["-p", &port, "-U", "viaduct", "-d", "postgres"])
                .status()?;
            if ready.success() {
                return Ok(server);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "postgres did not accept connections in {}; its log:\n{}",
                dir.display(),
                std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // A fast shutdown: open connections (a test's) are ended, not waited for.
        if let Ok(pg_ctl) = super::postgres_bin("pg_ctl") {
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .args(["stop", "-m", "fast", "-s", "-D"])
                .arg(&self.data)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-protocol server for the object-storage tests: `s3s-fs` over
/// a temporary directory (a bucket is a directory in it: tests make their
/// own), on a free loopback port, with a random access key pair; stopped
/// on drop.
pub struct S3Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// The access key id and secret key it accepts.
    pub access_key: String,
    /// The secret key.
    pub secret_key: String,
    /// Its root directory (one directory per bucket).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts the server and waits until it listens.
    pub fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("viaduct-s3-").tempdir()?;
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let (access_key, secret_key) = (format!("AK{}", std::process::id()), format!("sk-{:x}", rand_u64()));
        let log = std::fs::File::create(tmp.path().join("s3s-fs.log"))?;
        // The secret key goes on the command line: s3s-fs takes it no
        // other way. A throwaway for a loopback server of the tests.
        let child = Command::new(super::s3s_fs()?)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", &access_key, "--secret-key"])
            .arg(&secret_key)
            .arg(&root)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting s3s-fs")?;
        let server =
            Self { child, endpoint: format!("http://127.0.0.1:{port}"), access_key, secret_key, root, _dir: tmp };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "s3s-fs did not listen on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
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
