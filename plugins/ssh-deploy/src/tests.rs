//! The whole flow against a scripted [`Remote`] (every phase, failure and
//! rollback path), the outputs and the summary; and, when
//! `VIADUCT_SSH_DEPLOY_SSHD=1`, against a real `sshd` on this machine.

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;
use viaduct_plugin_sdk::{Error, Meta, Result, exec::Command, exec::Exit};

use super::*;
use crate::{
    flow::{Context, Phase, Remote, Report, Status, Upload},
    inputs::{Settings, With},
    remote::Ssh,
};

const NS: u64 = 1_000_000;

/// A scripted answer: `None` takes the default one.
type Answer = Box<dyn FnMut(Phase, &str, &Command) -> Option<Result<Exit>>>;

/// Answers commands by phase and host; records them.
struct Script {
    now: u64,
    calls: Vec<(Phase, String, Command)>,
    batches: Vec<(Phase, usize)>,
    slept: Vec<Duration>,
    answer: Answer,
}

fn ok(stdout: &str) -> Result<Exit> {
    Ok(Exit { code: 0, stdout: stdout.as_bytes().to_vec() })
}

fn code(code: i32) -> Result<Exit> {
    Ok(Exit { code, stdout: Vec::new() })
}

impl Script {
    /// Fails where `fail` says so; everything else succeeds as a host
    /// where `releases/old` is current would answer.
    fn new(fail: impl FnMut(Phase, &str, &Command) -> Option<Result<Exit>> + 'static) -> Self {
        Script { now: 1_000_000, calls: Vec::new(), batches: Vec::new(), slept: Vec::new(), answer: Box::new(fail) }
    }

    fn default_answer(&self, phase: Phase) -> Result<Exit> {
        match phase {
            Phase::Prepare => ok("releases/old\n"),
            Phase::Switch => ok(&format!("switched={}\n", (self.now + 5) * NS)),
            Phase::Inspect => {
                ok(&inspected("releases/old", &["old", "r0", "r1", "r2", "new"], &["r0", "r1", "r2", "old"]))
            }
            _ => ok(""),
        }
    }

    /// Each `run_all` call: its phase and how many commands.
    fn phases(&self) -> Vec<(Phase, usize)> {
        self.batches.clone()
    }

    fn hosts_of(&self, phase: Phase) -> Vec<String> {
        self.calls.iter().filter(|(p, _, _)| *p == phase).map(|(_, h, _)| h.clone()).collect()
    }
}

impl Remote for Script {
    fn run_all(&mut self, phase: Phase, cmds: &[(String, Command)]) -> Vec<Result<Exit>> {
        self.now += 10;
        self.batches.push((phase, cmds.len()));
        let mut out = Vec::new();
        for (label, cmd) in cmds {
            self.calls.push((phase, label.clone(), cmd.clone()));
            let answer = (self.answer)(phase, label, cmd).unwrap_or_else(|| self.default_answer(phase));
            out.push(answer);
        }
        out
    }

    fn now_ms(&mut self) -> u64 {
        self.now
    }

    fn sleep(&mut self, d: Duration) {
        self.now += d.as_millis() as u64;
        self.slept.push(d);
    }
}

