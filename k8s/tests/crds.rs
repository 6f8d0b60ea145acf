#![allow(clippy::unwrap_used)]
//! The committed CRDs are what `gaia crdgen` writes, and their important parts are pinned.

use gaia_k8s::crds;
use serde_json::Value;

fn committed(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn committed_crds_are_what_crdgen_writes() {
    for (file, crd) in crds::all() {
        assert!(
            crds::render(&crd).unwrap() == committed(file),
            "manifests/crds/{file} is out of date: run `{}` and commit the result",
            crds::COMMAND
        );
    }
    assert!(
        crds::kustomization() == committed("kustomization.yaml"),
        "manifests/crds/kustomization.yaml is out of date: run `{}`",
        crds::COMMAND
    );
}

/// The CRD of `file` as JSON, and its one version's `openAPIV3Schema`.
fn crd(file: &str) -> (Value, Value) {
    let crd = crds::all().into_iter().find(|(f, _)| *f == file).unwrap().1;
    let crd = serde_json::to_value(crd).unwrap();
    let versions = crd["spec"]["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1);
    let schema = versions[0]["schema"]["openAPIV3Schema"].clone();
    (crd, schema)
}

fn columns(crd: &Value) -> Vec<(String, String, String)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().into(),
                c["type"].as_str().unwrap().into(),
                c["jsonPath"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn strs(value: &Value) -> Vec<&str> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect()
}

#[test]
fn fleet_crd() {
    let (crd, schema) = crd("fleet.yaml");
    assert_eq!(crd["metadata"]["name"], "fleets.gaia.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "Fleet");
    assert_eq!(crd["spec"]["versions"][0]["name"], "v1alpha1");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
    // kubectl scale and the autoscaler write .spec.replicas through the scale subresource.
    let scale = &version["subresources"]["scale"];
    assert_eq!(scale["specReplicasPath"], ".spec.replicas");
    assert_eq!(scale["statusReplicasPath"], ".status.replicas");
    assert_eq!(scale["labelSelectorPath"], ".status.labelSelector");
    assert!(version["subresources"]["status"].is_object());
    let names: Vec<String> = columns(&crd).into_iter().map(|c| c.0).collect();
    assert_eq!(names, ["Desired", "Current", "Ready", "Allocated", "Worlds", "Age"]);

    let spec = &schema["properties"]["spec"];
    assert_eq!(strs(&spec["required"]), ["regions", "template"]);
    let props = &spec["properties"];
    // The pod template is a core type, kept whole (the controller checks it).
    assert_eq!(props["template"]["type"], "object");
    assert_eq!(props["template"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(props["worldCapacity"]["default"], 10);
    assert_eq!(props["worldCapacity"]["minimum"], 1.0);
    assert_eq!(props["replicas"]["type"], "integer");
    let region = &props["regions"]["items"];
    assert_eq!(strs(&region["required"]), ["name"]);
    assert_eq!(region["properties"]["nodeSelector"]["additionalProperties"]["type"], "string");
    assert_eq!(region["properties"]["affinity"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(region["properties"]["tolerations"]["items"]["x-kubernetes-preserve-unknown-fields"], true);
    let surge = &props["strategy"]["properties"]["rollingUpdate"]["properties"]["maxSurge"];
    assert_eq!(surge["x-kubernetes-int-or-string"], true);
    assert_eq!(surge["default"], "25%");
    let status = &schema["properties"]["status"]["properties"];
    for field in ["replicas", "desiredReplicas", "readyReplicas", "allocatedReplicas", "worlds", "labelSelector"] {
        assert!(status[field].is_object(), "status.{field}");
    }
}

#[test]
fn fleet_autoscaler_crd() {
    let (crd, schema) = crd("fleetautoscaler.yaml");
    assert_eq!(crd["metadata"]["name"], "fleetautoscalers.gaia.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "FleetAutoscaler");
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object());
    assert!(crd["spec"]["versions"][0]["subresources"]["scale"].is_null());
    let spec = &schema["properties"]["spec"];
    // As Agones names it.
    assert_eq!(strs(&spec["required"]), ["fleetName", "policy"]);
    let policy = &spec["properties"]["policy"]["properties"];
    let mut blocks: Vec<&str> = policy.as_object().unwrap().keys().map(String::as_str).collect();
    blocks.sort();
    assert_eq!(blocks, ["adaptive", "buffer", "chain", "id", "schedule", "type", "webhook"]);
    assert_eq!(policy["buffer"]["properties"]["bufferSize"]["x-kubernetes-int-or-string"], true);
    assert_eq!(strs(&policy["buffer"]["required"]), ["bufferSize", "maxReplicas"]);
    assert_eq!(strs(&policy["buffer"]["properties"]["unit"]["enum"]), ["worlds", "servers"]);
    assert_eq!(policy["adaptive"]["properties"]["safetyFactor"]["default"], 2.0);
    // Recursion (a schedule's policy, a chain's entries) is cut: Kubernetes schemas cannot
    // hold it. The autoscaler checks those parts when it reads the spec.
    assert_eq!(policy["schedule"]["properties"]["policy"]["x-kubernetes-preserve-unknown-fields"], true);
    assert_eq!(policy["chain"]["items"]["x-kubernetes-preserve-unknown-fields"], true);
    // Per-region overrides have the same shape.
    let overrides = &spec["properties"]["regions"]["additionalProperties"];
    assert_eq!(overrides["properties"], spec["properties"]["policy"]["properties"]);
    assert_eq!(spec["properties"]["scaleDownDelay"]["default"], "30s");
    assert_eq!(spec["properties"]["scaleDownStep"]["default"], "25%");
    let status = &schema["properties"]["status"]["properties"];
    for field in ["currentReplicas", "desiredReplicas", "ableToScale", "scalingLimited", "lastScaleTime", "regions"] {
        assert!(status[field].is_object(), "status.{field}");
    }
}

#[test]
fn game_server_crd() {
    let (crd, schema) = crd("gameserver.yaml");
    assert_eq!(crd["metadata"]["name"], "gameservers.gaia.dev");
    assert_eq!(crd["spec"]["names"]["kind"], "GameServer");
    let columns = columns(&crd);
    let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names, ["State", "Fleet", "Region", "Address", "Worlds", "Players", "Age"]);
    assert!(columns.contains(&("State".into(), "string".into(), ".status.state".into())));
    let state = &schema["properties"]["status"]["properties"]["state"];
    assert_eq!(
        strs(&state["enum"]),
        ["Scheduled", "Ready", "Allocated", "Reserved", "Draining", "Shutdown", "Unhealthy", "Error"]
    );
}
