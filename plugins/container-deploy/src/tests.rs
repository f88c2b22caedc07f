//! The flow against a fake engine: a small simulation of Podman's (or
//! Docker's) CLI that keeps containers by name, records every call with its
//! environment, and answers HTTP checks for the container that serves.
//!
//! Images say how their containers behave: one containing `broken` runs but
//! never answers its health check; one containing `crash` exits at once.

use std::{collections::BTreeMap, time::Duration};

use viaduct_plugin_sdk::{Meta, exec::Exit, log::Level};

use crate::{
    engine::Host,
    flow::{self, Report, Status},
    http::{HttpUrl, ProbeError},
    inputs::{self, With},
};

const SECRET: &str = "hunter2-database-password";

#[derive(Debug, Clone)]
struct FakeContainer {
    id: String,
    name: String,
    image: String,
    labels: BTreeMap<String, String>,
    running: bool,
    exit_code: i64,
    /// `--env` names, with the value the CLI's environment held.
    env: Vec<(String, String)>,
}

#[derive(Default)]
struct Fake {
    /// Programs that can be run.
    installed: Vec<&'static str>,
    containers: Vec<FakeContainer>,
    /// Every call: program and arguments.
    calls: Vec<Vec<String>>,
    /// The environment of every call.
    envs: Vec<Vec<(String, String)>>,
    logs: Vec<(Level, String)>,
    now: u64,
    ids: u32,
    /// Sockets are refused (no `allow: network`).
    no_network: bool,
    /// Subcommands that fail (exit 125).
    failing: Vec<&'static str>,
    /// The service whose `NAME` container answers HTTP checks.
    serves: String,
}

impl Fake {
    fn new() -> Self {
        Self { installed: vec!["podman", "docker"], now: 1_735_689_600_000, serves: "web".into(), ..Self::default() }
    }

    fn find(&self, name: &str) -> Option<&FakeContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut FakeContainer> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    /// A container as an earlier deploy left it.
    fn existing(mut self, name: &str, release: &str, image: &str, running: bool) -> Self {
        self.ids += 1;
        let service = name.trim_end_matches("-previous").trim_end_matches("-next").to_owned();
        self.containers.push(FakeContainer {
            id: format!("{:064x}", self.ids),
            name: name.into(),
            image: image.into(),
            labels: BTreeMap::from([("viaduct.service".into(), service), ("viaduct.release".into(), release.into())]),
            running,
            exit_code: if running { 0 } else { 137 },
            env: Vec::new(),
        });
        self
    }

