//! The private key and the pinned host keys on disk, for the duration of
//! the step: `<workspace>/.viaduct-scratch-ssh-<random>/{key,known_hosts}`.
//!
//! WASI cannot set permission bits, so the directory (0700) and the empty
//! key file (0600) are created by `install` through `exec` — as the job's
//! user, where `ssh` runs — and only then is the key written into the
//! existing file through WASI (opened without `create`, so it can never
//! appear with other permissions). The directory is removed when the
//! [`KeyDir`] is removed or dropped, on every path out of the step.

use std::{
    hash::{BuildHasher, Hasher},
    io::Write,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use viaduct_plugin_sdk::{Error, Result, ResultExt, exec::Command};

use crate::{inputs::Secrets, remote};

/// The name every key directory starts with.
pub const PREFIX: &str = ".viaduct-scratch-ssh-";
/// The private key's file name.
pub const KEY: &str = "key";
/// The known hosts' file name.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// 16 random hex digits (std's hasher keys come from the system's random
/// source, WASI's inside the sandbox).
pub fn random_suffix() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    format!("{:016x}", h.finish())
}

/// The key directory of one step.
#[derive(Debug)]
pub struct KeyDir {
    /// The workspace (as this process sees it).
    workspace: PathBuf,
    /// The directory's name in the workspace.
    name: String,
    /// Removed already.
    gone: bool,
}

impl KeyDir {
    /// Creates the directory `PREFIX + suffix` in `workspace` and writes
    /// the secrets into it, running `install` through `run` (the `exec`
    /// import in the sandbox). On error, nothing is left.
    pub fn create(
        workspace: &Path,
        suffix: &str,
        secrets: &Secrets,
        mut run: impl FnMut(&Command) -> Result<()>,
    ) -> Result<Self> {
        let name = format!("{PREFIX}{suffix}");
        let path = workspace.join(&name);
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::msg(format!("`{name}` exists in the workspace already")));
        }
        // From here on, dropping it removes whatever was created.
        let dir = KeyDir { workspace: workspace.to_path_buf(), name, gone: false };
        run(&remote::install_dir(&dir.name))?;
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("`{}` was not created", dir.name))?;
        if !meta.is_dir() {
            return Err(Error::msg(format!("`{}` is not a directory", dir.name)));
        }
        let key_file = format!("{}/{KEY}", dir.name);
        run(&remote::install_empty_file(&key_file))?;
        let meta =
            std::fs::symlink_metadata(path.join(KEY)).with_context(|| format!("`{key_file}` was not created"))?;
        if !meta.is_file() || meta.len() != 0 {
            return Err(Error::msg(format!("`{key_file}` is not the empty file `install` was to create")));
        }
        // Never `create`: the file `install` made (mode 0600) or nothing.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path.join(KEY))
            .context("cannot open the key file")?;
        f.write_all(secrets.key.as_bytes()).context("cannot write the key file")?;
        drop(f);
        std::fs::write(path.join(KNOWN_HOSTS), &secrets.known_hosts).context("cannot write the known hosts file")?;
        Ok(dir)
    }

    /// The files, relative to the workspace (where `ssh` runs).
    pub fn ssh(&self) -> remote::Ssh {
        remote::Ssh { key: format!("{}/{KEY}", self.name), known_hosts: format!("{}/{KNOWN_HOSTS}", self.name) }
    }

    /// The directory's name in the workspace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the directory (the key emptied first).
    pub fn remove(mut self) -> Result<()> {
        self.gone = true;
        remove_dir(&self.workspace.join(&self.name))
            .with_context(|| format!("cannot remove the key directory `{}`", self.name))
    }
}

impl Drop for KeyDir {
    fn drop(&mut self) {
        if !self.gone {
            self.gone = true;
            let _ = remove_dir(&self.workspace.join(&self.name));
        }
    }
}

