//! The command lines run on the runner (`ssh`, `scp`, `install`) and the
//! remote scripts, built from validated inputs; and the parsing of what the
//! hosts answer. Pure: nothing here runs anything.
//!
//! Every remote script runs as `sh -c '<script>'` whatever the remote
//! user's login shell, and quotes every value it uses with single quotes
//! ([`quote`]) even though the validated ones need none.

use viaduct_plugin_sdk::exec::Command;

use crate::target::Target;

/// The directory of releases under the base path.
pub const RELEASES: &str = "releases";
/// The link to the live release.
pub const CURRENT: &str = "current";
/// One JSON line per switch: deploys, rollbacks, undone deploys.
pub const LOG: &str = "deployments.log";
/// Lines of the log a rollback reads (the newest).
pub const LOG_TAIL: usize = 2000;
/// Exit code of the prepare script when the release exists already.
pub const EXISTS: i32 = 3;
/// Exit code of `ssh` when it failed itself (connection, authentication,
/// host key) rather than the remote command.
pub const SSH_FAILED: i32 = 255;

/// `s` single-quoted for a POSIX shell (`'` written as `'\''`), always.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// How `ssh` and `scp` are run: the files the key and the pinned host
/// keys are in (workspace-relative: the programs run in the workspace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    /// The private key file.
    pub key: String,
    /// The known_hosts file.
    pub known_hosts: String,
}

impl Ssh {
    /// The options of every `ssh` and `scp`: no configuration files, no
    /// prompts, only this key, only the pinned host keys.
    pub fn options(&self) -> Vec<String> {
        let mut out: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        for o in [
            "BatchMode=yes".to_owned(),
            "IdentitiesOnly=yes".to_owned(),
            format!("IdentityFile={}", self.key),
            "StrictHostKeyChecking=yes".to_owned(),
            format!("UserKnownHostsFile={}", self.known_hosts),
            "GlobalKnownHostsFile=/dev/null".to_owned(),
            "ConnectTimeout=10".to_owned(),
            "ServerAliveInterval=15".to_owned(),
            "ServerAliveCountMax=4".to_owned(),
        ] {
            out.push("-o".into());
            out.push(o);
        }
        out
    }

    /// `ssh … -p PORT -T -- user@host "sh -c '<script>'"`.
    pub fn ssh(&self, t: &Target, script: &str) -> Command {
        Command::new("ssh")
            .args(self.options())
            .args(["-p".to_owned(), t.port.to_string(), "-T".to_owned(), "--".to_owned(), t.ssh_destination()])
            .arg(format!("sh -c {}", quote(script)))
    }

    /// `ssh` as [`ssh`](Self::ssh), capturing stdout.
    pub fn ssh_capture(&self, t: &Target, script: &str) -> Command {
        self.ssh(t, script).capture_stdout()
    }

    /// `scp … -P PORT -r -p -q -- SOURCE user@host:DEST`.
    pub fn scp(&self, t: &Target, source: &str, dest: &str) -> Command {
        Command::new("scp")
            .args(self.options())
            .args(["-P".to_owned(), t.port.to_string()])
            .args(["-r", "-p", "-q", "--", source])
            .arg(t.scp_destination(dest))
    }
}

/// `install -d -m 700 -- DIR`: the key's directory, created by the job's
/// user before any secret is written.
pub fn install_dir(dir: &str) -> Command {
    Command::new("install").args(["-d", "-m", "700", "--", dir])
}

/// `install -m 600 /dev/null FILE`: an empty file only the job's user can
/// read, for the key to be written into.
pub fn install_empty_file(file: &str) -> Command {
    Command::new("install").args(["-m", "600", "--", "/dev/null", file])
}

/// The hidden directory a release is uploaded into before it is moved
/// into place.
pub fn upload_dir(release: &str) -> String {
    format!("{RELEASES}/.tmp-{release}")
}

