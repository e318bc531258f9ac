/* cnnbench's fused CPU kernels: BatchNorm2d + sigmoid + 2x2/stride-2 average pooling, and sigmoid + that
 * pooling, forward and backward, on contiguous NCHW float32 tensors with an even height and width.
 *
 * Why: in the LeNets these three layers are memory-bound passes over the largest tensors of the network
 * (256 x 6 x 24 x 24 floats, 3.5 MB, larger than a core's L2 cache), each written by one ATen kernel and
 * read by the next: about 15 passes a training step. Fused, the forward reads the convolution's output
 * twice (statistics, then normalize + sigmoid + pool) and writes only the pooled quarter; the backward
 * reads it twice again and writes the input gradient once, recomputing the sigmoid instead of storing it.
 *
 * Built by cnnbench.fused_cpu at first use with the machine's C compiler (-O3 -march=native -fopenmp) and
 * kept in a cache folder; linked against the OpenMP runtime that torch has already loaded (libgomp), so
 * these loops share torch's thread pool. Every reduction is summed per (image, channel) plane in float,
 * then per channel in double, in a fixed order: the results do not depend on the number of threads.
 *
 * Values are normalized around a per-channel center taken from the data (the channel's first value): in
 * float, z - center is small where z - 0 is not, so a channel whose mean is large against its spread
 * (mean 1e3, std 1e-2) keeps its digits. Every kernel returns a status: BSP_OK, or BSP_NO_MEMORY where a
 * work buffer could not be allocated (nothing written then; cnnbench.fused_cpu raises MemoryError).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BSP_OK 0
#define BSP_NO_MEMORY 1

/* malloc(a * b * size) (a, b >= 0), NULL where it fails or where the byte count overflows size_t. */
static void* alloc_array(int64_t a, int64_t b, size_t size) {
  if (a < 0 || b < 0 || (a > 0 && (uint64_t)b > SIZE_MAX / size / (uint64_t)a)) return NULL;
  const size_t bytes = (size_t)a * (size_t)b * size;
  return malloc(bytes ? bytes : 1); /* malloc(0) may return NULL: not a failure */
}

/* Floats per thread for one (image, channel) plane's buffer: HW rounded up to 64 bytes, so that two
 * threads' buffers in one allocation never share a cache line. */
static inline int64_t plane_stride(int64_t HW) { return (HW + 15) & ~(int64_t)15; }

/* exp(x) for float32, written so that the compiler vectorizes the loops that call it (a libm call would
 * keep them scalar): Cody-Waite range reduction by ln 2 and Cephes' degree-6 polynomial for exp on
 * [-ln2/2, ln2/2], relative error about 1e-7. The argument is clamped to [-88, 88] (exp(88) ~ 1.7e38). */
static inline float fast_exp(float x) {
  x = x > 88.0f ? 88.0f : (x < -88.0f ? -88.0f : x);
  float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f); /* round(x / ln 2) */
  x = x - k * 0.693359375f;                                     /* ln 2 in two parts (Cody-Waite) */
  x = x - k * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.0f;
  int32_t bits = ((int32_t)k + 127) << 23; /* 2^k */
  float two_k;
  __builtin_memcpy(&two_k, &bits, sizeof two_k);
  return y * two_k;
}

static inline float sigmoid(float y) { return 1.0f / (1.0f + fast_exp(-y)); }

/* Batch statistics of z (N, C, HW) per channel, the affine map the forward applies around a center
 * (y = scale * (z - center) + shift, scale = gamma * invstd, shift = beta - (mean - center) * scale;
 * gamma/beta may be NULL: 1 and 0), and the running statistics' update (running_mean/var may be NULL;
 * running_var takes the unbiased variance, as ATen). mean[c] is stored relative to center[c]: the
 * backward's xhat = ((z - center) - mean) * invstd needs no large float that cancels.
 *
 * The variance is the shifted one-pass formula: with d = z - k, k = the channel's first value,
 * var = E[d^2] - E[d]^2. Its cancellation grows with ((mean - k) / std)^2, a few units for a k drawn from
 * the channel itself; around 0 (E[z^2] - mean^2) it grows with (mean / std)^2, 1e10 for mean 1e3 and
 * std 1e-2: every digit lost. Always returns BSP_OK (nothing to allocate). */
int bsp_batch_stats(const float* z, int64_t N, int64_t C, int64_t HW, const float* gamma, const float* beta,
                    double eps, double momentum, float* running_mean, float* running_var, float* center,
                    float* mean, float* invstd, float* scale, float* shift, int nthreads) {
  const double M = (double)N * (double)HW;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t c = 0; c < C; c++) {
    const float k0 = z[c * HW]; /* image 0's first value of channel c: the shift */
    double sum = 0.0, sumsq = 0.0;
    for (int64_t n = 0; n < N; n++) {
      const float* p = z + (n * C + c) * HW;
      float s = 0.0f, ss = 0.0f;
#pragma omp simd reduction(+ : s, ss)
      for (int64_t k = 0; k < HW; k++) {
        const float d = p[k] - k0;
        s += d;
        ss += d * d;
      }
      sum += s;
      sumsq += ss;
    }
    double mu = sum / M; /* the mean of d = z - k0 */
    double var = sumsq / M - mu * mu;
    var = var > 0.0 ? var : 0.0;
    const double mean_z = k0 + mu;
    double is = 1.0 / sqrt(var + eps);
    double g = gamma ? gamma[c] : 1.0, b = beta ? beta[c] : 0.0;
    center[c] = k0;
    mean[c] = (float)mu;
    invstd[c] = (float)is;
    scale[c] = (float)(g * is);
    shift[c] = (float)(b - mu * g * is);
    if (running_mean) running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean_z);
    if (running_var) running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * var * M / (M > 1.0 ? M - 1.0 : 1.0));
  }
  return BSP_OK;
}

