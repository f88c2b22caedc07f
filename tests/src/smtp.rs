//! A real SMTP server on a loopback port, for email notifications: Debian's
//! `python3-aiosmtpd` (installed by `cargo xtask setup`) with its `Mailbox`
//! handler, which files every message it accepts into a Maildir.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use tempfile::TempDir;

use crate::wait_until;

/// A running SMTP server; stopped on drop.
pub struct Smtp {
    child: Child,
    dir: TempDir,
    port: u16,
}

/// One message as received: its raw text (headers and body).
#[derive(Debug, Clone)]
pub struct Mail {
    /// Headers and body as delivered.
    pub raw: String,
}

impl Mail {
    /// A header's value (first one, unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\n\n").next().unwrap_or_default().replace("\r\n", "\n");
        let unfolded = head.replace("\n ", " ").replace("\n\t", " ");
        unfolded.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

impl Smtp {
    /// Starts one, or prints why not and returns `None` (no aiosmtpd).
    pub fn start() -> Option<Self> {
        let python = Path::new("/usr/bin/python3");
        let installed = Path::new("/usr/lib/python3/dist-packages/aiosmtpd/__init__.py").exists();
        if !python.exists() || !installed {
            crate::missing_fixture("no aiosmtpd: run `cargo xtask test`, which installs python3-aiosmtpd");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}"), "-c", "aiosmtpd.handlers.Mailbox"])
            .arg(dir.path().join("mail"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("smtpd.log")).expect("log")))
            .spawn()
            .expect("start aiosmtpd");
        let smtp = Self { child, dir, port };
        wait_until("the SMTP server to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
        Some(smtp)
    }

    /// `smtp://127.0.0.1:PORT` (plain: loopback only).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The messages received so far, oldest first.
    pub fn messages(&self) -> Vec<Mail> {
        let dir: PathBuf = self.dir.path().join("mail").join("new");
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files.iter().filter_map(|p| std::fs::read_to_string(p).ok()).map(|raw| Mail { raw }).collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
