/* Training, compiled: the chapter's RNN (`--impl compiled`, `bptt.CompiledRNN`) and the
 * minGRU/minLSTM windows (`minrnn.CompiledLinear`, `CompiledMinRecurrence`). Every product is
 * one of two kernels, run by the team (fastloop.h):
 *   rows x panel     out = x W, with a step's pointwise part (tanh, tanh') in its epilogue;
 *   columns x panel  out = x^T Y, a weight's gradient over all T B rows.
 * The references are `bptt.RNNRecurrence`, the book's loop and `MinCell.sequential`; the sums
 * run in another order than MKL's (and tanh is tanh16), so each is held to its reference within
 * float rounding, not bitwise. Matrices come packed in panels of 32 columns (`pack_floats`,
 * `pack_pairs` for bf16): 8 rows x 32 columns of accumulators fill 16 vector registers, and
 * each weight vector loaded serves 8 rows. */
#include "fastloop.h"

#define TP 32
#define CHUNK 64                     /* rows a job takes at a time when it splits by rows */

enum { FORWARD, BACKWARD, PLAIN };   /* tanh(xW + rows[id]); (xW + add)(1 - y^2); xW + bias */

typedef struct {
    int mode, M, K, N;               /* out (M, N) = x (M, K) W (K, N), then the mode's part */
    const float *x, *W;              /* W packed in TP-column panels */
    const int64_t *ids;              /* FORWARD: row r adds rows[ids[r]] (V, N) */
    const float *rows;
    const float *add, *y;            /* BACKWARD: (M, N) each */
    const float *bias;               /* PLAIN: (N,) or NULL */
    float *out;                      /* (M, N) */
    int Kp;                          /* bf16: pairs along K, ceil(K / 2) */
    const uint32_t *xb, *Wb;         /* bf16: x (M, Kp) and W's panels (P, Kp, TP) in pairs */
    uint32_t *xb_out;                /* bf16: out's rows in pairs too (the next step's x) */
} Gemm;

static inline __attribute__((always_inline)) void
rows_panel(const float *x, int K, const float *w, int R, v16 acc[8][2])
{
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = splat(0.0f);
    for (int k = 0; k < K; k++) {
        v16 w0 = *(const v16u *)(w + (int64_t)k * TP);
        v16 w1 = *(const v16u *)(w + (int64_t)k * TP + LANES);
        for (int r = 0; r < R; r++) {
            float a = x[(int64_t)r * K + k];
            acc[r][0] += w0 * a;
            acc[r][1] += w1 * a;
        }
    }
}

/* W (K, N), element (k, n) at W[k ldk + n ldn], into `fastloop.pack_panels`'s layout: panels
 * of 32 columns, zero-padded (P, K, 32); a transposed view packs without a copy first. */
void pack_floats(int K, int N, const float *W, int64_t ldk, int64_t ldn, float *out)
{
    const int P = (N + TP - 1) / TP;
    if (ldk < ldn) {                 /* a transposed view: read it along k, its rows in memory */
        for (int n = 0; n < P * TP; n++)
            for (int k = 0; k < K; k++)
                out[((int64_t)(n / TP) * K + k) * TP + n % TP] = n < N ? W[k * ldk + n * ldn]
                                                                       : 0.0f;
        return;
    }
    for (int p = 0; p < P; p++)
        for (int k = 0; k < K; k++)
            for (int c = 0; c < TP; c++) {
                int n = p * TP + c;
                out[((int64_t)p * K + k) * TP + c] = n < N ? W[k * ldk + n * ldn] : 0.0f;
            }
}

/* bf16 products (`--precision bf16`): x and W rounded to bfloat16 and multiplied in pairs along
 * K by AVX512-BF16's dot product, each pair's sum added to fp32 accumulators; states and sums
 * stay fp32, as in `bptt.RNNRecurrence` with bf16. A pair is two bf16 in one uint32, the even
 * k in the low half. Only where the compiler targets AVX512-BF16 (`has_bf16`). */
#ifdef __AVX512BF16__
#include <immintrin.h>

int has_bf16(void) { return 1; }

static inline uint32_t bf16_bits(float f)                    /* round to nearest even */
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline uint32_t pair_of(float lo, float hi) { return bf16_bits(lo) | bf16_bits(hi) << 16; }

/* v's first n values (columns c, c + 1, ... with c even) as n / 2 pairs, the last one padded. */
static inline void store_pairs(uint32_t *out, v16 v, int n)
{
    if (n >= LANES) {
        _mm256_storeu_si256((__m256i *)out, (__m256i)_mm512_cvtneps_pbh((__m512)v));
        return;
    }
    for (int k = 0; k < n; k += 2) out[k / 2] = pair_of(v[k], k + 1 < n ? v[k + 1] : 0.0f);
}