/* out (N, C, H/2, W/2) = avgpool2x2(sigmoid(scale[c] * (z - center[c]) + shift[c])); center NULL: 0;
 * scale/shift NULL: sigmoid(z). BSP_NO_MEMORY: no buffer for the sigmoids (out untouched). */
int bsp_forward(const float* z, int64_t N, int64_t C, int64_t H, int64_t W, const float* center,
                const float* scale, const float* shift, float* out, int nthreads) {
  const int64_t H2 = H / 2, W2 = W / 2, HW = H * W, stride = plane_stride(HW);
  float* planes = (float*)alloc_array(nthreads, stride, sizeof(float)); /* per thread: one plane's sigmoids */
  if (!planes) return BSP_NO_MEMORY;
#pragma omp parallel num_threads(nthreads)
  {
    float* s = planes + omp_get_thread_num() * stride; /* in L1/L2 */
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
      const int64_t c = nc % C;
      const float o = center ? center[c] : 0.0f;
      const float a = scale ? scale[c] : 1.0f, b = shift ? shift[c] : 0.0f;
      const float* zp = z + nc * HW;
      float* op = out + nc * H2 * W2;
#pragma omp simd
      for (int64_t k = 0; k < HW; k++) s[k] = sigmoid(a * (zp[k] - o) + b);
      for (int64_t i = 0; i < H2; i++) {
        const float* r0 = s + 2 * i * W;
        const float* r1 = r0 + W;
        for (int64_t j = 0; j < W2; j++)
          op[i * W2 + j] = 0.25f * ((r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]));
      }
    }
  }
  free(planes);
  return BSP_OK;
}

/* One plane of the pool's backward: every pixel of a 2x2 block gets a quarter of the block's gradient. */
static inline void spread_quarters(const float* g, int64_t H2, int64_t W2, int64_t W, float* out) {
  for (int64_t i = 0; i < H2; i++) {
    float* r0 = out + 2 * i * W;
    float* r1 = r0 + W;
    for (int64_t j = 0; j < W2; j++) {
      const float v = 0.25f * g[i * W2 + j];
      r0[2 * j] = v;
      r0[2 * j + 1] = v;
      r1[2 * j] = v;
      r1[2 * j + 1] = v;
    }
  }
}

/* Backward of bsp: g (N, C, H/2, W/2) is the gradient at the pool's output; center, scale, shift, mean
 * (relative to center) and invstd are bsp_batch_stats' outputs. With dy the gradient at the BatchNorm's
 * output and xhat = ((z - center) - mean) * invstd: dbeta = sum(dy), dgamma = sum(dy * xhat) (pass 1,
 * per plane, then per channel), dz = gamma * invstd * (dy - mean(dy) - xhat * mean(dy * xhat)) (pass 2;
 * skipped when dz is NULL). gamma may be NULL (1). BSP_NO_MEMORY: no buffers (nothing written). */
int bsp_backward(const float* g, const float* z, int64_t N, int64_t C, int64_t H, int64_t W,
                 const float* center, const float* scale, const float* shift, const float* mean,
                 const float* invstd, const float* gamma, float* dz, float* dgamma, float* dbeta, int nthreads) {
  const int64_t H2 = H / 2, W2 = W / 2, HW = H * W, stride = plane_stride(HW);
  const double M = (double)N * (double)HW;
  /* per plane: sum(dy), sum(dy * xhat) (2 N C); then per channel: sum(dy) (C), sum(dy * xhat) (C) */
  double* sums = (double*)alloc_array(2 * (N + 1), C, sizeof(double));
  float* spread = (float*)alloc_array(nthreads, stride, sizeof(float)); /* per thread: one plane's dy */
  if (!sums || !spread) {
    free(sums);
    free(spread);
    return BSP_NO_MEMORY;
  }
  double* part = sums;
  double* sum_dy = sums + 2 * N * C;
  double* sum_dyx = sum_dy + C;
#pragma omp parallel num_threads(nthreads)
  {
    float* gq = spread + omp_get_thread_num() * stride;
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
      const int64_t c = nc % C;
      const float o = center[c], a = scale[c], b = shift[c], m = mean[c], is = invstd[c];
      const float* zp = z + nc * HW;
      spread_quarters(g + nc * H2 * W2, H2, W2, W, gq);
      float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t k = 0; k < HW; k++) {
        const float s = sigmoid(a * (zp[k] - o) + b);
        const float dy = gq[k] * s * (1.0f - s);
        s1 += dy;
        s2 += dy * ((zp[k] - o) - m) * is;
      }
      part[2 * nc] = s1;
      part[2 * nc + 1] = s2;
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; c++) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t n = 0; n < N; n++) {
        s1 += part[2 * (n * C + c)];
        s2 += part[2 * (n * C + c) + 1];
      }
      sum_dy[c] = s1;
      sum_dyx[c] = s2;
      dbeta[c] = (float)s1;
      dgamma[c] = (float)s2;
    }
    if (dz) {
#pragma omp for schedule(static)
      for (int64_t nc = 0; nc < N * C; nc++) {
        const int64_t c = nc % C;
        const float o = center[c], a = scale[c], b = shift[c], m = mean[c], is = invstd[c];
        const float k1 = (gamma ? gamma[c] : 1.0f) * is;
        const float mdy = (float)(sum_dy[c] / M), mdyx = (float)(sum_dyx[c] / M);
        const float* zp = z + nc * HW;
        float* dp = dz + nc * HW;
        spread_quarters(g + nc * H2 * W2, H2, W2, W, gq);
#pragma omp simd
        for (int64_t k = 0; k < HW; k++) {
          const float s = sigmoid(a * (zp[k] - o) + b);
          const float dy = gq[k] * s * (1.0f - s);
          const float xhat = ((zp[k] - o) - m) * is;
          dp[k] = k1 * (dy - mdy - xhat * mdyx);
        }
      }
    }
  }
  free(sums);
  free(spread);
  return BSP_OK;
}

