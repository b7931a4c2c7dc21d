"""ray_cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema)."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config


def _load():
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def test_cluster_config_passes_ray_schema():
    config = _load()
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "aws"
    assert any("pip install -e ." in cmd for cmd in config["setup_commands"])
    # The dashboard (which runs jobs for whoever reaches it) binds to loopback only.
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_schema_check_rejects_an_unknown_key():
    config = _load() | {"bogus": 1}
    with pytest.raises(ValidationError):
        validate_config(prepare_config(config))
