"""Weights by name: the bundled model, CLIPSeg from the Hugging Face Hub, any ``hf-hub:`` repository, local files.

    from synseg_model import SynSeg, Segmenter
    SynSeg.from_checkpoint("clipseg-rd64-refined")          # a registered name (list_pretrained())
    Segmenter.from_checkpoint("hf-hub:ORG/REPO@REVISION")    # any repository in CLIPSeg or SynSeg format
    python -m synseg_model.pretrained list | download NAME | info NAME

``resolve_checkpoint`` turns every name into a local file in the project's checkpoint format. Hub files go
through ``huggingface_hub`` (its cache, ``HF_HOME``, ``HF_HUB_OFFLINE`` and tokens as usual). A repository in
the CLIPSeg layout is converted once; the result is cached in the project's format under
``$SYNSEG_MODEL_CACHE`` (default ``~/.cache/synseg/models``), keyed by repository, commit and converter
version, so later starts skip the conversion. Nothing is unpickled: safetensors, or
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..state_dicts import CheckpointError, read_state_dict

# The checkpoint formats (synseg_model.weights, which imports torch) load where a file is read or written, so
# that the names, and the node's check of a name, come without torch.

log = logging.getLogger(__name__)

HF_PREFIX = "hf-hub:"
DEFAULT_MODEL = "synseg-shapes"
CACHE_ENV = "SYNSEG_MODEL_CACHE"
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
HUB_PROBE_TIMEOUT_S = 3.0
HUB_PROBE_TTL_S = 60.0
_last_probe: tuple[float, str | None] | None = None     # (monotonic time, why the Hub was unreachable or None)
_BUNDLED = Path(__file__).resolve().parents[1] / "weights"


@dataclass(frozen=True)
class PretrainedModel:
    """A registered name: where its weights come from and what is known about them before any download.

    Attributes:
        name: the name users give (``list_pretrained()``).
        repo: Hugging Face repository, or None for a file bundled with the package.
        revision: the pinned commit of ``repo``.
        card: the model card (``summary`` is its one-line form).
    """

    name: str
    repo: str | None
    revision: str | None
    card: dict[str, Any] = field(default_factory=dict)


def _clipseg(name: str, repo: str, revision: str, what: str) -> PretrainedModel:
    return PretrainedModel(name, repo, revision, {
        "name": name,
        "summary": f"{what}, trained on PhraseCut; SynSeg's initialisation; not MCCL-trained",
        "what": f"{what}: CLIPSeg (Lüddecke and Ecker, CVPR 2022, arXiv 2112.10003) converted to SynSeg: "
                "open_clip CLIP ViT-B/16 (OpenAI weights, frozen) and the CLIPSeg decoder as SynSeg's decoder; "
                "the FSS projector (training only) at a fixed-seed initialisation",
        "source": f"{HF_PREFIX}{repo}@{revision}",
        "licence": "Apache-2.0 (the repository's); CLIP ViT-B/16 weights: OpenAI's CLIP licence (MIT)",
        "training_data": "decoder: PhraseCut extended with CLIPSeg's negative and visual prompts; "
                         "CLIP: OpenAI's 400M image-text pairs",
        "metrics": "none measured by this project (see the CLIPSeg paper)",
        "download": "about 603 MB (one weights file, float32), converted once to a file of the same size",
    })


REGISTRY: dict[str, PretrainedModel] = {m.name: m for m in (
    PretrainedModel(DEFAULT_MODEL, None, None, {
        "name": DEFAULT_MODEL,
        "summary": "SynSeg trained in the synthetic shapes world; knows its 11 classes only (offline default)",
        "source": "bundled: synseg_model/weights/synseg-shapes.safetensors",
        "licence": "Apache-2.0 (this project)",
        "training_data": "the project's synthetic shapes world (docs/shapes.md)",
    }),
    # Revisions: the newest commit of each repository's main branch found (search, 2026), except rd64-refined,
    # pinned at its last commit whose full hash could be confirmed (it holds pytorch_model.bin only).
    _clipseg("clipseg-rd64-refined", "CIDAS/clipseg-rd64-refined", "583b388deb98a04feb3e1f816dcdb8f3062ee205",
             "CLIPSeg rd64-refined (decoder width 64, refined upsampler)"),
    _clipseg("clipseg-rd64", "CIDAS/clipseg-rd64", "d5742706ddaa1cf7493b9785958bb16da104074f",
             "CLIPSeg rd64 (decoder width 64, one transposed convolution)"),
    _clipseg("clipseg-rd16", "CIDAS/clipseg-rd16", "a4d02d29b45c0ee3d40ad6003d79c8c5884540b3",
             "CLIPSeg rd16 (decoder width 16, one transposed convolution)"),
)}


def list_pretrained() -> list[str]:
    """The registered names (the first is the default model)."""
    return list(REGISTRY)


def default_checkpoint_path() -> Path:
    """The offline default model shipped with the package (trained in the shapes world)."""
    return _BUNDLED / f"{DEFAULT_MODEL}.safetensors"


def converted_cache_dir() -> Path:
    """``$SYNSEG_MODEL_CACHE`` if set, else ``~/.cache/synseg/models``: CLIPSeg repositories, converted."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "synseg" / "models")


