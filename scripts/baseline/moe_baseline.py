#!/usr/bin/env python3
"""The MoE layer of moerun in eager PyTorch, as a careful user writes it.

This is the baseline that moerun is measured against (issue 4, item 4). It
computes the layer of docs/DESIGN.md section 1 (gate, top-k, capacity,
expert FFN, combine; expert e lives on rank e // (E/W)) with one process per
GPU and NCCL collectives:

  1. gate: logits = x @ Wg with fp32 output (bf16 operands, fp32 accumulate
     in bf16 mode), softmax in fp32, top-k, renormalise;
  2. permutation: a stable argsort of the flattened expert ids (token order
     is kept inside each expert, which is also the capacity order);
  3. per-(rank, expert) counts exchanged with all_to_all_single, then ONE host
     sync that brings the split sizes to the CPU;
  4. tokens dispatched with all_to_all_single;
  5. the received rows regrouped by local expert (stable argsort) and the
     expert FFN run with torch._grouped_mm in bf16 (per-expert matmuls in
     tf32 and fp32 modes, or where _grouped_mm is unavailable);
  6. results returned with all_to_all_single;
  7. combine: weights applied in fp32, index_add_ into the output.

Launch with torchrun, one process per GPU:

  torchrun --standalone --nproc-per-node=4 scripts/baseline/moe_baseline.py \\
      --tokens 128,8192 --hidden 2048 --ffn-hidden 2048 --experts 32 --topk 2 \\
      --dtype bf16 --iters 20 --warmup 5 --check --json out.json

Flags marked * in --help take comma lists; their cartesian product runs in
one launch (tokens vary fastest), as in `moerun bench`. Timing follows
DESIGN.md section 4: each iteration starts after a barrier, each rank times
its forward with CUDA events, the iteration's latency is the slowest rank's;
median and p99 over iterations after warm-up. `--check` verifies the last
forward against a float64 computation on a few tokens per rank, with the
tolerances of DESIGN.md section 1 item 5, and exits 1 on failure.

`--device cpu` runs it on CPUs with the gloo backend (for testing the script
on machines without GPUs; its timings mean nothing).
"""

import os

# Safety on shared GPU machines: NVLink multicast (NVLS) stays off. Set before
# torch (and NCCL) initialise, whatever the caller's environment says.
os.environ["NCCL_NVLS_ENABLE"] = "0"
os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1"
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# DESIGN.md section 1 item 5: (tie gap delta, relative error bound).
TOLERANCE = {"fp32": (1e-5, 1e-5), "tf32": (1e-3, 5e-3), "bf16": (1e-2, 2e-2)}
FFNS = ("relu", "gelu", "swiglu")
DTYPES = ("fp32", "tf32", "bf16")

# The weight scales of internal/datagen: activations stay of order one.
BIAS_SCALE = 0.125
GATE_BOOST = 4.0


class UsageError(Exception):
    """A flag or configuration that cannot run (exit status 2)."""


# ---------------------------------------------------------------- arguments


def _list(kind):
    def parse(s):
        try:
            return [kind(v.strip()) for v in s.split(",")]
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{s!r}: {e}") from None

    return parse


