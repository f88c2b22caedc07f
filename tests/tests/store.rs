//! The server on PostgreSQL (`--store postgres://…`), end to end: the same
//! runs, logs and durability as on sled, with no database in the data
//! directory; one server per database; a store URL with a password in it
//! is refused.

use viaduct_tests::{Server, finished, output, postgres_database, step_log, submit, word};

const PIPELINE: &str = "
jobs:
  build:
    steps:
      - run: |
          for i in 1 2 3; do echo \"line $i\"; done
  test:
    needs: [build]
    steps:
      - run: echo tested
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_on_postgresql_and_loses_nothing_to_kill_9() {
    let Some(url) = postgres_database("e2e") else { return };
    let mut server = Server::start_with(&["--store", &url]);
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let first = submit(&client, PIPELINE).await;
    let run = finished(&client, &first).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "line 1\nline 2\nline 3\n");
    assert!(!server.data_dir().join("db").exists(), "no sled database beside PostgreSQL");
    assert!(server.log().contains("store: PostgreSQL"), "{}", server.log());

    // One server per database: a second one is refused while this one runs.
    let other = tempfile::tempdir().unwrap();
    let out =
        output(
            std::process::Command::new(viaduct_tests::bin("viaduct-server"))
                .arg("--data-dir")
                .arg(other.path())
                .args(["--listen", "127.0.0.1:0", "--store", &url]),
        );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another server uses"), "{err}");

    // Everything accepted survives a kill -9 of the server: the finished
    // run with its logs, and ids keep growing.
    server.kill9();
    server.restart();
    let client = server.client().await;
    let again = client
        .runs()
        .get(viaduct_tests::v1::GetRunRequest { id: first.clone() })
        .await
        .expect("the run is still there")
        .into_inner();
    assert_eq!(word(again.status), "success");
    assert_eq!(step_log(&client, &again.jobs[1].steps[0].id).await, "tested\n");
    let second = submit(&client, PIPELINE).await;
    assert!(second.parse::<u64>().unwrap() > first.parse::<u64>().unwrap(), "{second} after {first}");
    let run = finished(&client, &second).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
}

#[test]
fn a_store_url_with_a_password_is_refused_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = output(
        std::process::Command::new(viaduct_tests::bin("viaduct-server")).arg("--data-dir").arg(dir.path()).args([
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres://ci:hunter2-pw@127.0.0.1:1/viaduct",
        ]),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--store-password-file"), "{err}");
    assert!(!err.contains("hunter2"), "the password was echoed: {err}");
}
