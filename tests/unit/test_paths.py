"""bert_jax.paths, the one helper for paths a user gives: local ones resolved, URLs kept."""

from __future__ import annotations

import os

from etils import epath

from bert_jax import paths
from bert_jax.checkpoints import checkpointing


def test_local_paths_are_expanded_and_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert paths.resolved("~/run") == str(tmp_path / "run")
    assert paths.resolved("data/x") == str(tmp_path / "data" / "x")
    assert paths.as_path("~/run") == epath.Path(tmp_path / "run")
    assert not paths.is_remote("~/run") and not paths.is_remote(tmp_path)


def test_urls_are_kept_as_written():
    for url in ("gs://bucket/~/dir", "s3://b/x"):
        assert paths.is_remote(url) and paths.resolved(url) == url
        assert os.fspath(paths.as_path(url)) == url
    assert paths.resolved(epath.Path("gs://bucket/dir")) == "gs://bucket/dir"


def test_checkpoints_under_a_tilde_workdir_are_found(tmp_path, monkeypatch):
    """--workdir=~/run (no shell expands ~ after '='): the checkpoints are read from $HOME/run."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "run" / "checkpoints" / "5" / "state").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    found, _ = checkpointing.candidate_step_dirs("~/run")
    assert found == [epath.Path(tmp_path / "home" / "run" / "checkpoints" / "5")]
