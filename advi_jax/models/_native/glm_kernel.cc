// One pass over a row-major design matrix X for a GLM log-likelihood and its gradient.
//
// For G independent problems g, S coefficient vectors beta[g, s] each, rows i of X[g]:
//   eta        = X[g, i] . beta[g, s] + c[g, s] (+ offset[g, i])
//   value[g,s] = sum_i l(y[g, i], eta)   (Poisson: the data-only log y! comes in as lgy, per datum)
//   gbeta[g,s] = sum_i r_i X[g, i],  gc[g,s] = sum_i r_i,   r_i = dl/deta
// with l, r as in advi_jax/models/glm.py ("bernoulli": logit link, "poisson": log link).
//
// Rows are processed in tiles small enough for L1: phase 1 forms eta for the tile (register
// blocks of rows x samples), phase 2 evaluates l and r (vectorisable exp/log1p below for
// float32), phase 3 adds R_tile^T X_tile to register-blocked gradient accumulators, while the
// tile is still in L1. X is read from memory once per call, whatever S. Large problems are
// split into chunks of rows shared out over XLA's CPU thread pool (glm_all below); each chunk
// accumulates in double and the partial sums are added at the end.
//
// Built on first use by advi_jax/models/_native/__init__.py against the XLA FFI headers that ship
// with jaxlib, and registered as the CPU FFI targets "advi_jax_glm_f32" and "advi_jax_glm_f64".
//
// A second entry point, "advi_jax_glm_diff_f32" / "_f64", evaluates value differences
// sum_i [l(eta_ref_i + delta_si) - l(eta_ref_i)] for S steps from one reference in one read of X
// (phases 1 and 2 only; the importance diagnostics' log ratios, advi_jax/models/relative.py).

#include "glm_simd.h"

