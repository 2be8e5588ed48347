/* The masked weight of a coefficient step and its alpha gradient on CPU, with AVX-512 (F, BW, VL,
 * DQ, VBMI) and GFNI: the loops `impress/fused_mixture.py` calls where this machine builds and runs
 * them. Each returns 0, or -1 when it could not allocate its few KB of tables.
 *
 * words (K, numel) uint32, K >= ceil(m / 32): bit j of words[k][w] is mask 32k + j at weight w (the
 * layers' `bank_words`). Row r covers the flat weights bounds[r]..bounds[r + 1] and mixes alpha[r]
 * (m floats). The weight is read as int8 signs times `scale` (w8) or as floats (scale 1).
 *
 * forward   out[w] = scale * w[w] * sum_i alpha[r, i] * bit_i(w)
 *   Per row, each nibble t of masks (4t..4t+3) has a table of the 16 subset sums of its alphas, one
 *   zmm. For 16 weights, nibble t of their words indexes that table (VPERMPS reads an index's low 4
 *   bits): a shift, a permute and an add per 4 masks and 16 weights.
 * backward  dalpha[r, i] += scale * sum over row r's weights w of grad[w] * w[w] * bit_i(w)
 *   The same lookups with weights and masks swapped: per block of 32 weights, each nibble q of the
 *   block (4 weights) has a table of the 16 subset sums of their grad * w. A word's 32x32 bit block is
 *   transposed so that a lane is a mask and its bits are the block's weights; nibble q of each lane
 *   then indexes table q: again a shift, a permute and an add per 4 weights and 16 masks.
 *
 * Sums are float32, in another order than the explicit sum's. Masks past m weigh 0: the forward's
 * tables leave them out and the backward does not store their sums.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define INLINE static inline __attribute__((always_inline))
#define STEP 4   /* zmm of 16 weights per forward step: 8 chains of adds in flight, 2 per zmm */
#define TILE 4   /* blocks of 32 weights whose grad * w the backward computes at once (512 B) */

/* lanes v of table j's bit: the entries whose index has bit j set */
static const __mmask16 BIT[4] = {0xAAAA, 0xCCCC, 0xF0F0, 0xFF00};

INLINE __mmask16 first(int64_t n) { return n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1); }

/* the 16 weights from `base` in the lanes of k, as floats (0 elsewhere) */
INLINE __m512 load_w(const void *w, int w8, int64_t base, __mmask16 k) {
    if (w8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, (const int8_t *)w + base)));
    return _mm512_maskz_loadu_ps(k, (const float *)w + base);
}

/* the table of x[0..3]: entry v = sum of x[j] over the bits j set in v, with x[j] = 0 for j >= n */
INLINE __m512 subset_sums(const float *x, int64_t n) {
    __m512 t = _mm512_setzero_ps();
    for (int j = 0; j < 4 && j < n; j++) t = _mm512_mask_add_ps(t, BIT[j], t, _mm512_set1_ps(x[j]));
    return t;
}

/* out for n zmm of weights from base (the last one in the lanes of `last`), tables (nt, 16) */
INLINE void forward_step(const uint32_t *words, int64_t numel, int64_t nt, const float *tables, int64_t base,
                         int n, __mmask16 last, const void *w, int w8, __m512 scale, float *out) {
    __m512 even[STEP], odd[STEP];
    for (int g = 0; g < n; g++) even[g] = odd[g] = _mm512_setzero_ps();
    for (int64_t k = 0; 8 * k < nt; k++) {
        const uint32_t *row = words + k * numel + base;
        const float *tk = tables + 128 * k;
        int nibbles = nt - 8 * k < 8 ? (int)(nt - 8 * k) : 8;
        __m512i x[STEP];
        for (int g = 0; g < n; g++) x[g] = _mm512_maskz_loadu_epi32(g == n - 1 ? last : 0xFFFF, row + 16 * g);
        for (int t = 0; t < nibbles; t++) {
            __m512 table = _mm512_load_ps(tk + 16 * t);
            for (int g = 0; g < n; g++) {
                __m512 v = _mm512_permutexvar_ps(t ? _mm512_srli_epi32(x[g], 4 * t) : x[g], table);
                if (t & 1) odd[g] = _mm512_add_ps(odd[g], v);
                else even[g] = _mm512_add_ps(even[g], v);
            }
        }
    }
    for (int g = 0; g < n; g++) {
        __mmask16 k = g == n - 1 ? last : 0xFFFF;
        __m512 v = _mm512_mul_ps(_mm512_add_ps(even[g], odd[g]), scale);
        _mm512_mask_storeu_ps(out + base + 16 * g, k, _mm512_mul_ps(v, load_w(w, w8, base + 16 * g, k)));
    }
}

int mixture_forward(const uint32_t *words, int64_t numel, int64_t m, const int64_t *bounds, int64_t rows,
                    const float *alpha, const void *w, int w8, float scale, float *out) {
    int64_t nt = (m + 3) / 4;
    float *tables = aligned_alloc(64, 64 * (nt + 1));  /* (nt, 16) */
    if (!tables) return -1;
    __m512 sc = _mm512_set1_ps(scale);
    for (int64_t r = 0; r < rows; r++) {
        int64_t s = bounds[r], e = bounds[r + 1];
        for (int64_t t = 0; t < nt; t++) _mm512_store_ps(tables + 16 * t, subset_sums(alpha + r * m + 4 * t, m - 4 * t));
        int64_t base = s;
        for (; base + 16 * STEP <= e; base += 16 * STEP)
            forward_step(words, numel, nt, tables, base, STEP, 0xFFFF, w, w8, sc, out);
        for (; base < e; base += 16)  /* the row's last few zmm, one at a time */
            forward_step(words, numel, nt, tables, base, 1, first(e - base), w, w8, sc, out);
    }
    free(tables);
    return 0;
}

