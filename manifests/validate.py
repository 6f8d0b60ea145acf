#!/usr/bin/env python3
"""Offline validation of the Kubernetes manifests: no cluster, no network.

    python3 manifests/validate.py            # every overlay and example, and the CRDs
    python3 manifests/validate.py PATH ...   # only these

A directory is built with `kubectl kustomize` and every object it yields is checked:
  - built-in kinds against the Kubernetes OpenAPI schemas of KUBERNETES_VERSION, strictly
    (unknown fields are errors), with kubernetes-validate;
  - gaia.dev kinds against the openAPIV3Schema of their CRD in manifests/crds/*.yaml, turned
    into JSON Schema (int-or-string, nullable, preserve-unknown-fields, embedded resources);
    unknown fields are errors here too, although a real API server would silently prune them;
    a Fleet's pod template is also checked as a core PodTemplate;
  - names and labels as the API server checks them;
  - the deployment policy: the app.kubernetes.io labels, one namespace for everything,
    requests and limits and a restricted security context on every container, the
    Secrets of the contract (CONTRACT_SECRETS), and that what refers to something (Secrets
    and their keys, ServiceAccounts, Roles, selectors, named ports, HPA targets, a
    FleetAutoscaler's Fleet and regions) finds it in the build.
The policy is checked once every object of the build has passed the checks before it.
A file is read as YAML documents and checked against the schemas, names and labels only
(not the policy), so a test can feed it one deliberately broken object.

The CRD files themselves are checked as apiextensions.k8s.io/v1 objects. Not checked
offline: CEL rules (x-kubernetes-validations), admission webhooks, anything cluster state.

Exit status: 0 when everything is valid, 1 when anything is not (each error names the
source, kind, namespace/name, field and reason), 2 when a tool is missing.
Needs Python 3.11 and kubernetes-validate (which brings jsonschema and PyYAML), and kubectl
(with its built-in kustomize) for directories; KUBECTL overrides the kubectl binary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - the message is the point
    print(
        f"validate.py: {e}; install it with: python3 -m pip install 'kubernetes-validate==1.37.0'",
        file=sys.stderr,
    )
    sys.exit(2)

# The Kubernetes version whose API schemas the built-in kinds are checked against. Keep it
# in step with the k8s-openapi feature in Cargo.toml (v1_33).
KUBERNETES_VERSION = "1.33.0"

MANIFESTS = Path(__file__).resolve().parent
DEFAULT_CRDS = MANIFESTS / "crds"
BUILD_ROOTS = [MANIFESTS / "overlays", MANIFESTS / "examples"]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

# Our API group: an object of it with no CRD file is an error (crdgen has not run, or the
# kind is misspelt), never an "unknown kind" to skip.
OWN_GROUP = "gaia.dev"

# The Secrets (and keys) of the contract: the Deployments name some; the game-server pods the
# controller writes name the rest, so every build must hold them all.
CONTRACT_SECRETS = {
    "gaia-secrets": ("join-secret", "sdk-secret", "allocator-tokens"),
    "gaia-redis": ("url",),
    "gaia-postgres": ("url",),
}

REQUIRED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of")
PART_OF = "gaia-fleet"

# Built-in kinds that are not namespaced (the ones these manifests could plausibly hold).
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
    "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass", "RuntimeClass",
    "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService",
    "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "Node",
}
# Names that are path segments rather than DNS names (they may hold ':').
PATH_SEGMENT_NAMED = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
# Names that must be DNS-1035 labels (they become DNS names or environment variables).
DNS1035_NAMED = {"Service"}
DNS1123_LABEL_NAMED = {"Namespace"}

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


# ----------------------------------------------------------------------------- reporting


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def error(self, source: str, obj: dict | None, message: str) -> None:
        self.errors.append(f"{source}: {describe(obj)}{message}" if obj is not None else f"{source}: {message}")


def describe(obj: dict) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name", "<no name>")
    if meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    return f"{obj.get('kind', '<no kind>')} {name}: "


def json_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(the object)"


def group_of(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


# ----------------------------------------------------------------------------- CRDs


def structural_to_json_schema(node: Any, *, in_junctor: bool = False) -> Any:
    """A CRD's structural schema (OpenAPI v3 with Kubernetes extensions) as a JSON Schema
    (draft 4, whose boolean exclusiveMinimum OpenAPI 3.0 shares) that also rejects the
    fields a real API server would prune, so that typos are caught."""
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: structural_to_json_schema(sub) for name, sub in value.items()}
        elif key == "items":
            out[key] = (
                [structural_to_json_schema(sub) for sub in value]
                if isinstance(value, list)
                else structural_to_json_schema(value)
            )
        elif key == "additionalProperties":
            out[key] = structural_to_json_schema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [structural_to_json_schema(sub, in_junctor=True) for sub in value]
        elif key == "not":
            out[key] = structural_to_json_schema(value, in_junctor=True)
        elif key.startswith("x-kubernetes-") or key in ("nullable", "default", "example", "externalDocs"):
            continue  # handled below, or no validation meaning
        else:
            out[key] = value

    if node.get("x-kubernetes-int-or-string") is True:
        # Not a JSON Schema keyword: the value is an integer or a string, nothing else.
        out["type"] = ["integer", "string"]
    if node.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    if node.get("x-kubernetes-embedded-resource") is True:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
        out["required"] = sorted({*out.get("required", []), "apiVersion", "kind"})

    preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
    is_object = out.get("type") == "object" or "properties" in out
    # Inside allOf/anyOf/oneOf/not a structural schema may only restate the parent's
    # properties, so the parent alone decides which fields are known.
    if is_object and not preserves and not in_junctor and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def count_cel_rules(node: Any) -> int:
    if isinstance(node, dict):
        own = len(node.get("x-kubernetes-validations") or [])
        return own + sum(count_cel_rules(v) for v in node.values())
    if isinstance(node, list):
        return sum(count_cel_rules(v) for v in node)
    return 0


@dataclass
class Crd:
    kind: str
    group: str
    scope: str
    source: str
    # served version name -> validator of the whole object (apiVersion, kind, spec, status)
    validators: dict[str, jsonschema.protocols.Validator]


def load_crds(crd_dir: Path, report: Report) -> dict[tuple[str, str], Crd]:
    crds: dict[tuple[str, str], Crd] = {}
    files = sorted(p for p in crd_dir.glob("*.yaml") if p.name not in KUSTOMIZATION_FILES) if crd_dir.is_dir() else []
    for path in files:
        source = display(path)
        before = len(report.errors)
        load_crd_file(path, source, report, crds)
        status = "ok  " if len(report.errors) == before else "FAIL"
        print(f"{status} {source}: {', '.join(sorted(c.kind for c in crds.values() if c.source == source)) or 'no CRD'}")
    return crds


def load_crd_file(path: Path, source: str, report: Report, crds: dict[tuple[str, str], Crd]) -> None:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        report.error(source, None, f"not YAML: {e}")
        return
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            report.error(source, doc if isinstance(doc, dict) else None, "only CustomResourceDefinitions belong in crds/")
            continue
        if not validate_builtin(doc, source, report):
            continue
        spec = doc["spec"]
        kind, group = spec["names"]["kind"], spec["group"]
        validators = {}
        for version in spec["versions"]:
            if not version.get("served", False):
                continue
            raw = (version.get("schema") or {}).get("openAPIV3Schema")
            if raw is None:
                report.error(source, doc, f"version {version['name']} has no openAPIV3Schema")
                continue
            schema = structural_to_json_schema(raw)
            # The API server itself owns apiVersion, kind and metadata at the root;
            # metadata is checked on its own, as a core ObjectMeta.
            props = schema.setdefault("properties", {})
            props["apiVersion"] = {"type": "string"}
            props["kind"] = {"type": "string"}
            props["metadata"] = {"type": "object"}
            try:
                jsonschema.Draft4Validator.check_schema(schema)
            except jsonschema.SchemaError as e:
                report.error(source, doc, f"version {version['name']}: schema is not usable: {e.message}")
                continue
            validators[version["name"]] = jsonschema.Draft4Validator(schema)
        if (group, kind) in crds:
            report.error(source, doc, f"a second CRD for {group}/{kind} (first in {crds[(group, kind)].source})")
        crds[(group, kind)] = Crd(kind, group, spec.get("scope", "Namespaced"), source, validators)
        rules = count_cel_rules(spec)
        if rules:
            report.notes.append(
                f"{source}: {rules} CEL rule(s) (x-kubernetes-validations) are not evaluated offline"
            )


# ----------------------------------------------------------------------------- schemas


def validate_builtin(obj: dict, source: str, report: Report, *, prefix: str = "") -> bool:
    """Checks a built-in object strictly against the Kubernetes schemas; `prefix` names the
    field a wrapped fragment came from (a Fleet's template)."""
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        return True
    except kubernetes_validate.ValidationError as e:
        report.error(source, obj if not prefix else None, f"{prefix}{json_path(e.path)}: {e.message}")
    except kubernetes_validate.SchemaNotFoundError:
        report.error(
            source,
            obj,
            f"unknown kind: Kubernetes {KUBERNETES_VERSION} has no {obj.get('apiVersion')} {obj.get('kind')} "
            "and no CRD in manifests/crds defines it",
        )
    except kubernetes_validate.VersionNotSupportedError:
        report.error(source, None, f"kubernetes-validate does not know Kubernetes {KUBERNETES_VERSION}")
    return False


def validate_metadata(obj: dict, source: str, report: Report) -> None:
    """ObjectMeta of a custom object, checked strictly as a core object's would be."""
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata")}
    try:
        kubernetes_validate.validate(wrapper, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        report.error(source, obj, f"{json_path(e.path)}: {e.message}")


def validate_custom(obj: dict, source: str, report: Report, crds: dict[tuple[str, str], Crd]) -> bool:
    api_version, kind = obj["apiVersion"], obj["kind"]
    group = group_of(api_version)
    crd = crds.get((group, kind))
    if crd is None:
        report.error(
            source,
            obj,
            f"no CRD for {group}/{kind} in manifests/crds (crdgen writes them; is the kind misspelt?)",
        )
        return False
    version = api_version.split("/", 1)[1]
    validator = crd.validators.get(version)
    if validator is None:
        served = ", ".join(sorted(crd.validators)) or "none"
        report.error(source, obj, f"{crd.source} serves no version {version} of {kind} (served: {served})")
        return False
    ok = True
    for err in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        report.error(source, obj, f"{json_path(err.absolute_path)}: {err.message}")
        ok = False
    validate_metadata(obj, source, report)
    if kind == "Fleet" and group == OWN_GROUP:
        template = (obj.get("spec") or {}).get("template")
        if isinstance(template, dict):
            # Whatever the CRD says of it, the controller hands it to the API server as a pod.
            meta = obj.get("metadata") or {}
            wrapper = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": meta.get("name", "fleet")},
                "template": template,
            }
            before = len(report.errors)
            validate_builtin(wrapper, source, report, prefix=f"{describe(obj)}spec.")
            ok = ok and len(report.errors) == before
    return ok


def check_names_and_labels(obj: dict, source: str, report: Report) -> None:
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        report.error(source, obj, "metadata.name is missing")
        return
    name, kind = str(meta["name"]), obj.get("kind")
    if kind in PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            report.error(source, obj, f"metadata.name {name!r} may not be '.', '..' or hold '/' or '%'")
    elif kind in DNS1035_NAMED:
        if len(name) > 63 or not DNS1035_LABEL.match(name):
            report.error(source, obj, f"metadata.name {name!r} is not a DNS-1035 label (a-z, 0-9, '-', starts with a letter, at most 63)")
    elif kind in DNS1123_LABEL_NAMED:
        if len(name) > 63 or not DNS1123_LABEL.match(name):
            report.error(source, obj, f"metadata.name {name!r} is not a DNS-1123 label (a-z, 0-9, '-', at most 63)")
    elif len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        report.error(source, obj, f"metadata.name {name!r} is not a DNS-1123 subdomain (a-z, 0-9, '-', '.', at most 253)")
    for where, labels in labelled(obj):
        if not isinstance(labels, dict):
            continue
        for key, value in labels.items():
            problem = label_key_problem(str(key))
            if problem:
                report.error(source, obj, f"{where}: label key {key!r} {problem}")
            if not isinstance(value, str) or len(value) > 63 or not LABEL_VALUE.match(value):
                report.error(source, obj, f"{where}: label {key}={value!r} is not a valid label value")


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix)):
        return "has a prefix that is not a DNS-1123 subdomain"
    if len(name) > 63 or not LABEL_NAME.match(name):
        return "is not a valid label name"
    return None