def get_model_card(name_or_path: str | Path | None = None) -> dict[str, Any]:
    """The model card of a model: for a registered name not downloaded yet, what is known without downloading;
    else the card of its file, with what the name adds (source, licence...)."""
    entry = REGISTRY.get(str(name_or_path or DEFAULT_MODEL))
    if entry is not None and entry.repo is not None and not _usable(_converted_path(entry.repo, entry.revision),
                                                                    entry.name):
        return dict(entry.card)
    from ..weights import read_checkpoint

    path, extra = resolve_checkpoint(name_or_path)
    return {**read_checkpoint(path, tensors=False)[1], **extra}


def cache_status(name: str) -> str:
    """Where a registered model stands: bundled, converted (ready offline), downloaded, or not cached."""
    from huggingface_hub import try_to_load_from_cache

    entry = REGISTRY[name]
    if entry.repo is None:
        return "bundled"
    if _usable(_converted_path(entry.repo, entry.revision), name):
        return "converted"
    if any(isinstance(try_to_load_from_cache(entry.repo, f, revision=entry.revision), str) for f in WEIGHTS_FILES):
        return "downloaded"
    return "not cached"


def card_summary(card: dict[str, Any]) -> str:
    """A model card in one line: its ``summary``, else its name and the first sentence of its description."""
    if card.get("summary"):
        text = str(card["summary"])
    else:
        text = str(card.get("description") or "no summary in the model card").split(". ")[0]
    name = card.get("name")
    return text if not name or text.startswith(str(name)) else f"{name}: {text}"


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/REPO[@REVISION]`` -> (``ORG/REPO``, revision or None)."""
    repo, _, revision = name[len(HF_PREFIX):].partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise CheckpointError(f"{name}: expected hf-hub:ORG/REPO or hf-hub:ORG/REPO@REVISION")
    return repo, revision or None


def resolve_checkpoint(name_or_path: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """A local file in the project's checkpoint format for a name, and card entries the file does not carry.

    Args:
        name_or_path: a registered name (``list_pretrained()``; None: the default model),
            ``hf-hub:ORG/REPO[@REVISION]``, or a path to a project checkpoint.
    Raises:
        CheckpointError: unknown name (listing the known ones), offline and not cached (naming the model,
            repository and cache folder), a corrupt cached file that cannot be fetched again, a bad file.
    """
    name = str(name_or_path if name_or_path is not None else DEFAULT_MODEL)
    if name in REGISTRY:
        entry = REGISTRY[name]
        if entry.repo is None:
            return default_checkpoint_path(), dict(entry.card)
        return _from_hub(entry.repo, entry.revision, name, dict(entry.card))
    if name.startswith(HF_PREFIX):
        repo, revision = parse_hub_name(name)
        return _from_hub(repo, revision, name, {})
    path = Path(name).expanduser()
    if path.is_file():
        return path, {}
    if path.suffix or os.sep in name:
        raise CheckpointError(f"{path}: file not found")
    raise CheckpointError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}; or hf-hub:ORG/REPO[@REVISION], "
                          "or the path of a .safetensors checkpoint")


# --- the Hugging Face Hub ---------------------------------------------------------------------------------

def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _unreachable_hub() -> str | None:
    """Why the Hub cannot be asked now (HF_HUB_OFFLINE=1, or no connection to its endpoint), or None.

    Without a network huggingface_hub retries each request with back-off, 40 s and more before it falls back to
    the cache; one connection attempt answers in at most ``HUB_PROBE_TIMEOUT_S``. The answer is kept for
    ``HUB_PROBE_TTL_S``, so a node configured again later asks again.
    """
    from huggingface_hub import constants

    global _last_probe
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1"
    now = time.monotonic()
    if _last_probe is not None and now - _last_probe[0] < HUB_PROBE_TTL_S:
        return _last_probe[1]
    endpoint = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or (443 if endpoint.scheme == "https" else 80)),
                                 timeout=HUB_PROBE_TIMEOUT_S).close()
        why = None
    except OSError as exc:
        why = f"no connection to the Hub ({endpoint.hostname}: {exc.strerror or exc})"
    _last_probe = (now, why)
    return why


def _offline() -> bool:
    return _unreachable_hub() is not None


def _not_cached(label: str, repo: str, revision: str | None, reason: str) -> CheckpointError:
    what = label if label.startswith(HF_PREFIX) else f"{label} (hf-hub:{repo}@{revision or 'main'})"
    why = _unreachable_hub() or f"no connection to the Hub: {reason}"
    return CheckpointError(
        f"{what} is not in the Hugging Face cache {_hub_cache()} and cannot be downloaded ({why}). On a machine "
        f"with a network, run `HF_HOME=/some/folder python -m synseg_model.pretrained download {label}`, copy "
        "that folder here and set HF_HOME to it.")


def _hub_file(repo: str, filename: str, revision: str | None, label: str, force: bool = False) -> Path | None:
    """The file from the Hugging Face cache, downloaded first when needed (with a progress bar); None when the
    repository has no such file."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo, filename, revision=revision, force_download=force,
                                    local_files_only=_offline()))
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError as exc:
        raise _not_cached(label, repo, revision, str(exc).split(".")[0]) from exc
    except GatedRepoError as exc:
        raise CheckpointError(f"{label}: hf-hub:{repo} is gated: accept its terms on huggingface.co and log in "
                              "(`hf auth login`, or HF_TOKEN)") from exc
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise CheckpointError(f"{label}: no repository hf-hub:{repo} with revision {revision or 'main'} "
                              "(private repositories need a token: `hf auth login`, or HF_TOKEN)") from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:  # network failures, a failed forced download
        raise CheckpointError(f"{label}: cannot download {filename} from hf-hub:{repo}: {exc}") from exc


