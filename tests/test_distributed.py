"""CpuSyncBatchNorm (data-parallel BatchNorm over gloo) against torch's BatchNorm, on one process."""

import torch
import torch.distributed as dist
from torch import nn

from facenet.train.distributed import CpuSyncBatchNorm


def test_cpu_sync_batchnorm_keeps_float32_statistics_under_bf16_autocast(tmp_path):
    # activations with a mean large against their spread, as after a ReLU: a bfloat16 sum of squares
    # cancels to a wrong variance here (error 0.4 in the normalised output before the fix)
    torch.manual_seed(0)
    x = (torch.randn(16, 8, 5, 5) + 4).to(torch.bfloat16)  # the network's bf16 activations
    reference = nn.BatchNorm2d(8)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 2.0)
        reference.bias.uniform_(-1.0, 1.0)
    synced = CpuSyncBatchNorm(8)
    synced.load_state_dict(reference.state_dict())
    want = reference(x.float())  # float32 throughout, on the same (bf16-valued) input
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = synced(x)
    finally:
        dist.destroy_process_group()
    assert got.dtype == torch.bfloat16  # as torch's BatchNorm returns under CPU bf16 autocast
    torch.testing.assert_close(got.float(), want, rtol=2**-8, atol=2**-8)  # the output's rounding only
    torch.testing.assert_close(synced.running_mean, reference.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(synced.running_var, reference.running_var, rtol=1e-5, atol=1e-6)
