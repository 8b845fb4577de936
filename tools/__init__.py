"""Evaluation and analysis tools: complexity, Grad-CAM, t-SNE, attention maps, Wilcoxon, paper tables.

Every tool is a module run with ``python -m tools.<name>``; see ``docs/analysis.md``. The shared pieces
(building a network from an experiment YAML or a timm name, loading checkpoints, reading images) live in
:mod:`tools.common`; per-class AUC/AP and the Wilcoxon test in :mod:`tools.wilcoxon`.
"""
