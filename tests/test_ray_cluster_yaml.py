"""ray_cluster.yaml: a valid Ray cluster-launcher config (Ray's own schema) that is safe to run.

Safe means: token authentication on every node, the token copied from the user's own token
file (never a literal in the repository), nothing bound to all interfaces, and setup commands
that install the project and the pinned liboqs.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest
import yaml
from conftest import REPO
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

# A Ray token from `ray get-auth-token --generate` is 64 hex digits; a UUID4 is 32.
_SECRET_LIKE = re.compile(r"\b[0-9a-fA-F]{32,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-")
_SECRET_ASSIGNMENT = re.compile(
    r"\b(RAY_AUTH_TOKEN|MLFLOW_TRACKING_PASSWORD|MLFLOW_AUTH_ADMIN_PASSWORD|"
    r"MLFLOW_FLASK_SERVER_SECRET_KEY|AWS_SECRET_ACCESS_KEY)\s*[=:]"
)


def _docs_yaml_blocks() -> list[dict]:
    text = (REPO / "docs" / "cluster.md").read_text()
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def _text() -> str:
    return (REPO / "ray_cluster.yaml").read_text()


def _load() -> dict:
    return yaml.safe_load(_text())


def _ray_starts(commands: list[str]) -> list[list[str]]:
    """The `ray start` commands among `commands`, split like a shell would."""
    return [argv for argv in map(shlex.split, commands) if "start" in argv and "ray" in argv]


def _secrets_in(text: str) -> list[str]:
    """Lines of `text` that carry something that looks like a literal secret."""
    return [
        line
        for line in text.splitlines()
        if _SECRET_LIKE.search(line) or _SECRET_ASSIGNMENT.search(line)
    ]


def test_cluster_config_passes_ray_schema():
    config = _load()
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] in config["available_node_types"]
    assert len(config["available_node_types"]) == 2


def test_schema_check_rejects_an_unknown_key():
    config = _load() | {"bogus": 1}
    with pytest.raises(ValidationError):
        validate_config(prepare_config(config))


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_ray_start_runs_with_token_authentication(key):
    starts = _ray_starts(_load()[key])
    assert len(starts) == 1
    assert starts[0][0] == "RAY_AUTH_MODE=token"
    assert starts[0][1:3] == ["ray", "start"]


def test_token_comes_from_the_users_token_file_not_from_the_repository():
    config = _load()
    # The launcher copies the local ~/.ray/auth_token (where `ray get-auth-token --generate`
    # writes it) to the default token path on every node, over SSH.
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 ~/.ray/auth_token" in config["setup_commands"]
    assert _secrets_in(_text()) == []


def test_the_secret_check_finds_a_planted_token():
    planted = _text() + "\n  - export RAY_AUTH_TOKEN=$(cat ~/t)\n"
    assert len(_secrets_in(planted)) == 1
    hex_token = "  - ray start --head  # " + "3f" * 32 + "\n"
    assert len(_secrets_in(_text() + hex_token)) == 1


def test_dashboard_and_jobs_api_bind_to_loopback_only():
    config = _load()
    (head,) = _ray_starts(config["head_start_ray_commands"])
    assert "--head" in head
    assert "--dashboard-host=127.0.0.1" in head
    everything = " ".join(
        config["setup_commands"]
        + config["head_start_ray_commands"]
        + config["worker_start_ray_commands"]
    )
    assert "0.0.0.0" not in everything
    assert "--ray-debugger-external" not in everything


def test_setup_installs_the_project_and_the_pinned_liboqs():
    commands = _load()["setup_commands"]
    assert any('pip install -e ".[oqs]"' in cmd for cmd in commands)
    (build,) = [cmd for cmd in commands if "liboqs" in cmd and "cmake" in cmd]
    # The same minimal build as ../shared/tools/build-liboqs.sh, installed where
    # liboqs-python looks by default.
    assert '-DOQS_MINIMAL_BUILD="SIG_ml_dsa_65;KEM_ml_kem_768"' in build
    assert "-DCMAKE_INSTALL_PREFIX=$HOME/_oqs" in build
    # The liboqs tag matches the liboqs-python pin (0.16.0.x wraps liboqs 0.16.0).
    tag = re.search(r"--branch (\S+)", build).group(1)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = [
        r.split("==")[1]
        for extra in project["optional-dependencies"].values()
        for r in extra
        if r.startswith("liboqs-python==")
    ]
    assert pins and all(pin.startswith(tag + ".") for pin in pins)


def test_on_premise_variant_in_the_docs_passes_ray_schema():
    """docs/cluster.md: ray_cluster.yaml with its provider and auth replaced, node types dropped."""
    (onprem,) = _docs_yaml_blocks()
    config = {
        k: v for k, v in _load().items() if k not in ("available_node_types", "head_node_type")
    } | onprem
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert prepared["max_workers"] == len(onprem["provider"]["worker_ips"])
    assert prepared["head_start_ray_commands"] == _load()["head_start_ray_commands"]
