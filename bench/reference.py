#!/usr/bin/env python3
"""PyTorch reference for the ratio-worker benchmark: GPT-2 124M with the RATIO attention variants,
trained on random tokens with fused AdamW under bf16 autocast, eager or torch.compile.

Prints one JSON line: {"variant", "mode", "tokens_per_s", "ms_per_step", "peak_memory_bytes"}; with
--phases also forward_ms, backward_ms and optimizer_ms (medians, the device synchronised between
phases), the fields ratio-worker's bench/step_phases.cpp prints.
Same definitions as docs/architecture.md, written plainly (materialised T x T scores wherever RA,
RA-CT or mechanism 2 need them, SDPA otherwise).

  python3 bench/reference.py --variant baseline|mla|ra|ra_mla|step12|ratio|step14|step18 [--compile] [--steps 20] [--phases]
                             [--trace TRACE.json]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    #            MLA    RA     MLP width ratio  M1 gate  M2 cross  RA-CT statistic
    "baseline": (False, False, 4.0, False, False, None),
    "mla":      (True, False, 4.0, False, False, None),
    "ra":       (False, True, 4.0, False, False, None),
    "ra_mla":   (True, True, 4.0, False, False, None),
    "step12":   (True, True, 2048 / 768, True, True, None),  # step 12: RA + MLA + ratio + mechanisms
    "ratio":    (True, True, 2048 / 768, True, True, "topk"),  # step 16, full RATIO
    "step14":   (True, False, 2560 / 768, False, False, "topk"),  # step 14: MLA + RA-CT, no RA
    "step18":   (False, False, 4.0, False, False, "entropy"),  # step 18: RA-CT's entropy
    "ct_rms":   (False, False, 4.0, False, False, "rms"),  # RA-CT's rms (in no study step)
}


class Config:
    def __init__(self, variant, n_layer=12, n_head=12, n_embd=768, vocab=50304, block=1024):
        mla, ra, ratio, gate, cross, ract = VARIANTS[variant]
        self.n_layer, self.n_head, self.n_embd, self.vocab, self.block = n_layer, n_head, n_embd, vocab, block
        self.mla, self.ra, self.gate, self.cross, self.ract = mla, ra, gate, cross, ract
        self.hidden = round(ratio * n_embd)
        self.latent, self.ra_alpha, self.ra_window = 128, 0.3, 64
        self.gate_dim, self.gate_alpha, self.cross_alpha, self.cross_k, self.ract_k = 64, 0.1, 0.3, 8, 8


class Attention(nn.Module):
    def __init__(self, cfg, consumer):
        super().__init__()
        C, H = cfg.n_embd, cfg.n_head
        self.cfg, self.H, self.D = cfg, H, C // H
        if cfg.mla:
            self.q_proj = nn.Linear(C, C)
            self.k_down = nn.Linear(C, cfg.latent)
            self.v_down = nn.Linear(C, cfg.latent)
            self.v_up = nn.Linear(cfg.latent, C)
            self.q_to_latent = nn.Parameter(torch.randn(H, self.D, cfg.latent) * 0.02)
        else:
            self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.needs_weights = cfg.ra or cfg.ract or cfg.cross  # the T x T weights are materialised
        if self.needs_weights:
            i = torch.arange(cfg.block)[:, None]
            j = torch.arange(cfg.block)[None, :]
            self.register_buffer("causal", j <= i, persistent=False)
            self.register_buffer("band", (j <= i) & (i - j <= cfg.ra_window), persistent=False)
        if cfg.ra:
            self.ra_alpha = nn.Parameter(torch.tensor(cfg.ra_alpha))
        if cfg.ract:
            self.ct_scale = nn.Parameter(torch.ones(H))
            self.ct_bias = nn.Parameter(torch.full((H,), 2.0))
        if cfg.gate and consumer:
            self.gate_alpha = nn.Parameter(torch.tensor(cfg.gate_alpha))

    def forward(self, x, g1):
        B, T, C = x.shape
        H, D = self.H, self.D
        if self.cfg.mla:
            q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)                       # [B, H, T, D]
            q = torch.einsum("bhtd,hdl->bhtl", q, self.q_to_latent)                    # [B, H, T, L]
            k = self.k_down(x).unsqueeze(1).expand(B, H, T, self.cfg.latent)           # [B, H, T, L]
            v = self.v_up(self.v_down(x)).view(B, T, H, D).transpose(1, 2)             # [B, H, T, D]
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))         # [B, H, T, D]
        A = None
        if not self.needs_weights:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            S = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))                      # [B, H, T, T]
            if self.cfg.ra:
                S = S + self.ra_alpha * (S.transpose(-2, -1) * self.band[:T, :T])
            S = S.masked_fill(~self.causal[:T, :T], float("-inf"))
            P = F.softmax(S.float(), dim=-1)                                           # [B, H, T, T]
            A = P.to(v.dtype)
            y = A @ v                                                                  # [B, H, T, D]
            if self.cfg.ract:
                if self.cfg.ract == "entropy":
                    stat = -(P * P.clamp_min(1e-30).log()).sum(-1)                      # [B, H, T]
                elif self.cfg.ract == "rms":
                    visible = torch.arange(1, T + 1, device=P.device, dtype=P.dtype)   # [T]
                    stat = (P.square().sum(-1) / visible).sqrt()
                else:
                    stat = A.topk(self.cfg.ract_k, dim=-1).values.sum(-1)
                g = torch.sigmoid(self.ct_scale[:, None] * stat + self.ct_bias[:, None])
                y = y * g.unsqueeze(-1)
        if g1 is not None and hasattr(self, "gate_alpha"):
            y = (1 - self.gate_alpha) * y + self.gate_alpha * (y * g1.transpose(1, 2).unsqueeze(-1))
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y), A


class Mlp(nn.Module):
    def __init__(self, cfg, producer):
        super().__init__()
        C, M = cfg.n_embd, cfg.hidden
        self.cfg = cfg
        self.c_fc = nn.Linear(C, M)
        self.c_proj = nn.Linear(M, C)
        if cfg.gate and producer:
            self.gate_proj = nn.Linear(M, cfg.gate_dim)
            self.gate_to_heads = nn.Linear(cfg.gate_dim, cfg.n_head)
        if cfg.cross:
            self.cross_proj = nn.Linear(M, M)
            self.cross_alpha = nn.Parameter(torch.tensor(cfg.cross_alpha))

    def forward(self, x, A):
        h = F.gelu(self.c_fc(x), approximate="tanh")                                  # [B, T, M]
        if self.cfg.cross:
            Abar = A.mean(1)                                                           # [B, T, T]
            top = Abar.topk(self.cfg.cross_k, dim=-1)
            Abar = torch.zeros_like(Abar).scatter(-1, top.indices, top.values)
            Abar = Abar / Abar.sum(-1, keepdim=True).clamp_min(1e-9)
            h = h + self.cross_alpha * self.cross_proj(Abar @ h)
        g1 = None
        if hasattr(self, "gate_proj"):
            gp = self.gate_proj(h)                                                     # [B, T, G]
            counts = torch.arange(1, h.size(1) + 1, device=h.device, dtype=gp.dtype)[None, :, None]
            g1 = torch.sigmoid(self.gate_to_heads(gp.cumsum(1) / counts))              # [B, T, H]
        return self.c_proj(h), g1


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg, consumer=layer > 0)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = Mlp(cfg, producer=layer < cfg.n_layer - 1)

    def forward(self, x, g1):
        a, A = self.attn(self.ln_1(x), g1)
        x = x + a
        m, g1 = self.mlp(self.ln_2(x), A)
        return x + m, g1


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)

    def forward(self, idx, targets):
        T = idx.size(1)
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        g1 = None
        for block in self.h:
            x, g1 = block(x, g1)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", choices=sorted(VARIANTS), default="baseline")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--phases", action="store_true", help="also time forward, backward and optimizer apart")
    ap.add_argument("--trace", help="record one more step with torch.profiler into this Chrome trace")
    args = ap.parse_args()

    torch.manual_seed(1337)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = "cuda"
    cfg = Config(args.variant, block=args.block)
    model = GPT(cfg).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), fused=True)
    step_model = torch.compile(model) if args.compile else model
    x = torch.randint(0, 50257, (args.batch, args.block), device=dev)
    y = torch.randint(0, 50257, (args.batch, args.block), device=dev)

    def forward():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return step_model(x, y)

    def optimize():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step():
        forward().backward()
        optimize()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] * 1000
    out = {"variant": args.variant, "mode": "compile" if args.compile else "eager",
           "tokens_per_s": args.batch * args.block / (ms / 1000), "ms_per_step": ms,
           "peak_memory_bytes": torch.cuda.max_memory_allocated()}
    if args.phases:
        out.update(time_phases(forward, optimize, args.steps))
    if args.trace:
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            step()
            torch.cuda.synchronize()
        prof.export_chrome_trace(args.trace)
    print(json.dumps(out))


def time_phases(forward, optimize, steps):
    """Median milliseconds of forward, backward and optimizer, synchronising between them."""
    phase_ms = {"forward_ms": [], "backward_ms": [], "optimizer_ms": []}
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = forward()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        loss.backward()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        optimize()
        torch.cuda.synchronize()
        t3 = time.perf_counter()
        for key, seconds in zip(phase_ms, (t1 - t0, t2 - t1, t3 - t2)):
            phase_ms[key].append(seconds * 1000)
    return {key: sorted(v)[len(v) // 2] for key, v in phase_ms.items()}


if __name__ == "__main__":
    main()
