"""timm's pretrained weights from the Hugging Face hub, failing fast when it cannot be reached.

``huggingface_hub`` retries a failed metadata request with backoff (5 retries, 1+2+4+8+8 s)
and timm asks for two or three files in turn, so an offline ``--weights imagenet`` took
66 s and 22 "Retrying in Ns" lines to fail. Before timm downloads, :func:`hub_problem`
asks the hub once (a HEAD to ``HF_ENDPOINT`` within ``HF_HUB_ETAG_TIMEOUT``, no retries,
with httpx and the environment's proxy settings); when it gets no HTTP answer at all, the
weights come from the local cache if they are there (:func:`cached_weights`) and are
otherwise one :class:`~histomodels.models.weights.WeightsError` at once. Any answer, even an
error status (a mirror's root need not serve a page), lets timm download as it always did.
``HF_HUB_OFFLINE=1`` skips the question (huggingface_hub then reads its cache only), and so
does a caller's own ``pretrained_cfg``/``pretrained_cfg_overlay``. ``hf-hub:`` names, whose
``config.json`` timm reads from the hub even for an untrained model, get the same question
(:func:`hf_hub_refusal`), and only when their files are not cached: without the hub they
are one error at once (it was 34 s of huggingface_hub's retries, then a line naming no
model); cached, huggingface_hub reads them from its cache as before, unless the cached
weights are not the first file timm asks for (:func:`weight_files`): then, without the hub,
timm is given that file (huggingface_hub retried the first for ~23 s). Nothing is retried
or patched here.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

#: What a user without the hub can do (the end of every could-not-download line).
OFFLINE_HINT = (
    "to work offline, pass the model's .safetensors/.pth as --weights FILE (weights=PATH in "
    "Python), or fill the Hugging Face cache once online and set HF_HUB_OFFLINE=1"
)


def hub_problem() -> str | None:
    """Why the hub cannot be reached now (no HTTP answer: refused, timed out, no route, a
    bad proxy), or None: one HEAD request to the endpoint within ``HF_HUB_ETAG_TIMEOUT``."""
    import httpx
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    try:
        httpx.head(endpoint, timeout=float(constants.HF_HUB_ETAG_TIMEOUT), follow_redirects=True)
    except (httpx.TransportError, httpx.InvalidURL) as exc:
        why = str(exc).splitlines()[0] if str(exc) else ""
        return f"the hub at {endpoint} cannot be reached ({type(exc).__name__}: {why})"
    return None


def hub_repo(name: str) -> str | None:
    """The hub repository timm downloads ``name``'s pretrained weights from, or None when
    they come from elsewhere (a URL), timm has no pretrained config for it, or ``name`` is
    an ``hf-hub:`` name."""
    import timm.models

    if name.startswith(("hf-hub:", "hf_hub:")):  # huggingface_hub reads its cache itself
        return None
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: timm.create_model says so
        return None
    return getattr(cfg, "hf_hub_id", None) or None


#: The weights file timm asks the hub for when a pretrained config names none
#: (``timm.models._hub.HF_WEIGHTS_NAME``).
DEFAULT_WEIGHTS = "pytorch_model.bin"


def weight_files(filename: str | None = None) -> list[str]:
    """The files timm's ``load_state_dict_from_hf`` asks the hub for, in its order, for a
    pretrained config's ``hf_hub_filename`` (default ``pytorch_model.bin``): a
    ``.safetensors`` name alone; else its safetensors alternative first
    (``model.safetensors`` for ``pytorch_model.bin``, ``open_clip_model.safetensors`` for
    ``open_clip_pytorch_model.bin``, ``X.safetensors`` for another ``X.bin``), then it."""
    name = filename or DEFAULT_WEIGHTS
    if name.endswith(".safetensors"):
        return [name]
    safe = {DEFAULT_WEIGHTS: "model.safetensors",
            "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}  # fmt: skip
    if name in safe:
        return [safe[name], name]
    return [name.removesuffix(".bin") + ".safetensors", name] if name.endswith(".bin") else [name]


def cached_weights(
    repo: str, revision: str | None = None, filename: str | None = None
) -> str | None:
    """The weights file timm would load for ``repo`` (``filename``: its pretrained config's
    ``hf_hub_filename``) from the local huggingface_hub cache: the first of
    :func:`weight_files` cached, or None."""
    path = _cached_weights(repo, revision, filename)
    return path[0] if path else None


def _cached_weights(
    repo: str, revision: str | None, filename: str | None
) -> tuple[str, bool] | None:
    """(:func:`cached_weights`, whether it is the first file timm asks for) or None."""
    from huggingface_hub import try_to_load_from_cache

    for i, name in enumerate(weight_files(filename)):
        path = try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(path, str):
            return path, i == 0
    return None


#: The most bytes a cached hf-hub ``config.json`` may hold (timm's are a few KB).
MAX_CONFIG_BYTES = 4 << 20


def _hub_filename(config: str, name: str) -> str | None:
    """The ``hf_hub_filename`` of a cached hf-hub ``config.json``'s pretrained config: its
    ``pretrained_cfg``, or the whole file for a legacy config without one (timm's
    ``_parse_model_cfg`` takes it so). The file comes from someone's hub repo: one that
    timm cannot parse (not JSON, arrays nested 100,000 deep, not an object, an
    ``architecture`` that is not text, a ``pretrained_cfg`` or ``model_args`` that is not
    an object) is a :class:`~histomodels.models.registry.ModelError` naming it (timm's
    RecursionError, TypeError or AttributeError was a traceback)."""
    from histocore.io import NotJSON, RefusedFile, loads_json, read_capped
    from histomodels.models.registry import ModelError

    def bad(why: str) -> ModelError:
        return ModelError(f"{config}: not a usable config.json for timm/{name} ({why})")

    try:
        raw = read_capped(config, MAX_CONFIG_BYTES)
    except OSError as exc:
        raise bad(f"cannot read it: {exc.strerror or exc}") from None
    except RefusedFile as exc:
        raise bad(str(exc)) from None
    # timm reads it as UTF-8 text with json.loads: a byte-order mark or UTF-16 was its
    # JSONDecodeError traceback (json.loads of bytes takes both)
    if raw.startswith(b"\xef\xbb\xbf"):
        raise bad("it starts with a byte-order mark, which timm cannot read")
    try:
        data = loads_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except NotJSON as exc:
        raise bad(str(exc)) from None
    if not isinstance(data, dict):
        raise bad(f"a JSON {type(data).__name__}, expected an object")
    if not isinstance(data.get("architecture"), str) or not data["architecture"]:
        raise bad("its 'architecture' is not a model name")
    pretrained = data.get("pretrained_cfg", data)
    for key, value in (("pretrained_cfg", pretrained), ("model_args", data.get("model_args", {}))):
        if not isinstance(value, dict):
            raise bad(f"its {key!r} is a JSON {type(value).__name__}, expected an object")
    filename = pretrained.get("hf_hub_filename")
    return filename if isinstance(filename, str) and filename else None


def hf_hub_refusal(name: str, pretrained: bool) -> dict[str, Any]:
    """For an ``hf-hub:REPO[@REVISION]`` model ``name``, whose ``config.json`` timm reads
    from the hub even untrained (and its weights when ``pretrained``): a WeightsError at
    once when they are not in the local huggingface_hub cache and the hub cannot be reached
    (:func:`hub_problem`) or ``HF_HUB_OFFLINE`` is set. huggingface_hub retried first (34 s
    offline, then a line naming no model). Cached files, or a hub that answers: ``{}``
    (huggingface_hub reads its cache, or downloads), except cached weights that are not the
    first file timm asks for (``pytorch_model.bin`` without ``model.safetensors``) when the
    hub cannot be reached: then the ``timm.create_model`` keyword arguments that load that
    file (huggingface_hub retried the first for ~23 s before timm fell back to it)."""
    from huggingface_hub import constants, try_to_load_from_cache

    from histomodels.models.weights import WeightsError

    repo, _, revision = name.partition(":")[2].partition("@")
    config = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    filename = _hub_filename(config, name) if isinstance(config, str) else None
    found = _cached_weights(repo, revision or None, filename) if pretrained else ("", True)
    if isinstance(config, str) and found is not None:
        if found[1] or constants.HF_HUB_OFFLINE:  # the cache serves timm's first request
            return {}
        problem = hub_problem()
        if problem is None:
            return {}
        log.warning("timm/%s: %s; using the cached weights %s", name, problem, found[0])
        return {"pretrained_cfg_overlay": {"file": found[0], "source": ""}}
    problem = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else hub_problem()
    if problem is None:
        return {}
    what = "config.json and weights are" if pretrained else "config.json is"
    raise WeightsError(
        f"timm/{name}: the model's {what} not in the Hugging Face cache and cannot be "
        f"downloaded: {problem}; fill the cache once online (HF_HUB_OFFLINE=1 then reads "
        "it), or give a folder holding them as timm/local-dir:FOLDER"
    )


def offline_overlay(name: str) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments for ``name``'s pretrained weights when the hub
    cannot be reached: ``{}`` when nothing needs to change (the hub answers, offline mode is
    on, or the weights do not come from the hub), a ``pretrained_cfg_overlay`` naming the
    cached file, else a WeightsError that says what to do."""
    from huggingface_hub import constants

    from histomodels.models.weights import WeightsError

    repo = hub_repo(name)
    if repo is None or constants.HF_HUB_OFFLINE:
        return {}
    problem = hub_problem()
    if problem is None:
        return {}
    import timm.models

    filename = getattr(timm.models.get_pretrained_cfg(name), "hf_hub_filename", None)
    local = cached_weights(repo, filename=filename)
    if local is None:
        raise WeightsError(
            f"timm/{name}: could not download the pretrained weights: {problem}; {OFFLINE_HINT}"
        )
    log.warning("timm/%s: %s; using the cached weights %s", name, problem, local)
    return {"pretrained_cfg_overlay": {"file": local, "source": ""}}
