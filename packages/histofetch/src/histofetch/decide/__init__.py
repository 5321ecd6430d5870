"""The H&E decision: colour scores, a small shipped CNN, caption stain evidence, one rule.

``colour.py`` (block-wise HSV + HED scores), ``classifier.py`` (numpy forward pass of the
CNN in ``histofetch/pretrained/``), ``stains.py`` (what the caption says each panel shows),
``rules.py`` (the one decision that combines them and names every rejection's reason).
"""