/// Empties the key file, then removes the directory; a directory that is
/// not there is fine.
fn remove_dir(path: &Path) -> std::io::Result<()> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    let key = path.join(KEY);
    if std::fs::symlink_metadata(&key).is_ok_and(|m| m.is_file()) {
        let _ = std::fs::OpenOptions::new().write(true).truncate(true).open(&key);
        std::fs::remove_file(&key)?;
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        // What WASI cannot remove (the master connections' sockets) the
        // runner removes after the step (a scratch directory); the key is
        // gone already.
        Err(_) if std::fs::symlink_metadata(&key).is_err() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes key directories an earlier step left (one stopped before it
/// could clean up); returns their names.
pub fn sweep(workspace: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(workspace) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) && remove_dir(&entry.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("viaduct-ssh-deploy-keys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn secrets() -> Secrets {
        Secrets { key: "-----BEGIN OPENSSH PRIVATE KEY-----\nxyz\n".into(), known_hosts: "h ssh-ed25519 AAAA\n".into() }
    }

    /// What `install` does, natively, in `ws`; records the command lines.
    fn install(ws: &Path, seen: &mut Vec<String>, cmd: &Command) -> Result<()> {
        assert_eq!(cmd.program(), "install");
        seen.push(cmd.get_args().join(" "));
        let args = cmd.get_args();
        let target = ws.join(args.last().unwrap());
        if args[0] == "-d" {
            std::fs::create_dir(&target)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))?;
        } else {
            std::fs::write(&target, "")?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    #[test]
    fn the_key_is_written_into_a_0600_file_and_removed() {
        let ws = temp("create");
        let mut seen = Vec::new();
        let dir = KeyDir::create(&ws, "ab12", &secrets(), |c| install(&ws, &mut seen, c)).unwrap();
        assert_eq!(
            seen,
            ["-d -m 700 -- .viaduct-scratch-ssh-ab12", "-m 600 -- /dev/null .viaduct-scratch-ssh-ab12/key"]
        );
        let key = ws.join(".viaduct-scratch-ssh-ab12/key");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), secrets().key);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(ws.join(".viaduct-scratch-ssh-ab12/known_hosts")).unwrap(),
            secrets().known_hosts
        );
        assert_eq!(dir.ssh().key, ".viaduct-scratch-ssh-ab12/key");
        dir.remove().unwrap();
        assert!(!ws.join(".viaduct-scratch-ssh-ab12").exists());
        std::fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn nothing_is_left_on_any_error() {
        let ws = temp("errors");
        // `install` of the key file fails: the directory goes.
        let e = KeyDir::create(&ws, "x1", &secrets(), |c| {
            if c.get_args()[0] == "-d" { install(&ws, &mut Vec::new(), c) } else { Err(Error::msg("install: denied")) }
        })
        .unwrap_err();
        assert_eq!(e.message(), "install: denied");
        assert!(!ws.join(".viaduct-scratch-ssh-x1").exists());
        // `install` did not create the file: the key is never written with
        // another mode.
        let e = KeyDir::create(&ws, "x2", &secrets(), |c| {
            if c.get_args()[0] == "-d" { install(&ws, &mut Vec::new(), c) } else { Ok(()) }
        })
        .unwrap_err();
        assert!(e.message().contains("was not created"), "{e}");
        assert!(!ws.join(".viaduct-scratch-ssh-x2").exists());
        // A name that exists is not reused (nor removed).
        std::fs::create_dir(ws.join(".viaduct-scratch-ssh-x3")).unwrap();
        assert!(KeyDir::create(&ws, "x3", &secrets(), |_| panic!("not run")).is_err());
        assert!(ws.join(".viaduct-scratch-ssh-x3").exists());
        // Dropped without `remove` (an early return): gone too.
        drop(KeyDir::create(&ws, "x4", &secrets(), |c| install(&ws, &mut Vec::new(), c)).unwrap());
        assert!(!ws.join(".viaduct-scratch-ssh-x4").exists());
        // Leftovers of a stopped step are swept.
        std::fs::create_dir(ws.join("keep-me")).unwrap();
        assert_eq!(sweep(&ws), [".viaduct-scratch-ssh-x3"]);
        assert!(ws.join("keep-me").exists());
        std::fs::remove_dir_all(&ws).unwrap();
    }

    #[test]
    fn suffixes_differ() {
        let (a, b) = (random_suffix(), random_suffix());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
