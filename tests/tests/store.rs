//! The server on PostgreSQL (`--store postgres://…`), end to end: the same
//! runs, logs and durability as on sled, with no database in the data
//! directory; one server per database; a store URL with a password in it
//! is refused; over TCP, TLS with the database's certificate verified.
//! Blobs in an S3 bucket (`--blob-store s3://…`): plugins,
//! caches and artifacts go there and nowhere else, and survive kill -9.

use viaduct_tests::{
    S3Bucket, Server, eventually, finished, http, output, postgres_database, postgres_tls_database, step_log, submit,
    v1, word,
};

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

/// `--store postgres://…?sslmode=require` over TCP: TLS, the database's
/// certificate verified against `--store-ca-file` (the system's roots do
/// not know the test CA) and its name against the URL's host. Without the
/// CA the server stops at start naming the certificate problem; without
/// TLS the database (no plaintext TCP in its pg_hba.conf) refuses it, and
/// the server says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_reaches_postgresql_over_verified_tls() {
    let Some((url, ca)) = postgres_tls_database("tls") else { return };
    let ca = ca.to_str().expect("a UTF-8 path");
    let required = format!("{url}?sslmode=require");
    let server = Server::start_with(&["--store", &required, "--store-ca-file", ca]);
    let _runner = server.runner("linux", 2);
    let client = server.client().await;
    let run = finished(&client, &submit(&client, PIPELINE).await).await;
    assert_eq!(word(run.status), "success", "{run:#?}");
    assert_eq!(step_log(&client, &run.jobs[0].steps[0].id).await, "line 1\nline 2\nline 3\n");
    // Every connection of the server to its database is TLS, as the database sees it.
    let db = url.rsplit_once('/').expect("a database").1;
    let sql = format!(
        "SELECT bool_and(ssl), count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE datname = '{db}'"
    );
    let unix = std::env::var("VIADUCT_TEST_POSTGRES").expect("the database was made over it");
    let seen = output(std::process::Command::new("psql").arg(format!("{unix}/postgres")).args(["-tAc", &sql]));
    let seen = String::from_utf8_lossy(&seen.stdout);
    let (tls, count) = seen.trim().split_once('|').expect("a row");
    // The lock's connection and the store's.
    assert!(tls == "t" && count.parse::<u32>().unwrap() >= 5, "{seen}");

    let start = |args: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let out = output(
            std::process::Command::new(viaduct_tests::bin("viaduct-server"))
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--listen", "127.0.0.1:0"])
                .args(args),
        );
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // The same URL without the CA: the certificate's issuer is unknown.
    let (status, err) = start(&["--store", &required]);
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("TLS to database `tls_") && err.contains("failed: invalid peer certificate: UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("--store-ca-file"), "{err}");
    // Without TLS over TCP: refused by the database, and said so.
    let (status, err) = start(&["--store", &format!("{url}?sslmode=disable"), "--store-ca-file", ca]);
    assert!(!status.success(), "{err}");
    assert!(err.contains("no pg_hba.conf entry") && err.contains("no encryption"), "{err}");
    assert!(err.contains("this connection had no TLS: sslmode=disable"), "{err}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_live_in_an_s3_bucket() {
    let Some(bucket) = S3Bucket::new("e2e") else { return };
    let mut args = bucket.args();
    args.extend(["--plugins-dir".into(), viaduct_tests::plugins_dir().display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = Server::start_with(&args);
    let _runner = server.runner("linux", 1);
    let client = server.client().await;
    // The first-party plugins were published into the bucket.
    let published = bucket.blobs().len();
    assert!(published >= 4, "{:?}", bucket.blobs());

    let pipeline = r#"
name: s3
jobs:
  build:
    artifacts: [dist]
    steps:
      - run: echo v1 > Cargo.lock
      - uses: cache@1
        id: cache
        with: { key: deps, key_files: [Cargo.lock], paths: [target] }
      - run: |
          if [ ! -f target/blob ]; then mkdir -p target; head -c 12000000 /dev/urandom > target/blob; fi
          mkdir -p dist && cp target/blob dist/app
          echo "sha=$(sha256sum target/blob | cut -d' ' -f1)" >> "$VIADUCT_OUTPUT"
        id: build
"#;
    let first = finished(&client, &submit(&client, pipeline).await).await;
    assert_eq!(word(first.status), "success", "{first:#?}");
    let out = |run: &v1::Run, step: usize, k: &str| run.jobs[0].steps[step].outputs[k].clone();
    assert_eq!(out(&first, 1, "hit"), "false");
    let second = finished(&client, &submit(&client, pipeline).await).await;
    assert_eq!(word(second.status), "success", "{second:#?}");
    assert_eq!(out(&second, 1, "hit"), "true", "{:#?}", second.jobs[0]);
    assert_eq!(out(&second, 2, "sha"), out(&first, 2, "sha"), "the cache came back from the bucket intact");
    // One cache entry and one artifact (the same bytes both runs: stored
    // once), and the finished steps' logs, packed.
    eventually("the logs packed into the bucket", || async {
        let packed = server.metric("viaduct_logs_packed_total") as usize;
        (packed > 0 && bucket.blobs().len() == published + 2 + packed).then_some(())
    })
    .await;
    let cache_log = step_log(&client, &format!("{}.1.2", first.id)).await;
    assert!(!cache_log.is_empty());
    assert!(!server.data_dir().join("blobs").exists(), "no blob on the server's disk");
    assert!(server.log().contains("blob store") && server.log().contains("s3://e2e-"), "{}", server.log());

    // Artifacts download from the bucket, also after a kill -9.
    server.kill9();
    server.restart();
    let client = server.client().await;
    let dir = tempfile::tempdir().unwrap();
    let got = output(server.cli().args(["artifacts", "get", &first.id, "dist/", "-o"]).arg(dir.path()));
    assert!(got.status.success(), "{}", String::from_utf8_lossy(&got.stderr));
    let sum = output(std::process::Command::new("sha256sum").arg(dir.path().join("dist/app")));
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(&out(&first, 2, "sha")));
    assert_eq!(step_log(&client, &format!("{}.1.2", first.id)).await, cache_log, "logs read from the bucket");
    let req = v1::DownloadArtifactRequest { run_id: first.id.clone(), job_id: String::new(), name: "dist/app".into() };
    let link = client.artifacts().link(req).await.unwrap().into_inner();
    let (code, body) = http(server.addr(), "GET", &link.path, &[], b"");
    assert_eq!((code, body.len()), (200, 12_000_000));
}

#[test]
fn a_wrong_blob_store_stops_the_server_at_start_without_echoing_secrets() {
    let Some(bucket) = S3Bucket::new("wrong") else { return };
    let dir = tempfile::tempdir().unwrap();
    let start = |args: &[&str]| {
        output(
            std::process::Command::new(viaduct_tests::bin("viaduct-server"))
                .arg("--data-dir")
                .arg(dir.path())
                .args(["--listen", "127.0.0.1:0"])
                .args(args),
        )
    };
    // A wrong secret key: refused by the S3 server when the bucket is listed.
    let wrong = dir.path().join("wrong-secret");
    std::fs::write(&wrong, "hunter2-not-the-key").unwrap();
    let out = start(&["--blob-store", &bucket.spec, "--blob-store-secret-file", wrong.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot open the blob store"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A secret in the URL: refused before anything is tried.
    let out = start(&["--blob-store", "s3://bucket?secret_access_key=hunter2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--blob-store-secret-file") && !err.contains("hunter2"), "{err}");
}
