"""A real two-node Ray cluster on loopback (cluster/local.sh), jobs submitted through the Jobs API.

The cluster runs under its own token and ports; the fixture stops exactly the processes it started.
"""

import contextlib
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from automl.cli import main
from automl.errors import UserError
from automl.jobs import Jobs, check_job_id, jobs_url, resolve_token
from automl.layout import RunLayout
from automl.remote import Location, Mirror

LOCAL_SH = Path(__file__).resolve().parents[1] / "cluster" / "local.sh"
TINY_JOB = """
name: tiny_job
data: {image_size: 16}
hyperparameters:
  conv_blocks: 1
  base_filters: {choice: [4, 8]}
  dense_units: 16
  learning_rate: {float: [1.0e-3, 1.0e-2], log: true}
  batch_size: 32
search:
  searcher: random
  scheduler: none
  num_samples: 4
  max_epochs: 2
  max_concurrent: 2
  resources: {cpu: 1}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: What an AWS node's environment holds (an instance role's keys; here the test S3 server's).
def s3_environment(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """Head + worker node on 127.0.0.1 with a token of their own; yields (jobs URL, token, env)."""
    state = tmp_path_factory.mktemp("cluster")
    token = secrets.token_hex(16)
    (state / "token").write_text(token)
    env = os.environ | s3_environment(s3_server) | {
        "AUTOML_CLUSTER_DIR": str(state), "HEAD_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()),
        "RAY_AUTH_TOKEN_PATH": str(state / "token"),
        # The job's `python` and `ray` must be this interpreter's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_AUTH_TOKEN", None)
    started = subprocess.run(["bash", str(LOCAL_SH), "start"], env=env, capture_output=True, text=True,
                             timeout=180, check=False)
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        yield f"http://127.0.0.1:{env['DASHBOARD_PORT']}", token, env
    finally:
        subprocess.run(["bash", str(LOCAL_SH), "stop"], env=env, capture_output=True, timeout=120, check=False)
        # Nothing this fixture started outlives it.
        for node in ("head", "worker"):
            assert not (state / f"{node}.pid").exists()


def run_cli(args, capsys):
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_empty_or_malformed_job_ids_are_one_line_before_any_request():
    assert check_job_id("raysubmit_4LamXRuQpYdSMg7J") == "raysubmit_4LamXRuQpYdSMg7J"
    for job_id, reason in (("", "empty"), ("  ", "empty"), ("a/b", "must not contain '/'"),
                           ("a b\n", "must not contain '\\n' ' '")):
        with pytest.raises(UserError, match=f"job id.*{re.escape(reason)}"):
            check_job_id(job_id)
    jobs = object.__new__(Jobs)  # no cluster: the id is refused before the client is touched
    jobs.client = None
    for method in (jobs.info, jobs.logs, jobs.stop):
        with pytest.raises(UserError, match="empty"):
            method("")


def test_jobs_url_and_token_resolution(monkeypatch, tmp_path):
    assert jobs_url("10.0.0.5") == "http://10.0.0.5:8265"
    assert jobs_url("https://ray.example.org:443/") == "https://ray.example.org:443"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    (tmp_path / "t").write_text("from-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert resolve_token() == "from-file"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert resolve_token() == "from-env" and resolve_token("flag") == "flag"


def test_submit_wait_runs_a_search_on_the_cluster(cluster, tiny_ham, tmp_path, capsys):
    url, token, env = cluster
    spec = tmp_path / "tiny_job.yaml"
    spec.write_text(TINY_JOB)
    results = tmp_path / "results"
    code, out, err = run_cli(["submit", str(spec), "--address", url, "--token", token, "--data", str(tiny_ham),
                              "--name", "tiny", "--results", str(results), "--search-only", "--wait"], capsys)
    assert code == 0, err
    assert "SUCCEEDED" in out and "[4/4]" in out
    trials, epochs = RunLayout(results / "tiny").read_trials(), RunLayout(results / "tiny").read_epochs()
    assert len(trials) == 4 and set(trials["status"]) == {"completed"}
    # Every epoch records the Ray node that ran it. (Whether the worker gets a trial is a race
    # between its cold actor and the head's warm, reused one: seconds-long tiny trials lose it.)
    assert epochs["node_id"].str.fullmatch("[0-9a-f]{56}").all()
    status = subprocess.run(["bash", str(LOCAL_SH), "status"], env=env, capture_output=True, text=True,
                             timeout=60, check=False)
    assert "live nodes: 2" in status.stdout

    job_id = next(line.split()[1] for line in out.splitlines() if line.startswith("submitted "))
    code, out, _ = run_cli(["jobs", "list", "--address", url, "--token", token], capsys)
    assert code == 0 and job_id in out and "SUCCEEDED" in out
    code, out, _ = run_cli(["jobs", "logs", job_id, "--address", url, "--token", token], capsys)
    assert code == 0 and "leaderboard" in out


def test_a_search_on_both_nodes_with_its_run_folder_in_a_bucket(cluster, tiny_ham, tmp_path, bucket, monkeypatch,
                                                               capsys):
    url, token, _ = cluster
    spec = tmp_path / "tiny_job.yaml"
    # Two trials at a time, one CPU each, one CPU per node: both nodes train, once trials last longer than a cold
    # worker takes to start (TensorFlow's import): 10 epochs at 48 px.
    spec.write_text(TINY_JOB.replace("max_epochs: 2", "max_epochs: 10").replace("image_size: 16", "image_size: 48"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, out, err = run_cli(["submit", str(spec), "--address", url, "--token", token, "--data", str(tiny_ham),
                              "--name", "in_bucket", "--results", bucket, "--search-only", "--wait"], capsys)
    assert code == 0, err
    location = Location.parse(bucket, "--results").join("in_bucket")
    Mirror(tmp_path / "view", location).pull()
    run = RunLayout(tmp_path / "view")
    trials, epochs = run.read_trials(), run.read_epochs()
    assert len(trials) == 4 and set(trials["status"]) == {"completed"} and run.read_info()["status"] == "finished"
    assert epochs["node_id"].nunique() == 2, epochs.groupby("node_id").size()
    assert any(key.startswith("ray/") for key in location.files())  # Tune's experiment too, from both nodes
    assert list(work.iterdir()) == []


@pytest.fixture
def unshared_cluster(tmp_path, monkeypatch):
    """A head node, and a worker node in a mount namespace of its own where ``tmp_path/results`` is another folder
    (a tmpfs mounted over it): a cluster whose nodes do not share that path. Yields (GCS address, results)."""
    if os.geteuid() != 0 or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("needs mount namespaces (unshare -m as root)")
    results = tmp_path / "results"
    results.mkdir()
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(16))
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    agents = ["--dashboard-agent-listen-port=0", "--metrics-export-port=0", "--num-gpus=0", "--num-cpus=1", "--block"]
    head = subprocess.Popen(["ray", "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--include-dashboard=false", f"--temp-dir={temp / 'head'}", *agents],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    worker_start = shlex.join(["ray", "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                               f"--temp-dir={temp / 'worker'}", *agents])
    worker = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c",
                               f"mount -t tmpfs tmpfs {shlex.quote(str(results))} && exec {worker_start}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    try:
        deadline = time.monotonic() + 120
        while not _live_nodes(port) >= 2:
            assert time.monotonic() < deadline, "the two nodes did not come up within 120 s"
            assert head.poll() is None and worker.poll() is None, "a node exited"
            time.sleep(2)
        yield f"127.0.0.1:{port}", results
    finally:
        for node in (worker, head):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _live_nodes(port: int) -> int:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        probe = ("import logging, ray; ray.init(address='127.0.0.1:%d', logging_level=logging.ERROR, "
                 "log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))" % port)
        with contextlib.suppress(subprocess.TimeoutExpired):
            done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
            return int(done.stdout.strip() or 0) if done.returncode == 0 else 0
    return 0


def test_a_cluster_whose_nodes_do_not_share_the_run_folder_is_refused_before_any_trial(unshared_cluster, tiny_ham,
                                                                                        tmp_path):
    address, results = unshared_cluster
    spec = tmp_path / "tiny_job.yaml"
    spec.write_text(TINY_JOB)
    # A process of its own, as a user's would be: Ray reads its token settings once per process.
    done = subprocess.run([sys.executable, "-m", "automl", "search", str(spec), "--data", str(tiny_ham), "--name",
                           "unshared", "--results", str(results), "--ray-address", address],
                          capture_output=True, text=True, timeout=300)
    code, err = done.returncode, done.stderr
    assert code == 2, err
    [error] = [line for line in err.splitlines() if line.startswith("automl search: error:")]
    assert re.fullmatch(re.escape(f"automl search: error: {results / 'unshared'}: not shared with every node of the "
                                  "cluster (node ") + r"[0-9a-f]{8} at [0-9.]+ cannot see it\), .*", error), error
    assert "pass --results s3://" in error and "Traceback" not in err
    assert not RunLayout(results / "unshared").trial_table.exists()  # no trial started
    assert not list((results / "unshared").glob(".storage-check-*"))


def test_stop_a_running_job(cluster, tiny_ham, tmp_path, capsys):
    url, token, _ = cluster
    spec = tmp_path / "tiny_job.yaml"
    spec.write_text(TINY_JOB)
    code, out, _ = run_cli(["submit", str(spec), "--address", url, "--token", token, "--data", str(tiny_ham),
                            "--name", "to_stop", "--results", str(tmp_path / "results"), "--search-only"], capsys)
    assert code == 0
    job_id = out.split()[1]
    code, out, _ = run_cli(["jobs", "stop", job_id, "--address", url, "--token", token], capsys)
    assert code == 0 and "stop requested" in out
    code, out, err = run_cli(["jobs", "logs", job_id, "--follow", "--address", url, "--token", token], capsys)
    assert code == 2 and "stopped" in err


@pytest.mark.parametrize(
    ("address", "token", "message"),
    [
        ("http://127.0.0.1:9", "x", "no Ray Jobs API answers there"),
        (None, "wrong-token", "rejected the token"),
        (None, "", "wants a token"),
    ],
)
def test_connection_errors_are_one_line(cluster, monkeypatch, capsys, address, token, message):
    url, _, _ = cluster
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.ray/auth_token either
    args = ["jobs", "list", "--address", address or url] + (["--token", token] if token else [])
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_spec_fails_before_contacting_the_cluster(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("search: {num_samples: 0}\n")
    code, _, err = run_cli(["submit", str(spec), "--address", "http://127.0.0.1:9", "--data", "/d", "--name", "x",
                            "--results", "/r"], capsys)
    assert code == 2 and "num_samples" in err and "Traceback" not in err


def _subparser(parser, name):
    import argparse

    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


#: A value for each of run's flags that is not its default (flag -> value; None: a switch given alone).
def _sample(action) -> list[str]:
    import argparse

    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return [f"--no-{flag[2:]}"]  # the spec's default is on
    if action.nargs == 0:
        return [flag]
    if action.choices:
        return [flag, str([c for c in action.choices if c != action.default][-1])]
    special = {"--image-size": "64", "--search-image-size": "24", "--split-file": "/cluster/split.csv",
               "--portfolio": "/cluster/portfolio.yaml", "--warm-start": "earlier", "--storage": "s3://bucket/ckpt",
               "--cache-dir": "/cluster/cache", "--max-epochs": "6", "--grace-period": "2"}
    return [flag, special.get(flag, "3")]


def test_submit_forwards_every_setting_run_takes_under_a_flag_the_cluster_understands():
    """Every flag of automl run is a flag of submit, and the job's command line carries it to the cluster's
    automl run with the same value (run's parser reads the job's command back)."""
    import argparse

    from automl.cli import SUBMIT_GROUPS, _search_spec, build_parser, job_command

    parser = build_parser()
    run, submit = _subparser(parser, "run"), _subparser(parser, "submit")
    own = {"help", "ray_address", "results", "data", "name"}  # the job sets these itself
    run_flags = [a for a in run._actions if a.option_strings and a.help != argparse.SUPPRESS and a.dest not in own]
    submit_dests = {a.dest for a in submit._actions}
    assert [a.dest for a in run_flags if a.dest not in submit_dests] == []
    base = ["submit", "quick", "--data", "/cluster/data", "--name", "n", "--results", "/cluster/results"]
    for action in run_flags:
        args = parser.parse_args([*base, *_sample(action)])
        command, files = job_command(args, _search_spec(args, SUBMIT_GROUPS))
        assert command[:4] == ["python", "-m", "automl", "run"] and files["spec.yaml"].name == "quick.yaml"
        forwarded = parser.parse_args(command[3:])
        sent, received = getattr(args, action.dest), getattr(forwarded, action.dest)
        assert sent != action.default and str(received) == str(sent), (action.dest, command)  # paths stay text here
    # A search-only job refuses the settings of the stages it will not run, in one line.
    args = parser.parse_args([*base, "--search-only", "--top-k", "3"])
    with pytest.raises(UserError, match="--top-k: settings of the stages after the search"):
        job_command(args, _search_spec(args, SUBMIT_GROUPS))


def test_submit_image_size_and_top_k_reach_the_job(capsys):
    """The two settings 0.1 refused (issue 28): given to submit, they are in the job's automl run."""
    from automl.cli import SUBMIT_GROUPS, _search_spec, build_parser, job_command

    args = build_parser().parse_args(["submit", "quick", "--data", "/d", "--name", "n", "--results", "/r",
                                      "--image-size", "64", "--top-k", "3", "--seed", "7"])
    assert "--seed is now --search-seed" in capsys.readouterr().err
    command, _ = job_command(args, _search_spec(args, SUBMIT_GROUPS))
    text = " ".join(command)
    assert "--image-size 64" in text and "--top-k 3" in text and "--search-seed 7" in text
