#!/usr/bin/env python3
"""moe_torch.py: moerun's GPU path driven from PyTorch through the C ABI (ctypes).

Every rank takes its GPU (cuda:<local rank>) before it opens the runtime,
adds four MoE layers whose weights are made here with numpy (every rank makes
the same and passes its own experts with moerun_add_layer), and runs them
chained for several steps on PyTorch CUDA float32 tensors passed by device
pointer on PyTorch's current stream: no host copies on moerun's path and no
synchronisation between layers, as a driver would run them. Token counts
differ between ranks and steps (0 and max-tokens included); each output
tensor is poisoned with NaN before its forward. Each output is then compared
with PyTorch's own float64 computation of the same layer from the same
weights, by the rule of DESIGN.md section 1 item 5 (internal/reference's
Check): relative error below the dtype's tol, no element beyond
4*tol*(|ref| + rms(ref)), no NaN; tokens whose k-th and (k+1)-th gate
probabilities are within the tie gap are left out of the comparison (a
different choice there is a legal tie-break, and moerun gives no routing for
device forwards). On the first and last step every host-weight layer also
runs the same tokens as a host forward, which moerun_verify checks against
the library's float64 reference and whose routing (moerun_routing) must
match PyTorch's.

Run it under mpirun, one rank per GPU (Hopper, one node):

  mpirun -np 2 --bind-to none python3 examples/python/moe_torch.py --lib build/libmoerun.so --dtype fp32
  mpirun -np 2 --bind-to none python3 examples/python/moe_torch.py --lib build/libmoerun.so --dtype tf32
  ... --nccl             # NCCL all_reduces on another stream between forwards
  ... --device-weights   # the last layer's weights from CUDA tensors (moerun_add_layer_device)
  ... --backend cpu      # the same checks on the CPU backend, with CPU tensors (no GPU needed)

(python3 examples/python/moe_ctypes.py --backend gpu ... runs this too.)
scripts/python-gpu-check.sh runs the GPU cases with a pass/fail table.

The library must find the kernel: build it with -tags "mpi cubin", or set
MOERUN_CUBIN (or pass --cubin). moerun reads its environment variables once,
when the library is loaded, from the environment the process started with:
setting os.environ afterwards does not reach it (this script re-executes
itself when it must change one). NVSHMEM: PyTorch's import loads the
nvidia-nvshmem wheel's libnvshmem_host.so.3; unless MOERUN_NVSHMEM_LIB is
set, this script makes moerun load that same file, so that the process holds
one copy (a different file named by MOERUN_NVSHMEM_LIB is an error here).

Every dtype: in bf16 mode the library converts the float32 tokens to bf16 on
the device (the same rounding as its host path); outputs are float32 always.
"""

import argparse
import contextlib
import ctypes
import datetime
import math
import os
import sys

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import moe_ctypes as abi  # noqa: E402  (the mirrors of capi/moerun.h)

H, E, K, MAXT = 256, 8, 2, 256
# (ffn, ffn_hidden, renormalize, gain of W2): the first and widest layer
# sizes the runtime's buffers; the gains keep each layer's output at an RMS
# near 0.5 for inputs of that size, so that chained layers stay well scaled.
LAYERS = [(abi.FFN_SWIGLU, 512, True, 3.5), (abi.FFN_RELU, 512, False, 2.9),
          (abi.FFN_GELU, 256, True, 2.1), (abi.FFN_SWIGLU, 384, False, 3.4)]
TOKENS = [0, 1, 37, MAXT, 128, MAXT - 1]  # rank r, step s: TOKENS[(s + 2r) % 6]
# DESIGN.md section 1 item 5 (internal/reference ToleranceFor): (tie gap, tol).
TOLERANCE = {"fp32": (1e-5, 1e-5), "tf32": (1e-3, 5e-3), "bf16": (1e-2, 2e-2)}
DTYPES = {"fp32": abi.DTYPE_FP32, "tf32": abi.DTYPE_TF32, "bf16": abi.DTYPE_BF16}
FFN_NAMES = {abi.FFN_RELU: "relu", abi.FFN_GELU: "gelu", abi.FFN_SWIGLU: "swiglu"}
NVSHMEM_HOST = "libnvshmem_host.so.3"
REEXEC = "MOERUN_EXAMPLE_REEXEC"  # set in the environment of the re-executed process


class Failed(RuntimeError):
    pass