def labelled(obj: dict):
    yield "metadata.labels", (obj.get("metadata") or {}).get("labels") or {}
    for where, template in pod_templates(obj):
        yield f"{where}.metadata.labels", (template.get("metadata") or {}).get("labels") or {}


def pod_templates(obj: dict):
    """(field path, PodTemplateSpec) of every pod template the object holds."""
    kind, spec = obj.get("kind"), obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job") or (
        kind == "Fleet" and group_of(obj.get("apiVersion", "")) == OWN_GROUP
    ):
        if isinstance(spec.get("template"), dict):
            yield "spec.template", spec["template"]
    elif kind == "CronJob":
        template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template")
        if isinstance(template, dict):
            yield "spec.jobTemplate.spec.template", template


def check_schema(obj: Any, source: str, report: Report, crds: dict[tuple[str, str], Crd]) -> bool:
    if not isinstance(obj, dict):
        report.error(source, None, f"a document is not a mapping: {obj!r:.80}")
        return False
    if not isinstance(obj.get("apiVersion"), str) or not isinstance(obj.get("kind"), str):
        report.error(source, obj, "apiVersion and kind must both be set")
        return False
    before = len(report.errors)
    check_names_and_labels(obj, source, report)
    group = group_of(obj["apiVersion"])
    if group == OWN_GROUP or any(g == group for g, _ in crds):
        validate_custom(obj, source, report, crds)
    else:
        validate_builtin(obj, source, report)
    return len(report.errors) == before


