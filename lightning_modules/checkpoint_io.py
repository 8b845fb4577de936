"""Atomic checkpoint writes: a crash or SIGKILL during a save never destroys the previous checkpoint."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lightning_modules.safe_load import safe_load


def current_umask() -> int:
    """The process umask, read from /proc where possible (``os.umask`` can only be read by setting it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target folder, fsync it, then ``os.replace`` it into place.

    ``os.replace`` is atomic on POSIX and Windows within one file system, which is why the temporary file
    lives next to the target (Lightning's default goes through fsspec, which stages local files in the
    system temp folder and moves them across devices non-atomically). Loading goes through
    :func:`lightning_modules.safe_load.safe_load` (``weights_only=True`` always, whatever Lightning asks
    for): a checkpoint that pickles code is refused, not run. The file gets the permissions a plain
    ``open()`` would give it (``0666`` minus the umask), not ``mkstemp``'s ``0600``.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = os.fspath(path)
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ckpt", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; a plain open() would respect umask
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's ``ckpt_path`` load, always restricted (``weights_only`` is ignored: never
        ``False``)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_load(path, map_location=map_location or (lambda storage, loc: storage))
