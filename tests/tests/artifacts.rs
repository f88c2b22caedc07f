//! Job artifacts: uploaded by the runner at the end of a job (also after a
//! failure), listed and downloaded through the API, the CLI and signed
//! HTTP links; names and links out of the workspace are refused.

use viaduct_tests::{Server, finished, http, output, submit, v1, word};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_uploaded_listed_and_downloaded() {
    let server = Server::start();
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let id = submit(
        &client,
        r#"
jobs:
  build:
    artifacts: [dist, "reports/*.xml", missing.txt]
    steps:
      - run: |
          mkdir -p dist/lib reports
          head -c 3000000 /dev/urandom > dist/app
          chmod 755 dist/app
          echo lib > dist/lib/a.so
          echo '<ok/>' > reports/unit.xml
          echo not-me > reports/notes.txt
          echo "sha=$(sha256sum dist/app | cut -d' ' -f1)" >> "$VIADUCT_OUTPUT"
        id: b
  broken:
    artifacts: [log.txt]
    steps:
      - run: echo "what went wrong" > log.txt; exit 3
"#,
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "success", "{run:#?}");
    assert!(run.jobs[0].message.contains("no files matched artifacts: missing.txt"), "{}", run.jobs[0].message);
    // A failed job's artifacts are there too.
    assert_eq!(word(run.jobs[1].status), "failure");

    let list = client
        .artifacts()
        .list(v1::ListArtifactsRequest { run_id: id.clone(), job_id: String::new() })
        .await
        .unwrap()
        .into_inner()
        .artifacts;
    let names: Vec<&str> = list.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["dist/app", "dist/lib/a.so", "reports/unit.xml", "log.txt"], "{list:#?}");
    let app = &list[0];
    assert_eq!((app.size, app.mode), (3_000_000, 0o755));
    assert!(app.expires_at.is_some());

    // CLI: list, then download everything under dist/ and check the bytes.
    let out = output(server.cli().args(["artifacts", "list", &id]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("dist/lib/a.so") && text.contains("log.txt"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let out = output(server.cli().args(["artifacts", "get", &id, "dist/", "-o"]).arg(dir.path()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sha = &run.jobs[0].steps[0].outputs["sha"];
    let got = output(std::process::Command::new("sha256sum").arg(dir.path().join("dist/app")));
    assert!(String::from_utf8_lossy(&got.stdout).starts_with(sha.as_str()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(dir.path().join("dist/app")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::read_to_string(dir.path().join("dist/lib/a.so")).unwrap(), "lib\n");
    let out = output(server.cli().args(["artifacts", "get", &id, "nope", "-o"]).arg(dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no artifact `nope`"));

    // A signed link downloads without a token; a tampered one is refused.
    let req = v1::DownloadArtifactRequest { run_id: id.clone(), job_id: String::new(), name: "log.txt".into() };
    let link = client.artifacts().link(req).await.unwrap().into_inner();
    let (code, body) = http(server.addr(), "GET", &link.path, &[], b"");
    assert_eq!((code, body.as_slice()), (200, b"what went wrong\n".as_slice()));
    let (code, _) = http(server.addr(), "GET", &link.path.replace("sig=", "sig=00"), &[], b"");
    assert_eq!(code, 403);
    let (code, _) = http(server.addr(), "GET", &link.path.replace("log.txt", "dist/app"), &[], b"");
    assert_eq!(code, 403, "a link is for one artifact only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_out_of_the_workspace_fail_the_job() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(
        &client,
        "jobs:\n  j:\n    artifacts: [out]\n    steps:\n      - run: mkdir out; ln -s /etc/passwd out/passwd\n",
    )
    .await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.jobs[0].status), "failure");
    let msg = &run.jobs[0].message;
    assert!(msg.contains("out/passwd") && msg.contains("out of the workspace"), "{msg}");
    // `..` is refused when the file is checked, with its position.
    let yaml = "jobs:\n  j:\n    artifacts: [../x]\n    steps:\n      - run: true\n";
    let req = v1::ValidateRequest { yaml: yaml.into(), ..Default::default() };
    let errors = client.pipelines().validate(req).await.unwrap().into_inner().errors;
    assert_eq!((errors[0].line, errors[0].column), (3, 17), "{errors:?}");
    assert!(errors[0].message.contains("must not contain `..`"), "{errors:?}");
}
