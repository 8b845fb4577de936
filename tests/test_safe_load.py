"""A checkpoint that pickles code is refused everywhere a checkpoint is read, and its code never runs.

The crafted file's ``__reduce__`` would create a marker file when unpickled by a full ``torch.load``; every
reader must refuse the file with a user error (one line through the CLI, exit 2) and leave no marker.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import main as cli
from backbones.pretrained import PretrainedLoadError, load_pretrained
from lightning_modules.checkpoint_io import AtomicCheckpointIO
from lightning_modules.run_folder import read_checkpoint as cli_read_checkpoint
from lightning_modules.safe_load import UnsafeCheckpointError, safe_load
from tools.common import read_checkpoint as tool_read_checkpoint

QUICKSTART = str(cli.ROOT / "experiments" / "quickstart.yaml")


class _Payload:
    """Unpickling calls ``open(marker, "w")``: the file appears iff the pickle's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {"x": _Payload(marker)}}, path)
    assert not marker.exists()
    probe = tmp_path / "probe"  # the payload is live: the unrestricted unpickler runs it
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()
    return path, marker


def test_safe_load_reads_a_plain_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ok.ckpt"
    ckpt = {
        "state_dict": {"w": torch.ones(2)},
        "hyper_parameters": {"root": Path("/data"), "lr": 0.1},
        "epoch": 3,
    }
    torch.save(ckpt, path)
    loaded = safe_load(path)
    assert loaded["epoch"] == 3 and loaded["hyper_parameters"]["root"] == Path("/data")
    assert torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(path)["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    "reader",
    [
        safe_load,
        tool_read_checkpoint,
        cli_read_checkpoint,
        lambda p: AtomicCheckpointIO().load_checkpoint(p),
        lambda p: AtomicCheckpointIO().load_checkpoint(p, weights_only=False),  # Lightning may ask for it
    ],
    ids=["safe_load", "tools", "cli_read", "checkpoint_io", "checkpoint_io_weights_only_false"],
)
def test_crafted_pickle_is_refused(evil, reader) -> None:
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as info:
        reader(path)
    message = str(info.value)
    assert "refused" in message and "\n" not in message and "weights_only=False" not in message
    assert "add_safe_globals" not in message
    assert not marker.exists()


def test_crafted_pickle_is_refused_as_pretrained_weights(evil) -> None:
    path, marker = evil
    with pytest.raises(PretrainedLoadError) as info:
        load_pretrained(nn.Linear(2, 2), path)
    assert getattr(info.value, "user_error", False)
    assert not marker.exists()


def test_crafted_pickle_is_refused_by_the_cli(evil, monkeypatch, capsys) -> None:
    path, marker = evil
    monkeypatch.setattr(sys, "argv", ["main.py", "test", "--config", QUICKSTART, "--ckpt_path", str(path)])
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert info.value.code == 2, err
    assert len(errors) == 1 and "refused to load" in errors[0], err
    assert "Traceback" not in err + out and "weights_only=False" not in err
    assert not marker.exists()
