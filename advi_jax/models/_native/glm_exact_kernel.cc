// One pass of glm_exact (advi_jax/vi/glm_exact.py) over a row-major design X: for a Gaussian
// q = N(m, S) over zeta = (intercept, beta) and the rows x~_i = (1, x_i) (or x_i without an
// intercept), eta_i = x~_i . zeta (+ offset_i) has mean mu_i = x~_i . m (+ offset_i) and variance
// v_i = ||L' x~_i||^2 (full rank, S = L L', L lower) or sum_k s_k^2 x~_ik^2 (mean field), and
//   value = sum_i psi_i,   g = sum_i d psi_i / d mu x~_i,   H = sum_i w_i x~_i x~_i',
// with psi_i = E[l(y_i, eta_i)] and w_i = -2 d psi_i / d v_i: closed form for Poisson (log link),
// for logistic the Gauss-Hermite pairs rule of advi_jax/vi/_glm_quad.py (_logistic_tiered: the
// same formulas per node pair t_j, eta = mu +- sd t_j), its node tier chosen per tile of rows by the
// largest sd there from the tiers the caller passes (the rule table, see GlmExactImpl).
//
// Rows are processed in tiles (32-256 rows, about 16 KiB of X) transposed to column-major, so that
// every per-row quantity is computed across rows in vector lanes: the predictors' moments (the
// N K^2 / 2 multiply-adds of L' x~ in 4-column x 2-vector register blocks), the quadrature, and the
// sums g and X~' diag(w) X~ (2 x 4 blocks of the upper triangle, accumulated in vectors of T and
// added into double every `kFlushRows` rows). X is read from memory once. Chunks of rows are shared
// out over XLA's CPU thread pool as in glm_kernel.cc's glm_all; each chunk's partial sums are in
// double and added in chunk order (the result does not depend on which thread ran what).

#include <utility>

#include "glm_simd.h"

