"""A shared MLflow server with basic auth: runs log with credentials from the environment only.

The server is started as docs/cluster.md starts one (`mlflow server --app-name basic-auth`,
an auth config with NO_PERMISSIONS by default, the admin password and the Flask secret key
from the environment), on 127.0.0.1 with a free port and a temporary store.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
from conftest import QUICKSTART
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import run_experiment
from qfl.errors import RunError

_START_TIMEOUT_S = 180
_RUNNER = "qfl-runner"


@dataclass(frozen=True)
class AuthServer:
    url: str
    admin_password: str
    runner_password: str  # the password of the user runs log as (_RUNNER)
    other_password: str  # the password of "other", a user with no grants


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _request(url: str, user: str | None, password: str | None, body: dict | None = None) -> int:
    """The HTTP status of a GET (or a JSON POST when `body` is given) with basic auth."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if user is not None:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {pair}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:  # not listening yet
        return 0


def _create_user(url: str, admin_password: str, user: str, password: str) -> None:
    body = {"username": user, "password": password}
    status = _request(f"{url}/api/2.0/mlflow/users/create", "admin", admin_password, body)
    assert status == 200, f"creating user {user!r}: HTTP {status}"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    assert importlib.util.find_spec("flask_wtf"), (
        "the basic-auth app needs mlflow[auth] (dev extra)"
    )
    mlflow = shutil.which("mlflow")
    assert mlflow, "the mlflow command is not installed"
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    (tmp / "basic_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{tmp / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    admin_password = secrets.token_urlsafe(24)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    port = _free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            mlflow, "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp / 'server.db'}",
            "--artifacts-destination", str(tmp / "artifacts"),
        ],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while _request(f"{url}/health", None, None) != 200:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(tmp / 'server.log').read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer /health within {_START_TIMEOUT_S} s")
            time.sleep(0.5)
        server = AuthServer(
            url, admin_password, secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        )
        _create_user(url, admin_password, _RUNNER, server.runner_password)
        _create_user(url, admin_password, "other", server.other_password)
        yield server
    finally:
        proc.terminate()  # the server stops its uvicorn worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker too
            proc.wait(timeout=30)
        log.close()


def _config(tmp_path, experiment: str):
    return load_config(
        QUICKSTART,
        [
            "federation.rounds=2",
            f"output.runs_dir={tmp_path / 'runs'}",
            f"tracking.experiment={experiment}",
        ],
    )


def _as(monkeypatch, user: str | None, password: str | None) -> None:
    """Set (or clear) the credentials MLflow's client reads from the environment."""
    for name, value in (("MLFLOW_TRACKING_USERNAME", user), ("MLFLOW_TRACKING_PASSWORD", password)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


@pytest.mark.usefixtures("ray_local")
def test_run_logs_with_credentials_from_the_environment(auth_server, tmp_path, monkeypatch):
    _as(monkeypatch, _RUNNER, auth_server.runner_password)
    summary = run_experiment(_config(tmp_path, "auth"), tracking_uri=auth_server.url)

    client = MlflowClient(auth_server.url)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(summary.run_id, "test_accuracy"))
    assert steps == [1, 2]
    assert run.data.tags["final_weights_sha256"] == summary.weights_hash
    # Artifacts went through the authenticated proxy into the server's store.
    assert "model.pt" in {a.path for a in client.list_artifacts(summary.run_id)}

    # Another user, known to the server but with no grant, may not read the run.
    _as(monkeypatch, "other", auth_server.other_password)
    with pytest.raises(MlflowException, match="Permission denied"):
        MlflowClient(auth_server.url).get_run(summary.run_id)


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), (_RUNNER, "not-the-password"), ("admin", None)],
    ids=["no-credentials", "wrong-password", "no-password"],
)
def test_logging_without_valid_credentials_is_refused(
    auth_server, tmp_path, monkeypatch, user, password
):
    _as(monkeypatch, user, password)
    with pytest.raises(RunError, match="401"):
        run_experiment(_config(tmp_path, "refused"), tracking_uri=auth_server.url)
    # Nothing was created: the experiment does not exist, as the admin sees it.
    search = f"{auth_server.url}/api/2.0/mlflow/experiments/get-by-name?experiment_name=refused"
    assert _request(search, "admin", auth_server.admin_password) == 404
    assert _request(search, None, None) == 401
