//! The `container-deploy` plugin end to end: published by the real server
//! with the first-party plugins, run by a real runner in a host job, driving
//! `podman` (through the plugin `exec` capability) against the Podman API
//! service `cargo xtask test` starts, with the busybox test image serving
//! HTTP on a published loopback port that the plugin's own HTTP health
//! check (WASI sockets, `allow: { network: true }`) and this test reach.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use viaduct_tests::{
    Runner, Server, container_socket, finished, output, podman, step_log, submit, test_image, v1, word,
};

/// A service name of this test process.
fn service(test: &str) -> String {
    format!("cd-{test}-{}", std::process::id())
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Removes every container of the service, also when the test fails (so
/// it never panics itself).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label=viaduct.service={}", self.0);
        let ids = output(Command::new("podman").args(["ps", "-a", "-q", "--filter", &filter]));
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = output(Command::new("podman").args(["rm", "-f", "-t", "0", id]));
        }
    }
}

/// What the service answers at `/` (its body), or `None` when nothing does.
fn answer(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_owned())
}

/// `{{.State.Running}} {{release label}}` of a container.
fn state(name: &str) -> String {
    podman(&[
        "container",
        "inspect",
        "--format",
        "{{.State.Running}} {{index .Config.Labels \"viaduct.release\"}}",
        name,
    ])
    .trim()
    .to_owned()
}

/// Names of the service's containers, sorted.
fn containers(service: &str) -> Vec<String> {
    let out = podman(&["ps", "-a", "--format", "{{.Names}}", "--filter", &format!("label=viaduct.service={service}")]);
    let mut names: Vec<String> = out.lines().map(String::from).collect();
    names.sort();
    names
}

/// A pipeline whose one step deploys `name` serving `body` on `port`
/// (`broken`: the container exits at once and never listens).
fn pipeline(name: &str, socket: &str, port: u16, body: &str, broken: bool) -> String {
    let command = if broken {
        r#"[sh, -c, "echo release-3 cannot start >&2; exit 3"]"#.to_owned()
    } else {
        // The body comes from the environment: it proves `env` reached the container.
        r#"[sh, -c, "mkdir -p /www && echo $BODY > /www/index.html && exec httpd -f -p 8080 -h /www"]"#.to_owned()
    };
    format!(
        r#"
jobs:
  deploy:
    steps:
      - uses: container-deploy@1
        id: deploy
        allow: {{ network: true }}
        with:
          name: {name}
          engine: podman
          host: unix://{socket}
          image: {image}
          ports: ["127.0.0.1:{port}:8080"]
          env: {{ BODY: {body}, SENTINEL: sentinel-{pid}-value }}
          command: {command}
          restart_policy: "{restart}"
          health: {{ http: "http://127.0.0.1:{port}/", retries: 50, interval: 200ms }}
          stop_timeout: 1s
"#,
        image = test_image(),
        pid = std::process::id(),
        restart = if broken { "no" } else { "unless-stopped" },
    )
}

/// Runs `yaml` to its end: the run and its deploy step.
async fn deploy(client: &viaduct_tests::Client, yaml: &str) -> (v1::Run, v1::Step) {
    let id = submit(client, yaml).await;
    let run = finished(client, &id).await;
    let step = run.jobs[0].steps[0].clone();
    (run, step)
}

fn outputs(step: &v1::Step) -> &HashMap<String, String> {
    &step.outputs
}

/// A host runner whose jobs run as its own user: the test's Podman socket
/// is root's (the slot users of a root runner could not open it). The plugin
/// reaches the engine through `host:`, so the runner needs no
/// `--container-socket`.
fn host_runner(server: &Server) -> Runner {
    Runner::start(server, "linux", 1, &["--shared-job-user"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_container_is_deployed_then_replaced_keeping_the_previous_release() {
    let Some(socket) = container_socket() else { return };
    let server = Server::with_plugins();
    let _runner = host_runner(&server);
    let client = server.client().await;
    let name = service("replace");
    let _cleanup = Cleanup(name.clone());
    let port = free_port();

    // v1: a first deploy.
    let (run, step) = deploy(&client, &pipeline(&name, &socket, port, "v1", false)).await;
    let log = step_log(&client, &step.id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{log}");
    let o = outputs(&step);
    assert_eq!((o["status"].as_str(), o["previous"].as_str()), ("deployed", ""));
    let first = o["release"].clone();
    assert!(!first.is_empty() && !o["container"].is_empty(), "{o:?}");
    assert!(o["switched_ms"].parse::<u64>().is_ok() && o["healthy_after_ms"].parse::<u64>().is_ok(), "{o:?}");
    assert_eq!(answer(port).as_deref(), Some("v1\n"));
    assert!(step.summary.starts_with(&format!("### Deployed `{name}`")), "{}", step.summary);

    // v2 replaces it: v1 is kept, stopped, as `<name>-previous`.
    let (run, step) = deploy(&client, &pipeline(&name, &socket, port, "v2", false)).await;
    let log = step_log(&client, &step.id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{log}");
    let o = outputs(&step);
    let second = o["release"].clone();
    assert_eq!((o["status"].as_str(), o["previous"].as_str()), ("deployed", first.as_str()));
    assert_ne!(second, first);
    assert_eq!(answer(port).as_deref(), Some("v2\n"));
    assert_eq!(containers(&name), [name.clone(), format!("{name}-previous")]);
    assert_eq!(state(&name), format!("true {second}"));
    assert_eq!(state(&format!("{name}-previous")), format!("false {first}"));
    // The environment reached the container through the CLI's environment,
    // never its command line or the step log.
    let sentinel = format!("sentinel-{}-value", std::process::id());
    assert_eq!(podman(&["exec", &name, "sh", "-c", "echo $SENTINEL"]).trim(), sentinel);
    assert!(log.contains("--env=SENTINEL") && !log.contains(&sentinel), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_failing_its_health_check_is_rolled_back() {
    let Some(socket) = container_socket() else { return };
    let server = Server::with_plugins();
    let _runner = host_runner(&server);
    let client = server.client().await;
    let name = service("rollback");
    let _cleanup = Cleanup(name.clone());
    let port = free_port();

    let (run, step) = deploy(&client, &pipeline(&name, &socket, port, "v2", false)).await;
    let log = step_log(&client, &step.id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{log}");
    let good = outputs(&step)["release"].clone();
    assert_eq!(answer(port).as_deref(), Some("v2\n"));

    // v3 exits at once: its health check fails, v2 comes back.
    let (run, step) = deploy(&client, &pipeline(&name, &socket, port, "v3", true)).await;
    let log = step_log(&client, &step.id).await;
    assert_eq!((word(run.status), word(step.status)), ("failure", "failure"), "{log}");
    assert!(step.message.contains("failed its health check"), "{}", step.message);
    assert!(step.message.contains(&format!("rolled back to the previous release `{good}`")), "{}", step.message);
    let o = outputs(&step);
    assert_eq!((o["status"].as_str(), o["release"].as_str()), ("rolled_back", good.as_str()), "{o:?}");
    assert!(!o["failed_release"].is_empty() && o["failed_release"] != good, "{o:?}");
    assert!(step.summary.starts_with(&format!("### Deploy of `{name}` failed")), "{}", step.summary);
    // What the failed container said is in the step log.
    assert!(log.contains("the last 50 log lines") && log.contains("release-3 cannot start"), "{log}");
    assert_eq!(answer(port).as_deref(), Some("v2\n"));
    // v2 runs as `<name>` again; v3 is gone.
    assert_eq!(containers(&name), std::slice::from_ref(&name));
    assert_eq!(state(&name), format!("true {good}"));
}
