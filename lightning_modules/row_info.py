"""Where a run belongs in a paper: the ``row:`` block of an experiment file, and what loggers get from it.

Every row file under ``experiments/<paper>/`` declares its place once::

    row:
      paper: acanet                 # tools/published/acanet.csv
      tables: ["2", "3"]            # the CSV's `table` ids, in the CSV's order
      label: "ResNet 18 + CE Loss"  # the CSV's `row` of the experiment's first line
      dataset: cub
      variant: no_accb              # optional short tag (ablation name), only where it says something
      published: {acc1: 52.50}      # every numeric figure the CSV lists for this experiment

The figures themselves live in ``tools/published/<paper>.csv`` (``tools.report`` reads them there, with
their notes and flags); the blocks are generated from it (``python -m scripts.row_blocks``) and
``tests/test_row_metadata.py`` checks both agree. Where one experiment appears in several tables with
different roundings of one figure (TokenFusion's 87.77 in Table 1, 87.8 in Table 2), ``published`` holds
the first table's. A row the CSV does not list still declares paper, tables, label and dataset, with
``published: {}``. Files that are not a paper's row (``quickstart.yaml``, ``resnet50_imagenet_fast.yaml``,
``fast/*``) have no block (``--row`` stays ``null``).

The CLI parses the block as ``--row`` (a typed argument: ``--print_config`` shows it, a mistyped key is an
error) and hands it to every logger (:func:`wandb_metadata`; ``config.yaml`` and CSV/TensorBoard
hyper-parameters carry it as part of the config).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RowInfo:
    """A run's place in its paper (see the module docstring).

    Args:
        paper: the paper's short name (``tools/published/<paper>.csv``).
        tables: table ids exactly as in the CSV's ``table`` column (first = the W&B group).
        label: the row's label in the paper's table.
        dataset: the dataset's short name.
        variant: optional short tag for an ablation or recipe variant.
        published: the paper's figure for each metric (``acc1``: percent, as the paper prints it).
    """

    paper: str
    tables: list[str] = field(default_factory=list)
    label: str = ""
    dataset: str = ""
    variant: str | None = None
    published: dict[str, float] = field(default_factory=dict)


def as_dict(row: Any) -> dict[str, Any] | None:
    """The block as a plain dict (from a Namespace, a dataclass or a dict); ``None`` when absent."""
    if row is None:
        return None
    if hasattr(row, "as_dict"):
        row = row.as_dict()
    elif not isinstance(row, dict):
        row = asdict(row)
    return {k: v for k, v in dict(row).items() if v is not None}


def wandb_group(row: dict[str, Any]) -> str:
    """``<paper>/table<first table>`` (``acanet/table2``); ``<paper>`` when the row is in no table."""
    tables = row.get("tables") or []
    return f"{row['paper']}/table{tables[0]}" if tables else str(row["paper"])


def loss_name(model_cfg: Any) -> str:
    """The loss class of ``model.init_args.loss`` (``MCLoss``); the task's default is ``CrossEntropyLoss``."""
    args = (model_cfg or {}).get("init_args") or {}
    loss = args.get("loss")
    class_path = loss.get("class_path") if loss is not None and hasattr(loss, "get") else loss
    return str(class_path).rsplit(".", 1)[-1] if class_path else "CrossEntropyLoss"


def wandb_metadata(row: Any, model_cfg: Any = None) -> dict[str, Any]:
    """``wandb.init`` extras for a row: ``group``, ``tags`` and ``config`` (``paper.<metric>`` + ``row``).

    Tags: the paper, the dataset, ``table<N>`` for each table, the loss class and the variant. Empty when
    the run declares no row (then W&B gets only what the user configured).
    """
    info = as_dict(row)
    if not info or not info.get("paper"):
        return {}
    tags = [info["paper"], info.get("dataset"), *(f"table{t}" for t in info.get("tables") or [])]
    tags += [loss_name(model_cfg), info.get("variant")]
    tags = [str(t)[:64] for t in dict.fromkeys(tags) if t]  # W&B's tag length limit
    config = {"paper": dict(info.get("published") or {}), "row": info}
    return {"group": wandb_group(info), "tags": tags, "config": config}
