"""Tests for pipelines.config: loading, overrides, dumping and every bad-config path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pipelines.config import (
    ExperimentConfig,
    FederationConfig,
    apply_overrides,
    dump_config,
    load_config,
    parse_override,
    with_ibm_token,
)
from qfl.errors import ConfigError, QflError

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
REPO_CONFIGS = QUICKSTART.parent


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- quickstart


def test_quickstart_loads_expected_values() -> None:
    c = load_config(QUICKSTART)
    assert isinstance(c, ExperimentConfig)
    assert c.name == "quickstart"
    assert c.seed == 0
    assert c.data.dataset == "digits"
    assert c.data.test_fraction == 0.25
    assert c.data.partition == "dirichlet"
    assert c.data.alpha == 0.5
    assert c.data.root is None
    assert c.model.kind == "mlp"
    assert c.model.hidden == (64,)
    assert c.train.optimizer == "sgd"
    assert c.train.lr == 0.05
    assert c.train.momentum == 0.9
    assert c.train.epochs == 2
    assert c.train.batch_size == 32
    assert c.federation.clients == 8
    assert c.federation.rounds == 10
    assert c.federation.sample_fraction == 1.0
    assert c.federation.clients_per_round is None
    assert c.federation.strategy == "fedavg"
    assert c.federation.per_round == 8
    assert c.ray.num_cpus == 2
    assert c.ray.runners == 2
    assert c.tracking.experiment == "quickstart"
    assert c.tracking.uri is None
    # sections absent from the file take their defaults
    assert c.output.runs_dir == Path("runs")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path / "empty.yaml", "")) == ExperimentConfig()


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    ("override", "getter", "expected"),
    [
        ("federation.rounds=3", lambda c: c.federation.rounds, 3),
        ("model.hidden=[32,16]", lambda c: c.model.hidden, (32, 16)),
        ("model.hidden=[]", lambda c: c.model.hidden, ()),
        ("tracking.uri=null", lambda c: c.tracking.uri, None),
        ("tracking.uri=sqlite:///x.db", lambda c: c.tracking.uri, "sqlite:///x.db"),
        ("train.lr=1e-3", lambda c: c.train.lr, 1e-3),
        ("train.optimizer=adam", lambda c: c.train.optimizer, "adam"),
        ("data.standardize=false", lambda c: c.data.standardize, False),
        # `output` is not in quickstart.yaml: the override creates the section
        ("output.runs_dir=elsewhere", lambda c: c.output.runs_dir, Path("elsewhere")),
        ("ray.address=auto", lambda c: c.ray.address, "auto"),
        ("name=a=b", lambda c: c.name, "a=b"),  # split on the first '=' only
        (" federation . rounds =4", lambda c: c.federation.rounds, 4),
    ],
)
def test_set_override(override: str, getter, expected) -> None:
    c = load_config(QUICKSTART, [override])
    assert getter(c) == expected
    assert type(getter(c)) is type(expected)


def test_later_override_wins() -> None:
    c = load_config(QUICKSTART, ["federation.rounds=3", "federation.rounds=5"])
    assert c.federation.rounds == 5


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"federation": {"rounds": 10}, "model": {"hidden": [64]}}
    out = apply_overrides(raw, ["federation.rounds=3", "output.runs_dir=x"])
    assert raw == {"federation": {"rounds": 10}, "model": {"hidden": [64]}}
    assert out == {
        "federation": {"rounds": 3},
        "model": {"hidden": [64]},
        "output": {"runs_dir": "x"},
    }


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("a.b=1", ["a", "b"], 1),
        ("a.b=[1, 2]", ["a", "b"], [1, 2]),
        ("a=null", ["a"], None),
        ("a=", ["a"], ""),
        ("a.b.c='x'", ["a", "b", "c"], "x"),
    ],
)
def test_parse_override(text: str, path: list[str], value) -> None:
    assert parse_override(text) == (path, value)


# --------------------------------------------------------------------------- dump / flat / frozen


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.hidden=[32,16]", "tracking.uri=sqlite:///m.db", "federation.clients_per_round=3"],
        ["federation.strategy=fedprox", "federation.prox_mu=0.01", "train.optimizer=adam"],
        ["ray.address=auto", "output.runs_dir=out/runs", "tracking.run_name=r1", "seed=12345"],
    ],
)
def test_dump_config_round_trips(tmp_path: Path, overrides: list[str]) -> None:
    c = load_config(QUICKSTART, overrides)
    path = write(tmp_path / "resolved.yaml", dump_config(c))
    assert load_config(path) == c


def test_dump_config_round_trips_with_data_root(tmp_path: Path) -> None:
    root = tmp_path / "mnist"
    root.mkdir()
    c = load_config(QUICKSTART, ["data.dataset=mnist", f"data.root={root}", "model.kind=cnn"])
    assert c.data.root == root
    assert load_config(write(tmp_path / "r.yaml", dump_config(c))) == c


def test_flat_gives_dotted_string_values() -> None:
    flat = load_config(QUICKSTART).flat()
    assert flat["federation.rounds"] == "10"
    assert flat["train.lr"] == "0.05"
    assert flat["model.hidden"] == "[64]"
    assert flat["tracking.uri"] == "null"
    assert flat["data.dataset"] == "digits"
    assert flat["output.runs_dir"] == "runs"
    assert flat["name"] == "quickstart"
    assert all(isinstance(v, str) for v in flat.values())
    # exactly the leaves: one key per field of every section, no section keys
    sections = (
        "data", "model", "train", "federation", "ray", "tracking", "output", "ledger",
        "aggregation", "attack", "scheduler", "monitor", "privacy", "secagg",
        "network", "energy",
    )  # fmt: skip
    assert not set(sections) & set(flat)
    c = ExperimentConfig()
    optional = {"quantum", "clients", "crosscheck"}
    expected = (
        {"name", "seed", "resources"}
        | optional
        | {f"{s}.{f}" for s in sections for f in type(getattr(c, s)).model_fields}
    )
    assert set(flat) == expected  # an absent optional section is one 'null' leaf
    assert all(flat[key] == "null" for key in optional)
    assert flat["resources"] == "[]"


def test_flat_expands_the_quantum_section_with_its_noise() -> None:
    flat = load_config(REPO_CONFIGS / "digits-vqc-noisy.yaml").flat()
    assert flat["quantum.executor"] == "aer"
    assert flat["quantum.noise.kind"] == "parametric"
    assert flat["quantum.noise.p2"] == "0.01"
    assert flat["model.kind"] == "vqc"


@pytest.mark.parametrize(
    ("target", "field"),
    [("", "seed"), ("federation", "rounds"), ("model", "hidden"), ("train", "lr")],
)
def test_config_is_frozen(target: str, field: str) -> None:
    c = load_config(QUICKSTART)
    obj = getattr(c, target) if target else c
    before = getattr(obj, field)
    with pytest.raises(ValidationError):
        setattr(obj, field, 999)
    assert getattr(obj, field) == before


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"clients": 8, "clients_per_round": 3}, 3),
        ({"clients": 8, "clients_per_round": 8}, 8),
        ({"clients": 8}, 8),
        ({"clients": 8, "sample_fraction": 0.25}, 2),
        ({"clients": 10, "sample_fraction": 0.3}, 3),
        ({"clients": 100, "sample_fraction": 0.1}, 10),
        ({"clients": 8, "sample_fraction": 0.01}, 1),  # never 0
        ({"clients": 1, "sample_fraction": 0.5}, 1),
        ({"clients": 5, "sample_fraction": 0.5}, 2),  # floor, not round-half-even
        ({"clients": 7, "sample_fraction": 0.5}, 3),
        ({"clients": 9, "sample_fraction": 0.99}, 8),
    ],
)
def test_per_round(kwargs: dict, expected: int) -> None:
    assert FederationConfig(**kwargs).per_round == expected


# --------------------------------------------------------------------------- bad configs

BAD_FILES = [
    # (id, yaml text, substrings the message must contain besides the file path)
    ("unknown_top", "name: x\nbogus: 1\n", ["bogus", "unknown key"]),
    ("unknown_nested", "federation:\n  clientz: 4\n", ["federation.clientz", "unknown key"]),
    ("wrong_type", "federation:\n  rounds: ten\n", ["federation.rounds", "ten"]),
    ("wrong_type_list", "model:\n  hidden: [a]\n", ["model.hidden.0"]),
    ("lr_negative", "train:\n  lr: -1\n", ["train.lr", "greater than 0"]),
    ("fraction_high", "federation:\n  sample_fraction: 1.5\n", ["federation.sample_fraction"]),
    ("test_fraction_zero", "data:\n  test_fraction: 0\n", ["data.test_fraction"]),
    ("bad_literal", "data:\n  dataset: imagenet\n", ["data.dataset", "imagenet"]),
    (
        "per_round_gt_clients",
        "federation:\n  clients: 4\n  clients_per_round: 5\n",
        ["federation", "clients_per_round=5 exceeds clients=4"],
    ),
    (
        "per_round_and_fraction",
        "federation:\n  clients_per_round: 2\n  sample_fraction: 0.5\n",
        ["federation", "clients_per_round or sample_fraction"],
    ),
    ("fedprox_no_mu", "federation:\n  strategy: fedprox\n", ["federation", "prox_mu"]),
    ("cnn_on_digits", "model:\n  kind: cnn\n", ["model.kind", "digits"]),
    ("mnist_no_root", "data:\n  dataset: mnist\n", ["data", "data.root"]),
    ("two_problems", "seed: -1\ntrain:\n  epochs: 0\n", ["seed", "train.epochs", "2 problem"]),
    ("malformed", "a: [1, 2\n", ["malformed YAML"]),
    ("top_level_list", "- 1\n- 2\n", ["top level must be a mapping", "list"]),
    ("top_level_scalar", "just text\n", ["top level must be a mapping", "str"]),
    ("section_not_mapping", "federation: 3\n", ["federation"]),
]


@pytest.mark.parametrize(
    ("text", "needles"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_config_file(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_config_error_is_a_qfl_error() -> None:
    assert issubclass(ConfigError, QflError)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["federation.clientz=4"], ["federation.clientz", "unknown key"]),
        (["federation.rounds=ten"], ["federation.rounds", "ten"]),
        (["train.lr=-1"], ["train.lr"]),
        (["federation.sample_fraction=1.5"], ["federation.sample_fraction"]),
        (["data.test_fraction=0"], ["data.test_fraction"]),
        (["newsection.key=1"], ["newsection", "unknown key"]),
    ],
)
def test_bad_override_value_names_file_and_field(overrides: list[str], needles: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, overrides)
    message = str(info.value)
    assert message.startswith(f"{QUICKSTART}: ")
    for needle in needles:
        assert needle in message


BAD_SET_SYNTAX = [
    ("no_equals", "federation.rounds", "federation.rounds"),
    ("empty_segment", "federation..rounds=3", "federation..rounds"),
    ("leading_dot", ".rounds=3", ".rounds"),
    ("empty_key", "=3", "'=3'"),
    ("into_scalar", "seed.x=1", "seed is not a section"),
    ("bad_yaml_value", "model.hidden=[1, 2", "not valid YAML"),
]


@pytest.mark.parametrize(
    ("text", "needle"), [c[1:] for c in BAD_SET_SYNTAX], ids=[c[0] for c in BAD_SET_SYNTAX]
)
def test_bad_set_syntax(text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, [text])
    message = str(info.value)
    assert "--set" in message
    assert needle in message


@pytest.mark.parametrize("text", [c[1] for c in BAD_SET_SYNTAX], ids=[c[0] for c in BAD_SET_SYNTAX])
def test_bad_set_syntax_names_file(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, [text])
    assert str(QUICKSTART) in str(info.value)


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_data_root_must_be_a_folder(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "data"
    if kind == "file":
        root.write_text("not a folder")
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, [f"data.root={root}"])
    message = str(info.value)
    assert message.startswith(f"{QUICKSTART}: ")
    assert "data.root" in message
    assert str(root) in message


def test_data_root_existing_folder_is_accepted(tmp_path: Path) -> None:
    c = load_config(QUICKSTART, [f"data.root={tmp_path}"])
    assert c.data.root == tmp_path


def test_malformed_yaml_message_points_at_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "name: x\nmodel:\n  hidden: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert isinstance(info.value.__cause__, yaml.YAMLError)
    assert "line" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        (["model.kind=vqc"], ["needs a quantum section"]),
        (
            ["model.kind=vqc", "quantum.qubits=4"],
            ["vqc encodes one feature per qubit", "digits gives 64 features"],
        ),
        (["model.kind=hybrid", "quantum.executor=ibm"], ["quantum.backend"]),
        (["model.kind=hybrid", "quantum.noise.kind=parametric"], ["noiseless"]),
        (["model.kind=hybrid", "quantum.qubits=0"], ["quantum.qubits"]),
        (["quantum.executor=gpu"], ["quantum.executor"]),
    ],
)
def test_quantum_config_errors_name_the_field(overrides, needles) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, overrides)
    message = str(info.value)
    assert str(QUICKSTART) in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("name", ["digits-vqc.yaml", "digits-vqc-noisy.yaml", "digits-hybrid.yaml"])
def test_shipped_quantum_configs_load(name) -> None:
    config = load_config(REPO_CONFIGS / name)
    assert config.quantum is not None
    assert config.model.kind in ("vqc", "hybrid")


def test_ibm_token_from_the_environment_is_kept_secret() -> None:
    config = load_config(
        REPO_CONFIGS / "digits-vqc.yaml", ["quantum.executor=ibm", "quantum.backend=ibm_torino"]
    )
    assert with_ibm_token(config, None) is config
    secret = with_ibm_token(config, "tok-123")
    assert secret.quantum.token.get_secret_value() == "tok-123"
    assert "tok-123" not in dump_config(secret)  # never written to runs/ or MLflow params
    assert "tok-123" not in str(secret.flat())
    # a token already in the config wins over the environment
    assert with_ibm_token(secret, "other").quantum.token.get_secret_value() == "tok-123"
    # other executors never get a token
    exact = load_config(REPO_CONFIGS / "digits-vqc.yaml")
    assert with_ibm_token(exact, "tok-123") is exact


def test_set_reaches_into_a_list_item_by_index() -> None:
    config = load_config(REPO_CONFIGS / "outage.yaml", ["resources[0].availability.outages=[]"])
    assert config.resources[0].availability.outages == ()
    assert config.resources[0].name == "qpu_a"  # the rest of the item is kept


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resources[3].qubits=5", "resources has 1 items"),
        ("federation.rounds[0]=3", "rounds has no items"),
        ("resources[0].noise.p2=2", "resources.0.noise.p2"),
    ],
)
def test_a_bad_indexed_override_names_the_path(override, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO_CONFIGS / "outage.yaml", [override])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["aggregation.rule=trimmed_mean"], "DP-FedAvg"),
        (["privacy.mode=none"], "needs mode 'central' or 'local'"),
    ],
)
def test_privacy_rejects_combinations_it_cannot_honour(overrides, message) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(REPO_CONFIGS / "dp.yaml", overrides)