/* Backward of sigmoid + pool: dz = quarter(g) * s * (1 - s), s = sigmoid(z) recomputed. BSP_NO_MEMORY:
 * no buffer for the spread gradient (dz untouched). */
int sp_backward(const float* g, const float* z, int64_t N, int64_t C, int64_t H, int64_t W, float* dz,
                int nthreads) {
  const int64_t H2 = H / 2, W2 = W / 2, HW = H * W, stride = plane_stride(HW);
  float* quarters = (float*)alloc_array(nthreads, stride, sizeof(float)); /* per thread: one plane */
  if (!quarters) return BSP_NO_MEMORY;
#pragma omp parallel num_threads(nthreads)
  {
    float* gq = quarters + omp_get_thread_num() * stride;
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; nc++) {
      const float* zp = z + nc * HW;
      float* dp = dz + nc * HW;
      spread_quarters(g + nc * H2 * W2, H2, W2, W, gq);
#pragma omp simd
      for (int64_t k = 0; k < HW; k++) {
        const float s = sigmoid(zp[k]);
        dp[k] = gq[k] * s * (1.0f - s);
      }
    }
  }
  free(quarters);
  return BSP_OK;
}

/* ------------------------------------------------------------------------------------------------------
 * A convolution of one input channel (LeNet's first layer on grey images): forward and weight gradient.
 *
 * Why: oneDNN runs LeNet's first convolution (1 -> 6 channels, 5x5, padding 2, 28x28, batch 256) at about
 * 40 GFLOP/s on one core of a 2-core Xeon whose fp32 matmul peak is 227 (its second convolution, 6 -> 16,
 * runs at 166): one input channel leaves its blocked kernels little to block. Directly, the forward computes
 * blocks of 2 output rows x 2 vectors of 16 columns x 6 output channels (24 accumulators; each tap's 4 input
 * vectors loaded once, each weight broadcast once), the weight gradient 4 taps x 6 channels at a time from
 * one load of the output gradient: 1.46 -> 0.80 ms forward and 1.50 -> 0.91 ms for the weight gradient on
 * that layer (one thread; the forward writes 4.8 MB, about 0.5 ms of this core's memory bandwidth).
 *
 * Layouts: x (B, 1, H, W), w (O, 1, K, K), out (B, O, Ho, Wo), contiguous float32; stride 1, the same
 * zero padding P on every side, K <= C1_MAX_K. The weight gradient sums over images in blocks of
 * C1_IMAGE_BLOCK images, each block in image order, then the blocks in order (in double): the result does not
 * depend on the number of threads. Status: BSP_OK, BSP_NO_MEMORY, or C1_BAD_SHAPE (K too large).
 * ---------------------------------------------------------------------------------------------------- */
#define C1_BAD_SHAPE 2
#define C1_MAX_K 7
#define C1_IMAGE_BLOCK 8
#define VL 16 /* floats per vector: one AVX-512 register (two AVX2 or four NEON ones elsewhere) */
#define OB 6  /* output channels per register block */
#define TB 4  /* weight gradient: taps per block (OB * TB accumulators + OB gradient vectors in registers) */
typedef float v16 __attribute__((vector_size(VL * sizeof(float))));

