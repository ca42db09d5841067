#!/usr/bin/env python3
"""moe_ctypes.py: a Python driver of moerun's C ABI through ctypes.

It opens a runtime, adds two MoE layers with weights made here with numpy
(every rank makes the same weights and passes its own experts), runs them
chained on host numpy arrays for a few steps, and checks every output twice:
with the library's float64 reference (moerun_verify) and with numpy's own
float64 computation of the layer.

Two ways to start it:

  # under MPI (the library initialises MPI: this script does not)
  mpirun -np 4 --oversubscribe --bind-to none python3 moe_ctypes.py --lib build/libmoerun.so

  # without MPI, as torchrun would: rank 0 makes the unique id and hands it
  # to the other ranks itself (here: on their command line)
  python3 moe_ctypes.py --lib build/libmoerun.so --spawn 4

The GPU path (PyTorch CUDA tensors passed by device pointer on PyTorch's
stream, no copies) is moe_torch.py beside this file; `--backend gpu` here runs
it (with its own options: --dtype, --nccl, ...). This script itself runs the
CPU backend, which refuses device pointers with MOERUN_ENOTSUP, as it checks.
"""

import argparse
import ctypes
import os
import subprocess
import sys

import numpy as np

# ---------------------------------------------------------------- the ABI
# Mirrors of capi/moerun.h; the sizes are checked against the header's.

MOERUN_ABI_VERSION = 1
MOERUN_OK, MOERUN_EINVAL, MOERUN_ENOTSUP, MOERUN_EFAILED, MOERUN_ECLOSED, MOERUN_EVERIFY = 0, 1, 2, 3, 4, 5
BACKEND_CPU, BACKEND_GPU = 0, 1
FFN_RELU, FFN_GELU, FFN_SWIGLU = 0, 1, 2
DTYPE_FP32, DTYPE_TF32, DTYPE_BF16 = 0, 1, 2


class Config(ctypes.Structure):
    _fields_ = [("hidden", ctypes.c_int32), ("ffn_hidden", ctypes.c_int32), ("experts", ctypes.c_int32),
                ("topk", ctypes.c_int32), ("max_tokens", ctypes.c_int32), ("ffn", ctypes.c_int32),
                ("dtype", ctypes.c_int32), ("renormalize", ctypes.c_int32),
                ("capacity_factor", ctypes.c_double), ("seed", ctypes.c_uint64)]


class Options(ctypes.Structure):
    _fields_ = [("backend", ctypes.c_int32), ("local_rank", ctypes.c_int32), ("keep_weights", ctypes.c_int32),
                ("reserved", ctypes.c_int32), ("timeout_ms", ctypes.c_int64), ("watchdog_ms", ctypes.c_int64)]


class Stats(ctypes.Structure):
    _fields_ = [("forwards", ctypes.c_int64), ("tokens", ctypes.c_int64), ("elapsed_ns", ctypes.c_int64),
                ("bytes_put", ctypes.c_int64)]


class Verification(ctypes.Structure):
    _fields_ = [("checked", ctypes.c_int64), ("rel_err", ctypes.c_double), ("wrong", ctypes.c_int64),
                ("route_mismatch", ctypes.c_int64), ("ok", ctypes.c_int32), ("reserved", ctypes.c_int32)]


class DeviceWeights(ctypes.Structure):
    _fields_ = [("gate", ctypes.c_uint64), ("w1", ctypes.c_uint64), ("wu", ctypes.c_uint64),
                ("w2", ctypes.c_uint64), ("b1", ctypes.c_uint64), ("b2", ctypes.c_uint64)]


assert ctypes.sizeof(Config) == 48 and ctypes.sizeof(Options) == 32
assert ctypes.sizeof(Stats) == 32 and ctypes.sizeof(Verification) == 40
assert ctypes.sizeof(DeviceWeights) == 48

F32P = ctypes.POINTER(ctypes.c_float)
I32P = ctypes.POINTER(ctypes.c_int32)
H64 = ctypes.c_int64


class MoerunError(RuntimeError):
    def __init__(self, status, message):
        super().__init__(f"status {status}: {message}")
        self.status = status