/// Prepares `base` for `release`: creates `releases/`, refuses an existing
/// release (exit [`EXISTS`]), removes an abandoned upload of it (and, for a
/// single file, creates the directory the file goes into), and prints where
/// `current` points (empty when nowhere).
pub fn prepare(base: &str, release: &str, file: bool) -> String {
    let dir = format!("{RELEASES}/{release}");
    let tmp = upload_dir(release);
    let mkdir_tmp = if file { format!("mkdir -- {}; ", quote(&tmp)) } else { String::new() };
    format!(
        "set -e; mkdir -p -- {rel}; cd -- {base}; \
         if [ -e {dir} ] || [ -L {dir} ]; then echo {msg} >&2; exit {EXISTS}; fi; \
         rm -rf -- {tmp}; {mkdir_tmp}readlink {CURRENT} || true",
        rel = quote(&format!("{base}/{RELEASES}")),
        base = quote(base),
        dir = quote(&dir),
        msg = quote(&format!("release {release} already exists in {base}/{RELEASES}")),
        tmp = quote(&tmp),
    )
}

/// Where `scp` puts the source: the upload directory itself (a directory
/// source, which `scp -r` creates) or into it (a file).
pub fn upload_dest(base: &str, release: &str, file: bool) -> String {
    let tmp = format!("{base}/{}", upload_dir(release));
    if file { format!("{tmp}/") } else { tmp }
}

/// Moves a complete upload into place as `releases/<release>`.
pub fn finalize(base: &str, release: &str) -> String {
    format!(
        "set -e; cd -- {}; mv -T -- {} {}",
        quote(base),
        quote(&upload_dir(release)),
        quote(&format!("{RELEASES}/{release}"))
    )
}

/// Removes what an unfinished deploy left: the upload directory, and the
/// release itself when `release_too` (it was created by this deploy).
pub fn discard(base: &str, release: &str, release_too: bool) -> String {
    let mut s = format!("cd -- {} && rm -rf -- {}", quote(base), quote(&upload_dir(release)));
    if release_too {
        s.push(' ');
        s.push_str(&quote(&format!("{RELEASES}/{release}")));
    }
    s
}

/// Points `current` at `releases/<to>` atomically (a new link renamed over
/// it), then prints `switched=<date +%s%N>` and appends `log_line` to the
/// log (a failed append is a warning, not a failure: the switch is done).
pub fn switch(base: &str, to: &str, log_line: &str) -> String {
    let tmp = format!(".{CURRENT}-{to}");
    format!(
        "set -e; cd -- {base}; test -d {dir}; ln -sfn -- {dir} {tmp}; mv -T -- {tmp} {CURRENT}; \
         echo switched=$(date +%s%N); \
         printf '%s\\n' {line} >> {LOG} || echo {warn} >&2",
        base = quote(base),
        dir = quote(&format!("{RELEASES}/{to}")),
        tmp = quote(&tmp),
        line = quote(log_line),
        warn = quote(&format!("warning: cannot append to {base}/{LOG}")),
    )
}

/// Puts `current` back to the link target `previous` (as `readlink` gave
/// it), or removes it when there was none; appends `log_line`.
pub fn undo(base: &str, previous: Option<&str>, log_line: &str) -> String {
    let relink = match previous {
        Some(p) => format!("ln -sfn -- {} .{CURRENT}-undo; mv -T -- .{CURRENT}-undo {CURRENT}", quote(p)),
        None => format!("rm -f -- {CURRENT}"),
    };
    format!("set -e; cd -- {}; {relink}; printf '%s\\n' {} >> {LOG} || true", quote(base), quote(log_line))
}

/// Runs the user's command `cmd` in `dir` with `$VIADUCT_RELEASE` set.
pub fn user_command(dir: &str, release: &str, cmd: &str) -> String {
    format!("cd -- {} && VIADUCT_RELEASE={} && export VIADUCT_RELEASE && {cmd}", quote(dir), quote(release))
}

/// Prints what a rollback or pruning needs: `current=<link>`, the release
/// directories, the newest lines of the log — each part after a marker
/// line.
pub fn inspect(base: &str) -> String {
    format!(
        "cd -- {} || exit 1; echo '#current'; readlink {CURRENT} || true; echo '#releases'; \
         for d in {RELEASES}/*/; do [ -d \"$d\" ] && basename \"$d\"; done; echo '#log'; \
         tail -n {LOG_TAIL} {LOG} 2>/dev/null || true",
        quote(base)
    )
}

