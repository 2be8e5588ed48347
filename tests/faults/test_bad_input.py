"""Study files Optuna cannot sample as written, and impossible values reached only through a study's
grid or search: each is refused before anything runs, by a message naming the field and what was
expected. (Unknown keys, wrong types and the other ranges: tests/test_config.py, tests/test_study.py.)
And files that cannot be read at all, given as a run config or a study file."""

from __future__ import annotations

import os
import warnings

import pytest

from impress.cli import main
from impress.study import Study, StudyError

BASE = {"name": "bad", "base": {"num_tasks": 10}}  # m defaults to 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"search": {"granularity": []}}, "search.granularity.choices: expected a non-empty list, got []"),
        ({"search": {"granularity": {"type": "categorical", "choices": []}}}, "search.granularity.choices: expected"),
        (
            {"search": {"widths": [[32, 32], [64, 64]]}},
            "search.widths.choices: Optuna samples numbers, strings, booleans or null, got [32, 32]; "
            "write a list as a string (e.g. '32,32')",
        ),
        (
            {"search": {"m": {"type": "int", "low": 1, "high": 4, "step": 2}}},
            "search.m.step: 2 does not divide high - low (4 - 1), so 4 could never be sampled; use high: 3",
        ),
        ({"search": {"m": {"type": "int", "low": 1, "high": 4, "step": 1.5}}}, "search.m.step: an int parameter"),
        (
            {"search": {"sparsity": {"type": "float", "low": 0.1, "high": 0.6, "step": 0.2}}},
            "search.sparsity.step: 0.2 does not divide high - low (0.6 - 0.1), so 0.6 could never be sampled; "
            "use high: 0.5",
        ),
        (
            {"search": {"lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True, "step": 0.001}}},
            "search.lr.step: must be positive and cannot be combined with log",
        ),
        (
            {"search": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 0}}},
            "search.lr.step: must be positive",
        ),
        # density 0 (every weight removed) and more impressions than the stream has tasks, from a grid
        ({"grid": {"sparsity": [0.5, 1.0]}}, "grid point (sparsity=1.0): sparsity: 1.0 is outside the allowed range"),
        (
            {"grid": {"m": [2, 12]}},
            "grid point (m=12): m: heterogeneous impressions are the first m tasks' masks, so m (12) "
            "must not exceed num_tasks (10)",
        ),
        (
            {"cases": [{"method": "supsup"}, {"method": "impresslearn", "m": 11}]},
            "grid point (method=impresslearn, m=11): m: heterogeneous impressions",
        ),
        # ... and from a search: the upper bound is checked, not only the first value
        ({"search": {"m": {"type": "int", "low": 1, "high": 12}}}, "search.m: 12 would make an invalid config: m: "),
        ({"search": {"sparsity": [0.0, 1.0]}}, "search.sparsity: 1.0 would make an invalid config: sparsity: 1.0"),
    ],
    ids=lambda v: None if isinstance(v, str) else str(list(v.values())[0])[:40],
)
def test_unsampleable_or_impossible_studies_name_the_field(fields, message):
    with pytest.raises(StudyError) as info:
        Study.from_dict({**BASE, **fields})
    assert message in str(info.value)


def test_an_accepted_search_space_is_sampled_by_optuna_as_written():
    """What validation lets through, Optuna samples without changing it (it warns when it would)."""
    study = Study.from_dict(
        {
            **BASE,
            "search": {
                "m": {"type": "int", "low": 1, "high": 4, "step": 3},
                "sparsity": {"type": "float", "low": 0.1, "high": 0.7, "step": 0.2},
                "alpha_lr": {"type": "float", "low": 0.001, "high": 0.1, "log": True},
                "widths": ["32,32", "64"],
            },
        }
    )
    from impress.tuner import _searcher

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        searcher = _searcher(study)
    space = searcher._space
    assert (space["m"].low, space["m"].high, space["m"].step) == (1, 4, 3)
    assert space["sparsity"].high == pytest.approx(0.7)
    for value in space["widths"].choices:  # a list written as a string is a valid config value
        assert study.config(widths=value, m=1).widths in ((32, 32), (64,))


# what makes each file unreadable as YAML text, and what the error then says about it
UNREADABLE = {
    "binary": (
        lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
        "not UTF-8 text (byte 0x89 at offset 0)",
    ),
    "latin-1": (lambda p: p.write_bytes("num_tasks: 4  # \u00e9".encode("latin-1")), "not UTF-8 text (byte 0xe9"),
    "NUL bytes": (lambda p: p.write_bytes(b"num_tasks: 4\n\0\0\0"), "not a text file (it holds NUL bytes)"),
    "folder": (lambda p: p.mkdir(), "is a folder, not a"),
    "missing": (lambda p: None, "no such"),
    "no permission": (lambda p: p.write_text("num_tasks: 4\n") or p.chmod(0), "cannot read the"),
}


@pytest.mark.parametrize("command", [["run"], ["study", "run"]], ids=["run", "study run"])
@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_file_is_one_line_naming_it(kind, command, tmp_path, capsys):
    if kind == "no permission" and os.geteuid() == 0:
        pytest.skip("root reads a file without permissions")
    make, says = UNREADABLE[kind]
    path = tmp_path / "input.yaml"
    make(path)
    out = ["--out", str(tmp_path / "runs")] if command == ["run"] else ["--storage", str(tmp_path / "studies")]
    assert main([*command, str(path), *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {says}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if kind == "missing" else ["input.yaml"])
