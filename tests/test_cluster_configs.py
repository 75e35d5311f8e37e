"""The cluster deployment files under ``cluster/``: they parse, have the parts each tool needs, name
search spaces that exist, and never carry a credential inline. No cluster, no network, no Ray import."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER = CLUSTER / "ray-gpu-cluster.yaml"
SCRIPT = CLUSTER / "local-two-node.sh"
README = CLUSTER / "README.md"

SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY", re.IGNORECASE)
# `raylora search|validate|train <path>`: the first word after the subcommand that is not a flag.
RAYLORA_COMMAND = re.compile(r"\braylora\s+(search|validate|train)\s+(?!-)([^\s`'\"\\;|&)]+)")
SEARCH_SPACE = re.compile(r"search_spaces/([\w.-]+\.yaml)$")
# scheme://user:password@host — the password part must be a reference, never a value.
URI_CREDENTIALS = re.compile(r"://[^/\s:@]+:([^@\s]+)@")


def cluster_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def yaml_files() -> list[Path]:
    return [p for p in cluster_files() if p.suffix in (".yaml", ".yml")]


def k8s_documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in yaml_files():
        if path == LAUNCHER:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def of_kind(kind: str) -> list[dict]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") == kind]


def walk(node):
    """Every dict inside a parsed YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def strings(node):
    """Every string inside a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def containers(pod_spec: dict) -> list[dict]:
    return list(pod_spec.get("containers", [])) + list(pod_spec.get("initContainers", []))


def ray_cluster_specs() -> list[tuple[str, dict]]:
    specs = [("RayCluster " + d["metadata"]["name"], d["spec"]) for d in of_kind("RayCluster")]
    specs += [("RayJob " + d["metadata"]["name"], d["spec"]["rayClusterSpec"]) for d in of_kind("RayJob")]
    return specs


def test_the_expected_files_exist():
    for name in (
        "ray-gpu-cluster.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "kuberay/shared-storage.yaml",
        "mlflow/mlflow.yaml",
        "local-two-node.sh",
        "README.md",
    ):
        assert (CLUSTER / name).is_file(), name


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_file_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} has no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_every_file_starts_with_a_comment_saying_how_to_use_it():
    for path in cluster_files():
        text = path.read_text()
        if path.suffix == ".md":
            assert text.startswith("# "), path
            continue
        lines = text.splitlines()
        body = lines[1:] if lines[0].startswith("#!") else lines
        assert body[0].startswith("# "), f"{path}: no header comment"
        header = "\n".join(line for line in body[:40] if line.startswith("#"))
        assert re.search(r"\b(ray|kubectl|docker|cluster/\S+)\b", header), f"{path}: header shows no command"


def test_kubernetes_documents_have_api_version_kind_and_name():
    docs = k8s_documents()
    assert len(docs) >= 8
    for path, doc in docs:
        where = f"{path.relative_to(CLUSTER)}: {doc.get('kind')}"
        assert doc.get("apiVersion"), where
        assert doc.get("kind"), where
        assert doc.get("metadata", {}).get("name"), where


def test_ray_cluster_has_a_cpu_head_and_a_gpu_worker_group():
    clusters = of_kind("RayCluster")
    assert clusters and all(d["apiVersion"] == "ray.io/v1" for d in clusters)
    for what, spec in ray_cluster_specs():
        head = spec["headGroupSpec"]
        head_limits = [c.get("resources", {}).get("limits", {}) for c in containers(head["template"]["spec"])]
        assert not any("nvidia.com/gpu" in limits for limits in head_limits), f"{what}: GPU on the head"
        assert head["rayStartParams"].get("num-gpus") == "0", what
        assert "trial_driver" in head["rayStartParams"].get("resources", ""), what
        groups = spec["workerGroupSpecs"]
        gpu_groups = [
            g
            for g in groups
            for c in containers(g["template"]["spec"])
            if int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) > 0
        ]
        assert gpu_groups, f"{what}: no worker group requests nvidia.com/gpu"
        for group in gpu_groups:
            # raylora sizes a study from the nodes alive at its start: the GPU group must be static.
            assert group["replicas"] == group["minReplicas"] == group["maxReplicas"], what
        assert spec.get("enableInTreeAutoscaling") is False, what


def test_every_ray_pod_mounts_the_shared_volume_and_knows_mlflow():
    claims = {d["metadata"]["name"]: d for d in of_kind("PersistentVolumeClaim")}
    assert "ReadWriteMany" in claims["raylora-shared"]["spec"]["accessModes"]
    for what, spec in ray_cluster_specs():
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
                assert "/shared" in mounts, f"{what}: {container['name']} lacks /shared"
                claim = volumes[mounts["/shared"]]["persistentVolumeClaim"]["claimName"]
                assert claim == "raylora-shared", what
                env = {e["name"]: e for e in container.get("env", [])}
                assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000", what
        assert spec["authOptions"]["mode"] == "token", what


def test_ray_job_runs_raylora_search_on_its_own_cluster():
    jobs = of_kind("RayJob")
    assert jobs
    for job in jobs:
        spec = job["spec"]
        assert job["apiVersion"] == "ray.io/v1"
        assert "raylora search" in spec["entrypoint"]
        assert "--storage /shared/raylora" in spec["entrypoint"]
        assert spec["rayClusterSpec"]["headGroupSpec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert json.loads(spec["entrypointResources"]) == {"trial_driver": 1}


def test_mlflow_server_deployment_and_service():
    deployments = [d for d in of_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    assert len(deployments) == 1
    pod = deployments[0]["spec"]["template"]["spec"]
    server = [c for c in pod["containers"] if c.get("command", [])[:2] == ["mlflow", "server"]]
    assert server, "no container whose command starts with `mlflow server`"
    command = server[0]["command"]
    assert "--serve-artifacts" in command
    assert any(a.startswith("--allowed-hosts=") and "mlflow:*" in a for a in command)
    env = {e["name"]: e for e in server[0].get("env", [])}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql")
    labels = deployments[0]["spec"]["template"]["metadata"]["labels"]
    services = [s for s in of_kind("Service") if s["metadata"]["name"] == "mlflow"]
    assert len(services) == 1
    service = services[0]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in service["ports"]] == [5000]
    assert all(labels.get(k) == v for k, v in service["selector"].items())
    assert of_kind("StatefulSet"), "no PostgreSQL backend"


def test_no_credential_is_written_inline():
    for path, doc in k8s_documents():
        assert doc.get("kind") != "Secret", f"{path}: a Secret manifest would carry its value in the repo"
        for node in walk(doc):
            if "name" in node and ("value" in node or "valueFrom" in node):  # a container env entry
                if SECRET_NAME.search(node["name"]):
                    where = f"{path.relative_to(CLUSTER)}: env {node['name']}"
                    assert "value" not in node, f"{where} has a literal value"
                    assert "secretKeyRef" in node["valueFrom"], f"{where} must come from a Secret"
        for text in strings(doc):
            for password in URI_CREDENTIALS.findall(text):
                assert password.startswith("$("), f"{path}: a URI carries a literal password"
    for path in cluster_files():
        for line in path.read_text().splitlines():
            # NAME=value assignments in commands and comments: a secret-looking name takes only a reference.
            for name, value in re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S*)", line):
                if SECRET_NAME.search(name) and name != "RAY_AUTH_MODE":
                    assert value.startswith(('"$', "$")), f"{path.name}: {line.strip()}"


def test_launcher_config_has_a_cpu_head_and_gpu_workers():
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["cluster_name"]
    assert config["provider"]["type"] in ("aws", "gcp")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU") == 0
    assert head["resources"].get("trial_driver") == 100
    gpu_instances = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en", "a2-", "a3-", "g2-")
    workers = {
        name: t
        for name, t in types.items()
        if name != config["head_node_type"]
        and (
            t.get("resources", {}).get("GPU")
            or t["node_config"].get("InstanceType", "").startswith(gpu_instances)
        )
    }
    assert workers, "no GPU worker type"
    assert any(t["min_workers"] > 0 for t in workers.values()), "no GPU worker is started"
    for name, t in workers.items():
        assert t["min_workers"] == t["max_workers"], f"{name}: raylora needs static workers"
    assert config["max_workers"] >= sum(t.get("min_workers", 0) for n, t in types.items() if n in workers)
    setup = " ".join(config["setup_commands"])
    assert "raylora" in setup and "pip install" in setup
    assert "/shared" in setup
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("ray start --address" in c for c in config["worker_start_ray_commands"])


def test_launcher_config_matches_rays_cluster_schema():
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip("this Ray has no autoscaler schema")
    jsonschema.validate(yaml.safe_load(LAUNCHER.read_text()), json.loads(schema_path.read_text()))


def test_every_raylora_command_names_an_existing_search_space():
    found = []
    for path in cluster_files():
        for command, target in RAYLORA_COMMAND.findall(path.read_text()):
            match = SEARCH_SPACE.search(target)
            assert match, f"{path.name}: `raylora {command} {target}` does not name search_spaces/*.yaml"
            assert (ROOT / "search_spaces" / match.group(1)).is_file(), f"{path.name}: {target} is missing"
            found.append((path.name, target))
    files = {name for name, _ in found}
    assert {"ray-gpu-cluster.yaml", "rayjob.yaml", "README.md", "local-two-node.sh"} <= files


def test_two_node_script_is_valid_bash():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    result = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    text = SCRIPT.read_text()
    assert "set -euo pipefail" in text
    assert "--node-ip-address 127.0.0.1" in text and "--node-ip-address 127.0.0.2" in text
    assert "stop --force" in text


def test_readme_mentions_every_cluster_file():
    readme = README.read_text()
    for path in cluster_files():
        if path == README:
            continue
        relative = path.relative_to(CLUSTER).as_posix()
        assert relative in readme, f"cluster/README.md does not mention {relative}"
