"""Read checkpoints without running code from them: ``torch.load(weights_only=True)``, nothing else.

A ``.ckpt`` is a pickle, and unpickling can call any function the file names (``__reduce__``), so a
downloaded checkpoint could run arbitrary code with the full ``torch.load``. Every place this project reads
a checkpoint (the CLI's ``--ckpt_path``, Lightning's own load through :class:`AtomicCheckpointIO`, the tools)
goes through :func:`safe_load`: torch's restricted unpickler, which accepts tensors and plain data (dict,
list, str, numbers, ...) plus the few extra types listed in :data:`SAFE_GLOBALS`, allowed only for the
duration of the load (``torch.serialization.safe_globals``, not process-wide). Anything else is refused
with :class:`UnsafeCheckpointError`, a one-line user error.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
from typing import Any

import torch

#: Types a checkpoint of this project may hold beyond torch's ``weights_only`` defaults: paths in
#: hyper-parameters (jsonargparse and our configs keep file names as ``pathlib`` paths).
SAFE_GLOBALS: list[Any] = [
    pathlib.PosixPath,
    pathlib.WindowsPath,
    pathlib.PurePosixPath,
    pathlib.PureWindowsPath,
]


class UnsafeCheckpointError(ValueError):
    """A checkpoint that needs more than tensors and plain data to load (user error: one line, exit 2)."""

    user_error = True


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`SAFE_GLOBALS` allowed for this call only.

    Raises:
        UnsafeCheckpointError: the file pickles a global outside the allow-list (e.g. a ``__reduce__`` to
            ``os.system``); nothing from it is executed.
    """
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))  # only the name: torch's advice would allow-list it
        detail = f" (it needs {found[1]})" if found else ""
        raise UnsafeCheckpointError(
            f"{os.fspath(path)}: refused to load: it holds Python objects other than tensors and plain "
            f"data{detail}, and unpickling them could run code from the file. "
            "Use a checkpoint written by this "
            "project or a plain state_dict saved with torch.save(model.state_dict(), ...)."
        ) from None
