//! `viaduct-runner install`: this runner as a systemd service.
//!
//! Writes `UNIT_DIR/NAME.service` (0644) whose `ExecStart` is this very
//! binary (its absolute path) with the arguments given after `--`, quoted
//! the way systemd reads them; creates the work directory, owned by the
//! service's user; then `systemctl daemon-reload` and `systemctl enable
//! --now NAME` (unless `--no-start`). Where systemd is not running (a
//! container, a machine booted otherwise) the unit is still written and the
//! commands to run are printed.
//!
//! A unit file is readable by every user of the machine, so the runner's
//! `--token` is refused here as it is on the command line: the registration
//! token goes in a file (`--token-file`), read only on first start.
//!
//! The unit's settings (`KillMode=mixed`, `Delegate=yes`…) are those of
//! `deploy/systemd/viaduct-runner.service`, the template the release
//! archive ships (a test keeps the two the same).

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

/// Where the runner works unless its arguments say `--work-dir`.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/viaduct-runner";

/// Options of `viaduct-runner install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The account the runner runs as. As root (the default) it runs each
    /// slot's host jobs as their own unprivileged user in their own cgroup;
    /// as another user, every job runs as that user.
    #[arg(long, default_value = "root")]
    pub user: String,
    /// Where the unit is written.
    #[arg(long, default_value = "/etc/systemd/system")]
    pub unit_dir: PathBuf,
    /// The unit's name (without `.service`).
    #[arg(long, default_value = "viaduct-runner")]
    pub name: String,
    /// Write the unit (and the work directory) only: do not reload systemd,
    /// enable or start the service.
    #[arg(long)]
    pub no_start: bool,
    /// Print the unit to stdout and change nothing.
    #[arg(long)]
    pub print: bool,
    /// The runner's own arguments, after `--`: e.g. `-- --server
    /// https://ci.example:7700 --token-file /etc/viaduct/runner-token
    /// --labels linux`. `--work-dir` defaults to /var/lib/viaduct-runner.
    #[arg(last = true, value_name = "RUNNER ARGS")]
    pub runner_args: Vec<String>,
}

/// What a unit is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Its name, without `.service`.
    pub name: String,
    /// The account the runner runs as.
    pub user: String,
    /// The runner binary (absolute).
    pub exe: PathBuf,
    /// The runner's arguments, `--work-dir` included.
    pub args: Vec<String>,
    /// The runner's work directory (absolute).
    pub work_dir: PathBuf,
}

impl Unit {
    /// The unit for `args` (the runner's arguments), checked: no token in
    /// it, an absolute work directory (added when missing), names systemd
    /// takes.
    pub fn new(name: &str, user: &str, exe: PathBuf, args: &[String]) -> Result<Self, String> {
        let name = name.strip_suffix(".service").unwrap_or(name).to_string();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@\\".contains(&b)) {
            return Err(format!("`{name}` is not a unit name (letters, digits, and - _ . : @)"));
        }
        if user.is_empty() || !user.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("`{user}` is not a user name"));
        }
        if args.iter().any(|a| a == "--token" || a.starts_with("--token=")) {
            return Err("--token is refused: a unit file is readable by every user of this machine. Put the \
                        registration token in a file only root can read (install -m 0600 /dev/stdin \
                        /etc/viaduct/runner-token) and pass --token-file FILE"
                .into());
        }
        if !exe.is_absolute() {
            return Err(format!("{} is not an absolute path", exe.display()));
        }
        let mut args = args.to_vec();
        let given = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--work-dir") {
            Some("") => Some(args.get(i + 1).cloned().ok_or("--work-dir needs a directory".to_string())),
            Some(v) if v.starts_with('=') => Some(Ok(v[1..].to_string())),
            _ => None,
        });
        let work_dir = match given.transpose()? {
            Some(dir) => PathBuf::from(dir),
            None => {
                args.extend(["--work-dir".to_string(), DEFAULT_WORK_DIR.to_string()]);
                PathBuf::from(DEFAULT_WORK_DIR)
            }
        };
        if !work_dir.is_absolute() {
            return Err(format!("--work-dir {}: a service needs an absolute path", work_dir.display()));
        }
        if work_dir.to_str().is_none_or(|d| d.chars().any(char::is_control)) {
            return Err(format!("--work-dir {}: not a path a unit can name", work_dir.display()));
        }
        Ok(Self { name, user: user.to_string(), exe, args, work_dir })
    }

    /// The unit file's text.
    pub fn render(&self) -> String {
        let mut exec = quote(&self.exe.to_string_lossy());
        for a in &self.args {
            exec.push(' ');
            exec.push_str(&quote(a));
        }
        let work_dir = self.work_dir.to_string_lossy().replace('%', "%%");
        format!(
            "# Written by `viaduct-runner install` (viaduct-runner {version}): run it again to change this\n\
             # unit. A unit file is readable by every user: the registration token is in --token-file.\n\
             [Unit]\n\
             Description=Viaduct CI runner ({name})\n\
             After=network-online.target\n\
             Wants=network-online.target\n\
             \n\
             [Service]\n\
             Type=simple\n\
             User={user}\n\
             WorkingDirectory={work_dir}\n\
             ExecStart={exec}\n\
             {SETTINGS}\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            version = env!("CARGO_PKG_VERSION"),
            name = self.name,
            user = self.user,
        )
    }
}

