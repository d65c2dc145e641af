"""Where the Bi-Transformer's time goes on one CPU core, and whether another attention formulation is faster.

    python bench/studies/bench_fusion_kernels.py [--items 256] [--write bench/results/kg_epoch.md]

1. One training-mode fwd+bwd of the fusion module (model.md §3: 2 modalities, 3 blocks, 8 heads, N = 16, d = 64,
   FFN 128, dropout 0.1) for ``--items`` items (the default ``fusion_items``), timed, then profiled by op.
2. The cross-modal attention of one block alone (both query modalities stacked over [K_v ; K_t], as
   ``CrossModalAttention`` calls it), fwd+bwd, in four formulations that give the same output: torch's fused
   ``scaled_dot_product_attention`` with a boolean mask (what the model uses) or an additive float mask, and
   the explicit softmax(QK^T / sqrt(d_k)) V with ``masked_fill`` or with ``baddbmm`` and an additive mask.
3. One residual-branch dropout of the blocks ((items, N, d), p = 0.1), fwd+bwd: ``nn.Dropout`` (one Bernoulli
   draw per element) against ``layers.MessageDropout`` (16 random bits per element; what the blocks use).
Medians of ``--repeat`` runs after 3 warm-ups; 1 torch thread (``--threads``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/, for benchlib
from benchlib import emit, median_ms  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=256)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--write", help="also append the markdown to this file")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from torch.profiler import ProfilerActivity, profile

    from multikg4rec.nn.fusion import BiTransformer
    from multikg4rec.nn import MessageDropout

    load0 = os.getloadavg()[0]
    B, N, d, H = a.items, 16, 64, 8
    mods = ["image", "text"]
    bt = BiTransformer(mods, d, H, 3, "bi", 128, 0.1, d ** -0.5).train()
    x = {m: torch.randn(B, N, d, requires_grad=True) for m in mods}
    mask = torch.rand(B, N) > 0.2
    mask[:, 0] = True

    def fusion_step():
        sum(v.sum() for v in bt(x, mask).values()).backward()

    fusion_ms = median_ms(fusion_step, a.repeat, warmup=3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            fusion_step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in ops)
    top = [(e.key, e.self_cpu_time_total / total * 100, e.count // 5) for e in ops[:6]]

    dk, Lq, Lk = d // H, 2 * N, 2 * N
    q = torch.randn(B, H, Lq, dk, requires_grad=True)
    k = torch.randn(B, H, Lk, dk, requires_grad=True)
    v = torch.randn(B, H, Lk, dk, requires_grad=True)
    kmask = mask.repeat(1, 2)[:, None, None, :]
    bias = torch.zeros(kmask.shape).masked_fill(~kmask, float("-inf"))

    def sdpa_bool():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=kmask)

    def sdpa_float():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def explicit_masked_fill():
        s = (q @ k.transpose(-1, -2)) / math.sqrt(dk)
        return torch.softmax(s.masked_fill(~kmask, float("-inf")), -1) @ v

    def explicit_baddbmm():
        s = torch.baddbmm(bias.expand(B, H, Lq, Lk).reshape(B * H, Lq, Lk), q.reshape(B * H, Lq, dk),
                          k.reshape(B * H, Lk, dk).transpose(1, 2), alpha=1 / math.sqrt(dk))
        return (torch.softmax(s, -1) @ v.reshape(B * H, Lk, dk)).view(B, H, Lq, dk)

    ref = sdpa_bool()
    kernels = []
    for name, fn in [("scaled_dot_product_attention, bool mask (the model's)", sdpa_bool),
                     ("scaled_dot_product_attention, additive float mask", sdpa_float),
                     ("explicit softmax(QK^T/sqrt(d_k))V, masked_fill", explicit_masked_fill),
                     ("explicit, baddbmm + additive mask", explicit_baddbmm)]:
        torch.testing.assert_close(fn(), ref, rtol=1e-4, atol=1e-5)
        kernels.append((name, median_ms(lambda: fn().sum().backward(), a.repeat, warmup=3)))

    xd = torch.randn(B, N, d, requires_grad=True)
    drops = [(name, median_ms(lambda: drop.train()(xd).sum().backward(), a.repeat, warmup=3))
             for name, drop in [("nn.Dropout(0.1)", torch.nn.Dropout(0.1)),
                                ("MessageDropout(0.1) (the blocks')", MessageDropout(0.1))]]

    md = "\n".join([
        f"## The fusion module on {a.threads} CPU thread(s): ops, attention kernels, dropout ({a.items} items)", "",
        f"`python bench/studies/bench_fusion_kernels.py --items {a.items} --threads {a.threads}`", "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {a.threads} torch thread(s); torch {torch.__version__}; median "
        f"of {a.repeat}; load average (1 min) {load0:.1f} before, {os.getloadavg()[0]:.1f} after.", "",
        f"Fusion of {B} items (2 modalities, 3 blocks, 8 heads, N = {N}), training mode, fwd+bwd: "
        f"**{fusion_ms:.0f} ms**. Largest ops by self CPU time (torch.profiler, 5 steps):", "",
        "| op | share | calls per step |", "|---|---|---|",
        *[f"| `{k}` | {s:.0f}% | {c} |" for k, s, c in top], "",
        f"One block's cross-modal attention alone ({B} items x {H} heads, {Lq} queries over {Lk} keys, d_k = {dk}), "
        "fwd+bwd, same output:", "",
        "| formulation | ms |", "|---|---|",
        *[f"| {n} | {ms:.1f} |" for n, ms in kernels], "",
        f"One residual-branch dropout, ({B}, {N}, {d}), fwd+bwd (8 per fusion step: 2 modalities x 2 branches x "
        "the 2 blocks that output every row):", "",
        "| dropout | ms |", "|---|---|",
        *[f"| {n} | {ms:.2f} |" for n, ms in drops], ""])
    emit(md, a.write)


if __name__ == "__main__":
    main()