namespace {

enum Family : int64_t { kBernoulli = 0, kPoisson = 1 };

template <typename T>
struct Problem {
  const T* x;       // (N, D)
  const T* y;       // (N,)
  const T* offset;  // (N,) or nullptr
  const T* lgy;     // (N,) log y! for the Poisson family, or nullptr
  const T* beta;    // (S, D)
  const T* c;       // (S,)
  int64_t n, d, s;
  int64_t family;
  // Difference mode (advi_jax_glm_diff_*): when set, (D + 1,) reference coefficients (beta_ref, c_ref);
  // beta, c are then steps from the reference, and the kernel returns value[s] = sum_i
  // [l(eta_ref_i + delta_si) - l(eta_ref_i)] with delta_si = X_i . beta[s] + c[s], and in gc[s] the
  // plain sum_i l(eta_ref_i) (the same for every s). No gradient.
  const T* ref = nullptr;
};

struct Partial {
  std::vector<double> value, gbeta, gc;  // (S,), (S, D), (S,)
  explicit Partial(int64_t s, int64_t d) : value(s, 0.0), gbeta(s * d, 0.0), gc(s, 0.0) {}
};

// Columns are covered by chunks of W lanes at offsets 0, W, 2W, ... and, when W does not divide
// D, a last chunk at D - W that overlaps the one before. The overlapping lanes are masked: zero
// coefficients in phase 1, dropped when the accumulated gradient is unpadded. No load runs past
// the end of a row.
template <typename T, int VB>
struct Chunks {
  static constexpr int W = Vec<T, VB>::W;
  int64_t d, nc, overlap;
  std::vector<int64_t> offset;
  explicit Chunks(int64_t d_) : d(d_), nc((d_ + W - 1) / W), overlap(nc * W - d_), offset(nc) {
    for (int64_t i = 0; i < nc; ++i) offset[i] = std::min<int64_t>(i * W, d - W);
  }
  bool masked(int64_t chunk, int lane) const { return chunk == nc - 1 && lane < overlap; }
};

// Phase 1 register block: eta[s][t] for RB rows x SB samples, vectorised over columns.
template <typename T, int VB, int RB, int SB>
inline void eta_block(const Chunks<T, VB>& ch, const T* xt, const T* bpad, const T* c, int64_t t, int64_t s0,
                      int64_t tile, T* eta) {
  using V = typename Vec<T, VB>::type;
  constexpr int W = Vec<T, VB>::W;
  const int64_t d = ch.d, nc = ch.nc;
  V acc[RB][SB];
  ADVI_UNROLL
  for (int r = 0; r < RB; ++r)
    ADVI_UNROLL
    for (int j = 0; j < SB; ++j) acc[r][j] = V{};
  for (int64_t ci = 0; ci < nc; ++ci) {
    V xv[RB];
    ADVI_UNROLL
    for (int r = 0; r < RB; ++r) xv[r] = load<T, VB>(xt + (t + r) * d + ch.offset[ci]);
    ADVI_UNROLL
    for (int j = 0; j < SB; ++j) {
      const V bv = load<T, VB>(bpad + ((s0 + j) * nc + ci) * W);
      ADVI_UNROLL
      for (int r = 0; r < RB; ++r) acc[r][j] += xv[r] * bv;
    }
  }
  ADVI_UNROLL
  for (int r = 0; r < RB; ++r)
    ADVI_UNROLL
    for (int j = 0; j < SB; ++j) eta[(s0 + j) * tile + t + r] = hsum<T, VB>(acc[r][j]) + c[s0 + j];
}

// Phase 1 across samples (S a multiple of L = 32 bytes of lanes): eta for RB rows x L samples,
// one broadcast multiply-add per column, no horizontal sums. bt holds beta transposed, (D, S).
template <typename T, int RB>
inline void eta_block_samples(const T* xt, int64_t d, const T* bt, int64_t S, const T* c, int64_t t, int64_t s0,
                              int64_t tile, T* eta) {
  using V = typename Vec<T, 32>::type;
  constexpr int L = Vec<T, 32>::W;
  V acc[RB];
  const V cv = load<T, 32>(c + s0);
  ADVI_UNROLL
  for (int r = 0; r < RB; ++r) acc[r] = cv;
  for (int64_t k = 0; k < d; ++k) {
    const V bv = load<T, 32>(bt + k * S + s0);
    ADVI_UNROLL
    for (int r = 0; r < RB; ++r) acc[r] += xt[(t + r) * d + k] * bv;
  }
  ADVI_UNROLL
  for (int r = 0; r < RB; ++r)
    ADVI_UNROLL
    for (int l = 0; l < L; ++l) eta[(s0 + l) * tile + t + r] = acc[r][l];
}

// Phase 3 register block: gpad[s][chunk] += sum_t r[s][t] x[t][chunk] for SB samples x CB chunks.
template <typename T, int VB, int SB, int CB>
inline void grad_block(const Chunks<T, VB>& ch, const T* xt, int64_t nt, int64_t s0, int64_t c0, int64_t tile,
                       const T* resid, T* gpad) {
  using V = typename Vec<T, VB>::type;
  constexpr int W = Vec<T, VB>::W;
  const int64_t d = ch.d, nc = ch.nc;
  V acc[SB][CB];
  ADVI_UNROLL
  for (int j = 0; j < SB; ++j)
    ADVI_UNROLL
    for (int q = 0; q < CB; ++q) acc[j][q] = V{};
  for (int64_t t = 0; t < nt; ++t) {
    V xv[CB];
    ADVI_UNROLL
    for (int q = 0; q < CB; ++q) xv[q] = load<T, VB>(xt + t * d + ch.offset[c0 + q]);
    ADVI_UNROLL
    for (int j = 0; j < SB; ++j) {
      const T rv = resid[(s0 + j) * tile + t];
      ADVI_UNROLL
      for (int q = 0; q < CB; ++q) acc[j][q] += rv * xv[q];
    }
  }
  ADVI_UNROLL
  for (int j = 0; j < SB; ++j)
    ADVI_UNROLL
    for (int q = 0; q < CB; ++q) {
      T* g = gpad + ((s0 + j) * nc + c0 + q) * W;
      const V sum = load<T, VB>(g) + acc[j][q];
      std::memcpy(g, &sum, sizeof sum);
    }
}

template <typename T, int VB>
void run_rows(const Problem<T>& p, int64_t row0, int64_t row1, Partial& out) {
  constexpr int W = Vec<T, VB>::W;
  const Chunks<T, VB> ch(p.d);
  const int64_t d = p.d, S = p.s, nc = ch.nc;
  std::vector<T> bpad(S * nc * W);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t ci = 0; ci < nc; ++ci)
      for (int l = 0; l < W; ++l)
        bpad[(s * nc + ci) * W + l] = ch.masked(ci, l) ? T(0) : p.beta[s * d + ch.offset[ci] + l];
  // With S a multiple of 32 bytes of lanes, phase 1 vectorises across samples (one broadcast
  // multiply-add per column, no horizontal sums) instead of across columns. Measured at S = 8:
  // 20-25% faster at D = 10-30, and at D = 100 (with the prefetch below) 36 ms against 46 ms for
  // N = 1e6 on two cores.
  constexpr int64_t kLanes = Vec<T, 32>::W;
  const bool by_samples = S % kLanes == 0;
  std::vector<T> bt(by_samples ? d * S : 0);
  for (int64_t s = 0; by_samples && s < S; ++s)
    for (int64_t k = 0; k < d; ++k) bt[k * S + s] = p.beta[s * d + k];
  // Phase 1 reads X from memory. Blocks that interleave loads from many long rows defeat the
  // hardware stream prefetcher (measured at D = 100, S = 1: eight rows at a time ran at 1.6-1.8x
  // the time of one read of X, one row at a time at 1.1-1.2x), so with one or two samples rows
  // longer than four cache lines are read at most two at a time; across samples, where the
  // arithmetic dominates, phase 1 instead prefetches the next tile into L2 as it goes.
  const int64_t row_bytes = d * static_cast<int64_t>(sizeof(T));
  const bool long_rows = row_bytes > 256;
  // Rows per tile: about 12 KiB of X (it stays in L1 between phases 1 and 3); across samples, at
  // least 64 rows when they fit in 28 KiB, so that phase 2's loops are long enough to vectorise
  // well (D = 100, S = 8: 16-row tiles cost 15% more; S = 4 is faster with the smaller tiles).
  // A multiple of 16, at most 512.
  int64_t tile = (12 * 1024) / row_bytes;
  if (by_samples) tile = std::max<int64_t>(tile, std::min<int64_t>(64, (28 * 1024) / row_bytes));
  tile = std::max<int64_t>(16, std::min<int64_t>(512, tile / 16 * 16));
  std::vector<T> eta(S * tile), resid(p.ref ? 0 : S * tile), gpad(p.ref ? 0 : S * nc * W);
  std::vector<T> eref(p.ref ? tile : 0), bref(p.ref ? tile : 0), coef(p.ref ? 7 * tile : 0);
  std::vector<double> gsum(S * nc * W, 0.0), vsum(S, 0.0), csum(S, 0.0);

