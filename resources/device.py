"""The torch device GPU assets run on: device choice, precision and memory layout.

The resource hands plain `TorchRuntime` objects to the stage functions, so those know
nothing of Dagster and tests can build a runtime directly."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import dagster as dg

from aras_assets.errors import BadInputError

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class DeviceUnavailableError(BadInputError, RuntimeError):
    """The configured device is not there (cuda on a machine without a GPU)."""


@cache
def cpu_has_native_bf16() -> bool:
    """AMX or AVX512-BF16: there CPU bf16 autocast is several times faster than fp32 for
    convolutions; on other CPUs it is slower, so we only use it where the hardware has it."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class TorchRuntime:
    """Where and how a model runs: device, autocast dtype (None = fp32), memory layout, compile."""

    device: Any = "cpu"
    autocast_dtype: Any = None
    channels_last: bool = False
    compile: bool = False

    @property
    def torch_device(self) -> Any:
        import torch

        return torch.device(self.device)

    @property
    def on_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.autocast_dtype)

    def prepare(self, model: Any) -> Any:
        """Move a module to the device, in channels_last if asked (compile separately: see `compiled`)."""
        import torch

        model = model.to(self.torch_device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def compiled(self, model: Any) -> Any:
        """The module to call for forward passes; state is still saved from `model` itself."""
        import torch

        return torch.compile(model) if self.compile else model

    def to_device(self, batch: Any) -> Any:
        import torch

        batch = batch.to(self.torch_device, non_blocking=True)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch


class TorchDeviceResource(dg.ConfigurableResource):
    """`auto` picks CUDA when present. Training uses `precision` autocast on CUDA only (fp32 on
    CPU); inference also uses bf16 on CPUs with native bf16 unless `cpu_bf16_inference` is off."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    channels_last: bool = True
    compile: bool = False
    cpu_bf16_inference: bool = True

    def torch_device(self) -> Any:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailableError("device 'cuda' was configured but torch sees no CUDA GPU; set device to 'auto' or 'cpu'")
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def on_cuda(self) -> bool:
        return self.torch_device().type == "cuda"

    def autocast_dtype(self) -> Any:
        import torch

        return getattr(torch, PRECISIONS[self.precision])

    def runtime(self, inference: bool = False) -> TorchRuntime:
        import torch

        device = self.torch_device()
        dtype = None
        if device.type == "cuda" and self.precision != "fp32":
            dtype = self.autocast_dtype()
        elif device.type == "cpu" and inference and self.cpu_bf16_inference and cpu_has_native_bf16():
            dtype = torch.bfloat16
        return TorchRuntime(str(device), dtype, self.channels_last, self.compile and not inference)

    # Shorthands for single modules and tensors (training-style runtime).
    def autocast(self) -> contextlib.AbstractContextManager:
        return self.runtime().autocast()

    def prepare(self, model: Any) -> Any:
        runtime = self.runtime()
        return runtime.compiled(runtime.prepare(model))

    def to_device(self, batch: Any) -> Any:
        return self.runtime().to_device(batch)