/* x (R, K) → pairs (R, ceil(K / 2)) along each row. */
static void row_pairs(const float *x, int R, int K, uint32_t *out)
{
    const int Kp = (K + 1) / 2;
    for (int r = 0; r < R; r++)
        for (int kp = 0; kp < Kp; kp++)
            out[(int64_t)r * Kp + kp] = pair_of(x[(int64_t)r * K + 2 * kp],
                                                2 * kp + 1 < K ? x[(int64_t)r * K + 2 * kp + 1]
                                                               : 0.0f);
}

/* W (K, N), element (k, n) at W[k ldk + n ldn], into `fastloop.pack_pairs`'s layout: panels
 * of 32 columns, rows in bf16 pairs, zero-padded (P, ceil(K / 2), 32). */
void pack_pairs(int K, int N, const float *W, int64_t ldk, int64_t ldn, uint32_t *out)
{
    const int Kp = (K + 1) / 2, P = (N + TP - 1) / TP;
    for (int p = 0; p < P; p++)
        for (int kp = 0; kp < Kp; kp++)
            for (int c = 0; c < TP; c++) {
                int n = p * TP + c, k = 2 * kp;
                float lo = n < N ? W[k * ldk + n * ldn] : 0.0f;
                float hi = n < N && k + 1 < K ? W[(k + 1) * ldk + n * ldn] : 0.0f;
                out[((int64_t)p * Kp + kp) * TP + c] = pair_of(lo, hi);
            }
}

static inline __attribute__((always_inline)) void
rows_panel_bf16(const uint32_t *x, int Kp, const uint32_t *w, int R, v16 acc[8][2])
{
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = splat(0.0f);
    for (int kp = 0; kp < Kp; kp++) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + (int64_t)kp * TP);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + (int64_t)kp * TP + LANES);
        for (int r = 0; r < R; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)x[(int64_t)r * Kp + kp]);
            acc[r][0] = (v16)_mm512_dpbf16_ps((__m512)acc[r][0], a, w0);
            acc[r][1] = (v16)_mm512_dpbf16_ps((__m512)acc[r][1], a, w1);
        }
    }
}

static void bf16_tile(const uint32_t *x, int Kp, const uint32_t *w, int R, v16 acc[8][2])
{
    switch (R) {
    case 8: rows_panel_bf16(x, Kp, w, 8, acc); break;
    case 7: rows_panel_bf16(x, Kp, w, 7, acc); break;
    case 6: rows_panel_bf16(x, Kp, w, 6, acc); break;
    case 5: rows_panel_bf16(x, Kp, w, 5, acc); break;
    case 4: rows_panel_bf16(x, Kp, w, 4, acc); break;
    case 3: rows_panel_bf16(x, Kp, w, 3, acc); break;
    case 2: rows_panel_bf16(x, Kp, w, 2, acc); break;
    default: rows_panel_bf16(x, Kp, w, 1, acc); break;
    }
}
#else
int has_bf16(void) { return 0; }
void pack_pairs(int K, int N, const float *W, int64_t ldk, int64_t ldn, uint32_t *out)
{
    (void)K; (void)N; (void)W; (void)ldk; (void)ldn; (void)out;
}
static inline void store_pairs(uint32_t *out, v16 v, int n) { (void)out; (void)v; (void)n; }
static void row_pairs(const float *x, int R, int K, uint32_t *out)
{
    (void)x; (void)R; (void)K; (void)out;
}
static void bf16_tile(const uint32_t *x, int Kp, const uint32_t *w, int R, v16 acc[8][2])
{
    (void)x; (void)Kp; (void)w; (void)R; (void)acc;
}
#endif