  // Phase 1 over rows [ta, tb) of the tile at xt: eta for every sample.
  auto linear_predictors = [&](const T* xt, int64_t ta, int64_t tb) {
    if (by_samples) {
      for (int64_t s0 = 0; s0 < S; s0 += kLanes) {
        int64_t t = ta;
        for (; t + 8 <= tb; t += 8) eta_block_samples<T, 8>(xt, d, bt.data(), S, p.c, t, s0, tile, eta.data());
        for (; t < tb; ++t) eta_block_samples<T, 1>(xt, d, bt.data(), S, p.c, t, s0, tile, eta.data());
      }
      return;
    }
    for (int64_t s0 = 0; s0 < S;) {
      const int64_t left = S - s0;
      int64_t t = ta;
      if (left >= 4) {
        for (; t + 2 <= tb; t += 2) eta_block<T, VB, 2, 4>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        for (; t < tb; ++t) eta_block<T, VB, 1, 4>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        s0 += 4;
      } else if (left >= 2) {
        if (!long_rows)
          for (; t + 4 <= tb; t += 4) eta_block<T, VB, 4, 2>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        for (; t + 2 <= tb; t += 2) eta_block<T, VB, 2, 2>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        for (; t < tb; ++t) eta_block<T, VB, 1, 2>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        s0 += 2;
      } else {
        if (!long_rows)
          for (; t + 8 <= tb; t += 8) eta_block<T, VB, 8, 1>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        for (; t < tb; ++t) eta_block<T, VB, 1, 1>(ch, xt, bpad.data(), p.c, t, s0, tile, eta.data());
        s0 += 1;
      }
    }
  };

