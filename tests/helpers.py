"""Small builders and checks shared by test modules (tests/ is on sys.path: the rootdir conftest, no package)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

FACES = ["face", "nonface"]


def foreign_onnx(path: Path, four_d: bool) -> Path:
    """No alexnet-deploy metadata; output (N, 3, 32, 32) or (N, 3) instead of (N, 10)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])
    if four_d:
        node = helper.make_node("Identity", ["input"], ["out"])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, 32, 32])
    else:
        node = helper.make_node("ReduceMean", ["input"], ["out"], axes=[2, 3], keepdims=0)
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])
    model = helper.make_model(helper.make_graph([node], "foreign", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header declares w x h pixels (a decompression bomb costs nothing to make this way)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err
