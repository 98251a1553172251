// Direct NCHW depthwise convolution on the CPU: float32, odd kernel K <= 11, symmetric padding K/2 (the zoo's
// layers and PyTorch's), stride 1 or 2. Forward, input gradient and weight gradient as MindSpore AOT custom
// operators (mindcv/kernels/depthwise.py builds this file and wraps it). Why: MindSpore 2.10 runs depthwise
// gradients in its own scalar kernels, and depthwise layers took 60% of a MnasNet training step on the CPU
// (benchmarks/results/profile_train_step.md); these kernels are 2.4x faster there (depthwise_direct.md).
//
// Each stride has its own entry points (DwFwdS1, DwFwdS2, ...): the stride is never guessed from shapes.
// Every entry point checks the shapes and types it is given and returns non-zero, which MindSpore reports as a
// failed kernel launch, instead of reading or writing outside a buffer.
//
// Threads: a small pool of our own whose idle workers sleep on a condition variable. OpenMP was used first, but
// its idle threads spin-wait after every parallel region and took the cores from MindSpore's next kernel (and
// MindSpore's spinning pool from ours): whole models at batch 1 or 64 px ran up to 1.5x slower than with
// MindSpore's kernels, while OMP_WAIT_POLICY=passive made every case faster
// (benchmarks/results/direct_depthwise_models.md).
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

static int g_threads = 0;  // 0: every processor this process may run on; DwSetThreads sets MindSpore's count

static int processors() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set) > 0 ? CPU_COUNT(&set) : 1;
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? (int)n : 1;
}

extern "C" void DwSetThreads(int n) { g_threads = n > 0 ? n : 0; }
extern "C" int DwThreads() { return g_threads > 0 ? g_threads : processors(); }

// Runs body(begin, end) over [0, n) in `parts` contiguous chunks, the calling thread taking the first. One job at a
// time: a call that finds the pool busy (MindSpore may launch two kernels at once) or runs in a forked child (whose
// copy of the pool has no threads) runs its whole range itself.
class Pool {
 public:
  void run(int64_t n, int parts, const std::function<void(int64_t, int64_t)> &body) {
    if (parts > n) parts = (int)n;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (parts <= 1 || !busy.owns_lock() || getpid() != owner_) {
      if (n > 0) body(0, n);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      while ((int)workers_.size() < parts - 1) workers_.emplace_back([this, i = (int)workers_.size()] { work(i + 1); });
      body_ = &body, n_ = n, parts_ = parts, pending_ = parts - 1, ++generation_;
    }
    wake_.notify_all();
    body(0, chunk_end(0));
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    body_ = nullptr;
  }

 private:
  int64_t chunk_end(int part) const { return n_ * (part + 1) / parts_; }

  void work(int part) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      wake_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (part >= parts_) continue;  // this job needs fewer threads
      const std::function<void(int64_t, int64_t)> *body = body_;
      int64_t begin = n_ * part / parts_, end = chunk_end(part);
      lock.unlock();
      if (begin < end) (*body)(begin, end);
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_, mu_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)> *body_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  const pid_t owner_ = getpid();
};

// Never destroyed: the workers sleep until the process ends (no join at exit, when MindSpore may still be running).
static Pool &pool() {
  static Pool *instance = new Pool();
  return *instance;
}

template <typename Body>
static void parallel_for(int64_t n, Body per_index) {
  pool().run(n, DwThreads(), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) per_index(i);
  });
}

static const int64_t kMaxKernel = 11;

// The output columns ow for which input column ow * S + kw - P lies inside [0, W).
static inline void column_range(int64_t W, int64_t Wo, int64_t S, int64_t kw, int64_t P, int64_t *lo, int64_t *hi) {
  int64_t first = P - kw;  // ow * S >= P - kw
  *lo = first > 0 ? (first + S - 1) / S : 0;
  int64_t last = W - 1 + P - kw;  // ow * S <= W - 1 + P - kw
  *hi = last < 0 ? 0 : last / S + 1;
  if (*hi > Wo) *hi = Wo;
  if (*lo > *hi) *lo = *hi;
}

struct Geometry {
  int64_t N, C, H, W, K, Ho, Wo;
};

static bool is_float32(const char *dtype) { return dtype != nullptr && strcmp(dtype, "float32") == 0; }

// x[N,C,H,W], w[C,1,K,K], y[N,C,Ho,Wo] with Ho = (H - 1) / S + 1: the only layout these kernels compute.
static bool read_geometry(const int *ndims, int64_t **shapes, const char **dtypes, int x, int w, int y, int64_t S,
                          Geometry *g) {
  if (ndims[x] != 4 || ndims[w] != 4 || ndims[y] != 4) return false;
  if (!is_float32(dtypes[x]) || !is_float32(dtypes[w]) || !is_float32(dtypes[y])) return false;
  g->N = shapes[x][0], g->C = shapes[x][1], g->H = shapes[x][2], g->W = shapes[x][3], g->K = shapes[w][2];
  g->Ho = shapes[y][2], g->Wo = shapes[y][3];
  if (g->N < 0 || g->C <= 0 || g->H <= 0 || g->W <= 0) return false;
  if (g->K < 1 || g->K > kMaxKernel || g->K % 2 == 0 || shapes[w][3] != g->K) return false;
  if (shapes[w][0] != g->C || shapes[w][1] != 1) return false;
  if (shapes[y][0] != g->N || shapes[y][1] != g->C) return false;
  return g->Ho == (g->H - 1) / S + 1 && g->Wo == (g->W - 1) / S + 1;
}