def _choices(allowed):
    def parse(s):
        out = [v.strip().lower() for v in s.split(",")]
        for v in out:
            if v not in allowed:
                raise argparse.ArgumentTypeError(f"{v!r}: must be one of {', '.join(allowed)}")
        return out

    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="moe_baseline.py",
        description="moerun's MoE layer in eager PyTorch (the baseline). Start it with torchrun, "
        "one process per GPU. Flags marked * take comma lists; their cartesian product runs in one launch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tokens", type=_list(int), default=[8192], help="* tokens per rank T")
    p.add_argument("--hidden", type=_list(int), default=[2048], help="* hidden size H")
    p.add_argument("--ffn-hidden", type=_list(int), default=[2048], help="* expert FFN width I")
    p.add_argument("--experts", type=_list(int), default=[32], help="* experts E (a multiple of the rank count)")
    p.add_argument("--topk", type=_list(int), default=[2], help="* experts per token k")
    p.add_argument("--ffn", type=_choices(FFNS), default=["relu"], help="* relu, gelu (tanh form) or swiglu")
    p.add_argument("--dtype", type=_choices(DTYPES), default=["bf16"], help="* fp32, tf32 or bf16")
    p.add_argument("--capacity-factor", type=_list(float), default=[0.0], help="* 0 is dropless")
    p.add_argument("--no-renorm", action="store_true", help="keep the raw top-k probabilities as combine weights")
    p.add_argument("--route", choices=("softmax", "skew"), default="softmax",
                   help="skew: every token picks experts 0..k-1")
    p.add_argument("--seed", type=int, default=1, help="seed of the random weights and tokens")
    p.add_argument("--iters", type=int, default=20, help="timed forwards per config")
    p.add_argument("--warmup", type=int, default=5, help="untimed forwards per config before timing")
    p.add_argument("--queue", action="store_true",
                   help="time the forwards back to back after one barrier (the first not counted), each between "
                        "its own CUDA events, as `moerun bench --queue` does, instead of each after a barrier")
    p.add_argument("--check", action="store_true",
                   help="verify the last forward against float64 on a few tokens per rank; exit 1 on failure")
    p.add_argument("--check-tokens", type=int, default=16, help="tokens per rank that --check verifies")
    p.add_argument("--json", default="", help="write results as JSON to this file (rank 0)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="",
                   help="cuda (NCCL) or cpu (gloo, for testing); default cuda when available")
    p.add_argument("--grouped-mm", choices=("auto", "on", "off"), default="auto",
                   help="expert GEMMs with torch._grouped_mm: auto = bf16 on CUDA when shapes allow; "
                   "off = a per-expert loop")
    p.add_argument("--timeout", type=float, default=300, help="seconds a collective may wait for the others")
    p.add_argument("--from-dump", default="",
                   help="take the config, tokens and weights of a `moerun bench --dump DIR` run (one config, "
                   "same rank count) and compare the output with moerun's out.npy; the shape flags are ignored")
    a = p.parse_args(argv)
    if a.iters < 1:
        p.error(f"--iters {a.iters}: must be at least 1")
    if a.warmup < 0:
        p.error(f"--warmup {a.warmup}: must not be negative")
    if a.check_tokens < 1:
        p.error(f"--check-tokens {a.check_tokens}: must be at least 1")
    return a


def configs(a):
    """The cartesian product of the lists, in moerun bench's order (tokens fastest)."""
    max_t = max(a.tokens)
    out = []
    for dt, ffn, h, i, e, k, cf, t in itertools.product(
        a.dtype, a.ffn, a.hidden, a.ffn_hidden, a.experts, a.topk, a.capacity_factor, a.tokens
    ):
        out.append({
            "tokens": t, "max_tokens": max_t, "hidden": h, "ffn_hidden": i, "experts": e, "topk": k,
            "ffn": ffn, "dtype": dt, "capacity_factor": cf, "renormalize": not a.no_renorm,
            "route": a.route, "seed": a.seed,
        })
    return out


def validate(c, world):
    errs = []
    if c["tokens"] < 0:
        errs.append(f"tokens {c['tokens']}: must not be negative")
    if c["hidden"] < 1:
        errs.append(f"hidden {c['hidden']}: must be positive")
    if c["ffn_hidden"] < 1:
        errs.append(f"ffn-hidden {c['ffn_hidden']}: must be positive")
    if c["experts"] < 1:
        errs.append(f"experts {c['experts']}: must be positive")
    elif c["experts"] % world:
        errs.append(f"experts {c['experts']}: must be a multiple of the number of ranks {world}")
    if c["topk"] < 1 or c["topk"] > max(c["experts"], 1):
        errs.append(f"topk {c['topk']}: must be in 1..experts ({c['experts']})")
    if not (c["capacity_factor"] >= 0) or math.isinf(c["capacity_factor"]):
        errs.append(f"capacity-factor {c['capacity_factor']}: must be a finite number >= 0")
    return errs


def capacity(c, t):
    """Pairs one source rank may send to one expert: ceil(cf*T*k/E), -1 dropless."""
    if c["capacity_factor"] == 0:
        return -1
    return int(math.ceil(c["capacity_factor"] * t * c["topk"] / c["experts"]))


def flops(c):
    """This rank's arithmetic for one forward, as moerun bench counts it."""
    mats = 3 if c["ffn"] == "swiglu" else 2
    t, h, i = c["tokens"], c["hidden"], c["ffn_hidden"]
    return t * c["topk"] * 2 * mats * h * i + 2 * t * h * c["experts"]


def percentile(v, p):
    """moerun's rule: the ceil(p*n)-th smallest value."""
    if not v:
        return float("nan")
    s = sorted(v)
    return s[max(0, min(int(math.ceil(p * len(s))) - 1, len(s) - 1))]


def storage_dtype(dt):
    return torch.bfloat16 if dt == "bf16" else torch.float32


def _seed(seed, kind, a=0):
    # A distinct, reproducible generator seed per (seed, tensor kind, index).
    return (seed * 1_000_003 + kind * 65_537 + a * 7_919 + 12_345) % (2**62)


def _uniform(shape, seed, device, scale):
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return (torch.rand(shape, generator=g, device=device, dtype=torch.float32) * 2 - 1) * scale


# -------------------------------------------------------------------- layer