# ----------------------------------------------------------------------------- policy


def spec_of(obj: dict) -> dict:
    return obj.get("spec") if isinstance(obj.get("spec"), dict) else {}


def selector_matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def containers_of(pod_spec: dict):
    for group in ("initContainers", "containers"):
        for container in pod_spec.get(group) or []:
            yield group, container


def check_policy(objs: list[dict], source: str, report: Report, crds: dict[tuple[str, str], Crd]) -> None:
    by_kind: dict[str, list[dict]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)

    def named(kind: str, name: str) -> dict | None:
        return next((o for o in by_kind.get(kind, []) if o["metadata"]["name"] == name), None)

    # One game, one namespace, holding everything namespaced.
    namespaces = [o["metadata"]["name"] for o in by_kind.get("Namespace", [])]
    if len(namespaces) != 1:
        report.error(source, None, f"expected exactly one Namespace object, found {namespaces or 'none'}")
    home = namespaces[0] if len(namespaces) == 1 else None
    for obj in objs:
        crd = crds.get((group_of(obj["apiVersion"]), obj["kind"]))
        cluster_scoped = obj["kind"] in CLUSTER_SCOPED if crd is None else crd.scope == "Cluster"
        namespace = obj["metadata"].get("namespace")
        if cluster_scoped and namespace:
            report.error(source, obj, f"is cluster-scoped but has metadata.namespace {namespace!r}")
        elif not cluster_scoped and home and namespace != home:
            report.error(source, obj, f"is in namespace {namespace!r}, not the build's namespace {home!r}")

        labels = obj["metadata"].get("labels") or {}
        missing = [k for k in REQUIRED_LABELS if not labels.get(k)]
        if missing:
            report.error(source, obj, f"metadata.labels lacks {', '.join(missing)}")
        elif labels["app.kubernetes.io/part-of"] != PART_OF:
            report.error(source, obj, f"metadata.labels app.kubernetes.io/part-of is not {PART_OF!r}")

    # Pods: sized, locked down, and referring only to what the build holds.
    secrets = {o["metadata"]["name"]: o for o in by_kind.get("Secret", [])}
    accounts = {o["metadata"]["name"] for o in by_kind.get("ServiceAccount", [])}
    for name, keys in CONTRACT_SECRETS.items():
        secret = secrets.get(name)
        held = {**(secret.get("data") or {}), **(secret.get("stringData") or {})} if secret else {}
        missing = [k for k in keys if k not in held]
        if secret is None:
            report.error(source, None, f"Secret {name} (keys {', '.join(keys)}) is not in the build")
        elif missing:
            report.error(source, secret, f"lacks key(s) {', '.join(missing)}")
    workloads: list[tuple[dict, dict]] = []  # (object, pod template)
    for obj in objs:
        for where, template in pod_templates(obj):
            workloads.append((obj, template))
            check_pod(obj, where, template, source, report, secrets, accounts)
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            selector = ((spec_of(obj).get("selector") or {}).get("matchLabels")) or {}
            template_labels = ((spec_of(obj).get("template") or {}).get("metadata") or {}).get("labels") or {}
            if not selector or not selector_matches(selector, template_labels):
                report.error(source, obj, "spec.selector.matchLabels must be set and match spec.template.metadata.labels")

    pod_workloads = [(o, t) for o, t in workloads if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]

    def selected(selector: dict) -> list[tuple[dict, dict]]:
        """Workloads whose pods the selector picks; a StatefulSet pod's own name label
        (statefulset.kubernetes.io/pod-name) picks that pod if the ordinal exists."""
        selector = dict(selector)
        pod_name = selector.pop("statefulset.kubernetes.io/pod-name", None)
        found = []
        for obj, template in pod_workloads:
            if not selector_matches(selector, (template.get("metadata") or {}).get("labels") or {}):
                continue
            if pod_name is not None:
                name, replicas = obj["metadata"]["name"], spec_of(obj).get("replicas", 1)
                ordinal = pod_name[len(name) + 1:] if pod_name.startswith(name + "-") else ""
                if obj["kind"] != "StatefulSet" or not ordinal.isdigit() or int(ordinal) >= replicas:
                    continue
            found.append((obj, template))
        return found

    for svc in by_kind.get("Service", []):
        selector = spec_of(svc).get("selector")
        if not selector:
            continue
        matches = selected(selector)
        if not matches:
            report.error(source, svc, f"spec.selector {selector} selects no pod template of the build")
            continue
        for i, port in enumerate(spec_of(svc).get("ports") or []):
            target = port.get("targetPort")
            if isinstance(target, str) and not any(
                target in container_port_names(t) for _, t in matches
            ):
                report.error(source, svc, f"spec.ports[{i}].targetPort {target!r} is no named port of the pods it selects")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        selector = ((spec_of(pdb).get("selector") or {}).get("matchLabels")) or {}
        if not selected(selector):
            report.error(source, pdb, f"spec.selector.matchLabels {selector} selects no pod template of the build")
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        ref = spec_of(hpa).get("scaleTargetRef") or {}
        target = named(ref.get("kind", ""), ref.get("name", ""))
        if target is None:
            report.error(source, hpa, f"spec.scaleTargetRef {ref.get('kind')} {ref.get('name')} is not in the build")
        elif "replicas" in spec_of(target):
            report.error(
                source,
                target,
                f"spec.replicas is set although HorizontalPodAutoscaler {hpa['metadata']['name']} scales it "
                "(every apply would reset the HPA's count)",
            )
    for sts in by_kind.get("StatefulSet", []):
        svc = named("Service", spec_of(sts).get("serviceName", ""))
        if svc is None or spec_of(svc).get("clusterIP") != "None":
            report.error(source, sts, f"spec.serviceName {sts['spec'].get('serviceName')!r} is not a headless Service of the build")

    # RBAC: bindings point at Roles and ServiceAccounts of the build, in its namespace.
    for binding in by_kind.get("RoleBinding", []):
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "Role" and named("Role", ref.get("name", "")) is None:
            report.error(source, binding, f"roleRef Role {ref.get('name')!r} is not in the build")
        for i, subject in enumerate(binding.get("subjects") or []):
            if subject.get("kind") != "ServiceAccount":
                continue
            if subject.get("namespace") != binding["metadata"].get("namespace"):
                report.error(
                    source,
                    binding,
                    f"subjects[{i}] ServiceAccount {subject.get('name')} is in namespace "
                    f"{subject.get('namespace')!r}, not the binding's {binding['metadata'].get('namespace')!r}",
                )
            if subject.get("name") not in accounts:
                report.error(source, binding, f"subjects[{i}] ServiceAccount {subject.get('name')!r} is not in the build")

    # The game: each FleetAutoscaler scales a Fleet of the build, in regions it has.
    fleets = {
        o["metadata"]["name"]: o for o in by_kind.get("Fleet", []) if group_of(o["apiVersion"]) == OWN_GROUP
    }
    for fleet in fleets.values():
        names = [r.get("name") for r in (fleet.get("spec") or {}).get("regions") or [] if isinstance(r, dict)]
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        if dup:
            report.error(source, fleet, f"spec.regions names {dup} more than once")
    for fas in by_kind.get("FleetAutoscaler", []):
        if group_of(fas["apiVersion"]) != OWN_GROUP:
            continue
        spec = fas.get("spec") or {}
        fleet = fleets.get(spec.get("fleetName"))
        if fleet is None:
            report.error(source, fas, f"spec.fleetName {spec.get('fleetName')!r} is no Fleet of the build")
            continue
        regions = {r.get("name") for r in (fleet.get("spec") or {}).get("regions") or [] if isinstance(r, dict)}
        for region in (spec.get("regions") or {}):
            if region not in regions:
                report.error(
                    source, fas, f"spec.regions.{region}: Fleet {fleet['metadata']['name']} has no region {region!r}"
                )


