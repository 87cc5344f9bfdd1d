"""Data parallelism under ``torchrun``: one process per device, mining over the *global* batch.

Each rank embeds its slice of the global P x K batch; ``gather_with_grad``
assembles the whole batch on every rank (gradients flow back to the slice that
produced them), so every rank mines the same triplets a single process would.
BatchNorm statistics are synchronised across ranks too (torch's SyncBatchNorm
on GPUs, ``CpuSyncBatchNorm`` with gloo), which makes a multi-process run follow
the same loss trajectory as one process on the same global batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Context:
    """Join the process group when started by ``torchrun`` (gloo on CPU, NCCL on GPU)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context(device=torch.device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Context(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev)


def teardown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def gather_with_grad(x: torch.Tensor, ctx: Context) -> torch.Tensor:
    """Concatenate every rank's rows in rank order, differentiably (the identity on one process)."""
    if not ctx.distributed:
        return x
    return _AllGather.apply(x)


class _AllGather(torch.autograd.Function):
    """Every rank's equal-sized rows, concatenated; backward: the summed gradient of this rank's rows.

    (torch.distributed.nn.functional did this, and is deprecated; the functional collectives that
    replace it are private API. Plain collectives keep the project on public API.)
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * rows : (dist.get_rank() + 1) * rows]


class _AllReduce(torch.autograd.Function):
    """The sum over ranks; its gradient is the sum over ranks of the gradients (public-API collectives)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def average_gradients(model: nn.Module, ctx: Context) -> None:
    """Average gradients across ranks, scaled so the result equals the single-process gradient.

    Every rank computes the same global loss, and ``gather_with_grad``'s backward sums the
    gradient of all of those copies into each slice, so each rank's gradient is ``world_size``
    times its share of the true gradient; summing over ranks then dividing by ``world_size``
    restores the exact single-process gradient.
    """
    if not ctx.distributed:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_parameters(model: nn.Module, ctx: Context) -> None:
    """Start every rank from rank 0's weights and buffers."""
    if not ctx.distributed:
        return
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics cover the global batch across gloo ranks.

    torch's SyncBatchNorm runs on GPUs only; this one all-reduces per-channel sums and
    sums of squares (differentiably) and then normalises exactly like BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Under bf16 autocast ``x`` arrives in bfloat16; like BatchNorm, compute in float32 (sums of squares in
        8 bits of mantissa would cancel to a useless variance) and return ``x``'s dtype."""
        if not self.training:
            return super().forward(x)
        return self._normalise(x.float()).to(x.dtype)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm's training arithmetic with the statistics of the global batch (summed over ranks)."""
        dims = [0] + list(range(2, x.dim()))
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        stats = _AllReduce.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * n / (n - 1))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, ctx: Context) -> nn.Module:
    """Replace every BatchNorm with a synchronised one when running on several processes."""
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    if isinstance(module, _BatchNorm):
        new = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.load_state_dict(module.state_dict())
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert_cpu(child))
    return module