/// Removes old releases (names already checked, never current).
pub fn remove(base: &str, releases: &[String]) -> String {
    let dirs: Vec<String> = releases.iter().map(|r| quote(&format!("{RELEASES}/{r}"))).collect();
    format!("cd -- {} && rm -rf -- {}", quote(base), dirs.join(" "))
}

/// The release a link target names: `releases/<name>` (or
/// `<anything>/releases/<name>`) → `name`.
pub fn release_of(link: &str) -> Option<&str> {
    let link = link.trim_end_matches('/');
    let (dir, name) = link.rsplit_once('/')?;
    let parent = dir.rsplit('/').next()?;
    (parent == RELEASES && viaduct_plugin_common::release::check_name("release", name).is_ok()).then_some(name)
}

/// What [`inspect`] printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspected {
    /// Where `current` points (`None` when it does not exist).
    pub current: Option<String>,
    /// The release directories.
    pub releases: Vec<String>,
    /// The log's lines, oldest first.
    pub log: Vec<String>,
}

/// Parses [`inspect`]'s output.
pub fn parse_inspect(out: &str) -> Inspected {
    let mut parsed = Inspected::default();
    let mut part = "";
    for line in out.lines() {
        match line {
            "#current" | "#releases" | "#log" => part = line,
            _ if line.trim().is_empty() => {}
            _ => match part {
                "#current" => parsed.current = Some(line.trim().to_owned()),
                "#releases" => parsed.releases.push(line.trim().to_owned()),
                "#log" => parsed.log.push(line.to_owned()),
                _ => {}
            },
        }
    }
    parsed.releases.sort();
    parsed
}

/// The link `readlink current` printed (the last non-empty line), `None`
/// when there is none.
pub fn parse_previous(out: &str) -> Option<String> {
    out.lines().map(str::trim).rfind(|l| !l.is_empty()).map(str::to_owned)
}

