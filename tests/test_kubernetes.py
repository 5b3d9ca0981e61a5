"""deploy/kubernetes: what ``kubectl apply -k deploy/kubernetes`` applies validates against the
Kubernetes schemas (offline, kubernetes-validate's bundled ones, strict), holds what a GPU search
needs, and its Jobs' command lines are ones that hpsearch accepts (run against a local study)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import hpsearch
from kustomize import Doc, load_docs, pod_spec, render

REPO = Path(__file__).resolve().parents[1]
KUBE = REPO / "deploy" / "kubernetes"
# the oldest Kubernetes the manifests are checked against, and the newest the package knows
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def rendered() -> list[Doc]:
    return render(KUBE)


def kustomization() -> dict[str, Any]:
    doc = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def one(kind: str, name: str) -> Doc:
    (doc,) = [d for d in rendered() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(doc: Doc) -> list[Doc]:
    spec = pod_spec(doc)
    assert spec is not None, doc["kind"]
    return list(spec["containers"])


def hpsearch_containers() -> list[tuple[Doc, Doc]]:
    """(workload, container) for every container that runs the hpsearch image."""
    image = kustomization()["images"][0]["newName"]
    return [
        (d, c)
        for d in rendered()
        if pod_spec(d) is not None
        for c in containers(d)
        if c["image"].split(":")[0] == image
    ]


def env(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def expand(container: Doc, words: list[str], **values: str) -> list[str]:
    """``words`` with each ``$(NAME)`` replaced as the kubelet does: by the container's variable
    NAME, its value or its ConfigMap key, in the rendered ConfigMap (``values`` override)."""
    maps = {d["metadata"]["name"]: d["data"] for d in rendered() if d["kind"] == "ConfigMap"}

    def value(name: str) -> str:
        if name in values:
            return values[name]
        e = env(container)[name]
        if "value" in e:
            return str(e["value"])
        ref = e["valueFrom"]["configMapKeyRef"]
        return str(maps[ref["name"]][ref["key"]])

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: value(m[1]), w) for w in words]


# --- the rendering and the schemas ---------------------------------------------------------------


def test_the_renderer_is_what_kubectl_kustomize_prints() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: tests/kustomize.py renders the kustomization alone")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    theirs = {key(d): d for d in yaml.safe_load_all(out) if d}
    ours = {key(d): d for d in rendered()}
    assert ours == theirs


def test_the_kustomization_is_the_conventional_set() -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in rendered())
    assert kinds == [
        ("ConfigMap", "hpsearch-study"),
        ("Deployment", "hpsearch-dashboard"),
        ("Job", "hpsearch-run"),
        ("Job", "hpsearch-worker"),
        ("Namespace", "hpsearch"),
        ("PersistentVolumeClaim", "hpsearch-artifacts"),
        ("PersistentVolumeClaim", "hpsearch-data"),
        ("Secret", "hpsearch-postgres"),
        ("Service", "hpsearch-dashboard"),
        ("Service", "postgres"),
        ("StatefulSet", "postgres"),
    ]
    ns = kustomization()["namespace"]
    assert all(d["metadata"].get("namespace") == ns for d in rendered() if d["kind"] != "Namespace")
    assert one("Namespace", ns)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_schemas(version: str) -> None:
    """What kustomize renders, and every manifest file as it is (data-loader.yaml, applied by
    hand, too), strictly: an unknown field is an error."""
    docs = [(f"rendered {d['kind']}/{d['metadata']['name']}", d) for d in rendered()]
    for path in sorted(KUBE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs += [(f"{path.name} {d['kind']}", d) for d in load_docs(path)]
    assert len(docs) >= 20
    failures = []
    for what, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            failures.append(f"{what}: {e.message} at {list(e.path)}")
    assert not failures, failures


def test_the_validation_is_strict() -> None:
    job = one("Job", "hpsearch-worker")
    job["spec"]["parallelsm"] = 4  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError, match="parallelsm"):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)


# --- what each part holds --------------------------------------------------------------------


def test_the_worker_job_runs_n_pods_with_a_gpu_each_and_restarts_a_failed_worker() -> None:
    job = one("Job", "hpsearch-worker")
    (patch,) = kustomization()["patches"]
    (op,) = yaml.safe_load(patch["patch"])
    assert op["path"] == "/spec/parallelism"
    assert job["spec"]["parallelism"] == op["value"] > 1  # N, set in kustomization.yaml
    assert "completions" not in job["spec"]  # a work queue: done once one worker is done
    assert job["spec"]["backoffLimit"] > job["spec"]["parallelism"]
    spec = pod_spec(job)
    assert spec is not None
    # a crashed worker starts again (its trial is failed by the heartbeat and run again)
    assert spec["restartPolicy"] == "OnFailure"
    (c,) = containers(job)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["args"][0] == "worker" and "--wait" in c["args"]


def test_the_run_job_makes_the_study_once() -> None:
    job = one("Job", "hpsearch-run")
    spec = pod_spec(job)
    assert spec is not None
    assert job["spec"]["backoffLimit"] == 0 and spec["restartPolicy"] == "Never"
    (c,) = containers(job)
    assert c["args"][:2] == ["run", "--study"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1  # it works on the study too
    (init,) = spec["initContainers"]
    assert "pg_isready -h postgres" in " ".join(init["command"])


def test_postgres_keeps_its_data_on_a_volume_claim() -> None:
    sts = one("StatefulSet", "postgres")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (c,) = containers(sts)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert env(c)["PGDATA"]["value"].startswith(mount["mountPath"] + "/")
    spec = pod_spec(sts)
    assert spec is not None and not spec.get("volumes")  # no emptyDir in its place
    service = one("Service", sts["spec"]["serviceName"])
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["port"] == 5432


def test_the_password_comes_from_the_secret_and_is_on_no_command_line() -> None:
    secret = one("Secret", "hpsearch-postgres")
    pg = env(containers(one("StatefulSet", "postgres"))[0])
    assert pg["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "hpsearch-postgres"
    user, db = pg["POSTGRES_USER"]["value"], pg["POSTGRES_DB"]["value"]
    password = secret["stringData"]["password"]
    assert len(hpsearch_containers()) == 3
    for workload, c in hpsearch_containers():
        names = [e["name"] for e in c["env"]]
        # $(POSTGRES_PASSWORD) is expanded only from a variable defined before it
        assert names.index("POSTGRES_PASSWORD") < names.index("HPSEARCH_STORAGE")
        e = env(c)
        assert e["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "password",
        }
        assert e["HPSEARCH_STORAGE"]["value"] == (
            f"postgresql://{user}:$(POSTGRES_PASSWORD)@postgres:5432/{db}"
        )
        line = " ".join(c.get("command", []) + c["args"])
        assert "postgres" not in line and password not in line, workload["metadata"]["name"]
        assert "--storage" not in c["args"]


def test_every_variable_a_container_uses_is_defined_before_it() -> None:
    """The kubelet leaves a ``$(NAME)`` it cannot resolve as it is: hpsearch would get the
    study '$(STUDY)'."""
    for workload in rendered():
        if pod_spec(workload) is None:
            continue
        for c in containers(workload):
            defined: list[str] = []
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                    assert ref in defined, (workload["metadata"]["name"], e["name"], ref)
                defined.append(e["name"])
            for ref in re.findall(
                r"\$\((\w+)\)", " ".join(c.get("command", []) + c.get("args", []))
            ):
                assert ref in defined, (workload["metadata"]["name"], ref)


def test_the_image_and_the_study_are_set_in_one_place() -> None:
    (image,) = kustomization()["images"]
    assert image["name"] == "hpsearch"  # what the manifests name it
    wanted = f"{image['newName']}:{image['newTag']}"
    assert {c["image"] for _, c in hpsearch_containers()} == {wanted}
    study = one("ConfigMap", "hpsearch-study")["data"]
    for name in ("hpsearch-run", "hpsearch-worker"):
        (c,) = containers(one("Job", name))
        assert expand(c, c["args"])[c["args"].index("--study") + 1] == study["STUDY"]
    (run,) = containers(one("Job", "hpsearch-run"))
    assert expand(run, run["args"])[run["args"].index("--trials") + 1] == study["TRIALS"]


def test_the_checkpoints_are_on_one_shared_volume() -> None:
    artifacts = one("PersistentVolumeClaim", "hpsearch-artifacts")
    assert artifacts["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes
    for workload, c in hpsearch_containers():
        spec = pod_spec(workload)
        assert spec is not None
        (volume,) = [
            v
            for v in spec["volumes"]
            if v.get("persistentVolumeClaim", {}).get("claimName") == "hpsearch-artifacts"
        ]
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
        assert env(c)["HPSEARCH_ARTIFACTS"]["value"] == mount["mountPath"]
        reader = workload["kind"] == "Deployment"  # the dashboard reads, the workers write
        assert mount.get("readOnly", False) == reader, workload["metadata"]["name"]


def test_the_pods_run_as_the_images_user() -> None:
    m = re.search(r"useradd [^&]*--uid (\d+) hpsearch", (REPO / "Dockerfile").read_text())
    assert m, "the Dockerfile's user has no fixed id"
    for workload, _ in hpsearch_containers():
        spec = pod_spec(workload)
        assert spec is not None
        assert spec["securityContext"]["runAsUser"] == int(m[1])
        assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_dashboard_has_a_service() -> None:
    dash = one("Deployment", "hpsearch-dashboard")
    (c,) = containers(dash)
    assert c["args"][0] == "dashboard"
    service = one("Service", "hpsearch-dashboard")
    assert service["spec"]["type"] == "ClusterIP"  # the dashboard has no authentication
    assert (
        service["spec"]["selector"].items()
        <= dash["spec"]["template"]["metadata"]["labels"].items()
    )
    port = int(c["args"][c["args"].index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port


# --- the command lines, run --------------------------------------------------------------------


def test_the_command_lines_parse() -> None:
    from hpsearch.cli.main import build_parser

    for workload, c in hpsearch_containers():
        name = workload["metadata"]["name"]
        try:
            args = build_parser().parse_args(expand(c, c["args"]))
        except SystemExit:  # argparse printed why
            pytest.fail(f"{name}: hpsearch refuses its args {c['args']}")
        assert args.command == c["args"][0], name


@pytest.mark.slow
def test_the_jobs_command_lines_run_against_a_local_study(tmp_path: Path) -> None:
    """The run Job's and the worker Job's args, as the kubelet expands them (the study smoke and
    1 trial instead of the ConfigMap's, which would take an hour here), against an SQLite file
    given as the manifests give PostgreSQL's URL: in the environment."""
    environment = {
        "HPSEARCH_STORAGE": f"sqlite:///{tmp_path / 'hpsearch.db'}",
        "HPSEARCH_ARTIFACTS": str(tmp_path / "artifacts"),
    }
    (run,) = containers(one("Job", "hpsearch-run"))
    made = hpsearch(expand(run, run["args"], STUDY="smoke", TRIALS="1"), tmp_path, env=environment)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "done: 1 trial" in made.stdout
    (worker,) = containers(one("Job", "hpsearch-worker"))
    joined = hpsearch(expand(worker, worker["args"], STUDY="smoke"), tmp_path, env=environment)
    assert joined.returncode == 0, joined.stdout + joined.stderr
    assert "worker joined study 'smoke'" in joined.stdout + joined.stderr
    assert "budget 1 trials" in joined.stdout + joined.stderr