namespace {

enum ExactKind : int64_t { kExactLogistic = 0, kExactPoisson = 1 };

// float32 helpers for the pairs rule (float64 uses the C library).
// log1p(e) for e in [0, 3] (log((1 + ea)(1 + eb)) of a node pair): halve 1 + e above 2.
inline float log1p_03_f(float e) {
  const bool big = e > 1.0f;
  const float l = log1p_01_f(big ? 0.5f * e - 0.5f : e);
  return big ? l + 0.693147180559945f : l;
}

// expm1(a) for a <= 0: a Taylor polynomial above -0.35 (relative error < 2e-8), exp(a) - 1 below.
inline float expm1_nonpos_f(float a) {
  const float p = a * (1.0f + a * (0.5f + a * (0.16666667f + a * (0.041666668f + a * (0.0083333338f +
                  a * (0.0013888889f + a * 0.00019841270f))))));
  return a > -0.35f ? p : exp_nonpos_f(a) - 1.0f;
}

template <typename T>
inline T log1p_03(T e) {
  if constexpr (std::is_same_v<T, float>) return log1p_03_f(e); else return std::log1p(e);
}
template <typename T>
inline T expm1_nonpos(T a) {
  if constexpr (std::is_same_v<T, float>) return expm1_nonpos_f(a); else return std::expm1(a);
}

template <typename T>
struct ExactProblem {
  const T* x;       // (N, D)
  const T* y;       // (N,)
  const T* offset;  // (N,) or nullptr
  const T* lgy;     // (N,) log y! (Poisson) or nullptr
  const T* m;       // (K,)
  const T* factor;  // (K, K) lower L (full rank) or (K,) sds (mean field)
  const T* rule;    // (tiers, 2 + 2 P): [sd bound, pairs, nodes (P), weights (P)] per tier
  int64_t n, d, k, tiers, max_pairs;
  bool intercept, meanfield;
  int64_t kind;
};

struct ExactPartial {
  std::vector<double> value, g, h;  // (1,), (K,), (K, K) upper triangle
  explicit ExactPartial(int64_t k) : value(1, 0.0), g(k, 0.0), h(k * k, 0.0) {}
};

constexpr int kVB = 32;        // vector bytes
constexpr int64_t kFlushRows = 1024;  // rows accumulated in T before adding into double

template <typename T>
void exact_rows(const ExactProblem<T>& p, int64_t row0, int64_t row1, ExactPartial& out) {
  using V = typename Vec<T, kVB>::type;
  constexpr int64_t W = Vec<T, kVB>::W;
  const int64_t d = p.d, K = p.k, off = p.intercept ? 1 : 0;
  const int64_t Kp = (K + 3) / 4 * 4;  // padded to the column blocks of 4
  // Rows per tile: about 16 KiB of transposed X, a multiple of 2 W, 32..256 rows.
  int64_t R = (16 * 1024) / (Kp * static_cast<int64_t>(sizeof(T)));
  R = std::max<int64_t>(2 * W, std::min<int64_t>(256, R / (2 * W) * (2 * W)));
  const int64_t nv = R / W;
  // Column-major tile (Kp rows of R), w * x~ likewise, per-row scalars.
  std::vector<V> xc(Kp * nv), wx(Kp * nv);
  std::vector<T> mu(R), var(R), val(R), first(R), w(R), sp(R), sg(R), cv(R);
  // Lt[j][k] = L[k][j] (zero above the diagonal of L, zero-padded to Kp rows): z_j = sum_k Lt[j][k] x~_k.
  std::vector<T> Lt(Kp * K, T(0)), s2(K, T(0));
  if (p.meanfield) {
    for (int64_t k = 0; k < K; ++k) s2[k] = p.factor[k] * p.factor[k];
  } else {
    for (int64_t j = 0; j < K; ++j)
      for (int64_t k = j; k < K; ++k) Lt[j * K + k] = p.factor[k * K + j];
  }
  std::vector<V> gv(K, V{}), hv(Kp * Kp, V{});
  int64_t since_flush = 0;
  auto flush = [&]() {
    for (int64_t k = 0; k < K; ++k) { out.g[k] += static_cast<double>(hsum<T, kVB>(gv[k])); gv[k] = V{}; }
    for (int64_t j = 0; j < K; ++j)
      for (int64_t k = j; k < K; ++k) {
        out.h[j * K + k] += static_cast<double>(hsum<T, kVB>(hv[j * Kp + k]));
        hv[j * Kp + k] = V{};
      }
    since_flush = 0;
  };
  T* xs = reinterpret_cast<T*>(xc.data());  // xs[k * R + r]
  for (int64_t k = 0; k < Kp; ++k)
    for (int64_t r = 0; r < R; ++r) xs[k * R + r] = (k == 0 && p.intercept) ? T(1) : T(0);

  for (int64_t i0 = row0; i0 < row1; i0 += R) {
    const int64_t nt = std::min(R, row1 - i0);
    // Transpose the tile (rows past nt are zero: they add nothing below).
    const T* xt = p.x + i0 * d;
    for (int64_t j = 0; j < d; ++j) {
      T* dst = xs + (j + off) * R;
      const T* src = xt + j;
#pragma omp simd
      for (int64_t r = 0; r < nt; ++r) dst[r] = src[r * d];
    }
    if (nt < R)
      for (int64_t k = 0; k < K; ++k)
        for (int64_t r = nt; r < R; ++r) xs[k * R + r] = T(0);
    // Means (and mean-field variances), accumulated in registers per vector of rows.
    for (int64_t r = 0; r < R; ++r) mu[r] = (p.offset && r < nt) ? p.offset[i0 + r] : T(0);
    for (int64_t rv = 0; rv < nv; ++rv) {
      V am = load<T, kVB>(mu.data() + rv * W), av = V{};
      if (p.meanfield) {
        for (int64_t k = 0; k < K; ++k) {
          const V xk = xc[k * nv + rv];
          am += p.m[k] * xk;
          av += s2[k] * (xk * xk);
        }
        std::memcpy(var.data() + rv * W, &av, sizeof av);
      } else {
        for (int64_t k = 0; k < K; ++k) am += p.m[k] * xc[k * nv + rv];
      }
      std::memcpy(mu.data() + rv * W, &am, sizeof am);
    }
    // Full-rank variances ||L' x~||^2.
    if (!p.meanfield) {
      for (int64_t rv = 0; rv < nv; rv += 2) {
        V v0 = V{}, v1 = V{};
        for (int64_t j0 = 0; j0 < Kp; j0 += 4) {
          V z[4][2];
          ADVI_UNROLL
          for (int a = 0; a < 4; ++a) z[a][0] = z[a][1] = V{};
          for (int64_t k = j0; k < K; ++k) {
            const V x0 = xc[k * nv + rv], x1 = xc[k * nv + rv + 1];
            ADVI_UNROLL
            for (int a = 0; a < 4; ++a) {
              const T l = Lt[(j0 + a) * K + k];
              z[a][0] += l * x0;
              z[a][1] += l * x1;
            }
          }
          ADVI_UNROLL
          for (int a = 0; a < 4; ++a) { v0 += z[a][0] * z[a][0]; v1 += z[a][1] * z[a][1]; }
        }
        std::memcpy(var.data() + rv * W, &v0, sizeof v0);
        std::memcpy(var.data() + (rv + 1) * W, &v1, sizeof v1);
      }
    }
    // The expected log-likelihood per row: value, first derivative, curvature weight w = -2 dpsi/dv.
    const T* yt = p.y + i0;
    for (int64_t r = nt; r < R; ++r) { mu[r] = T(0); var[r] = T(0); }
    T vsum = 0;
    if (p.kind == kExactPoisson) {
      // One vectorised loop (the sum as a simd reduction); the data-only log y! is not here: glm_exact
      // adds its sum once per fit (advi_jax_log_factorial_sum below), so lgy is normally empty. A
      // `lt ? lt[r] : 0` inside this loop kept it scalar and made the pass 20% slower at N = 1e6, D = 10.
      T vp = 0;
#pragma omp simd reduction(+ : vp)
      for (int64_t r = 0; r < nt; ++r) {
        const T rate = exp_any<T>(mu[r] + T(0.5) * var[r]);
        vp += yt[r] * mu[r] - rate;
        first[r] = yt[r] - rate;
        w[r] = rate;
      }
      if (p.lgy)
        for (int64_t r = 0; r < nt; ++r) vp -= p.lgy[i0 + r];
      vsum += vp;
    } else {
      T sd_max = 0;
      for (int64_t r = 0; r < nt; ++r) sd_max = std::max(sd_max, var[r]);
      sd_max = std::sqrt(sd_max);
      int64_t tier = 0;
      while (tier + 1 < p.tiers && p.rule[tier * (2 + 2 * p.max_pairs)] < sd_max) ++tier;
      const T* row = p.rule + tier * (2 + 2 * p.max_pairs);
      const int64_t pairs = static_cast<int64_t>(row[1]);
      const T* nodes = row + 2;
      const T* weights = row + 2 + p.max_pairs;
      std::fill(sp.begin(), sp.end(), T(0));
      std::fill(sg.begin(), sg.end(), T(0));
      std::fill(cv.begin(), cv.end(), T(0));
      for (int64_t r = 0; r < R; ++r) val[r] = std::sqrt(var[r]);  // sd
      for (int64_t q = 0; q < pairs; ++q) {
        const T t = nodes[q], wq = weights[q];
#pragma omp simd
        for (int64_t r = 0; r < R; ++r) {
          const T sd = val[r], m = mu[r];
          const T sdt = sd * t;
          const T a = m + sdt, b = m - sdt;
          const T ea = exp_nonpos<T>(-std::fabs(a)), eb = exp_nonpos<T>(-std::fabs(b));
          const T ra = T(1) / (T(1) + ea), rb = T(1) / (T(1) + eb);
          const T softplus = (a > T(0) ? a : T(0)) + (b > T(0) ? b : T(0)) + log1p_03<T>(ea + eb + ea * eb);
          const T sig = (a >= T(0) ? T(1) : ea) * ra + (b >= T(0) ? T(1) : eb) * rb;
          const T lead = std::fabs(m) >= sdt ? (ea > eb ? ea : eb) : T(1);
          const T ratio = sd > T(0) ? -expm1_nonpos<T>(T(-2) * sdt) / sd : T(2) * t;
          sp[r] += wq * softplus;
          sg[r] += wq * sig;
          cv[r] += wq * t * lead * ratio * (ra * rb);
        }
      }
      for (int64_t r = 0; r < nt; ++r) {
        vsum += yt[r] * mu[r] - sp[r];
        first[r] = yt[r] - sg[r];
        w[r] = cv[r];
      }
    }
    for (int64_t r = nt; r < R; ++r) { first[r] = T(0); w[r] = T(0); }
    out.value[0] += static_cast<double>(vsum);
    // g and w * x~.
    for (int64_t k = 0; k < K; ++k) {
      V acc = V{};
      for (int64_t rv = 0; rv < nv; ++rv) {
        const V f = load<T, kVB>(first.data() + rv * W), wr = load<T, kVB>(w.data() + rv * W);
        const V xk = xc[k * nv + rv];
        acc += f * xk;
        wx[k * nv + rv] = wr * xk;
      }
      gv[k] += acc;
    }
    // Upper triangle of X~' diag(w) X~ in 2 x 4 blocks (j0, j0 + 1) x (k0 .. k0 + 3), k0 >= j0 - 3.
    for (int64_t j0 = 0; j0 < Kp; j0 += 2) {
      for (int64_t k0 = j0 / 4 * 4; k0 < Kp; k0 += 4) {
        V acc[2][4];
        ADVI_UNROLL
        for (int a = 0; a < 2; ++a)
          ADVI_UNROLL
          for (int b = 0; b < 4; ++b) acc[a][b] = V{};
        for (int64_t rv = 0; rv < nv; ++rv) {
          const V w0 = wx[j0 * nv + rv], w1 = wx[(j0 + 1) * nv + rv];
          ADVI_UNROLL
          for (int b = 0; b < 4; ++b) {
            const V xb = xc[(k0 + b) * nv + rv];
            acc[0][b] += w0 * xb;
            acc[1][b] += w1 * xb;
          }
        }
        ADVI_UNROLL
        for (int a = 0; a < 2; ++a)
          ADVI_UNROLL
          for (int b = 0; b < 4; ++b) hv[(j0 + a) * Kp + k0 + b] += acc[a][b];
      }
    }
    since_flush += nt;
    if (since_flush >= kFlushRows) flush();
  }
  flush();
}

template <typename T>
struct ExactJob {
  ExactProblem<T> problem;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  std::vector<ExactPartial> parts;
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    const int64_t total = static_cast<int64_t>(chunks.size());
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= total) return;
      exact_rows<T>(problem, chunks[i].first, chunks[i].second, parts[i]);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

// Rows per chunk: at least 2^18 units of work (rows x (K^2 + 8 pairs)); at most four chunks per participant.
template <typename T>
void exact_all(ffi::ThreadPool& pool, const ExactProblem<T>& problem, int64_t max_threads, T* value, T* g, T* h) {
  auto job = std::make_shared<ExactJob<T>>();
  job->problem = problem;
  const int64_t n = problem.n, K = problem.k;
  const double work = static_cast<double>(n) * static_cast<double>(K * K + 8 * 4);
  int64_t participants = static_cast<int64_t>(work / static_cast<double>(1 << 18));
  participants = std::max<int64_t>(1, std::min<int64_t>({participants, max_threads, pool.num_threads()}));
  int64_t pieces = participants > 1 ? std::min<int64_t>(4 * participants, std::max<int64_t>(1, n / 256)) : 1;
  for (int64_t i = 0; i < pieces; ++i) job->chunks.push_back({n * i / pieces, n * (i + 1) / pieces});
  job->parts.reserve(pieces);
  for (int64_t i = 0; i < pieces; ++i) job->parts.emplace_back(K);
  participants = std::min(participants, pieces);
  for (int64_t i = 1; i < participants; ++i) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < pieces) std::this_thread::yield();
  ExactPartial total(K);
  for (const auto& part : job->parts) {
    total.value[0] += part.value[0];
    for (int64_t k = 0; k < K; ++k) total.g[k] += part.g[k];
    for (int64_t k = 0; k < K * K; ++k) total.h[k] += part.h[k];
  }
  value[0] = static_cast<T>(total.value[0]);
  for (int64_t k = 0; k < K; ++k) g[k] = static_cast<T>(total.g[k]);
  for (int64_t j = 0; j < K; ++j)
    for (int64_t k = j; k < K; ++k) h[j * K + k] = h[k * K + j] = static_cast<T>(total.h[j * K + k]);
}

