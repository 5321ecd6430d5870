"""histomodels: PyTorch models for 96x96 lymph-node H&E patches (PatchCamelyon)."""

__version__ = "0.1.0"
