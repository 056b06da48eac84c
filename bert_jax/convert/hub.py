"""Hugging Face hub names as checkpoint paths: `bert-base-uncased`, `google-bert/bert-base-uncased`.

`resolve(path)` returns `path` itself when it exists (a local path or gs:// always wins) or does
not look like a hub id; otherwise the model's snapshot directory in the local Hugging Face cache
($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub), downloaded first through huggingface_hub
when the machine is online. Offline and not cached: a UserError naming the download command.
Legacy bare names (`bert-base-uncased`) are the hub's redirects to `google-bert/...`; the cache
is keyed by the name requested, so both folders are looked up. See docs/faq.md.
"""

from __future__ import annotations

import os
import pathlib
import re

from bert_jax.errors import UserError

LEGACY_ORG = "google-bert"  # where the hub redirects bare `bert-...` names
CONFIG, WEIGHTS = "config.json", ("model.safetensors", "pytorch_model.bin")
# What bert_jax reads from a model repository: never the TF/Flax/ONNX weights beside them.
SMALL_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.json",
               "special_tokens_map.json")  # fmt: skip
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"{_PART}/{_PART}")
_LEGACY_NAME = re.compile(r"bert-[a-z0-9-]+")
_TRUE = {"1", "on", "yes", "true"}


def repo_ids(name: str) -> list[str]:
    """The hub repo ids `name` may be cached under, the canonical one first; [] if `name` is not
    a plausible hub id (then it can only be a path)."""
    if _LEGACY_NAME.fullmatch(name):
        return [f"{LEGACY_ORG}/{name}", name]
    if not _REPO_ID.fullmatch(name) or "--" in name or ".." in name:
        return []
    org, base = name.split("/")
    return [name, base] if org == LEGACY_ORG and _LEGACY_NAME.fullmatch(base) else [name]


def cache_dir() -> pathlib.Path:
    """The hub cache, found as huggingface_hub finds it (read now, not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        home = os.path.join(xdg, "huggingface")
    return pathlib.Path(home).expanduser() / "hub"


def is_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in _TRUE


def cached_snapshot(repo_id: str, cache: pathlib.Path) -> pathlib.Path | None:
    """models--ORG--NAME/snapshots/<refs/main> when it holds config.json and weights."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    ref = folder / "refs" / "main"
    if ref.is_file():
        candidates = [folder / "snapshots" / ref.read_text().strip()]
    else:  # a cache filled by revision only: usable when there is exactly one snapshot
        snapshots = folder / "snapshots"
        candidates = list(snapshots.iterdir()) if snapshots.is_dir() else []
        candidates = candidates if len(candidates) == 1 else []
    for snapshot in candidates:
        if (snapshot / CONFIG).is_file() and any((snapshot / w).is_file() for w in WEIGHTS):
            return snapshot
    return None


def download_command(repo_id: str) -> str:
    return f"hf download {repo_id} {' '.join(SMALL_FILES[:3])} {WEIGHTS[0]}"


def resolve(path):
    """`path` unchanged when it exists or is no hub id; else the cached (or downloaded) model."""
    text = os.fspath(path)
    if "://" in text:
        return path
    if os.path.exists(os.path.expanduser(text)):
        return path
    ids = repo_ids(text)
    if not ids:
        return path
    cache = cache_dir()
    for repo_id in ids:
        snapshot = cached_snapshot(repo_id, cache)
        if snapshot is not None:
            return snapshot
    missing = f"{text} not found: no such local path, and the Hugging Face cache {cache} lacks it"
    if is_offline():
        raise UserError(
            f"{missing} (HF_HUB_OFFLINE is set); download it: {download_command(ids[0])}"
        )
    return _download(text, ids[0], cache, missing)


def _download(name: str, repo_id: str, cache: pathlib.Path, missing: str) -> pathlib.Path:
    try:
        from huggingface_hub import HfApi, snapshot_download
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
    except ImportError:
        raise UserError(
            f"{missing}; pip install huggingface_hub, then: {download_command(repo_id)}"
        ) from None
    try:
        files = set(HfApi().list_repo_files(repo_id))
    except GatedRepoError:
        raise UserError(
            f"{repo_id} is gated on the hub: accept its terms and `hf auth login`"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(f"{name} not found: no such local path, nor a model on the hub") from None
    except Exception as err:  # noqa: BLE001 (no network: requests/httpx raise many kinds)
        raise UserError(
            f"{missing}, and the hub is out of reach ({type(err).__name__}); download it where "
            f"there is a network: {download_command(repo_id)}"
        ) from None
    weights = next((w for w in WEIGHTS if w in files), None)
    if CONFIG not in files or weights is None:
        raise UserError(
            f"{repo_id} on the hub has no {CONFIG} with {' or '.join(WEIGHTS)}: not a "
            "Hugging Face BERT model bert_jax can read"
        )
    print(f"downloading {repo_id} from the Hugging Face hub into {cache}", flush=True)
    return pathlib.Path(
        snapshot_download(repo_id, allow_patterns=[*SMALL_FILES, weights], cache_dir=cache)
    )
