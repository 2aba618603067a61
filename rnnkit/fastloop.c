/* Generation's and the lab's per-character loops, compiled:
 *   rnn_greedy, rnn_trace  the chapter's H_t = tanh(X_t W_xh + b_h + H_{t-1} W_hh) for one
 *                          stream, greedy O_t = H_t W_hq + b_q, on one or two threads;
 *   gated_trace            an LSTM or GRU layer read along a text (the lab);
 *   kn_rows, kn_mix        the n-gram mixture's Kneser-Ney distributions, bitwise numpy's,
 *                          and a generation step's mixing.
 * The readable references are `generate.rnn_step_numpy`, `ScratchStepper.greedy_numpy`,
 * `lab.trace`'s loop and `KneserNey.rows_probs_numpy`; `fastloop.py` builds this file and
 * fasttrain.c with the machine's C compiler and the tests hold each to its reference. Why it
 * exists: per character, numpy's loop pays ~10 us of calls around a ~10 us GEMV; here a whole
 * text is one call.
 *
 * Matrices come packed in column panels (`fastloop.pack_columns`): panel p holds columns
 * [128p, 128p + w) as n_in contiguous rows of w floats, w a multiple of 16 (zero-padded), so
 * that a step streams through the weights in order with 8 vector accumulators.
 */
#include "fastloop.h"

#define PANEL 128                                  /* columns per panel: 8 vectors */

/* acc[k] (16 floats each) = x (n_in) · w (n_in rows of nv*16 floats). */
static inline __attribute__((always_inline)) void
panel(const float *x, const float *w, int n_in, int nv, float *y)
{
    v16 acc[PANEL / LANES];
    for (int k = 0; k < nv; k++) acc[k] = splat(0.0f);
    for (int i = 0; i < n_in; i++) {
        v16 xi = splat(x[i]);
        const v16u *row = (const v16u *)(w + (int64_t)i * nv * LANES);
        for (int k = 0; k < nv; k++) acc[k] += xi * row[k];
    }
    memcpy(y, acc, (size_t)nv * LANES * sizeof(float));
}

/* y (up to 128) = columns [p, p + 128) of x (n_in) · W (packed), p a multiple of 128. */
static void panel_at(const float *x, const float *W, int n_in, int n_out, int p, float *y)
{
    const float *w = W + (int64_t)p * n_in;
    int nv = (n_out - p >= PANEL) ? PANEL / LANES : (n_out - p + LANES - 1) / LANES;
    switch (nv) {                    /* a constant count, so each case keeps acc in registers */
    case 8: panel(x, w, n_in, 8, y); break;
    case 7: panel(x, w, n_in, 7, y); break;
    case 6: panel(x, w, n_in, 6, y); break;
    case 5: panel(x, w, n_in, 5, y); break;
    case 4: panel(x, w, n_in, 4, y); break;
    case 3: panel(x, w, n_in, 3, y); break;
    case 2: panel(x, w, n_in, 2, y); break;
    default: panel(x, w, n_in, 1, y); break;
    }
}

/* y (n_out, padded up to a multiple of 16) = x (n_in) · W (packed). */
static void vecmat(const float *x, const float *W, int n_in, int n_out, float *y)
{
    for (int p = 0; p < n_out; p += PANEL) panel_at(x, W, n_in, n_out, p, y + p);
}

/* out (n) = tanh(z (n) + row (n)); z may be read past n up to the next multiple of 16. */
static void add_tanh(const float *z, const float *row, int n, float *out)
{
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        v16 s = *(const v16u *)(z + j) + *(const v16u *)(row + j);
        *(v16u *)(out + j) = tanh16(s);
    }
    if (j < n) {                                   /* the tail through the same arithmetic */
        v16 s = splat(0.0f), t;
        for (int k = 0; j + k < n; k++) s[k] = z[j + k] + row[j + k];
        t = tanh16(s);
        for (int k = 0; j + k < n; k++) out[j + k] = t[k];
    }
}

