"""Model zoo: every model takes normalised ``[N, 3, H, W]`` input and returns one logit."""

from histomodels.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