static inline v16 vload(const float* p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 vsplat(float s) { return (v16){s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s}; }

/* One image zero-padded by P into xp, (H + 2P) rows of Wq floats (Wq >= every column a vector reads). */
static void pad_image(const float* x, int64_t H, int64_t W, int64_t P, float* xp, int64_t Wq) {
  memset(xp, 0, sizeof(float) * (H + 2 * P) * Wq);
  for (int64_t i = 0; i < H; i++) memcpy(xp + (i + P) * Wq + P, x + i * W, sizeof(float) * W);
}

#define RB 2 /* forward: output rows per register block */
#define CB 2 /* forward: vectors of columns per register block (RB * CB * OB accumulators) */
int c1_forward(const float* x, int64_t B, int64_t H, int64_t W, const float* w, const float* bias, int64_t O,
               int64_t K, int64_t P, float* out, int nthreads) {
  if (K > C1_MAX_K) return C1_BAD_SHAPE;
  const int64_t Ho = H + 2 * P - K + 1, Wo = W + 2 * P - K + 1;
  const int64_t chunks = (Wo + VL - 1) / VL, col_blocks = (chunks + CB - 1) / CB;
  const int64_t Wq = col_blocks * CB * VL + K, Hq = H + 2 * P + RB;  /* room for a block's overhang */
  int status = BSP_OK;
#pragma omp parallel num_threads(nthreads)
  {
    float* xp = alloc_array(Hq, Wq, sizeof(float));
    if (!xp) {
#pragma omp atomic write
      status = BSP_NO_MEMORY;
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; b++) {
      if (!xp) continue;
      memset(xp, 0, sizeof(float) * Hq * Wq);
      for (int64_t i = 0; i < H; i++) memcpy(xp + (i + P) * Wq + P, x + (b * H + i) * W, sizeof(float) * W);
      for (int64_t o0 = 0; o0 < O; o0 += OB) {
        const int64_t ob = O - o0 < OB ? O - o0 : OB;
        float wt[C1_MAX_K * C1_MAX_K][OB];  /* this block's weights, tap-major */
        for (int64_t t = 0; t < K * K; t++)
          for (int o = 0; o < OB; o++) wt[t][o] = o < ob ? w[(o0 + o) * K * K + t] : 0.0f;
        for (int64_t i0 = 0; i0 < Ho; i0 += RB)
          for (int64_t c0 = 0; c0 < chunks; c0 += CB) {
            v16 acc[RB][CB][OB];
            for (int r = 0; r < RB; r++)
              for (int c = 0; c < CB; c++)
                for (int o = 0; o < OB; o++) acc[r][c][o] = vsplat(o < ob && bias ? bias[o0 + o] : 0.0f);
            for (int64_t ki = 0; ki < K; ki++)
              for (int64_t kj = 0; kj < K; kj++) {
                const float* wk = wt[ki * K + kj];
                v16 v[RB][CB];
                for (int r = 0; r < RB; r++)
                  for (int c = 0; c < CB; c++) v[r][c] = vload(xp + (i0 + r + ki) * Wq + (c0 + c) * VL + kj);
                for (int o = 0; o < OB; o++) {
                  const v16 wv = vsplat(wk[o]);
                  for (int r = 0; r < RB; r++)
                    for (int c = 0; c < CB; c++) acc[r][c][o] += wv * v[r][c];
                }
              }
            for (int r = 0; r < RB && i0 + r < Ho; r++)
              for (int c = 0; c < CB && c0 + c < chunks; c++) {
                const int64_t col = (c0 + c) * VL, n = Wo - col < VL ? Wo - col : VL;  /* the last may overhang */
                for (int o = 0; o < ob; o++) {
                  float* dst = out + ((b * O + o0 + o) * Ho + i0 + r) * Wo + col;
                  if (n == VL) {
                    vstore(dst, acc[r][c][o]);
                  } else {
                    float tmp[VL];
                    vstore(tmp, acc[r][c][o]);
                    memcpy(dst, tmp, sizeof(float) * n);
                  }
                }
              }
          }
      }
    }
    free(xp);
  }
  return status;
}

/* dw[o, ki, kj] = sum over b, i, j of g[b, o, i, j] * xpad[b, i + ki, j + kj]; db[o] = sum of g[:, o] (the
 * tap after the last, with an input of ones). db may be NULL. */
int c1_weight_grad(const float* x, const float* g, int64_t B, int64_t H, int64_t W, int64_t O, int64_t K,
                   int64_t P, float* dw, float* db, int nthreads) {
  if (K > C1_MAX_K) return C1_BAD_SHAPE;
  const int64_t Ho = H + 2 * P - K + 1, Wo = W + 2 * P - K + 1;
  const int64_t chunks = (Wo + VL - 1) / VL, Wq = chunks * VL + K, Wg = chunks * VL;
  const int64_t taps = K * K, per_block = O * (taps + 1) * VL, blocks = (B + C1_IMAGE_BLOCK - 1) / C1_IMAGE_BLOCK;
  float* sums = calloc(blocks ? blocks * per_block : 1, sizeof(float));  /* (blocks, O, taps + 1, VL) */
  if (!sums) return BSP_NO_MEMORY;
  int status = BSP_OK;
#pragma omp parallel num_threads(nthreads)
  {
    float* xp = alloc_array(H + 2 * P, Wq, sizeof(float));
    float* gp = alloc_array(O * Ho, Wg, sizeof(float));
    /* a row of ones: the bias "tap" (the sum of g) and the taps past the last one read vectors from here
     * with a row step of 0, so the inner loop is the same for every tap (no branch, all in registers) */
    float* ones = alloc_array(1, Wg, sizeof(float));
    if (!xp || !gp || !ones) {
#pragma omp atomic write
      status = BSP_NO_MEMORY;
    } else {
      for (int64_t j = 0; j < Wg; j++) ones[j] = 1.0f;
    }
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; blk++) {
      if (!xp || !gp || !ones) continue;
      float* acc_blk = sums + blk * per_block;
      const int64_t b_end = (blk + 1) * C1_IMAGE_BLOCK < B ? (blk + 1) * C1_IMAGE_BLOCK : B;
      for (int64_t b = blk * C1_IMAGE_BLOCK; b < b_end; b++) {
        pad_image(x + b * H * W, H, W, P, xp, Wq);
        memset(gp, 0, sizeof(float) * O * Ho * Wg);  /* zeros past Wo: an overhanging vector adds nothing */
        for (int64_t r = 0; r < O * Ho; r++) memcpy(gp + r * Wg, g + (b * O * Ho + r) * Wo, sizeof(float) * Wo);
        for (int64_t t0 = 0; t0 <= taps; t0 += TB) {
          const float* base[TB];  /* each tap's first input vector, and its step from one output row to the next */
          int64_t step[TB];
          for (int t = 0; t < TB; t++) {
            const int64_t tap = t0 + t;
            base[t] = tap < taps ? xp + (tap / K) * Wq + tap % K : ones;
            step[t] = tap < taps ? Wq : 0;
          }
          for (int64_t o0 = 0; o0 < O; o0 += OB) {
            const int64_t ob = O - o0 < OB ? O - o0 : OB;
            v16 acc[OB][TB];
            for (int o = 0; o < OB; o++)
              for (int t = 0; t < TB; t++) acc[o][t] = vsplat(0.0f);
            for (int64_t i = 0; i < Ho; i++)
              for (int64_t c = 0; c < chunks; c++) {
                v16 gv[OB];
                for (int o = 0; o < OB; o++)
                  gv[o] = o < ob ? vload(gp + ((o0 + o) * Ho + i) * Wg + c * VL) : vsplat(0.0f);
                for (int t = 0; t < TB; t++) {
                  const v16 v = vload(base[t] + i * step[t] + c * VL);
                  for (int o = 0; o < OB; o++) acc[o][t] += gv[o] * v;
                }
              }
            for (int o = 0; o < ob; o++)
              for (int t = 0; t < TB && t0 + t <= taps; t++) {
                float* a = acc_blk + ((o0 + o) * (taps + 1) + t0 + t) * VL;
                vstore(a, vload(a) + acc[o][t]);
              }
          }
        }
      }
    }
    free(xp);
    free(gp);
    free(ones);
  }
  if (status == BSP_OK) {
    for (int64_t o = 0; o < O; o++)
      for (int64_t t = 0; t <= taps; t++) {
        double s = 0.0;
        for (int64_t blk = 0; blk < blocks; blk++)
          for (int l = 0; l < VL; l++) s += sums[blk * per_block + (o * (taps + 1) + t) * VL + l];
        if (t < taps) dw[o * taps + t] = (float)s;
        else if (db) db[o] = (float)s;
      }
  }
  free(sums);
  return status;
}