// Shapes: x (N, D), y (N,), offset (N,) or (0,), lgy (N,) or (0,), m (K,), factor (K, K) (full rank) or
// (K,) (mean field), rule (tiers, 2 + 2 P); results value (), g (K,), h (K, K). K = D + intercept.
template <ffi::DataType DT>
ffi::Error GlmExactImpl(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> y, ffi::Buffer<DT> offset,
                        ffi::Buffer<DT> lgy, ffi::Buffer<DT> m, ffi::Buffer<DT> factor, ffi::Buffer<DT> rule,
                        ffi::ResultBuffer<DT> value, ffi::ResultBuffer<DT> g, ffi::ResultBuffer<DT> h, int64_t kind,
                        int64_t intercept, int64_t meanfield, int64_t max_threads) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto rd = rule.dimensions();
  if (xd.size() != 2 || rd.size() != 2 || rd[0] < 1 || rd[1] < 4 || rd[1] % 2 != 0) {
    return ffi::Error::InvalidArgument("advi_jax_glm_exact: expected x (N, D) and rule (tiers, 2 + 2 P)");
  }
  if (kind != kExactLogistic && kind != kExactPoisson) {
    return ffi::Error::InvalidArgument("advi_jax_glm_exact: kind must be 0 (logistic) or 1 (poisson)");
  }
  const int64_t N = xd[0], D = xd[1], K = D + (intercept ? 1 : 0);
  const size_t fk = static_cast<size_t>(meanfield ? K : K * K);
  if (m.element_count() != static_cast<size_t>(K) || factor.element_count() != fk ||
      y.element_count() != static_cast<size_t>(N) || g->element_count() != static_cast<size_t>(K) ||
      h->element_count() != static_cast<size_t>(K * K)) {
    return ffi::Error::InvalidArgument("advi_jax_glm_exact: m (K,), factor (K, K) or (K,), y (N,) expected");
  }
  if (K == 0 || N == 0) {
    value->typed_data()[0] = T(0);
    std::fill(g->typed_data(), g->typed_data() + K, T(0));
    std::fill(h->typed_data(), h->typed_data() + K * K, T(0));
    return ffi::Error::Success();
  }
  const bool has_offset = offset.element_count() == static_cast<size_t>(N);
  const bool has_lgy = lgy.element_count() == static_cast<size_t>(N);
  ExactProblem<T> p{x.typed_data(), y.typed_data(), has_offset ? offset.typed_data() : nullptr,
                    has_lgy ? lgy.typed_data() : nullptr, m.typed_data(), factor.typed_data(), rule.typed_data(),
                    N, D, K, rd[0], (rd[1] - 2) / 2, intercept != 0, meanfield != 0, kind};
  exact_all<T>(pool, p, std::max<int64_t>(1, max_threads), value->typed_data(), g->typed_data(), h->typed_data());
  return ffi::Error::Success();
}

