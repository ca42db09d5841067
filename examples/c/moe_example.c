/*
 * moe_example.c: a C driver of moerun's C ABI (capi/moerun.h).
 *
 * It initialises MPI itself (so the library must use that MPI and leave it
 * alone), opens a runtime on the CPU backend, adds two MoE layers (swiglu and
 * relu) with weights it makes itself, and runs them chained for a few steps
 * with a token count that changes per rank and step. Every forward is
 * checked twice: by the library against its float64 reference
 * (moerun_verify), and here by an independent double-precision computation
 * of the layer from the same weights, routing included.
 *
 *     go build -buildmode=c-shared -tags mpi -o build/libmoerun.so ./capi
 *     mpicc -O2 -std=c11 -I capi examples/c/moe_example.c -L build -lmoerun \
 *         -Wl,-rpath,$PWD/build -lm -o build/moe_example
 *     mpirun -np 4 --oversubscribe --bind-to none build/moe_example [--steps N]
 */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moerun.h"

enum { H = 32, I = 48, E = 8, K = 2, MAXT = 24, LAYERS = 2 };

static int me, nranks;

#define CHECK(call)                                                                       \
    do {                                                                                  \
        moerun_status st_ = (call);                                                       \
        if (st_ != MOERUN_OK) {                                                           \
            fprintf(stderr, "moe_example: rank %d: %s failed (%d): %s\n", me, #call, st_, \
                    moerun_last_error());                                                 \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                 \
        }                                                                                 \
    } while (0)

/* value is element i of tensor t of layer l: a hash in [-1, 1), the same on
 * every rank, so that every rank can compute any expert for its reference. */
static float value(int l, int t, long i) {
    uint64_t z = ((uint64_t)l << 48) ^ ((uint64_t)t << 40) ^ (uint64_t)i;
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1 << 23) - 1.0);
}

/* Tensors of a layer, all experts, in moerun's layouts. */
enum { T_GATE, T_W1, T_WU, T_W2, T_B1, T_B2, T_X };

typedef struct {
    moerun_config cfg;
    float *gate;           /* [H, E] */
    float *w1, *wu, *w2;   /* [E, H, I], [E, H, I], [E, I, H] */
    float *b1, *b2;        /* [E, I], [E, H] */
} layer_weights;

static float *tensor(int l, int t, long n, float scale) {
    float *v = malloc(n * sizeof(float));
    for (long i = 0; i < n; i++) v[i] = value(l, t, i) * scale;
    return v;
}

static layer_weights make_layer(int l, int ffn) {
    layer_weights w = {0};
    w.cfg.hidden = H;
    w.cfg.ffn_hidden = I;
    w.cfg.experts = E;
    w.cfg.topk = K;
    w.cfg.max_tokens = MAXT;
    w.cfg.ffn = ffn;
    w.cfg.dtype = MOERUN_DTYPE_FP32;
    w.cfg.renormalize = 1;
    w.gate = tensor(l, T_GATE, (long)H * E, 4.0f / sqrtf(H));
    w.w1 = tensor(l, T_W1, (long)E * H * I, 1.0f / sqrtf(H));
    w.w2 = tensor(l, T_W2, (long)E * I * H, 1.0f / sqrtf(I));
    if (ffn == MOERUN_FFN_SWIGLU) {
        w.wu = tensor(l, T_WU, (long)E * H * I, 1.0f / sqrtf(H));
    } else {
        w.b1 = tensor(l, T_B1, (long)E * I, 0.125f);
        w.b2 = tensor(l, T_B2, (long)E * H, 0.125f);
    }
    return w;
}

/* The layer for one token in double precision, from w: softmax gate, top-k
 * (ties to the lower index), renormalised weights, the expert FFNs. */
