"""Read the records of an offline W&B run file (``run-<id>.wandb``) for assertions in tests.

An offline run stores everything it logged in one LevelDB-style log of ``wandb_internal_pb2.Record``
protobufs (7-byte file header ``:W&B`` + magic + version; 32 KiB blocks; each chunk a 7-byte header
(crc32, length, type FULL/FIRST/MIDDLE/LAST) and its bytes). wandb >= 0.19 no longer ships a Python
reader, so the tests read it here with wandb's own protobuf definitions.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768
_HEADER = struct.Struct("<IHB")
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_records(path: str | Path):
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    pos, pending = 7, b""
    while pos + _HEADER.size <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER.size:
            pos += left_in_block
            continue
        _, length, kind = _HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding at the end of the file
            break
        chunk = data[pos + _HEADER.size : pos + _HEADER.size + length]
        pos += _HEADER.size + length
        if kind == _FULL:
            pending = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind == _MIDDLE:
            pending += chunk
            continue
        else:  # _LAST
            pending += chunk
        record = pb.Record()
        record.ParseFromString(pending)
        yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: str | Path) -> dict[str, Any]:
    """``{"history": [{key: value}], "config": {key: value}}`` of one offline run file."""
    history, config = [], {}
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "run":
            config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
    return {"history": history, "config": config}