// The stride is a template parameter so that the stride-1 inner loops are contiguous and vectorised.
template <int64_t S>
static void forward(const float *x, const float *w, float *y, const Geometry &g) {
  const int64_t P = g.K / 2, K = g.K, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, C = g.C;
  parallel_for(g.N * C, [&](int64_t nc) {
    const float *xi = x + nc * H * W, *wk = w + (nc % C) * K * K;
    float *yo = y + nc * Ho * Wo;
    memset(yo, 0, sizeof(float) * Ho * Wo);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      float *yr = yo + oh * Wo;
      for (int64_t kh = 0; kh < K; ++kh) {
        int64_t ih = oh * S + kh - P;
        if (ih < 0 || ih >= H) continue;
        const float *xr = xi + ih * W;
        for (int64_t kw = 0; kw < K; ++kw) {
          float wv = wk[kh * K + kw];
          int64_t lo, hi;
          column_range(W, Wo, S, kw, P, &lo, &hi);
          for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * xr[ow * S + kw - P];
        }
      }
    }
  });
}

// The transpose of the forward pass: every output gradient is spread back onto the inputs it read.
template <int64_t S>
static void input_gradient(const float *dy, const float *w, float *dx, const Geometry &g) {
  const int64_t P = g.K / 2, K = g.K, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, C = g.C;
  parallel_for(g.N * C, [&](int64_t nc) {
    const float *gi = dy + nc * Ho * Wo, *wk = w + (nc % C) * K * K;
    float *o = dx + nc * H * W;
    memset(o, 0, sizeof(float) * H * W);
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const float *gr = gi + oh * Wo;
      for (int64_t kh = 0; kh < K; ++kh) {
        int64_t ih = oh * S + kh - P;
        if (ih < 0 || ih >= H) continue;
        float *orow = o + ih * W;
        for (int64_t kw = 0; kw < K; ++kw) {
          float wv = wk[kh * K + kw];
          int64_t lo, hi;
          column_range(W, Wo, S, kw, P, &lo, &hi);
          for (int64_t ow = lo; ow < hi; ++ow) orow[ow * S + kw - P] += wv * gr[ow];
        }
      }
    }
  });
}

template <int64_t S>
static void weight_gradient(const float *x, const float *dy, float *dw, const Geometry &g) {
  const int64_t P = g.K / 2, K = g.K, H = g.H, W = g.W, Ho = g.Ho, Wo = g.Wo, C = g.C;
  parallel_for(C, [&](int64_t c) {
    float acc[kMaxKernel * kMaxKernel] = {0.f};
    for (int64_t n = 0; n < g.N; ++n) {
      const float *xi = x + (n * C + c) * H * W, *gi = dy + (n * C + c) * Ho * Wo;
      for (int64_t kh = 0; kh < K; ++kh) {
        for (int64_t kw = 0; kw < K; ++kw) {
          int64_t lo, hi;
          column_range(W, Wo, S, kw, P, &lo, &hi);
          float s = 0.f;
          for (int64_t oh = 0; oh < Ho; ++oh) {
            int64_t ih = oh * S + kh - P;
            if (ih < 0 || ih >= H) continue;
            const float *gr = gi + oh * Wo, *xr = xi + ih * W;
            for (int64_t ow = lo; ow < hi; ++ow) s += gr[ow] * xr[ow * S + kw - P];
          }
          acc[kh * K + kw] += s;
        }
      }
    }
    for (int64_t i = 0; i < K * K; ++i) dw[c * K * K + i] = acc[i];
  });
}

// params: x[N,C,H,W], w[C,1,K,K] -> y[N,C,Ho,Wo]
template <int64_t S>
static int forward_op(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Geometry g;
  if (nparam != 3 || !read_geometry(ndims, shapes, dtypes, 0, 1, 2, S, &g)) return 1;
  forward<S>((const float *)params[0], (const float *)params[1], (float *)params[2], g);
  return 0;
}

// params: x[N,C,H,W] (for its shape), dy[N,C,Ho,Wo], w[C,1,K,K] -> dx[N,C,H,W]
template <int64_t S>
static int input_gradient_op(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Geometry g;
  if (nparam != 4 || !read_geometry(ndims, shapes, dtypes, 0, 2, 1, S, &g)) return 1;
  for (int i = 0; i < 4; ++i)
    if (ndims[3] != 4 || shapes[3][i] != shapes[0][i]) return 1;
  input_gradient<S>((const float *)params[1], (const float *)params[2], (float *)params[3], g);
  return 0;
}

// params: x[N,C,H,W], dy[N,C,Ho,Wo], w[C,1,K,K] (for its shape) -> dw[C,1,K,K]
template <int64_t S>
static int weight_gradient_op(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes) {
  Geometry g;
  if (nparam != 4 || !read_geometry(ndims, shapes, dtypes, 0, 2, 1, S, &g)) return 1;
  for (int i = 0; i < 4; ++i)
    if (ndims[3] != 4 || shapes[3][i] != shapes[2][i]) return 1;
  weight_gradient<S>((const float *)params[0], (const float *)params[1], (float *)params[3], g);
  return 0;
}

#define AOT_ENTRY(name, body)                                                                                   \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *,       \
                      void *) {                                                                                 \
    return body(nparam, params, ndims, shapes, dtypes);                                                         \
  }

AOT_ENTRY(DwFwdS1, forward_op<1>)
AOT_ENTRY(DwFwdS2, forward_op<2>)
AOT_ENTRY(DwBwdInputS1, input_gradient_op<1>)
AOT_ENTRY(DwBwdInputS2, input_gradient_op<2>)
AOT_ENTRY(DwBwdFilterS1, weight_gradient_op<1>)
AOT_ENTRY(DwBwdFilterS2, weight_gradient_op<2>)
