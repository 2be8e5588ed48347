"""The cluster configs in cluster/ are valid and agree with each other and with `impress submit`.

The launcher config goes through the checks `ray up` runs before it talks to a cloud
(`prepare_config`, then `validate_config` against Ray's own JSON schema). The KubeRay manifests are
checked against the required fields and enums of the ray.io/v1 CRDs (KubeRay 1.5), written out
below because no schema can be downloaded here. No cluster is started: these tests are fast.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.job_submission import JobDetails, JobStatus, JobType

from impress import jobs
from impress.cli import main
from impress.provenance import provenance
from impress.study import Study, StudyError
from impress.tuner import _trial_base

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SHARED = str(Path(jobs.DEFAULT_STORAGE).parent)  # /mnt/shared


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# `ray up` config


@pytest.fixture(scope="module")
def launcher() -> dict:
    return _load(CLUSTER / "ray-cluster.yaml")


def test_launcher_config_passes_ray_ups_own_validation(launcher):
    validate_config(prepare_config(copy.deepcopy(launcher)))


def test_launcher_config_has_a_cpu_head_and_bounded_gpu_workers(launcher):
    types = launcher["available_node_types"]
    head = types[launcher["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no GPU worker type"
    for t in types.values():  # every type declares its resources: the autoscaler needs no cloud lookup
        assert 0 <= t["min_workers"] <= t["max_workers"] <= launcher["max_workers"]
        assert {"CPU", "GPU"} <= set(t["resources"])


def test_launcher_config_turns_token_auth_on_and_exposes_nothing(launcher):
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # one token, every node
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    head = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    assert re.search(r"MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server .*--host 127\.0\.0\.1", head)
    assert "MLFLOW_TRACKING_URI=http://127.0.0.1:5000" in head  # the study driver on the head writes there
    assert "0.0.0.0" not in (CLUSTER / "ray-cluster.yaml").read_text()


def test_every_node_runs_trials_at_normal_priority(launcher):
    """Ray's default nice 15 for workers starves trials beside any busy process (tests/test_tuner.py)."""
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    assert all("RAY_worker_niceness=0" in c for c in starts if "ray start" in c)
    assert "ENV RAY_worker_niceness=0" in (CLUSTER / "Dockerfile").read_text()  # every KubeRay pod's image


def test_launcher_config_shares_storage_and_matches_the_installed_ray(launcher):
    assert any(f"{SHARED}:{SHARED}" in o for o in launcher["docker"]["run_options"])
    assert any(f"mkdir -p {jobs.DEFAULT_STORAGE}" in c for c in launcher["initialization_commands"])
    assert launcher["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}-")
    assert any("pip install" in c and "~/impress" in c for c in launcher["setup_commands"])


# ---------------------------------------------------------------------------------------------
# KubeRay manifests: required fields and enums of the ray.io/v1 CRDs, written out

REQUIRED = {
    "RayCluster": ["apiVersion", "kind", "metadata.name", "spec.headGroupSpec.template.spec.containers"],
    "RayJob": ["apiVersion", "kind", "metadata.name", "spec"],
    "PersistentVolumeClaim": ["apiVersion", "kind", "metadata.name", "spec.accessModes", "spec.resources.requests"],
}
WORKER_GROUP_REQUIRED = ["groupName", "template.spec.containers"]
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
AUTH_MODES = {"disabled", "token"}
SERVICE_TYPES_INSIDE = {"ClusterIP"}


def _get(doc: dict, dotted: str):
    for key in dotted.split("."):
        assert isinstance(doc, dict) and key in doc, f"missing required field {dotted!r}"
        doc = doc[key]
    return doc


def _check_pod_template(template: dict, where: str) -> None:
    spec = _get(template, "spec")
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for c in _get(spec, "containers"):
        assert c.get("name") and c.get("image"), f"{where}: a container needs name and image"
        for e in c.get("env", []):
            assert "name" in e and ("value" in e or "valueFrom" in e), f"{where}: env {e}"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: volumeMount {m['name']!r} names no volume"
        assert all("hostPort" not in p for p in c.get("ports", [])), f"{where}: hostPort exposes the node"
        limits = c.get("resources", {}).get("limits", {})
        assert limits.get("cpu") and limits.get("memory"), f"{where}: {c['name']} needs cpu and memory limits"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    docs = {}
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) == set(REQUIRED)
    return docs


@pytest.mark.parametrize("kind", sorted(REQUIRED))
def test_manifest_has_the_crds_required_fields(manifests, kind):
    doc = manifests[kind]
    for field in REQUIRED[kind]:
        _get(doc, field)
    assert doc["apiVersion"] == ("v1" if kind == "PersistentVolumeClaim" else "ray.io/v1")