/// What `remote::inspect` prints.
fn inspected(current: &str, releases: &[&str], deployed: &[&str]) -> String {
    let mut s = format!("#current\n{current}\n#releases\n");
    for r in releases {
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("#log\n");
    for r in deployed {
        s.push_str(&format!("{{\"time\":\"t\",\"action\":\"deploy\",\"release\":\"{r}\"}}\n"));
    }
    s
}

fn meta() -> Meta {
    Meta { commit: "0123456789abcdef".into(), run_id: "42".into(), job_name: "ship".into(), ..Meta::default() }
}

fn settings(v: serde_json::Value) -> Settings {
    let w: With = serde_json::from_value(v).unwrap();
    inputs::settings(&w, &meta(), Utc::from_unix(1_735_689_600)).unwrap()
}

fn ssh() -> Ssh {
    Ssh { key: ".viaduct-scratch-ssh-t/key".into(), known_hosts: ".viaduct-scratch-ssh-t/known_hosts".into() }
}

fn deploy(s: &Settings, script: &mut Script) -> Report {
    let upload = Upload { path: "dist".into(), file: false };
    let (meta, ssh) = (meta(), ssh());
    flow::execute(s, Some(&upload), &Context { meta: &meta, ssh: &ssh }, script)
}

fn three(extra: serde_json::Value) -> Settings {
    let mut v = json!({
        "source": "dist",
        "hosts": ["deploy@web-1", "deploy@web-2", "deploy@10.0.0.3:2222"],
        "path": "/srv/app",
        "release": "new",
        "restart": "systemctl restart app",
        "health": "curl -fsS localhost/health",
        "health_retries": 2,
        "health_interval": "500ms",
        "keep": 2,
    });
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    settings(v)
}

fn statuses(r: &Report) -> Vec<Status> {
    r.hosts.iter().map(|h| h.status).collect()
}

fn script_of(cmd: &Command) -> String {
    cmd.get_args().last().cloned().unwrap_or_default()
}

#[test]
fn a_rolling_deploy_switches_batch_by_batch_and_prunes() {
    let mut script = Script::new(|_, _, _| None);
    let r = deploy(&three(json!({"max_unavailable": 2})), &mut script);
    assert_eq!(r.failure, None);
    assert_eq!(statuses(&r), [Status::Switched; 3]);
    assert_eq!(
        script.phases(),
        [
            (Phase::Prepare, 3),
            (Phase::Upload, 3),
            (Phase::Finalize, 3),
            (Phase::Switch, 2),
            (Phase::Restart, 2),
            (Phase::Health, 2),
            (Phase::Switch, 1),
            (Phase::Restart, 1),
            (Phase::Health, 1),
            (Phase::Inspect, 3),
            (Phase::Prune, 3),
        ]
    );
    assert_eq!(script.hosts_of(Phase::Switch), ["deploy@web-1", "deploy@web-2", "deploy@10.0.0.3:2222"]);
    // keep 2 of old, r0, r1, r2, new: new and r2 are the newest; old is protected.
    assert_eq!(r.removed, ["r0", "r1"]);
    let prune = script_of(&script.calls.iter().find(|c| c.0 == Phase::Prune).unwrap().2);
    assert!(prune.contains("rm -rf -- '\\''releases/r1'\\'' '\\''releases/r0'\\''"), "{prune}");
    assert_eq!(r.hosts[0].previous_release(), Some("old"));
    let first = r.first_switched_ms().unwrap();
    assert_eq!(Some(first), r.hosts[0].switched_ms);
    assert!(r.hosts[2].switched_ms.unwrap() > first);

    // Every ssh and scp has the fixed options; the port goes to -p / -P.
    for (phase, host, cmd) in &script.calls {
        let args = cmd.get_args().join(" ");
        assert!(args.starts_with("-F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes"), "{phase:?}: {args}");
        assert!(args.contains("-o StrictHostKeyChecking=yes -o UserKnownHostsFile=.viaduct-scratch-ssh-t/known_hosts"));
        let port = if host.ends_with(":2222") { "2222" } else { "22" };
        let flag = if cmd.program() == "scp" { "-P" } else { "-p" };
        assert!(args.contains(&format!(" {flag} {port} ")), "{args}");
    }
    let upload = &script.calls.iter().find(|c| c.0 == Phase::Upload).unwrap().2;
    assert!(upload.get_args().join(" ").ends_with("-r -p -q -- dist deploy@web-1:/srv/app/releases/.tmp-new"));
    let restart = script_of(&script.calls.iter().find(|c| c.0 == Phase::Restart).unwrap().2);
    assert!(restart.contains("cd -- '\\''/srv/app/releases/new'\\'' && VIADUCT_RELEASE="), "{restart}");
    let switch = script_of(&script.calls.iter().find(|c| c.0 == Phase::Switch).unwrap().2);
    assert!(
        switch.contains(r#""action":"deploy","release":"new","previous":"old","commit":"0123456789abcdef""#),
        "{switch}"
    );

    let out = outputs(&r, None);
    let get = |k: &str| out.get(k).unwrap().to_owned();
    assert_eq!(get("release"), "new");
    assert_eq!(get("previous"), "old");
    assert_eq!(get("hosts"), "deploy@web-1,deploy@web-2,deploy@10.0.0.3:2222");
    assert_eq!(get("first_switched_ms"), first.to_string());
    assert_eq!(get("removed"), "r0,r1");
    let targets: serde_json::Value = serde_json::from_str(&get("targets")).unwrap();
    assert_eq!(
        targets[2],
        json!({"host": "deploy@10.0.0.3:2222", "status": "switched", "previous": "old", "switched_ms": r.hosts[2].switched_ms})
    );
    let md = out.summary_text().unwrap();
    assert!(
        md.starts_with(
            "### Deployed `new` to 3 hosts\n\n| Host | Status | Previous → release | Switched | Took | Notes |\n"
        ),
        "{md}"
    );
    assert!(md.contains("| `deploy@web-2` | ✅ switched | `old` → `new` | +"), "{md}");
    assert!(md.contains("Removed old releases: `r0`, `r1`."), "{md}");
}

#[test]
fn a_failed_health_check_rolls_back_every_switched_host_and_leaves_later_batches() {
    let mut script = Script::new(|phase, host, _| (phase == Phase::Health && host == "deploy@web-2").then(|| code(7)));
    let r = deploy(&three(json!({})), &mut script);
    assert_eq!(statuses(&r), [Status::RolledBack, Status::Failed, Status::Untouched]);
    let failure = r.failure.clone().unwrap();
    assert_eq!(
        failure,
        "the deploy failed on deploy@web-2: health check failed 3 times (last: health failed with exit code 7); \
         rolled back deploy@web-1, deploy@web-2"
    );
    // Tried 3 times (1 + 2 retries), 500 ms apart; only on the failing host.
    assert_eq!(script.hosts_of(Phase::Health), ["deploy@web-1", "deploy@web-2", "deploy@web-2", "deploy@web-2"]);
    assert_eq!(script.slept, [Duration::from_millis(500); 2]);
    // Both switched hosts go back to `old` and are restarted; the third is never touched after the upload.
    assert_eq!(script.hosts_of(Phase::Undo), ["deploy@web-1", "deploy@web-2"]);
    assert_eq!(script.hosts_of(Phase::UndoRestart), ["deploy@web-1", "deploy@web-2"]);
    let undo = script_of(&script.calls.iter().find(|c| c.0 == Phase::Undo).unwrap().2);
    assert!(undo.contains("ln -sfn -- '\\''releases/old'\\'' .current-undo; mv -T -- .current-undo current"), "{undo}");
    assert!(undo.contains(r#""action":"undo","release":"old","previous":"new""#), "{undo}");
    let after_upload: Vec<&(Phase, String, Command)> =
        script.calls.iter().filter(|c| !matches!(c.0, Phase::Prepare | Phase::Upload | Phase::Finalize)).collect();
    assert!(after_upload.iter().all(|c| c.1 != "deploy@10.0.0.3:2222"));
    assert!(!script.calls.iter().any(|c| c.0 == Phase::Prune), "no pruning after a failure");
    assert_eq!(r.hosts[1].note.as_deref(), Some("rolled back to old"));

    let out = outputs(&r, None);
    assert_eq!(out.get("hosts"), Some(""));
    let targets: serde_json::Value = serde_json::from_str(out.get("targets").unwrap()).unwrap();
    let words: Vec<&str> = targets.as_array().unwrap().iter().map(|t| t["status"].as_str().unwrap()).collect();
    assert_eq!(words, ["rolled_back", "failed", "untouched"]);
    assert_eq!(targets[2]["switched_ms"], serde_json::Value::Null);
    assert!(out.get("first_switched_ms").is_some_and(|v| !v.is_empty()));
    let md = out.summary_text().unwrap();
    assert!(md.starts_with("### Deploy of `new` failed\n\n**the deploy failed on deploy@web"), "{md}");
    assert!(md.contains("| `deploy@10.0.0.3:2222` | untouched | `old` → `new` |"), "{md}");
}

#[test]
fn a_failed_switch_is_undone_too_and_a_failed_undo_is_reported() {
    let mut script = Script::new(|phase, host, _| match (phase, host) {
        (Phase::Switch, "deploy@web-2") => Some(code(255)),
        (Phase::Undo, "deploy@web-1") => Some(code(1)),
        _ => None,
    });
    let r = deploy(&three(json!({"max_unavailable": 3, "restart": null, "health": null})), &mut script);
    assert_eq!(statuses(&r), [Status::Failed, Status::Failed, Status::RolledBack]);
    let failure = r.failure.unwrap();
    assert!(failure.starts_with("the deploy failed on deploy@web-2: switch: ssh failed (exit code 255"), "{failure}");
    assert!(failure.ends_with("rolled back deploy@web-2, deploy@10.0.0.3:2222; could NOT roll back deploy@web-1"));
    assert_eq!(r.hosts[0].note.as_deref(), Some("rollback failed: rollback failed with exit code 1"));
    assert!(!script.calls.iter().any(|c| c.0 == Phase::Restart), "no restart once a switch failed");
}

#[test]
fn an_existing_release_stops_everything_before_the_upload() {
    let mut script =
        Script::new(|phase, host, _| (phase == Phase::Prepare && host == "deploy@web-2").then(|| code(remote::EXISTS)));
    let r = deploy(&three(json!({})), &mut script);
    assert_eq!(statuses(&r), [Status::Untouched, Status::Failed, Status::Untouched]);
    assert_eq!(r.failure.as_deref(), Some("the upload failed on deploy@web-2: the release already exists there"));
    assert_eq!(script.phases(), [(Phase::Prepare, 3), (Phase::Discard, 2)]);
    let discard = script_of(&script.calls.last().unwrap().2);
    assert!(discard.ends_with("rm -rf -- '\\''releases/.tmp-new'\\'''"), "only the upload: {discard}");
}

#[test]
fn a_failed_upload_or_move_removes_what_was_uploaded() {
    let mut script = Script::new(|phase, host, _| (phase == Phase::Upload && host == "deploy@web-1").then(|| code(1)));
    let r = deploy(&three(json!({})), &mut script);
    assert_eq!(r.failure.as_deref(), Some("the upload failed on deploy@web-1: upload failed with exit code 1"));
    assert_eq!(script.phases(), [(Phase::Prepare, 3), (Phase::Upload, 3), (Phase::Discard, 3)]);

    let mut script = Script::new(|phase, host, _| {
        (phase == Phase::Finalize && host == "deploy@web-1").then(|| Err(Error::msg("`ssh` is not installed")))
    });
    let r = deploy(&three(json!({})), &mut script);
    assert_eq!(r.failure.as_deref(), Some("the upload failed on deploy@web-1: finalize: `ssh` is not installed"));
    let discards: Vec<String> =
        script.calls.iter().filter(|c| c.0 == Phase::Discard).map(|c| script_of(&c.2)).collect();
    assert!(!discards[0].contains("'releases/new'"), "not moved into place on web-1: {}", discards[0]);
    assert!(discards[1].ends_with("'\\''releases/new'\\'''"), "{}", discards[1]);
    assert_eq!(statuses(&r), [Status::Failed, Status::Untouched, Status::Untouched]);
}

#[test]
fn a_first_deploy_that_fails_removes_current_again() {
    let mut script = Script::new(|phase, _, _| match phase {
        Phase::Prepare => Some(ok("")),
        Phase::Restart => Some(code(3)),
        _ => None,
    });
    let r = deploy(&three(json!({"hosts": "deploy@web-1"})), &mut script);
    assert_eq!(statuses(&r), [Status::Failed]);
    let undo = script_of(&script.calls.iter().find(|c| c.0 == Phase::Undo).unwrap().2);
    assert!(undo.contains("rm -f -- current;"), "{undo}");
    assert!(script.hosts_of(Phase::UndoRestart).is_empty(), "nothing to restart");
    assert_eq!(outputs(&r, None).get("previous"), Some(""));
}

#[test]
fn rollback_goes_back_one_deploy_per_host() {
    let mut script = Script::new(|phase, host, _| match (phase, host) {
        (Phase::Inspect, "deploy@web-1") => Some(ok(&inspected("releases/r2", &["r1", "r2"], &["r1", "r2"]))),
        (Phase::Inspect, _) => {
            Some(ok(&inspected("/srv/app/releases/r2", &["r0", "r1", "r2"], &["r0", "r2", "r1", "r2"])))
        }
        _ => None,
    });
    let s = three(json!({"rollback": true, "source": null, "release": null, "health": null}));
    let (meta, ssh) = (meta(), ssh());
    let r = flow::execute(&s, None, &Context { meta: &meta, ssh: &ssh }, &mut script);
    assert_eq!(r.failure, None);
    assert_eq!(r.release.as_deref(), Some("r1"));
    assert_eq!(r.hosts.iter().map(|h| h.to.clone().unwrap()).collect::<Vec<_>>(), ["r1", "r1", "r1"]);
    assert_eq!(
        script.phases(),
        [
            (Phase::Inspect, 3),
            (Phase::Switch, 1),
            (Phase::Restart, 1),
            (Phase::Switch, 1),
            (Phase::Restart, 1),
            (Phase::Switch, 1),
            (Phase::Restart, 1),
        ]
    );
    let switch = script_of(&script.calls[3].2);
    assert!(
        switch.contains("'\\''releases/r1'\\''")
            && switch.contains(r#""action":"rollback","release":"r1","previous":"r2""#),
        "{switch}"
    );
    let md = summary(&r, None);
    assert!(md.starts_with("### Rolled back 3 hosts"), "{md}");
    assert!(md.contains("`r2` → `r1`"), "{md}");

    // Nothing to go back to on one host: nothing is switched anywhere.
    let mut script = Script::new(|phase, host, _| match (phase, host) {
        (Phase::Inspect, "deploy@web-2") => Some(ok(&inspected("releases/r1", &["r1"], &["r1"]))),
        (Phase::Inspect, _) => Some(ok(&inspected("releases/r2", &["r1", "r2"], &["r1", "r2"]))),
        _ => None,
    });
    let r = flow::execute(&s, None, &Context { meta: &meta, ssh: &ssh }, &mut script);
    assert_eq!(
        r.failure.as_deref(),
        Some("the rollback failed on deploy@web-2: no earlier release than `r1` is left to roll back to")
    );
    assert_eq!(statuses(&r), [Status::Untouched, Status::Failed, Status::Untouched]);
    assert_eq!(script.phases(), [(Phase::Inspect, 3)]);
}

#[test]
fn rollback_targets_and_prune_plans() {
    let seen = remote::parse_inspect(&inspected("releases/c", &["a", "b", "c"], &["a", "b", "c"]));
    assert_eq!(flow::rollback_target(&seen).unwrap(), "b");
    let none = remote::parse_inspect("#current\n#releases\n#log\n");
    assert!(flow::rollback_target(&none).unwrap_err().contains("no `current` release"));
    let odd = remote::parse_inspect("#current\n/opt/app\n#releases\n#log\n");
    assert!(flow::rollback_target(&odd).unwrap_err().contains("not to `releases/<release>`"));

    let seen =
        remote::parse_inspect(&inspected("releases/b", &["a", "b", "c", "d", "odd name", "e"], &["a", "b", "c", "d"]));
    // Newest: e (just deployed, no log line yet counts as oldest but is protected), d, c, b, a.
    let plan = flow::prune_plan(&seen, 1, "e", Some("d"));
    assert_eq!(plan.into_iter().collect::<BTreeSet<_>>(), ["a", "c"].into_iter().map(String::from).collect());
}

#[test]
fn describe_shows_the_remote_part() {
    let t = target::parse("u@h").unwrap();
    assert_eq!(describe(&ssh().ssh(&t, "echo 'x'")), r"sh -c 'echo '\''x'\'''");
    assert_eq!(describe(&ssh().scp(&t, "dist", "/p")), "scp -r -p dist u@h:/p");
}

/// A real `sshd` on 127.0.0.1, root's own: the scripts, the quoting and
/// `scp` as they really behave. Needs `sshd`, `ssh-keygen`, root and
/// `VIADUCT_SSH_DEPLOY_SSHD=1`.
#[test]
fn against_a_real_sshd() {
    if std::env::var_os("VIADUCT_SSH_DEPLOY_SSHD").is_none() {
        eprintln!("skipped: set VIADUCT_SSH_DEPLOY_SSHD=1 to run against a local sshd");
        return;
    }
    real::run();
}

mod real {
    use std::{
        path::{Path, PathBuf},
        process::{Child, Stdio},
        time::Duration,
    };

    use super::*;

    /// Runs the commands as the runner would: at once, in the workspace,
    /// with a fixed environment; stdout captured.
    struct Processes {
        workspace: PathBuf,
        home: PathBuf,
    }

    impl Remote for Processes {
        fn run_all(&mut self, phase: Phase, cmds: &[(String, Command)]) -> Vec<Result<Exit>> {
            let children: Vec<std::io::Result<Child>> = cmds
                .iter()
                .map(|(label, cmd)| {
                    eprintln!("[{label}] {} {}", phase.name(), describe(cmd));
                    std::process::Command::new(cmd.program())
                        .args(cmd.get_args())
                        .current_dir(&self.workspace)
                        .env_clear()
                        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                        .env("HOME", &self.home)
                        .stdout(Stdio::piped())
                        .spawn()
                })
                .collect();
            children
                .into_iter()
                .map(|c| {
                    let out = c?.wait_with_output()?;
                    eprint!("{}", String::from_utf8_lossy(&out.stdout));
                    Ok(Exit { code: out.status.code().unwrap_or(128), stdout: out.stdout })
                })
                .collect()
        }

        fn now_ms(&mut self) -> u64 {
            unix_ms(std::time::SystemTime::now())
        }

        fn sleep(&mut self, d: Duration) {
            std::thread::sleep(d);
        }
    }

    fn sh(cmd: &str) {
        let status = std::process::Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(status.success(), "{cmd}");
    }

    struct Sshd(Child, PathBuf);

    impl Drop for Sshd {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    pub fn run() {
        let root = std::env::temp_dir().join(format!("viaduct-ssh-deploy-sshd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (etc, ws, home, srv) = (root.join("etc"), root.join("ws"), root.join("home"), root.join("srv"));
        for d in [&etc, &ws, &home, &srv] {
            std::fs::create_dir_all(d).unwrap();
        }
        let e = etc.display();
        sh(&format!("ssh-keygen -q -t ed25519 -N '' -f {e}/host && ssh-keygen -q -t ed25519 -N '' -f {e}/client"));
        sh(&format!("cp {e}/client.pub {e}/authorized_keys && mkdir -p /run/sshd"));
        let port = 20000 + (std::process::id() % 20000) as u16;
        std::fs::write(
            etc.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {e}/host\nAuthorizedKeysFile {e}/authorized_keys\n\
                 PidFile {e}/sshd.pid\nStrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 Subsystem sftp /usr/lib/openssh/sftp-server\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(etc.join("sshd_config"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _sshd = Sshd(child, root.clone());
        std::thread::sleep(Duration::from_millis(500));
        let host_pub = std::fs::read_to_string(etc.join("host.pub")).unwrap();
        let known_hosts =
            format!("[127.0.0.1]:{port} {}", host_pub.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
        let key = std::fs::read_to_string(etc.join("client")).unwrap();
        let secrets = inputs::Secrets { key, known_hosts: known_hosts + "\n" };
        std::fs::create_dir_all(ws.join("dist/sub")).unwrap();
        std::fs::write(ws.join("dist/index.html"), "v1").unwrap();
        std::fs::write(ws.join("dist/sub/it's.txt"), "quoted").unwrap();

        let mut remote = Processes { workspace: ws.clone(), home };
        let path = srv.join("my app's").display().to_string().replace(['\'', ' '], "_");
        let host = format!("root@127.0.0.1:{port}");
        let health_file = srv.join("healthy");
        let base = json!({
            "source": "dist",
            "hosts": [host],
            "path": path,
            "restart": "echo restarted > restarted.txt",
            "health": format!("test -f {}", health_file.display()),
            "health_retries": 1,
            "health_interval": "100ms",
            "keep": 2,
        });
        let step = |remote: &mut Processes, extra: serde_json::Value| -> Report {
            let mut v = base.clone();
            for (k, val) in extra.as_object().unwrap() {
                v[k] = val.clone();
            }
            let s = settings(v);
            let scanned = match &s.mode {
                Mode::Deploy { source, .. } => Some(source::scan(&ws, source).unwrap()),
                Mode::Rollback => None,
            };
            let install = |cmd: &Command| -> Result<()> {
                let st = std::process::Command::new(cmd.program()).args(cmd.get_args()).current_dir(&ws).status()?;
                ensure!(st.success(), "install failed");
                Ok(())
            };
            let dir = keys::KeyDir::create(&ws, &keys::random_suffix(), &secrets, install).unwrap();
            let ssh = dir.ssh();
            let meta = meta();
            let r = flow::execute(&s, scanned.as_ref().map(|s| &s.upload), &Context { meta: &meta, ssh: &ssh }, remote);
            dir.remove().unwrap();
            r
        };
        let current = |p: &str| std::fs::read_to_string(Path::new(p).join("current/index.html")).unwrap_or_default();

        std::fs::write(&health_file, "").unwrap();
        let r1 = step(&mut remote, json!({"release": "r1"}));
        assert_eq!(r1.failure, None, "{r1:#?}");
        assert_eq!(current(&path), "v1");
        assert_eq!(std::fs::read_to_string(Path::new(&path).join("releases/r1/sub/it's.txt")).unwrap(), "quoted");
        assert_eq!(std::fs::read_to_string(Path::new(&path).join("releases/r1/restarted.txt")).unwrap(), "restarted\n");
        assert_eq!(std::fs::read_link(Path::new(&path).join("current")).unwrap(), Path::new("releases/r1"));
        assert!(r1.hosts[0].switched_ms.is_some());
        let e = step(&mut remote, json!({"release": "r1"}));
        assert!(e.failure.unwrap().contains("already exists"));

        std::fs::write(ws.join("dist/index.html"), "v2").unwrap();
        let r2 = step(&mut remote, json!({"release": "r2"}));
        assert_eq!((r2.failure.as_deref(), current(&path).as_str()), (None, "v2"));
        assert_eq!(r2.hosts[0].previous_release(), Some("r1"));

        // Unhealthy: switched, then put back to r2.
        std::fs::remove_file(&health_file).unwrap();
        std::fs::write(ws.join("dist/index.html"), "v3").unwrap();
        let r3 = step(&mut remote, json!({"release": "r3"}));
        assert!(r3.failure.as_deref().unwrap().contains("health check failed 2 times"), "{r3:#?}");
        assert_eq!(statuses(&r3), [Status::Failed]);
        assert_eq!(current(&path), "v2");

        // A file source, then pruning (keep 2: r1 goes, r3 was never live but is newer).
        std::fs::write(&health_file, "").unwrap();
        let r4 = step(&mut remote, json!({"release": "r4", "source": "dist/index.html"}));
        assert_eq!(r4.failure, None, "{r4:#?}");
        assert_eq!(current(&path), "v3");
        assert_eq!(r4.removed, ["r1"]);

        // Rollback: back to r3? No: r3 was deployed but undone; the deploy before r4 is r3 (on disk).
        let back = step(&mut remote, json!({"rollback": true, "source": null}));
        assert_eq!(back.failure, None, "{back:#?}");
        assert_eq!(back.release.as_deref(), Some("r3"));
        let log = std::fs::read_to_string(Path::new(&path).join("deployments.log")).unwrap();
        let actions: Vec<String> =
            log.lines().map(|l| serde_json::from_str::<flow::Record>(l).unwrap().action).collect();
        assert_eq!(actions, ["deploy", "deploy", "deploy", "undo", "deploy", "rollback"]);
        assert!(
            std::fs::read_dir(&ws).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".viaduct-scratch-ssh-"))
        );
    }
}
