"""``_base_`` chains of experiment files (lightning_modules/config_compose.py): pure YAML, no CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_modules.config_compose import (
    ConfigComposeError,
    compose,
    config_chain,
    expand_config_args,
    experiment_rows,
    merge,
)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _write(
        tmp_path / "p" / "_recipe.yaml", "trainer: {max_epochs: 600}\ndata: {init_args: {batch_size: 32}}\n"
    )
    _write(tmp_path / "p" / "_cub.yaml", "data: {class_path: CUB, init_args: {root: data/cub}}\n")
    _write(
        tmp_path / "p" / "row_cub.yaml",
        "_base_: [_cub.yaml, _recipe.yaml]\nmodel: {init_args: {backbone: acanet18}}\n",
    )
    _write(tmp_path / "alias.yaml", "_base_: p/row_cub.yaml\n")
    return tmp_path


def test_chain_lists_bases_first_relative_to_each_file(tree: Path):
    chain = config_chain(tree / "alias.yaml")
    assert [p.name for p in chain] == ["_cub.yaml", "_recipe.yaml", "row_cub.yaml", "alias.yaml"]
    assert chain[-1] == tree / "alias.yaml"  # the row keeps its spelling: the run name comes from it


def test_compose_merges_in_order_and_drops_base_key(tree: Path):
    assert compose(tree / "p" / "row_cub.yaml") == {
        "trainer": {"max_epochs": 600},
        "data": {"class_path": "CUB", "init_args": {"root": "data/cub", "batch_size": 32}},
        "model": {"init_args": {"backbone": "acanet18"}},
    }


def test_expand_config_args_puts_bases_before_each_config(tree: Path):
    row = str(tree / "p" / "row_cub.yaml")
    out = expand_config_args(["fit", f"--config={row}", "--trainer.max_epochs", "1"])
    assert out[0] == "fit" and out[-2:] == ["--trainer.max_epochs", "1"]
    configs = [out[i + 1] for i, a in enumerate(out) if a == "--config"]
    assert [Path(c).name for c in configs] == ["_cub.yaml", "_recipe.yaml", "row_cub.yaml"]
    assert configs[-1] == row
    # a value that is not a file (a YAML string, a typo) is left for jsonargparse to judge
    assert expand_config_args(["--config", "{a: 1}"]) == ["--config", "{a: 1}"]


def test_missing_base_is_one_error_naming_both_files(tree: Path):
    bad = _write(tree / "p" / "bad.yaml", "_base_: [_nope.yaml]\n")
    with pytest.raises(ConfigComposeError, match=r"bad\.yaml.*_nope\.yaml") as err:
        config_chain(bad)
    assert err.value.user_error


def test_cycle_is_refused(tree: Path):
    _write(tree / "a.yaml", "_base_: b.yaml\n")
    _write(tree / "b.yaml", "_base_: [a.yaml]\n")
    with pytest.raises(ConfigComposeError, match="cycle"):
        config_chain(tree / "a.yaml")


def test_bad_base_value_and_non_mapping_file_are_refused(tree: Path):
    _write(tree / "n.yaml", "_base_: 3\n")
    with pytest.raises(ConfigComposeError, match="file name or a list"):
        config_chain(tree / "n.yaml")
    _write(tree / "l.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigComposeError, match="mapping"):
        compose(tree / "l.yaml")


def test_merge_follows_jsonargparse():
    old = {
        "model": {
            "class_path": "T",
            "init_args": {
                "backbone_kwargs": {"img_size": 256, "drop_rate": 0.1},
                "optimizer": {"class_path": "SGD", "init_args": {"lr": 0.1, "momentum": 0.9}},
                "loss": {"class_path": "Focal", "init_args": {"gamma": 2.0}},
                "metrics": ["acc1", "acc5"],
            },
        }
    }
    new = merge(
        old,
        {
            "model": {
                "init_args": {
                    "backbone_kwargs": {"drop_rate": 0.0},  # a plain dict value: replaced whole
                    "optimizer": {"init_args": {"lr": 0.5}},  # the same class: init_args merge
                    "loss": {"class_path": "MC", "init_args": {"alpha": 1.5}},  # another class: replaced
                    "metrics": ["acc1"],  # lists replace
                }
            }
        },
    )
    args = new["model"]["init_args"]
    assert args["backbone_kwargs"] == {"drop_rate": 0.0}
    assert args["optimizer"] == {"class_path": "SGD", "init_args": {"lr": 0.5, "momentum": 0.9}}
    assert args["loss"] == {"class_path": "MC", "init_args": {"alpha": 1.5}}
    assert args["metrics"] == ["acc1"]
    assert old["model"]["init_args"]["metrics"] == ["acc1", "acc5"]  # inputs untouched


def test_experiment_rows_skip_base_and_fragments_and_refuse_duplicate_names(tree: Path):
    _write(tree / "base.yaml", "seed_everything: 1\n")
    assert sorted(experiment_rows(tree)) == ["alias", "row_cub"]
    _write(tree / "q" / "row_cub.yaml", "model: {}\n")
    with pytest.raises(ConfigComposeError, match="run name 'row_cub'"):
        experiment_rows(tree)
