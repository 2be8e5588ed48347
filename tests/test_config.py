"""The run configuration: validation at the boundary, parsing from flags and YAML, run names."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
import yaml

from impress.config import Config, ConfigError

FIELDS = dataclasses.fields(Config)
HINTS = typing.get_type_hints(Config)
CHOICE_FIELDS = [f for f in FIELDS if "choices" in f.metadata]
RANGE_FIELDS = [f for f in FIELDS if "range" in f.metadata]
# NOTE: heterogeneous impressions tie m to num_tasks; homogeneous ones let each range be probed alone.
FREE = {"impressions": "homogeneous"}


def _outside(f: dataclasses.Field) -> list[object]:
    """The nearest values on either side of the field's allowed range."""
    lo, hi, lo_open, hi_open = f.metadata["range"]
    if HINTS[f.name] is int:
        return [lo if lo_open else lo - 1, hi if hi_open else hi + 1]
    return [lo if lo_open else math.nextafter(lo, -math.inf), hi if hi_open else math.nextafter(hi, math.inf)]


def _inside(f: dataclasses.Field) -> list[object]:
    """The extreme values the field's range still allows."""
    lo, hi, lo_open, hi_open = f.metadata["range"]
    if HINTS[f.name] is int:
        return [lo + 1 if lo_open else lo, hi - 1 if hi_open else hi]
    return [math.nextafter(lo, math.inf) if lo_open else lo, math.nextafter(hi, -math.inf) if hi_open else hi]


def test_defaults_construct_and_are_the_field_defaults():
    cfg = Config()
    for f in FIELDS:
        assert getattr(cfg, f.name) == f.default
    assert Config.from_dict({}) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.m = 3


def test_every_default_choice_is_allowed():
    for f in CHOICE_FIELDS:
        assert f.default in f.metadata["choices"]


# ---------------------------------------------------------------------------------------------
# Rejection with the field's name


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(ConfigError, match="lerning_rate") as info:
        Config.from_dict({"m": 2, "num_tasks": 4, "lerning_rate": 0.1})
    assert "'m'" not in str(info.value).split("known keys")[0]


def test_from_dict_rejects_a_non_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        Config.from_dict(["m", 2])


@pytest.mark.parametrize("f", CHOICE_FIELDS, ids=lambda f: f.name)
def test_choice_fields_reject_other_values(f):
    numeric = isinstance(f.default, int)
    with pytest.raises(
        ConfigError, match=rf"^{f.name}: expected an integer" if numeric else rf"^{f.name}: 'bogus' is not"
    ):
        Config.from_dict({f.name: "bogus"})
    if numeric:
        with pytest.raises(ConfigError, match=rf"^{f.name}: 7 is not one of"):
            Config.from_dict({f.name: 7})
    for choice in f.metadata["choices"]:  # and accept each of their choices (a split of digits: <= 5 tasks)
        cfg = Config.from_dict({"num_tasks": 5, "m": 2, f.name: choice})
        assert getattr(cfg, f.name) == choice


@pytest.mark.parametrize("f", RANGE_FIELDS, ids=lambda f: f.name)
def test_range_fields_reject_values_just_outside(f):
    for value in _outside(f):
        with pytest.raises(ConfigError, match=rf"^{f.name}: .* outside the allowed range"):
            Config.from_dict({**FREE, f.name: value})
    for value in _inside(f):
        assert getattr(Config.from_dict({**FREE, f.name: value}), f.name) == value


def test_sparsity_one_is_rejected_and_density_is_the_kept_fraction():
    with pytest.raises(ConfigError, match=r"^sparsity: 1\.0 is outside the allowed range \[0\.0, 1\.0\)"):
        Config(sparsity=1.0)
    for sparsity in (0.0, 0.25, 0.9):
        assert Config(sparsity=sparsity).density == pytest.approx(1.0 - sparsity)
    assert Config(sparsity=0.0).density == 1.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("m", "ten"),
        ("m", 2.5),
        ("m", True),
        ("num_tasks", None),
        ("lr", "fast"),
        ("lr", "nan"),
        ("lr", False),
        ("download", "maybe"),
        ("download", 2),
        ("widths", "64,x"),
        ("widths", 64),
        ("widths", "0,5"),
        ("stream", 3),
        ("alpha_epochs", 0),
        ("alpha_epochs", "many"),
        ("threads", 0),
        ("device", "gpu"),
    ],
)
def test_ill_typed_or_invalid_values_name_the_field(name, value):
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        Config.from_dict({name: value})


def test_heterogeneous_m_above_num_tasks_is_rejected():
    with pytest.raises(ConfigError, match=r"^m: .*m \(4\).*num_tasks \(3\)"):
        Config(num_tasks=3, m=4)
    assert Config(num_tasks=3, m=3).m == 3
    # only heterogeneous ImpressLearn takes its impressions from the first m tasks
    assert Config(num_tasks=3, m=4, impressions="homogeneous").m == 4
    assert Config(num_tasks=3, m=4, method="supsup").m == 4


def test_split_digits_with_too_many_tasks_is_rejected():
    with pytest.raises(ConfigError, match=r"^num_tasks: a split of digits holds at most 5 tasks"):
        Config(stream="split", num_tasks=6, m=2)
    with pytest.raises(ConfigError, match=r"^num_tasks: a split of digits holds at most 3 tasks"):
        Config(stream="split", num_tasks=4, m=2, classes_per_task=3)
    assert Config(stream="split", num_tasks=5, m=2).num_tasks == 5