class Layer:
    """One rank's part of the layer: the replicated gate and its E/W experts.

    Expert weights are stored as nn.Linear stores them ([out, in], so that
    x @ W1 of DESIGN.md is x @ w1[e].T), stacked per local expert; the grouped
    GEMMs take transposed views, as torchtitan's grouped experts do.
    """

    def __init__(self, c, rank, world, device, grouped_mode, dump=None):
        self.c, self.rank, self.world, self.device = c, rank, world, device
        self.el = c["experts"] // world
        self.dtype = storage_dtype(c["dtype"])
        self.x_dump, self.dump_dir = None, dump
        if dump is not None:
            self._from_dump(dump)
        else:
            self._generate()
        self.grouped = self._use_grouped(grouped_mode)
        self.gate_out_dtype = self._gate_out_dtype_ok()
        self.arange_el = torch.arange(self.el, device=device)
        self.arange_wel = torch.arange(world * self.el, device=device) % self.el
        self.last = None  # routing and split sizes of the last forward

    def _generate(self):
        c, device, dt, seed = self.c, self.device, self.dtype, self.c["seed"]
        h, i, e = c["hidden"], c["ffn_hidden"], c["experts"]
        # Random (never zero) weights with the scales of internal/datagen,
        # generated in fp32 and rounded once to the storage type.
        self.gate = _uniform((h, e), _seed(seed, 2), device, GATE_BOOST / math.sqrt(h)).to(dt)
        self.gate_f32 = self.gate.float()
        first = self.rank * self.el
        swiglu = c["ffn"] == "swiglu"
        w1, w2, b1, b2 = [], [], [], []
        for g in range(first, first + self.el):
            if swiglu:  # [Wg_e | Wu_e] concatenated along the output: one GEMM for both
                wg = _uniform((i, h), _seed(seed, 3, g), device, 1 / math.sqrt(h))
                wu = _uniform((i, h), _seed(seed, 7, g), device, 1 / math.sqrt(h))
                w1.append(torch.cat([wg, wu]).to(dt))
            else:
                w1.append(_uniform((i, h), _seed(seed, 3, g), device, 1 / math.sqrt(h)).to(dt))
                b1.append(_uniform((i,), _seed(seed, 4, g), device, BIAS_SCALE).to(dt))
                b2.append(_uniform((h,), _seed(seed, 6, g), device, BIAS_SCALE).to(dt))
            w2.append(_uniform((h, i), _seed(seed, 5, g), device, 1 / math.sqrt(i)).to(dt))
        self.w1 = torch.stack(w1)  # [El, I or 2I, H]
        self.w2 = torch.stack(w2)  # [El, H, I]
        self.b1 = torch.stack(b1) if b1 else None  # [El, I]
        self.b2 = torch.stack(b2) if b2 else None  # [El, H]
        del w1, w2, b1, b2

    def _from_dump(self, d):
        """Weights and tokens from a moerun dump folder (DESIGN.md section 4c):
        float32 files holding the exact values moerun used; x @ W layout."""
        dt, dev = self.dtype, self.device

        def ld(name, transpose=False):
            t = torch.from_numpy(load_npy(os.path.join(d, name)))
            if transpose:
                t = t.transpose(-2, -1)
            return t.contiguous().to(device=dev, dtype=dt)

        self.gate = ld("gate.npy")
        self.gate_f32 = self.gate.float()
        if self.c["ffn"] == "swiglu":
            self.w1 = torch.cat([ld("wg.npy", True), ld("wu.npy", True)], dim=1)  # [El, 2I, H]
            self.w2 = ld("wd.npy", True)
            self.b1 = self.b2 = None
        else:
            self.w1, self.w2 = ld("w1.npy", True), ld("w2.npy", True)
            self.b1, self.b2 = ld("b1.npy"), ld("b2.npy")
        self.x_dump = ld("x.npy")

    def _use_grouped(self, mode):
        if mode == "off" or not hasattr(torch, "_grouped_mm"):
            if mode == "on":
                raise UsageError("--grouped-mm on: this torch has no torch._grouped_mm")
            return False
        # 16-byte aligned strides: H and I multiples of 16 bytes in the storage type.
        align = 16 // self.w1.element_size()
        shapes_ok = self.c["hidden"] % align == 0 and self.c["ffn_hidden"] % align == 0
        if mode == "on":
            if not shapes_ok:
                raise UsageError(f"--grouped-mm on: hidden and ffn-hidden must be multiples of {align}")
            return True
        return self.device.type == "cuda" and self.c["dtype"] == "bf16" and shapes_ok

    def _gate_out_dtype_ok(self):
        # bf16 gate with fp32 output and accumulate in one GEMM where torch
        # has mm(..., out_dtype=) for this device; else widen x.
        if self.dtype != torch.bfloat16:
            return False
        try:
            a = torch.ones(2, 2, dtype=self.dtype, device=self.device)
            return torch.mm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            return False

    def tokens(self, t):
        c = self.c
        if self.x_dump is not None:
            return self.x_dump
        x = _uniform((t, c["hidden"]), _seed(c["seed"], 1, self.rank), self.device, 1.0)
        return x.to(self.dtype)

    def gate_logits(self, x):
        if self.dtype == torch.float32:
            return x @ self.gate
        if self.gate_out_dtype:
            return torch.mm(x, self.gate, out_dtype=torch.float32)
        return x.float() @ self.gate_f32

    def forward(self, x):
        c, w, el, dev = self.c, self.world, self.el, self.device
        t, h, k, e = x.shape[0], c["hidden"], c["topk"], c["experts"]

        # 1. Gate: fp32 logits, fp32 softmax, top-k, renormalise.
        probs = torch.softmax(self.gate_logits(x), dim=-1)
        if c["route"] == "skew":
            topi = torch.arange(k, device=dev).expand(t, k)
            topw = probs[:, :k]
        else:
            topw, topi = torch.topk(probs, k, dim=-1)
        if c["renormalize"]:
            topw = topw / topw.sum(dim=-1, keepdim=True)

        # 2. Permutation: rows sorted by expert, token order kept inside each.
        flat = topi.reshape(-1)
        order = torch.argsort(flat, stable=True)
        # (not bincount: on CUDA it syncs with the host to size its output)
        counts = flat.new_zeros(e).scatter_add_(0, flat, torch.ones_like(flat))
        cap = capacity(c, t)
        if cap >= 0:
            # Keep the first `cap` pairs of each expert (token order): the
            # dropped ones move to the end of the order and are cut below.
            sorted_e = flat[order]
            start = torch.cumsum(counts, 0) - counts
            pos = torch.arange(t * k, device=dev) - start[sorted_e]
            key = torch.where(pos < cap, sorted_e, e)
            order = order[torch.argsort(key, stable=True)]
            counts = counts.clamp(max=cap)

        # 3. Per-(rank, expert) counts, and the one host sync for split sizes.
        recv_counts = torch.empty_like(counts)  # [W*El]: source rank s, local expert l at s*El + l
        dist.all_to_all_single(recv_counts, counts)
        sizes = torch.cat([counts, recv_counts]).tolist()
        send_c, recv_c = sizes[:e], sizes[e:]
        send_splits = [sum(send_c[r * el:(r + 1) * el]) for r in range(w)]
        recv_splits = [sum(recv_c[r * el:(r + 1) * el]) for r in range(w)]
        s_rows, r_rows = sum(send_splits), sum(recv_splits)

        # 4. Dispatch.
        order = order[:s_rows]
        src_tok = torch.div(order, k, rounding_mode="floor")
        send = x.index_select(0, src_tok)
        recv = x.new_empty(r_rows, h)
        dist.all_to_all_single(recv, send, recv_splits, send_splits)

        # 5. Expert FFN on rows grouped by local expert (they arrive grouped
        # by source rank, then by expert).
        per_expert = [sum(recv_c[r * el + j] for r in range(w)) for j in range(el)]
        perm = None
        if w > 1 and el > 1 and r_rows > 0:
            row_exp = torch.repeat_interleave(self.arange_wel, recv_counts, output_size=r_rows)
            perm = torch.argsort(row_exp, stable=True)
            rows = recv.index_select(0, perm)
        else:
            rows = recv
        expert_counts = recv_counts.view(w, el).sum(0)
        y = self.experts(rows, per_expert, expert_counts, r_rows)
        if perm is not None:
            y = torch.empty_like(y).index_copy_(0, perm, y)

        # 6. Return.
        back = x.new_empty(s_rows, h)
        dist.all_to_all_single(back, y, send_splits, recv_splits)

        # 7. Combine: weights applied in fp32, rounded once, index_add_.
        wts = topw.reshape(-1).index_select(0, order)
        out = torch.zeros(t, h, dtype=x.dtype, device=dev)
        out.index_add_(0, src_tok, (back.float() * wts.unsqueeze(1)).to(x.dtype))

        self.last = {"topi": topi, "send": send_splits, "recv": recv_splits}
        return out

    def _act(self, a, n_inner):
        f = self.c["ffn"]
        if f == "relu":
            return torch.relu_(a)
        if f == "gelu":
            return F.gelu(a, approximate="tanh")
        g, u = a[:, :n_inner], a[:, n_inner:]
        return F.silu(g) * u

    def experts(self, rows, per_expert, expert_counts, r_rows):
        i, h = self.c["ffn_hidden"], self.c["hidden"]
        if r_rows == 0:
            return rows.new_empty(0, h)
        if self.grouped:
            offs = torch.cumsum(expert_counts, 0, dtype=torch.int32)
            a = torch._grouped_mm(rows, self.w1.transpose(-2, -1), offs)
            if self.b1 is not None:
                eid = torch.repeat_interleave(self.arange_el, expert_counts, output_size=r_rows)
                a = a + self.b1.index_select(0, eid)
            a = self._act(a, i)
            y = torch._grouped_mm(a, self.w2.transpose(-2, -1), offs)
            if self.b2 is not None:
                y = y + self.b2.index_select(0, eid)
            return y
        y = rows.new_empty(r_rows, h)
        s = 0
        for j, n in enumerate(per_expert):
            if n == 0:
                continue
            xs = rows[s:s + n]
            if self.b1 is not None:
                a = torch.addmm(self.b1[j], xs, self.w1[j].t())
                torch.addmm(self.b2[j], self._act(a, i), self.w2[j].t(), out=y[s:s + n])
            else:
                a = xs @ self.w1[j].t()
                torch.mm(self._act(a, i), self.w2[j].t(), out=y[s:s + n])
            s += n
        return y

    def bytes_put(self):
        """Bytes this rank sent to other ranks in the last forward (dispatch + return)."""
        if self.last is None:
            return 0
        me = self.rank
        rows = sum(self.last["send"]) - self.last["send"][me] + sum(self.last["recv"]) - self.last["recv"][me]
        return rows * self.c["hidden"] * self.w1.element_size()

    # ------------------------------------------------------------ checking

    def _ffn64(self, j, xs):
        """Local expert j on float64 rows xs, from the stored (rounded) weights."""
        i = self.c["ffn_hidden"]
        w1 = self.w1[j].double()
        a = xs @ w1.t()
        if self.c["ffn"] == "swiglu":
            g, u = a[:, :i], a[:, i:]
            act = g / (1 + torch.exp(-g)) * u
        else:
            a = a + self.b1[j].double()
            if self.c["ffn"] == "gelu":
                act = 0.5 * a * (1 + torch.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
            else:
                act = torch.clamp(a, min=0)
        y = act @ self.w2[j].double().t()
        if self.b2 is not None:
            y = y + self.b2[j].double()
        return y

    def check(self, x, out, n_check):
        """DESIGN.md section 1 item 5 on n_check evenly spaced tokens of this
        rank: routing against float64 beyond the tie gap, output against a
        float64 FFN and combine computed with this run's expert choice (each
        expert evaluated by its owner), capacity recomputed independently
        from the choice in token order. Collective: every rank calls it.
        Returns (rel_err, wrong, route_mismatch, nan, failures)."""
        c, w, dev = self.c, self.world, self.device
        t, h, k, e = x.shape[0], c["hidden"], c["topk"], c["experts"]
        delta, tol = TOLERANCE[c["dtype"]]
        n = min(n_check, t)
        if n == 0:  # T is the same on every rank: all skip alike
            return 0.0, 0, 0, 0, []
        if n >= t:
            idx = list(range(t))
        elif n == 1:
            idx = [0]
        else:
            idx = [s * (t - 1) // (n - 1) for s in range(n)]
        idx_t = torch.tensor(idx, device=dev)
        topi = self.last["topi"]
        got = topi.index_select(0, idx_t).long()  # [n, k]
        xs = x.index_select(0, idx_t).double()

        # Reference routing in float64; ties to the lower expert index.
        p = torch.softmax(xs @ self.gate.double(), dim=-1)
        vals, ref_ids = torch.sort(p, dim=-1, descending=True, stable=True)
        ref_ids = ref_ids[:, :k]
        mismatch = 0
        got_l, ref_l = got.tolist(), ref_ids.tolist()
        gaps = (vals[:, k - 1] - vals[:, k]).tolist() if k < e else [math.inf] * n
        for s in range(n):
            if c["route"] == "skew":
                mismatch += got_l[s] != list(range(k))
            elif gaps[s] > delta:
                mismatch += sorted(got_l[s]) != sorted(ref_l[s])
        bad_ids = sum(1 for r in got_l if len(set(r)) != k or min(r) < 0 or max(r) >= e)

        # Combine weights for this run's ids, in float64; capacity drops
        # recomputed from the whole routing with a running count per expert.
        wts = p.gather(1, got)
        if c["renormalize"]:
            wts = wts / wts.sum(dim=-1, keepdim=True)
        cap = capacity(c, t)
        if cap >= 0:
            flat = topi.reshape(-1).long().cpu()
            seen = torch.nn.functional.one_hot(flat, e).cumsum(0)
            pos = seen.gather(1, flat.unsqueeze(1)).squeeze(1) - 1
            kept = (pos < cap).view(t, k).to(dev).index_select(0, idx_t)
            wts = torch.where(kept, wts, torch.zeros_like(wts))

        # Every rank evaluates its own experts for everyone's sampled tokens.
        xs_all = [torch.empty_like(xs) for _ in range(w)]
        got_all = [torch.empty_like(got) for _ in range(w)]
        wts_all = [torch.empty_like(wts) for _ in range(w)]
        dist.all_gather(xs_all, xs)
        dist.all_gather(got_all, got)
        dist.all_gather(wts_all, wts)
        xs_all, got_all, wts_all = torch.cat(xs_all), torch.cat(got_all), torch.cat(wts_all)
        ref = torch.zeros(w * n, h, dtype=torch.float64, device=dev)
        first = self.rank * self.el
        for j in range(self.el):
            hit = (got_all == first + j) & (wts_all != 0)
            rows, js = hit.nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = self._ffn64(j, xs_all.index_select(0, rows))
            ref.index_add_(0, rows, y * wts_all[rows, js].unsqueeze(1))
        dist.all_reduce(ref)
        ref = ref[self.rank * n:(self.rank + 1) * n]

        o = out.index_select(0, idx_t).double()
        nan = int((~torch.isfinite(o)).sum())
        diff2 = float(((o - ref) ** 2).sum())
        ref2 = float((ref ** 2).sum())
        rms = math.sqrt(ref2 / ref.numel())
        if diff2 == 0:
            rel = 0.0
        elif ref2 == 0 or math.isnan(diff2):
            rel = math.inf if not math.isnan(diff2) else math.nan
        else:
            rel = math.sqrt(diff2 / ref2)
        wrong = int((~((o - ref).abs() <= 4 * tol * (ref.abs() + rms))).sum())
        fails = []
        if bad_ids:
            fails.append(f"routing: {bad_ids} tokens have out-of-range or repeated expert ids")
        if nan:
            fails.append(f"output: {nan} elements are NaN or Inf")
        if not rel < tol:
            fails.append(f"output: relative error {rel:.3g} exceeds {tol:.0e} ({c['dtype']})")
        if wrong:
            fails.append(f"output: {wrong} of {o.numel()} elements differ by more than 4*tol*(|ref| + rms(ref))")
        if mismatch:
            fails.append(f"routing: {mismatch} of {n} tokens chose other experts than float64 "
                         f"beyond the tie gap {delta:.0e}")
        return rel, wrong, mismatch, nan, fails


def load_npy(path):
    try:
        import numpy as np
    except ImportError:
        raise UsageError("--from-dump needs numpy") from None
    return np.ascontiguousarray(np.load(path))


# ------------------------------------------------------------------ running


def setup(a):
    """Initialise the process group; works under torchrun or as one process."""
    if "RANK" not in os.environ:  # a plain `python3 moe_baseline.py`: world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev_kind = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    timeout = datetime.timedelta(seconds=a.timeout)
    if dev_kind == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is visible")
        n = torch.cuda.device_count()
        device = torch.device("cuda", local % n if n > 1 else 0)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device, timeout=timeout)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=timeout)
    return device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reduce_max(values, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def reduce_sum(values, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def count_host_syncs(layer, x, device):
    """Synchronising CUDA operations in one forward, as torch's sync debug
    mode reports them (the design has one: the split sizes); None on CPU."""
    if device.type != "cuda" or not hasattr(torch.cuda, "set_sync_debug_mode"):
        return None
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            layer.forward(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(device)
    msgs = [str(m.message) for m in got if "synchroniz" in str(m.message).lower()]
    if msgs and layer.rank == 0 and len(msgs) > 1:
        print(f"# note: {len(msgs)} host syncs in one forward; first: {msgs[0].splitlines()[0][:160]}", flush=True)
    return len(msgs)


def run_config(c, a, rank, world, device, layer):
    """Times one config; returns the row (identical on every rank)."""
    if c["dtype"] == "tf32":
        torch.set_float32_matmul_precision("high")
    else:
        torch.set_float32_matmul_precision("highest")
    x = layer.tokens(c["tokens"])
    with torch.inference_mode():
        for _ in range(a.warmup):
            layer.forward(x)
        sync(device)
        syncs = count_host_syncs(layer, x, device)
        lat = []
        cuda = device.type == "cuda"
        if cuda:
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if a.queue and cuda:
            # Back to back after one barrier; the first forward absorbs the
            # ranks' start skew and is not counted (moerun bench --queue).
            evs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                   for _ in range(a.iters + 1)]
            dist.barrier()
            sync(device)
            for e0, e1 in evs:
                e0.record()
                out = layer.forward(x)
                e1.record()
            sync(device)
            lat = [e0.elapsed_time(e1) * 1e3 for e0, e1 in evs[1:]]
        for _ in range(0 if a.queue and cuda else a.iters):
            dist.barrier()
            sync(device)
            if cuda:
                ev0.record()
                out = layer.forward(x)
                ev1.record()
                ev1.synchronize()
                lat.append(ev0.elapsed_time(ev1) * 1e3)
            else:
                t0 = time.perf_counter()
                out = layer.forward(x)
                lat.append((time.perf_counter() - t0) * 1e6)
        lat = reduce_max(lat, device)
        # Back-to-back: no barrier between forwards.
        dist.barrier()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(a.iters):
            out = layer.forward(x)
        sync(device)
        b2b = (time.perf_counter() - t0) * 1e6 / a.iters
        out = layer.forward(x)  # the forward that --check verifies
        sync(device)
        b2b, put = reduce_max([b2b, layer.bytes_put()], device)
        tok, fl = reduce_sum([c["tokens"], flops(c)], device)

        p50, p99 = percentile(lat, 0.50), percentile(lat, 0.99)
        row = {"config": c, "latency_us_p50": p50, "latency_us_p99": p99, "latency_us_b2b": b2b,
               "tokens_per_s": 0.0, "tflops": 0.0, "bytes_put": int(put), "put_gb_per_s": 0.0,
               "sm_util": None, "rel_err": None, "wrong": None, "route_mismatch": None, "verified": None,
               "expert_gemm": "grouped_mm" if layer.grouped else "per-expert loop", "host_syncs": syncs}
        if p50 > 0:
            sec = p50 * 1e-6
            row["tokens_per_s"] = tok / sec
            row["tflops"] = fl / world / sec / 1e12
            row["put_gb_per_s"] = put / sec / 1e9
        if a.check:
            rel, wrong, mism, _, fails = layer.check(x, out, a.check_tokens)
            relmax, failed = reduce_max([rel if not math.isnan(rel) else math.inf, 1.0 if fails else 0.0], device)
            wsum, msum = reduce_sum([wrong, mism], device)
            row["rel_err"] = relmax if math.isfinite(relmax) else None
            row["wrong"], row["route_mismatch"] = int(wsum), int(msum)
            row["verified"] = failed == 0
            for f in fails:
                print(f"moe_baseline: rank {rank}: FAIL {c_str(c)}: {f}", file=sys.stderr, flush=True)
        if layer.dump_dir:
            compare_dump(row, layer, out, rank, device)
    return row


def compare_dump(row, layer, out, rank, device):
    """Compares this run's output with moerun's out.npy from the same inputs,
    on the tokens where both chose the same experts (elsewhere a legal
    tie-break makes them differ). Adds dump_rel_err and dump_route_diff to
    the row; a difference beyond the mode's tolerance fails the row."""
    c = layer.c
    _, tol = TOLERANCE[c["dtype"]]
    theirs = torch.from_numpy(load_npy(os.path.join(layer.dump_dir, "out.npy"))).double().to(device)
    ids = torch.from_numpy(load_npy(os.path.join(layer.dump_dir, "topk_idx.npy"))).long().to(device)
    mine = layer.last["topi"].long()
    same = (mine.sort(dim=1).values == ids.sort(dim=1).values).all(dim=1)
    o, t = out.double()[same], theirs[same]
    d2, r2 = float(((o - t) ** 2).sum()), float((t ** 2).sum())
    route_diff = int((~same).sum())
    d2, r2, route_diff = reduce_sum([d2, r2, route_diff], device)
    rel = math.sqrt(d2 / r2) if r2 > 0 else (0.0 if d2 == 0 else math.inf)
    row["dump_rel_err"], row["dump_route_diff"] = rel, int(route_diff)
    ok = rel < tol
    if rank == 0:
        print(f"# from-dump: output vs moerun's out.npy: relative difference {rel:.3g} (bound {tol:.0e}) on the "
              f"tokens routed alike; {int(route_diff)} tokens routed differently (ties): {'pass' if ok else 'FAIL'}",
              flush=True)
    if not ok:
        row["verified"] = False


def c_str(c):
    return (f"T={c['tokens']} H={c['hidden']} I={c['ffn_hidden']} E={c['experts']} k={c['topk']} "
            f"ffn={c['ffn']} dtype={c['dtype']} cf={c['capacity_factor']:g}")


HEADER = ("#{:>6} {:>7} {:>6} {:>7} {:>7} {:>4} {:>6} {:>5} {:>4} {:>10} {:>10} {:>10} {:>12} {:>8} "
          "{:>9} {:>9} {:>6} {:>6} {:>5}  {}")


def print_header(world, card, a, info):
    print(f"# moe_baseline (eager PyTorch)  torch {torch.__version__}  {info}  ranks {world}  card {card}")
    print(f"# iters {a.iters}  warmup {a.warmup}  check {'on' if a.check else 'off'}  seed {a.seed}  "
          "latency: median/p99 over iters of the slowest rank\n#")
    print(HEADER.format("ranks", "tokens", "hidden", "ffn_hid", "experts", "topk", "ffn", "dtype", "cf",
                        "p50(us)", "p99(us)", "b2b(us)", "tokens/s", "TFLOP/s", "put(MB)", "rel_err",
                        "wrong", "route", "ok", "expert GEMM"), flush=True)


def print_row(world, r):
    c = r["config"]
    rel, wrong, route, ok = "-", "-", "-", "-"
    if r["verified"] is not None:
        rel = f"{r['rel_err']:.2e}" if r["rel_err"] is not None else "inf"
        wrong, route = str(r["wrong"]), str(r["route_mismatch"])
        ok = "pass" if r["verified"] else "FAIL"
    print(f" {world:6d} {c['tokens']:7d} {c['hidden']:6d} {c['ffn_hidden']:7d} {c['experts']:7d} {c['topk']:4d} "
          f"{c['ffn']:>6} {c['dtype']:>5} {c['capacity_factor']:4g} {r['latency_us_p50']:10.1f} "
          f"{r['latency_us_p99']:10.1f} {r['latency_us_b2b']:10.1f} {r['tokens_per_s']:12.4g} "
          f"{r['tflops']:8.4g} {r['bytes_put'] / 1e6:9.2f} {rel:>9} {wrong:>6} {route:>6} {ok:>5}  "
          f"{r['expert_gemm']}", flush=True)


def main(argv=None):
    a = parse_args(argv)
    try:
        device = setup(a)
    except UsageError as e:
        print(f"moe_baseline: {e}", file=sys.stderr)
        return 2
    rank, world = dist.get_rank(), dist.get_world_size()
    cfgs = configs(a)
    dump = None
    if a.from_dump:
        dump = os.path.join(a.from_dump, f"rank{rank:03d}")
        try:
            with open(os.path.join(dump, "meta.json")) as f:
                meta = json.load(f)
        except OSError as e:
            print(f"moe_baseline: --from-dump: {e} (one config, dumped by the same number of ranks)", file=sys.stderr)
            dist.destroy_process_group()
            return 2
        if meta["world"] != world:
            if rank == 0:
                print(f"moe_baseline: --from-dump: the dump has {meta['world']} ranks, this run {world}",
                      file=sys.stderr)
            dist.destroy_process_group()
            return 2
        cfgs = [{kk: meta["config"][kk] for kk in configs(a)[0]}]
    errs = [f"config {c_str(c)}: {m}" for c in cfgs for m in validate(c, world)]
    if errs:
        if rank == 0:
            print("moe_baseline: " + "\n  ".join(errs), file=sys.stderr)
        dist.destroy_process_group()
        return 2
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    comm = dist.get_backend()
    info = f"{comm}"
    if device.type == "cuda" and hasattr(torch.cuda, "nccl"):
        try:
            info += " " + ".".join(str(v) for v in torch.cuda.nccl.version())
        except Exception:  # noqa: BLE001 - version only decorates the header
            pass
    if rank == 0:
        print_header(world, card, a, info)
    rows, failed, layer, key = [], 0, None, None
    code = 0
    try:
        for c in cfgs:
            k = {kk: c[kk] for kk in ("hidden", "ffn_hidden", "experts", "topk", "ffn", "dtype", "seed")}
            if layer is None or key != k:
                layer = None  # free the last config's weights first
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                layer = Layer(c, rank, world, device, a.grouped_mm, dump)
                key = k
            else:
                layer.c = c
            row = run_config(c, a, rank, world, device, layer)
            rows.append(row)
            if row["verified"] is False:
                failed += 1
            if rank == 0:
                print_row(world, row)
    except UsageError as e:
        if rank == 0:
            print(f"moe_baseline: {e}", file=sys.stderr)
        code = 2
    if code == 0 and rank == 0:
        checked = sum(1 for r in rows if r["verified"] is not None)
        print(f"#\n# {len(rows)} configs, {checked} checked, {failed} failed: {'FAILED' if failed else 'OK'}",
              flush=True)
        if a.json:
            rep = {"version": f"pytorch-eager torch {torch.__version__}", "backend": "pytorch", "world": world,
                   "card": card, "comm": info, "results": rows}
            with open(a.json, "w") as f:
                json.dump(rep, f, indent=2)
                f.write("\n")
    dist.destroy_process_group()
    if code:
        return code
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