# ------------------------------------------------------------ the layers

def make_layer(seed, ffn, inner, renormalize, gain):
    """One layer's weights in moerun's layouts (numpy float32): gate [H, E];
    W1, Wu [E, H, I]; W2 [E, I, H]; B1 [E, I]; B2 [E, H]."""
    rng = np.random.default_rng(seed)
    u = lambda shape, scale: (rng.uniform(-1, 1, shape) * scale).astype(np.float32)  # noqa: E731
    w = {"ffn": ffn, "inner": inner, "renormalize": renormalize,
         "gate": u((H, E), 4 / math.sqrt(H)), "w1": u((E, H, inner), math.sqrt(3 / H)),
         "w2": u((E, inner, H), gain * math.sqrt(3 / inner)), "wu": None, "b1": None, "b2": None}
    if ffn == abi.FFN_SWIGLU:
        w["wu"] = u((E, H, inner), math.sqrt(3 / H))
    else:
        w["b1"], w["b2"] = u((E, inner), 0.1), u((E, H), 0.1 * gain)
    return w


def config(w, dtype):
    return abi.Config(hidden=H, ffn_hidden=w["inner"], experts=E, topk=K, max_tokens=MAXT, ffn=w["ffn"], dtype=dtype,
                      renormalize=int(w["renormalize"]), capacity_factor=0.0, seed=0)


class TorchLayer:
    """PyTorch's own float64 computation of one layer, from the same weights
    (held on the device). In bf16 mode it computes, as DESIGN.md section 1
    defines the mode, from the values the layer stores: tokens and expert
    weights rounded to bf16 once (round to nearest even), the gate and the
    biases in float32 (the library keeps the gate exact as a sum of bf16
    pieces)."""

    def __init__(self, torch, w, dev, bf16=False):
        def t(a, rounded=False):
            if a is None:
                return None
            v = torch.from_numpy(a).to(dev)
            return (v.to(torch.bfloat16) if rounded else v).to(torch.float64)
        self.torch, self.ffn, self.renormalize, self.bf16 = torch, w["ffn"], w["renormalize"], bf16
        self.gate = t(w["gate"])
        self.w1, self.wu, self.w2 = t(w["w1"], bf16), t(w["wu"], bf16), t(w["w2"], bf16)
        self.b1 = None if w["b1"] is None else t(w["b1"]).unsqueeze(1)  # [E, 1, I]
        self.b2 = None if w["b2"] is None else t(w["b2"]).unsqueeze(1)  # [E, 1, H]

    def __call__(self, x):
        """For float32 tokens x [T, H]: the output [T, H] (float64), the top-k
        ids [T, K] (descending probability, ties to the lower index) and each
        token's gap between its k-th and (k+1)-th probability [T]."""
        torch = self.torch
        x = (x.to(torch.bfloat16) if self.bf16 else x).double()
        t = x.shape[0]
        p = torch.softmax(x @ self.gate, dim=1)
        sp, si = torch.sort(p, dim=1, descending=True, stable=True)
        ids = si[:, :K]
        if K < E:
            gap = sp[:, K - 1] - sp[:, K]
        else:
            gap = torch.full((t,), math.inf, dtype=torch.float64, device=x.device)
        cw = torch.gather(p, 1, ids)
        if self.renormalize:
            cw = cw / cw.sum(dim=1, keepdim=True)
        # Every expert on every token (small shapes), then the combine picks.
        g = torch.matmul(x, self.w1)  # [E, T, I]
        if self.ffn == abi.FFN_SWIGLU:
            a = g / (1 + torch.exp(-g)) * torch.matmul(x, self.wu)
        else:
            v = g + self.b1
            if self.ffn == abi.FFN_GELU:  # the tanh form
                a = 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v * v * v)))
            else:
                a = torch.clamp_min(v, 0)
        y = torch.matmul(a, self.w2)  # [E, T, H]
        if self.b2 is not None:
            y = y + self.b2
        rows = torch.arange(t, device=x.device)
        out = torch.zeros_like(x)
        for j in range(K):  # combine in j order
            out += cw[:, j:j + 1] * y[ids[:, j], rows]
        return out, ids, gap