/// The `[Service]` settings every runner unit has (after `ExecStart`).
pub const SETTINGS: &str = "\
# On stop, SIGTERM goes to the runner alone: it stops its jobs (SIGTERM, then SIGKILL after
# --kill-grace) and reports them; whatever is left in the unit's cgroup is killed after that.
# Jobs do not survive a restart: the server retries them on another runner (or this one).
KillMode=mixed
TimeoutStopSec=60s
Restart=on-failure
RestartSec=5s
# The runner puts each job and step in a cgroup of its own below the unit's.
Delegate=yes
LimitNOFILE=65536
# No sandboxing here: it would confine the jobs too. Run as root, the runner isolates each
# slot's jobs itself (own user, own cgroup, private /proc); as another user, jobs run as it.
";

/// `arg` as one word of an `ExecStart=` line: as is when it holds nothing
/// systemd reads specially, else double-quoted with C escapes; `$` and `%`
/// doubled either way (variables and specifiers are expanded in quotes
/// too).
pub fn quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@".contains(&b))
        // A leading special character is a prefix (`-`, `@`, `+`, `!`, `:`) only on the command
        // itself, but `;` and quotes are never plain.
        && !arg.starts_with([':', '@', '+']);
    if plain {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    for c in arg.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '$' => out.push_str("$$"),
            '%' => out.push_str("%%"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `viaduct-runner install`.
pub fn main(args: InstallArgs) -> ExitCode {
    match install(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("viaduct-runner install: {e}");
            ExitCode::from(2)
        }
    }
}

/// A service running as root must run a program only root can change:
/// the binary and every directory above it root-owned and not writable by
/// group or others (not `~/.cargo/bin/viaduct-runner`).
fn check_root_owned(exe: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for p in exe.ancestors() {
        let meta = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "a service running as root would run {}, but {} can be changed by another user than root: install \
                 the binary under /usr/local/bin (install -m 0755 {0} /usr/local/bin/) and run that one",
                exe.display(),
                p.display()
            ));
        }
    }
    Ok(())
}

