//! kstatus for Slipway objects: what Flux (`wait: true`, `healthChecks`) and other tools built
//! on `sigs.k8s.io/cli-utils/pkg/kstatus` report for a Release in each phase, and for
//! Environments and ScaledWorkers.
//!
//! The computation is kstatus's own: the Go module `tests/testenv/kstatus` runs `status.Compute`
//! on every fixture of `tests/fixtures/kstatus/*.yaml` and compares it with the fixture's
//! `# expect:` header line. This test runs `go test` there, with the committed go.mod and
//! go.sum (modules come from the module cache, or the Go module proxy the first time).
//!
//! Before that, each fixture is read into the operator's own types, so a fixture cannot hold a
//! status the operator could not write (a misspelt field, a phase that does not exist).

mod common;

use std::path::Path;
use std::process::Command;

use common::{files, repo_root, yaml_documents};
use serde_json::Value;
use slipway::api::{Environment, Release, ScaledWorker};

const MODULE: &str = "tests/testenv/kstatus";
const FIXTURES: &str = "tests/fixtures/kstatus";

/// `status` read into `T` and written back must be the same JSON: nothing in the fixture is
/// unknown to the operator's status type, and every value has the type the operator writes.
fn status_round_trips<T>(path: &Path, doc: &Value)
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let Some(status) = doc.get("status") else {
        return;
    };
    let typed: T = serde_json::from_value(status.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: status is not a status of the operator's API: {e}",
            path.display()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back,
        status,
        "{}: status changes when read into the operator's type and written back \
         (a misspelt or unknown field?)",
        path.display()
    );
}

/// The whole object read into the operator's type for its kind.
fn typed<T: serde::de::DeserializeOwned>(path: &Path, doc: &Value) -> T {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: not an object of the operator's API: {e}",
            path.display()
        )
    })
}

#[test]
fn fixtures_are_objects_of_our_api() {
    let dir = repo_root().join(FIXTURES);
    let paths = files(&dir, "yaml");
    assert!(!paths.is_empty(), "no fixtures in {}", dir.display());
    for path in &paths {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.lines().any(|l| l.starts_with("# expect: ")),
            "{}: no `# expect: InProgress|Current|Failed` line",
            path.display()
        );
        let docs = yaml_documents(path);
        assert_eq!(docs.len(), 1, "{}: one object per fixture", path.display());
        let doc = &docs[0];
        match doc["kind"].as_str() {
            Some("Release") => {
                typed::<Release>(path, doc);
                status_round_trips::<slipway::api::ReleaseStatus>(path, doc);
            }
            Some("Environment") => {
                typed::<Environment>(path, doc);
                status_round_trips::<slipway::api::EnvironmentStatus>(path, doc);
            }
            Some("ScaledWorker") => {
                typed::<ScaledWorker>(path, doc);
                status_round_trips::<slipway::api::ScaledWorkerStatus>(path, doc);
            }
            other => panic!("{}: unexpected kind {other:?}", path.display()),
        }
    }
}

#[test]
fn kstatus_of_every_fixture_is_as_expected() {
    let dir = repo_root().join(MODULE);
    let fixtures = files(&repo_root().join(FIXTURES), "yaml").len();
    let mut cmd = Command::new("go");
    cmd.current_dir(&dir)
        .args(["test", "-count=1", "-v", "./..."])
        // The committed go.sum is the record of what may be built: never rewrite go.mod or
        // go.sum here (-mod=mod would), never fetch a newer toolchain.
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .env("GOWORK", "off")
        .env("CGO_ENABLED", "0");
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`go` is not installed or not on PATH: this test runs the kstatus library (Go) \
             against tests/fixtures/kstatus. Install Go 1.24 or newer (hack/deps checks for it; the \
             local control plane in tests/testenv needs it too) and run again"
        ),
        Err(e) => panic!("running go test in {}: {e}", dir.display()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("go test -v ./... in {MODULE}:\n{stdout}");
    if !stderr.is_empty() {
        println!("stderr:\n{stderr}");
    }
    assert!(
        out.status.success(),
        "kstatus is not what the fixtures expect: go test failed ({}); its output is above",
        out.status
    );
    // Guard against a run that tested nothing (e.g. a fixture directory it could not find).
    let passed = stdout
        .lines()
        .filter(|l| {
            l.trim_start()
                .starts_with("--- PASS: TestKstatusOfSlipwayObjects/")
        })
        .count();
    assert_eq!(
        passed, fixtures,
        "go test passed {passed} fixture cases, but {FIXTURES} holds {fixtures} fixtures"
    );
    assert!(
        stdout.contains("--- PASS: TestEveryReleasePhaseHasAFixture"),
        "the phase coverage check did not run"
    );
}
