/* Generation's and the lab's per-character loops, compiled:
 *   rnn_greedy, rnn_trace  the chapter's H_t = tanh(X_t W_xh + b_h + H_{t-1} W_hh) for one
 *                          stream, greedy O_t = H_t W_hq + b_q, on one or two threads;
 *   gated_trace            an LSTM or GRU layer read along a text (the lab);
 *   kn_rows                the n-gram mixture's Kneser-Ney distributions, bitwise numpy's.
 * The readable references are `generate.rnn_step_numpy`, `ScratchStepper.greedy_numpy`,
 * `lab.trace`'s loop and `KneserNey.rows_probs_numpy`; `fastloop.py` builds this file with the
 * machine's C compiler and the tests hold each to its reference. Why it exists: per character,
 * numpy's loop pays ~10 us of calls around a ~10 us GEMV; here a whole text is one call.
 *
 * Matrices come packed in column panels (`fastloop.pack_columns`): panel p holds columns
 * [128p, 128p + w) as n_in contiguous rows of w floats, w a multiple of 16 (zero-padded), so
 * that a step streams through the weights in order with 8 vector accumulators.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads */

#define LANES 16
#define PANEL 128                                  /* columns per panel: 8 vectors */

static inline v16 splat(float x) { return (v16){0} + x; }

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

typedef int32_t i16v __attribute__((vector_size(64)));

static inline v16 pick(i16v mask, v16 a, v16 b)          /* mask ? a : b, lane by lane */
{
    return (v16)(((i16v)a & mask) | ((i16v)b & ~mask));
}

/* tanh to a few ulp: the 13/6 rational of Eigen's ptanh_float (its coefficients), clamped where
 * float tanh is +-1, and tanh(x) = x below 4e-4. Where the CPU has FMA the compiler fuses
 * the polynomial's multiply-adds, as Eigen does. */