def compare(torch, out, ref, gap, tie, tol):
    """internal/reference Check's rule on the device, for the tokens whose
    top-k gap exceeds the tie gap: [checked tokens, left-out tokens, sum of
    squared differences, sum of squared references, wrong elements,
    non-finite elements (all tokens)]. No host synchronisation."""
    keep = gap > tie
    o = out.double()
    nonfinite = (~torch.isfinite(o)).sum()
    kf = keep.unsqueeze(1)
    zero = torch.zeros_like(ref)
    d = (o - ref).abs()
    d = torch.where(d < 2.0 ** -126, zero, d)  # below float32's resolution; NaN stays NaN
    d = torch.where(kf, d, zero)
    r = torch.where(kf, ref, zero)
    diff2, ref2 = (d * d).sum(), (r * r).sum()
    n = keep.sum()
    rms = torch.sqrt(ref2 / torch.clamp_min(n * H, 1))
    wrong = ((~(d <= 4 * tol * (r.abs() + rms))) & kf).sum()  # NaN is wrong
    return torch.stack([n.double(), (~keep).sum().double(), diff2, ref2, wrong.double(), nonfinite.double()])


def judge(vals, tol):
    """The verdict of compare's numbers: (checked, left out, rel err, problems)."""
    n, left, diff2, ref2, wrong, nonfinite = vals
    if diff2 == 0:
        rel = 0.0
    elif ref2 == 0:
        rel = math.inf
    else:
        rel = math.sqrt(diff2 / ref2)  # NaN when an output is NaN
    bad = []
    if nonfinite > 0:
        bad.append(f"{int(nonfinite)} output elements are NaN or Inf")
    if not rel < tol:
        bad.append(f"relative error {rel:.3g} is not below {tol:.0e}")
    if wrong > 0:
        bad.append(f"{int(wrong)} elements differ by more than 4*tol*(|ref| + rms(ref))")
    return int(n), int(left), rel, bad


# ------------------------------------------------------- process setup

def local_rank():
    """The node-local rank, from the variables bootstrap trusts, then LOCAL_RANK."""
    for v in ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "LOCAL_RANK"):
        s = os.environ.get(v, "").strip()
        if s:
            return int(s), v
    return 0, "no launcher variable"


def choose_device(lr, visible):
    """bootstrap.ChooseDevice: the one visible GPU, else the local rank's."""
    if visible < 1:
        raise Failed("PyTorch sees no CUDA GPU")
    if visible == 1:
        return 0
    if lr < visible:
        return lr
    raise Failed(f"local rank {lr} has no GPU of its own: {visible} are visible; start at most {visible} ranks")


def nvshmem_copies():
    """The distinct libnvshmem_host files mapped into this process."""
    seen = {}
    with open("/proc/self/maps") as f:
        for line in f:
            p = line.split(None, 5)
            if len(p) == 6 and os.path.basename(p[5].strip()).startswith("libnvshmem_host"):
                seen.setdefault((p[3], p[4]), p[5].strip())  # (device, inode)
    return sorted(seen.values())


def torch_nvshmem():
    """The NVSHMEM host library that PyTorch uses: the one its import loaded,
    else the nvidia-nvshmem wheel's beside it; and how it was found."""
    loaded = nvshmem_copies()
    if len(loaded) > 1:
        raise Failed(f"PyTorch's import loaded {len(loaded)} NVSHMEM host libraries: {loaded}")
    if loaded:
        return loaded[0], "has loaded"
    try:
        import nvidia.nvshmem as m
        p = os.path.join(list(m.__path__)[0], "lib", NVSHMEM_HOST)
        if os.path.isfile(p):
            return p, "would load"
    except ImportError:
        pass
    return None, ""


