"""Device check for augment=gpu, run by scripts/gpu_check.sh on a CUDA machine (well under a minute).
Checks: no host sync inside GpuAugment when batch["seed"] stays on the CPU; same seeds -> same output on CUDA;
prints ms/batch for B=8, 256 px patches (320 px margin), augment=default's values."""

import torch

from tpnet.core.encoding import Encoding
from tpnet.data.gpu_augment import GpuAugment

B, M, P, N = 8, 320, 256, 50
dev = torch.device("cuda")
g = torch.Generator().manual_seed(0)
kpa = torch.rand(B, M, M, generator=g) * 200
kpa[:, :, :60] = float("nan")
batch = {
    "bmode": torch.rand(B, M, M, generator=g).half().to(dev),
    "elasto_kpa": kpa.half().to(dev),
    "mask": (torch.rand(B, M, M, generator=g) * 3).to(torch.uint8).to(dev),
    "bmode_stats": torch.tensor([[0.5, 0.2]] * B).to(dev),
    "seed": torch.arange(B, dtype=torch.int64),  # on the host: no device sync to read it
}
aug, enc = GpuAugment(), Encoding(bmode_norm="zscore_frame")
for _ in range(3):
    aug(batch, enc, (P, P))
torch.cuda.synchronize()
torch.cuda.set_sync_debug_mode("error")  # raises on any synchronising CUDA call
a = aug(batch, enc, (P, P))
torch.cuda.set_sync_debug_mode("default")
b = aug(batch, enc, (P, P))
assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seeds gave different output on CUDA"
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(N):
    aug(batch, enc, (P, P))
end.record()
torch.cuda.synchronize()
print(f"no sync, reproducible; {start.elapsed_time(end) / N:.2f} ms/batch on {torch.cuda.get_device_name()}")