/* Rows [r0, r1) of a Gemm, panel p's 32 columns, 8 rows at a time. */
static void gemm_tile(const Gemm *g, int p, int r0, int r1)
{
    const float *w = g->W + (int64_t)p * g->K * TP;
    v16 acc[8][2];
    for (int b = r0; b < r1; b += 8) {
        const float *x = g->x + (int64_t)b * g->K;
        int R = r1 - b < 8 ? r1 - b : 8;
        if (g->xb) bf16_tile(g->xb + (int64_t)b * g->Kp, g->Kp,
                             g->Wb + (int64_t)p * g->Kp * TP, R, acc);
        else switch (R) {            /* a constant count, so each case keeps acc in registers */
        case 8: rows_panel(x, g->K, w, 8, acc); break;
        case 7: rows_panel(x, g->K, w, 7, acc); break;
        case 6: rows_panel(x, g->K, w, 6, acc); break;
        case 5: rows_panel(x, g->K, w, 5, acc); break;
        case 4: rows_panel(x, g->K, w, 4, acc); break;
        case 3: rows_panel(x, g->K, w, 3, acc); break;
        case 2: rows_panel(x, g->K, w, 2, acc); break;
        default: rows_panel(x, g->K, w, 1, acc); break;
        }
        for (int r = 0; r < R; r++) {
            for (int j = 0; j < 2; j++) {
                int c = p * TP + j * LANES, n = g->N - c;
                if (n <= 0) break;
                int64_t at = (int64_t)(b + r) * g->N + c;
                v16 v = acc[r][j];
                if (g->mode == FORWARD) {
                    v = tanh16(v + load_n(g->rows + g->ids[b + r] * g->N + c, n));
                } else if (g->mode == BACKWARD) {
                    v16 h = load_n(g->y + at, n);
                    v = (v + load_n(g->add + at, n)) * (1.0f - h * h);
                } else if (g->bias) {
                    v += load_n(g->bias + c, n);
                }
                store_n(g->out + at, v, n);
                if (g->xb_out) store_pairs(g->xb_out + (int64_t)(b + r) * g->Kp + c / 2, v, n);
            }
        }
    }
}

static void gemm_panel(const Team *tm, int p)          /* a job: panel p, every row */
{
    const Gemm *g = tm->ctx;
    gemm_tile(g, p, 0, g->M);
}

static void gemm_chunk(const Team *tm, int c)          /* a job: rows of chunk c, every panel */
{
    const Gemm *g = tm->ctx;
    int r1 = (c + 1) * CHUNK < g->M ? (c + 1) * CHUNK : g->M;
    for (int p = 0; p * TP < g->N; p++) gemm_tile(g, p, c * CHUNK, r1);
}

/* out (M, N) = x (M, K) W + bias, split by rows (M >> N: the output layer and its gradient).
 * Returns 0, or -1 out of memory. */
int gemm_rows(int M, int K, int N, const float *x, const float *Wp, const float *bias,
              float *out, int threads)
{
    Team tm; pthread_t thread;
    Gemm g = {PLAIN, M, K, N, x, Wp, NULL, NULL, NULL, NULL, bias, out, 0, NULL, NULL, NULL};
    if (team_start_job(&tm, &thread, (M + CHUNK - 1) / CHUNK, threads, gemm_chunk, &g, 0) < 0)
        return -1;
    team_run(&tm, 1);
    team_stop(&tm, thread);
    return 0;
}

/* bf16: two buffers of (B, ceil(H / 2)) pairs, the step's x and the next one's; the first
 * holds x0's. Returns NULL out of memory. */
static uint32_t *pair_buffers(int B, int H, const float *x0)
{
    const int64_t n = (int64_t)B * ((H + 1) / 2);
    uint32_t *buf = malloc(sizeof(uint32_t) * 2 * (size_t)n);
    if (buf) row_pairs(x0, B, H, buf);
    return buf;
}

/* Hs[t] (B, H) = tanh(rows[ids[t]] + Hs[t-1] W_hh) for t < T, Hs[-1] = h0: ids (T, B),
 * rows (V, H) = W_xh + b_h (X_t W_xh for one-hot X_t is a row of W_xh), Wp = W_hh packed, or
 * with Wb (W_hh in bf16 pairs, `has_bf16`) bf16 products. Returns 0, or -1 out of memory. */
int rnn_train_forward(int T, int B, int H, const int64_t *ids, const float *rows,
                      const float *h0, const float *Wp, const uint32_t *Wb, float *Hs,
                      int threads)
{
    Team tm; pthread_t thread;
    Gemm g = {FORWARD, B, H, H, NULL, Wp, NULL, rows, NULL, NULL, NULL, NULL,
              (H + 1) / 2, NULL, Wb, NULL};
    const int64_t BH = (int64_t)B * H, BKp = (int64_t)B * g.Kp;
    if (Wb && !has_bf16()) return -1;
    uint32_t *pairs = Wb ? pair_buffers(B, H, h0) : NULL;
    if ((Wb && !pairs) ||
        team_start_job(&tm, &thread, (H + TP - 1) / TP, threads, gemm_panel, &g, 0) < 0) {
        free(pairs);
        return -1;
    }
    for (int t = 0; t < T; t++) {
        g.x = t ? Hs + (t - 1) * BH : h0;                      /* (B, H) H_{t-1} */
        g.ids = ids + (int64_t)t * B;                          /* (B,) X_t */
        g.out = Hs + t * BH;                                   /* (B, H) H_t */
        if (pairs) {                                           /* H_{t-1}, H_t in pairs */
            g.xb = pairs + (t & 1) * BKp;
            g.xb_out = pairs + (~t & 1) * BKp;
        }
        team_run(&tm, t + 1);
    }
    team_stop(&tm, thread);
    free(pairs);
    return 0;
}

