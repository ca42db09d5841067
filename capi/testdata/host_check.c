/*
 * host_check.c: checks, from C, what the library owes its host process
 * (TestHostProcess runs it against the library built by the tests):
 *  - settings the program puts in the environment after loading the library
 *    (setenv, as Python's os.environ does) reach it;
 *  - moerun_device is -1 on the CPU backend;
 *  - a forward on device pointers that the backend refuses (MOERUN_ENOTSUP)
 *    leaves the runtime usable.
 * One rank, through a unique id (no MPI). Prints "host_check: ok".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moerun.h"

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "host_check: line %d: ", __LINE__);                  \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, " (last error: %s)\n", moerun_last_error());          \
            return 1;                                                             \
        }                                                                         \
    } while (0)

int main(void) {
    uint8_t id[MOERUN_UNIQUE_ID_SIZE];
    moerun_status st;

    /* Set after the library was loaded: the Go runtime's copy of the
     * environment does not have it, unless the library syncs it. */
    setenv("MOERUN_BOOTSTRAP_ADDR", ":5", 1);
    st = moerun_get_unique_id(id);
    CHECK(st == MOERUN_EFAILED && strstr(moerun_last_error(), "names no host") != NULL,
          "MOERUN_BOOTSTRAP_ADDR=:5 set with setenv was not seen: status %d", (int)st);
    setenv("MOERUN_BOOTSTRAP_ADDR", "127.0.0.1", 1);
    st = moerun_get_unique_id(id);
    CHECK(st == MOERUN_OK, "moerun_get_unique_id: status %d", (int)st);

    moerun_config c;
    memset(&c, 0, sizeof c);
    c.hidden = 16;
    c.ffn_hidden = 16;
    c.experts = 4;
    c.topk = 2;
    c.max_tokens = 8;
    c.ffn = MOERUN_FFN_RELU;
    c.dtype = MOERUN_DTYPE_FP32;
    c.renormalize = 1;
    c.seed = 7;
    moerun_options o;
    memset(&o, 0, sizeof o);
    o.backend = MOERUN_BACKEND_CPU;
    o.local_rank = -1;
    o.timeout_ms = 10000;
    moerun_runtime rt = 0;
    st = moerun_open_with_id(id, 0, 1, &o, &c, &rt);
    CHECK(st == MOERUN_OK, "moerun_open_with_id: status %d", (int)st);

    int32_t dev = 42;
    st = moerun_device(rt, &dev);
    CHECK(st == MOERUN_OK && dev == -1, "moerun_device: status %d, ordinal %d; want OK, -1", (int)st, (int)dev);
    CHECK(moerun_device(rt, NULL) == MOERUN_EINVAL, "moerun_device(NULL) is not MOERUN_EINVAL");
    CHECK(moerun_device(rt + 1000, &dev) == MOERUN_EINVAL, "moerun_device of no runtime is not MOERUN_EINVAL");

    moerun_layer l = 0;
    st = moerun_add_layer_seed(rt, &c, &l);
    CHECK(st == MOERUN_OK, "moerun_add_layer_seed: status %d", (int)st);
    st = moerun_forward_device(l, 2, 0x1000, 0x2000, 0);
    CHECK(st == MOERUN_ENOTSUP, "moerun_forward_device on the CPU backend: status %d, want MOERUN_ENOTSUP", (int)st);
    float x[2 * 16], out[2 * 16];
    for (int i = 0; i < 2 * 16; i++) {
        x[i] = (float)(i % 7) * 0.25f - 0.5f;
    }
    st = moerun_forward(l, 2, x, out);
    CHECK(st == MOERUN_OK, "moerun_forward after a refused device forward: status %d", (int)st);

    CHECK(moerun_close(rt) == MOERUN_OK, "moerun_close");
    CHECK(moerun_device(rt, &dev) == MOERUN_EINVAL, "moerun_device of a closed runtime is not MOERUN_EINVAL");
    CHECK(moerun_finalize() == MOERUN_OK, "moerun_finalize");
    printf("host_check: ok\n");
    return 0;
}