static inline v16 tanh16(v16 a)
{
#ifdef __FMA__                   /* the clamp where the rational reaches 1 (Eigen's values) */
    const v16 c = splat(7.99881172180175781f);
#else
    const v16 c = splat(7.90531110763549805f);
#endif
    v16 x = pick(a > c, c, pick(a < -c, -c, a));
    v16 x2 = x * x;
    v16 p = splat(-2.76076847742355e-16f);
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    v16 q = splat(1.19825839466702e-06f);
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    v16 ax = (v16)((i16v)a & 0x7fffffff);
    return pick(ax < splat(0.0004f), a, p / q);
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

/* A team of one or two threads shares each step's H_{t-1} W_hh by panels of 128 columns: the
 * caller takes panels from the first, a helper thread from the last, each claiming a panel
 * for the step with an atomic compare-and-swap. When both run, each keeps working on the same
 * half, which then stays in its own core's L2 (512x512 fp32 is 1 MB, one core's whole L2).
 * Each column is summed in the same order by whichever thread computes it, so the result does
 * not depend on the number of threads.
 *
 * On a busy machine a second thread only takes time from the first, so the team times itself:
 * PROBE steps with the helper, PROBE without (it naps), then KEEP steps the faster way, and
 * again. */
#define PROBE 32
#define KEEP 512

typedef struct Team Team;
struct Team {
    void (*job)(const Team *, int);      /* one panel of this step's work */
    const void *ctx;                     /* the job's own arguments */
    const float *W;                      /* W_hh packed, (H, H) */
    int H, npanels;
    const float *in, *row;               /* this step's H_{t-1} and X_t W_xh + b_h */
    float *out;                          /* this step's H_t */
    int step;                            /* atomic: the step to do; -1: stop */
    int done;                            /* atomic: panels finished this step */
    int solo;                            /* atomic: 1 while the caller works alone */
    int *claim;                          /* atomic, per panel: the last step that claimed it */
    int helped, probing, phase, left;    /* the caller's own: see adapt() */
    double since, with_helper;
};

static inline void relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static void work(Team *tm, int s, int from_last)
{
    for (int k = 0; k < tm->npanels; k++) {
        int p = from_last ? tm->npanels - 1 - k : k, expect = s - 1;
        if (!__atomic_compare_exchange_n(&tm->claim[p], &expect, s, 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_RELAXED))
            continue;                                          /* the other thread has it */
        tm->job(tm, p);
        __atomic_fetch_add(&tm->done, 1, __ATOMIC_RELEASE);
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

/* The helper spins between steps (a step is a few microseconds), but naps while the caller
 * works alone, or once nothing has come for a while (the caller is descheduled). */
static void *helper(void *arg)
{
    Team *tm = arg;
    const struct timespec nap = {0, 50000};                       /* 50 us */
    for (int seen = 0, idle = 0;;) {
        int s = __atomic_load_n(&tm->step, __ATOMIC_ACQUIRE);
        if (s < 0) return NULL;
        if (__atomic_load_n(&tm->solo, __ATOMIC_RELAXED) || (s == seen && ++idle >= 4096)) {
            nanosleep(&nap, NULL);
            idle = 0;
            continue;
        }
        if (s == seen) { relax(); continue; }
        seen = s, idle = 0;
        work(tm, s, 1);
    }
}

/* Before each step: at the end of a phase, time it and choose the next. */
static void adapt(Team *tm)
{
    if (!tm->helped || !tm->probing || --tm->left > 0) return;
    double t = seconds(), spent = t - tm->since;
    int solo = 0;
    tm->since = t;
    if (tm->phase == 0) {                                      /* probed with the helper */
        tm->with_helper = spent, tm->phase = 1, tm->left = PROBE, solo = 1;
    } else if (tm->phase == 1) {                               /* probed alone */
        tm->phase = 2, tm->left = KEEP, solo = spent < tm->with_helper;
    } else {
        tm->phase = 0, tm->left = PROBE;
    }
    __atomic_store_n(&tm->solo, solo, __ATOMIC_RELAXED);
}

/* Step s (1, 2, ...) of the team: every panel's job, on whatever ctx the caller set. */
static void team_run(Team *tm, int s)
{
    adapt(tm);
    __atomic_store_n(&tm->done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&tm->step, s, __ATOMIC_RELEASE);
    work(tm, s, 0);
    while (__atomic_load_n(&tm->done, __ATOMIC_ACQUIRE) < tm->npanels) relax();
}

/* out (H) = tanh(row + in W_hh): step s of the one-stream team. */
static void team_step(Team *tm, int s, const float *in, const float *row, float *out)
{
    tm->in = in; tm->row = row; tm->out = out;
    team_run(tm, s);
}

/* A team for `job` over npanels panels. Probing (see adapt) is for one-stream steps of a few
 * microseconds; a training step's GEMM is long enough that two threads always pay. */
static int team_start_job(Team *tm, pthread_t *thread, int npanels, int threads,
                          void (*job)(const Team *, int), const void *ctx, int probing)
{
    memset(tm, 0, sizeof *tm);
    tm->job = job; tm->ctx = ctx; tm->npanels = npanels; tm->probing = probing;
    tm->left = PROBE, tm->since = seconds();
    tm->claim = calloc((size_t)tm->npanels, sizeof(int));
    if (!tm->claim) return -1;
    if (threads > 1 && tm->npanels > 1 && pthread_create(thread, NULL, helper, tm) == 0)
        tm->helped = 1;
    return tm->helped;
}

static int team_start(Team *tm, pthread_t *thread, const float *W_hh, int H, int threads)
{
    int got = team_start_job(tm, thread, (H + PANEL - 1) / PANEL, threads, gemv_tanh, NULL, 1);
    tm->W = W_hh; tm->H = H;
    return got;
}

static void team_stop(Team *tm, pthread_t thread)
{
    __atomic_store_n(&tm->step, -1, __ATOMIC_RELEASE);
    if (tm->helped) pthread_join(thread, NULL);
    free(tm->claim);
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

/* 16 floats from p, or the first n < 16 of them (the rest 0): the tails of a row. */
static inline v16 load_n(const float *p, int n)
{
    if (n >= LANES) return *(const v16u *)p;
    v16 v = splat(0.0f);
    for (int k = 0; k < n; k++) v[k] = p[k];
    return v;
}

static inline void store_n(float *p, v16 v, int n)
{
    if (n >= LANES) { *(v16u *)p = v; return; }
    for (int k = 0; k < n; k++) p[k] = v[k];
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

int kn_rows(int R, int L, const int64_t *history, int64_t V, int n_tables,
            const int64_t *const *contexts, const int64_t *n_contexts,
            const int64_t *const *starts, const double *const *backoff,
            const int64_t *top_totals, const int64_t *tokens, const double *shares,
            double *p, int64_t *top)
{
    if (n_tables > MAX_TABLES || n_tables - 1 > L) return -1;
    for (int r = 0; r < R; r++) {
        const int64_t *h = history + (int64_t)r * L;
        int64_t key = 0, place = 1, lo[MAX_TABLES], hi[MAX_TABLES];
        double b[MAX_TABLES];
        int seen = 0;
        top[r] = 0;
        for (int k = 0; k < n_tables; k++) {                 /* contexts of k ids, growing */
            if (k) {
                if (h[L - k] < 0) break;                       /* before the text */
                key += h[L - k] * place;
                place *= V;
            }
            int64_t n = n_contexts[k];
            if (n == 0) break;
            int64_t j = lower_bound(contexts[k], n, key);
            if (j == n) j = n - 1;
            if (contexts[k][j] != key) break;   /* unseen: so is every longer context */
            lo[seen] = starts[k][j], hi[seen] = starts[k][j + 1], b[seen] = backoff[k][j];
            seen++;
            if (k == n_tables - 1) top[r] = top_totals[j];
        }
        double *pr = p + (int64_t)r * V, scale = 1.0;
        for (int64_t v = 0; v < V; v++) pr[v] = 0.0;
        for (int i = seen - 1; i >= 0; i--) {                 /* the longest context first */
            for (int64_t q = lo[i]; q < hi[i]; q++) {
                volatile double term = shares[q] * scale;     /* rounded, as numpy's product */
                pr[tokens[q]] += term;
            }
            scale *= b[i];
        }
        double uniform = scale / (double)V;
        for (int64_t v = 0; v < V; v++) pr[v] += uniform;
    }
    return 0;
}

/* ---- Training the chapter's RNN (`--impl compiled`): every product of a training step in
 * one of two kernels — rows x panel (out = x W) and columns x panel (out = x^T Y) — with the
 * step's pointwise part folded into the first, run by the team. `bptt.RNNRecurrence` and the
 * book's loop are the references; the products sum in another order than MKL's (and tanh is
 * tanh16), so this is held to them within float rounding, not bitwise. Matrices come packed
 * in panels of 32 columns (`fastloop.pack_panels`): 8 rows x 32 columns of accumulators fill
 * 16 vector registers, and each weight vector loaded serves 8 rows. */
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

/* A job of gemm_xty's team: step 1 packs (Y's panels; in bf16 x's pairs too), step 2 runs
 * the tiles. */
static void xty_job(const Team *tm, int i)
{
    const XtY *g = tm->ctx;
    if (__atomic_load_n(&tm->step, __ATOMIC_ACQUIRE) == 2) {
        if (i < g->chunks * ((g->N + TP - 1) / TP)) xty_tile(tm, i);
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
    int jobs = chunks * P;
    if (bf16 && !has_bf16()) return -1;
    if (bf16) {
        g.Yb = malloc(sizeof(uint32_t) * (size_t)P * Kp * TP);
        g.xb = malloc(sizeof(uint32_t) * (size_t)Kp * M);
        if (jobs < P + xchunks) jobs = P + xchunks;
    } else {
        g.packed = malloc(sizeof(float) * (size_t)P * K * TP);
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