// ---- sum_i lgamma(y_i + 1): glm_exact's data-only constant (Poisson, negative binomial) ----
// Evaluated once per fit (advi_jax/vi/_glm_native.py, data_constant), not in every pass; in
// double whatever T, with a log and a shift that vectorise (XLA's lgamma in the fast compile
// options' unvectorised code cost 30 ns a row).

// log(x) for finite x > 0 (not subnormal), double: x = 2^e m, m in [sqrt(1/2), sqrt(2)),
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: the series to s^21 (error < 1e-17).
// The exponent is read as a double by the 2^52 bias trick (no int64 -> double conversion).
inline double log_pos_d(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint64_t ebits = (bits >> 52) | 0x4330000000000000ULL;  // 2^52 + biased exponent
  double e;
  std::memcpy(&e, &ebits, sizeof e);
  e -= 4503599627370496.0 + 1023.0;
  const uint64_t mbits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;  // m in [1, 2)
  double m;
  std::memcpy(&m, &mbits, sizeof m);
  const bool big = m > 1.4142135623730951;
  m = big ? 0.5 * m : m;
  e = big ? e + 1.0 : e;
  const double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double q = 1.0 / 21.0;
  q = q * s2 + 1.0 / 19.0;
  q = q * s2 + 1.0 / 17.0;
  q = q * s2 + 1.0 / 15.0;
  q = q * s2 + 1.0 / 13.0;
  q = q * s2 + 1.0 / 11.0;
  q = q * s2 + 1.0 / 9.0;
  q = q * s2 + 1.0 / 7.0;
  q = q * s2 + 1.0 / 5.0;
  q = q * s2 + 1.0 / 3.0;
  q = q * s2 + 1.0;
  return e * 0.6931471805599453 + 2.0 * s * q;
}

