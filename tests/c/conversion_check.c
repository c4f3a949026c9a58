/* Runs the kernels' row conversions (tpt_row_in_f32 / tpt_row_out_f32 of
 * common.h) over a file of inputs and writes the results, so that
 * tests/test_build.py can check them against torch's and NumPy's own
 * conversions and against each other at every x86-64 level.
 *
 *   conversion_check in  bfloat16|float16 INPUT OUTPUT   uint16 bits -> float32 bits
 *   conversion_check out bfloat16|float16 INPUT OUTPUT   float32 bits -> uint16 bits
 *   conversion_check in-pairs  bfloat16 INPUT OUTPUT     the same through the bfloat16 pair words
 *   conversion_check out-pairs bfloat16 INPUT OUTPUT     (tpt_bf16_load_pair / tpt_bf16_store_pair)
 *
 * On a CPU with AVX512-BF16 the dispatched build's row stores go through
 * convert.c's hardware conversion, as the kernels' do (tpt_bf16_native).
 *
 * The inputs are cut into rows of ROW elements, and each row starts at a
 * varying element offset, so every vectorised loop body, its peeled heads and
 * its scalar tails see every input value class. The conversion functions carry
 * TPT_MULTIVERSION as the kernels do, so the build that setup.py makes runs
 * this machine's clone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

enum { ROW = 1000 };

static void* read_file(const char* path, size_t* bytes) {
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *bytes = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void* data = malloc(*bytes + 64);
    if (data && fread(data, 1, *bytes, f) != *bytes) {
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

/* Row lengths 1..ROW (cycling by 37, prime to every vector width). */
static int64_t row_length(int64_t start, int64_t n, int64_t* step) {
    *step = *step % ROW + 37;
    const int64_t len = *step % ROW + 1;
    return start + len < n ? len : n - start;
}

TPT_MULTIVERSION
static void to_float(float* out, const uint16_t* in, tpt_dtype dt, int64_t n) {
    float* scratch = (float*)malloc(ROW * sizeof(float));
    int64_t step = 0;
    for (int64_t i = 0; i < n;) {
        const int64_t len = row_length(i, n, &step);
        memcpy(out + i, tpt_row_in_f32(in + i, dt, scratch, len), (size_t)len * sizeof(float));
        i += len;
    }
    free(scratch);
}

TPT_MULTIVERSION
static void from_float(uint16_t* out, const float* in, tpt_dtype dt, int64_t n) {
    int64_t step = 0;
    for (int64_t i = 0; i < n;) {
        const int64_t len = row_length(i, n, &step);
        tpt_row_out_f32(out + i, dt, in + i, len);
        i += len;
    }
}

/* The pair loops of the kernels (ROW_BF16_PAIRS): a row's elements two at a
 * time as 32-bit words, an odd last element alone. Rows start at any element,
 * so the words are unaligned as often as not. */
TPT_MULTIVERSION
static void pairs_to_float(float* out, const uint16_t* in, int64_t n) {
    int64_t step = 0;
    for (int64_t i = 0; i < n;) {
        const int64_t len = row_length(i, n, &step);
        for (int64_t j = 0; j < len / 2; j++) {
            const uint32_t w = tpt_bf16_load_pair(in + i, j);
            out[i + 2 * j] = tpt_bf16_even(w);
            out[i + 2 * j + 1] = tpt_bf16_odd(w);
        }
        if (len % 2) out[i + len - 1] = tpt_bf16_to_float(in[i + len - 1]);
        i += len;
    }
}

TPT_MULTIVERSION
static void pairs_from_float(uint16_t* out, const float* in, int64_t n) {
    int64_t step = 0;
    for (int64_t i = 0; i < n;) {
        const int64_t len = row_length(i, n, &step);
        for (int64_t j = 0; j < len / 2; j++) tpt_bf16_store_pair(out + i, j, in[i + 2 * j], in[i + 2 * j + 1]);
        if (len % 2) out[i + len - 1] = tpt_float_to_bf16(in[i + len - 1]);
        i += len;
    }
}

int main(int argc, char** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s in|out|in-pairs|out-pairs bfloat16|float16 INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    const int to_f32 = strncmp(argv[1], "in", 2) == 0, pairs = strstr(argv[1], "-pairs") != NULL;
    const tpt_dtype dt = strcmp(argv[2], "bfloat16") == 0 ? TPT_BFLOAT16 : TPT_FLOAT16;
    size_t bytes;
    void* in = read_file(argv[3], &bytes);
    if (!in) {
        fprintf(stderr, "cannot read %s\n", argv[3]);
        return 1;
    }
    const int64_t n = (int64_t)(bytes / (to_f32 ? 2 : 4));
    const size_t out_bytes = (size_t)n * (to_f32 ? 4 : 2);
    void* out = malloc(out_bytes + 64);
    if (pairs && dt != TPT_BFLOAT16) {
        fprintf(stderr, "the pair words are bfloat16's\n");
        return 2;
    }
    if (to_f32 && pairs) pairs_to_float((float*)out, (const uint16_t*)in, n);
    else if (to_f32) to_float((float*)out, (const uint16_t*)in, dt, n);
    else if (pairs) pairs_from_float((uint16_t*)out, (const float*)in, n);
    else from_float((uint16_t*)out, (const float*)in, dt, n);
    FILE* f = fopen(argv[4], "wb");
    if (!f || fwrite(out, 1, out_bytes, f) != out_bytes) {
        fprintf(stderr, "cannot write %s\n", argv[4]);
        return 1;
    }
    fclose(f);
    free(in);
    free(out);
    return 0;
}
