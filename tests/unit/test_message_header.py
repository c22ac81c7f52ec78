"""Message header + packed payload round trip, without a process group."""

import pytest
import torch

from foley_dist.engine.message import Message
from foley_dist.engine.transport import HEADER_BYTES, decode_header, encode_header, pack, payload_bytes, unpack


@pytest.mark.parametrize("tensors", [
    {},
    {"a": torch.randn(2, 3)},
    {"x": torch.randn(1, 128, 250), "m": torch.tensor([True, False, True]), "h": torch.randn(5).bfloat16(),
     "i": torch.arange(7, dtype=torch.int64), "s": torch.tensor(3.5), "e": torch.empty(0, 4),
     "f16": torch.randn(3, 1, 2).half(), "u8": torch.randint(0, 255, (9,), dtype=torch.uint8)},
])
def test_round_trip(tensors):
    msg = Message(5, tensors, {"video": "v.mp4", "start": 4.0})
    header, ordered = encode_header(msg)
    assert header.shape == (HEADER_BYTES,) and header.dtype == torch.uint8
    spec = decode_header(header)
    payload = pack(ordered, torch.device("cpu"))
    assert payload.numel() == payload_bytes(spec)
    out = unpack(spec, payload.clone())
    assert spec["segment"] == 5 and spec["meta"] == msg.meta
    assert out.keys() == tensors.keys()
    for k, t in tensors.items():
        assert out[k].dtype == t.dtype and out[k].shape == t.shape
        assert torch.equal(out[k], t)


def test_non_contiguous_tensor_survives():
    t = torch.randn(4, 6).t()
    _, ordered = encode_header(Message(0, {"t": t}))
    spec = decode_header(encode_header(Message(0, {"t": t}))[0])
    assert torch.equal(unpack(spec, pack(ordered, torch.device("cpu")))["t"], t)


def test_garbage_header_is_rejected():
    with pytest.raises(RuntimeError, match="out of step"):
        decode_header(torch.zeros(HEADER_BYTES, dtype=torch.uint8))


def test_oversized_meta_is_rejected():
    with pytest.raises(ValueError, match="header"):
        encode_header(Message(0, {}, {"prompt": "x" * HEADER_BYTES}))