  for (int64_t i0 = row0; i0 < row1; i0 += tile) {
    const int64_t nt = std::min(tile, row1 - i0);
    const T* xt = p.x + i0 * d;
    // Phase 1: linear predictors, 16 rows at a time; with long rows, across samples, the same
    // rows of the next tile are prefetched meanwhile.
    const int64_t next_rows = (long_rows && by_samples) ? std::min(tile, row1 - i0 - nt) : 0;
    for (int64_t ta = 0; ta < nt; ta += 16) {
      const int64_t tb = std::min(nt, ta + 16);
      if (ta < next_rows) {
        const char* from = reinterpret_cast<const char*>(xt + (tile + ta) * d);
        const int64_t bytes = (std::min(tb, next_rows) - ta) * row_bytes;
        for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(from + off, 0, 2);
      }
      linear_predictors(xt, ta, tb);
    }
    // Phase 2: pointwise log-likelihood and residual.
    const T* yt = p.y + i0;
    const T* ot = p.offset ? p.offset + i0 : nullptr;
    const T* lt = p.lgy ? p.lgy + i0 : nullptr;
    if (p.ref) {
      // Difference mode: the reference's terms once per row, then per sample the rows' differences
      // l(eta_ref + delta) - l(eta_ref), so each row's rounding scales with its own terms, never with |sum l|.
      // float32: where every |delta| of the tile is at most kSeriesBound, the difference is the Taylor
      // series in delta to order 7 with per-row coefficients (Bernoulli: y delta minus the cumulant series
      // of softplus, kappa_1..7 of Bernoulli(sigmoid(eta_ref)); Poisson: (y - mu) delta - mu (delta^2/2! + ...
      // + delta^7/7!)): truncation below 4e-10 |delta| (the series converge within |delta| < pi), rounding
      // relative to the difference itself, and a few multiply-adds instead of an exp and a log1p.
      // Otherwise (and in float64) the exact form: Bernoulli l as the plain pass forms it (a well-predicted
      // row's terms are tiny), Poisson y delta - (exp(eta_ref + delta) - exp(eta_ref)).
      constexpr bool kSeries = std::is_same_v<T, float>;
      constexpr T kSeriesBound = T(0.25);
      double refsum = 0;  // the reference's value: summed in double, as the exact differences
      for (int64_t t = 0; t < nt; ++t) {
        const T* xr = xt + t * d;
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t k = 0; k < d; ++k) acc += xr[k] * p.ref[k];
        eref[t] = ot ? acc + p.ref[d] + ot[t] : acc + p.ref[d];
      }
      T* cf[7];
      for (int k = 0; k < 7; ++k) cf[k] = coef.data() + k * tile;
      if (p.family == kBernoulli) {
#pragma omp simd reduction(+ : refsum)
        for (int64_t t = 0; t < nt; ++t) {
          const T et = eref[t], yi = yt[t];
          const T e = exp_nonpos<T>(-std::fabs(et));
          const T z = (T(2) * yi - T(1)) * et;
          const T l = (z < T(0) ? z : T(0)) - log1p_01<T>(e);
          bref[t] = l;
          refsum += static_cast<double>(l);
          if constexpr (kSeries) {
            const T inv = T(1) / (T(1) + e);
            const T pr = (et >= T(0) ? T(1) : e) * inv, qr = (et >= T(0) ? e : T(1)) * inv;
            const T w = pr * qr, k3 = w * (qr - pr);
            cf[0][t] = yi * qr - (T(1) - yi) * pr;
            cf[1][t] = -w * T(0.5);
            cf[2][t] = -k3 * T(1.0 / 6);
            cf[3][t] = -w * (T(1) - T(6) * w) * T(1.0 / 24);
            cf[4][t] = -k3 * (T(1) - T(12) * w) * T(1.0 / 120);
            cf[5][t] = -w * (T(1) - T(30) * w + T(120) * w * w) * T(1.0 / 720);
            cf[6][t] = -k3 * (T(1) - T(60) * w + T(360) * w * w) * T(1.0 / 5040);
          }
        }
      } else {
#pragma omp simd reduction(+ : refsum)
        for (int64_t t = 0; t < nt; ++t) {
          const T mean = exp_any<T>(eref[t]);
          bref[t] = mean;
          refsum += static_cast<double>(yt[t] * eref[t] - mean - (lt ? lt[t] : T(0)));
          if constexpr (kSeries) {
            cf[0][t] = yt[t] - mean;
            cf[1][t] = -mean * T(0.5);
            cf[2][t] = -mean * T(1.0 / 6);
            cf[3][t] = -mean * T(1.0 / 24);
            cf[4][t] = -mean * T(1.0 / 120);
            cf[5][t] = -mean * T(1.0 / 720);
            cf[6][t] = -mean * T(1.0 / 5040);
          }
        }
      }
      for (int64_t s = 0; s < S; ++s) {
        const T* es = eta.data() + s * tile;
        T v = 0, widest = 0;
        if constexpr (kSeries) {
#pragma omp simd reduction(+ : v) reduction(max : widest)
          for (int64_t t = 0; t < nt; ++t) {
            const T dl = es[t];
            const T poly = cf[5][t] + dl * cf[6][t];
            const T q4 = cf[3][t] + dl * (cf[4][t] + dl * poly);
            v += dl * (cf[0][t] + dl * (cf[1][t] + dl * (cf[2][t] + dl * q4)));
            const T a = std::fabs(dl);
            widest = a > widest ? a : widest;
          }
        }
        double vd = static_cast<double>(v);
        if (!kSeries || !(widest <= kSeriesBound)) {
          // The exact form's row differences are as large as the step makes them (not small like the
          // series'): summed in double, so the tile's sum adds no float32 rounding of its own.
          vd = 0;
          if (p.family == kBernoulli) {
#pragma omp simd reduction(+ : vd)
            for (int64_t t = 0; t < nt; ++t) {
              const T et = eref[t] + es[t];
              const T e = exp_nonpos<T>(-std::fabs(et));
              const T z = (T(2) * yt[t] - T(1)) * et;
              vd += static_cast<double>(((z < T(0) ? z : T(0)) - log1p_01<T>(e)) - bref[t]);
            }
          } else {
#pragma omp simd reduction(+ : vd)
            for (int64_t t = 0; t < nt; ++t)
              vd += static_cast<double>(yt[t] * es[t] - (exp_any<T>(eref[t] + es[t]) - bref[t]));
          }
        }
        vsum[s] += vd;
        csum[s] += refsum;
      }
      continue;
    }
    for (int64_t s = 0; s < S; ++s) {
      T* es = eta.data() + s * tile;
      T* rs = resid.data() + s * tile;
      if (ot) {
        for (int64_t t = 0; t < nt; ++t) es[t] += ot[t];
      }
      T v = 0, rsum = 0;
      if (p.family == kBernoulli) {
#pragma omp simd reduction(+ : v, rsum)
        for (int64_t t = 0; t < nt; ++t) {
          const T et = es[t], yi = yt[t];
          const T e = exp_nonpos<T>(-std::fabs(et));
          const T z = (T(2) * yi - T(1)) * et;
          v += (z < T(0) ? z : T(0)) - log1p_01<T>(e);
          const T r = yi - (et >= T(0) ? T(1) : e) / (T(1) + e);
          rs[t] = r;
          rsum += r;
        }
      } else {
#pragma omp simd reduction(+ : v, rsum)
        for (int64_t t = 0; t < nt; ++t) {
          const T et = es[t], yi = yt[t];
          const T mean = exp_any<T>(et);
          // Subtracting log y! per datum keeps each term small: summing y eta - exp(eta) alone
          // and subtracting sum log y! at the end loses float32 digits to cancellation.
          v += yi * et - mean - (lt ? lt[t] : T(0));
          rs[t] = yi - mean;
          rsum += yi - mean;
        }
      }
      vsum[s] += static_cast<double>(v);
      csum[s] += static_cast<double>(rsum);
    }
    // Phase 3: gradient, R^T X over the tile, while the tile is in L1.
    std::fill(gpad.begin(), gpad.end(), T(0));
    for (int64_t s0 = 0; s0 < S;) {
      const int64_t left = S - s0;
      int64_t c0 = 0;
      if (left >= 4) {
        for (; c0 + 2 <= nc; c0 += 2) grad_block<T, VB, 4, 2>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 < nc; ++c0) grad_block<T, VB, 4, 1>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        s0 += 4;
      } else if (left >= 2) {
        for (; c0 + 4 <= nc; c0 += 4) grad_block<T, VB, 2, 4>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 + 2 <= nc; c0 += 2) grad_block<T, VB, 2, 2>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 < nc; ++c0) grad_block<T, VB, 2, 1>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        s0 += 2;
      } else {
        for (; c0 + 8 <= nc; c0 += 8) grad_block<T, VB, 1, 8>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 + 4 <= nc; c0 += 4) grad_block<T, VB, 1, 4>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 + 2 <= nc; c0 += 2) grad_block<T, VB, 1, 2>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        for (; c0 < nc; ++c0) grad_block<T, VB, 1, 1>(ch, xt, nt, s0, c0, tile, resid.data(), gpad.data());
        s0 += 1;
      }
    }
    for (size_t k = 0; k < gpad.size(); ++k) gsum[k] += static_cast<double>(gpad[k]);
  }
  for (int64_t s = 0; s < S; ++s) {
    out.value[s] += vsum[s];
    out.gc[s] += csum[s];
    for (int64_t ci = 0; ci < nc; ++ci)
      for (int l = 0; l < W; ++l)
        if (!ch.masked(ci, l)) out.gbeta[s * d + ch.offset[ci] + l] += gsum[(s * nc + ci) * W + l];
  }
}

