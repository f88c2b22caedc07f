//! `viaduct exec`: a pipeline run on this machine without a server, through
//! the real CLI (which hands over to `viaduct-runner exec`), the real job
//! runner and executors.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use viaduct_tests::{bin, bin_dir, container_socket, missing_fixture, test_image};

/// A project directory holding `files`.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// `viaduct exec ARGS` in `dir`, with `env` added.
fn exec(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("viaduct"));
    cmd.arg("exec").args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let Output { status, stdout, stderr } = cmd.output().expect("viaduct runs");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned());
    eprintln!("--- exec {args:?}: {status}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}");
    (status.code().unwrap_or(-1), stdout, stderr)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

#[test]
fn the_hello_example_runs_locally() {
    let hello = std::fs::read_to_string(repo_root().join("examples/hello.yml")).unwrap();
    let dir = project(&[("examples/hello.yml", &hello)]);
    let (code, out, err) = exec(dir.path(), &["examples/hello.yml"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("hello from build (run local-"), "the pipeline's env and VIADUCT_* reach steps");
    for line in ["testing on sh", "testing on bash", "tests finished"] {
        assert!(out.contains(line), "{line} missing");
    }
    for line in ["── build › greet", "── build › version: success, exit 0", "── test (bash): success", "── summary"]
    {
        assert!(err.contains(line), "{line} missing");
    }
    assert!(!err.contains("INFO"), "the runner's own logs stay out of the terminal");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the directory is not modified");

    // Jobs that do not need one another at once: each line says whose it is.
    let (code, out, _) = exec(dir.path(), &["examples/hello.yml", "--parallel", "3"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("[test (sh)] testing on sh") && out.contains("[test (bash)] testing on bash"));
}

#[test]
fn failures_skip_dependants_and_set_the_exit_status() {
    let yaml = r#"
jobs:
  first:
    steps:
      - run: test -f data.txt && echo "first sees $(cat data.txt)"; echo written > new-file
  build:
    needs: [first]
    steps:
      - name: compile
        run: echo compiling; exit 3
      - name: never
        run: echo never-printed
  deploy:
    needs: [build]
    steps:
      - run: echo deploying
  cleanup:
    needs: [build]
    if: failure()
    steps:
      - run: echo cleaning up after failure
"#;
    let dir = project(&[("pipeline.yml", yaml), ("data.txt", "the data")]);
    let (code, out, err) = exec(dir.path(), &["pipeline.yml"], &[]);
    assert_eq!(code, 1, "a failed job fails the run");
    assert!(out.contains("first sees the data"), "the workspace is a copy of the directory");
    assert!(!dir.path().join("new-file").exists(), "…not the directory itself");
    let (first, build) = (err.find("── first ›").unwrap(), err.find("── build › compile").unwrap());
    assert!(first < build, "needs order");
    assert!(err.contains("── build › compile: failure, exit 3"));
    assert!(!out.contains("never-printed"));
    assert!(err.contains("── deploy: skipped (skipped: needed job(s) did not succeed: build)"));
    assert!(!out.contains("deploying"));
    assert!(out.contains("cleaning up after failure"), "if: failure() runs");
    assert!(err.contains("build      failure") || err.lines().any(|l| l.contains("build") && l.contains("failure")));

    // --job: that job alone, its needs not run.
    let (code, out, _) = exec(dir.path(), &["pipeline.yml", "--job", "deploy"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("deploying") && !out.contains("compiling"));
    let (code, _, err) = exec(dir.path(), &["pipeline.yml", "--job", "nope"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("no job `nope`"), "{err}");
}

#[test]
fn an_invalid_file_is_reported_with_its_positions() {
    let dir = project(&[("p.yml", "jobs:\n  j:\n    stpes: []\n")]);
    let (code, _, err) = exec(dir.path(), &["p.yml"], &[]);
    assert_eq!(code, 2);
    assert!(err.lines().any(|l| l.starts_with("p.yml:3:5: ")), "{err}");
    let (code, _, err) = exec(dir.path(), &["missing.yml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("missing.yml"));
    let uses = "jobs:\n  j:\n    steps:\n      - uses: nothing-like-it@1\n";
    let dir = project(&[("p.yml", uses)]);
    let (code, _, err) = exec(dir.path(), &["p.yml", "--plugins-dir", "."], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("p.yml:4:15: plugin `nothing-like-it@1` is not among the local plugins"), "{err}");
}

#[test]
fn secrets_come_from_the_environment_and_are_masked() {
    let yaml = "jobs:\n  j:\n    secrets: [API_TOKEN]\n    steps:\n      - run: echo \"token is $API_TOKEN\"\n";
    let dir = project(&[("p.yml", yaml)]);
    let value = "hunter2-very-secret";
    let (code, out, err) = exec(dir.path(), &["p.yml", "--secret", "API_TOKEN"], &[("API_TOKEN", value)]);
    assert_eq!(code, 0);
    assert!(out.contains("token is ***"));
    assert!(!out.contains(value) && !err.contains(value));

    let (code, _, err) = exec(dir.path(), &["p.yml"], &[("API_TOKEN", value)]);
    assert_eq!(code, 1, "a secret not given fails the job");
    assert!(err.contains("secret `API_TOKEN` is not given"), "{err}");
    let (code, _, err) = exec(dir.path(), &["p.yml", "--secret", "API_TOKEN=x"], &[]);
    assert_eq!(code, 2, "never a value on the command line");
    assert!(err.contains("--secret takes a NAME"), "{err}");
    let file = dir.path().join("secrets.env");
    std::fs::write(&file, format!("API_TOKEN={value}\n")).unwrap();
    let (code, out, _) = exec(dir.path(), &["p.yml", "--secrets-file", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("token is ***") && !out.contains(value));
}

#[test]
fn plugin_steps_run_from_a_plugins_dir() {
    let plugins = bin_dir().parent().map(|t| t.join("plugins")).unwrap_or_default();
    if !plugins.join("detect.wasm").exists() {
        return missing_fixture(&format!("{} has no plugins: run `cargo xtask plugins`", plugins.display()));
    }
    let yaml = r#"
jobs:
  j:
    steps:
      - uses: detect@1
        id: d
      - run: echo "types=${{ steps.d.outputs.types }}"
"#;
    let dir = project(&[("p.yml", yaml), ("Cargo.toml", "[package]\nname = \"x\"\n")]);
    let (code, out, err) = exec(dir.path(), &["p.yml", "--plugins-dir", plugins.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(err.contains("── j › detect@1: success"), "{err}");
    assert!(out.contains("types=rust"), "{out}");
}

#[test]
fn container_jobs_run_in_their_image() {
    let Some(socket) = container_socket() else { return };
    let yaml = format!(
        "jobs:\n  j:\n    image: {}\n    steps:\n      - run: cat hello.txt; test -f /run/.containerenv -o -f /.dockerenv && echo in-a-container\n",
        test_image()
    );
    let dir = project(&[("p.yml", &yaml), ("hello.txt", "hello from the workspace")]);
    let (code, out, _) = exec(dir.path(), &["p.yml", "--container-socket", &socket], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("hello from the workspace") && out.contains("in-a-container"), "{out}");
}
