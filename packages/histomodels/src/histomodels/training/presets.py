"""Named changes to the training defaults (what ``histomodels finetune`` starts from)."""

from __future__ import annotations

from typing import Any

#: What ``finetune`` changes from the training defaults (a config file or options win).
FINETUNE_DEFAULTS: dict[str, Any] = dict(
    model="efficientnet_lite0",
    weights="imagenet",
    freeze_epochs=1,
    backbone_lr_mult=0.3,
    lr=1e-3,
    weight_decay=0.01,
    patience=6,
)
