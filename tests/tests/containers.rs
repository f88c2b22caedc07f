//! The container executor against a real Podman (started by `cargo xtask
//! test`), with a busybox image built offline.

use viaduct_tests::{
    Runner, Server, container_socket, containers_of, finished, output, podman, run_where, step_log, submit, test_image,
    test_registry, v1, wait_until, word,
};

fn container_runner(server: &Server, slots: u32, extra: &[&str]) -> Option<Runner> {
    let socket = container_socket()?;
    let mut args = vec!["--container-socket", socket.as_str()];
    args.extend_from_slice(extra);
    Some(Runner::start(server, "linux", slots, &args))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_run_in_the_image_and_share_the_workspace() {
    let server = Server::start();
    let Some(_runner) = container_runner(&server, 1, &[]) else { return };
    let client = server.client().await;
    let yaml = format!(
        r#"
jobs:
  build:
    image: {image}
    env: {{ GREETING: hello }}
    steps:
      - run: echo "$GREETING from $(cat /etc/hostname 2>/dev/null || hostname) in $(pwd) as $(id -u)"; echo data > made.txt
      - run: cat /workspace/made.txt; ls /bin/busybox
        env: {{ STEP_VAR: s }}
      - run: echo "step $STEP_VAR"; exit 3
      - run: echo never
"#,
        image = test_image()
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    assert_eq!(word(run.status), "failure");
    let first = step_log(&client, &steps[0].id).await;
    assert!(first.starts_with("hello from ") && first.ends_with(" in /workspace as 0\n"), "{first}");
    assert_eq!(step_log(&client, &steps[1].id).await, "data\n/bin/busybox\n");
    assert_eq!((word(steps[2].status), steps[2].exit_code), ("failure", Some(3)));
    assert_eq!(step_log(&client, &steps[2].id).await, "step \n", "step env does not leak into the next step");
    assert_eq!(word(steps[3].status), "skipped");
    assert_eq!(run.jobs[0].image, test_image());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_users_networks_and_services_in_containers() {
    let server = Server::start();
    let Some(runner) = container_runner(&server, 2, &[]) else { return };
    let client = server.client().await;
    client
        .secrets()
        .set(v1::SetSecretRequest { name: "API_KEY".into(), value: "k3y-v4lue".into(), ..Default::default() })
        .await
        .unwrap();
    let image = test_image();
    let yaml = format!(
        r#"
jobs:
  secret:
    image: {{ name: "{image}", user: "65534" }}
    secrets: [API_KEY]
    steps:
      - run: echo "key=$API_KEY uid=$(id -u)"; [ "${{API_KEY#k3y-}}" = v4lue ]
  offline:
    image: {image}
    network: none
    steps:
      - run: if wget -q -T 2 -O - http://example.invalid/ 2>/dev/null; then exit 1; fi; ls /sys/class/net
  with-service:
    image: {image}
    services:
      web:
        image: {image}
        command: [sh, -c, "mkdir -p /srv && echo served-by-web > /srv/index.html && exec httpd -f -p 8080 -h /srv"]
    steps:
      - run: for i in $(seq 1 50); do wget -q -O - http://web:8080/ && exit 0; sleep 0.1; done; exit 1
"#
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}\n{}", runner.log());
    assert_eq!(step_log(&client, &format!("{id}.1.1")).await, "key=*** uid=65534\n");
    assert_eq!(step_log(&client, &format!("{id}.2.1")).await, "lo\n", "network: none has only loopback");
    assert_eq!(step_log(&client, &format!("{id}.3.1")).await, "served-by-web\n");
    // Removed by the job's teardown, which follows the report of its end.
    let runner_id = run.jobs[0].runner_id.clone();
    wait_until("the job and service containers to be removed", || containers_of(&runner_id).is_empty().then_some(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_and_cancels_stop_the_step_and_remove_the_container() {
    let server = Server::start();
    let Some(_runner) = container_runner(&server, 2, &[]) else { return };
    let client = server.client().await;
    let image = test_image();
    let yaml = format!(
        "jobs:\n  slow:\n    image: {image}\n    steps:\n      - run: sleep 300 & sleep 300\n        timeout: 1s\n      - run: echo cleanup\n        if: always()\n  cancelled:\n    image: {image}\n    steps:\n      - run: echo started; sleep 300\n"
    );
    let id = submit(&client, &yaml).await;
    let run = run_where(&client, &id, "the job to start", |r| {
        r.jobs.iter().any(|j| j.key == "cancelled" && j.steps.first().is_some_and(|s| word(s.status) == "running"))
    })
    .await;
    let runner_id = run.jobs.iter().find(|j| !j.runner_id.is_empty()).unwrap().runner_id.clone();
    wait_until("the timeout", || {
        let r = futures_lite(client.clone(), id.clone());
        (word(r.jobs[0].status) == "timed_out").then_some(())
    });
    let out = output(server.cli().args(["cancel", &id]));
    assert!(out.status.success());
    let run = finished(&client, &id).await;
    let slow = &run.jobs[0];
    assert_eq!((word(slow.steps[0].status), word(slow.steps[1].status)), ("timed_out", "success"));
    assert_eq!(word(run.jobs[1].steps[0].status), "cancelled");
    wait_until("the containers to be removed", || containers_of(&runner_id).is_empty().then_some(()));
}

/// Reads a run synchronously (for `wait_until` conditions).
fn futures_lite(client: viaduct_tests::Client, id: String) -> v1::Run {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move { client.runs().get(v1::GetRunRequest { id }).await.unwrap().into_inner() })
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_removes_the_containers_it_left() {
    let server = Server::start_with(&["--retry-backoff", "50ms"]);
    let Some(mut runner) = container_runner(&server, 1, &[]) else { return };
    let client = server.client().await;
    let id =
        submit(&client, &format!("jobs:\n  j:\n    image: {}\n    steps:\n      - run: sleep 300\n", test_image()))
            .await;
    let run = run_where(&client, &id, "the step to run", |r| word(r.jobs[0].steps[0].status) == "running").await;
    let runner_id = run.jobs[0].runner_id.clone();
    assert_eq!(containers_of(&runner_id).len(), 1);
    runner.kill9();
    assert_eq!(containers_of(&runner_id).len(), 1, "SIGKILL leaves the container");
    runner.restart();
    wait_until("the stale container to be removed", || containers_of(&runner_id).is_empty().then_some(()));
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "runner_lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_with_pull_never_fails_clearly_and_host_jobs_can_be_refused() {
    let server = Server::start();
    let Some(_runner) = container_runner(&server, 1, &["--no-host-jobs"]) else { return };
    let client = server.client().await;
    let yaml =
        "jobs:\n  j:\n    image: { name: \"viaduct-test/absent:1\", pull: never }\n    steps:\n      - run: true\n";
    let absent = "image `viaduct-test/absent:1` is not present on this runner, and `pull: never` forbids pulling it";
    // Where the user looks: `submit --follow` says why the step did not run
    // and why the job failed.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yml"), yaml).unwrap();
    let out = output(server.cli().args(["submit", "--follow"]).arg(dir.path().join("p.yml")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("j › true: skipped — not run: could not prepare the job: {absent}")), "{err}");
    assert!(err.contains(&format!("── j: failure: could not prepare the job: {absent}")), "{err}");
    let id = submit(&client, yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "failure");
    assert!(run.jobs[0].message.contains(absent), "{}", run.jobs[0].message);
    // A host job waits for a runner that runs host jobs.
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: true\n").await;
    let runners = client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners;
    assert_eq!(
        viaduct_sdk::proto::executor_words(&runners[0].executors),
        ["container", "wasi"],
        "plugin steps still run beside container jobs"
    );
    let run = client.runs().get(v1::GetRunRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!(word(run.jobs[0].status), "queued");
    assert!(run.jobs[0].waiting.ends_with("closest: 1 runner lacks the host executor"), "{}", run.jobs[0].waiting);
    let _host = server.runner("linux", 1);
    assert_eq!(word(finished(&client, &id).await.status), "success");
}

/// Images come from a private registry with the credentials a secret holds,
/// and the pull policy decides when: `if_not_present` keeps the runner's
/// copy, `always` fetches what the tag names now. Wrong or missing
/// credentials fail the job with the image and the registry's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_pulled_from_a_private_registry_with_credentials_from_a_secret() {
    let Some((registry, auth)) = test_registry() else { return };
    let server = Server::start();
    let Some(_runner) = container_runner(&server, 1, &[]) else { return };
    let client = server.client().await;
    let image = format!("{registry}/viaduct-test/private-{}:1", std::process::id());
    let push = |local: &str| {
        podman(&["push", "-q", "--tls-verify=false", "--creds", &auth, local, &format!("docker://{image}")]);
    };
    push(&test_image());
    // Registry credentials are bound to the registry they are for.
    let scope = v1::SecretScope { registry: registry.clone(), ..Default::default() };
    for (name, value) in [("REGISTRY", auth.as_str()), ("WRONG", "viaduct:wrong")] {
        let req = v1::SetSecretRequest { name: name.into(), value: value.into(), scope: Some(scope.clone()) };
        client.secrets().set(req).await.unwrap();
    }
    let job = |key: &str, image_opts: &str| {
        format!(
            "  {key}:\n    image: {{ name: \"{image}\"{image_opts} }}\n    steps:\n      - run: cat /marker 2>/dev/null || echo v1\n"
        )
    };

    let id = submit(&client, &format!("jobs:\n{}{}", job("wrong", ", credentials: WRONG"), job("anonymous", ""))).await;
    let run = finished(&client, &id).await;
    for j in &run.jobs {
        assert_eq!(word(j.status), "failure", "{}", j.key);
        assert!(j.message.contains(&format!("cannot pull image `{image}`")), "{}", j.message);
        assert!(j.message.contains("unauthorized"), "{}", j.message);
    }

    let id = submit(&client, &format!("jobs:\n{}", job("first", ", credentials: REGISTRY"))).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{}", run.jobs[0].message);
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "v1\n");

    // A new image under the same tag: the test image plus /marker.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("marker"), "v2\n").unwrap();
    let container = podman(&["create", &test_image(), "true"]).trim().to_string();
    podman(&["cp", &dir.path().join("marker").display().to_string(), &format!("{container}:/marker")]);
    let v2 = format!("localhost/viaduct-test/private-v2-{}", std::process::id());
    podman(&["commit", "-q", &container, &v2]);
    podman(&["rm", &container]);
    push(&v2);

    let yaml = format!(
        "jobs:\n{}{}    needs: [cached]\n",
        job("cached", ", credentials: REGISTRY"),
        job("fresh", ", pull: always, credentials: REGISTRY")
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{:?}", run.jobs.iter().map(|j| &j.message).collect::<Vec<_>>());
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "v1\n", "if_not_present keeps the runner's copy");
    assert_eq!(step_log(&client, &run.jobs[1].steps[0].id).await, "v2\n", "always pulls the tag's new image");
    // The images go once the jobs' containers have (their teardown follows
    // the report of their end).
    let runner_id = run.jobs[1].runner_id.clone();
    wait_until("the jobs' containers to be removed", || containers_of(&runner_id).is_empty().then_some(()));
    podman(&["rmi", "-f", &image, &v2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_steps_and_artifacts_work_in_container_jobs() {
    let server = Server::with_plugins();
    server.publish_test_plugin("probe");
    let Some(_runner) = container_runner(&server, 1, &[]) else { return };
    let client = server.client().await;
    let yaml = format!(
        r#"
jobs:
  build:
    image: {image}
    artifacts: [out]
    steps:
      - run: mkdir -p out; echo from-container > out/report.txt; echo '{{}}' > package.json
      - uses: detect@1
        id: d
      - uses: probe@1
        with: {{ action: file, file: out/from-plugin.txt, content: written-by-plugin }}
      - run: cat out/from-plugin.txt; echo "node=${{{{ steps.d.outputs.node }}}}"
"#,
        image = test_image()
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let steps = &run.jobs[0].steps;
    assert_eq!(step_log(&client, &steps[3].id).await, "written-by-pluginnode=true\n");
    let list = client
        .artifacts()
        .list(v1::ListArtifactsRequest { run_id: id.clone(), job_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["out/from-plugin.txt", "out/report.txt"]);
    let dir = tempfile::tempdir().unwrap();
    let out = output(server.cli().args(["artifacts", "get", &id, "out/report.txt", "-o"]).arg(dir.path()));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(dir.path().join("out/report.txt")).unwrap(), "from-container\n");
}

/// A hostile container job attacks everything the runner touches: it
/// plants links and FIFOs in the control directory (read-only), points
/// `$VIADUCT_OUTPUT` at the runner's own identity file, makes it a FIFO or
/// a giant file, floods the launcher's status FIFO and leaves a detached
/// writer behind. Each attack fails with a clear message, no host file is
/// read or changed, and the runner goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_container_job_cannot_make_the_runner_touch_host_files() {
    use std::os::unix::fs::PermissionsExt;
    let server = Server::start();
    let Some(runner) = container_runner(&server, 1, &[]) else { return };
    let client = server.client().await;
    let victim = tempfile::tempdir().unwrap();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(victim.path().join("file"), "host data").unwrap();
    let identity = runner.work_dir().join("runner.json");
    wait_until("the runner to register", || identity.exists().then_some(()));
    let yaml = format!(
        r#"
jobs:
  attack:
    image: {image}
    steps:
      - name: plant
        run: |
          if ln -s {victim} /.viaduct/steps/2 2>/dev/null; then echo planted a link; else echo the control directory is read-only; fi
          mkfifo /.viaduct/steps/3 2>/dev/null && echo planted a fifo
          touch /.viaduct/launcher.sh 2>/dev/null && echo the launcher is writable
          ln -s {identity} "$VIADUCT_OUTPUT"
      - name: fifo output
        if: always()
        run: mkfifo "$VIADUCT_OUTPUT"
      - name: giant output
        if: always()
        run: head -c 2000000 /dev/zero | tr '\0' x > "$VIADUCT_OUTPUT"
      - name: garbage status
        if: always()
        run: head -c 100000 /dev/zero | tr '\0' 7 > /.viaduct/steps/$VIADUCT_STEP_INDEX/done
      - name: detached writer
        if: always()
        run: setsid sh -c 'while true; do echo x >> /workspace/late; sleep 0.05; done' > /dev/null 2>&1 & sleep 0.3
      - name: after
        if: always()
        run: a=$(wc -l < /workspace/late); sleep 0.4; b=$(wc -l < /workspace/late); [ "$a" = "$b" ] && echo nothing ran between steps
"#,
        image = test_image(),
        victim = victim.path().display(),
        identity = identity.display(),
    );
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    let steps = &run.jobs[0].steps;
    let plant = step_log(&client, &steps[0].id).await;
    assert_eq!(plant, "the control directory is read-only\n", "{run:#?}");
    let expect = [
        (0, "$VIADUCT_OUTPUT was refused: it is a symbolic link"),
        (1, "$VIADUCT_OUTPUT was refused: it is not a regular file"),
        (2, "$VIADUCT_OUTPUT was refused: it is larger than 1024 KiB"),
        (3, "the step's status is not an exit code"),
    ];
    for (i, message) in expect {
        assert_eq!(word(steps[i].status), "failure", "{:#?}", steps[i]);
        assert!(steps[i].message.contains(message), "step {}: {}", i + 1, steps[i].message);
    }
    assert_eq!(word(steps[4].status), "success");
    assert_eq!(step_log(&client, &steps[5].id).await, "nothing ran between steps\n", "{:#?}", steps[5]);
    // Nothing of the host was read or changed.
    let token = std::fs::read_to_string(&identity).unwrap();
    let token = token.split('"').find(|s| s.starts_with("vdn_")).unwrap().to_string();
    assert!(!format!("{run:?}").contains(&token), "the runner's token leaked into the run");
    let mode = std::fs::metadata(victim.path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the victim directory's mode changed");
    let entries: Vec<_> = std::fs::read_dir(victim.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(entries, ["file"], "something was written into the victim directory");
    assert_eq!(std::fs::read_to_string(victim.path().join("file")).unwrap(), "host data");
    // The runner goes on working.
    let id =
        submit(&client, &format!("jobs:\n  ok:\n    image: {}\n    steps:\n      - run: echo fine\n", test_image()))
            .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
}