/* The reverse recurrence: dZ[t] = (dH[t] + dZ[t+1] W_hh^T) (1 - Hs[t]^2), dZ[T] = 0, where
 * dH (T, B, H) is the loss's gradient through each step's own output; WTp = W_hh^T packed, or
 * WTb in bf16 pairs. With dh0 also dh0 (B, H) = dZ[0] W_hh^T. Returns 0, or -1 out of memory. */
int rnn_train_backward(int T, int B, int H, const float *dH, const float *Hs, const float *WTp,
                       const uint32_t *WTb, float *dZ, float *dh0, int threads)
{
    Team tm; pthread_t thread;
    Gemm g = {BACKWARD, B, H, H, NULL, WTp, NULL, NULL, NULL, NULL, NULL, NULL,
              (H + 1) / 2, NULL, WTb, NULL};
    const int64_t BH = (int64_t)B * H, BKp = (int64_t)B * g.Kp, last = (int64_t)(T - 1) * BH;
    for (int64_t i = 0; i < BH; i++)                           /* (B, H) dZ[T-1] */
        dZ[last + i] = dH[last + i] * (1.0f - Hs[last + i] * Hs[last + i]);
    if (WTb && !has_bf16()) return -1;
    uint32_t *pairs = WTb ? pair_buffers(B, H, dZ + last) : NULL;
    if ((WTb && !pairs) ||
        team_start_job(&tm, &thread, (H + TP - 1) / TP, threads, gemm_panel, &g, 0) < 0) {
        free(pairs);
        return -1;
    }
    int s = 0;
    for (int t = T - 2; t >= 0; t--, s++) {
        g.x = dZ + (t + 1) * BH;                               /* (B, H) dZ[t+1] */
        g.add = dH + t * BH; g.y = Hs + t * BH;                /* (B, H) each */
        g.out = dZ + t * BH;                                   /* (B, H) dZ[t] */
        if (pairs) {                                           /* dZ[t+1], dZ[t] in pairs */
            g.xb = pairs + (s & 1) * BKp;
            g.xb_out = pairs + (~s & 1) * BKp;
        }
        team_run(&tm, s + 1);
    }
    if (dh0) {
        g.mode = PLAIN; g.x = dZ; g.out = dh0;
        if (pairs) { g.xb = pairs + (s & 1) * BKp; g.xb_out = NULL; }
        team_run(&tm, s + 1);
    }
    team_stop(&tm, thread);
    free(pairs);
    return 0;
}

/* acc[r] += sum over k of x[k, r] w[k] (R of x's columns, K of its rows, ldx apart). */
static inline __attribute__((always_inline)) void
cols_panel(const float *x, int64_t ldx, int K, const float *w, int R, v16 acc[8][2])
{
    for (int k = 0; k < K; k++) {
        v16 w0 = *(const v16u *)(w + (int64_t)k * TP);
        v16 w1 = *(const v16u *)(w + (int64_t)k * TP + LANES);
        const float *xk = x + k * ldx;
        for (int r = 0; r < R; r++) {
            acc[r][0] += w0 * xk[r];
            acc[r][1] += w1 * xk[r];
        }
    }
}

typedef struct {
    int M, N, K1, K2, chunks;        /* out (M, N) = x1^T Y[:K1] + x2^T Y[K1:] */
    const float *x1, *x2;            /* (K1, M) and (K2, M), rows ldx apart */
    int64_t ldx;
    const float *Y;                  /* (K1 + K2, N), row-major */
    float *packed;                   /* Y in TP-column panels, (P, K1 + K2, TP) */
    float *out;
    uint32_t *Yb, *xb;               /* bf16: Y's panels (P, Kp, TP) and x (Kp, M) in pairs */
} XtY;

/* Row k of [x1; x2] (M values). */
static inline const float *xty_row(const XtY *g, int k)
{
    return k < g->K1 ? g->x1 + k * g->ldx : g->x2 + (k - g->K1) * g->ldx;
}