def container_port_names(template: dict) -> set[str]:
    return {
        p["name"]
        for _, c in containers_of(template.get("spec") or {})
        for p in c.get("ports") or []
        if p.get("name")
    }


def check_pod(obj: dict, where: str, template: dict, source: str, report: Report, secrets: dict, accounts: set) -> None:
    pod = template.get("spec") or {}
    pod_security = pod.get("securityContext") or {}
    account = pod.get("serviceAccountName")
    if account and account != "default" and account not in accounts:
        report.error(source, obj, f"{where}.spec.serviceAccountName {account!r} is not in the build")
    for volume in pod.get("volumes") or []:
        secret = (volume.get("secret") or {})
        if secret and not secret.get("optional") and secret.get("secretName") not in secrets:
            report.error(source, obj, f"{where}: volume {volume.get('name')} needs Secret {secret.get('secretName')!r}, not in the build")
    for group, container in containers_of(pod):
        at = f"{where}.spec.{group}[{container.get('name')}]"
        resources = container.get("resources") or {}
        for bound in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(bound) or {})]
            if missing:
                report.error(source, obj, f"{at}.resources.{bound} lacks {', '.join(missing)}")
        security = container.get("securityContext") or {}

        def setting(key: str):
            return security.get(key, pod_security.get(key))

        if setting("runAsNonRoot") is not True:
            report.error(source, obj, f"{at}: runAsNonRoot must be true (pod or container securityContext)")
        if (setting("seccompProfile") or {}).get("type") != "RuntimeDefault":
            report.error(source, obj, f"{at}: seccompProfile.type must be RuntimeDefault (pod or container securityContext)")
        if security.get("readOnlyRootFilesystem") is not True:
            report.error(source, obj, f"{at}.securityContext.readOnlyRootFilesystem must be true")
        if security.get("allowPrivilegeEscalation") is not False:
            report.error(source, obj, f"{at}.securityContext.allowPrivilegeEscalation must be false")
        if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
            report.error(source, obj, f"{at}.securityContext.capabilities.drop must hold ALL")
        ports = {p.get("name") for p in container.get("ports") or [] if p.get("name")}
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(probe_name) or {}
            for handler in ("httpGet", "tcpSocket", "grpc"):
                port = (probe.get(handler) or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    report.error(source, obj, f"{at}.{probe_name}.{handler}.port {port!r} is no named port of the container")
        for env in container.get("env") or []:
            ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
            if not ref or ref.get("optional"):
                continue
            secret = secrets.get(ref.get("name"))
            if secret is None:
                report.error(source, obj, f"{at}.env.{env.get('name')} needs Secret {ref.get('name')!r}, not in the build")
            elif ref.get("key") not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
                report.error(source, obj, f"{at}.env.{env.get('name')} needs key {ref.get('key')!r} of Secret {ref.get('name')!r}, which lacks it")
        for env_from in container.get("envFrom") or []:
            ref = env_from.get("secretRef") or {}
            if ref and not ref.get("optional") and ref.get("name") not in secrets:
                report.error(source, obj, f"{at}.envFrom needs Secret {ref.get('name')!r}, not in the build")


# ----------------------------------------------------------------------------- driver


def display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(MANIFESTS))
    except ValueError:
        return str(path)