    /// `name → (release, running)`, sorted by name.
    fn state(&self) -> Vec<(String, String, bool)> {
        let mut v: Vec<_> = self
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.labels.get("viaduct.release").cloned().unwrap_or_default(), c.running))
            .collect();
        v.sort();
        v
    }

    /// The subcommands called, after the global options: `["ps", "run", …]`.
    fn verbs(&self) -> Vec<String> {
        self.calls
            .iter()
            .map(|c| {
                c.iter()
                    .skip(1)
                    .find(|a| !a.starts_with("--url=") && !a.starts_with("--host="))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }

    fn calls_with(&self, verb: &str) -> Vec<Vec<String>> {
        self.calls.iter().zip(self.verbs()).filter(|(_, v)| v == verb).map(|(c, _)| c.clone()).collect()
    }

    fn log_text(&self) -> String {
        self.logs.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n")
    }

    fn inspect_json(&self, c: &FakeContainer) -> serde_json::Value {
        serde_json::json!({
            "Id": c.id,
            "Name": c.name,
            "State": {"Status": if c.running { "running" } else { "exited" }, "ExitCode": c.exit_code},
            // Like the engines, inspect shows the environment with its values.
            "Config": {"Image": c.image, "Labels": c.labels, "Env": c.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>()}
        })
    }

    fn engine(&mut self, args: &[String], env: &[(String, String)]) -> Exit {
        let ok = |out: String| Exit { code: 0, stdout: out.into_bytes() };
        let fail = Exit { code: 125, stdout: Vec::new() };
        let args: Vec<&str> =
            args.iter().map(String::as_str).filter(|a| !a.starts_with("--url=") && !a.starts_with("--host=")).collect();
        if self.failing.contains(&args[0]) {
            return fail;
        }
        match args.as_slice() {
            ["--version"] => ok("podman version 4.3.1\n".into()),
            ["ps", "-a", "--no-trunc", filter, "--format={{.Names}}"] => {
                let name = filter.strip_prefix("--filter=name=").unwrap();
                ok(self.containers.iter().filter(|c| c.name.contains(name)).map(|c| format!("{}\n", c.name)).collect())
            }
            ["container", "inspect", name] => match self.find(name) {
                Some(c) => ok(serde_json::to_string(&[self.inspect_json(c)]).unwrap()),
                None => fail,
            },
            ["stop", "-t", _, name] => match self.find_mut(name) {
                Some(c) => {
                    c.running = false;
                    c.exit_code = 143;
                    ok(format!("{name}\n"))
                }
                None => fail,
            },
            ["start", name] => match self.find_mut(name) {
                Some(c) => {
                    c.running = !c.image.contains("crash");
                    ok(format!("{name}\n"))
                }
                None => fail,
            },
            ["rename", from, to] => {
                if self.find(to).is_some() || self.find(from).is_none() {
                    return fail;
                }
                self.find_mut(from).unwrap().name = (*to).to_owned();
                ok(String::new())
            }
            ["rm", "-f", "-t", _, name] | ["rm", "-f", name] => {
                let before = self.containers.len();
                self.containers.retain(|c| c.name != *name);
                if self.containers.len() < before { ok(format!("{name}\n")) } else { fail }
            }
            ["pull", _] => ok("Writing manifest to image destination\n".into()),
            ["logs", "--tail=50", name] => match self.find(name) {
                // The app prints its configuration, secret included.
                Some(_) => ok(format!("starting\nconnecting with password {SECRET}\nfatal: no listener\n")),
                None => fail,
            },
            ["exec", name, ..] => match self.find(name) {
                Some(c) if c.running && !c.image.contains("broken") => ok(String::new()),
                _ => Exit { code: 1, stdout: Vec::new() },
            },
            ["run", "-d", rest @ ..] => {
                let mut c = FakeContainer {
                    id: String::new(),
                    name: String::new(),
                    image: String::new(),
                    labels: BTreeMap::new(),
                    running: true,
                    exit_code: 0,
                    env: Vec::new(),
                };
                let mut i = 0;
                while i < rest.len() && rest[i].starts_with("--") {
                    let (flag, value) = rest[i].split_once('=').expect("every flag as --flag=value");
                    match flag {
                        "--name" => c.name = value.into(),
                        "--label" => {
                            let (k, v) = value.split_once('=').unwrap();
                            c.labels.insert(k.into(), v.into());
                        }
                        "--env" => {
                            assert!(!value.contains('='), "an env value on the command line: {value}");
                            let v = env.iter().find(|(k, _)| k == value).expect("--env NAME has its value").1.clone();
                            c.env.push((value.into(), v));
                        }
                        "--restart" | "--publish" | "--volume" | "--network" => {}
                        other => panic!("unexpected run flag {other}"),
                    }
                    i += 1;
                }
                c.image = rest[i].into();
                if self.find(&c.name).is_some() {
                    return fail;
                }
                self.ids += 1;
                c.id = format!("{:064x}", self.ids);
                c.running = !c.image.contains("crash");
                c.exit_code = if c.running { 0 } else { 1 };
                let id = c.id.clone();
                self.containers.push(c);
                ok(format!("{id}\n"))
            }
            other => panic!("unexpected call {other:?}"),
        }
    }
}

impl Host for Fake {
    fn exec(
        &mut self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        _capture: bool,
    ) -> Result<Exit, String> {
        let mut call = vec![program.to_owned()];
        call.extend(args.iter().cloned());
        self.calls.push(call);
        self.envs.push(env.to_vec());
        self.now += 10;
        if !self.installed.contains(&program) {
            return Err(format!("`{program}` is not installed on this runner (not on its PATH)"));
        }
        Ok(self.engine(args, env))
    }

    fn http_get(&mut self, _url: &HttpUrl, _timeout: Duration) -> Result<u16, ProbeError> {
        self.now += 5;
        if self.no_network {
            return Err(ProbeError {
                message: "cannot connect: Permission denied".into(),
                denied: true,
                lookup: false,
            });
        }
        match self.find(&self.serves.clone()) {
            Some(c) if c.running && !c.image.contains("broken") => Ok(200),
            Some(c) if c.running => Ok(503),
            _ => Err(ProbeError { message: "cannot connect: Connection refused".into(), denied: false, lookup: false }),
        }
    }

    fn sleep(&mut self, d: Duration) {
        self.now += u64::try_from(d.as_millis()).unwrap();
    }

    fn now_ms(&mut self) -> u64 {
        self.now
    }

    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }
}

