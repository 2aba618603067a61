/* What fastloop.c and fasttrain.c share: GCC's portable vector types (AVX-512 here, whatever
 * the CPU has elsewhere), tanh to a few ulp, loads and stores of a row's tail, and the team of
 * one or two threads that shares each step of a loop by panels of columns. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  /* unaligned loads */

#define LANES 16

static inline v16 splat(float x) { return (v16){0} + x; }

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

/* A team of one or two threads shares each step's work by panels (a one-stream step: 128
 * columns of H_{t-1} W_hh each): the caller takes panels from the first, a helper thread from
 * the last, each claiming a panel for the step with an atomic compare-and-swap. When both run,
 * each keeps working on the same half, which then stays in its own core's L2 (512x512 fp32 is
 * 1 MB, one core's whole L2). Each column is summed in the same order by whichever thread
 * computes it, so the result does not depend on the number of threads.
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

static void team_stop(Team *tm, pthread_t thread)
{
    __atomic_store_n(&tm->step, -1, __ATOMIC_RELEASE);
    if (tm->helped) pthread_join(thread, NULL);
    free(tm->claim);
}
