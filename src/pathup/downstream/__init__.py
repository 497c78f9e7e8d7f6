"""Downstream evaluation (paper 4.7, Table 6): lesion-subtype classifiers trained on real images
only, with standard random augmentation, and with synthetic images from ``pathup generate``.

* ``vit``: a timm Vision Transformer on tiles resized to its input;
* ``abmil``: gated-attention multiple-instance learning (Ilse et al. 2018) over cached patch
  embeddings, one bag per source image;
* ``arms``: the three training arms and the 'Rand.' augmentation;
* ``data`` (real tiles, patient splits) and ``synthetic`` (a ``pathup generate`` folder): the inputs;
* ``experiment``: the state shared by the runs of one call; ``run``: the runs (classifiers x arms x
  seeds, each resumable) and their reports.

Import the submodules directly (they need torch and timm).
"""