fn meta() -> Meta {
    Meta { commit: "0bcdef0123456789abcdef".into(), run_id: "7".into(), ..Meta::default() }
}

fn deploy(fake: &mut Fake, with: serde_json::Value) -> viaduct_plugin_sdk::Result<Report> {
    let w: With = serde_json::from_value(with).unwrap();
    let spec = inputs::validate(&w)?;
    flow::execute(fake, &spec, &meta())
}

/// What every scenario must hold: no secret anywhere it could leak.
fn no_secret_leaks(fake: &Fake, report: Option<&Report>) {
    for call in &fake.calls {
        assert!(call.iter().all(|a| !a.contains(SECRET)), "secret in argv: {call:?}");
    }
    assert!(!fake.log_text().contains(SECRET), "secret in the log:\n{}", fake.log_text());
    if let Some(r) = report {
        let result = crate::finish(r, &crate::engine::Redactor::new([SECRET.to_owned()]));
        let (outputs, summary, message) = match &result {
            Ok(o) => (o.outputs().to_vec(), o.summary_text().unwrap_or_default().to_owned(), String::new()),
            Err(e) => (e.outputs().to_vec(), e.summary_text().unwrap_or_default().to_owned(), e.message().to_owned()),
        };
        assert!(outputs.iter().all(|(_, v)| !v.contains(SECRET)), "{outputs:?}");
        assert!(!summary.contains(SECRET) && !message.contains(SECRET), "{summary}\n{message}");
        assert!(!format!("{r:?}").contains(SECRET), "{r:?}");
    }
}

fn web(image: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "web",
        "image": image,
        "ports": ["127.0.0.1:8080:80"],
        "env": {"DB_PASSWORD": SECRET, "MODE": "production"},
        "command": ["serve", "--port", "80"],
        "health": {"http": "http://127.0.0.1:8080/", "retries": 3, "interval": "1s"},
        "stop_timeout": "2s"
    })
}

fn outputs(r: &Report) -> BTreeMap<String, String> {
    let out = match crate::finish(r, &crate::engine::Redactor::default()) {
        Ok(o) => o.outputs().to_vec(),
        Err(e) => e.outputs().to_vec(),
    };
    out.into_iter().collect()
}