/* The one-stream step's panel p: out[c, c + 128) = tanh(row + in W_hh) there. */
static void gemv_tanh(const Team *tm, int p)
{
    float z[PANEL];
    int c = p * PANEL, n = tm->H - c < PANEL ? tm->H - c : PANEL;
    panel_at(tm->in, tm->W, tm->H, tm->H, c, z);               /* (n,) H_{t-1} W_hh */
    add_tanh(z, tm->row + c, n, tm->out + c);                  /* (n,) H_t */
}

/* out (H) = tanh(row + in W_hh): step s of the one-stream team. */
static void team_step(Team *tm, int s, const float *in, const float *row, float *out)
{
    tm->in = in; tm->row = row; tm->out = out;
    team_run(tm, s);
}

static int team_start(Team *tm, pthread_t *thread, const float *W_hh, int H, int threads)
{
    int got = team_start_job(tm, thread, (H + PANEL - 1) / PANEL, threads, gemv_tanh, NULL, 1);
    tm->W = W_hh; tm->H = H;
    return got;
}

/* Teacher-forced: states[t] (H) = tanh(gx[t] + states[t-1] W_hh), states[-1] = h0.
 * gx (T, H) is X_t W_xh + b_h for every step. With W_out (packed, (H, V)) also
 * logits[t] (V) = states[t] W_out + b_out: numpy's GEMM for them would wake BLAS threads
 * that go on spinning into the next trace. Returns 0, or -1 out of memory. */
int rnn_trace(int T, int H, const float *gx, const float *W_hh, const float *h0,
              float *states, int threads, int V, const float *W_out, const float *b_out,
              float *logits)
{
    Team tm; pthread_t thread;
    float *o = NULL;
    if (W_out && !(o = malloc(sizeof(float) * (size_t)((V + LANES - 1) / LANES * LANES))))
        return -1;
    if (team_start(&tm, &thread, W_hh, H, threads) < 0) { free(o); return -1; }
    for (int t = 0; t < T; t++) {
        float *h = states + (int64_t)t * H;
        team_step(&tm, t + 1, t ? h - H : h0, gx + (int64_t)t * H, h);   /* (H,) H_t */
        if (!W_out) continue;
        vecmat(h, W_out, H, V, o);                                       /* (V,) H_t W_out */
        for (int v = 0; v < V; v++) logits[(int64_t)t * V + v] = o[v] + b_out[v];
    }
    team_stop(&tm, thread);
    free(o);
    return 0;
}

/* ScratchStepper.greedy: warm up on prefix[0..n_prefix), then n greedy ids into out.
 * rows (V, H) = W_xh + b_h; h (2, H): h[0] the start state, both rows scratch after;
 * logits a scratch buffer of V rounded up to 16. Returns 0, or -1 out of memory. */
int rnn_greedy(int n_prefix, const int *prefix, int n, int H, int V, const float *rows,
               const float *W_hh, const float *W_hq, const float *b_q, float *h,
               float *logits, int *out, int threads)
{
    Team tm; pthread_t thread;
    if (team_start(&tm, &thread, W_hh, H, threads) < 0) return -1;
    int idx = prefix[0];
    for (int i = 0; i < n_prefix - 1 + n; i++) {
        float *prev = h + (int64_t)(i & 1) * H, *next = h + (int64_t)(~i & 1) * H;
        team_step(&tm, i + 1, prev, rows + (int64_t)idx * H, next);   /* (H,) H_t */
        if (i + 1 < n_prefix) {
            idx = prefix[i + 1];                               /* warm-up: feed the prefix */
            continue;
        }
        vecmat(next, W_hq, H, V, logits);                      /* (V,) H_t W_hq */
        int best = 0;
        float top = logits[0] + b_q[0];
        for (int v = 1; v < V; v++) {                          /* argmax of O_t, first wins */
            float o = logits[v] + b_q[v];
            if (o > top) { top = o; best = v; }
        }
        idx = best;
        out[i + 1 - n_prefix] = best;
    }
    team_stop(&tm, thread);
    return 0;
}

static inline v16 sigmoid16(v16 x) { return 0.5f * (tanh16(0.5f * x) + 1.0f); }

