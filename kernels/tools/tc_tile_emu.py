#!/usr/bin/env python3
# tc_tile_emu.py: emulates kernels/gemm_tc.cuh's tile at the level of bytes
# and lanes, on the CPU: cp.async placement (XOR swizzle, zero fill),
# ldmatrix.x4 (PTX semantics), the mma.sync fragment layouts (PTX ISA tables
# for m16n8k16 bf16 and m16n8k8 tf32), the pipeline's stage rotation and the
# tc_stage index map; compares with numpy. It mirrors the CUDA code's index
# arithmetic by hand: change both together. Needs numpy; ~2 minutes.
# It checks the addressing logic only; the GPU check of the real code is
# gpubackend.TileCheck (TestForwardOneRank/tile).
import numpy as np, sys

TM, TN, KB, STAGES = 128, 128, 128, 3
STAGE_BYTES = (TM + TN) * KB
CS_STRIDE = TN + 8

def run(dtype, NB, mrows, ncols, K, op="none", seed=0):
    rng = np.random.default_rng(seed)
    es = 2 if dtype == "bf16" else 4
    # global operands, as bytes: A [mrows][K], B_o [ncols][K]
    if dtype == "bf16":
        def mk(r, c):
            v = rng.standard_normal((r, c)).astype(np.float32)
            b = (v.view(np.uint32) >> 16).astype(np.uint16)  # truncate: any bf16 values
            return b, (b.astype(np.uint32) << 16).view(np.float32)
    else:
        def mk(r, c):
            v = rng.standard_normal((r, c)).astype(np.float32)
            b = v.view(np.uint32) & np.uint32(0xffffe000)  # tf32 values
            return b, b.view(np.float32)
    # allocate full extents (padding rows beyond mrows / ncols with poison to catch reads)
    Araw, Af = mk(mrows, K)
    Bs = [mk(ncols, K) for _ in range(NB)]
    Abytes = Araw.tobytes()
    Bbytes = [b[0].tobytes() for b in Bs]
    lda = ldb = K

    smem = np.zeros(STAGES * STAGE_BYTES + 1024, dtype=np.uint8)
    acc = np.zeros((256, 4, 4, 4), dtype=np.float64)
    ksteps = K * es // KB

    def load(stage, kt):
        for tid in range(256):
            lc, lr = tid & 7, tid >> 3
            st_off = lr * KB + ((lc ^ (lr & 7)) << 4)
            if NB == 1:
                bop, brow0, bstep_rows, bcol0, bcolstep = 0, lr, 32, lr, 32
            else:
                bop = (lr >> 4) & 1
                brow0, bstep_rows, bcol0, bcolstep = lr & 15, 16, lr & 15, 16
            s = stage * STAGE_BYTES + st_off
            for i in range(4):
                # A
                r = lr + 32 * i
                dst = s + i * 32 * KB
                if r < mrows:
                    off = r * lda * es + kt * KB + lc * 16
                    smem[dst:dst + 16] = np.frombuffer(Abytes[off:off + 16], dtype=np.uint8)
                else:
                    smem[dst:dst + 16] = 0
                # B
                col = bcol0 + bcolstep * i
                dst = s + (TM + i * 32) * KB
                if col < ncols:
                    row = brow0 + i * bstep_rows
                    off = row * ldb * es + kt * KB + lc * 16
                    smem[dst:dst + 16] = np.frombuffer(Bbytes[bop][off:off + 16], dtype=np.uint8)
                else:
                    smem[dst:dst + 16] = 0

    def ldmatrix_x4(addrs):
        # addrs[lane] = row address supplied by lane; returns regs[lane][4] as 4-byte arrays
        regs = np.zeros((32, 4, 4), dtype=np.uint8)
        for m in range(4):
            for t in range(32):
                rowaddr = addrs[m * 8 + t // 4]
                assert rowaddr % 16 == 0
                c = t % 4
                regs[t, m] = smem[rowaddr + 4 * c: rowaddr + 4 * c + 4]
        return regs

    def elems(regbytes):
        if dtype == "bf16":
            u = regbytes.view(np.uint16).astype(np.uint32) << 16
            return u.view(np.float32).astype(np.float64)  # 2 values
        return regbytes.view(np.float32).astype(np.float64)  # 1 value

    def mma(accw, a, b):
        # accw [32][4], a [32][4][4 bytes], b [32][2][4 bytes]; per PTX fragment tables
        if dtype == "bf16":
            Am = np.zeros((16, 16)); Bm = np.zeros((16, 8))
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for i in range(8):
                    v = elems(a[lane, i // 2])[i % 2]
                    row = g if (i < 2 or 4 <= i < 6) else g + 8
                    col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
                    Am[row, col] = v
                for i in range(4):
                    v = elems(b[lane, i // 2])[i % 2]
                    row = t * 2 + (i & 1) + (8 if i >= 2 else 0)
                    Bm[row, g] = v
        else:
            Am = np.zeros((16, 8)); Bm = np.zeros((8, 8))
            for lane in range(32):
                g, t = lane >> 2, lane & 3
                for i in range(4):
                    v = elems(a[lane, i])[0]
                    row = g if i in (0, 2) else g + 8
                    col = t if i in (0, 1) else t + 4
                    Am[row, col] = v
                for i in range(2):
                    v = elems(b[lane, i])[0]
                    Bm[t + 4 * i, g] = v
        D = Am @ Bm
        for lane in range(32):
            g, t = lane >> 2, lane & 3
            for i in range(4):
                row = g if i < 2 else g + 8
                col = t * 2 + (i & 1)
                accw[lane, i] += D[row, col]

    for s in range(STAGES - 1):
        if s < ksteps:
            load(s, s)
    st = 0
    for kt in range(ksteps):
        nk = kt + STAGES - 1
        ns = (st + STAGES - 1) % STAGES
        sst = st * STAGE_BYTES
        # compute first (emulation: the load of step nk goes to buffer ns != st)
        for warp in range(8):
            wm, wn = warp >> 2, warp & 3
            lanes = range(32)
            x7 = [l & 7 for l in lanes]
            a_row = [(wm * 64 + (l & 7) + ((l >> 3) & 1) * 8) * KB for l in lanes]
            b_row = [(TM + wn * 32 + (l & 7) + (l >> 4) * 8) * KB for l in lanes]
            for kk in range(KB // 32):
                bf = np.zeros((4, 32, 2, 4), dtype=np.uint8)
                for np_ in range(2):
                    addrs = [sst + b_row[l] + np_ * 16 * KB + ((((kk * 2 + ((l >> 3) & 1)) ^ x7[l])) << 4) for l in lanes]
                    r = ldmatrix_x4(addrs)
                    bf[2 * np_, :, 0] = r[:, 0]; bf[2 * np_, :, 1] = r[:, 1]
                    bf[2 * np_ + 1, :, 0] = r[:, 2]; bf[2 * np_ + 1, :, 1] = r[:, 3]
                for mi in range(4):
                    addrs = [sst + a_row[l] + mi * 16 * KB + ((((kk * 2 + (l >> 4)) ^ x7[l])) << 4) for l in lanes]
                    af = ldmatrix_x4(addrs)
                    for j in range(4):
                        accw = acc[warp * 32:(warp + 1) * 32, mi, j]
                        mma(accw, af, bf[j])
        if nk < ksteps:
            assert ns != st
            load(ns, nk)
        st = (st + 1) % STAGES

    # tc_stage
    cs = np.full((TM, CS_STRIDE), np.nan)
    bias = rng.standard_normal(128) if (NB == 1 and op != "none") else None
    silu = lambda x: x / (1 + np.exp(-x))
    for tid in range(256):
        lane, warp = tid & 31, tid >> 5
        wm, wn = warp >> 2, warp & 3
        gq, tq = lane >> 2, lane & 3
        for jo in range(4 // NB):
            col = wn * (32 // NB) + jo * 8 + 2 * tq
            b0 = b1 = 0.0
            if bias is not None and col < ncols:
                b0, b1 = bias[col], bias[col + 1]
            for mi in range(4):
                for h in range(2):
                    row = wm * 64 + mi * 16 + gq + h * 8
                    v0, v1 = acc[tid, mi, jo, 2 * h], acc[tid, mi, jo, 2 * h + 1]
                    if NB == 2:
                        u0, u1 = acc[tid, mi, (jo + 2) & 3, 2 * h], acc[tid, mi, (jo + 2) & 3, 2 * h + 1]
                        if op == "swiglu":
                            v0, v1 = silu(v0) * u0, silu(v1) * u1
                        else:
                            cs[row, col + TN // 2], cs[row, col + TN // 2 + 1] = u0, u1
                    else:
                        v0 += b0; v1 += b1
                        if op == "relu":
                            v0, v1 = max(v0, 0), max(v1, 0)
                    cs[row, col], cs[row, col + 1] = v0, v1
    # expected
    Ap = np.zeros((TM, K)); Ap[:mrows] = Af
    ref = []
    for o in range(NB):
        Bp = np.zeros((128 // NB, K)); Bp[:ncols] = Bs[o][1]
        ref.append(Ap @ Bp.T)
    if NB == 1:
        want = ref[0].copy()
        if bias is not None:
            want = want + bias[None, :]
            want[:, ncols:] = 0 + bias[None, ncols:] * 0  # columns past ncols: not stored; compare < ncols only
            if op == "relu":
                want = np.maximum(want, 0)
        got = cs[:, :128]
        cmpcols = ncols if bias is not None else 128
    else:
        if op == "swiglu":
            want = silu(ref[0]) * ref[1]; got = cs[:, :64]; cmpcols = ncols
        else:
            want = np.concatenate([ref[0], ref[1]], axis=1); got = cs[:, :128]; cmpcols = 128
    rows = mrows if op != "none" else 128
    err = np.abs(got[:rows, :cmpcols] - want[:rows, :cmpcols]).max()
    scale = np.abs(want[:rows, :cmpcols]).max() + 1e-30
    ok = err <= 1e-9 * scale * K
    print(f"{dtype} NB={NB} mrows={mrows} ncols={ncols} K={K} op={op}: max abs err {err:.3g} (scale {scale:.3g}) {'OK' if ok else 'FAIL'}")
    return ok

if __name__ == "__main__":
    allok = True
    for dtype in ("bf16", "tf32"):
        allok &= run(dtype, 1, 128, 128, 64 if dtype == "bf16" else 32, seed=1)
        allok &= run(dtype, 1, 77, 64, 256, seed=2)
        allok &= run(dtype, 1, 1, 128, 192, op="relu", seed=3)
        allok &= run(dtype, 2, 100, 64, 128, seed=4)
        allok &= run(dtype, 2, 128, 64, 128, op="swiglu", seed=5)
    print("ALL OK" if allok else "FAILURES")
    sys.exit(0 if allok else 1)