/* Byte permutes and GF2P8AFFINEQB's operand for the transposes: the 32x32 bit block of a word over
 * 32 weights (128 bytes in a, b: byte 4w + c holds masks 8c..8c+7 of weight w) becomes two zmm of 16
 * masks each, lane i's bit p being weight p ^ 7 (bytes are transposed with their bit order reversed). */
typedef struct {
    __m512i gather[2], spread, select;
} Transpose;

static Transpose transpose_constants(void) {
    uint8_t gather[2][64], spread[64], select[64];
    for (int t = 0; t < 64; t++) {
        int qword = t / 8, c = qword / 4, d = qword % 4;  /* qword (c, d): mask byte c of weights 8d..8d+7 */
        gather[0][t] = 4 * (8 * d + t % 8) + c;
        gather[1][t] = 4 * (8 * d + t % 8) + c + 2;
        select[t] = 1 << (t % 8);  /* as x in GF2P8AFFINEQB(x, A): byte j of the result is column j of A */
        int lane = t / 4, byte = t % 4;  /* mask 8c + j takes byte j of qwords (c, 0..3) */
        spread[t] = 8 * (4 * (lane / 8) + byte) + lane % 8;
    }
    Transpose T = {{_mm512_loadu_si512(gather[0]), _mm512_loadu_si512(gather[1])},
                   _mm512_loadu_si512(spread), _mm512_loadu_si512(select)};
    return T;
}

INLINE __m512i masks_of(const Transpose *T, int h, __m512i a, __m512i b) {
    __m512i qwords = _mm512_permutex2var_epi8(a, T->gather[h], b);
    return _mm512_permutexvar_epi8(T->spread, _mm512_gf2p8affine_epi64_epi8(T->select, qwords, 0));
}

int mixture_backward(const uint32_t *words, int64_t numel, int64_t m, const int64_t *bounds, int64_t rows,
                     const float *grad, const void *w, int w8, float scale, float *dalpha) {
    int64_t nk = (m + 31) / 32;
    float *gw = aligned_alloc(64, 4 * 32 * TILE);  /* (TILE, 32): grad * w, 0 outside the row */
    float *acc = aligned_alloc(64, 128 * (nk + 1));  /* (32 nk): the row's sums per mask */
    if (!gw || !acc) {
        free(gw);
        free(acc);
        return -1;
    }
    const Transpose T = transpose_constants();
    for (int64_t r = 0; r < rows; r++) {
        int64_t s = bounds[r], e = bounds[r + 1];
        memset(acc, 0, 128 * nk);
        for (int64_t p0 = s / 32, end = (e + 31) / 32; p0 < end; p0 += TILE) {
            int np = end - p0 < TILE ? (int)(end - p0) : TILE;
            for (int t = 0; t < 2 * np; t++) {
                int64_t base = 32 * p0 + 16 * t;
                __mmask16 k = first(e - base) & (__mmask16)~first(s - base);
                _mm512_store_ps(gw + 16 * t, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, grad + base), load_w(w, w8, base, k)));
            }
            for (int p = 0; p < np; p++) {
                int64_t base = 32 * (p0 + p);
                __m512 table[8];  /* nibble q: bits 4q..4q+3 of a mask lane, weights (4q + j) ^ 7 */
                for (int q = 0; q < 8; q++) {
                    const float *g = gw + 32 * p;
                    table[q] = _mm512_maskz_mov_ps(BIT[0], _mm512_set1_ps(g[(4 * q) ^ 7]));
                    for (int j = 1; j < 4; j++)
                        table[q] = _mm512_mask_add_ps(table[q], BIT[j], table[q], _mm512_set1_ps(g[(4 * q + j) ^ 7]));
                }
                __mmask16 lo = first(numel - base), hi = first(numel - base - 16);
                for (int64_t k = 0; k < nk; k++) {
                    const uint32_t *row = words + k * numel + base;
                    __m512i a = _mm512_maskz_loadu_epi32(lo, row), b = _mm512_maskz_loadu_epi32(hi, row + 16);
                    for (int h = 0; h < 2 && 32 * k + 16 * h < m; h++) {
                        __m512i x = masks_of(&T, h, a, b);
                        __m512 l[8];
                        for (int q = 0; q < 8; q++) l[q] = _mm512_permutexvar_ps(q ? _mm512_srli_epi32(x, 4 * q) : x, table[q]);
                        __m512 v = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(l[0], l[1]), _mm512_add_ps(l[2], l[3])),
                                                 _mm512_add_ps(_mm512_add_ps(l[4], l[5]), _mm512_add_ps(l[6], l[7])));
                        float *to = acc + 32 * k + 16 * h;
                        _mm512_store_ps(to, _mm512_add_ps(_mm512_load_ps(to), v));
                    }
                }
            }
        }
        for (int64_t i = 0; i < m; i++) dalpha[r * m + i] += scale * acc[i];
    }
    free(gw);
    free(acc);
    return 0;
}
