"""timm's pretrained weights from the Hugging Face hub, failing fast when it cannot be reached.

``huggingface_hub`` retries a failed metadata request with backoff (5 retries, 1+2+4+8+8 s)
and timm asks for two or three files in turn, so an offline ``--weights imagenet`` took
66 s and 22 "Retrying in Ns" lines to fail. Before timm downloads, :func:`hub_problem`
asks the hub once (a HEAD to ``HF_ENDPOINT`` within ``HF_HUB_ETAG_TIMEOUT``, no retries,
through huggingface_hub's own session); when it gets no answer, the weights come from the
local cache if they are there (:func:`cached_weights`) and are otherwise one
:class:`~histomodels.models.weights.WeightsError` at once. ``HF_HUB_OFFLINE=1`` skips the
question (huggingface_hub then reads its cache only). Nothing is retried or patched here:
online, timm and huggingface_hub download as they always do.
"""

from __future__ import annotations

from typing import Any

#: What a user without the hub can do (the end of every could-not-download line).
OFFLINE_HINT = (
    "to work offline, pass --weights FILE (the model's .safetensors/.pth), or fill the "
    "Hugging Face cache once online and set HF_HUB_OFFLINE=1"
)


def hub_problem() -> str | None:
    """Why the hub cannot be reached now (no answer, or a server error), or None: one HEAD
    request to the endpoint, within ``HF_HUB_ETAG_TIMEOUT`` seconds."""
    from huggingface_hub import constants, get_session

    endpoint = constants.ENDPOINT
    try:
        response = get_session().head(
            endpoint, timeout=constants.HF_HUB_ETAG_TIMEOUT, follow_redirects=True
        )
    except Exception as exc:  # httpx's transport errors, a bad proxy, an invalid URL...
        why = str(exc).splitlines()[0] if str(exc) else ""
        return f"the hub at {endpoint} cannot be reached ({type(exc).__name__}: {why})"
    if response.status_code >= 500:
        return f"the hub at {endpoint} answered HTTP {response.status_code}"
    return None


def hub_repo(name: str) -> str | None:
    """The hub repository timm downloads ``name``'s pretrained weights from, or None when
    they come from elsewhere (a URL) or timm has no pretrained config for it."""
    import timm.models

    for prefix in ("hf-hub:", "hf_hub:"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag: timm.create_model says so
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def cached_weights(repo: str) -> str | None:
    """The weights file timm would load for ``repo`` from the local huggingface_hub cache
    (``model.safetensors``, else ``pytorch_model.bin``), or None."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def offline_overlay(name: str) -> dict[str, Any]:
    """``timm.create_model`` keyword arguments for ``name``'s pretrained weights when the hub
    cannot be reached: ``{}`` when nothing needs to change (the hub answers, offline mode is
    on, or the weights do not come from the hub), a ``pretrained_cfg_overlay`` naming the
    cached file, else a WeightsError that says what to do."""
    from huggingface_hub import is_offline_mode

    from histomodels.models.weights import WeightsError

    repo = hub_repo(name)
    if repo is None or is_offline_mode():
        return {}
    problem = hub_problem()
    if problem is None:
        return {}
    local = cached_weights(repo)
    if local is None or name.startswith(("hf-hub:", "hf_hub:")):  # those also need config.json
        raise WeightsError(
            f"timm/{name}: could not download the pretrained weights: {problem}; {OFFLINE_HINT}"
        )
    return {"pretrained_cfg_overlay": {"file": local, "source": ""}}
