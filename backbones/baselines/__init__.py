"""Comparison models of the papers' tables that timm does not ship: plain ``nn.Module``s in timm's registry.

* :mod:`.cvt` - CvT-13 (Wu et al. 2021), FFT paper Tables III and IV.
* :mod:`.conformer` - Conformer-B (Peng et al. 2021), MSF-CA Table VIII.
* :mod:`.hornet` - HorNet-B 7x7 (Rao et al. 2022), MSF-CA Table VIII.
* :mod:`.vig` - isotropic ViG-B (Han et al. 2022), MSF-CA Table VIII.

Each is written from its own paper with timm's layers where they are the standard ones; none downloads
weights (``pretrained=True`` is refused: load a local state dict through the task's ``pretrained``).
"""

from backbones.baselines import conformer, cvt, hornet, vig

__all__ = ["conformer", "cvt", "hornet", "vig"]