#ifdef __AVX512BF16__
/* A job: Y's panel p, and rows [CHUNK q, CHUNK q + CHUNK) of x's pairs, q = p - P. */
static void xty_pack_bf16(const XtY *g, int p)
{
    const int K = g->K1 + g->K2, Kp = (K + 1) / 2, P = (g->N + TP - 1) / TP;
    if (p < P) {
        const int c0 = p * TP, n = g->N - c0 < TP ? g->N - c0 : TP;
        uint32_t *w = g->Yb + (int64_t)p * Kp * TP;
        for (int kp = 0; kp < Kp; kp++) {
            const float *lo = g->Y + (int64_t)2 * kp * g->N + c0;
            const float *hi = 2 * kp + 1 < K ? lo + g->N : NULL;
            for (int c = 0; c < TP; c++)
                w[(int64_t)kp * TP + c] = c < n ? pair_of(lo[c], hi ? hi[c] : 0.0f) : 0;
        }
        return;
    }
    for (int kp = (p - P) * CHUNK; kp < Kp && kp < (p - P + 1) * CHUNK; kp++) {
        const float *lo = xty_row(g, 2 * kp), *hi = 2 * kp + 1 < K ? xty_row(g, 2 * kp + 1) : NULL;
        for (int m = 0; m < g->M; m++)
            g->xb[(int64_t)kp * g->M + m] = pair_of(lo[m], hi ? hi[m] : 0.0f);
    }
}

static inline __attribute__((always_inline)) void
cols_panel_bf16(const uint32_t *x, int64_t ldx, int Kp, const uint32_t *w, int R, v16 acc[8][2])
{
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = splat(0.0f);
    for (int kp = 0; kp < Kp; kp++) {
        __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + (int64_t)kp * TP);
        __m512bh w1 = (__m512bh)_mm512_loadu_si512(w + (int64_t)kp * TP + LANES);
        const uint32_t *xk = x + kp * ldx;
        for (int r = 0; r < R; r++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32((int)xk[r]);
            acc[r][0] = (v16)_mm512_dpbf16_ps((__m512)acc[r][0], a, w0);
            acc[r][1] = (v16)_mm512_dpbf16_ps((__m512)acc[r][1], a, w1);
        }
    }
}

static void xty_rows_bf16(const XtY *g, int r0, const uint32_t *w, int R, v16 acc[8][2])
{
    const int Kp = (g->K1 + g->K2 + 1) / 2;
    const uint32_t *x = g->xb + r0;
    switch (R) {
    case 8: cols_panel_bf16(x, g->M, Kp, w, 8, acc); break;
    case 7: cols_panel_bf16(x, g->M, Kp, w, 7, acc); break;
    case 6: cols_panel_bf16(x, g->M, Kp, w, 6, acc); break;
    case 5: cols_panel_bf16(x, g->M, Kp, w, 5, acc); break;
    case 4: cols_panel_bf16(x, g->M, Kp, w, 4, acc); break;
    case 3: cols_panel_bf16(x, g->M, Kp, w, 3, acc); break;
    case 2: cols_panel_bf16(x, g->M, Kp, w, 2, acc); break;
    default: cols_panel_bf16(x, g->M, Kp, w, 1, acc); break;
    }
}
#else
static void xty_pack_bf16(const XtY *g, int p) { (void)g; (void)p; }
static void xty_rows_bf16(const XtY *g, int r0, const uint32_t *w, int R, v16 acc[8][2])
{
    (void)g; (void)r0; (void)w; (void)R; (void)acc;
}
#endif

/* A job: Y's columns [32p, 32p + 32) into their panel, zero-padded. */
static void xty_pack(const Team *tm, int p)
{
    const XtY *g = tm->ctx;
    const int K = g->K1 + g->K2, c0 = p * TP, n = g->N - c0 < TP ? g->N - c0 : TP;
    float *w = g->packed + (int64_t)p * K * TP;
    for (int k = 0; k < K; k++) {
        memcpy(w + (int64_t)k * TP, g->Y + (int64_t)k * g->N + c0, sizeof(float) * n);
        memset(w + (int64_t)k * TP + n, 0, sizeof(float) * (TP - n));
    }
}

static inline __attribute__((always_inline)) void
xty_rows(const XtY *g, int r0, const float *w, int R, v16 acc[8][2])
{
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = splat(0.0f);
    cols_panel(g->x1 + r0, g->ldx, g->K1, w, R, acc);
    cols_panel(g->x2 + r0, g->ldx, g->K2, w + (int64_t)g->K1 * TP, R, acc);
}