static void reference(const layer_weights *w, const float *x, double *y, int *ids) {
    double p[E], mx = -INFINITY, sum = 0;
    for (int e = 0; e < E; e++) {
        p[e] = 0;
        for (int h = 0; h < H; h++) p[e] += (double)x[h] * w->gate[h * E + e];
        if (p[e] > mx) mx = p[e];
    }
    for (int e = 0; e < E; e++) sum += (p[e] = exp(p[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
    int taken[E] = {0};
    double wsum = 0;
    for (int j = 0; j < K; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = 1;
        ids[j] = best;
        wsum += p[best];
    }
    for (int h = 0; h < H; h++) y[h] = 0;
    for (int j = 0; j < K; j++) {
        int e = ids[j];
        double a[I];
        for (int i = 0; i < I; i++) {
            double g = 0, u = 0;
            for (int h = 0; h < H; h++) {
                g += (double)x[h] * w->w1[((long)e * H + h) * I + i];
                if (w->wu) u += (double)x[h] * w->wu[((long)e * H + h) * I + i];
            }
            if (w->wu) {
                a[i] = g / (1 + exp(-g)) * u;
            } else {
                g += w->b1[e * I + i];
                a[i] = g > 0 ? g : 0;
            }
        }
        for (int h = 0; h < H; h++) {
            double o = 0;
            for (int i = 0; i < I; i++) o += a[i] * w->w2[((long)e * I + i) * H + h];
            if (w->b2) o += w->b2[e * H + h];
            y[h] += p[e] / wsum * o;
        }
    }
}

int main(int argc, char **argv) {
    /* The program owns MPI: the library must not initialise or finalize it. */
    MPI_Init(&argc, &argv);
    int steps = 3;
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[i + 1]);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    MPI_Comm_size(MPI_COMM_WORLD, &nranks);
    if (moerun_abi_version() != MOERUN_ABI_VERSION) {
        fprintf(stderr, "moe_example: library ABI %d, header %d\n", moerun_abi_version(), MOERUN_ABI_VERSION);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    layer_weights lw[LAYERS] = {make_layer(0, MOERUN_FFN_SWIGLU), make_layer(1, MOERUN_FFN_RELU)};
    moerun_options opts = {.backend = MOERUN_BACKEND_CPU, .local_rank = -1, .keep_weights = 1, .timeout_ms = 60000};
    moerun_runtime rt;
    CHECK(moerun_open(&opts, &lw[0].cfg, &rt));
    int32_t r, size, first, count;
    CHECK(moerun_rank(rt, &r, &size));
    CHECK(moerun_owned_experts(rt, &first, &count));
    if (r != me || size != nranks || count != E / nranks || first != me * count) {
        fprintf(stderr, "moe_example: rank %d: library says rank %d of %d, experts %d+%d\n", me, r, size, first, count);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    /* Each rank passes the gate and its own experts, stacked by local index. */
    moerun_layer layers[LAYERS];
    for (int l = 0; l < LAYERS; l++) {
        layer_weights *w = &lw[l];
        CHECK(moerun_add_layer(rt, &w->cfg, w->gate, w->w1 + (long)first * H * I,
                               w->wu ? w->wu + (long)first * H * I : NULL, w->w2 + (long)first * I * H,
                               w->b1 ? w->b1 + (long)first * I : NULL, w->b2 ? w->b2 + (long)first * H : NULL,
                               &layers[l]));
    }

    /* Device pointers are the GPU backend's: the CPU backend says so. */
    moerun_status st = moerun_forward_device(layers[0], 1, 0x1000, 0x2000, 0);
    if (st != MOERUN_ENOTSUP || !strstr(moerun_last_error(), "not supported by the cpu backend")) {
        fprintf(stderr, "moe_example: rank %d: forward_device gave %d: %s\n", me, st, moerun_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    float *x = malloc(MAXT * H * sizeof(float)), *out = malloc(MAXT * H * sizeof(float));
    double worst = 0;
    int checked = 0;
    for (int step = 0; step < steps; step++) {
        int t = (5 * step + 7 * me + 3) % (MAXT + 1); /* differs per rank and step; 0 too */
        for (long i = 0; i < (long)t * H; i++) x[i] = value(100 + step, me, i);
        for (int l = 0; l < LAYERS; l++) {
            CHECK(moerun_forward(layers[l], t, x, out));
            moerun_verification v;
            CHECK(moerun_verify(layers[l], t, x, out, &v));
            int32_t idx[MAXT * K];
            CHECK(moerun_routing(layers[l], t, idx, NULL));
            /* Our own reference: the same within float32 rounding. */
            double d2 = 0, r2 = 0;
            for (int tok = 0; tok < t; tok++) {
                double y[H];
                int ids[K];
                reference(&lw[l], x + (long)tok * H, y, ids);
                for (int j = 0; j < K; j++) {
                    if (ids[j] != idx[tok * K + j]) {
                        fprintf(stderr, "moe_example: rank %d step %d layer %d token %d: routed to %d, want %d\n", me,
                                step, l, tok, idx[tok * K + j], ids[j]);
                        MPI_Abort(MPI_COMM_WORLD, 1);
                    }
                }
                for (int h = 0; h < H; h++) {
                    double d = out[(long)tok * H + h] - y[h];
                    d2 += d * d;
                    r2 += y[h] * y[h];
                }
                checked++;
            }
            double rel = r2 > 0 ? sqrt(d2 / r2) : sqrt(d2);
            if (!(rel < 1e-6)) {
                fprintf(stderr, "moe_example: rank %d step %d layer %d: relative error %g\n", me, step, l, rel);
                MPI_Abort(MPI_COMM_WORLD, 1);
            }
            if (rel > worst) worst = rel;
            memcpy(x, out, (size_t)t * H * sizeof(float)); /* the next layer's input */
        }
    }

    moerun_stats s;
    CHECK(moerun_get_stats(rt, 0, &s));
    int all_checked = 0;
    MPI_Reduce(&checked, &all_checked, 1, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    CHECK(moerun_close(rt));
    CHECK(moerun_finalize());
    if (me == 0) {
        printf("moe_example: %d ranks, %d layers x %d steps, %d token outputs checked against moerun_verify and "
               "the example's own reference (rank 0: %lld forwards, worst rel err %.2e): verified\n",
               nranks, LAYERS, steps, all_checked, (long long)s.forwards, worst);
    }
    /* MPI is still ours to use after moerun_finalize. */
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    for (int l = 0; l < LAYERS; l++) {
        free(lw[l].gate), free(lw[l].w1), free(lw[l].wu), free(lw[l].w2), free(lw[l].b1), free(lw[l].b2);
    }
    free(x);
    free(out);
    return 0;
}