fn install(args: InstallArgs) -> Result<(), String> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .map_err(|e| format!("cannot find this program's path: {e}"))?;
    let unit = Unit::new(&args.name, &args.user, exe, &args.runner_args)?;
    let text = unit.render();
    if args.print {
        print!("{text}");
        return Ok(());
    }
    let user = nix::unistd::User::from_name(&unit.user)
        .map_err(|e| format!("cannot look up the user {}: {e}", unit.user))?
        .ok_or_else(|| {
            format!("there is no user `{}`: create it first (useradd --system --create-home {0})", unit.user)
        })?;
    if !unit.args.iter().any(|a| a == "--token-file" || a.starts_with("--token-file=")) {
        eprintln!(
            "viaduct-runner install: note: no --token-file: the runner needs a registration token on its first \
             start (unless {} already holds its identity)",
            unit.work_dir.display()
        );
    }
    if user.uid.is_root() {
        check_root_owned(&unit.exe)?;
    }
    // The work directory, the service's user's — given only when made now
    // (an existing one, or a link, is never handed over: `--work-dir /var`).
    match std::fs::symlink_metadata(&unit.work_dir) {
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            if !meta.is_dir() || meta.uid() != user.uid.as_raw() {
                return Err(format!(
                    "{} exists and is not a directory of {}: pick a new --work-dir, or give it to {1} yourself",
                    unit.work_dir.display(),
                    unit.user
                ));
            }
        }
        Err(_) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&unit.work_dir)
                .map_err(|e| format!("cannot create {}: {e}", unit.work_dir.display()))?;
            std::os::unix::fs::lchown(&unit.work_dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .map_err(|e| format!("cannot give {} to {}: {e}", unit.work_dir.display(), unit.user))?;
        }
    }
    let path = args.unit_dir.join(format!("{}.service", unit.name));
    write_unit(&path, &text)?;
    println!("wrote {}", path.display());
    let commands = [vec!["daemon-reload".to_string()], vec!["enable".into(), "--now".into(), unit.name.clone()]];
    let show = |c: &Vec<String>| format!("systemctl {}", c.join(" "));
    if args.no_start {
        println!("not started (--no-start); to start it:");
        commands.iter().for_each(|c| println!("  {}", show(c)));
        return Ok(());
    }
    if let Some(why) = no_systemd() {
        println!("{why}: the unit is written but not started. On a machine running systemd:");
        commands.iter().for_each(|c| println!("  {}", show(c)));
        return Ok(());
    }
    for c in &commands {
        let status = Command::new("systemctl").args(c).status().map_err(|e| format!("{}: {e}", show(c)))?;
        if !status.success() {
            return Err(format!("{} failed ({status}); see `journalctl -u {}`", show(c), unit.name));
        }
    }
    println!("{} is enabled and started: systemctl status {0}; journalctl -u {0} -f", unit.name);
    Ok(())
}

/// Why systemd cannot be asked here, if it cannot.
fn no_systemd() -> Option<String> {
    // What sd_booted() checks: PID 1 is systemd.
    if !Path::new("/run/systemd/system").is_dir() {
        return Some("systemd is not running on this machine (PID 1 is not systemd)".into());
    }
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join("systemctl").is_file()));
    (!found).then(|| "systemctl is not installed".into())
}