/* A job: tile i = (panel, chunk of CHUNK output rows). */
static void xty_tile(const Team *tm, int i)
{
    const XtY *g = tm->ctx;
    const int p = i / g->chunks, c0 = p * TP, n = g->N - c0 < TP ? g->N - c0 : TP;
    const int r1 = (i % g->chunks + 1) * CHUNK < g->M ? (i % g->chunks + 1) * CHUNK : g->M;
    const float *w = g->packed ? g->packed + (int64_t)p * (g->K1 + g->K2) * TP : NULL;
    const uint32_t *wb = g->Yb ? g->Yb + (int64_t)p * ((g->K1 + g->K2 + 1) / 2) * TP : NULL;
    v16 acc[8][2];
    for (int r0 = i % g->chunks * CHUNK; r0 < r1; r0 += 8) {
        int R = r1 - r0 < 8 ? r1 - r0 : 8;
        if (g->xb) xty_rows_bf16(g, r0, wb, R, acc);
        else switch (R) {
        case 8: xty_rows(g, r0, w, 8, acc); break;
        case 7: xty_rows(g, r0, w, 7, acc); break;
        case 6: xty_rows(g, r0, w, 6, acc); break;
        case 5: xty_rows(g, r0, w, 5, acc); break;
        case 4: xty_rows(g, r0, w, 4, acc); break;
        case 3: xty_rows(g, r0, w, 3, acc); break;
        case 2: xty_rows(g, r0, w, 2, acc); break;
        default: xty_rows(g, r0, w, 1, acc); break;
        }
        for (int r = 0; r < R; r++)
            for (int j = 0; j < 2 && j * LANES < n; j++)
                store_n(g->out + (int64_t)(r0 + r) * g->N + c0 + j * LANES, acc[r][j],
                        n - j * LANES);
    }
}

#define KBLOCK 256                   /* rows of x and Y a chunk's panels take at a time */

/* acc[r] += x[k, r0 + r] Y[k] for k in [k0, k1), across the segments x1 and x2. */
static inline __attribute__((always_inline)) void
xty_block(const XtY *g, int r0, int k0, int k1, const float *w, int R, v16 acc[8][2])
{
    if (k0 < g->K1) {
        int e = k1 < g->K1 ? k1 : g->K1;
        cols_panel(g->x1 + k0 * g->ldx + r0, g->ldx, e - k0, w + (int64_t)k0 * TP, R, acc);
        k0 = e;
    }
    if (k0 < k1)
        cols_panel(g->x2 + (k0 - g->K1) * g->ldx + r0, g->ldx, k1 - k0, w + (int64_t)k0 * TP,
                   R, acc);
}

/* fp32, a job: rows [64c, 64c + 64) of out for every panel, K in blocks of KBLOCK, so that x's
 * block stays in cache while every panel uses it (one tile a panel read x from memory once a
 * panel: 19 MB x 12 panels for a minLSTM-384 window's dW, measured 19.5 ms against 8 for the
 * forward product). Each sum still runs in k order: the same bits as without blocks. */
static void xty_chunk(const XtY *g, int c)
{
    const int K = g->K1 + g->K2, P = (g->N + TP - 1) / TP;
    const int r_begin = c * CHUNK, r_end = r_begin + CHUNK < g->M ? r_begin + CHUNK : g->M;
    v16 acc[8][2];
    for (int k0 = 0; k0 < K; k0 += KBLOCK) {
        const int k1 = k0 + KBLOCK < K ? k0 + KBLOCK : K;
        for (int p = 0; p < P; p++) {
            const float *w = g->packed + (int64_t)p * K * TP;
            const int c0 = p * TP, n = g->N - c0 < TP ? g->N - c0 : TP;
            for (int r0 = r_begin; r0 < r_end; r0 += 8) {
                const int R = r_end - r0 < 8 ? r_end - r0 : 8;
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < 2; j++)
                        acc[r][j] = k0 == 0 || j * LANES >= n ? splat(0.0f)
                            : load_n(g->out + (int64_t)(r0 + r) * g->N + c0 + j * LANES,
                                     n - j * LANES);
                switch (R) {
                case 8: xty_block(g, r0, k0, k1, w, 8, acc); break;
                case 7: xty_block(g, r0, k0, k1, w, 7, acc); break;
                case 6: xty_block(g, r0, k0, k1, w, 6, acc); break;
                case 5: xty_block(g, r0, k0, k1, w, 5, acc); break;
                case 4: xty_block(g, r0, k0, k1, w, 4, acc); break;
                case 3: xty_block(g, r0, k0, k1, w, 3, acc); break;
                case 2: xty_block(g, r0, k0, k1, w, 2, acc); break;
                default: xty_block(g, r0, k0, k1, w, 1, acc); break;
                }
                for (int r = 0; r < R; r++)
                    for (int j = 0; j < 2 && j * LANES < n; j++)
                        store_n(g->out + (int64_t)(r0 + r) * g->N + c0 + j * LANES, acc[r][j],
                                n - j * LANES);
            }
        }
    }
}