#[test]
fn first_deploy() {
    let mut fake = Fake::new();
    let r = deploy(&mut fake, web("app:1")).unwrap();
    assert_eq!((r.status, r.error.as_deref()), (Status::Deployed, None));
    assert_eq!(fake.state(), [("web".into(), "20250101T000000Z-0bcdef012345".into(), true)]);
    let o = outputs(&r);
    assert_eq!(o["status"], "deployed");
    assert_eq!(o["release"], "20250101T000000Z-0bcdef012345");
    assert_eq!((o["previous"].as_str(), o["image"].as_str()), ("", "app:1"));
    assert_eq!(o["container"], fake.find("web").unwrap().id);
    assert!(o["switched_ms"].parse::<u64>().unwrap() > 1_735_689_600_000);
    assert!(o["healthy_after_ms"].parse::<u64>().unwrap() < 1000);
    assert!(!o.contains_key("failed_release"));
    // The run: every value as --flag=value, the env by name, labels, the command after the image.
    let run = &fake.calls_with("run")[0];
    assert_eq!(
        run[1..],
        [
            "run",
            "-d",
            "--name=web",
            "--label=viaduct.service=web",
            "--label=viaduct.release=20250101T000000Z-0bcdef012345",
            "--label=viaduct.commit=0bcdef0123456789abcdef",
            "--restart=unless-stopped",
            "--publish=127.0.0.1:8080:80",
            "--env=DB_PASSWORD",
            "--env=MODE",
            "app:1",
            "serve",
            "--port",
            "80"
        ]
    );
    // The value reached the container through the CLI's environment, and only for `run`.
    assert_eq!(fake.find("web").unwrap().env[0], ("DB_PASSWORD".into(), SECRET.into()));
    let with_env: Vec<String> =
        fake.calls.iter().zip(&fake.envs).filter(|(_, e)| !e.is_empty()).map(|(c, _)| c[1].clone()).collect();
    assert_eq!(with_env, ["run"]);
    assert_eq!(fake.verbs(), ["--version", "ps", "run"].map(String::from), "healthy at once: no stop, no rename");
    let md = crate::summary(&r);
    assert!(md.starts_with("### Deployed `web`: release `20250101T000000Z-0bcdef012345`\n"), "{md}");
    assert!(md.contains("| Step | What | Took |") && md.contains("| run | `web`: release"), "{md}");
    no_secret_leaks(&fake, Some(&r));
}

#[test]
fn replace_keeps_exactly_one_previous() {
    let mut fake = Fake::new().existing("web", "r1", "app:1", true);
    let r = deploy(&mut fake, web("app:2")).unwrap();
    assert_eq!(r.status, Status::Deployed);
    let new = "20250101T000000Z-0bcdef012345".to_owned();
    assert_eq!(fake.state(), [("web".into(), new.clone(), true), ("web-previous".into(), "r1".into(), false)]);
    assert_eq!(outputs(&r)["previous"], "r1");
    // Stop before rename before run: a host port is bound once.
    let verbs = fake.verbs();
    let at = |v: &str| verbs.iter().position(|x| x == v).unwrap();
    assert!(at("stop") < at("rename") && at("rename") < at("run"), "{verbs:?}");
    assert_eq!(fake.calls_with("stop")[0][1..], ["stop", "-t", "2", "web"]);

    // The next deploy removes r1 and keeps the release it replaces.
    fake.now += 1000;
    let r = deploy(&mut fake, web("app:3")).unwrap();
    let newer = "20250101T000001Z-0bcdef012345".to_owned();
    assert_eq!(fake.state(), [("web".into(), newer, true), ("web-previous".into(), new.clone(), false)]);
    assert_eq!(outputs(&r)["previous"], new);
    assert!(fake.calls_with("rm").iter().any(|c| c[1..] == ["rm", "-f", "-t", "2", "web-previous"]));

    // The same commit within the same second gets a suffix.
    let r = deploy(&mut fake, web("app:4")).unwrap();
    assert_eq!(r.live.unwrap().id, "20250101T000001Z-0bcdef012345-2");
    no_secret_leaks(&fake, None);
}