class Lib:
    """The library, loaded with RTLD_GLOBAL so that Open MPI's plugins
    resolve libmpi's symbols."""

    def __init__(self, path):
        self.c = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        c = self.c
        c.moerun_abi_version.restype = ctypes.c_int32
        c.moerun_last_error.restype = ctypes.c_char_p
        sigs = {
            "moerun_open": [ctypes.POINTER(Options), ctypes.POINTER(Config), ctypes.POINTER(H64)],
            "moerun_get_unique_id": [ctypes.c_char_p],
            "moerun_open_with_id": [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32, ctypes.POINTER(Options),
                                    ctypes.POINTER(Config), ctypes.POINTER(H64)],
            "moerun_rank": [H64, I32P, I32P],
            "moerun_owned_experts": [H64, I32P, I32P],
            "moerun_add_layer": [H64, ctypes.POINTER(Config), F32P, F32P, F32P, F32P, F32P, F32P, ctypes.POINTER(H64)],
            "moerun_add_layer_device": [H64, ctypes.POINTER(Config), ctypes.POINTER(DeviceWeights), ctypes.POINTER(H64)],
            "moerun_forward": [H64, ctypes.c_int32, F32P, F32P],
            "moerun_forward_device": [H64, ctypes.c_int32, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64],
            "moerun_routing": [H64, ctypes.c_int32, I32P, F32P],
            "moerun_verify": [H64, ctypes.c_int32, F32P, F32P, ctypes.POINTER(Verification)],
            "moerun_get_stats": [H64, H64, ctypes.POINTER(Stats)],
            "moerun_close": [H64],
            "moerun_finalize": [],
        }
        for name, args in sigs.items():
            f = getattr(c, name)
            f.argtypes = args
            f.restype = ctypes.c_int
        if c.moerun_abi_version() != MOERUN_ABI_VERSION:
            raise RuntimeError(f"library ABI {c.moerun_abi_version()}, this script {MOERUN_ABI_VERSION}")

    def __call__(self, name, *args, allow=(MOERUN_OK,)):
        st = getattr(self.c, name)(*args)
        if st not in allow:
            raise MoerunError(st, self.c.moerun_last_error().decode())
        return st

    def last_error(self):
        return self.c.moerun_last_error().decode()


def fptr(a):
    """A float32 numpy array's data pointer (None for None)."""
    if a is None:
        return None
    assert a.dtype == np.float32 and a.flags["C_CONTIGUOUS"]
    return a.ctypes.data_as(F32P)


# ------------------------------------------------------------ the layer

H, I, E, K, MAXT, STEPS = 32, 48, 8, 2, 24, 3


def make_layer(seed, ffn, renormalize):
    """Every expert's weights, in moerun's layouts: gate [H, E]; W1, Wu
    [E, H, I]; W2 [E, I, H]; B1 [E, I]; B2 [E, H]."""
    rng = np.random.default_rng(seed)
    u = lambda shape, scale: (rng.uniform(-1, 1, shape) * scale).astype(np.float32)
    w = {"ffn": ffn, "renormalize": renormalize,
         "gate": u((H, E), 4 / np.sqrt(H)), "w1": u((E, H, I), 1 / np.sqrt(H)), "w2": u((E, I, H), 1 / np.sqrt(I)),
         "wu": None, "b1": None, "b2": None}
    if ffn == FFN_SWIGLU:
        w["wu"] = u((E, H, I), 1 / np.sqrt(H))
    else:
        w["b1"], w["b2"] = u((E, I), 0.125), u((E, H), 0.125)
    return w


def config(w):
    return Config(hidden=H, ffn_hidden=I, experts=E, topk=K, max_tokens=MAXT, ffn=w["ffn"], dtype=DTYPE_FP32,
                  renormalize=int(w["renormalize"]), capacity_factor=0.0, seed=0)


