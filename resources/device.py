"""The torch device GPU assets run on: device choice, precision and memory layout."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

import dagster as dg

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class TorchDeviceResource(dg.ConfigurableResource):
    """`auto` picks CUDA when present; bf16/fp16 autocast and channels_last only on CUDA."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    channels_last: bool = True
    compile: bool = False

    def torch_device(self) -> Any:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was configured but torch sees no CUDA GPU; set device to 'auto' or 'cpu'")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def on_cuda(self) -> bool:
        return self.torch_device().type == "cuda"

    def autocast_dtype(self) -> Any:
        import torch

        return getattr(torch, PRECISIONS[self.precision])

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision on CUDA; plain fp32 elsewhere (CPU autocast is slow for convs)."""
        import torch

        if not self.on_cuda or self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype())

    def prepare(self, model: Any) -> Any:
        """Move a module to the device, in channels_last on CUDA, compiled if asked."""
        import torch

        model = model.to(self.torch_device())
        if self.on_cuda and self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model = torch.compile(model)
        return model

    def to_device(self, batch: Any) -> Any:
        import torch

        batch = batch.to(self.torch_device(), non_blocking=True)
        if self.on_cuda and self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