def kubectl() -> str | None:
    return shutil.which(os.environ.get("KUBECTL", "kubectl"))


def build(directory: Path, report: Report) -> list[Any] | None:
    binary = kubectl()
    if binary is None:
        print("validate.py: kubectl not found (set KUBECTL, or install kubectl)", file=sys.stderr)
        sys.exit(2)
    done = subprocess.run([binary, "kustomize", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        report.error(display(directory), None, f"kubectl kustomize failed: {done.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def summary(objs: list[Any]) -> str:
    kinds = Counter(o.get("kind", "?") for o in objs if isinstance(o, dict))
    return ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))


def default_targets(report: Report) -> list[Path]:
    targets = []
    for root in BUILD_ROOTS:
        if not root.is_dir():
            report.error(display(root), None, "missing")
            continue
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            if any((child / f).is_file() for f in KUSTOMIZATION_FILES):
                targets.append(child)
            else:
                report.error(display(child), None, "has no kustomization.yaml")
    return targets


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="kustomize directories or YAML files (default: every overlay and example)")
    parser.add_argument("--crds", type=Path, default=DEFAULT_CRDS, help="directory of the CRD files (default: manifests/crds)")
    args = parser.parse_args(argv)

    report = Report()
    crds = load_crds(args.crds, report)
    if not crds:
        report.notes.append(f"{display(args.crds)}: no CRD files yet, so every {OWN_GROUP} object fails")
    targets = args.paths or default_targets(report)

    for target in targets:
        source = display(target)
        before = len(report.errors)
        if target.is_dir():
            objs = build(target, report)
            if objs is None:
                print(f"FAIL {source}: kustomize build failed")
                continue
            schema_ok = [o for o in objs if check_schema(o, source, report, crds)]
            if len(schema_ok) == len(objs):
                check_policy(objs, source, report, crds)
        elif target.is_file():
            try:
                objs = [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
            except yaml.YAMLError as e:
                report.error(source, None, f"not YAML: {e}")
                objs = []
            for obj in objs:
                check_schema(obj, source, report, crds)
        else:
            report.error(source, None, "no such file or directory")
            continue
        status = "ok  " if len(report.errors) == before else "FAIL"
        print(f"{status} {source}: {len(objs)} objects ({summary(objs)})")

    for note in report.notes:
        print(f"note: {note}")
    for error in report.errors:
        print(f"ERROR {error}", file=sys.stderr)
    if report.errors:
        print(f"validate.py: {len(report.errors)} error(s)", file=sys.stderr)
        return 1
    print(f"validate.py: all valid (Kubernetes {KUBERNETES_VERSION} schemas, {len(crds)} CRD(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