/* One LSTM (cell 0) or GRU (cell 1) layer read teacher-forced from zero states, as `lab.trace`
 * does in numpy: gx (T, G H) = x W_x + b_x for every step, W_h packed (H, G H), b_h (G H), in
 * torch's gate order. out (S, T, H): LSTM h, c, i, f, g, o; GRU h, r, z, n. gh a scratch buffer
 * of G H rounded up to 16. One thread: a lab request, not a hot loop worth a team. */
int gated_trace(int cell, int T, int H, const float *gx, const float *W_h, const float *b_h,
                float *out, float *gh)
{
    const int G = cell == 0 ? 4 : 3;
    const int64_t TH = (int64_t)T * H, GH = (int64_t)G * H;
    float *zero = calloc((size_t)H, sizeof(float));
    if (!zero) return -1;
    for (int t = 0; t < T; t++) {
        const float *h_prev = t ? out + (int64_t)(t - 1) * H : zero;
        const float *x = gx + t * GH;
        float *h = out + (int64_t)t * H;
        vecmat(h_prev, W_h, H, G * H, gh);                          /* (G H,) H_{t-1} W_h */
        for (int j = 0; j < H; j += LANES) {
            int n = H - j;
            v16 a[4];
            for (int g = 0; g < G; g++)                               /* + b_h, + x W_x + b_x */
                a[g] = load_n(gh + g * H + j, n) + load_n(b_h + g * H + j, n);
            if (cell == 0) {
                const float *c_prev = t ? out + TH + (int64_t)(t - 1) * H : zero;
                v16 i = sigmoid16(a[0] + load_n(x + j, n));
                v16 f = sigmoid16(a[1] + load_n(x + H + j, n));
                v16 g = tanh16(a[2] + load_n(x + 2 * H + j, n));
                v16 o = sigmoid16(a[3] + load_n(x + 3 * H + j, n));
                v16 c = f * load_n(c_prev + j, n) + i * g;
                store_n(h + j, o * tanh16(c), n);
                store_n(out + TH + (int64_t)t * H + j, c, n);
                store_n(out + 2 * TH + (int64_t)t * H + j, i, n);
                store_n(out + 3 * TH + (int64_t)t * H + j, f, n);
                store_n(out + 4 * TH + (int64_t)t * H + j, g, n);
                store_n(out + 5 * TH + (int64_t)t * H + j, o, n);
            } else {
                v16 r = sigmoid16(a[0] + load_n(x + j, n));
                v16 z = sigmoid16(a[1] + load_n(x + H + j, n));
                v16 m = tanh16(load_n(x + 2 * H + j, n) + r * a[2]);
                store_n(h + j, m + z * (load_n(h_prev + j, n) - m), n);
                store_n(out + TH + (int64_t)t * H + j, r, n);
                store_n(out + 2 * TH + (int64_t)t * H + j, z, n);
                store_n(out + 3 * TH + (int64_t)t * H + j, m, n);
            }
        }
    }
    free(zero);
    return 0;
}

/* Kneser-Ney p(. | history) of R rows, the recursion unrolled: `ngram.KneserNey.rows_probs`,
 * whose numpy form this repeats operation for operation (the same products, summed in the same
 * order, never fused into one multiply-add), so that the two agree bitwise.
 * history (R, L) ids, -1 before the text. Table k (0..n_tables-1, contexts of k ids): sorted
 * context keys (n_contexts[k]), starts (n_contexts[k] + 1) into tokens/shares (the flat pairs:
 * next token, discounted share), back-off weights; top_totals: the last table's context counts.
 * Out: p (R, V) and top (R,), how often each row's longest context occurred (0: unseen). */
#define MAX_TABLES 64

static int64_t lower_bound(const int64_t *a, int64_t n, int64_t key)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < key) lo = mid + 1; else hi = mid;
    }
    return lo;
}