def same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def ensure_env(a):
    """Sets what moerun must read at load time (MOERUN_CUBIN from --cubin;
    MOERUN_NVSHMEM_LIB to PyTorch's NVSHMEM) by re-executing this process with
    it: the library's Go runtime takes the environment the process started
    with, not later changes to os.environ. Returns notes to print."""
    want, notes = {}, []
    if a.cubin:
        p = os.path.abspath(a.cubin)
        if os.environ.get("MOERUN_CUBIN") != p:
            want["MOERUN_CUBIN"] = p
    lib, how = torch_nvshmem()
    mine = os.environ.get("MOERUN_NVSHMEM_LIB", "")
    if lib and not mine:
        want["MOERUN_NVSHMEM_LIB"] = lib
    elif lib and not same_file(mine, lib):
        msg = (f"PyTorch {how} {lib}, but MOERUN_NVSHMEM_LIB={mine} makes moerun load another file: the process "
               f"would hold two NVSHMEM host libraries; unset MOERUN_NVSHMEM_LIB or set it to {lib}")
        if how == "has loaded":
            raise Failed(msg)
        notes.append("warning: " + msg)
    home = os.environ.get("NVSHMEM_HOME", "")
    if lib and home and same_file(mine or lib, lib) and not same_file(os.path.join(home, "lib", NVSHMEM_HOST), lib):
        notes.append(f"NVSHMEM_HOME={home} is not PyTorch's NVSHMEM: MOERUN_NVSHMEM_LIB={lib} takes precedence")
    if want:
        if os.environ.get(REEXEC):
            raise Failed(f"re-executed with {want} and still not in the environment")
        env = dict(os.environ, **want)
        env[REEXEC] = "1"
        sys.stdout.flush()
        sys.stderr.flush()
        argv = list(getattr(sys, "orig_argv", [])) or [sys.executable] + sys.argv
        os.execve(sys.executable, argv, env)
    return notes


# ------------------------------------------------------------ the driver