/* A job of gemm_xty's team: step 1 packs (Y's panels; in bf16 x's pairs too), step 2 runs
 * the chunks (bf16: the tiles). */
static void xty_job(const Team *tm, int i)
{
    const XtY *g = tm->ctx;
    if (__atomic_load_n(&tm->step, __ATOMIC_ACQUIRE) == 2) {
        if (g->xb && i < g->chunks * ((g->N + TP - 1) / TP)) xty_tile(tm, i);
        else if (!g->xb && i < g->chunks) xty_chunk(g, i);
    } else if (g->xb) {
        xty_pack_bf16(g, i);
    } else if (i * TP < g->N) {
        xty_pack(tm, i);
    }
}

/* out (M, N) = x1^T Y[:K1] + x2^T Y[K1:], x1 (K1, M) and x2 (K2, M) ldx apart, Y (K1 + K2, N):
 * a weight's gradient as one product over all T B rows (x2 may be NULL with K2 = 0), in bf16
 * products with `bf16` (`has_bf16`). dW_hh is [h0; Hs[:-1]]^T dZ, dW_hq is Hs^T dO.
 * Returns 0, or -1 out of memory. */
int gemm_xty(int M, int N, int K1, int K2, const float *x1, const float *x2, int64_t ldx,
             const float *Y, float *out, int bf16, int threads)
{
    Team tm; pthread_t thread;
    const int P = (N + TP - 1) / TP, K = K1 + K2, Kp = (K + 1) / 2;
    const int chunks = (M + CHUNK - 1) / CHUNK, xchunks = (Kp + CHUNK - 1) / CHUNK;
    XtY g = {M, N, K1, K2, chunks, x1, x2 ? x2 : x1, ldx, Y, NULL, out, NULL, NULL};
    int jobs;
    if (bf16 && !has_bf16()) return -1;
    if (bf16) {
        g.Yb = malloc(sizeof(uint32_t) * (size_t)P * Kp * TP);
        g.xb = malloc(sizeof(uint32_t) * (size_t)Kp * M);
        jobs = chunks * P > P + xchunks ? chunks * P : P + xchunks;
    } else {
        g.packed = malloc(sizeof(float) * (size_t)P * K * TP);
        jobs = chunks > P ? chunks : P;
    }
    if ((bf16 ? !g.Yb || !g.xb : !g.packed) ||
        team_start_job(&tm, &thread, jobs, threads, xty_job, &g, 0) < 0) {
        free(g.packed); free(g.Yb); free(g.xb);
        return -1;
    }
    team_run(&tm, 1);                                          /* Y (and x) packed */
    team_run(&tm, 2);                                          /* the tiles */
    team_stop(&tm, thread);
    free(g.packed); free(g.Yb); free(g.xb);
    return 0;
}

/* ---- minGRU and minLSTM (`minrnn.MinCell.train_states` on the CPU): a window's recurrence
 * h_t = a_t h_{t-1} + b_t from the gates' pre-activations, and its gradient, in one pass each
 * (a row of the batch a job; every unit of the row in vectors). `MinCell.sequential` is the
 * reference. minGRU: a = 1 - z, b = z g(h~), z = sigmoid(k); minLSTM: a = f / (f + i),
 * b = i / (f + i) g(h~), f and i sigmoids; g(x) = x + 1/2 for x >= 0, sigmoid(x) below. */
typedef struct {
    int lstm, B, T, H;
    const float *gates;              /* (B, T, G H): k, h~ or f, i, h~ (pre-activations) */
    const float *h0;                 /* (B, H) */
    float *h;                        /* (B, T, H): the states (forward: out) */
    const float *dh;                 /* backward: (B, T, H) the loss's gradient at each h_t */
    float *dgates, *dh0;             /* backward: (B, T, G H), (B, H) */
} MinJob;

static inline v16 sigmoid_v(v16 x) { return 0.5f * (tanh16(0.5f * x) + 1.0f); }

/* a, b of one step for 16 units from the gates at g (units j..), with what backward needs. */
typedef struct { v16 a, b, s1, s2, gt, dg; } MinStep;