// 64-byte vectors only where the target has AVX-512 registers: on an AVX2-only CPU GCC would
// emulate them with pairs of 32-byte registers, and warns (-Wpsabi) that such vectors change the
// calling convention.
#if defined(__AVX512F__)
constexpr int64_t kWidestVector = 64;
#else
constexpr int64_t kWidestVector = 32;
#endif

// Widest vector (at most kWidestVector bytes) whose lane count does not exceed D (so that chunks fit in a row).
template <typename T>
void run_rows_any(const Problem<T>& p, int64_t row0, int64_t row1, Partial& out) {
  const int64_t size = static_cast<int64_t>(sizeof(T));
  if constexpr (kWidestVector >= 64) {
    if (p.d * size >= 64) {
      run_rows<T, kWidestVector>(p, row0, row1, out);
      return;
    }
  }
  if (p.d * size >= 32) {
    run_rows<T, 32>(p, row0, row1, out);
  } else if (p.d * size >= 16) {
    run_rows<T, 16>(p, row0, row1, out);
  } else {
    run_rows<T, sizeof(T)>(p, row0, row1, out);
  }
}

// Work is split into chunks (rows [row0, row1) of problem g), each accumulated into its own
// partial sums, and shared out through an atomic counter between the calling thread and tasks
// scheduled on XLA's own CPU thread pool: no threads are started, and the pool's workers (which
// would otherwise spin beside ours on a small machine) do the work. The calling thread works
// too and waits only for chunks already taken, so the call completes even if no scheduled task
// ever runs; a task that starts late finds no chunks left and returns (it holds the job alive).
struct Chunk {
  int64_t g, row0, row1;
};

