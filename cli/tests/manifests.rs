#![allow(clippy::unwrap_used)]
//! The Kubernetes manifests validate offline, and the validator rejects what a cluster would.
//!
//! `manifests/validate.py` builds every overlay and example with `kubectl kustomize` and
//! checks each object against the Kubernetes schemas (kubernetes-validate) or our CRDs
//! (manifests/crds), and against our deployment policy. No cluster is involved.
//!
//! Needs `kubectl` (or `$KUBECTL`) and `python3` with kubernetes-validate: skipped with a
//! printed reason when either is missing, failed under `REQUIRE_SERVICES` (as in CI, whose
//! `.ci/run` installs kubernetes-validate).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Why the validator cannot run here, if it cannot.
fn missing_tool() -> Option<String> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    match Command::new(&kubectl).args(["version", "--client"]).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            return Some(format!(
                "`{kubectl} version --client` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Err(e) => return Some(format!("{kubectl} cannot be run: {e}")),
    }
    match Command::new("python3").args(["-c", "import kubernetes_validate"]).output() {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some(
            "python3 cannot import kubernetes_validate (python3 -m pip install 'kubernetes-validate==1.37.0')".into(),
        ),
        Err(e) => Some(format!("python3 cannot be run: {e}")),
    }
}

/// `false` (after saying why) when the tools are missing and `REQUIRE_SERVICES` is unset.
fn tools_present() -> bool {
    match missing_tool() {
        None => true,
        Some(why) => gaia_testkit::services::skip::<()>(why).is_some(),
    }
}

/// Runs the validator on `paths` (everything when empty).
fn validate(paths: &[PathBuf]) -> Output {
    Command::new("python3").arg(repo().join("manifests/validate.py")).args(paths).current_dir(repo()).output().unwrap()
}

fn transcript(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The documents of a committed manifest (they are separated by `---` lines).
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    text.split("\n---\n").map(|doc| serde_norway::from_str(doc).unwrap()).collect()
}

fn document(file: &str, kind: &str) -> Value {
    documents(file).into_iter().find(|doc| doc["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {file}"))
}

/// A scratch directory for objects to feed the validator; JSON is YAML, so they go as JSON.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("gaia-manifests-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, object: &Value) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, serde_json::to_string_pretty(object).unwrap()).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Each `(file, expected)`: the validator fails, and reports `expected` against that file.
fn assert_rejected(cases: &[(PathBuf, String)]) {
    let files: Vec<PathBuf> = cases.iter().map(|(path, _)| path.clone()).collect();
    let out = validate(&files);
    assert_eq!(out.status.code(), Some(1), "the validator should reject these\n{}", transcript(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (path, expected) in cases {
        let line = format!("ERROR {}: {expected}", path.display());
        assert!(
            stderr.lines().any(|l| l.starts_with(&line)),
            "expected a line starting {line:?}\n{}",
            transcript(&out)
        );
    }
}

#[test]
fn every_overlay_and_example_validates() {
    if !tools_present() {
        return;
    }
    let out = validate(&[]);
    assert!(out.status.success(), "manifests/validate.py failed\n{}", transcript(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for build in ["overlays/small", "overlays/medium", "overlays/large", "examples/zombie-survival"] {
        assert!(stdout.lines().any(|l| l.starts_with(&format!("ok   {build}: "))), "{build} was not checked\n{stdout}");
    }
}

#[test]
fn broken_built_in_objects_are_rejected() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("built-in");
    let deployment = document("manifests/base/allocator.yaml", "Deployment");
    // The committed object passes, so what fails below fails for the one change.
    let valid = scratch.write("deployment.yaml", &deployment);
    let out = validate(std::slice::from_ref(&valid));
    assert!(out.status.success(), "the committed Deployment should pass alone\n{}", transcript(&out));

    let mut replicas = deployment.clone();
    replicas["spec"]["replicas"] = json!("two");
    let mut unknown = deployment;
    unknown["spec"]["template"]["spec"]["containers"][0]["resource"] = json!({"limits": {"cpu": "1"}});
    let monitor = json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "gaia-allocator"},
        "spec": {"endpoints": [{"port": "http"}]},
    });
    assert_rejected(&[
        (
            scratch.write("replicas.yaml", &replicas),
            "Deployment gaia-allocator: spec.replicas: 'two' is not of type 'integer'".into(),
        ),
        (
            scratch.write("unknown-field.yaml", &unknown),
            "Deployment gaia-allocator: spec.template.spec.containers[0]: Additional properties are not allowed \
             ('resource' was unexpected)"
                .into(),
        ),
        (
            scratch.write("unknown-kind.yaml", &monitor),
            "ServiceMonitor gaia-allocator: unknown kind: Kubernetes 1.33.0 has no monitoring.coreos.com/v1 \
             ServiceMonitor"
                .into(),
        ),
    ]);
}

/// Checked against the CRDs `gaia crdgen` writes into manifests/crds; fails while they are missing.
#[test]
fn broken_gaia_objects_are_rejected() {
    if !tools_present() {
        return;
    }
    let scratch = Scratch::new("gaia");
    let fleet = document("manifests/examples/zombie-survival/fleet.yaml", "Fleet");
    let autoscaler = document("manifests/examples/zombie-survival/fleetautoscaler.yaml", "FleetAutoscaler");
    let valid = [scratch.write("fleet.yaml", &fleet), scratch.write("fleetautoscaler.yaml", &autoscaler)];
    let out = validate(&valid);
    assert!(out.status.success(), "the example's Fleet and FleetAutoscaler should pass alone\n{}", transcript(&out));

    let mut capacity = fleet.clone();
    capacity["spec"]["worldCapacity"] = json!("ten");
    // A real API server would prune this silently; the validator must not let a typo by.
    let mut bogus = fleet.clone();
    bogus["spec"]["bogus"] = json!(true);
    // int-or-string: a number or a string, nothing else.
    let mut surge = fleet.clone();
    surge["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = json!(["25%"]);
    let mut misspelt = fleet;
    misspelt["kind"] = json!("Flet");
    let mut buffer = autoscaler;
    buffer["spec"]["regions"]["us-east"]["buffer"]["bufferSize"] = json!(true);
    assert_rejected(&[
        (
            scratch.write("capacity.yaml", &capacity),
            "Fleet zombie-survival: spec.worldCapacity: 'ten' is not of type 'integer'".into(),
        ),
        (
            scratch.write("bogus.yaml", &bogus),
            "Fleet zombie-survival: spec: Additional properties are not allowed ('bogus' was unexpected)".into(),
        ),
        (
            scratch.write("surge.yaml", &surge),
            "Fleet zombie-survival: spec.strategy.rollingUpdate.maxSurge: ['25%'] is not of type 'integer', 'string'"
                .into(),
        ),
        (scratch.write("misspelt.yaml", &misspelt), "Flet zombie-survival: no CRD for gaia.dev/Flet".into()),
        (
            scratch.write("buffer.yaml", &buffer),
            "FleetAutoscaler zombie-survival: spec.regions.us-east.buffer.bufferSize: True is not of type 'integer', \
             'string'"
                .into(),
        ),
    ]);
}