def _is_commit(revision: str | None) -> bool:
    return bool(revision and re.fullmatch(r"[0-9a-f]{40}", revision))


def _weights_file(repo: str, revision: str | None, label: str) -> Path:
    """The repository's weights file, downloaded when needed.

    Offline or at a pinned commit, the cache answers first: whichever format was downloaded is the one (a
    branch such as main is asked of the Hub, so that it follows new commits).
    """
    from huggingface_hub import try_to_load_from_cache

    if _offline() or _is_commit(revision):
        for filename in WEIGHTS_FILES:
            cached = try_to_load_from_cache(repo, filename, revision=revision)
            if isinstance(cached, str):
                return Path(cached)
    for filename in WEIGHTS_FILES:
        path = _hub_file(repo, filename, revision, label)
        if path is not None:
            return path
    raise CheckpointError(f"{label}: hf-hub:{repo} holds neither {' nor '.join(WEIGHTS_FILES)}")


def _refetch(repo: str, path: Path, label: str, error: CheckpointError) -> Path:
    """A cached hub file that cannot be read: fetched again when online, else a clear error."""
    commit = path.parent.name  # the snapshot folder is named by the commit
    why = _unreachable_hub()
    if why:
        raise CheckpointError(
            f"{label}: the cached file {path} is corrupt ({error}); {why}, so it cannot be fetched "
            f"again: unset HF_HUB_OFFLINE and run `python -m synseg_model.pretrained download {label}`, or copy "
            f"a good cache (folder {_hub_cache()}) from another machine") from error
    log.warning("%s: cached %s is corrupt (%s): downloading it again", label, path.name, error)
    return _hub_file(repo, path.name, commit, label, force=True)