def numpy_layer(w, x):
    """The layer in float64 with numpy: softmax gate, top-k (ties to the
    lower index), combine weights, expert FFNs."""
    x = x.astype(np.float64)
    logits = x @ w["gate"].astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ids = np.argsort(-p, axis=1, kind="stable")[:, :K]
    cw = np.take_along_axis(p, ids, axis=1)
    if w["renormalize"]:
        cw /= cw.sum(axis=1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(K):
            e = ids[t, j]
            g = x[t] @ w["w1"][e].astype(np.float64)
            if w["ffn"] == FFN_SWIGLU:
                a = g / (1 + np.exp(-g)) * (x[t] @ w["wu"][e].astype(np.float64))
            else:
                a = np.maximum(g + w["b1"][e], 0)
            y = a @ w["w2"][e].astype(np.float64)
            if w["b2"] is not None:
                y = y + w["b2"][e]
            out[t] += cw[t, j] * y
    return out, ids


def forward_device(lib, layer, tokens, x_ptr, out_ptr):
    """A forward on device pointers. With the GPU backend (moe_torch.py) the
    pointers are PyTorch CUDA tensors' and the stream PyTorch's current one:

        stream = torch.cuda.current_stream().cuda_stream
        lib("moerun_forward_device", layer, tokens, x.data_ptr(), out.data_ptr(), stream)

    The CPU backend refuses it with MOERUN_ENOTSUP, as run() checks."""
    return lib("moerun_forward_device", layer, tokens, x_ptr, out_ptr, 0, allow=(MOERUN_OK, MOERUN_ENOTSUP))


# ------------------------------------------------------------ the driver

def rank_and_experts(lib, rt):
    """This rank, the number of ranks, and the slice of global expert ids it
    owns."""
    me, size = ctypes.c_int32(), ctypes.c_int32()
    lib("moerun_rank", rt, ctypes.byref(me), ctypes.byref(size))
    first, count = ctypes.c_int32(), ctypes.c_int32()
    lib("moerun_owned_experts", rt, ctypes.byref(first), ctypes.byref(count))
    return me.value, size.value, slice(first.value, first.value + count.value)


def run(lib, rt):
    me, size, own = rank_and_experts(lib, rt)

    weights = [make_layer(1, FFN_SWIGLU, True), make_layer(2, FFN_RELU, False)]
    layers = []
    for w in weights:
        part = lambda a: None if a is None else np.ascontiguousarray(a[own])
        h = H64()
        lib("moerun_add_layer", rt, ctypes.byref(config(w)), fptr(w["gate"]), fptr(part(w["w1"])),
            fptr(part(w["wu"])), fptr(part(w["w2"])), fptr(part(w["b1"])), fptr(part(w["b2"])), ctypes.byref(h))
        layers.append(h)

    if forward_device(lib, layers[0], 1, 0x1000, 0x2000) != MOERUN_ENOTSUP or \
            "not supported by the cpu backend" not in lib.last_error():
        raise RuntimeError(f"rank {me}: forward_device on the CPU backend: {lib.last_error()}")

    worst, checked = 0.0, 0
    for step in range(STEPS):
        t = (5 * step + 7 * me + 3) % (MAXT + 1)
        x = np.random.default_rng(100 + 10 * step + me).uniform(-1, 1, (t, H)).astype(np.float32)
        for li, (w, layer) in enumerate(zip(weights, layers)):
            out = np.empty((t, H), np.float32)
            lib("moerun_forward", layer, t, fptr(x), fptr(out))
            v = Verification()
            lib("moerun_verify", layer, t, fptr(x), fptr(out), ctypes.byref(v))
            idx = np.empty((t, K), np.int32)
            lib("moerun_routing", layer, t, idx.ctypes.data_as(I32P), None)
            ref, ids = numpy_layer(w, x)
            if not np.array_equal(ids, idx):
                raise RuntimeError(f"rank {me} step {step} layer {li}: routing differs from numpy's")
            den = np.linalg.norm(ref)
            rel = np.linalg.norm(out - ref) / den if den > 0 else np.linalg.norm(out)
            if not rel < 1e-6:
                raise RuntimeError(f"rank {me} step {step} layer {li}: relative error {rel:g} against numpy")
            worst, checked = max(worst, rel), checked + t
            x = out
    st = Stats()
    lib("moerun_get_stats", rt, 0, ctypes.byref(st))
    return me, size, checked, worst, st


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", default=os.environ.get("MOERUN_LIB", "build/libmoerun.so"), help="path of libmoerun.so")
    ap.add_argument("--backend", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: this script (numpy); gpu: moe_torch.py (PyTorch CUDA tensors), which takes the other options")
    ap.add_argument("--spawn", type=int, default=0, help="start this many ranks without MPI (unique-id path)")
    ap.add_argument("--rank", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--id", default="", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args()
    if a.backend == "gpu":
        if a.spawn:
            ap.error("--spawn is for the CPU backend; run the GPU path under mpirun")
        sys.dont_write_bytecode = True  # no __pycache__ in the source tree
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import moe_torch
        try:
            sys.exit(moe_torch.main(["--lib", a.lib, "--backend", "gpu"] + rest))
        except RuntimeError as e:  # moe_torch's own errors and MoerunError
            print(f"moe_torch: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
    if rest:
        ap.error("unrecognized arguments: " + " ".join(rest))

    lib = Lib(a.lib)
    opts = Options(backend=BACKEND_CPU, local_rank=-1, keep_weights=1, timeout_ms=60000)
    shape = config(make_layer(0, FFN_SWIGLU, True))
    rt = H64()
    children = []
    if a.spawn > 0 and a.rank < 0:
        # Rank 0 makes the id and hands it to the other ranks itself, as a
        # torchrun driver would with torch.distributed.broadcast_object_list.
        uid = ctypes.create_string_buffer(128)
        lib("moerun_get_unique_id", uid)
        for r in range(1, a.spawn):
            children.append(subprocess.Popen([sys.executable, __file__, "--lib", a.lib, "--spawn", str(a.spawn),
                                              "--rank", str(r), "--id", uid.raw.hex()]))
        lib("moerun_open_with_id", uid.raw, 0, a.spawn, ctypes.byref(opts), ctypes.byref(shape), ctypes.byref(rt))
    elif a.spawn > 0:
        lib("moerun_open_with_id", bytes.fromhex(a.id), a.rank, a.spawn, ctypes.byref(opts), ctypes.byref(shape),
            ctypes.byref(rt))
    else:
        lib("moerun_open", ctypes.byref(opts), ctypes.byref(shape), ctypes.byref(rt))

    me, size, checked, worst, st = run(lib, rt)
    lib("moerun_close", rt)
    lib("moerun_finalize")
    failed = [r for r, c in enumerate(children, 1) if c.wait() != 0]
    if failed:
        raise RuntimeError(f"ranks {failed} failed")
    if me == 0:
        how = "unique id over TCP" if a.spawn else "MPI"
        print(f"moe_ctypes: {size} ranks ({how}), 2 layers x {STEPS} steps, rank 0 checked {checked} token outputs "
              f"against moerun_verify and numpy (worst rel err {worst:.2e}, {st.forwards} forwards): verified")


if __name__ == "__main__":
    try:
        main()
    except (MoerunError, RuntimeError) as e:
        print(f"moe_ctypes: {e}", file=sys.stderr)
        sys.exit(1)
