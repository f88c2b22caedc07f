//! Programs of a container job's plugin steps (see `executor::programs`):
//! run **inside the job's container**, through the launcher like a step
//! (`ctl/steps/x<n>`, with stdout and stderr on separate FIFOs), found on
//! the image's `PATH` — so a plugin step of a container job never runs
//! anything on the runner machine.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader},
    net::unix::pipe,
    sync::mpsc,
};

use super::{Launcher, env_file, fifo, request};
use crate::executor::{
    host::DEFAULT_PATH,
    programs::{ExecExit, ExecRequest, MAX_CAPTURE, Programs, environment},
};

/// What the script prints when the image lacks the program.
const NOT_INSTALLED: &str = "viaduct: not installed in the job's image: ";

/// The programs of one container job.
pub struct ContainerPrograms {
    /// The control directory on the host (read-only in the container).
    pub ctl: PathBuf,
    /// The launcher's request FIFO.
    pub launcher: Launcher,
    /// Numbers the programs' control directories.
    pub next: AtomicU32,
}

/// `text` as one single-quoted shell word.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Stops the program if the call is dropped before it ended.
struct Stop(Option<pipe::Sender>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(s) = &self.0 {
            let _ = s.try_write(b"KILL\n");
        }
    }
}

#[async_trait::async_trait]
impl Programs for ContainerPrograms {
    async fn run(&self, req: &ExecRequest, log: &mpsc::Sender<Vec<u8>>) -> Result<ExecExit, String> {
        let program = req.program.as_str();
        let cwd = match req.cwd.as_deref().map(str::trim).filter(|c| !c.is_empty() && *c != ".") {
            None => "/workspace".to_string(),
            Some(rel) => {
                let path = std::path::Path::new(rel);
                if path.is_absolute() || path.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                    return Err(format!("`{rel}`: the working directory must be inside the workspace"));
                }
                format!("/workspace/{rel}")
            }
        };
        let env = environment(req, DEFAULT_PATH, "/tmp", "/tmp");
        let words: Vec<String> =
            std::iter::once(program).chain(req.args.iter().map(String::as_str)).map(quote).collect();
        let script = format!(
            "command -v {p} >/dev/null 2>&1 || {{ echo {missing} >&2; exit 127; }}\nexec {}\n",
            words.join(" "),
            p = quote(program),
            missing = quote(&format!("{NOT_INSTALLED}{program}")),
        );
        let name = format!("x{}", self.next.fetch_add(1, Ordering::Relaxed));
        let d = self.ctl.join("steps").join(&name);
        let files = [("script", script), ("env", env_file(&env)), ("cwd", cwd)];
        let dir = d.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let io = |e: std::io::Error| format!("cannot hand the program over: {e}");
            std::fs::create_dir(&dir).map_err(io)?;
            super::chmod(&dir, 0o755).map_err(io)?;
            for (f, content) in &files {
                std::fs::write(dir.join(f), content).map_err(io)?;
                super::chmod(&dir.join(f), 0o644).map_err(io)?;
            }
            for f in ["out", "err", "done", "signal"] {
                fifo(&dir.join(f))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("cannot hand the program over: {e}"))??;
        let open_rx = |f: &str| {
            pipe::OpenOptions::new().read_write(true).open_receiver(d.join(f)).map_err(|e| format!("{f} FIFO: {e}"))
        };
        let (mut out, mut err) = (open_rx("out")?, open_rx("err")?);
        let mut done = BufReader::new(open_rx("done")?).take(32);
        let signal = pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(d.join("signal"))
            .map_err(|e| format!("signal FIFO: {e}"))?;
        let mut stop = Stop(Some(signal));
        request(&self.launcher, &name).await?;

        let (mut captured, mut errors) = (Vec::new(), Vec::new());
        let (mut obuf, mut ebuf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
        let mut line = String::new();
        loop {
            tokio::select! {
                r = out.read(&mut obuf) => if let Ok(n) = r && n > 0 {
                    if req.capture_stdout {
                        if captured.len() + n > MAX_CAPTURE {
                            return Err(format!("`{program}` wrote more than {} MiB to stdout", MAX_CAPTURE >> 20));
                        }
                        captured.extend_from_slice(&obuf[..n]);
                    } else {
                        let _ = log.send(obuf[..n].to_vec()).await;
                    }
                },
                r = err.read(&mut ebuf) => if let Ok(n) = r && n > 0 {
                    if errors.len() < 512 {
                        errors.extend_from_slice(&ebuf[..n.min(512)]);
                    }
                    let _ = log.send(ebuf[..n].to_vec()).await;
                },
                r = done.read_line(&mut line) => {
                    r.map_err(|e| format!("reading `{program}`'s status: {e}"))?;
                    break;
                }
            }
        }
        // It has exited: what it wrote is already in the FIFOs.
        for (fifo, is_stdout) in [(&mut out, true), (&mut err, false)] {
            while let Ok(n) = fifo.try_read(&mut obuf) {
                if n == 0 {
                    break;
                }
                if is_stdout && req.capture_stdout {
                    captured.extend_from_slice(&obuf[..n]);
                } else {
                    let _ = log.send(obuf[..n].to_vec()).await;
                }
            }
        }
        stop.0 = None;
        let code: i32 = line.trim().parse().map_err(|_| {
            format!("`{program}`'s status is not an exit code: something in the container wrote to the launcher's FIFO")
        })?;
        let _ = tokio::fs::remove_dir_all(&d).await;
        if code == 127 && String::from_utf8_lossy(&errors).contains(NOT_INSTALLED) {
            return Err(format!("`{program}` is not installed in the job's image"));
        }
        Ok(ExecExit { code, stdout: captured })
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_are_quoted_for_sh() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's $(rm -rf /)"), r"'it'\''s $(rm -rf /)'");
    }
}