// lgamma(z) for z >= 1, double: z < 16 is shifted to w = z + 16 (lgamma(z) = lgamma(w) -
// log(z (z + 1) ... (z + 15))), then Stirling's series to 1 / w^9 (error < 2e-16 at w >= 16).
inline double lgamma_ge1_d(double z) {
  const bool small = z < 16.0;
  double prod = 1.0;
  ADVI_UNROLL
  for (int k = 0; k < 16; ++k) prod *= z + k;
  const double w = small ? z + 16.0 : z;
  const double r = 1.0 / w, r2 = r * r;
  const double series = r * (1.0 / 12.0 + r2 * (-1.0 / 360.0 + r2 * (1.0 / 1260.0 + r2 * (-1.0 / 1680.0 +
                        r2 * (1.0 / 1188.0)))));
  const double stirling = (w - 0.5) * log_pos_d(w) - w + 0.91893853320467274 + series;
  return small ? stirling - log_pos_d(prod) : stirling;
}

template <typename T>
double log_factorial_sum(const T* y, int64_t n) {
  double total = 0.0;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < n; ++i) total += lgamma_ge1_d(static_cast<double>(y[i]) + 1.0);
  return total;
}

// y (N,) with y >= 0 (the ready models' checks); result () = sum_i lgamma(y_i + 1).
template <ffi::DataType DT>
ffi::Error LogFactorialSumImpl(ffi::Buffer<DT> y, ffi::ResultBuffer<DT> out) {
  using T = ffi::NativeType<DT>;
  const int64_t n = static_cast<int64_t>(y.element_count());
  out->typed_data()[0] = static_cast<T>(log_factorial_sum<T>(y.typed_data(), n));
  return ffi::Error::Success();
}

}  // namespace

#define ADVI_JAX_BIND_LOG_FACTORIAL(DT) ffi::Ffi::Bind().Arg<ffi::Buffer<DT>>().Ret<ffi::Buffer<DT>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxLogFactorialSumF32, LogFactorialSumImpl<ffi::DataType::F32>,
                              ADVI_JAX_BIND_LOG_FACTORIAL(ffi::DataType::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxLogFactorialSumF64, LogFactorialSumImpl<ffi::DataType::F64>,
                              ADVI_JAX_BIND_LOG_FACTORIAL(ffi::DataType::F64));

#define ADVI_JAX_BIND_EXACT(DT)                \
  ffi::Ffi::Bind()                             \
      .Ctx<ffi::ThreadPool>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Attr<int64_t>("kind")                   \
      .Attr<int64_t>("intercept")              \
      .Attr<int64_t>("meanfield")              \
      .Attr<int64_t>("max_threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmExactF32, GlmExactImpl<ffi::DataType::F32>,
                              ADVI_JAX_BIND_EXACT(ffi::DataType::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmExactF64, GlmExactImpl<ffi::DataType::F64>,
                              ADVI_JAX_BIND_EXACT(ffi::DataType::F64));
