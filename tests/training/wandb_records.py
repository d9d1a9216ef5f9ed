"""Read an offline W&B run back: the history rows in its ``run-*.wandb`` file.

wandb >= 0.30 has no Python reader of its own for the file (wandb-core, in Go, writes and syncs it), so
this parses it here, with wandb's own protobuf schema (``wandb_internal_pb2.Record``). The file is a
LevelDB log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each a 7-byte header
(CRC-32 of type + data, uint32 LE; length, uint16 LE; type: 1 full, 2 first, 3 middle, 4 last) and its
data; a block's last < 7 bytes are zero padding. A record is the data of one full chunk or of a
first ... last run.
"""

import json
import struct
import zlib
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, LAST = 1, 2, 4


def records(path):
    from wandb.proto.wandb_internal_pb2 import Record

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, pieces = HEADER, []
    while position + HEADER <= len(data):
        if BLOCK - position % BLOCK < HEADER:  # zero padding at the end of a block
            position += BLOCK - position % BLOCK
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        chunk = data[position + HEADER:position + HEADER + length]
        assert checksum == zlib.crc32(chunk, zlib.crc32(bytes([kind]))), f"corrupt chunk at {position}"
        position += HEADER + length
        pieces.append(chunk)
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(b"".join(pieces))
            pieces = []
            yield record
        else:
            assert kind == FIRST or pieces[:-1], f"chunk type {kind} without a first at {position}"


def history(run_dir) -> list[dict]:
    """The logged rows of the offline run under ``run_dir`` (searched for its one .wandb file)."""
    (path,) = Path(run_dir).rglob("*.wandb")
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                   for item in record.history.item}
            rows.append(row)
    return rows