/// The Unix milliseconds a switch printed (`switched=<ns>`), if the remote
/// `date` gave nanoseconds.
pub fn parse_switched(out: &str) -> Option<u64> {
    let ns = out.lines().find_map(|l| l.trim().strip_prefix("switched="))?;
    if ns.len() < 13 || !ns.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ns.parse::<u128>().ok().map(|ns| (ns / 1_000_000) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target;

    fn ssh() -> Ssh {
        Ssh { key: ".viaduct-scratch-ssh-ab12/key".into(), known_hosts: ".viaduct-scratch-ssh-ab12/known_hosts".into() }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("plain"), "'plain'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn ssh_and_scp_command_lines() {
        let t = target::parse("deploy@[::1]:2222").unwrap();
        let c = ssh().ssh(&t, "echo hi");
        assert_eq!(c.program(), "ssh");
        let args = c.get_args().join(" ");
        assert_eq!(
            args,
            "-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=.viaduct-scratch-ssh-ab12/key \
             -o StrictHostKeyChecking=yes -o UserKnownHostsFile=.viaduct-scratch-ssh-ab12/known_hosts \
             -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10 -o ServerAliveInterval=15 \
             -o ServerAliveCountMax=4 -p 2222 -T -- deploy@::1 sh -c 'echo hi'"
        );
        let c = ssh().scp(&t, "dist", "/srv/app/releases/.tmp-r1");
        let args = c.get_args();
        assert_eq!(c.program(), "scp");
        assert_eq!(args[args.len() - 8..].join(" "), "-P 2222 -r -p -q -- dist deploy@[::1]:/srv/app/releases/.tmp-r1");
        // The destination always follows `--`: nothing of a host reads as an option.
        for c in [ssh().ssh(&t, "x"), ssh().scp(&t, "dist", "/x")] {
            let at = c.get_args().iter().position(|a| a == "--").unwrap();
            assert!(c.get_args()[..at].iter().all(|a| !a.contains("deploy@")));
        }
        assert_eq!(install_dir(".k").get_args(), ["-d", "-m", "700", "--", ".k"]);
        assert_eq!(install_empty_file(".k/key").get_args(), ["-m", "600", "--", "/dev/null", ".k/key"]);
    }

    #[test]
    fn scripts_quote_everything() {
        let p = prepare("/srv/app", "r1", false);
        assert_eq!(
            p,
            "set -e; mkdir -p -- '/srv/app/releases'; cd -- '/srv/app'; if [ -e 'releases/r1' ] || [ -L 'releases/r1' ]; \
             then echo 'release r1 already exists in /srv/app/releases' >&2; exit 3; fi; rm -rf -- 'releases/.tmp-r1'; \
             readlink current || true"
        );
        assert!(prepare("/srv/app", "r1", true).contains("mkdir -- 'releases/.tmp-r1'; readlink"));
        assert_eq!(upload_dest("/srv/app", "r1", false), "/srv/app/releases/.tmp-r1");
        assert_eq!(upload_dest("/srv/app", "r1", true), "/srv/app/releases/.tmp-r1/");
        assert_eq!(finalize("/srv/app", "r1"), "set -e; cd -- '/srv/app'; mv -T -- 'releases/.tmp-r1' 'releases/r1'");
        let s = switch("/srv/app", "r1", r#"{"job":"it's"}"#);
        assert!(
            s.starts_with(
                "set -e; cd -- '/srv/app'; test -d 'releases/r1'; ln -sfn -- 'releases/r1' '.current-r1'; \
                 mv -T -- '.current-r1' current; echo switched=$(date +%s%N); "
            ),
            "{s}"
        );
        assert!(s.contains(r#"printf '%s\n' '{"job":"it'\''s"}' >> deployments.log"#), "{s}");
        let u = undo("/srv/app", Some("/opt/it's"), "{}");
        assert!(u.contains(r"ln -sfn -- '/opt/it'\''s' .current-undo; mv -T -- .current-undo current"), "{u}");
        assert!(undo("/srv/app", None, "{}").contains("rm -f -- current;"));
        assert_eq!(
            user_command("/srv/app/releases/r1", "r1", "systemctl restart app"),
            "cd -- '/srv/app/releases/r1' && VIADUCT_RELEASE='r1' && export VIADUCT_RELEASE && systemctl restart app"
        );
        assert_eq!(
            remove("/srv/app", &["a".into(), "b".into()]),
            "cd -- '/srv/app' && rm -rf -- 'releases/a' 'releases/b'"
        );
        assert_eq!(discard("/p", "r", true), "cd -- '/p' && rm -rf -- 'releases/.tmp-r' 'releases/r'");
        // The whole script is one single-quoted argument of `sh -c`.
        let c = ssh().ssh(&target::parse("u@h").unwrap(), &s);
        let last = c.get_args().last().unwrap();
        assert!(last.starts_with("sh -c 'set -e; cd -- '\\''/srv/app'\\''"), "{last}");
    }

    #[test]
    fn parsing_answers() {
        let out = "#current\nreleases/r2\n#releases\nr1\nr2\nr0\n#log\n{\"a\":1}\n\n{\"b\":2}\n";
        let i = parse_inspect(out);
        assert_eq!(i.current.as_deref(), Some("releases/r2"));
        assert_eq!(i.releases, ["r0", "r1", "r2"]);
        assert_eq!(i.log, ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(parse_inspect("#current\n#releases\n#log\n"), Inspected::default());
        assert_eq!(release_of("releases/r1"), Some("r1"));
        assert_eq!(release_of("/srv/app/releases/r1/"), Some("r1"));
        assert_eq!(release_of("/opt/other"), None);
        assert_eq!(release_of("releases/../x"), None);
        assert_eq!(parse_previous("releases/r1\n"), Some("releases/r1".into()));
        assert_eq!(parse_previous("\n"), None);
        assert_eq!(parse_switched("switched=1735689600123456789\n"), Some(1_735_689_600_123));
        assert_eq!(parse_switched("switched=1735689600%N"), None);
        assert_eq!(parse_switched("switched=\n"), None);
    }
}
