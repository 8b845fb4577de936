"""Listing a folder tree safely: symlinks followed, no folder entered twice, dangling links reported."""

from __future__ import annotations

import os


def walk_files(directory: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``(files, dangling)`` under ``directory``.

    Symlinked folders are followed (as torchvision's ``ImageFolder`` does), but a folder already visited
    (same device and inode) is never entered again, so a link loop such as ``alpha/loop -> ..`` lists each
    file once instead of recursing until the path length limit. ``dangling`` holds symlinks whose target
    does not exist. Only folders are ``stat``-ed; file types come from the directory entries.
    """
    top = os.fspath(directory)
    st = os.stat(top)
    seen = {(st.st_dev, st.st_ino)}
    files: list[str] = []
    dangling: list[str] = []
    stack = [top]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir():
                    info = entry.stat()
                    key = (info.st_dev, info.st_ino)
                    if key not in seen:
                        seen.add(key)
                        stack.append(entry.path)
                elif entry.is_file():
                    files.append(entry.path)
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    dangling.append(entry.path)
    return files, dangling


def files_in_several_classes(samples: list[tuple[str, int]]) -> dict[str, list[str]]:
    """Real files that appear under more than one class: ``{real path: [the paths listing it]}``."""
    owner: dict[str, tuple[int, str]] = {}
    clashes: dict[str, list[str]] = {}
    for path, label in samples:
        real = os.path.realpath(path)
        if real in owner and owner[real][0] != label:
            clashes.setdefault(real, [owner[real][1]]).append(path)
        else:
            owner.setdefault(real, (label, path))
    return clashes