#[test]
fn a_failed_health_check_rolls_back_to_the_previous_release() {
    let mut fake = Fake::new().existing("web", "r1", "app:1", true).existing("web-previous", "r0", "app:0", false);
    let r = deploy(&mut fake, web("app:2-broken")).unwrap();
    assert_eq!(r.status, Status::RolledBack);
    let e = crate::finish(&r, &crate::engine::Redactor::new([SECRET.to_owned()])).unwrap_err();
    let message = e.message();
    assert!(message.contains("(image `app:2-broken`) failed its health check"), "{message}");
    assert!(
        message.contains("rolled back to the previous release `r1` (image `app:1`), which is healthy"),
        "{message}"
    );
    assert!(!message.contains('\n'));
    // r1 runs again as `web`; r2 is gone; r0 was removed to make room (one previous is kept).
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true)]);
    let o: BTreeMap<String, String> = e.outputs().iter().cloned().collect();
    assert_eq!((o["status"].as_str(), o["release"].as_str(), o["image"].as_str()), ("rolled_back", "r1", "app:1"));
    assert_eq!(o["failed_release"], "20250101T000000Z-0bcdef012345");
    assert_eq!(o["previous"], "");
    assert_eq!(o["container"], fake.find("web").unwrap().id);
    // Three attempts, then the container's last log lines in the step log, masked.
    assert_eq!(fake.calls_with("logs").len(), 1);
    let log = fake.log_text();
    assert!(log.contains("connecting with password ***") && log.contains("fatal: no listener"), "{log}");
    assert!(log.contains("health check 2/3: HTTP 503"), "{log}");
    let md = e.summary_text().unwrap();
    assert!(
        md.starts_with("### Deploy of `web` failed: release `20250101T000000Z-0bcdef012345` rolled back to `r1`"),
        "{md}"
    );
    no_secret_leaks(&fake, Some(&r));

    // A container that exits fails at once, without using up the retries.
    let mut fake = Fake::new().existing("web", "r1", "app:1", true);
    let mut w = web("app:2-crash");
    w["health"]["retries"] = 30.into();
    let r = deploy(&mut fake, w).unwrap();
    assert_eq!(r.status, Status::RolledBack);
    assert!(r.error.as_deref().unwrap().contains("the container stopped (status exited, exit code 1)"), "{r:?}");
    // One inspect of `web` before, one after the first failed probe: stopped.
    assert_eq!(fake.calls_with("container").len(), 2, "{:?}", fake.verbs());
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true)]);
}

#[test]
fn a_failed_first_deploy_leaves_nothing() {
    let mut fake = Fake::new();
    let r = deploy(&mut fake, web("app:1-broken")).unwrap();
    assert_eq!(r.status, Status::Failed);
    assert!(r.error.as_deref().unwrap().contains("no previous release to roll back to: nothing runs as `web`"));
    assert!(fake.state().is_empty());
    assert_eq!(outputs(&r)["status"], "failed");
    no_secret_leaks(&fake, Some(&r));
}

#[test]
fn a_run_that_fails_rolls_back_too() {
    let mut fake = Fake::new().existing("web", "r1", "app:1", true);
    fake.failing.push("run");
    let r = deploy(&mut fake, web("app:2")).unwrap();
    assert_eq!(r.status, Status::RolledBack);
    assert!(r.error.as_deref().unwrap().contains("could not be started"), "{r:?}");
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true)]);
}

#[test]
fn rollback_swaps_the_previous_release_back() {
    let mut fake = Fake::new().existing("web", "r2", "app:2", true).existing("web-previous", "r1", "app:1", false);
    let r = deploy(&mut fake, serde_json::json!({"name": "web", "rollback": true, "health": "http://127.0.0.1:8080/"}))
        .unwrap();
    assert_eq!((r.status, r.error.as_deref()), (Status::RolledBack, None));
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true), ("web-previous".into(), "r2".into(), false)]);
    let o = outputs(&r);
    assert_eq!((o["status"].as_str(), o["release"].as_str(), o["previous"].as_str()), ("rolled_back", "r1", "r2"));
    assert!(crate::summary(&r).starts_with("### Rolled back `web` to release `r1`"));
    // A second rollback swaps back.
    deploy(&mut fake, serde_json::json!({"name": "web", "rollback": true})).unwrap();
    assert_eq!(fake.state(), [("web".into(), "r2".into(), true), ("web-previous".into(), "r1".into(), false)]);

    // A previous release that fails its check: everything goes back.
    let mut fake =
        Fake::new().existing("web", "r2", "app:2", true).existing("web-previous", "r1", "app:1-broken", false);
    let r = deploy(
        &mut fake,
        serde_json::json!({"name": "web", "rollback": true, "health": {"http": "http://x/", "retries": 2}}),
    )
    .unwrap();
    assert_eq!(r.status, Status::Failed);
    let message = r.error.clone().unwrap();
    assert!(message.starts_with("rollback failed: the previous release `r1`"), "{message}");
    assert!(message.contains("release `r2` (image `app:2`) runs again"), "{message}");
    assert_eq!(fake.state(), [("web".into(), "r2".into(), true), ("web-previous".into(), "r1".into(), false)]);

    // Nothing to roll back to: nothing changes.
    let mut fake = Fake::new().existing("web", "r2", "app:2", true);
    let e = deploy(&mut fake, serde_json::json!({"name": "web", "rollback": true})).unwrap_err();
    assert!(e.message().contains("nothing to roll back to"), "{e}");
    assert_eq!(fake.verbs(), ["--version", "ps", "container"].map(String::from));
}

