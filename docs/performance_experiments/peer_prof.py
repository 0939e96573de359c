"""
PyTorch peer (tfvae.studies.benchmark_peer) under torch.profiler: where its maps, training step and projection spend their time."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import torch
from torch.profiler import profile, ProfilerActivity
from tfvae.studies.benchmark_peer import Peer
p = Peer(batch=64, size=64, latent=64, repeats=3, steps=15, projection_steps=10)
what = sys.argv[1]
f = {"maps": p.maps, "train": p.train, "projection": p.projection}[what]
f(); f()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    f()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