def run(a, torch, dist, lib, rt, dev, gpu):
    tie, tol = TOLERANCE[a.dtype]
    dtype = DTYPES[a.dtype]
    me, size, own = abi.rank_and_experts(lib, rt)

    # torch.distributed: gloo (host) for the barrier and the verdict of all
    # ranks; with --nccl, an NCCL group as well. Ranks and world size are the
    # runtime's, which are MPI's: the launcher's variables must agree.
    for rv, sv in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE")):
        if os.environ.get(rv) and os.environ.get(sv) and (int(os.environ[rv]), int(os.environ[sv])) != (me, size):
            raise Failed(f"moerun says rank {me} of {size}, {rv}/{sv} say {os.environ[rv]} of {os.environ[sv]}")
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(os.environ.get("MASTER_PORT", "29517"))
    if addr in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # read by gloo (C getenv) when the group starts
    dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=me, world_size=size,
                            timeout=datetime.timedelta(seconds=120))
    nccl = None
    if a.nccl:
        nccl = dist.new_group(backend="nccl")
        t = torch.ones(1, device=dev)
        dist.all_reduce(t, group=nccl)  # creates the communicator before any forward is in flight
        torch.cuda.synchronize(dev)
        if t.item() != size:
            raise Failed(f"rank {me}: NCCL warm-up all_reduce gave {t.item()}, want {size}")

    weights = [make_layer(li + 1, ffn, inner, renorm, gain) for li, (ffn, inner, renorm, gain) in enumerate(LAYERS)]
    refs = [TorchLayer(torch, w, dev, bf16=a.dtype == "bf16") for w in weights]
    layers, device_layer, keep_alive = [], -1, []
    for li, w in enumerate(weights):
        h = abi.H64()
        part = lambda v: None if v is None else np.ascontiguousarray(v[own])  # noqa: E731
        if a.device_weights and li == len(weights) - 1:
            # This rank's experts as CUDA float32 tensors, by device pointer.
            td = {k: (None if w[k] is None else torch.from_numpy(w[k] if k == "gate" else part(w[k])).to(dev))
                  for k in ("gate", "w1", "wu", "w2", "b1", "b2")}
            keep_alive.append(td)
            torch.cuda.synchronize(dev)  # the copies have landed before moerun reads them
            dw = abi.DeviceWeights(**{k: (0 if v is None else v.data_ptr()) for k, v in td.items()})
            lib("moerun_add_layer_device", rt, ctypes.byref(config(w, dtype)), ctypes.byref(dw), ctypes.byref(h))
            device_layer = li
        else:
            lib("moerun_add_layer", rt, ctypes.byref(config(w, dtype)), abi.fptr(w["gate"]), abi.fptr(part(w["w1"])),
                abi.fptr(part(w["wu"])), abi.fptr(part(w["w2"])), abi.fptr(part(w["b1"])), abi.fptr(part(w["b2"])),
                ctypes.byref(h))
        layers.append(h)

    main_s = torch.cuda.Stream(dev) if gpu else None  # not stream 0: moerun must use the caller's stream
    side = torch.cuda.Stream(dev) if nccl is not None else None
    on = (lambda s: torch.cuda.stream(s)) if gpu else (lambda s: contextlib.nullcontext())  # noqa: E731

    def forward(layer, t, x, out):
        xp, op = (x.data_ptr(), out.data_ptr()) if t > 0 else (0, 0)
        if gpu:
            lib("moerun_forward_device", layer, t, xp, op, torch.cuda.current_stream(dev).cuda_stream)
        else:  # the CPU backend takes host pointers: CPU tensors' data
            lib("moerun_forward", layer, t, ctypes.cast(xp, abi.F32P), ctypes.cast(op, abi.F32P))

    problems = []
    checked = left_out = dev_fwd = host_fwd = routed = ar_ok = ar_n = 0
    bitwise = True
    worst = 0.0
    dist.barrier()  # every rank starts its first forward at about the same time
    with on(main_s):
        for step in range(a.steps):
            t = TOKENS[(step + 2 * me) % len(TOKENS)]
            if side is not None:
                # The previous step's all_reduces end before this step's
                # forwards start, on every rank: a forward and an NCCL
                # collective are never in flight together on one GPU.
                main_s.wait_stream(side)
            g = torch.Generator(device=dev)
            g.manual_seed(1000 + 100 * step + me)
            x = torch.rand((t, H), generator=g, device=dev, dtype=torch.float32) * 2 - 1
            xs, outs = [], []
            for layer in layers:  # chained, no synchronisation in between
                out = torch.full((t, H), math.nan, device=dev, dtype=torch.float32)
                forward(layer, t, x, out)
                dev_fwd += 1
                xs.append(x)
                outs.append(out)
                x = out
            if a.verbose:
                print(f"moe_torch: rank {me} step {step}: {len(layers)} forwards of {t} tokens enqueued", flush=True)
            flags = []
            if side is not None:
                side.wait_stream(main_s)  # after this step's forwards
                with torch.cuda.stream(side):
                    for i in range(3):
                        v = torch.full((1 << 20,), float(me + 1 + i), device=dev)
                        dist.all_reduce(v, group=nccl)
                        flags.append(torch.all(v == float(size * (size + 1) // 2 + size * i)))
            # PyTorch's reference, on the forwards' stream after them (and
            # alongside the all_reduces on the side stream).
            results = [refs[li](xs[li]) for li in range(len(layers))]
            vals = torch.stack([compare(torch, outs[li], ref, gap, tie, tol)
                                for li, (ref, _, gap) in enumerate(results)]).cpu().tolist()  # the step's one sync
            for li, v in enumerate(vals):
                n, left, rel, bad = judge(v, tol)
                checked, left_out = checked + n, left_out + left
                worst = max(worst, rel if rel == rel else math.inf)  # NaN: reported as inf
                for b in bad:
                    problems.append(f"step {step} layer {li} ({FFN_NAMES[LAYERS[li][0]]}, {t} tokens): {b}")
                if a.verbose:
                    print(f"moe_torch: rank {me} step {step} layer {li}: {n} tokens checked, {left} left out, "
                          f"rel err {rel:.2e}{': ' + '; '.join(bad) if bad else ''}", flush=True)
            if flags:
                with torch.cuda.stream(side):
                    ok = int(torch.stack(flags).sum().item())
                ar_ok, ar_n = ar_ok + ok, ar_n + len(flags)
                if ok != len(flags):
                    problems.append(f"step {step}: {len(flags) - ok} of {len(flags)} NCCL all_reduces gave wrong sums")
            if step in (0, a.steps - 1) and not a.no_host_check:
                for li, layer in enumerate(layers):
                    if li == device_layer:
                        continue  # device weights: host forwards are refused
                    bad, same, compared = host_check(lib, layer, t, xs[li], outs[li], results[li], tie)
                    host_fwd, routed = host_fwd + 1, routed + compared
                    bitwise = bitwise and same
                    problems += [f"step {step} layer {li}, host forward of {t} tokens: {b}" for b in bad]

    st = abi.Stats()
    lib("moerun_get_stats", rt, 0, ctypes.byref(st))
    if st.forwards != dev_fwd + host_fwd:
        problems.append(f"moerun_get_stats counts {st.forwards} forwards, this script ran {dev_fwd + host_fwd}")
    where = f"cuda:{dev.index} ({torch.cuda.get_device_name(dev)})" if gpu else "cpu"
    line = (f"moe_torch: rank {me} of {size} on {where}: {dev_fwd} forwards on "
            f"{'device pointers' if gpu else 'host pointers'}, {checked} token outputs checked against PyTorch float64 "
            f"({left_out} near-tie tokens left out), worst rel err {worst:.2e} (tol {tol:.0e}); "
            f"{host_fwd} host forwards checked by moerun_verify, their routing compared on {routed} tokens"
            f"{', host and device outputs bitwise equal' if bitwise and host_fwd else ''}")
    if nccl is not None:
        line += f"; {ar_ok}/{ar_n} NCCL all_reduces right"
    if gpu:
        line += f"; NVSHMEM {', '.join(nvshmem_copies()) or '(none mapped)'}"
    print(line + (": FAILED" if problems else ": ok"), flush=True)
    for p in problems[:20]:
        print(f"moe_torch: rank {me}: {p}", file=sys.stderr, flush=True)

    # Every rank's verdict, through gloo.
    tot = torch.tensor([len(problems), checked, left_out, dev_fwd, host_fwd, ar_ok, ar_n], dtype=torch.float64)
    dist.all_reduce(tot)
    mx = torch.tensor([worst], dtype=torch.float64)
    dist.all_reduce(mx, op=dist.ReduceOp.MAX)
    if nccl is not None:
        dist.destroy_process_group(nccl)
    dist.destroy_process_group()
    nprob, checked, left_out, dev_fwd, host_fwd, ar_ok, ar_n = (int(v) for v in tot.tolist())
    # keep_alive: the device weights stay allocated while their layer exists.
    return me, size, nprob, dict(checked=checked, left_out=left_out, dev_fwd=dev_fwd, host_fwd=host_fwd,
                                 ar_ok=ar_ok, ar_n=ar_n, worst=mx.item(), tol=tol), keep_alive


def host_check(lib, layer, t, x, out, result, tie):
    """The same tokens as a host forward: moerun_verify against the library's
    float64 reference, its routing against PyTorch's (outside near-ties).
    Returns the problems, whether the host output equals the device's, and
    the number of tokens whose routing was compared."""
    ref, ids, gap = result
    xh = x.cpu().numpy()
    outh = np.full((t, H), np.nan, np.float32)
    lib("moerun_forward", layer, t, abi.fptr(xh), abi.fptr(outh))
    v = abi.Verification()
    st = lib("moerun_verify", layer, t, abi.fptr(xh), abi.fptr(outh), ctypes.byref(v),
             allow=(abi.MOERUN_OK, abi.MOERUN_EVERIFY))
    bad = []
    if st != abi.MOERUN_OK or not v.ok:
        bad.append(f"moerun_verify failed: {lib.last_error()}")
    idx = np.zeros((t, K), np.int32)
    lib("moerun_routing", layer, t, idx.ctypes.data_as(abi.I32P), None)
    keep = (gap > tie).cpu().numpy()
    differ = ~(np.sort(idx, axis=1) == np.sort(ids.cpu().numpy(), axis=1)).all(axis=1) & keep
    if differ.any():
        bad.append(f"moerun_routing differs from PyTorch's top-{K} on {int(differ.sum())} tokens outside the tie gap "
                   f"(first: token {int(np.argmax(differ))})")
    return bad, bool(np.array_equal(outh, out.cpu().numpy())), int(keep.sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.environ.get("MOERUN_LIB", "build/libmoerun.so"), help="path of libmoerun.so")
    ap.add_argument("--backend", choices=["gpu", "cpu"], default="gpu",
                    help="gpu: CUDA tensors by device pointer (default); cpu: the CPU backend on CPU tensors")
    ap.add_argument("--dtype", choices=sorted(TOLERANCE), default="fp32",
                    help="precision mode of the layers (tokens and outputs are float32 tensors in every mode)")
    ap.add_argument("--steps", type=int, default=6, help="forwards of the layer stack per rank")
    ap.add_argument("--nccl", action="store_true", help="NCCL all_reduces on another stream between forwards")
    ap.add_argument("--device-weights", action="store_true",
                    help="add the last layer with moerun_add_layer_device from CUDA tensors")
    ap.add_argument("--cubin", default="", help="the kernel's cubin (sets MOERUN_CUBIN; re-executes)")
    ap.add_argument("--watchdog-ms", type=int, default=20000, help="bound of every wait inside the kernel")
    ap.add_argument("--no-host-check", action="store_true", help="skip the host forwards with moerun_verify")
    ap.add_argument("--verbose", action="store_true", help="a line per rank, step and layer")
    a = ap.parse_args(argv)
    if a.steps < 1:
        ap.error("--steps must be at least 1")
    gpu = a.backend == "gpu"
    if not gpu and (a.nccl or a.device_weights):
        ap.error("--nccl and --device-weights need --backend gpu")
    try:
        import torch
        import torch.distributed as dist
    except ImportError as e:
        raise Failed(f"this example needs PyTorch ({e})")

    notes = []
    if gpu:
        notes = ensure_env(a)  # before the library is loaded; may re-execute
        if not torch.cuda.is_available():
            raise Failed("PyTorch sees no CUDA GPU (run with --backend cpu without one)")
        lr, src = local_rank()
        dev = torch.device("cuda", choose_device(lr, torch.cuda.device_count()))
        torch.cuda.set_device(dev)  # before the runtime opens: moerun takes the same GPU
        w = torch.rand((64, 64), device=dev, dtype=torch.float64)  # CUDA context, cuBLAS, sort: ready
        torch.sort(torch.softmax(w @ w, dim=1), dim=1, descending=True, stable=True)[0].sum().item()
    else:
        dev = torch.device("cpu")

    try:
        lib = abi.Lib(a.lib)
    except OSError as e:
        raise Failed(f"cannot load the library: {e} (build it: see capi/README.md, or pass --lib)")
    opts = abi.Options(backend=abi.BACKEND_GPU if gpu else abi.BACKEND_CPU, local_rank=-1, keep_weights=1,
                       timeout_ms=60000, watchdog_ms=a.watchdog_ms)
    shape = config(make_layer(0, *LAYERS[0]), DTYPES[a.dtype])
    rt = abi.H64()
    lib("moerun_open", ctypes.byref(opts), ctypes.byref(shape), ctypes.byref(rt))
    if gpu:
        # moerun leaves its GPU's primary context current on this thread:
        # PyTorch must still be on the same device.
        if torch.cuda.current_device() != dev.index:
            raise Failed(f"moerun opened GPU {torch.cuda.current_device()}, PyTorch uses {dev} "
                         f"(local rank {lr} from {src}): set CUDA_VISIBLE_DEVICES or the launcher's local rank")
        copies = nvshmem_copies()
        if len(copies) != 1:
            raise Failed(f"{len(copies)} NVSHMEM host libraries in this process: {copies}; set MOERUN_NVSHMEM_LIB "
                         f"to the one PyTorch loads")
    for n in notes:
        print(f"moe_torch: {n}", file=sys.stderr, flush=True)
    if a.verbose:
        where = f"cuda:{dev.index}, NVSHMEM {', '.join(nvshmem_copies())}" if gpu else "cpu"
        print(f"moe_torch: runtime open ({a.backend} {a.dtype}, H={H} E={E} k={K} max-tokens={MAXT}; {where}; "
              f"MOERUN_CUBIN={os.environ.get('MOERUN_CUBIN', '(unset)')})", flush=True)

    me, size, nprob, s, keep_alive = run(a, torch, dist, lib, rt, dev, gpu)
    lib("moerun_close", rt)
    del keep_alive
    lib("moerun_finalize")
    if s["checked"] == 0:
        nprob += 1
        if me == 0:
            print("moe_torch: no token output was compared (all forwards had 0 tokens): give more --steps",
                  file=sys.stderr, flush=True)
    if nprob:
        if me == 0:
            print(f"moe_torch: {size} ranks, {a.backend} {a.dtype}: {nprob} problems (each rank printed its own): FAILED",
                  flush=True)
        return 1
    if me == 0:
        nccl = f", {s['ar_ok']}/{s['ar_n']} NCCL all_reduces right on a side stream" if a.nccl else ""
        print(f"moe_torch: {size} ranks, {a.backend} {a.dtype}, {len(LAYERS)} layers x {a.steps} steps "
              f"({s['dev_fwd']} forwards on {'device' if gpu else 'host'} pointers"
              f"{', last layer with device weights' if a.device_weights else ''}): {s['checked']} token outputs equal "
              f"PyTorch's float64 layer within tolerance (worst rel err {s['worst']:.2e} < {s['tol']:.0e}, "
              f"{s['left_out']} near-tie tokens left out), {s['host_fwd']} host forwards passed moerun_verify{nccl}: "
              f"verified", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (abi.MoerunError, RuntimeError) as e:
        print(f"moe_torch: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