/* One row of kn_rows: p (V) for history h (L ids), and its top context's count. */
static void kn_row(const int64_t *h, int L, int64_t V, int n_tables,
                   const int64_t *const *contexts, const int64_t *n_contexts,
                   const int64_t *const *starts, const double *const *backoff,
                   const int64_t *top_totals, const int64_t *tokens, const double *shares,
                   double *pr, int64_t *top)
{
    int64_t key = 0, place = 1, lo[MAX_TABLES], hi[MAX_TABLES];
    double b[MAX_TABLES];
    int seen = 0;
    *top = 0;
    for (int k = 0; k < n_tables; k++) {                     /* contexts of k ids, growing */
        if (k) {
            if (h[L - k] < 0) break;                           /* before the text */
            key += h[L - k] * place;
            place *= V;
        }
        int64_t n = n_contexts[k];
        if (n == 0) break;
        int64_t j = lower_bound(contexts[k], n, key);
        if (j == n) j = n - 1;
        if (contexts[k][j] != key) break;       /* unseen: so is every longer context */
        lo[seen] = starts[k][j], hi[seen] = starts[k][j + 1], b[seen] = backoff[k][j];
        seen++;
        if (k == n_tables - 1) *top = top_totals[j];
    }
    double scale = 1.0;
    for (int64_t v = 0; v < V; v++) pr[v] = 0.0;
    for (int i = seen - 1; i >= 0; i--) {                     /* the longest context first */
        for (int64_t q = lo[i]; q < hi[i]; q++) {
            volatile double term = shares[q] * scale;         /* rounded, as numpy's product */
            pr[tokens[q]] += term;
        }
        scale *= b[i];
    }
    double uniform = scale / (double)V;
    for (int64_t v = 0; v < V; v++) pr[v] += uniform;
}

int kn_rows(int R, int L, const int64_t *history, int64_t V, int n_tables,
            const int64_t *const *contexts, const int64_t *n_contexts,
            const int64_t *const *starts, const double *const *backoff,
            const int64_t *top_totals, const int64_t *tokens, const double *shares,
            double *p, int64_t *top)
{
    if (n_tables > MAX_TABLES || n_tables - 1 > L) return -1;
    for (int r = 0; r < R; r++)
        kn_row(history + (int64_t)r * L, L, V, n_tables, contexts, n_contexts, starts, backoff,
               top_totals, tokens, shares, p + (int64_t)r * V, top + r);
    return 0;
}

/* A generation step of the mixture (`MixtureStepper`) in one call: each history row (R, L)
 * shifted left and ids[r] appended (in place), its Kneser-Ney row, lambda = weights[min(
 * floor(log2(1 + top count)), n_weights - 1)], and out (R, V) = lambda p_net + (1 - lambda)
 * p_kn, every product and sum rounded as numpy's `lam * p_net + (1 - lam) * p_kn` rounds it. */
int kn_mix(int R, int L, int64_t *history, const int64_t *ids, int64_t V, int n_tables,
           const int64_t *const *contexts, const int64_t *n_contexts,
           const int64_t *const *starts, const double *const *backoff,
           const int64_t *top_totals, const int64_t *tokens, const double *shares,
           int n_weights, const double *weights, const double *p_net, double *out)
{
    if (n_tables > MAX_TABLES || n_tables - 1 > L) return -1;
    for (int r = 0; r < R; r++) {
        int64_t *h = history + (int64_t)r * L, top;
        double *pr = out + (int64_t)r * V;
        const double *pn = p_net + (int64_t)r * V;
        if (L > 0) {                                           /* a unigram model: none */
            memmove(h, h + 1, sizeof(int64_t) * (size_t)(L - 1));
            h[L - 1] = ids[r];
        }
        kn_row(h, L, V, n_tables, contexts, n_contexts, starts, backoff, top_totals, tokens,
               shares, pr, &top);
        int bucket = 63 - __builtin_clzll((unsigned long long)top + 1);   /* floor(log2(1+c)) */
        double lam = weights[bucket < n_weights - 1 ? bucket : n_weights - 1], rest = 1.0 - lam;
        for (int64_t v = 0; v < V; v++) {
            volatile double net = lam * pn[v], counts = rest * pr[v];   /* never fused */
            pr[v] = net + counts;
        }
    }
    return 0;
}
