"""The Kubernetes manifests under deploy/kubernetes as kustomize would gather them: each layout's
resources (the files and directories its kustomization.yaml lists, in turn) and the Secrets its
generators make."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
LAYOUTS = {"keyspace": KUBE, "leases": KUBE / "leases"}
"""Each ownership mode's kustomization: the single writer, and several processes under leases."""
HEALTH_COMMAND = ["python", "-m", "atp_service.app.healthcheck"]

Doc = dict[str, Any]


def documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@dataclass
class Layout:
    """What ``kubectl apply -k`` of one directory applies."""

    resources: list[tuple[Path, Doc]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    """Every manifest file taken in."""
    secrets: dict[str, dict[str, Path]] = field(default_factory=dict)
    """Generated Secrets: name -> key -> the file it is made from."""

    def of_kind(self, kind: str) -> list[Doc]:
        return [doc for _, doc in self.resources if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> Doc:
        (doc,) = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        return doc


def gather(directory: Path, into: Layout | None = None) -> Layout:
    layout = into if into is not None else Layout()
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml: {entry} does not exist"
        if path.is_dir():
            gather(path, layout)
        else:
            layout.files.append(path)
            layout.resources.extend((path, doc) for doc in documents(path))
    for generator in kustomization.get("secretGenerator", []):
        keys = dict(spec.split("=", 1) for spec in generator["files"])
        layout.secrets[generator["name"]] = {key: directory / file for key, file in keys.items()}
    return layout


def pod_specs(layout: Layout) -> list[tuple[Doc, Doc]]:
    """(workload, its pod spec) for every Deployment and StatefulSet."""
    return [(doc, doc["spec"]["template"]["spec"]) for kind in ("Deployment", "StatefulSet")
            for doc in layout.of_kind(kind)]


def service_workload(layout: Layout) -> tuple[Doc, Doc, Doc]:
    """The ATP service's workload, its pod spec and its container."""
    (workload, spec), = [(w, s) for w, s in pod_specs(layout) if w["metadata"]["name"] == "atp-service"]
    (container,) = spec["containers"]
    return workload, spec, container


def environment(layout: Layout, container: Doc) -> dict[str, str]:
    """The container's plain variables: its ConfigMaps' data, then its own ``env`` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(layout.named("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({var["name"]: var["value"] for var in container.get("env", []) if "value" in var})
    return env
