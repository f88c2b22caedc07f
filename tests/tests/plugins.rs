//! WASI step plugins, end to end: published to the real server (the
//! first-party ones at its start, test plugins through the CLI), resolved
//! when a run is planned, fetched, compiled and run by the real runner in
//! wasmtime with exactly the capabilities they were granted.

use std::collections::HashMap;

use viaduct_tests::{Server, finished, http, output, step_log, submit, v1, word};

fn step(run: &v1::Run, job: usize, index: usize) -> &v1::Step {
    &run.jobs[job].steps[index - 1]
}

fn outputs(run: &v1::Run, job: usize, index: usize) -> &HashMap<String, String> {
    &step(run, job, index).outputs
}

async fn validate(client: &viaduct_tests::Client, yaml: &str) -> Vec<String> {
    let req = v1::ValidateRequest { yaml: yaml.into(), file_name: "p.yml".into() };
    let errors = client.pipelines().validate(req).await.unwrap().into_inner().errors;
    errors.iter().map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_published_resolved_and_checked_when_planned() {
    let server = Server::with_plugins();
    let client = server.client().await;
    let listed = String::from_utf8(output(server.cli().args(["plugins", "list"])).stdout).unwrap();
    for name in ["cache", "container-deploy", "deploy", "detect", "nix-check", "ssh-deploy"] {
        assert!(listed.lines().any(|l| l.starts_with(name) && l.contains("1.0.0")), "{name} missing:\n{listed}");
    }
    let shown = String::from_utf8(output(server.cli().args(["plugins", "get", "cache@1"])).stdout).unwrap();
    assert!(shown.contains("cache@1.0.0") && shown.contains("post") && shown.contains("with.key_files"), "{shown}");

    // Publishing: idempotent for the same bytes, immutable otherwise.
    server.publish_test_plugin("probe");
    server.publish_test_plugin("probe");
    let (wasm, manifest) = viaduct_tests::test_plugin("probe");
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&changed, text.replace("description = \"", "description = \"Changed: ")).unwrap();
    let publish = |m: &std::path::Path, extra: &[&str]| {
        output(server.cli().args(["plugins", "publish"]).arg(&wasm).arg("--manifest").arg(m).args(extra))
    };
    let out = publish(&changed, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("probe@1.0.0 is already published"), "{out:?}");
    assert!(publish(&changed, &["--replace"]).status.success());

    // A bad manifest: file, line and column.
    std::fs::write(&changed, text.replace("version = \"1.0.0\"", "version = \"one\"")).unwrap();
    let out = publish(&changed, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains(&format!("{}:", changed.display())) && err.contains("not a semantic version"), "{err}");
    // Not a component.
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = output(server.cli().args(["plugins", "publish"]).arg(&core).arg("--manifest").arg(&manifest));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is a core module"), "{out:?}");

    // Plan-time checks, with positions.
    let errs = validate(&client, "jobs:\n  j:\n    steps:\n      - uses: nope@1\n").await;
    assert_eq!(errs, ["p.yml:4:15: no plugin `nope` is published"]);
    let errs = validate(&client, "jobs:\n  j:\n    steps:\n      - uses: cache@2\n").await;
    assert_eq!(errs, ["p.yml:4:15: no published version of `cache` matches `2` (published: 1.0.0)"]);
    let yaml = "jobs:\n  j:\n    steps:\n      - uses: cache@1\n        with:\n          keyfiles: [Cargo.lock]\n";
    let errs = validate(&client, yaml).await;
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("p.yml:6:11: `keyfiles` is not an input of cache@1.0.0"), "{errs:?}");
    assert!(errs[0].ends_with("did you mean `key_files`?"), "{errs:?}");
    let errs = validate(&client, "jobs:\n  j:\n    steps:\n      - uses: deploy\n").await;
    assert_eq!(errs, ["p.yml:4:15: deploy@1.0.0 needs the input `target` (under `with:`)"]);
    let yaml = "jobs:\n  j:\n    steps:\n      - uses: detect@1\n        allow: { network: true }\n";
    let errs = validate(&client, yaml).await;
    assert_eq!(errs, ["p.yml:4:15: detect@1.0.0 does not use the network: `allow.network` cannot be granted"]);
    let req = v1::SubmitRequest {
        source: Some(v1::submit_request::Source::PipelineYaml("jobs:\n  j:\n    steps:\n      - uses: nope\n".into())),
        ..Default::default()
    };
    let err = client.runs().submit(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_step_gets_its_inputs_env_and_workspace_and_feeds_later_steps() {
    let server = Server::start();
    server.publish_test_plugin("probe");
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    for name in ["SEEN_KEY", "UNSEEN_KEY"] {
        let req = v1::SetSecretRequest { name: name.into(), value: format!("{name}-value"), ..Default::default() };
        client.secrets().set(req).await.unwrap();
    }
    let id = submit(
        &client,
        &format!(
            r#"
env: {{ GREETING: hello }}
jobs:
  j:
    secrets: [SEEN_KEY, UNSEEN_KEY]
    steps:
      - run: echo from-run > input.txt; echo "v=42" >> "$VIADUCT_OUTPUT"
        id: first
      - uses: probe@1
        id: p
        env: {{ EXTRA: x }}
        allow: {{ secrets: [SEEN_KEY] }}
        with:
          action: [echo, log, file, exec, cache-put, cache-get, upload, post, connect]
          message: "value ${{{{ steps.first.outputs.v }}}}"
          env: [GREETING, EXTRA, VIADUCT_STEP_INDEX, SEEN_KEY, UNSEEN_KEY, HOME, PATH]
          file: written.txt
          content: from-plugin
          script: "cat input.txt; echo to-stderr >&2"
          cache_key: blob-1
          value: cached-value
          path: written.txt
          name: probe-out.txt
          state: s-1
          address: "{addr}"
      - run: test "$(cat written.txt)" = from-plugin && echo "saw ${{{{ steps.p.outputs.with_message }}}}"
      - uses: probe
        with: {{ action: connect, address: "{addr}" }}
        allow: {{ network: true }}
"#,
            addr = server.addr()
        ),
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let o = outputs(&run, 0, 2);
    assert_eq!(o["with_message"], "value 42", "expressions in `with:` see earlier outputs");
    assert_eq!(
        (o["env_GREETING"].as_str(), o["env_EXTRA"].as_str(), o["env_VIADUCT_STEP_INDEX"].as_str()),
        ("hello", "x", "2")
    );
    assert_eq!(o["env_missing"], "UNSEEN_KEY,HOME,PATH", "only the granted env, and secrets the step allows");
    assert_eq!(o["env_SEEN_KEY"], "***", "an allowed secret, masked in what the plugin reports");
    assert_eq!(o["env_matches_wasi"], "true");
    assert_eq!((o["run_id"].as_str(), o["job_name"].as_str(), o["step_index"].as_str()), (id.as_str(), "j", "2"));
    assert_eq!(o["cwd"], "/workspace");
    assert_eq!(o["file_content"], "from-plugin");
    assert_eq!((o["exit_code"].as_str(), o["stdout"].as_str()), ("0", "from-run"));
    assert_eq!((o["cache_found"].as_str(), o["cache_value"].as_str()), ("true", "cached-value"));
    assert_eq!(o["uploaded_names"], "probe-out.txt");
    assert_eq!(o["connected"], "false", "no network unless the step allows it");
    assert!(step(&run, 0, 2).summary.starts_with("### Probe: echo, log"), "{}", step(&run, 0, 2).summary);
    assert_eq!(outputs(&run, 0, 4)["connected"], "true", "allow.network grants it");
    let log = step_log(&client, &format!("{id}.1.2")).await;
    for line in [
        "debug: probe Debug line",
        "probe Info line",
        "warning: probe Warn line",
        "error: probe Error line",
        "probe stdout line",
        "probe stderr line",
        "probe line 3 of 3",
        "to-stderr",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }
    assert!(step_log(&client, &format!("{id}.1.3")).await.contains("saw value 42"));
    // The post phase ran last with the state the main call returned.
    let post = run.jobs[0].steps.last().unwrap();
    assert_eq!(post.name, "Post probe@1");
    assert_eq!((post.outputs["phase"].as_str(), post.outputs["state"].as_str()), ("post", "s-1"));
    // The plugin's artifact is the run's.
    let req = v1::ListArtifactsRequest { run_id: id.clone(), job_id: String::new() };
    let list = client.artifacts().list(req).await.unwrap().into_inner().artifacts;
    let names: Vec<String> = list.into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["probe-out.txt"]);

    // A failing plugin keeps its outputs and says why; the post phase of a
    // plugin whose main call did not ask for one is skipped.
    let id = submit(
        &client,
        "jobs:\n  j:\n    steps:\n      - uses: probe@1\n        with: { action: outputs, count: 2, fail: as asked }\n",
    )
    .await;
    let run = finished(&client, &id).await;
    let s = step(&run, 0, 1);
    assert_eq!((word(s.status), s.message.as_str()), ("failure", "as asked"));
    assert_eq!(s.outputs["out_2"], "value-2");
    assert!(run.jobs[0].message.contains("as asked"), "{}", run.jobs[0].message);
    assert_eq!(word(step(&run, 0, 2).status), "skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_plugin_misses_then_restores_identical_files() {
    let server = Server::with_plugins();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let pipeline = |lock: &str| {
        format!(
            r#"
name: cached
jobs:
  build:
    steps:
      - run: printf '{lock}' > Cargo.lock; touch Cargo.toml
      - uses: cache@1
        id: cache
        with: {{ key: deps, key_files: [Cargo.lock], paths: [target] }}
      - run: |
          if [ ! -f target/blob ]; then
            mkdir -p target/deep/tree
            head -c 2000000 /dev/urandom > target/blob
            for i in $(seq 1 50); do echo "$i" > target/deep/tree/f$i; done
            ln -s blob target/link
          fi
          echo "sha=$(cat target/blob target/deep/tree/* | sha256sum | cut -d' ' -f1)" >> "$VIADUCT_OUTPUT"
          echo "link=$(readlink target/link)" >> "$VIADUCT_OUTPUT"
        id: build
"#
        )
    };
    let first = finished(&client, &submit(&client, &pipeline("v1")).await).await;
    assert_eq!(word(first.status), "success", "{first:#?}");
    assert_eq!(outputs(&first, 0, 2)["hit"], "false");
    let key = outputs(&first, 0, 2)["key"].clone();
    assert!(key.starts_with("deps-") && key.len() == "deps-".len() + 16, "{key}");
    let post = first.jobs[0].steps.last().unwrap();
    assert_eq!((word(post.status), post.outputs["saved"].as_str()), ("success", "true"), "{post:#?}");

    let second = finished(&client, &submit(&client, &pipeline("v1")).await).await;
    assert_eq!(outputs(&second, 0, 2)["hit"], "true", "{:#?}", second.jobs[0]);
    assert_eq!(outputs(&second, 0, 3)["sha"], outputs(&first, 0, 3)["sha"], "restored bytes are identical");
    assert_eq!(outputs(&second, 0, 3)["link"], "blob");
    assert_ne!(outputs(&second, 0, 2)["key"], "");
    // An exact hit has nothing to save: its post step is skipped.
    assert_eq!(word(second.jobs[0].steps.last().unwrap().status), "skipped");

    // A changed lockfile: a new key, restored from the older entry by prefix.
    let third = finished(&client, &submit(&client, &pipeline("v2")).await).await;
    let o = outputs(&third, 0, 2);
    assert_eq!((o["hit"].as_str(), o["restored"].as_str(), o["matched_key"].as_str()), ("false", "true", key.as_str()));
    assert_eq!(outputs(&third, 0, 3)["sha"], outputs(&first, 0, 3)["sha"]);

    let bearer = format!("Bearer {}", server.admin_token());
    let (_, metrics) = http(server.addr(), "GET", "/metrics", &[("authorization", &bearer)], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    for line in [
        "viaduct_cache_restores_total{result=\"hit\"} 1",
        "viaduct_cache_restores_total{result=\"partial\"} 1",
        "viaduct_cache_restores_total{result=\"miss\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let listed = String::from_utf8(output(server.cli().args(["caches", "list"])).stdout).unwrap();
    assert!(listed.contains("pipeline:cached") && listed.contains(&key), "{listed}");
    let out = output(server.cli().args(["caches", "delete", "pipeline:cached"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 2 cache entries"), "{out:?}");
}

/// One repository (here: pipeline scope) saving cache after cache past its
/// quota evicts its own oldest entries; another's entry stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_over_its_cache_quota_evicts_its_own_entries_only() {
    let plugins = viaduct_tests::plugins_dir().display().to_string();
    let server = Server::start_with(&["--plugins-dir", &plugins, "--cache-max-size-per-repo", "3m"]);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let pipeline = |name: &str, key: &str| {
        format!(
            r#"
name: {name}
jobs:
  build:
    steps:
      - run: echo {key} > deps.lock
      - uses: cache@1
        with: {{ key: {key}, key_files: [deps.lock], paths: [target] }}
      - run: mkdir -p target && head -c 2000000 /dev/urandom > target/blob
"#
        )
    };
    let quiet = finished(&client, &submit(&client, &pipeline("quiet", "q")).await).await;
    assert_eq!(word(quiet.status), "success", "{quiet:#?}");
    for key in ["n1", "n2", "n3"] {
        let run = finished(&client, &submit(&client, &pipeline("noisy", key)).await).await;
        assert_eq!(word(run.status), "success", "{run:#?}");
    }
    // 2 MB each, 3 MB a scope: `noisy` keeps only its newest entry.
    let listed = viaduct_tests::eventually("noisy's older entries to go", || async {
        let out = String::from_utf8(output(server.cli().args(["caches", "list"])).stdout).unwrap();
        let noisy: Vec<&str> = out.lines().filter(|l| l.contains("pipeline:noisy")).collect();
        (noisy.len() == 1 && noisy[0].contains("n3")).then_some(out)
    })
    .await;
    assert!(listed.contains("pipeline:quiet"), "another scope's entry stays:\n{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_switches_releases_atomically_and_rolls_back() {
    let server = Server::with_plugins();
    let deploy_dir = tempfile::tempdir().unwrap();
    let mount = format!("deploy={}", deploy_dir.path().display());
    let _runner = viaduct_tests::Runner::start(&server, "linux", 1, &["--plugin-mount", &mount]);
    let client = server.client().await;
    let deploy = |version: &str, release: &str| {
        format!(
            r#"
jobs:
  ship:
    steps:
      - run: mkdir -p dist; echo "{version}" > dist/index.html; printf '#!/bin/sh\necho {version}\n' > dist/app; chmod 755 dist/app
      - uses: deploy@1
        id: d
        with: {{ source: dist, target: site, release: "{release}", keep: 2 }}
"#
        )
    };
    let site = deploy_dir.path().join("site");
    for (version, release) in [("one", "r1"), ("two", "r2"), ("three", "r3")] {
        let run = finished(&client, &submit(&client, &deploy(version, release)).await).await;
        assert_eq!(word(run.status), "success", "{run:#?}");
        assert_eq!(outputs(&run, 0, 2)["release"], release);
        assert_eq!(std::fs::read_to_string(site.join("current/index.html")).unwrap().trim(), version);
        assert!(!step(&run, 0, 2).summary.is_empty());
    }
    assert_eq!(std::fs::read_link(site.join("current")).unwrap(), std::path::Path::new("releases/r3"));
    // The deployed program kept its execute bit.
    let app = output(&mut std::process::Command::new(site.join("current/app")));
    assert_eq!(String::from_utf8_lossy(&app.stdout), "three\n");
    // keep: 2 removed the oldest release.
    let mut releases: Vec<String> = std::fs::read_dir(site.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    releases.sort();
    assert_eq!(releases, ["r2", "r3"]);

    let rollback =
        "jobs:\n  back:\n    steps:\n      - uses: deploy@1\n        with: { target: site, rollback: true }\n";
    let run = finished(&client, &submit(&client, rollback).await).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_eq!((outputs(&run, 0, 1)["release"].as_str(), outputs(&run, 0, 1)["previous"].as_str()), ("r2", "r3"));
    assert_eq!(std::fs::read_to_string(site.join("current/index.html")).unwrap().trim(), "two");
    let log = std::fs::read_to_string(site.join("deployments.log")).unwrap();
    assert_eq!(log.lines().count(), 4, "{log}");

    // An existing release id is refused and changes nothing.
    let run = finished(&client, &submit(&client, &deploy("again", "r2")).await).await;
    assert_eq!(word(run.jobs[0].status), "failure");
    assert_eq!(std::fs::read_to_string(site.join("current/index.html")).unwrap().trim(), "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_reports_project_types_that_pipelines_branch_on() {
    let server = Server::with_plugins();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
jobs:
  j:
    steps:
      - run: |
          printf '[package]\nname = "x"\n' > Cargo.toml; touch Cargo.lock
          mkdir web; echo '{}' > web/package.json; touch web/pnpm-lock.yaml
          echo '{ outputs = _: {}; }' > flake.nix
      - uses: detect@1
        id: d
      - run: echo "building rust"
        if: ${{ steps.d.outputs.rust == 'true' }}
      - run: echo "never"
        if: ${{ steps.d.outputs.go == 'true' }}
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let o = outputs(&run, 0, 2);
    let types: Vec<&str> = o["types"].split(',').collect();
    for t in ["rust", "node", "nix"] {
        assert!(types.contains(&t), "{t} not in {types:?}");
    }
    assert_eq!((o["node_dir"].as_str(), o["node_package_manager"].as_str()), ("web", "pnpm"));
    assert_eq!(o["go"], "false");
    assert_eq!((word(step(&run, 0, 3).status), word(step(&run, 0, 4).status)), ("success", "skipped"));
    assert!(step(&run, 0, 2).summary.contains("rust"), "{}", step(&run, 0, 2).summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_check_checks_a_local_flake_or_says_nix_is_missing() {
    let server = Server::with_plugins();
    // Jobs run as slot users: the Nix daemon (started by `cargo xtask test`)
    // serves Debian's `nix-users`.
    let _runner = viaduct_tests::Runner::start(&server, "linux", 1, &["--job-groups", "nix-users"]);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
jobs:
  j:
    # No network here: do not try the binary cache.
    env: { NIX_CONFIG: "substituters =" }
    steps:
      - run: |
          cat > flake.nix <<'EOF'
          {
            description = "tiny";
            outputs = { self }: {
              checks.x86_64-linux.ok = derivation {
                name = "ok"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo ok > $out" ];
              };
            };
          }
          EOF
      - uses: nix-check@1
        id: n
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    let s = step(&run, 0, 2);
    if which("nix") {
        assert_eq!(word(s.status), "success", "{run:#?}\n{}", step_log(&client, &format!("{id}.1.2")).await);
        assert!(s.summary.contains("checks"), "{}", s.summary);
    } else {
        viaduct_tests::missing_fixture(
            "nix is not installed here (`cargo xtask setup` installs Debian's nix-bin): checking the error a runner without nix gives instead",
        );
        assert_eq!(word(s.status), "failure");
        assert_eq!(s.message, "nix is not installed on this runner (install it, e.g. `apt-get install nix-bin`)");
    }
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_are_contained_and_the_runner_survives() {
    let server = Server::start();
    server.publish_test_plugin("hostile");
    let mut runner = server.runner("linux", 1);
    let client = server.client().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let attacks = [
        "read-passwd",
        "escape-dotdot",
        "symlink-escape",
        "write-outside",
        "list-root",
        "exec-forbidden",
        "socket",
        "copy-escape",
        "env-probe",
    ];
    let mut yaml = String::from("jobs:\n  j:\n    steps:\n      - run: ln -s /etc/passwd passwd-link\n");
    for a in attacks {
        yaml.push_str(&format!(
            "      - uses: hostile@1\n        continue_on_error: true\n        with: {{ attack: {a}, port: {port} }}\n"
        ));
    }
    yaml.push_str("      - uses: hostile@1\n        continue_on_error: true\n        timeout: 2s\n        with: { attack: spin }\n");
    yaml.push_str("      - uses: hostile@1\n        continue_on_error: true\n        with: { attack: memory-bomb }\n");
    yaml.push_str("      - uses: hostile@1\n        continue_on_error: true\n        with: { attack: panic }\n");
    yaml.push_str("      - run: echo still here\n");
    let id = submit(&client, &yaml).await;
    let run = finished(&client, &id).await;
    for (i, a) in attacks.iter().enumerate() {
        let s = step(&run, 0, i + 2);
        assert_eq!(word(s.status), "success", "{a}: {s:#?}");
        assert!(s.outputs.get("blocked").is_some_and(|b| !b.is_empty()), "{a} was not blocked: {s:#?}");
    }
    let env = outputs(&run, 0, attacks.len() + 1);
    assert_eq!((env["home_visible"].as_str(), env["path_visible"].as_str()), ("false", "false"), "{env:?}");
    let n = attacks.len() + 2;
    let spin = step(&run, 0, n);
    assert_eq!(word(spin.status), "timed_out", "{spin:#?}");
    let bomb = step(&run, 0, n + 1);
    assert_eq!(word(bomb.status), "failure");
    assert!(bomb.message.contains("memory limit of 64 MiB"), "{}", bomb.message);
    let panic = step(&run, 0, n + 2);
    assert_eq!(word(panic.status), "failure");
    assert!(panic.message.contains("crashed"), "{}", panic.message);
    assert!(step_log(&client, &format!("{id}.1.{}", n + 2)).await.contains("panicked"));
    assert_eq!(word(step(&run, 0, n + 3).status), "success");
    // Nothing reached the listener; the runner is alive and takes more work.
    listener.set_nonblocking(true).unwrap();
    assert!(listener.accept().is_err(), "a plugin opened a socket");
    assert!(runner.alive());
    let id =
        submit(&client, "jobs:\n  j:\n    steps:\n      - uses: hostile@1\n        with: { attack: read-passwd }\n")
            .await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
}