template <typename T>
struct Job {
  std::vector<Problem<T>> problems;
  std::vector<Chunk> chunks;
  std::vector<Partial> parts;  // one per chunk
  std::atomic<int64_t> next{0}, done{0};

  void work() {
    const int64_t total = static_cast<int64_t>(chunks.size());
    for (;;) {
      const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
      if (i >= total) return;
      const Chunk& ck = chunks[i];
      run_rows_any<T>(problems[ck.g], ck.row0, ck.row1, parts[i]);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
};

// Units of work: rows x (D + 8) x S. About 2^18 units (tens of microseconds) per chunk at least,
// so that handing a chunk to another thread costs little against it; at most four chunks per
// participant for one problem (load balance without many partial sums to add up).
constexpr double kChunkWork = 1 << 18;

template <typename T>
void glm_all(ffi::ThreadPool& pool, std::vector<Problem<T>> problems, int64_t max_threads, T* value, T* gbeta,
             T* gc) {
  auto job = std::make_shared<Job<T>>();
  job->problems = std::move(problems);
  const int64_t G = static_cast<int64_t>(job->problems.size());
  double total_work = 0;
  for (const auto& p : job->problems) total_work += static_cast<double>(p.n) * (p.d + 8) * p.s;
  int64_t participants = static_cast<int64_t>(total_work / kChunkWork);
  participants = std::max<int64_t>(1, std::min<int64_t>({participants, max_threads, pool.num_threads()}));
  for (int64_t g = 0; g < G; ++g) {
    const auto& p = job->problems[g];
    const double work = static_cast<double>(p.n) * (p.d + 8) * p.s;
    int64_t pieces = participants > 1 ? static_cast<int64_t>(work / kChunkWork) : 1;
    pieces = std::max<int64_t>(1, std::min<int64_t>({pieces, 4 * participants, std::max<int64_t>(1, p.n / 64)}));
    for (int64_t i = 0; i < pieces; ++i) job->chunks.push_back({g, p.n * i / pieces, p.n * (i + 1) / pieces});
  }
  const int64_t total = static_cast<int64_t>(job->chunks.size());
  job->parts.reserve(total);
  for (const auto& ck : job->chunks) job->parts.emplace_back(job->problems[ck.g].s, job->problems[ck.g].d);
  participants = std::min(participants, total);
  for (int64_t i = 1; i < participants; ++i) pool.Schedule([job] { job->work(); });
  job->work();
  while (job->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
  // Partial sums added in chunk order: the result does not depend on which thread ran what.
  for (int64_t i = 0; i < total;) {
    const int64_t g = job->chunks[i].g;
    const auto& p = job->problems[g];
    std::vector<double> v(p.s, 0.0), c(p.s, 0.0), b(p.s * p.d, 0.0);
    for (; i < total && job->chunks[i].g == g; ++i) {
      const Partial& part = job->parts[i];
      for (int64_t k = 0; k < p.s; ++k) { v[k] += part.value[k]; c[k] += part.gc[k]; }
      for (int64_t k = 0; k < p.s * p.d; ++k) b[k] += part.gbeta[k];
    }
    for (int64_t k = 0; k < p.s; ++k) {
      value[g * p.s + k] = static_cast<T>(v[k]);
      gc[g * p.s + k] = static_cast<T>(c[k]);
    }
    if (gbeta)
      for (int64_t k = 0; k < p.s * p.d; ++k) gbeta[g * p.s * p.d + k] = static_cast<T>(b[k]);
  }
}

// Shapes: x (G, N, D), y (G, N), offset (G, N) or (0,), lgy = log y! (G, N) or (0,), beta (G, S, D),
// c (G, S);
// results value (G, S), gbeta (G, S, D), gc (G, S).
template <ffi::DataType DT>
ffi::Error GlmImpl(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> y, ffi::Buffer<DT> offset,
                   ffi::Buffer<DT> lgy, ffi::Buffer<DT> beta, ffi::Buffer<DT> c, ffi::ResultBuffer<DT> value,
                   ffi::ResultBuffer<DT> gbeta, ffi::ResultBuffer<DT> gc, int64_t family, int64_t max_threads) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto bd = beta.dimensions();
  if (xd.size() != 3 || bd.size() != 3 || bd[0] != xd[0] || bd[2] != xd[2]) {
    return ffi::Error::InvalidArgument("advi_jax_glm: expected x (G, N, D) and beta (G, S, D)");
  }
  if (family != kBernoulli && family != kPoisson) {
    return ffi::Error::InvalidArgument("advi_jax_glm: family must be 0 (bernoulli) or 1 (poisson)");
  }
  const int64_t G = xd[0], N = xd[1], D = xd[2], S = bd[1];
  if (G == 0 || S == 0) return ffi::Error::Success();
  const bool has_offset = offset.element_count() == static_cast<size_t>(G * N) && G * N > 0;
  const bool has_lgy = lgy.element_count() == static_cast<size_t>(G * N) && G * N > 0;
  std::vector<Problem<T>> problems;
  problems.reserve(G);
  for (int64_t g = 0; g < G; ++g) {
    problems.push_back({x.typed_data() + g * N * D, y.typed_data() + g * N,
                        has_offset ? offset.typed_data() + g * N : nullptr,
                        has_lgy ? lgy.typed_data() + g * N : nullptr, beta.typed_data() + g * S * D,
                        c.typed_data() + g * S, N, D, S, family});
  }
  glm_all<T>(pool, std::move(problems), std::max<int64_t>(1, max_threads), value->typed_data(),
             gbeta->typed_data(), gc->typed_data());
  return ffi::Error::Success();
}

// Difference mode (see Problem::ref). Shapes: x (N, D), y (N,), offset (N,) or (0,), lgy (N,) or (0,),
// ref (D + 1,) = (beta_ref, c_ref), step (S, D), step_c (S,); results diff (S,) and at_ref (S,) (every
// entry sum_i l(eta_ref_i)). X is read once for all S steps.
template <ffi::DataType DT>
ffi::Error GlmDiffImpl(ffi::ThreadPool pool, ffi::Buffer<DT> x, ffi::Buffer<DT> y, ffi::Buffer<DT> offset,
                       ffi::Buffer<DT> lgy, ffi::Buffer<DT> ref, ffi::Buffer<DT> step, ffi::Buffer<DT> step_c,
                       ffi::ResultBuffer<DT> diff, ffi::ResultBuffer<DT> at_ref, int64_t family, int64_t max_threads) {
  using T = ffi::NativeType<DT>;
  auto xd = x.dimensions();
  auto sd = step.dimensions();
  if (xd.size() != 2 || sd.size() != 2 || sd[1] != xd[1] || ref.element_count() != static_cast<size_t>(xd[1] + 1) ||
      step_c.element_count() != static_cast<size_t>(sd[0])) {
    return ffi::Error::InvalidArgument("advi_jax_glm_diff: expected x (N, D), ref (D + 1,), step (S, D), step_c (S,)");
  }
  if (family != kBernoulli && family != kPoisson) {
    return ffi::Error::InvalidArgument("advi_jax_glm_diff: family must be 0 (bernoulli) or 1 (poisson)");
  }
  const int64_t N = xd[0], D = xd[1], S = sd[0];
  if (S == 0) return ffi::Error::Success();
  if (N == 0) {
    std::fill(diff->typed_data(), diff->typed_data() + S, T(0));
    std::fill(at_ref->typed_data(), at_ref->typed_data() + S, T(0));
    return ffi::Error::Success();
  }
  const bool has_offset = offset.element_count() == static_cast<size_t>(N);
  const bool has_lgy = lgy.element_count() == static_cast<size_t>(N);
  std::vector<Problem<T>> problems;
  problems.push_back({x.typed_data(), y.typed_data(), has_offset ? offset.typed_data() : nullptr,
                      has_lgy ? lgy.typed_data() : nullptr, step.typed_data(), step_c.typed_data(), N, D, S, family,
                      ref.typed_data()});
  glm_all<T>(pool, std::move(problems), std::max<int64_t>(1, max_threads), diff->typed_data(), nullptr,
             at_ref->typed_data());
  return ffi::Error::Success();
}

}  // namespace

#define ADVI_JAX_BIND(DT)                      \
  ffi::Ffi::Bind()                             \
      .Ctx<ffi::ThreadPool>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Arg<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Ret<ffi::Buffer<DT>>()                  \
      .Attr<int64_t>("family")                 \
      .Attr<int64_t>("max_threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmF32, GlmImpl<ffi::DataType::F32>, ADVI_JAX_BIND(ffi::DataType::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmF64, GlmImpl<ffi::DataType::F64>, ADVI_JAX_BIND(ffi::DataType::F64));

#define ADVI_JAX_BIND_DIFF(DT)                 \
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
      .Attr<int64_t>("family")                 \
      .Attr<int64_t>("max_threads")

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmDiffF32, GlmDiffImpl<ffi::DataType::F32>,
                              ADVI_JAX_BIND_DIFF(ffi::DataType::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(AdviJaxGlmDiffF64, GlmDiffImpl<ffi::DataType::F64>,
                              ADVI_JAX_BIND_DIFF(ffi::DataType::F64));
