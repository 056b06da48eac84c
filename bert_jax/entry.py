"""What the command-line tools share: the --config and --workdir flags of `pretrain` and
`finetune`, quiet logging, checks of the directories a run will write, and one line plus exit
status 2 for a mistake the user can fix (130 for Ctrl-C, 75 for a checkpoint the storage would not
take), never a traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from bert_jax.errors import SAVE_FAILED_STATUS, SaveFailed, UserError
from bert_jax.paths import is_remote, resolved


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
    except UserError as err:  # a config file's own check, e.g. an unknown mode
        message = str(err)
    except flags.Error as err:
        message = _config_file_error(err) or str(err)
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


def _config_file_error(err: Exception) -> str | None:
    """config_flags reports an exception raised by a config file as a flag error (and re-raises
    it with the traceback as its text): the UserError's own message, or the traceback's last
    line."""
    texts = []
    while err is not None:
        texts.append(str(err))
        err = err.__cause__ or err.__context__
    for text in texts:
        if "Traceback (most recent call last)" not in text:
            continue
        last = [line.strip() for line in text.splitlines() if line.strip()][-1]
        user_error = re.match(r"(?:[\w.]+\.)?UserError: (.*)", last)
        return user_error.group(1) if user_error else f"--config could not be loaded: {last}"
    return None


def main(main_fn) -> None:
    """app.run(main_fn) with `parse_flags` and `user_errors` around main_fn."""

    def guarded(argv):
        with user_errors():
            return main_fn(argv)

    app.run(guarded, flags_parser=parse_flags)


def quiet_logging() -> None:
    """absl (and through it JAX and Orbax) at WARNING unless --verbosity was given: Orbax logs
    every file it writes at INFO, JAX the backends it could not start."""
    if "verbosity" not in flags.FLAGS or not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


# Filesystem errors a user fixes by choosing another path, freeing space or fixing permissions.
_USER_ERRNOS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG,
}  # fmt: skip


@contextlib.contextmanager
def user_errors():
    """Turns what the user can act on into one line on stderr: UserError and filesystem errors
    (a path that is a file, read-only, missing, a full disk) exit 2, Ctrl-C exits 130, a
    checkpoint that could not be saved exits 75."""
    try:
        yield
    except UserError as err:
        _fail(str(err), 2)
    except SaveFailed as err:
        _fail(str(err), SAVE_FAILED_STATUS)
    except OSError as err:
        if err.errno not in _USER_ERRNOS:
            raise
        path = err.filename if err.filename is not None else ""
        other = f" -> {err.filename2}" if err.filename2 else ""
        _fail(f"{err.strerror or err}: {path}{other}".rstrip(": "), 2)
    except KeyboardInterrupt:
        _fail("interrupted (Ctrl-C)", 130)


def _fail(message: str, status: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    if status in (130, SAVE_FAILED_STATUS):  # now, not after background threads (prefetch, saves)
        sys.stdout.flush()
        os._exit(status)
    sys.exit(status)


def check_output_dir(path, what: str) -> None:
    """Raises UserError unless `path` is a directory this process can write, or can create.

    `what` names the setting (e.g. "--workdir"). Remote paths (gs://) are left to the run."""
    if not path or is_remote(path):
        return
    path = resolved(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a directory: choose another path")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError(f"{what} {path}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise UserError(f"{what} {path} is read-only for this user: choose a writable path")
        raise UserError(
            f"{what} {path} cannot be created: {existing} is read-only for this user; choose a "
            "writable path"
        )


def check_output_file(path, what: str) -> None:
    """Raises UserError unless the file `path` can be written (its directory is created)."""
    if not path or is_remote(path):
        return
    full = resolved(path)
    if os.path.isdir(full):
        raise UserError(f"{what} {path} is a directory: give a file name")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise UserError(f"{what} {path} is read-only: choose a writable path")
    check_output_dir(os.path.dirname(full), f"{what} {path}: its directory")


def run(argv: list[str], train_and_evaluate, config_flag, workdir_flag, output_dirs=()) -> None:
    """Checks the flags and the directories the run writes, then calls
    `train_and_evaluate(config, workdir)`.

    `output_dirs`: config keys (e.g. "data.data_dir") of directories the run writes, checked
    with --workdir before anything starts. Ctrl-C stops the run after a save (one line, exit
    130); a second Ctrl-C aborts at once."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_logging()
    config, workdir = config_flag.value, workdir_flag.value
    check_output_dir(workdir, "--workdir")
    for key in output_dirs:
        value = config
        for part in key.split("."):
            value = value[part]
        check_output_dir(value, f"config.{key}")
    from bert_jax.training import distributed

    train_and_evaluate(config, workdir)
    if distributed.interrupted_by_user():
        sys.exit(130)
