"""The fine-tuning configs come with the installed package (bert_jax.finetuning_config), and each
configs/finetune/KIND.py --config file is that one definition, mode for mode."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from bert_jax.finetuning import tasks
from bert_jax.finetuning.config import MODES, finetuning_config

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("kind", tasks.KINDS)
def test_each_config_file_is_the_packaged_config(kind):
    spec = importlib.util.spec_from_file_location("config_file", REPO / "configs" / "finetune" /
                                                  f"{kind}.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for mode in MODES:
        assert module.get_config(mode).to_dict() == finetuning_config(kind, mode).to_dict()


def test_configs_are_reachable_from_a_script_outside_the_repository(tmp_path):
    """Only the package on the path, as after `pip install`: no configs/ to import."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "bert_jax").symlink_to(REPO / "bert_jax")
    script = (
        "import bert_jax\n"
        "try:\n    import configs\nexcept ImportError:\n    print('no configs/')\n"
        "c = bert_jax.finetuning_config('squad')\n"
        "t = bert_jax.finetuning_config('token_classification', 'test')\n"
        "print(c.task.kind, c.max_seq_length, c.doc_stride, c.learning_rate)\n"
        "print(t.max_seq_length, t.batch_size, t.learning_rate)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines() == ["no configs/", "squad 384 128 3e-05", "32 8 0.001"]


def test_an_unknown_mode_names_the_valid_ones():
    from bert_jax.errors import UserError

    with pytest.raises(UserError, match="configs/finetune/squad.py:default"):
        finetuning_config("squad", "phase1")
