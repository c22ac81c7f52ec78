"""Block offload (`diffusion.offload=blocks`): the DiT's blocks live in host memory and each is
copied to the compute device just before it runs, so the device holds two blocks, not all of them.

While block i computes, block i+1 is copied on a side stream (CUDA, from pinned host memory, so the
copy is asynchronous); on a CPU device the same code makes the same copies synchronously. The
device copy replaces the parameters' data only for the duration of the block, so the arithmetic is
the non-offloaded forward's, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn


def _host_copy(tensor: Tensor, pin: bool) -> Tensor:
    host = tensor.detach().to("cpu")
    return host.pin_memory() if pin else host


class BlockStreamer:
    """Streams `blocks` (modules with parameters only, by the DiT's flat block index; a layer split's
    rank has only its range) from host memory to `device`, one ahead; the DiT's `block_source`."""

    def __init__(self, blocks: Mapping[int, nn.Module], device: torch.device):
        self.device = device
        pin = device.type == "cuda"  # pinning needs a CUDA build; it only speeds up copies to a GPU
        self.params = {i: list(block.parameters()) for i, block in blocks.items()}
        if any(True for block in blocks.values() for _ in block.buffers()):
            raise ValueError("block offload moves parameters only; these blocks have buffers")
        self.host = {i: [_host_copy(p, pin) for p in params] for i, params in self.params.items()}
        for i, params in self.params.items():
            for p, h in zip(params, self.host[i]):
                p.data = h
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @property
    def host_bytes(self) -> int:
        return sum(h.numel() * h.element_size() for host in self.host.values() for h in host)

    def _fetch(self, index: int) -> tuple[list[Tensor], torch.cuda.Event | None]:
        """Start copying block `index` to the device; the event marks the copies' completion."""
        with torch.cuda.stream(self.copy_stream) if self.copy_stream is not None else contextlib.nullcontext():
            copies = [torch.empty_like(h, device=self.device).copy_(h, non_blocking=True) for h in self.host[index]]
            return copies, self.copy_stream.record_event() if self.copy_stream is not None else None

    def stream(self, indices: range) -> Iterator[int]:
        """Yield each index once its block is on the device (the next one's copy already under way),
        and put the block back in host memory after its turn. A range's first block is fetched
        when the range starts (not overlapped)."""
        order = list(indices)
        pending = self._fetch(order[0]) if order else None
        for n, index in enumerate(order):
            copies, done = pending
            if done is not None:  # the compute stream waits for the copy, and owns the memory from now
                current = torch.cuda.current_stream(self.device)
                current.wait_event(done)
                for c in copies:
                    c.record_stream(current)
            for p, c in zip(self.params[index], copies):
                p.data = c
            pending = self._fetch(order[n + 1]) if n + 1 < len(order) else None
            try:
                yield index
            finally:
                for p, h in zip(self.params[index], self.host[index]):
                    p.data = h


def offload_blocks(dit: nn.Module, device: torch.device) -> nn.Module:
    """Keep `dit`'s blocks in host memory and everything else on `device`; its forward streams the
    blocks in (the DiT must be on the CPU when called, so the whole model never sits on the device)."""
    blocks = {i: dit.block(i) for i in range(dit.num_blocks) if dit.block(i) is not None}
    dit.block_source = BlockStreamer(blocks, device)
    # move only the non-block parts; Module.to would pull the host-resident blocks onto the device too
    for name, child in dit.named_children():
        if name not in ("triple_blocks", "single_blocks") and child is not None:
            child.to(device)
    for p in dit.parameters(recurse=False):
        p.data = p.data.to(device)
    return dit