#[test]
fn start_first_runs_beside_the_old_container_until_healthy() {
    let with = |image: &str| {
        serde_json::json!({
            "name": "web", "image": image, "strategy": "start-first",
            "health": {"command": ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:80/"], "retries": 2}
        })
    };
    let mut fake = Fake::new().existing("web", "r1", "app:1", true).existing("web-previous", "r0", "app:0", false);
    let r = deploy(&mut fake, with("app:2")).unwrap();
    assert_eq!(r.status, Status::Deployed);
    let new = "20250101T000000Z-0bcdef012345".to_owned();
    assert_eq!(fake.state(), [("web".into(), new, true), ("web-previous".into(), "r1".into(), false)]);
    // The check ran in web-next while web still ran; the old one was stopped only after.
    let verbs = fake.verbs();
    let at = |v: &str| verbs.iter().position(|x| x == v).unwrap();
    assert!(at("run") < at("exec") && at("exec") < at("stop"), "{verbs:?}");
    assert!(fake.calls_with("run")[0].contains(&"--name=web-next".to_owned()));
    assert_eq!(fake.calls_with("exec")[0][1..4], ["exec", "web-next", "wget"]);
    assert_eq!(outputs(&r)["previous"], "r1");

    // A failing one is removed, the old one never stopped.
    let mut fake = Fake::new().existing("web", "r1", "app:1", true);
    let r = deploy(&mut fake, with("app:2-broken")).unwrap();
    assert_eq!(r.status, Status::RolledBack);
    assert!(
        r.error.as_deref().unwrap().contains("the running release `r1` (image `app:1`) was left as it was"),
        "{r:?}"
    );
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true)]);
    assert!(fake.calls_with("stop").is_empty());
    assert_eq!(fake.calls_with("exec").len(), 2, "two retries");
}

#[test]
fn without_a_check_the_container_must_keep_running() {
    let mut fake = Fake::new();
    let r = deploy(&mut fake, serde_json::json!({"name": "web", "image": "app:1", "ports": ["80:80"]})).unwrap();
    assert_eq!(r.status, Status::Deployed);
    assert_eq!(fake.calls_with("container").len(), 2, "seen running twice");
    let mut fake = Fake::new();
    let r = deploy(&mut fake, serde_json::json!({"name": "web", "image": "app:1-crash", "ports": ["80:80"]})).unwrap();
    assert_eq!(r.status, Status::Failed);
}

#[test]
fn leftovers_and_foreign_containers() {
    // A start-first step killed midway left web-next: the next deploy removes it.
    let mut fake = Fake::new().existing("web", "r1", "app:1", true).existing("web-next", "r2", "app:2", true);
    deploy(&mut fake, web("app:3")).unwrap();
    assert!(fake.find("web-next").is_none());
    assert!(fake.log_text().contains("left over by an interrupted step"));

    // A container of the same name that is not ours is never touched.
    let mut fake = Fake::new();
    fake.containers.push(FakeContainer {
        id: "f".repeat(64),
        name: "web".into(),
        image: "postgres".into(),
        labels: BTreeMap::new(),
        running: true,
        exit_code: 0,
        env: Vec::new(),
    });
    let e = deploy(&mut fake, web("app:1")).unwrap_err();
    assert!(e.message().contains("that this plugin did not create"), "{e}");
    assert_eq!(fake.verbs(), ["--version", "ps", "container"].map(String::from));
}