/// Writes `path` (0644) whole or not at all.
fn write_unit(path: &Path, text: &str) -> Result<(), String> {
    let tmp = path.with_extension("service.tmp");
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(ToString::to_string).collect()
    }

    fn unit(a: &[&str]) -> Result<Unit, String> {
        Unit::new("viaduct-runner", "root", PathBuf::from("/usr/bin/viaduct-runner"), &args(a))
    }

    #[test]
    fn words_are_quoted_the_way_systemd_reads_them() {
        assert_eq!(quote("--labels"), "--labels");
        assert_eq!(quote("https://ci.example:7700,https://b:7700"), "https://ci.example:7700,https://b:7700");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("two words"), "\"two words\"");
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(quote("$HOME"), "\"$$HOME\"");
        assert_eq!(quote("100%"), "\"100%%\"");
        assert_eq!(quote("a;b"), "\"a;b\"");
        assert_eq!(quote(";"), "\";\"");
        assert_eq!(quote("line\nbreak\t\u{1}"), "\"line\\nbreak\\t\\x01\"");
        assert_eq!(quote("'single'"), "\"'single'\"");
        assert_eq!(quote("@x"), "\"@x\"");
    }

    #[test]
    fn the_unit_runs_this_binary_with_its_arguments_in_its_work_dir() {
        let u = unit(&["--server", "https://ci:7700", "--token-file", "/etc/viaduct/runner-token", "--env", "A=b c"])
            .unwrap();
        assert_eq!(u.work_dir, Path::new(DEFAULT_WORK_DIR));
        let text = u.render();
        let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            "ExecStart=/usr/bin/viaduct-runner --server https://ci:7700 --token-file /etc/viaduct/runner-token \
             --env \"A=b c\" --work-dir /var/lib/viaduct-runner"
        );
        for line in ["User=root", "WorkingDirectory=/var/lib/viaduct-runner", "KillMode=mixed", "Delegate=yes"] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(text.contains("[Install]\nWantedBy=multi-user.target\n"), "{text}");

        let u = unit(&["--work-dir=/srv/ci runner"]).unwrap();
        assert_eq!(u.work_dir, Path::new("/srv/ci runner"));
        assert!(u.render().contains("WorkingDirectory=/srv/ci runner\n"));
        assert!(u.render().contains("ExecStart=/usr/bin/viaduct-runner \"--work-dir=/srv/ci runner\"\n"));
        assert_eq!(unit(&["--work-dir", "/w"]).unwrap().args, args(&["--work-dir", "/w"]));
    }

    #[test]
    fn tokens_relative_dirs_and_odd_names_are_refused() {
        for bad in [&["--token", "vdr_x"][..], &["--token=vdr_x"], &["--work-dir", "rel"], &["--work-dir"]] {
            assert!(unit(bad).is_err(), "{bad:?}");
        }
        assert!(unit(&["--token", "x"]).unwrap_err().contains("--token-file"));
        let exe = || PathBuf::from("/usr/bin/viaduct-runner");
        assert!(Unit::new("a b", "root", exe(), &[]).is_err());
        assert!(Unit::new("x", "ro ot", exe(), &[]).is_err());
        assert!(Unit::new("x", "root", PathBuf::from("viaduct-runner"), &[]).is_err());
        assert_eq!(Unit::new("ci.service", "ci", exe(), &[]).unwrap().name, "ci");
        // The token file is fine: only its path is in the unit.
        assert!(unit(&["--token-file", "/etc/viaduct/runner-token"]).is_ok());
    }

    #[test]
    fn the_shipped_template_has_the_same_settings() {
        let template = include_str!("../../deploy/systemd/viaduct-runner.service");
        let settings = |text: &str| -> Vec<String> {
            let service = text.split("[Service]").nth(1).unwrap_or_default();
            let service = service.split("[Install]").next().unwrap_or_default();
            service
                .lines()
                .filter(|l| !l.starts_with('#') && l.contains('='))
                .filter(|l| {
                    let own = ["ExecStart=", "EnvironmentFile=", "WorkingDirectory=", "User=", "StateDirectory="];
                    !own.iter().any(|k| l.starts_with(k))
                })
                .map(str::to_string)
                .collect()
        };
        let ours = settings(&unit(&[]).unwrap().render());
        assert!(ours.contains(&"Delegate=yes".to_string()), "{ours:?}");
        assert_eq!(settings(template), ours, "deploy/systemd/viaduct-runner.service and SETTINGS differ");
    }

    /// `systemd-analyze verify` on a generated unit, when it is installed.
    #[test]
    fn systemd_accepts_the_unit() {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("systemd-analyze").is_file()));
        if !found {
            eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // An executable that exists, and arguments that need quoting.
        let exe = std::env::current_exe().unwrap();
        let u = Unit::new(
            "viaduct-runner-verify",
            "root",
            exe,
            &args(&["--server", "https://ci:7700", "--env", "A=b c $d 50%", "--work-dir", "/var/lib/x y"]),
        )
        .unwrap();
        let path = dir.path().join("viaduct-runner-verify.service");
        std::fs::write(&path, u.render()).unwrap();
        let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Lines about this unit are problems; others are about the host.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("viaduct-runner-verify")).collect();
        assert!(out.status.success() && ours.is_empty(), "{}\n{stderr}\n{}", out.status, u.render());
    }
}
