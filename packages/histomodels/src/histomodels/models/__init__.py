"""Model zoo: every model takes normalised ``[N, 3, H, W]`` input and returns one logit.

Importing the package registers the built-in models (each zoo module's ``@register_model``
runs when it is imported), so ``create_model`` and ``list_models`` see all of them.
"""

from histomodels.models import cnn, ensemble, timm_zoo, torchvision_zoo
from histomodels.models.registry import create_model, list_models, register_model

__all__ = [
    "cnn",
    "create_model",
    "ensemble",
    "list_models",
    "register_model",
    "timm_zoo",
    "torchvision_zoo",
]
