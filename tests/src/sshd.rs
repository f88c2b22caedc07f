//! A real OpenSSH server on a loopback port, for mirrors of ssh remotes:
//! Debian's `openssh-server` (installed by `cargo xtask setup`), run as
//! root with its own host key and one authorised client key.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use tempfile::TempDir;

use crate::{output, wait_until};

/// A running `sshd`; stopped on drop.
pub struct Sshd {
    child: Child,
    dir: TempDir,
    port: u16,
}

/// A fresh ed25519 key pair at `path` (and `path.pub`).
fn keygen(path: &Path) {
    let out = output(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(path));
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Sshd {
    /// Starts one, or prints why not and returns `None` (no sshd, not root:
    /// sshd logs in as root here, with a key only).
    pub fn start() -> Option<Self> {
        Self::start_seeing(None)
    }

    /// Starts one that sees its own directory at `at` (an absolute path
    /// that exists, the same for every instance): a private mount of
    /// [`Sshd::backing`] there, so that several of them on this machine are
    /// distinct hosts to a deployment.
    pub fn start_isolated(at: &Path) -> Option<Self> {
        Self::start_seeing(Some(at))
    }

    fn start_seeing(at: Option<&Path>) -> Option<Self> {
        let sshd = Path::new("/usr/sbin/sshd");
        let root = output(Command::new("id").arg("-u")).stdout == b"0\n";
        if !sshd.exists() || !root {
            crate::missing_fixture(
                "no sshd or not root: run `cargo xtask test` as root, which installs openssh-server",
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = |name: &str| dir.path().join(name);
        keygen(&path("host_key"));
        keygen(&path("client_key"));
        keygen(&path("other_key"));
        std::fs::create_dir(path("backing")).expect("backing dir");
        std::fs::copy(path("client_key.pub"), path("authorized_keys")).expect("authorized_keys");
        // Privilege separation needs it; Debian's service would make it.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        // SFTP: what `scp` speaks since OpenSSH 9.
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\nPidFile {pid}\n\
             StrictModes no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nSubsystem sftp internal-sftp\n",
            host = path("host_key").display(),
            keys = path("authorized_keys").display(),
            pid = path("sshd.pid").display(),
        );
        std::fs::write(path("sshd_config"), config).expect("sshd_config");
        let log = std::fs::File::create(path("sshd.log")).expect("sshd.log");
        let mut command = match at {
            None => Command::new(sshd),
            Some(at) => {
                // Its own mount namespace, the backing directory bound at `at`.
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "sh", "-c"])
                    .arg("mount --bind \"$1\" \"$2\" && shift 2 && exec \"$@\"")
                    .arg("sh")
                    .arg(path("backing"))
                    .arg(at)
                    .arg(sshd);
                c
            }
        };
        let child = command
            .args(["-D", "-e", "-f"])
            .arg(path("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let sshd = Self { child, dir, port };
        wait_until("sshd to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Some(sshd)
    }

    /// The directory an isolated one sees at its `at`.
    pub fn backing(&self) -> PathBuf {
        self.dir.path().join("backing")
    }

    /// `root@127.0.0.1:PORT`.
    pub fn login(&self) -> String {
        format!("root@127.0.0.1:{}", self.port)
    }

    /// Accepts the key `other` accepts too.
    pub fn authorize_key_of(&self, other: &Sshd) {
        let key = read(&other.dir.path().join("client_key.pub"));
        let keys = self.dir.path().join("authorized_keys");
        let mut all = read(&keys);
        all.push_str(&key);
        std::fs::write(keys, all).expect("authorized_keys");
    }

    /// `ssh://root@127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// The private key it accepts (OpenSSH format).
    pub fn client_key(&self) -> String {
        read(&self.dir.path().join("client_key"))
    }

    /// A private key it does not accept.
    pub fn other_key(&self) -> String {
        read(&self.dir.path().join("other_key"))
    }

    /// Its `known_hosts` line.
    pub fn known_hosts(&self) -> String {
        let key = read(&self.dir.path().join("host_key.pub"));
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{} {}\n", self.port, key.join(" "))
    }

    /// Its log (for assertion messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