# ---------------------------------------------------------------------------------------------
# Strings from the command line


def test_strings_are_parsed_as_from_the_command_line():
    cfg = Config.from_dict(
        {
            "num_tasks": "5",
            "m": "3",
            "lr": "1e-3",
            "sparsity": "0.75",
            "download": "true",
            "widths": "64,32",
            "alpha_epochs": "null",
            "threads": "None",
            "data_root": "null",
            "seed": "42",
        }
    )
    assert (cfg.num_tasks, cfg.m, cfg.seed) == (5, 3, 42)
    assert all(type(v) is int for v in (cfg.num_tasks, cfg.m, cfg.seed))
    assert cfg.lr == 1e-3 and cfg.sparsity == 0.75 and type(cfg.lr) is float
    assert cfg.download is True
    assert cfg.widths == (64, 32)
    assert cfg.alpha_epochs is None and cfg.threads is None and cfg.data_root is None


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("True", True), ("yes", True), ("1", True), ("false", False), ("NO", False)]
)
def test_bool_strings(text, value):
    assert Config.from_dict({"download": text}).download is value


@pytest.mark.parametrize(("text", "value"), [("64,32", (64, 32)), ("64 32", (64, 32)), ("8, 4, 2", (8, 4, 2))])
def test_tuple_strings(text, value):
    assert Config.from_dict({"widths": text}).widths == value


def test_optional_ints_parse_values_and_null():
    cfg = Config.from_dict({"alpha_epochs": "4", "threads": "2"})
    assert (cfg.alpha_epochs, cfg.threads) == (4, 2)
    assert Config.from_dict({"alpha_epochs": None, "threads": "null"}).alpha_epochs is None


def test_whole_floats_are_accepted_as_ints_and_lists_as_tuples():
    cfg = Config.from_dict({"epochs": 3.0, "widths": [16, 8]})
    assert cfg.epochs == 3 and type(cfg.epochs) is int
    assert cfg.widths == (16, 8)


# ---------------------------------------------------------------------------------------------
# YAML


def test_from_yaml_reads_a_mapping_and_overrides_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_tasks: 4\nm: 2\nlr: 0.02\nwidths: [32, 16]\nalpha_epochs: null\n")
    cfg = Config.from_yaml(path)
    assert (cfg.num_tasks, cfg.m, cfg.lr, cfg.widths, cfg.alpha_epochs) == (4, 2, 0.02, (32, 16), None)
    over = Config.from_yaml(str(path), {"m": "3", "epochs": "2"})
    assert (over.num_tasks, over.m, over.epochs, over.lr) == (4, 3, 2, 0.02)


def test_from_yaml_of_an_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert Config.from_yaml(path) == Config()


def test_from_yaml_rejects_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("m: [1, 2\nnum_tasks: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        Config.from_yaml(path)
    assert str(path) in str(info.value)


def test_from_yaml_rejects_a_non_mapping_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- m\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping") as info:
        Config.from_yaml(path)
    assert str(path) in str(info.value)


def test_from_yaml_rejects_unknown_keys_and_bad_values_by_name(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_tasks: 4\nm: 2\nepoch: 3\n")
    with pytest.raises(ConfigError, match="'epoch'"):
        Config.from_yaml(path)
    path.write_text("num_tasks: 4\nm: 2\n")
    with pytest.raises(ConfigError, match=r"^sparsity: "):
        Config.from_yaml(path, {"sparsity": "1.5"})


# ---------------------------------------------------------------------------------------------
# Names and round trips


def test_run_name_lists_non_default_fields_then_the_seed():
    assert Config().run_name() == "seed=0"
    assert Config(seed=7).run_name() == "seed=7"
    assert Config(m=Config().m, lr=Config().lr).run_name() == "seed=0"  # defaults given explicitly
    cfg = Config(m=5, widths=(64, 32), seed=3, sparsity=0.75)
    # fields in declaration order: widths, sparsity, m
    assert cfg.run_name() == "widths=64-32~sparsity=0.75~m=5~seed=3"
    # where and how a run executes does not name it
    assert Config(seed=1, device="cpu", threads=2, data_root="/data").run_name() == "seed=1"


def test_to_dict_from_dict_round_trip():
    cfg = Config(
        stream="permuted",
        num_tasks=6,
        m=3,
        widths=(64, 32),
        sparsity=0.8,
        alpha_epochs=2,
        threads=1,
        data_root="/data",
        download=True,
        seed=11,
    )
    data = cfg.to_dict()
    assert [*data] == [f.name for f in FIELDS]
    assert data["widths"] == [64, 32]  # plain data, as YAML and JSON hold it
    assert Config.from_dict(data) == cfg
    assert Config.from_dict(yaml.safe_load(yaml.safe_dump(data))) == cfg
    assert cfg.diff() == {k: v for k, v in data.items() if v != Config().to_dict()[k]}
    assert cfg.replace(m=2) == Config.from_dict({**data, "m": 2})


def test_replace_validates():
    with pytest.raises(ConfigError, match=r"^sparsity: "):
        Config().replace(sparsity=1.0)


def test_every_field_has_one_line_of_help():
    # `impress run --help` shows it beside the flag (tests/test_cli.py)
    for f in FIELDS:
        doc = f.metadata.get("doc", "")
        assert doc and "\n" not in doc and len(doc) <= 110, f.name