/* ------------------------------------------------------------------------------------------------------
 * Max pooling (kernel KH x KW, stride SH x SW, padding PH x PW, no dilation, floor mode), optionally with the
 * ReLU that follows it, on bfloat16 or float32 tensors, channels-last or NCHW.
 *
 * Why: ATen's CPU max pool writes an int64 index per output value and its backward first fills the whole
 * input gradient with zeros in a pass of its own. In VGG-11 at 224 px (bf16, channels-last, batch 128, 2
 * threads) the first stage's pool (128 x 16 x 224 x 224) took about 94 ms forward, 50 ms backward and 50 ms
 * for that fill: about a quarter of an eager training step. Here the window offset of each maximum is one byte
 * (an eighth of the index traffic), and the backward zeroes one image's gradient while it is in the cache and
 * adds into it at once.
 *
 * The same results as ATen's, bit for bit: each window is scanned row by row and a value replaces the
 * maximum when it is larger or NaN (ATen's rule: the first maximum, the last NaN), and the backward adds each
 * output's gradient into its maximum's place in the order of the outputs, rounding bf16 after every addition
 * as ATen's bf16 kernel does (it matters only where windows overlap). With relu, the output is
 * max(maximum, 0) and the window's offset is RELU_DEAD where the maximum is <= 0: ReLU's backward passes no
 * gradient there (and passes it for NaN, as ATen's threshold_backward does).
 *
 * Layouts: every tensor is contiguous in x's memory format (channels_last: (B, H, W, C) in memory; else (B, C,
 * H, W)); idx has the output's shape and layout. Status: BSP_OK, BSP_NO_MEMORY, or MP_BAD_SHAPE.
 * ---------------------------------------------------------------------------------------------------- */
#define MP_BAD_SHAPE 2
#define MP_MAX_WINDOW 254 /* KH * KW: offsets 0..253 in a byte, RELU_DEAD above them */
#define RELU_DEAD 255

