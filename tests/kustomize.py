"""A small kustomize for the tests: renders a kustomization.yaml without kubectl, doing what
deploy/kubernetes/kustomization.yaml asks of kustomize (resources, namespace, images, a
configMapGenerator with literals, JSON 6902 patches) and refusing every field or operation it
does not know, so that it never renders less than ``kubectl apply -k`` would apply.
tests/test_kubernetes.py checks it against ``kubectl kustomize`` where kubectl is installed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]

KNOWN = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "configMapGenerator",
    "generatorOptions",
    "patches",
}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"}
POD_TEMPLATES = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(Exception):
    """The kustomization uses something this renderer does not do."""


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def render(directory: Path) -> list[Doc]:
    """The documents ``kubectl kustomize directory`` prints, in the order of ``resources``
    (generated ConfigMaps last)."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN
    if unknown:
        raise Unsupported(f"kustomization fields {sorted(unknown)}")
    if k.get("kind") != "Kustomization":
        raise Unsupported(f"kind {k.get('kind')!r}")
    docs = [d for name in k.get("resources", []) for d in load_docs(directory / name)]
    docs += [_config_map(g, k.get("generatorOptions", {})) for g in k.get("configMapGenerator", [])]
    for patch in k.get("patches", []):
        _patch(docs, patch)
    for image in k.get("images", []):
        _image(docs, image)
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    return docs


def _config_map(gen: Doc, options: Doc) -> Doc:
    if set(gen) - {"name", "literals"}:
        raise Unsupported(f"configMapGenerator fields {sorted(set(gen) - {'name', 'literals'})}")
    if options != {"disableNameSuffixHash": True}:
        raise Unsupported(f"generatorOptions {options} (a hashed name is not rendered here)")
    data = dict(item.split("=", 1) for item in gen.get("literals", []))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": gen["name"]},
        "data": data,
    }


def _patch(docs: list[Doc], patch: Doc) -> None:
    target = patch.get("target", {})
    if set(patch) != {"target", "patch"} or set(target) - {"kind", "name"}:
        raise Unsupported(f"patch {patch} (only target kind/name with a JSON 6902 patch)")
    ops = yaml.safe_load(patch["patch"])
    matched = [
        d
        for d in docs
        if d["kind"] == target.get("kind", d["kind"])
        and d["metadata"]["name"] == target.get("name", d["metadata"]["name"])
    ]
    if not matched:
        raise Unsupported(f"patch target {target} matches no resource")
    for d in matched:
        for op in ops:
            _apply(d, op)


def _apply(doc: Doc, op: Doc) -> None:
    if op["op"] not in ("add", "replace"):
        raise Unsupported(f"JSON patch op {op['op']!r}")
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node: Any = doc
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if isinstance(node, list):
        raise Unsupported(f"JSON patch into a list: {op['path']}")
    if op["op"] == "replace" and last not in node:
        raise Unsupported(f"replace of a missing {op['path']}")  # kustomize fails here too
    node[last] = copy.deepcopy(op["value"])


def pod_spec(doc: Doc) -> Doc | None:
    """The pod spec of a Pod or of a workload's pod template."""
    if doc["kind"] == "Pod":
        spec: Doc = doc["spec"]
        return spec
    if doc["kind"] in POD_TEMPLATES:
        template: Doc = doc["spec"]["template"]["spec"]
        return template
    return None


def _image(docs: list[Doc], image: Doc) -> None:
    if set(image) - {"name", "newName", "newTag"}:
        raise Unsupported(f"images fields {sorted(set(image) - {'name', 'newName', 'newTag'})}")
    for d in docs:
        spec = pod_spec(d)
        for c in [*(spec or {}).get("initContainers", []), *(spec or {}).get("containers", [])]:
            name, _, tag = c["image"].partition(":")
            if "@" in c["image"] or "/" in tag:
                raise Unsupported(f"image reference {c['image']!r}")
            if name == image["name"]:
                new_tag = str(image.get("newTag", tag))
                c["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")
