"""Provenance names the code a process imported, even after the checkout moves on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import impress.provenance as prov

ROOT = Path(__file__).resolve().parents[1]


def test_the_commit_is_this_checkouts_head():
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert prov.provenance()["git_commit"] == head


def test_the_commit_is_read_at_import_not_when_a_result_is_written(monkeypatch):
    before = prov.provenance()
    monkeypatch.setattr(prov, "_git", lambda *args: "0" * 40)  # HEAD moved (a commit landed mid-run)
    assert prov._code_version()[0] == "0" * 40
    assert prov.provenance()["git_commit"] == before["git_commit"]


def test_code_uploaded_without_git_names_the_commit_it_was_sent_with(monkeypatch):
    monkeypatch.setattr(prov, "_git", lambda *args: None)
    monkeypatch.setenv("IMPRESS_GIT_COMMIT", "a" * 40)
    monkeypatch.setenv("IMPRESS_GIT_DIRTY", "True")
    assert prov._code_version() == ("a" * 40, True)
    monkeypatch.delenv("IMPRESS_GIT_COMMIT")
    assert prov._code_version() == (None, None)