def _is_synseg_file(path: Path) -> bool:
    """Whether a safetensors file is in the project's format (its header says so); CheckpointError if unreadable."""
    from safetensors import safe_open

    from ..weights import FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception as exc:  # truncated file, bad header
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc


def _read_hub_weights(path: Path) -> dict | None:
    """None when ``path`` is a project checkpoint, else its (CLIPSeg) state dict; CheckpointError if unreadable."""
    if path.suffix == ".safetensors" and _is_synseg_file(path):
        return None
    return read_state_dict(path)


def _converted_path(repo: str, commit: str) -> Path:
    from ..weights import HF_CONVERTER_VERSION

    return converted_cache_dir() / repo.replace("/", "--") / commit / f"clipseg-v{HF_CONVERTER_VERSION}.safetensors"


def _usable(converted: Path, label: str) -> bool:
    """Whether a converted model is in the cache and readable (an unreadable one is made again)."""
    if not converted.is_file():
        return False
    try:
        return _is_synseg_file(converted)
    except CheckpointError as exc:
        log.warning("%s: the converted model %s is unreadable (%s): converting again", label, converted, exc)
        return False


def _from_hub(repo: str, revision: str | None, label: str, card: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """A hub repository as a project checkpoint: as is when in the project's format, else converted once."""
    if _is_commit(revision) and _usable(_converted_path(repo, revision), label):
        return _converted_path(repo, revision), card  # a pinned commit converted before: the hub is not asked
    weights = _weights_file(repo, revision, label)
    commit = weights.parent.name  # the snapshot folder is named by the commit
    converted = _converted_path(repo, commit)
    if _usable(converted, label):
        return converted, card
    try:
        state = _read_hub_weights(weights)
    except CheckpointError as exc:
        weights = _refetch(repo, weights, label, exc)
        state = _read_hub_weights(weights)
    source = {"source": f"{HF_PREFIX}{repo}@{commit}"}
    if state is None:
        return weights, {**card, **source}
    config_file = _hub_file(repo, "config.json", commit, label)
    if config_file is None:
        raise CheckpointError(f"{label}: hf-hub:{repo} is neither a SynSeg checkpoint nor in the CLIPSeg layout "
                              "(no config.json)")
    log.info("%s: converting hf-hub:%s@%s from the CLIPSeg layout (once; cached as %s)", label, repo, commit,
             converted)
    from ..weights import HF_CONVERTER_VERSION, hf_clipseg_checkpoint, write_checkpoint

    config, tensors = hf_clipseg_checkpoint(state, config_file)
    card = {"name": label, "summary": f"CLIPSeg weights from {HF_PREFIX}{repo}@{commit[:7]}, converted to SynSeg; "
                                      "not MCCL-trained", **card, **source, "converter_version": HF_CONVERTER_VERSION}
    write_checkpoint(converted, config, tensors, card, includes_clip=True)
    return converted, card
