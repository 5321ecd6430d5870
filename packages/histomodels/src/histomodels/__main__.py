"""``python -m histomodels`` (also ``torchrun -m histomodels train ...``)."""

from histomodels.cli import app

app(prog_name="histomodels")
