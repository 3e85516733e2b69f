"""The launch files in cluster/: aws.yaml against Ray's own config checks, kuberay.yaml and the Dockerfile
read as data, and local.sh's token (made when missing, 0600, never printed, accepted by Ray).

aws.yaml goes through what `ray up` runs before it touches AWS: prepare_config (defaults, docker
checks, per-type worker counts) and validate_config (ray-schema.json). The AWS bootstrap after them
(IAM, key pair, subnets, security group, instance-type resources) calls AWS and is not run here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.commands import _set_up_config_for_head_node
from ray.autoscaler._private.docker import docker_start_cmds
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
RAY_CLI = Path(sys.executable).parent / "ray"
TOKEN_IN_CONTAINER = "/home/ray/.ray/auth_token"  # Ray's default path for the ray user of Ray's images
START_COMMANDS = ("head_start_ray_commands", "worker_start_ray_commands")


@pytest.fixture(scope="module")
def aws():
    """aws.yaml as `ray up` has it after prepare_config and validate_config."""
    config = prepare_config(yaml.safe_load((CLUSTER / "aws.yaml").read_text()))
    validate_config(config)
    return config


def test_aws_yaml_passes_rays_prepare_and_validate_config(aws):
    assert set(aws["available_node_types"]) == {"head", "gpu_worker"}
    assert aws["head_node_type"] == "head"
    assert aws["available_node_types"]["head"]["max_workers"] == 0  # filled in by prepare_config


def test_aws_every_node_mounts_the_token_where_ray_reads_it(aws, monkeypatch):
    from ray._private.authentication.authentication_token_setup import _get_default_token_path

    # Ray's schema has no per-node-type file_mounts: the top-level ones go to every node.
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    node_type_fields = schema["properties"]["available_node_types"]["patternProperties"][".*"]["properties"]
    assert "file_mounts" not in node_type_fields
    [token_mount] = [remote for remote in aws["file_mounts"] if remote.endswith("auth_token")]
    assert aws["file_mounts"][token_mount] == "~/.ray/auth_token"  # where cluster/make_token.sh writes

    # The head launches the workers from the config `ray up` writes onto it: the token is in its mounts.
    class Provider:
        def prepare_for_head_node(self, config):
            return config

    _, remote_file = _set_up_config_for_head_node(json.loads(json.dumps(aws)), Provider(), no_restart=False)
    with remote_file:
        head_config = json.loads(Path(remote_file.name).read_text())
    assert head_config["file_mounts"][token_mount] == token_mount

    # Inside each node's container the mount lands on Ray's default token path, and nothing points Ray elsewhere.
    docker = aws["docker"]
    options = docker["run_options"] + docker.get("head_run_options", []) + docker.get("worker_run_options", [])
    run = docker_start_cmds("ubuntu", docker["image"], aws["file_mounts"], docker["container_name"], options,
                            aws["cluster_name"], "/home/ray", "docker")
    assert f":{TOKEN_IN_CONTAINER} " in run and "--env=RAY_AUTH_MODE=token" in run
    assert "RAY_AUTH_TOKEN" not in run
    monkeypatch.setenv("HOME", "/home/ray")
    assert str(_get_default_token_path()) == TOKEN_IN_CONTAINER


def test_aws_every_ray_start_has_token_auth(aws):
    starts = [command for key in START_COMMANDS for command in aws[key] if "ray start" in command]
    assert len(starts) == 2
    for command in starts:
        assert command.startswith("RAY_AUTH_MODE=token ray start"), command
    [head] = [command for command in aws["head_start_ray_commands"] if "ray start" in command]
    assert "--dashboard-host=127.0.0.1" in head


def test_aws_current_image_and_a_deliberate_head(aws):
    python = f"py{sys.version_info[0]}{sys.version_info[1]}"
    assert aws["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{python}-gpu"  # automl's Ray and Python
    for name, node_type in aws["available_node_types"].items():
        # Not Ray's default AMI (Ubuntu 18.04, CUDA 11.2), which `ray up` picks when ImageId is missing.
        image_id = node_type["node_config"].get("ImageId", "")
        assert image_id.startswith("resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu"), name
    assert aws["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}  # the head runs no trials
    setup = " ".join(aws["setup_commands"])
    assert '[gpu]"' in setup and " -e " not in setup and f"ray[default,tune,train]=={ray.__version__}" in setup


def test_aws_head_may_pass_the_worker_role(aws):
    def profile(node_type):
        arn = aws["available_node_types"][node_type]["node_config"]["IamInstanceProfile"]["Arn"]
        return arn.rsplit("/", 1)[1]

    assert profile("head") == "skin-automl-head"
    policy = json.loads((CLUSTER / "iam" / "head-policy.json").read_text())
    [passrole] = [s for s in policy["Statement"] if s["Action"] == "iam:PassRole"]
    assert passrole["Effect"] == "Allow"
    assert passrole["Resource"].endswith(f":role/{profile('gpu_worker')}")  # role and profile share a name
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    for name in ("ec2-trust.json", "worker-policy.json"):
        json.loads((CLUSTER / "iam" / name).read_text())


def test_dockerfile_installs_the_wheel_with_the_gpu_extra():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert re.search(r"pip install --no-cache-dir \"\$\{WHEEL\}\[gpu\]\"", text)
    assert "pip install -e" not in text and "--editable" not in text and ":latest" not in text
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore and "!automl" in ignore and "!pyproject.toml" in ignore
    # Everything pyproject.toml names is in the build context: the licence files the wheel carries, the readme.
    assert {"!LICENSE", "!NOTICE", "!README.md"} <= set(ignore)
    assert "COPY pyproject.toml README.md LICENSE NOTICE" in text
    assert "search_spaces" not in text.split("FROM ${RAY_IMAGE}")[1].replace("# The shipped specs", "")


def kuberay_docs():
    return {doc["kind"]: doc for doc in yaml.safe_load_all((CLUSTER / "kuberay.yaml").read_text())}


def assert_has_token(container, volumes, label):
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert volumes.get("ray-token") == "skin-automl-ray-token", label
    assert env.get("RAY_AUTH_MODE") == "token", label
    assert env.get("RAY_AUTH_TOKEN_PATH") == f"{mounts['ray-token']}/auth_token", label
    assert "RAY_AUTH_TOKEN" not in env, label


def test_kuberay_every_pod_mounts_the_token_secret():
    docs = kuberay_docs()
    cluster, job = docs["RayCluster"]["spec"], docs["RayJob"]["spec"]
    assert cluster["rayVersion"] == ray.__version__
    assert "authOptions" not in cluster  # KubeRay's would be a second token, preferred by Ray over the file
    templates = {"head": cluster["headGroupSpec"]["template"], "submitter": job["submitterPodTemplate"]}
    templates |= {group["groupName"]: group["template"] for group in cluster["workerGroupSpecs"]}
    images = set()
    for label, template in templates.items():
        volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            assert_has_token(container, volumes, label)
            images.add(container["image"])
    head_volumes = {v["name"]: v.get("secret", {}).get("secretName")
                    for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert_has_token(cluster["autoscalerOptions"], head_volumes, "autoscaler sidecar")
    [image] = images  # one image everywhere, pinned to a tag
    assert re.fullmatch(r"[^:]+:[\w.-]+|[^@]+@sha256:[0-9a-f]{64}", image) and not image.endswith(":latest")
    for group in cluster["workerGroupSpecs"]:
        [worker] = group["template"]["spec"]["containers"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def run_local(args, env, timeout=60):
    return subprocess.run(["bash", str(LOCAL_SH), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture
def token_env(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_AUTH_TOKEN")}
    return env | {"HOME": str(tmp_path / "home"), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "secret" / "token"),
                  "AUTOML_CLUSTER_DIR": str(tmp_path / "state")}


def test_local_sh_makes_a_token_ray_accepts_and_never_prints_it(token_env, tmp_path):
    made = run_local(["token"], token_env)
    assert made.returncode == 0, made.stderr
    path = Path(token_env["RAY_AUTH_TOKEN_PATH"])
    token = path.read_text()
    assert re.fullmatch("[0-9a-f]{64}", token)  # Ray's own format: secrets.token_hex(32)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert token not in made.stdout + made.stderr and "new" in made.stdout

    again = run_local(["token"], token_env)
    assert again.returncode == 0 and "kept" in again.stdout and path.read_text() == token

    # Ray itself reads the file (and prints it: `ray get-auth-token` is how a user asks for the token).
    shown = subprocess.run([str(RAY_CLI), "get-auth-token"], env=token_env | {"RAY_AUTH_MODE": "token"},
                           capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout == token, shown.stderr

    path.write_text("")  # an empty file is a fatal misconfiguration for Ray: replaced
    assert run_local(["token"], token_env).returncode == 0 and re.fullmatch("[0-9a-f]{64}", path.read_text())


def test_local_sh_token_defaults_and_respects_ray_auth_token(token_env):
    home_token = Path(token_env["HOME"]) / ".ray" / "auth_token"
    env = {key: value for key, value in token_env.items() if key != "RAY_AUTH_TOKEN_PATH"}
    made = run_local(["token"], env | {"RAY_AUTH_TOKEN": "given"})
    assert made.returncode == 0 and "RAY_AUTH_TOKEN is set" in made.stdout and not home_token.exists()
    made = run_local(["token"], env)
    assert made.returncode == 0 and re.fullmatch("[0-9a-f]{64}", home_token.read_text())
    assert stat.S_IMODE(home_token.stat().st_mode) == 0o600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_sh_start_makes_the_token_and_the_cluster_requires_it(token_env):
    """A real two-node start with no token file: start makes it, and the Jobs API wants exactly it."""
    env = token_env | {"HEAD_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()),
                       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    path = Path(env["RAY_AUTH_TOKEN_PATH"])
    assert not path.exists()
    started = run_local(["start"], env, timeout=180)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        token = path.read_text()
        assert re.fullmatch("[0-9a-f]{64}", token) and token not in started.stdout + started.stderr
        url = f"http://127.0.0.1:{env['DASHBOARD_PORT']}/api/jobs/"
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}),
                                    timeout=30) as answer:
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer wrong"}), timeout=30)
        assert refused.value.code in (401, 403)
    finally:
        stopped = run_local(["stop"], env, timeout=120)
        for node in ("head", "worker"):  # the nodes' Ray temp dirs, named by local.sh after the port
            shutil.rmtree(f"/tmp/automl-ray-{env['HEAD_PORT']}-{node}", ignore_errors=True)
        assert stopped.returncode == 0 and not list(Path(env["AUTOML_CLUSTER_DIR"]).glob("*.pid"))