static inline MinStep min_step(const MinJob *m, const float *g, int j, int n)
{
    MinStep o;
    const int H = m->H;
    v16 ht = load_n(g + (m->lstm ? 2 : 1) * H + j, n);
    v16 sg = sigmoid_v(ht);
    o.gt = pick(ht >= 0.0f, ht + 0.5f, sg);                    /* g(h~) */
    o.dg = pick(ht >= 0.0f, splat(1.0f), sg * (1.0f - sg));   /* g'(h~) */
    if (!m->lstm) {
        o.s1 = sigmoid_v(load_n(g + j, n));                    /* z */
        o.a = 1.0f - o.s1;
        o.b = o.s1 * o.gt;
    } else {
        o.s1 = sigmoid_v(load_n(g + j, n));                    /* f */
        o.s2 = sigmoid_v(load_n(g + H + j, n));                /* i */
        v16 sum = o.s1 + o.s2;
        o.a = o.s1 / sum;
        o.b = o.s2 / sum * o.gt;
    }
    return o;
}

static void min_forward_row(const Team *tm, int b)
{
    const MinJob *m = tm->ctx;
    const int H = m->H, GH = (m->lstm ? 3 : 2) * H;
    for (int j = 0; j < H; j += LANES) {
        int n = H - j;
        v16 h = load_n(m->h0 + (int64_t)b * H + j, n);
        for (int t = 0; t < m->T; t++) {
            int64_t bt = (int64_t)b * m->T + t;
            MinStep s = min_step(m, m->gates + bt * GH, j, n);
            h = s.a * h + s.b;                                 /* (16,) h_t */
            store_n(m->h + bt * H + j, h, n);
        }
    }
}

static void min_backward_row(const Team *tm, int b)
{
    const MinJob *m = tm->ctx;
    const int H = m->H, GH = (m->lstm ? 3 : 2) * H;
    for (int j = 0; j < H; j += LANES) {
        int n = H - j;
        v16 carry = splat(0.0f);                               /* a_{t+1} dL/dh_{t+1} */
        for (int t = m->T - 1; t >= 0; t--) {
            int64_t bt = (int64_t)b * m->T + t;
            MinStep s = min_step(m, m->gates + bt * GH, j, n);
            v16 d = load_n(m->dh + bt * H + j, n) + carry;     /* dL/dh_t */
            v16 prev = t ? load_n(m->h + (bt - 1) * H + j, n)
                         : load_n(m->h0 + (int64_t)b * H + j, n);
            v16 da = d * prev;                                 /* dL/da_t; dL/db_t = d */
            float *dg = m->dgates + bt * GH;
            if (!m->lstm) {                                    /* a = 1 - z, b = z g */
                v16 z = s.s1;
                store_n(dg + j, (d * s.gt - da) * z * (1.0f - z), n);
                store_n(dg + H + j, d * z * s.dg, n);
            } else {                                           /* a = f/(f+i), b = i/(f+i) g */
                v16 f = s.s1, i = s.s2, sum = f + i, sum2 = sum * sum;
                v16 dip = d * s.gt;                            /* dL/d(i/(f+i)) */
                store_n(dg + j, (da - dip) * i / sum2 * f * (1.0f - f), n);
                store_n(dg + H + j, (dip - da) * f / sum2 * i * (1.0f - i), n);
                store_n(dg + 2 * H + j, d * (i / sum) * s.dg, n);
            }
            carry = s.a * d;
        }
        store_n(m->dh0 + (int64_t)b * H + j, carry, n);
    }
}

static int min_run(MinJob *m, void (*job)(const Team *, int), int threads)
{
    Team tm; pthread_t thread;
    if (team_start_job(&tm, &thread, m->B, threads, job, m, 0) < 0) return -1;
    team_run(&tm, 1);
    team_stop(&tm, thread);
    return 0;
}

/* h (B, T, H) from the gates' pre-activations (B, T, G H) and h0 (B, H); lstm: minLSTM. */
int min_forward(int lstm, int B, int T, int H, const float *gates, const float *h0, float *h,
                int threads)
{
    MinJob m = {lstm, B, T, H, gates, h0, h, NULL, NULL, NULL};
    return min_run(&m, min_forward_row, threads);
}

/* dgates (B, T, G H) and dh0 (B, H) from dh (B, T, H), given the forward's gates, h0, h. */
int min_backward(int lstm, int B, int T, int H, const float *gates, const float *h0,
                 const float *h, const float *dh, float *dgates, float *dh0, int threads)
{
    MinJob m = {lstm, B, T, H, gates, h0, (float *)h, dh, dgates, dh0};
    return min_run(&m, min_backward_row, threads);
}
