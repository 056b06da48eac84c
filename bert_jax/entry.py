"""What `python -m bert_jax.pretrain` and `python -m bert_jax.finetune` share: the --config and
--workdir flags, quiet logging, and one line plus exit status 2 for a mistake the user can fix."""

from __future__ import annotations

import importlib
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax.errors import UserError


def define_config_and_workdir(workdir_help: str):
    """--config (a config file, locked so a mistyped override fails) and --workdir, both required.
    Call at import time of the entry module; returns the two flag holders."""
    config = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file.", lock_config=True
    )
    workdir = flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, but a bad flag (an unknown config key, a value of the wrong type, a
    missing config file) is one line on stderr and exit status 2 instead of a traceback."""
    try:
        remaining = flags.FLAGS(argv)
        # config_flags defers a config file's load error until the config is first used.
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None:
            config.keys()
        return remaining
    except OSError as err:
        reason = [line.strip() for line in str(err).splitlines() if line.strip()][-1]
        message = f"--config could not be loaded: {reason}"
    except flags.Error as err:
        message = str(err)
    except (AttributeError, KeyError) as err:  # ml_collections: an override of an unknown key
        text = str(err).replace("\\", "")
        key = re.search(r"[A-Za-z_][\w.]*", text)
        guess = re.search(r'Did you mean "([^"]+)"', text)
        message = (
            f"a --config override names {key.group() if key else text!r}, which the config does "
            "not have"
            + (f"; did you mean {guess.group(1)!r}?" if guess else "")
            + " (docs/configs.md lists every key)"
        )
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(main_fn) -> None:
    """app.run(main_fn) with `parse_flags`."""
    app.run(main_fn, flags_parser=parse_flags)


def run(argv: list[str], library: str, config_flag, workdir_flag) -> None:
    """Calls `library`.train_and_evaluate(config, workdir), imported only now so --help is fast."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    train_and_evaluate = importlib.import_module(library).train_and_evaluate
    try:
        train_and_evaluate(config_flag.value, workdir_flag.value)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
