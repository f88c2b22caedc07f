//! TLS on the one port: the smoke path (runner, CLI, SDK, git over HTTPS,
//! health and metrics) over TLS, the refusals (unknown CA, wrong host,
//! expired certificate, plaintext to another machine), reloads without
//! dropping runners, and mutual TLS for runners.

use std::process::Command;

use viaduct_tests::{
    Runner, Server, finished, output,
    pki::{Ca, Validity},
    step_log, submit, v1, word,
};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Everything a user does, over TLS: a runner registers and runs jobs, the
/// CLI submits and follows, git pushes to a hosted repository over HTTPS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_path_works_over_tls() {
    let server = Server::start_tls(&[]);
    assert!(server.url().starts_with("https://localhost:"));
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo over tls\n").await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_eq!(step_log(&client, &format!("{id}.1.1")).await, "over tls\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yml");
    std::fs::write(&file, "jobs:\n  j:\n    steps:\n      - run: echo from the cli\n").unwrap();
    let out = output(server.cli().arg("submit").arg(&file).arg("--follow"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the cli"));
    // git smart HTTP on the same port, with the CA trusted by git.
    let repo = viaduct_tests::forge::create_hosted(&client, "app").await;
    assert!(repo.clone_url.starts_with("https://"), "{}", repo.clone_url);
    let wt = viaduct_tests::forge::work_tree("on:\n  push: {}\njobs:\n  b:\n    steps:\n      - run: cat hello.txt\n");
    let url = repo.clone_url.replacen("https://", &format!("https://x:{}@", server.admin_token()), 1);
    let push = output(
        Command::new("git")
            .args(["push", "-q", &url, "main"])
            .env("GIT_SSL_CAINFO", server.tls_ca().unwrap())
            .current_dir(wt.path()),
    );
    assert!(push.status.success(), "{}", stderr(&push));
    let runs = viaduct_tests::forge::runs_of(&client, "app").await;
    assert_eq!(word(finished(&client, &runs[0].id).await.status), "success");
    // Plain HTTP routes too.
    let health = output(
        Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(server.tls_ca().unwrap())
            .arg(format!("{}/healthz", server.url())),
    );
    assert!(health.status.success(), "{}", stderr(&health));
}

/// A client refuses a server it cannot verify, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_refuse_unknown_wrong_and_expired_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("a CA nobody trusts");
    let other = Ca::new("another CA");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, &other.cert_pem).unwrap();
    let cases = [
        (
            "wrong-host",
            ca.server(&["elsewhere.example"], Validity::Current),
            "certificate not valid for name \"localhost\"",
        ),
        ("expired", ca.server(&["localhost"], Validity::Expired), "certificate expired"),
    ];
    for (name, issued, expect) in cases {
        let keep = tempfile::tempdir().unwrap();
        let (cert, key) = issued.write(keep.path(), name);
        let server = Server::start_tls_files(
            keep,
            &ca_file,
            &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
        );
        let out = output(server.cli().args(["runs", "list"]));
        assert_eq!(out.status.code(), Some(3), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{name}: {}", stderr(&out));
    }
    // A CA the client does not trust.
    let server = Server::start_tls(&[]);
    let out = output(server.cli().env("VIADUCT_CA_CERT", &other_file).args(["runs", "list"]));
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("UnknownIssuer"), "{}", stderr(&out));
}

/// Plaintext to another machine is refused unless asked for.
#[test]
fn plaintext_to_another_machine_is_refused() {
    let cli = viaduct_tests::bin("viaduct");
    let out = output(
        Command::new(&cli).args(["--server", "http://192.0.2.1:7700", "runs", "list"]).env_remove("VIADUCT_INSECURE"),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("refusing to talk to http://192.0.2.1:7700 in plaintext"), "{}", stderr(&out));
    let runner = output(
        Command::new(viaduct_tests::bin("viaduct-runner"))
            .args(["--server", "http://192.0.2.1:7700", "--work-dir"])
            .arg(tempfile::tempdir().unwrap().path()),
    );
    assert!(!runner.status.success());
    assert!(stderr(&runner).contains("in plaintext"), "{}", stderr(&runner));
    // Asked for: it tries (and cannot connect to the documentation address).
    let out = output(Command::new(&cli).args(["--server", "http://192.0.2.1:7700", "--insecure", "runs", "list"]));
    assert!(!stderr(&out).contains("plaintext"), "{}", stderr(&out));
}

/// A new certificate is served after a reload, and the runner connected
/// before it keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_keeps_runners_connected() {
    let keep = tempfile::tempdir().unwrap();
    let ca = Ca::new("first CA");
    let ca_file = keep.path().join("ca.pem");
    // The file clients trust holds both CAs: the rotation's old and new.
    let next = Ca::new("next CA");
    std::fs::write(&ca_file, format!("{}{}", ca.cert_pem, next.cert_pem)).unwrap();
    let (cert, key) = ca.server(&["localhost"], Validity::Current).write(keep.path(), "server");
    let server = Server::start_tls_files(
        keep,
        &ca_file,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo before\n").await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
    let issued = next.server(&["localhost"], Validity::Current);
    std::fs::write(&key, &issued.key_pem).unwrap();
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    viaduct_tests::wait_until("the reload", || server.log().contains("TLS certificate reloaded").then_some(()));
    // New connections see the new certificate…
    let only_next = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(only_next.path(), &next.cert_pem).unwrap();
    let out = output(server.cli().env("VIADUCT_CA_CERT", only_next.path()).args(["runs", "list"]));
    assert!(out.status.success(), "{}", stderr(&out));
    // …and the runner still takes jobs on its old connection.
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo after\n").await;
    assert_eq!(word(finished(&client, &id).await.status), "success");
    assert_eq!(server.log().matches("runner connected").count(), 1, "the runner did not reconnect");
}

/// With a client CA, runners must present a certificate it signed; people
/// (CLI, browser) still connect with a token alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_is_required_of_runners() {
    let keep = tempfile::tempdir().unwrap();
    let ca = Ca::new("Viaduct CA");
    let ca_file = keep.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    let (cert, key) = ca.server(&["localhost"], Validity::Current).write(keep.path(), "server");
    let (runner_cert, runner_key) = ca.client("runner-1").write(keep.path(), "runner");
    let args = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--client-ca",
        ca_file.to_str().unwrap(),
    ];
    let server = Server::start_tls_files(keep, &ca_file, &args);
    let client = server.client().await;
    let anonymous = Runner::start(&server, "linux", 1, &[]);
    viaduct_tests::wait_until("the runner to be refused", || {
        anonymous.log().contains("client certificate").then_some(())
    });
    drop(anonymous);
    let _runner = Runner::start(
        &server,
        "linux",
        1,
        &["--client-cert", runner_cert.to_str().unwrap(), "--client-key", runner_key.to_str().unwrap()],
    );
    let id = submit(&client, "jobs:\n  j:\n    steps:\n      - run: echo mutual\n").await;
    let run = finished(&client, &id).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    let listed = client.runners().list(v1::ListRunnersRequest {}).await.unwrap().into_inner().runners;
    assert_eq!(listed.len(), 1, "only the runner with a certificate registered");
}