#[test]
fn engines_and_hosts() {
    // Podman missing: docker, with --host=.
    let mut fake = Fake::new();
    fake.installed = vec!["docker"];
    let mut w = web("app:1");
    w["host"] = "tcp://10.0.0.5:2375".into();
    deploy(&mut fake, w.clone()).unwrap();
    assert_eq!(fake.calls[0][..2], ["podman", "--version"]);
    assert_eq!(fake.calls[1][..2], ["docker", "--version"]);
    assert!(fake.calls[2..].iter().all(|c| c[0] == "docker" && c[1] == "--host=tcp://10.0.0.5:2375"));

    // Podman: --url=, and a password in the URL never shown.
    let mut fake = Fake::new();
    w["host"] = "ssh://deploy:pa55word@10.0.0.5/run/podman/podman.sock".into();
    w["engine"] = "podman".into();
    let r = deploy(&mut fake, w.clone()).unwrap();
    assert!(fake.calls[1..].iter().all(|c| c[0] == "podman" && c[1].starts_with("--url=ssh://")));
    assert!(!fake.log_text().contains("pa55word") && !crate::summary(&r).contains("pa55word"));
    assert!(fake.log_text().contains("ssh://deploy:***@10.0.0.5"), "{}", fake.log_text());

    // Neither installed.
    let mut fake = Fake::new();
    fake.installed = vec![];
    let e = deploy(&mut fake, web("app:1")).unwrap_err();
    assert!(e.message().starts_with("cannot run podman or docker where this job's steps run"), "{e}");
    // The engine unreachable: nothing changed, and it says so.
    let mut fake = Fake::new();
    fake.failing.push("ps");
    let e = deploy(&mut fake, web("app:1")).unwrap_err();
    assert!(e.message().starts_with("cannot list the containers of the engine"), "{e}");
}

#[test]
fn an_http_check_without_the_network_changes_nothing() {
    let mut fake = Fake::new().existing("web", "r1", "app:1", true);
    fake.no_network = true;
    let e = deploy(&mut fake, web("app:2")).unwrap_err();
    assert!(e.message().contains("add `allow: { network: true }` to the step"), "{e}");
    assert_eq!(fake.verbs(), ["--version"].map(String::from));
    assert_eq!(fake.state(), [("web".into(), "r1".into(), true)]);
}

#[test]
fn hostile_inputs_never_reach_the_engine() {
    for (key, value) in [
        ("name", serde_json::json!("-x")),
        ("name", serde_json::json!("web; rm -rf /")),
        ("image", serde_json::json!("--privileged")),
        ("image", serde_json::json!("app:1 --privileged")),
        ("host", serde_json::json!("unix:///run/podman.sock --remote")),
        ("host", serde_json::json!("unix:///a b")),
        ("ports", serde_json::json!(["80:80 --rm"])),
        ("ports", serde_json::json!(["80:80", "--privileged"])),
        ("volumes", serde_json::json!(["-v/:/host"])),
        ("network", serde_json::json!("--privileged")),
        ("restart_policy", serde_json::json!("always --privileged")),
        ("env", serde_json::json!({"LD_PRELOAD": SECRET})),
        ("env", serde_json::json!({"DOCKER_HOST": SECRET})),
        ("env", serde_json::json!({"A B": SECRET})),
        ("health", serde_json::json!({"command": ["--privileged"]})),
    ] {
        let mut fake = Fake::new();
        let mut w = web("app:1");
        w[key] = value.clone();
        let e = deploy(&mut fake, w).unwrap_err();
        assert!(fake.calls.is_empty(), "{key}={value}: {:?}", fake.calls);
        assert!(!e.message().contains(SECRET), "{key}: {e}");
    }
}
