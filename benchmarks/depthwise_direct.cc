// Direct NCHW depthwise convolution (stride 1, "same" padding, float32) as MindSpore AOT custom operators:
// forward, input gradient and weight gradient. Used only by benchmarks/bench_depthwise_direct.py, which
// measures them against MindSpore's own depthwise convolution (issue 13: depthwise layers, mostly their
// gradients, take 60% of a MnasNet training step on the CPU). Not part of the package yet.
#include <omp.h>
#include <string.h>
#include <stdint.h>

static inline int threads() { return omp_get_num_procs(); }

// params: x[N,C,H,W], w[C,1,K,K] -> y[N,C,H,W]
extern "C" int DwFwd(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra) {
  const float *x = (const float *)params[0], *w = (const float *)params[1];
  float *y = (float *)params[2];
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[1][2], P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    int64_t c = nc % C;
    const float *xi = x + nc * H * W; const float *wk = w + c * K * K; float *yo = y + nc * H * W;
    memset(yo, 0, sizeof(float) * H * W);
    for (int64_t oh = 0; oh < H; ++oh) {
      float *yr = yo + oh * W;
      for (int64_t kh = 0; kh < K; ++kh) {
        int64_t ih = oh + kh - P; if (ih < 0 || ih >= H) continue;
        const float *xr = xi + ih * W;
        for (int64_t kw = 0; kw < K; ++kw) {
          float wv = wk[kh * K + kw];
          int64_t lo = P - kw > 0 ? P - kw : 0, hi = W + P - kw < W ? W + P - kw : W;
          const float *xs = xr + kw - P;
          for (int64_t ow = lo; ow < hi; ++ow) yr[ow] += wv * xs[ow];
        }
      }
    }
  }
  return 0;
}

// params: dy[N,C,H,W], w[C,1,K,K] -> dx[N,C,H,W]
extern "C" int DwBwdInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra) {
  const float *dy = (const float *)params[0], *w = (const float *)params[1];
  float *dx = (float *)params[2];
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[1][2], P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t nc = 0; nc < N * C; ++nc) {
    int64_t c = nc % C;
    const float *g = dy + nc * H * W; const float *wk = w + c * K * K; float *o = dx + nc * H * W;
    memset(o, 0, sizeof(float) * H * W);
    for (int64_t ih = 0; ih < H; ++ih) {
      float *orow = o + ih * W;
      for (int64_t kh = 0; kh < K; ++kh) {
        int64_t oh = ih + P - kh; if (oh < 0 || oh >= H) continue;
        const float *grow = g + oh * W;
        for (int64_t kw = 0; kw < K; ++kw) {
          float wv = wk[kh * K + kw];
          // dx[ih, iw] += w * dy[oh, iw + P - kw]
          int64_t lo = kw - P > 0 ? kw - P : 0, hi = W + kw - P < W ? W + kw - P : W;
          const float *gs = grow + P - kw;
          for (int64_t iw = lo; iw < hi; ++iw) orow[iw] += wv * gs[iw];
        }
      }
    }
  }
  return 0;
}

// params: x[N,C,H,W], dy[N,C,H,W], w (for its shape) [C,1,K,K] -> dw[C,1,K,K]
extern "C" int DwBwdFilter(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, void *extra) {
  const float *x = (const float *)params[0], *dy = (const float *)params[1];
  float *dw = (float *)params[3];
  int64_t N = shapes[0][0], C = shapes[0][1], H = shapes[0][2], W = shapes[0][3], K = shapes[2][2], P = K / 2;
#pragma omp parallel for num_threads(threads()) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    float acc[121]; for (int i = 0; i < K * K; ++i) acc[i] = 0.f;
    for (int64_t n = 0; n < N; ++n) {
      const float *xi = x + (n * C + c) * H * W, *g = dy + (n * C + c) * H * W;
      for (int64_t kh = 0; kh < K; ++kh) for (int64_t kw = 0; kw < K; ++kw) {
        float s = 0.f;
        int64_t lo = P - kw > 0 ? P - kw : 0, hi = W + P - kw < W ? W + P - kw : W;
        for (int64_t oh = 0; oh < H; ++oh) {
          int64_t ih = oh + kh - P; if (ih < 0 || ih >= H) continue;
          const float *gr = g + oh * W, *xr = xi + ih * W + kw - P;
          for (int64_t ow = lo; ow < hi; ++ow) s += gr[ow] * xr[ow];
        }
        acc[kh * K + kw] += s;
      }
    }
    for (int i = 0; i < K * K; ++i) dw[c * K * K + i] = acc[i];
  }
  return 0;
}
