"""Write the test-analysis files (tables and figures) again from a saved ``predictions.pt``/``.npz``.

``python -m tools.analysis runs/X/seed42/eval/test-best/predictions.pt --out /tmp/X_analysis`` writes what the
:class:`~lightning_modules.analysis.TestAnalysis` callback writes at test time.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from lightning_modules.analysis import write_analysis
from lightning_modules.predictions import find_predictions, load_class_names, load_predictions
from tools.common import run_main


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Regenerate the analysis files from a saved ``predictions.pt``/``.npz``."""
    parser = argparse.ArgumentParser(prog="python -m tools.analysis", description=main.__doc__)
    parser.add_argument("predictions", help="predictions.pt / .npz, or the run folder holding it")
    parser.add_argument("--out", default=None, help="output folder (default: the predictions file's folder)")
    parser.add_argument("--max-curve-classes", type=int, default=100)
    args = parser.parse_args(argv)
    file = find_predictions(args.predictions)
    logits, labels = load_predictions(file)
    out = args.out or file.parent
    names = load_class_names(file)
    files = write_analysis(logits, labels, out, class_names=names, max_curve_classes=args.max_curve_classes)
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return files


if __name__ == "__main__":
    raise SystemExit(run_main(main))
