//! A real OpenID Provider on loopback for the single sign-on tests: the npm
//! package `oidc-provider` (installed by `cargo xtask setup`, found through
//! `VIADUCT_OIDC_PROVIDER`), run by `tests/oidc/provider.mjs`.
//!
//! Its login form takes any name and password; each test names the
//! accounts it knows and their groups. The client is `viaduct` with the
//! secret in [`Provider::secret_file`].

use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use tempfile::TempDir;

/// The client id the provider knows Viaduct by.
pub const CLIENT_ID: &str = "viaduct";

/// A running provider (killed on drop).
pub struct Provider {
    child: Child,
    dir: TempDir,
    /// Its issuer URL, `http://127.0.0.1:PORT`.
    pub issuer: String,
}

/// A provider-to-be: its port is chosen first, so a server can be started
/// with its issuer URL before the provider (which needs the server's
/// callback URL) starts.
pub struct Planned {
    port: u16,
    dir: TempDir,
    /// The issuer URL the provider will have.
    pub issuer: String,
}

impl Planned {
    /// Picks a free port; `None` (after [`crate::missing_fixture`]) when
    /// the provider is not installed.
    pub fn new() -> Option<Self> {
        module_dir()?;
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("client-secret"), "viaduct-test-client-secret\n").expect("secret");
        Some(Self { port, dir, issuer: format!("http://127.0.0.1:{port}") })
    }

    /// The file holding the client secret (for `--oidc-client-secret-file`).
    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("client-secret")
    }

    /// Starts the provider, sending people back to `redirect`, knowing
    /// `accounts` (login → `{"name": …, "groups": […]}`).
    pub fn start(self, redirect: &str, accounts: serde_json::Value) -> Provider {
        let module = module_dir().expect("checked in new");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc").join("provider.mjs");
        let log = std::fs::File::create(self.dir.path().join("provider.log")).expect("log");
        let mut child = Command::new("node")
            .arg(script)
            .arg(module)
            .arg(self.port.to_string())
            .arg(redirect)
            .arg(self.secret_file())
            .arg(accounts.to_string())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("run node");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("the provider's first line");
        // Keep reading: a closed pipe would kill the provider at its next line.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        assert!(
            line.starts_with("listening"),
            "the provider did not start: {line:?}; see {}",
            self.dir.path().join("provider.log").display()
        );
        Provider { child, dir: self.dir, issuer: self.issuer }
    }
}

impl Provider {
    /// The provider's log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `oidc-provider` is installed.
fn module_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("VIADUCT_OIDC_PROVIDER").map(PathBuf::from);
    match dir.filter(|d| d.join("node_modules/oidc-provider/package.json").exists()) {
        Some(d) => Some(d),
        None => {
            crate::missing_fixture(
                "no OpenID provider (VIADUCT_OIDC_PROVIDER): run `cargo xtask test`, which installs npm oidc-provider",
            );
            None
        }
    }
}