static inline float bf16_to_float(uint16_t b) {
  uint32_t bits = (uint32_t)b << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

/* float -> bfloat16, rounding to the nearest even (c10::BFloat16's conversion; NaN stays a quiet NaN) */
static inline uint16_t float_to_bf16(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  if (f != f) return 0x7FC0;
  return (uint16_t)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

/* 16 channels at a time in GCC's vector types (the full blocks of the channels-last loops; a compiler's own
 * vectorization of the per-channel loops left them scalar at 16 channels) */
typedef uint32_t vu16 __attribute__((vector_size(64)));
typedef int32_t vm16 __attribute__((vector_size(64))); /* a comparison's lanes: -1 or 0 */
typedef uint16_t vh16 __attribute__((vector_size(32)));
typedef uint8_t vb16 __attribute__((vector_size(16)));

static inline v16 vload_bf16(const uint16_t* p) {
  vh16 h;
  memcpy(&h, p, sizeof h);
  return (v16)(__builtin_convertvector(h, vu16) << 16);
}
static inline v16 vselect(vm16 m, v16 a, v16 b) { return (v16)(((vu16)a & (vu16)m) | ((vu16)b & ~(vu16)m)); }
static inline vu16 vselect_u(vm16 m, vu16 a, vu16 b) { return (a & (vu16)m) | (b & ~(vu16)m); }
/* float -> bf16 bits, to the nearest even, NaN a quiet NaN (float_to_bf16 on 16 lanes) */
static inline vh16 vto_bf16(v16 f) {
  const vu16 bits = (vu16)f;
  const vu16 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return __builtin_convertvector(vselect_u(f != f, (vu16){0} + 0x7FC0u, rounded), vh16);
}

/* Channels-last, one output position, channels [c0, c0 + n) (n <= MP_CB; a constant MP_CB for full blocks, so
 * the loops vectorize): the window rows [i0, i1) x columns [j0, j1) inside the image. */
#define MP_CB 16 /* one 512-bit vector of floats */
static inline __attribute__((always_inline)) void mp_window_cl(
    const void* restrict x, int bf16, int64_t at0, int64_t rowstep, int64_t C, int64_t n, int64_t KW, int64_t i0,
    int64_t i1, int64_t j0, int64_t j1, int relu, void* restrict out, uint8_t* restrict idx, int64_t o) {
  float best[MP_CB];
  uint8_t arg[MP_CB];
  for (int64_t c = 0; c < n; c++) {
    best[c] = -__builtin_inff();
    arg[c] = 0;
  }
  for (int64_t i = i0; i < i1; i++)
    for (int64_t j = j0; j < j1; j++) {
      const int64_t at = at0 + i * rowstep + j * C;
      const uint8_t offset = (uint8_t)(i * KW + j);
      float v[MP_CB];
      if (bf16) {
        const uint16_t* restrict xv = (const uint16_t*)x + at;
        for (int64_t c = 0; c < n; c++) v[c] = bf16_to_float(xv[c]);
      } else {
        const float* restrict xv = (const float*)x + at;
        for (int64_t c = 0; c < n; c++) v[c] = xv[c];
      }
      for (int64_t c = 0; c < n; c++) {
        const int take = (v[c] > best[c]) | (v[c] != v[c]);
        best[c] = take ? v[c] : best[c];
        arg[c] = take ? offset : arg[c];
      }
    }
  if (relu)
    for (int64_t c = 0; c < n; c++) {
      const int dead = best[c] <= 0.0f; /* false for NaN: ReLU keeps NaN and its gradient */
      best[c] = dead ? 0.0f : best[c];
      arg[c] = dead ? RELU_DEAD : arg[c];
    }
  if (bf16) {
    uint16_t* restrict ov = (uint16_t*)out + o;
    for (int64_t c = 0; c < n; c++) {
      uint32_t bits;
      memcpy(&bits, &best[c], sizeof bits);
      ov[c] = (uint16_t)(bits >> 16); /* exact: every maximum is a bf16 value, or 0 */
    }
  } else {
    float* restrict ov = (float*)out + o;
    for (int64_t c = 0; c < n; c++) ov[c] = best[c];
  }
  for (int64_t c = 0; c < n; c++) idx[o + c] = arg[c];
}

/* mp_window_cl for a full block of MP_CB channels, in vectors */
static inline void mp_window_cl16(const void* restrict x, int bf16, int64_t at0, int64_t rowstep, int64_t C,
                                  int64_t KW, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int relu,
                                  void* restrict out, uint8_t* restrict idx, int64_t o) {
  v16 best = vsplat(-__builtin_inff());
  vu16 arg = {0};
  for (int64_t i = i0; i < i1; i++)
    for (int64_t j = j0; j < j1; j++) {
      const int64_t at = at0 + i * rowstep + j * C;
      const v16 v = bf16 ? vload_bf16((const uint16_t*)x + at) : vload((const float*)x + at);
      const vm16 take = (v > best) | (v != v);
      best = vselect(take, v, best);
      arg = vselect_u(take, (vu16){0} + (uint32_t)(i * KW + j), arg);
    }
  if (relu) {
    const vm16 dead = best <= vsplat(0.0f); /* false for NaN: ReLU keeps NaN and its gradient */
    best = vselect(dead, vsplat(0.0f), best);
    arg = vselect_u(dead, (vu16){0} + RELU_DEAD, arg);
  }
  if (bf16) {
    const vh16 h = __builtin_convertvector((vu16)best >> 16, vh16); /* exact: a bf16 value, or 0 */
    memcpy((uint16_t*)out + o, &h, sizeof h);
  } else {
    vstore((float*)out + o, best);
  }
  const vb16 a = __builtin_convertvector(arg, vb16);
  memcpy(idx + o, &a, sizeof a);
}

/* mp_grad_cl for a full block of MP_CB channels, in vectors */
static inline void mp_grad_cl16(const void* restrict g, const uint8_t* restrict idx, int bf16, int64_t o,
                                int64_t at0, int64_t rowstep, int64_t C, int64_t KW, int64_t i0, int64_t i1,
                                int64_t j0, int64_t j1, void* restrict dx) {
  vb16 ab;
  memcpy(&ab, idx + o, sizeof ab);
  const vu16 a = __builtin_convertvector(ab, vu16);
  const v16 gv = bf16 ? vload_bf16((const uint16_t*)g + o) : vload((const float*)g + o);
  for (int64_t i = i0; i < i1; i++)
    for (int64_t j = j0; j < j1; j++) {
      const vm16 here = (vm16)(a == (vu16){0} + (uint32_t)(i * KW + j));
      const int64_t at = at0 + i * rowstep + j * C;
      if (bf16) {
        uint16_t* dv = (uint16_t*)dx + at;
        vh16 old;
        memcpy(&old, dv, sizeof old);
        const vh16 sum = vto_bf16(vload_bf16(dv) + gv);
        const vh16 m = __builtin_convertvector(here, vh16);
        const vh16 next = (sum & m) | (old & ~m);
        memcpy(dv, &next, sizeof next);
      } else {
        float* dv = (float*)dx + at;
        const v16 d = vload(dv);
        vstore(dv, vselect(here, d + gv, d));
      }
    }
}

/* One window of a tiling pool (channels-last, C a multiple of MP_CB): every place of it written once, the
 * gradient (0 + g, as ATen adds into its zeroed gradient) where it holds the maximum, else 0. */
static inline void mp_grad_tile16(const void* restrict g, const uint8_t* restrict idx, int bf16, int64_t o,
                                  int64_t at0, int64_t rowstep, int64_t C, int64_t KH, int64_t KW,
                                  void* restrict dx) {
  for (int64_t c0 = 0; c0 < C; c0 += MP_CB) {
    vb16 ab;
    memcpy(&ab, idx + o + c0, sizeof ab);
    const vu16 a = __builtin_convertvector(ab, vu16);
    const v16 gv = vsplat(0.0f) + (bf16 ? vload_bf16((const uint16_t*)g + o + c0) : vload((const float*)g + o + c0));
    const vh16 gh = bf16 ? vto_bf16(gv) : (vh16){0};
    for (int64_t i = 0; i < KH; i++)
      for (int64_t j = 0; j < KW; j++) {
        const vm16 here = (vm16)(a == (vu16){0} + (uint32_t)(i * KW + j));
        const int64_t at = at0 + i * rowstep + j * C + c0;
        if (bf16) {
          const vh16 next = gh & __builtin_convertvector(here, vh16);
          memcpy((uint16_t*)dx + at, &next, sizeof next);
        } else {
          vstore((float*)dx + at, vselect(here, gv, vsplat(0.0f)));
        }
      }
  }
}

/* NCHW, one output row of one plane: outputs [0, Wo) of row oh; best/arg: Wo floats/bytes of work space. */
static void mp_row_nchw(const void* restrict x, int bf16, int64_t H, int64_t W, int64_t KH, int64_t KW, int64_t SH,
                        int64_t SW, int64_t PH, int64_t PW, int64_t oh, int64_t Wo, int relu, void* restrict out,
                        uint8_t* restrict idx, float* restrict best, uint8_t* restrict arg) {
  for (int64_t ow = 0; ow < Wo; ow++) {
    best[ow] = -__builtin_inff();
    arg[ow] = 0;
  }
  for (int64_t i = 0; i < KH; i++) {
    const int64_t h = oh * SH - PH + i;
    if (h < 0 || h >= H) continue;
    for (int64_t j = 0; j < KW; j++) {
      const uint8_t offset = (uint8_t)(i * KW + j);
      /* the outputs whose column ow * SW - PW + j lies inside the row */
      int64_t lo = PW - j > 0 ? (PW - j + SW - 1) / SW : 0, hi = (W - 1 + PW - j) / SW + 1;
      hi = hi < Wo ? hi : Wo;
      const int64_t first = h * W + lo * SW - PW + j;
      for (int64_t ow = lo; ow < hi; ow++) {
        const int64_t at = first + (ow - lo) * SW;
        const float v = bf16 ? bf16_to_float(((const uint16_t*)x)[at]) : ((const float*)x)[at];
        const int take = (v > best[ow]) | (v != v);
        best[ow] = take ? v : best[ow];
        arg[ow] = take ? offset : arg[ow];
      }
    }
  }
  for (int64_t ow = 0; ow < Wo; ow++) {
    const int dead = relu && best[ow] <= 0.0f;
    const float v = dead ? 0.0f : best[ow];
    if (bf16) {
      uint32_t bits;
      memcpy(&bits, &v, sizeof bits);
      ((uint16_t*)out)[ow] = (uint16_t)(bits >> 16);
    } else {
      ((float*)out)[ow] = v;
    }
    idx[ow] = dead ? RELU_DEAD : arg[ow];
  }
}

static int mp_bad_shape(int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW) {
  return KH * KW > MP_MAX_WINDOW || KH < 1 || KW < 1 || SH < 1 || SW < 1 || PH < 0 || PW < 0 || 2 * PH > KH ||
         2 * PW > KW;
}

int maxpool_forward(const void* x, int64_t B, int64_t C, int64_t H, int64_t W, int bf16, int channels_last,
                    int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW, int relu, void* out,
                    uint8_t* idx, int nthreads) {
  if (mp_bad_shape(KH, KW, SH, SW, PH, PW)) return MP_BAD_SHAPE;
  const int64_t Ho = (H + 2 * PH - KH) / SH + 1, Wo = (W + 2 * PW - KW) / SW + 1;
  if (Ho < 1 || Wo < 1) return MP_BAD_SHAPE;
  const size_t elem = bf16 ? 2 : 4;
  int status = BSP_OK;
  if (channels_last) { /* a work item: one output row of one image, every channel (the vectors run over them) */
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t item = 0; item < B * Ho; item++) {
      const int64_t b = item / Ho, oh = item % Ho, h0 = oh * SH - PH;
      const int64_t i0 = h0 < 0 ? -h0 : 0, i1 = h0 + KH > H ? H - h0 : KH;
      for (int64_t ow = 0; ow < Wo; ow++) {
        const int64_t w0 = ow * SW - PW, j0 = w0 < 0 ? -w0 : 0, j1 = w0 + KW > W ? W - w0 : KW;
        const int64_t at0 = ((b * H + h0) * W + w0) * C, o = ((b * Ho + oh) * Wo + ow) * C;
        int64_t c0 = 0;
        for (; c0 + MP_CB <= C; c0 += MP_CB)
          mp_window_cl16(x, bf16, at0 + c0, W * C, C, KW, i0, i1, j0, j1, relu, out, idx, o + c0);
        if (c0 < C) mp_window_cl(x, bf16, at0 + c0, W * C, C, C - c0, KW, i0, i1, j0, j1, relu, out, idx, o + c0);
      }
    }
    return status;
  }
#pragma omp parallel num_threads(nthreads)
  { /* NCHW: a work item is one output row of one (image, channel) plane */
    float* best = alloc_array(Wo, 1, sizeof(float));
    uint8_t* arg = alloc_array(Wo, 1, 1);
    if (!best || !arg) {
#pragma omp atomic write
      status = BSP_NO_MEMORY;
    }
#pragma omp for schedule(static)
    for (int64_t item = 0; item < B * C * Ho; item++) {
      if (!best || !arg) continue;
      const int64_t plane = item / Ho, oh = item % Ho, o = (plane * Ho + oh) * Wo;
      mp_row_nchw((const char*)x + plane * H * W * elem, bf16, H, W, KH, KW, SH, SW, PH, PW, oh, Wo, relu,
                  (char*)out + o * elem, idx + o, best, arg);
    }
    free(best);
    free(arg);
  }
  return status;
}

/* Channels-last, one output position, channels [c0, c0 + n): its gradient added where each window place holds
 * the maximum (n: a constant MP_CB for full blocks, so the loops vectorize). */
static inline __attribute__((always_inline)) void mp_grad_cl(
    const void* restrict g, const uint8_t* restrict idx, int bf16, int64_t o, int64_t at0, int64_t rowstep,
    int64_t C, int64_t n, int64_t KW, int64_t i0, int64_t i1, int64_t j0, int64_t j1, void* restrict dx) {
  const uint8_t* restrict a = idx + o;
  for (int64_t i = i0; i < i1; i++)
    for (int64_t j = j0; j < j1; j++) {
      const uint8_t offset = (uint8_t)(i * KW + j);
      const int64_t at = at0 + i * rowstep + j * C;
      if (bf16) {
        const uint16_t* restrict gv = (const uint16_t*)g + o;
        uint16_t* restrict dv = (uint16_t*)dx + at;
        for (int64_t c = 0; c < n; c++) {
          const uint16_t sum = float_to_bf16(bf16_to_float(dv[c]) + bf16_to_float(gv[c]));
          dv[c] = a[c] == offset ? sum : dv[c];
        }
      } else {
        const float* restrict gv = (const float*)g + o;
        float* restrict dv = (float*)dx + at;
        for (int64_t c = 0; c < n; c++) dv[c] = a[c] == offset ? dv[c] + gv[c] : dv[c];
      }
    }
}

/* The input gradient: zero, then each output's gradient added at its maximum, outputs in order. Work items:
 * an image (channels-last) or an image's channel (NCHW), so no two threads write one place; the item's
 * gradient is zeroed just before, while it fits in the cache. */
int maxpool_backward(const void* g, const uint8_t* idx, int64_t B, int64_t C, int64_t H, int64_t W, int bf16,
                     int channels_last, int64_t KH, int64_t KW, int64_t SH, int64_t SW, int64_t PH, int64_t PW,
                     void* dx, int nthreads) {
  if (mp_bad_shape(KH, KW, SH, SW, PH, PW)) return MP_BAD_SHAPE;
  const int64_t Ho = (H + 2 * PH - KH) / SH + 1, Wo = (W + 2 * PW - KW) / SW + 1;
  if (Ho < 1 || Wo < 1) return MP_BAD_SHAPE;
  const int64_t nc = channels_last ? C : 1, items = channels_last ? B : B * C;
  const size_t elem = bf16 ? 2 : 4;
  /* windows that tile the image exactly (VGG's 2x2 pools of even sides), channels-last, whole vectors */
  const int tiles = channels_last && C % MP_CB == 0 && SH == KH && SW == KW && PH == 0 && PW == 0 &&
                    Ho * KH == H && Wo * KW == W;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t item = 0; item < items; item++) {
    const int64_t in0 = item * H * W * nc, out0 = item * Ho * Wo * nc;
    if (tiles) { /* every input place in exactly one window: written once, no zeroing pass */
      for (int64_t o = out0; o < out0 + Ho * Wo * C; o += C) {
        const int64_t p = (o - out0) / C, oh = p / Wo, ow = p % Wo;
        mp_grad_tile16(g, idx, bf16, o, in0 + (oh * KH * W + ow * KW) * C, W * C, C, KH, KW, dx);
      }
      continue;
    }
    memset((char*)dx + in0 * elem, 0, elem * H * W * nc);
    for (int64_t oh = 0; oh < Ho; oh++)
      for (int64_t ow = 0; ow < Wo; ow++) {
        const int64_t o = out0 + (oh * Wo + ow) * nc, h0 = oh * SH - PH, w0 = ow * SW - PW;
        if (!channels_last) { /* one value: straight to its maximum's place */
          const uint8_t a = idx[o];
          if (a == RELU_DEAD) continue;
          const int64_t at = in0 + (h0 + a / KW) * W + w0 + a % KW;
          if (bf16)
            ((uint16_t*)dx)[at] = float_to_bf16(bf16_to_float(((uint16_t*)dx)[at]) + bf16_to_float(((const uint16_t*)g)[o]));
          else
            ((float*)dx)[at] += ((const float*)g)[o];
          continue;
        }
        /* channels-last: blocks of channels, each window place in turn, the channels whose maximum it holds */
        const int64_t i0 = h0 < 0 ? -h0 : 0, i1 = h0 + KH > H ? H - h0 : KH;
        const int64_t j0 = w0 < 0 ? -w0 : 0, j1 = w0 + KW > W ? W - w0 : KW;
        const int64_t at0 = in0 + (h0 * W + w0) * C;
        int64_t c0 = 0;
        for (; c0 + MP_CB <= C; c0 += MP_CB)
          mp_grad_cl16(g, idx, bf16, o + c0, at0 + c0, W * C, C, KW, i0, i1, j0, j1, dx);
        if (c0 < C) mp_grad_cl(g, idx, bf16, o + c0, at0 + c0, W * C, C, C - c0, KW, i0, i1, j0, j1, dx);
      }
  }
  return BSP_OK;
}
