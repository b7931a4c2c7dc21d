"""A real token-authenticated Ray head on this machine: `ray job submit` runs the quickstart.

The head is started the way ray_cluster.yaml starts one (RAY_AUTH_MODE=token, dashboard and
Jobs API on 127.0.0.1) with free ports and its own temp dir, so it never touches the session
Ray of tests/conftest.py or any other Ray on the machine. The token is generated here and
reaches Ray only through the environment of the processes started here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import QUICKSTART, REPO
from mlflow.tracking import MlflowClient

_START_TIMEOUT_S = 120
_JOB_TIMEOUT_S = 300


@dataclass(frozen=True)
class RayHead:
    dashboard: str  # http://127.0.0.1:PORT, the Jobs API
    client: str  # ray://NODE_IP:PORT, Ray Client
    token: str
    env: dict[str, str]  # an environment that holds the token
    temp_dir: Path


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _base_env() -> dict[str, str]:
    """This process's environment without any Ray address, auth setting or MLflow setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def _get(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (our unique temp dir)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def _stop(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Stop the head we started (never `ray stop`, which stops every Ray on the machine)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` then stops its node's processes
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (left := _pids_mentioning(str(temp_dir))) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def ray_head():
    ray = shutil.which("ray")
    assert ray, "the ray command is not installed"
    # A short temp dir: Ray's socket paths live under it and must stay < 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="qfl-ray-", dir="/tmp"))
    token = secrets.token_hex(32)
    env = _base_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    gcs, dashboard, client, agent = _free_ports(4)
    log = open(temp_dir / "head.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            ray, "start", "--head", "--block", "--port", str(gcs),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
            "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
            "--num-cpus", "2", "--temp-dir", str(temp_dir), "--disable-usage-stats",
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        # `ray start` writes ray_current_cluster (GCS address) once the node is up.
        current = temp_dir / "ray_current_cluster"
        while not current.is_file() or _get(f"{url}/api/jobs/", token) != 200:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(temp_dir / 'head.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the Jobs API did not answer within {_START_TIMEOUT_S} s")
            time.sleep(1)
        # Ray binds its own servers to the node's address, never to loopback.
        node_ip = current.read_text().strip().rsplit(":", 1)[0]
        yield RayHead(url, f"ray://{node_ip}:{client}", token, env, temp_dir)
    finally:
        _stop(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [shutil.which("ray"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _jobs(head: RayHead) -> dict[str, object]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(head.dashboard, headers={"Authorization": f"Bearer {head.token}"})
    return {job.submission_id: job for job in client.list_jobs()}


def _only_run(uri: str, experiment: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def test_job_submit_runs_the_quickstart_and_tracks_it_in_mlflow(ray_head, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    submission_id = f"qfl-quickstart-{secrets.token_hex(4)}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri}}
    out = _ray(
        ray_head.env,
        "job", "submit", "--address", ray_head.dashboard, "--submission-id", submission_id,
        "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--",
        "qfl", "run", "configs/quickstart.yaml", "--address", "auto",
        "--set", "federation.rounds=2", "--set", f"output.runs_dir={tmp_path / 'runs'}",
        "--set", "tracking.experiment=cluster-job",
        timeout=_JOB_TIMEOUT_S,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-1500:]
    job = _jobs(ray_head)[submission_id]
    assert job.status == "SUCCEEDED"
    assert job.entrypoint.startswith("qfl run configs/quickstart.yaml --address auto")

    client, run = _only_run(uri, "cluster-job")
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert sorted(m.step for m in history) == [1, 2]
    assert max(history, key=lambda m: m.step).value >= 0.85
    assert run.data.params["federation.rounds"] == "2"
    assert run.data.params["ray.address"] == "auto"
    assert run.data.tags["qfl.config_source"] == "configs/quickstart.yaml"
    assert (tmp_path / "runs" / run.info.run_id / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("auth_env", "http_token", "status", "message"),
    [
        ({"RAY_AUTH_MODE": "disabled"}, None, 401, "Missing authentication token"),
        ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "wrong"}, "wrong", 403, "Invalid"),
    ],
    ids=["no-token", "wrong-token"],
)
def test_submission_without_the_token_is_refused(ray_head, auth_env, http_token, status, message):
    assert _get(f"{ray_head.dashboard}/api/jobs/", http_token) == status
    submission_id = f"qfl-refused-{secrets.token_hex(4)}"
    out = _ray(
        _base_env() | auth_env,
        "job", "submit", "--address", ray_head.dashboard, "--submission-id", submission_id,
        "--no-wait", "--", "python", "-c", "print(1)",
    )  # fmt: skip
    assert out.returncode != 0
    assert message in out.stdout + out.stderr
    assert submission_id not in _jobs(ray_head)


# Ray's client proxy sometimes loses the per-client server it forks (a gRPC/fork race in Ray,
# ray-project/ray#63202: "Starting Ray client server failed"); that, and only that, is retried.
_RAY_CLIENT_FORK_RACE = "Starting Ray client server failed"


def _qfl_run_over_ray_client(head: RayHead, tmp_path: Path, uri: str):
    return subprocess.run(
        [
            shutil.which("qfl"), "run", str(QUICKSTART), "--address", head.client,
            "--tracking-uri", uri, "--set", "federation.rounds=1",
            "--set", f"output.runs_dir={tmp_path / 'runs'}", "--set", "tracking.experiment=client",
        ],
        cwd=tmp_path, env=head.env, capture_output=True, text=True, timeout=_JOB_TIMEOUT_S,
    )  # fmt: skip


@pytest.mark.slow  # ~45 s on 2 cores: a second driver, connected over Ray Client
def test_qfl_run_connects_through_ray_client_with_the_token(ray_head, tmp_path):
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'mlflow-{attempt}.db'}"
        out = _qfl_run_over_ray_client(ray_head, tmp_path, uri)
        if out.returncode == 0 or _RAY_CLIENT_FORK_RACE not in out.stdout + out.stderr:
            break
    server_logs = "".join(
        f"\n--- {log.name}\n{log.read_text(errors='replace')[-1500:]}"
        for log in sorted(ray_head.temp_dir.glob("session_latest/logs/ray_client_server*.err"))
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-1500:] + server_logs
    client, run = _only_run(uri, "client")
    assert run.info.status == "FINISHED"
    assert run.data.params["ray.address"] == ray_head.client
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [1]
