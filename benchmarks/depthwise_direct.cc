// Direct NCHW depthwise convolution (float32, kernel K odd, symmetric padding K/2 as MnasNet's layers use,
// stride 1 or 2) as MindSpore AOT custom operators: forward, input gradient and weight gradient. Used only by
// benchmarks/bench_depthwise_direct.py, which measures them against MindSpore's own depthwise convolution
// (issue 13: depthwise layers, mostly their gradients, take 60% of a MnasNet training step on the CPU). Not
// part of the package yet. The stride is read from the shapes: an output as tall as the input means stride 1.
#include <omp.h>
#include <stdint.h>
#include <string.h>

static inline int threads() { return omp_get_num_procs(); }

static inline int64_t stride_of(int64_t in_h, int64_t out_h) { return out_h == in_h ? 1 : 2; }

// The output columns ow for which input column ow * S + kw - P lies inside [0, W).
static inline void column_range(int64_t W, int64_t Wo, int64_t S, int64_t kw, int64_t P, int64_t *lo, int64_t *hi) {
  int64_t first = P - kw;  // ow * S >= P - kw
  *lo = first > 0 ? (first + S - 1) / S : 0;
  int64_t last = W - 1 + P - kw;  // ow * S <= W - 1 + P - kw
  *hi = last < 0 ? 0 : last / S + 1;
  if (*hi > Wo) *hi = Wo;
}

// The stride is a template parameter so that the stride-1 inner loops are contiguous and vectorised.
template <int64_t S>
static void forward(const float *x, const float *w, float *y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                    int64_t Ho, int64_t Wo) {
  const int64_t P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
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
  }
}

// params: x[N,C,H,W], w[C,1,K,K] -> y[N,C,Ho,Wo]
extern "C" int DwFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                     void *extra) {
  if (nparam != 3) return 1;
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[1][2];
  int64_t Ho = shapes[2][2], Wo = shapes[2][3];
  const float *x = (const float *)params[0], *w = (const float *)params[1];
  float *y = (float *)params[2];
  if (stride_of(H, Ho) == 1)
    forward<1>(x, w, y, N, C, H, W, K, Ho, Wo);
  else
    forward<2>(x, w, y, N, C, H, W, K, Ho, Wo);
  return 0;
}

template <int64_t S>
static void input_gradient(const float *dy, const float *w, float *dx, int64_t N, int64_t C, int64_t H, int64_t W,
                           int64_t K, int64_t Ho, int64_t Wo) {
  const int64_t P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    const float *g = dy + nc * Ho * Wo, *wk = w + (nc % C) * K * K;
    float *o = dx + nc * H * W;
    memset(o, 0, sizeof(float) * H * W);
    // the transpose of the forward pass: every output gradient is spread back onto the inputs it read
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const float *gr = g + oh * Wo;
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
  }
}

// params: x[N,C,H,W] (for its shape), dy[N,C,Ho,Wo], w[C,1,K,K] -> dx[N,C,H,W]
extern "C" int DwBwdInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream,
                          void *extra) {
  if (nparam != 4) return 1;
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[2][2];
  int64_t Ho = shapes[1][2], Wo = shapes[1][3];
  const float *dy = (const float *)params[1], *w = (const float *)params[2];
  float *dx = (float *)params[3];
  if (stride_of(H, Ho) == 1)
    input_gradient<1>(dy, w, dx, N, C, H, W, K, Ho, Wo);
  else
    input_gradient<2>(dy, w, dx, N, C, H, W, K, Ho, Wo);
  return 0;
}

template <int64_t S>
static void weight_gradient(const float *x, const float *dy, float *dw, int64_t N, int64_t C, int64_t H, int64_t W,
                            int64_t K, int64_t Ho, int64_t Wo) {
  const int64_t P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    float acc[121] = {0.f};
    for (int64_t n = 0; n < N; ++n) {
      const float *xi = x + (n * C + c) * H * W, *g = dy + (n * C + c) * Ho * Wo;
      for (int64_t kh = 0; kh < K; ++kh) {
        for (int64_t kw = 0; kw < K; ++kw) {
          int64_t lo, hi;
          column_range(W, Wo, S, kw, P, &lo, &hi);
          float s = 0.f;
          for (int64_t oh = 0; oh < Ho; ++oh) {
            int64_t ih = oh * S + kh - P;
            if (ih < 0 || ih >= H) continue;
            const float *gr = g + oh * Wo, *xr = xi + ih * W;
            for (int64_t ow = lo; ow < hi; ++ow) s += gr[ow] * xr[ow * S + kw - P];
          }
          acc[kh * K + kw] += s;
        }
      }
    }
    for (int64_t i = 0; i < K * K; ++i) dw[c * K * K + i] = acc[i];
  }
}

// params: x[N,C,H,W], dy[N,C,Ho,Wo], w[C,1,K,K] (for its shape) -> dw[C,1,K,K]
extern "C" int DwBwdFilter(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                           void *stream, void *extra) {
  if (nparam != 4) return 1;
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[2][2];
  int64_t Ho = shapes[1][2], Wo = shapes[1][3];
  if (K > 11) return 2;
  const float *x = (const float *)params[0], *dy = (const float *)params[1];
  float *dw = (float *)params[3];
  if (stride_of(H, Ho) == 1)
    weight_gradient<1>(x, dy, dw, N, C, H, W, K, Ho, Wo);
  else
    weight_gradient<2>(x, dy, dw, N, C, H, W, K, Ho, Wo);
  return 0;
}