def test_raycluster_is_valid_autoscaled_token_authenticated_and_internal(manifests):
    spec = manifests["RayCluster"]["spec"]
    assert spec["authOptions"]["mode"] in AUTH_MODES and spec["authOptions"]["mode"] == "token"
    assert spec["rayVersion"] == ray.__version__  # authOptions needs Ray >= 2.52
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") in SERVICE_TYPES_INSIDE
    groups = [(head, "headGroupSpec")] + [
        (g, f"workerGroupSpecs[{g.get('groupName')}]") for g in spec["workerGroupSpecs"]
    ]
    for group, where in groups:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams are map[string]string"
        _check_pod_template(group["template"], where)
    for g in spec["workerGroupSpecs"]:
        for field in WORKER_GROUP_REQUIRED:
            _get(g, field)
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"]
    gpu = [
        g
        for g in spec["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu, "no GPU worker group"
    head_containers = {c["name"]: c for c in head["template"]["spec"]["containers"]}
    mlflow = " ".join(head_containers["mlflow"]["args"])
    assert "--host 127.0.0.1" in mlflow and f"--artifacts-destination {SHARED}/" in mlflow
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec mlflow server" in mlflow  # no idle job runner
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://127.0.0.1:5000"} in head_containers["ray-head"]["env"]


def test_every_ray_pod_mounts_the_shared_claim(manifests):
    claim = manifests["PersistentVolumeClaim"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    spec = manifests["RayCluster"]["spec"]
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        }
        mounted = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert any(claims.get(n) == claim["metadata"]["name"] and p == SHARED for n, p in mounted.items())


def test_rayjob_targets_the_cluster_and_names_its_attempt(manifests):
    spec = manifests["RayJob"]["spec"]
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "exactly one of rayClusterSpec, clusterSelector"
    assert spec["clusterSelector"]["ray.io/cluster"] == manifests["RayCluster"]["metadata"]["name"]
    assert spec["submissionMode"] in SUBMISSION_MODES
    study_file = re.search(r"study run (\S+)", spec["entrypoint"]).group(1)
    study = Study.from_yaml(ROOT / study_file)
    assert re.fullmatch(rf"{re.escape(study.name)}-\d+", spec["jobId"])
    assert f"--resume --storage {jobs.DEFAULT_STORAGE}" in spec["entrypoint"]
    assert study.resources.gpu > 0 and _trial_base(study)["device"] == "cuda"


def test_dockerfile_and_runtime_env_agree_with_submit():
    assert f"FROM rayproject/ray:{ray.__version__}-" in (CLUSTER / "Dockerfile").read_text()
    env = _load(CLUSTER / "runtime_env.yaml")
    built = jobs.runtime_env(ROOT)
    assert env["excludes"] == built["excludes"] and env["env_vars"] == built["env_vars"]
    ray.runtime_env.RuntimeEnv(**built)  # Ray's own validation of the fields


def test_a_job_without_git_records_the_submitting_checkouts_commit(tmp_path):
    """The job's code is uploaded without `.git`: its runs take the commit `submit` passes along."""
    prov = provenance()
    env_vars = jobs.runtime_env(ROOT, provenance=prov)["env_vars"]
    assert env_vars["IMPRESS_GIT_COMMIT"] == prov["git_commit"] and len(prov["git_commit"]) == 40
    shutil.copytree(ROOT / "impress", tmp_path / "impress")  # the package as a job sees it: no .git
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from impress.provenance import provenance as p; d = p(); print(d['git_commit'], d['git_dirty'])",
        ],
        cwd=tmp_path,
        env={**os.environ, **env_vars, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert read.returncode == 0, read.stderr
    assert read.stdout.split() == [prov["git_commit"], str(prov["git_dirty"])]


# ---------------------------------------------------------------------------------------------
# `impress submit` without a cluster: ids, commands, refusals before anything is sent


def _job(submission_id: str, status: JobStatus) -> JobDetails:
    return JobDetails(type=JobType.SUBMISSION, submission_id=submission_id, status=status, entrypoint="true")


def test_attempts_are_the_studys_own_ids_in_numeric_order():
    found = jobs.attempts(
        [
            _job("grid-10", JobStatus.FAILED),
            _job("grid-9", JobStatus.STOPPED),
            _job("grid-extra-1", JobStatus.RUNNING),  # another study whose name starts the same
            _job("raysubmit_abc", JobStatus.RUNNING),
        ],
        "grid",
    )
    assert [(n, j.submission_id) for n, j in found] == [(9, "grid-9"), (10, "grid-10")]
    assert jobs.submission_id("grid", 11) == "grid-11"


def test_entrypoint_runs_the_study_with_resume_on_shared_storage():
    assert jobs.entrypoint("studies/my study.yaml", "/mnt/shared/studies") == (
        "python -m impress.cli study run 'studies/my study.yaml' --resume --storage /mnt/shared/studies"
    )


def test_submit_refuses_a_study_outside_the_uploaded_folder(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "grid": {"m": [2]}}))
    (tmp_path / "project").mkdir()
    code = main(["submit", str(study), "--working-dir", str(tmp_path / "project"), "--address", "http://127.0.0.1:9"])
    assert code == 2 and "outside the working directory" in capsys.readouterr().err


def test_submit_refuses_relative_storage_and_an_unreachable_cluster(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # what `impress submit` sets; restored after the test
    Path("s.yaml").write_text(yaml.safe_dump({"name": "s", "grid": {"m": [2]}}))
    assert main(["submit", "s.yaml", "--storage", "runs", "--address", "http://127.0.0.1:9"]) == 2
    assert "absolute path" in capsys.readouterr().err
    assert main(["submit", "s.yaml", "--storage", "/mnt/shared/x", "--address", "http://127.0.0.1:9"]) == 2
    assert "cannot reach the Ray Jobs API" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# GPUs: a trial computes on what it reserved


@pytest.mark.parametrize(
    ("device", "gpu", "expected"),
    [("auto", 0, "cpu"), ("auto", 0.25, "cuda"), ("auto", 1, "cuda"), ("cpu", 0.5, "cpu"), ("cuda:1", 1, "cuda:1")],
)
def test_trial_device_follows_the_gpus_it_requested(device, gpu, expected):
    study = Study.from_dict({"name": "g", "base": {"device": device}, "grid": {"m": [2]}, "resources": {"gpu": gpu}})
    assert _trial_base(study)["device"] == expected


def test_cuda_without_a_gpu_per_trial_is_refused():
    study = Study.from_dict({"name": "g", "base": {"device": "cuda"}, "grid": {"m": [2]}})
    with pytest.raises(StudyError, match="set resources.gpu"):
        _trial_base(study)
