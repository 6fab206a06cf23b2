// Fused weighted softmax cross-entropy for MXNet 1.9 (loaded with mx.library.load).
//
// One operator, `gluon_losses_softmax_ce`, computes what
// gluon_losses.softmax_ce.weighted_softmax_ce computes for sparse labels
// (class and sample weights, ignore label, label smoothing, every normalization),
// forward and backward, in float32 with float64 sums, without materialising
// log-probabilities and without transposing a strided class axis.
//
// Inputs: pred, label[, class_weight][, sample_weight] (which optional ones are
// present is given by the class_weight / sample_weight attributes).
// Output: (B,) with B = label.shape[batch_axis], sample b holding
// (B / Z) * scale * sum of its positions' losses; with normalization='none',
// the per-position losses times scale, shaped like label.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mxnet/lib_api.h"

using namespace mxnet::ext;

namespace {

enum Normalization { kValid, kBatch, kWeight, kNull, kNone };

struct Config {
  int axis = -1;
  int batch_axis = 0;
  bool has_ignore = true;
  float ignore_label = -1.f;
  Normalization normalization = kValid;
  float label_smoothing = 0.f;
  float scale = 1.f;
  bool has_class_weight = false;
  bool has_sample_weight = false;
};

const char* const kNormalizations[] = {"valid", "batch", "weight", "null", "none"};
constexpr int kNumNormalizations = sizeof(kNormalizations) / sizeof(kNormalizations[0]);
static_assert(kNumNormalizations == kNone + 1, "one name per Normalization, in its order");

bool lookup(const std::unordered_map<std::string, std::string>& attrs, const char* key,
            std::string* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return false;
  *value = it->second;
  return true;
}

bool parse_config(const std::unordered_map<std::string, std::string>& attrs, Config* cfg) {
  std::string v;
  try {
    if (lookup(attrs, "axis", &v)) cfg->axis = std::stoi(v);
    if (lookup(attrs, "batch_axis", &v)) cfg->batch_axis = std::stoi(v);
    if (lookup(attrs, "ignore_label", &v)) {
      cfg->has_ignore = v != "None";
      if (cfg->has_ignore) cfg->ignore_label = std::stof(v);
    }
    if (lookup(attrs, "normalization", &v)) {
      int found = -1;
      for (int i = 0; i < kNumNormalizations; ++i) if (v == kNormalizations[i]) found = i;
      if (found < 0) {
        MX_ERROR_MSG << "gluon_losses_softmax_ce: unknown normalization '" << v << "'";
        return false;
      }
      cfg->normalization = static_cast<Normalization>(found);
    }
    if (lookup(attrs, "label_smoothing", &v)) cfg->label_smoothing = std::stof(v);
    if (lookup(attrs, "scale", &v)) cfg->scale = std::stof(v);
    if (lookup(attrs, "class_weight", &v)) cfg->has_class_weight = v == "1" || v == "True";
    if (lookup(attrs, "sample_weight", &v)) cfg->has_sample_weight = v == "1" || v == "True";
  } catch (const std::exception& e) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce: bad attribute value '" << v << "'";
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------
// Vectorisable exp and log. glibc's expf/logf are scalar calls the compiler cannot
// vectorise without -ffast-math, and -ffast-math would also drop NaN semantics that
// bad labels rely on. These are plain arithmetic on floats and integers.

inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

// exp(x) for x <= 0 (arguments are always logit - max here); NaN stays NaN, and
// anything below the float32 range gives exactly 0.
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  const float lowest = -87.33654f;
  float clamped = x < lowest ? lowest : x;
  float t = clamped * 1.44269504088896341f;
  // Round to nearest by the 1.5 * 2^23 trick: portable SSE2, no roundps needed.
  float n = (t + 12582912.f) - 12582912.f;
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  float scale = bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  float result = p * scale;
  return x < lowest ? 0.f : result;
}

// log(x) for finite x >= 1 (a sum of exponentials whose largest term is 1).
__attribute__((always_inline)) inline float log_atleast_one(float x) {
  int32_t bits = float_to_bits(x);
  int32_t exponent = ((bits >> 23) & 0xff) - 127;
  float mantissa = bits_to_float((bits & 0x007fffff) | 0x3f800000);  // in [1, 2)
  // Centre the mantissa on 1: [sqrt(1/2), sqrt(2)).
  bool high = mantissa > 1.41421356f;
  mantissa = high ? mantissa * 0.5f : mantissa;
  exponent = high ? exponent + 1 : exponent;
  float f = (mantissa - 1.f) / (mantissa + 1.f);
  float f2 = f * f;
  float series = 2.f / 9.f;
  series = series * f2 + 2.f / 7.f;
  series = series * f2 + 2.f / 5.f;
  series = series * f2 + 2.f / 3.f;
  series = series * f2 + 2.f;
  return static_cast<float>(exponent) * 0.693147180559945f + f * series;
}

// ---------------------------------------------------------------------------------
// Per-position statistics over a block of positions. The class axis has C entries
// `class_stride` floats apart; consecutive positions of the block are `position_stride`
// apart (1 for the strided NCHW layout, C for rows).

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
// One build for every x86-64 CPU: the hot loops are also compiled for AVX-512 and for
// AVX2+FMA, and the loader picks the widest the CPU has (no -march flag involved).
#define GL_MULTIVERSION \
  __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define GL_MULTIVERSION
#endif

constexpr int kBlock = 256;

// Strided layout: positions contiguous, classes `inner` apart. Fills max and sum of
// exp(x - max) for `count` positions starting at `x`; optionally writes the
// exponentials to `exps` (same layout) and, for label smoothing, the sum over classes
// of x - max in float64 (`shifted_sums`). Label smoothing needs max - mean(x); taken as
// the difference of two float32 numbers near the logits' magnitude, it cancels: at
// logits 1e5 + N(0, 1) the mean's rounding (ulp 0.008) is the whole O(1) difference.
// The shifted terms are small where the logits are close, and float64 holds a
// difference of float32 values near their limit (3e38 - (-3e38)) without overflow.
__attribute__((always_inline)) inline void strided_stats_body(
    const float* x, int64_t count, int64_t C, int64_t inner, float* maxes, float* sums,
    float* exps, double* shifted_sums) {
  for (int64_t t = 0; t < count; ++t) maxes[t] = x[t];
  for (int64_t c = 1; c < C; ++c) {
    const float* row = x + c * inner;
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) maxes[t] = row[t] > maxes[t] ? row[t] : maxes[t];
  }
  for (int64_t t = 0; t < count; ++t) sums[t] = 0.f;
  if (shifted_sums) for (int64_t t = 0; t < count; ++t) shifted_sums[t] = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const float* row = x + c * inner;
    if (exps) {
      float* out = exps + c * inner;
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) {
        float e = exp_nonpositive(row[t] - maxes[t]);
        out[t] = e;
        sums[t] += e;
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) sums[t] += exp_nonpositive(row[t] - maxes[t]);
    }
    if (shifted_sums) {
#pragma omp simd
      for (int64_t t = 0; t < count; ++t) {
        shifted_sums[t] += static_cast<double>(row[t]) - static_cast<double>(maxes[t]);
      }
    }
  }
}

GL_MULTIVERSION
void strided_stats(const float* x, int64_t count, int64_t C, int64_t inner, float* maxes,
                   float* sums, float* exps, double* shifted_sums) {
  strided_stats_body(x, count, C, inner, maxes, sums, exps, shifted_sums);
}

// Up to this many classes, rows are transposed into a tile and reduced across positions:
// a reduction over a handful of contiguous classes leaves most vector lanes idle.
constexpr int64_t kFewClasses = 32;

// Rows of few classes, transposed into `tile` (class-major, `count` positions a class).
GL_MULTIVERSION
void rows_to_tile(const float* x, int64_t count, int64_t C, float* tile) {
  for (int64_t t = 0; t < count; ++t)
    for (int64_t c = 0; c < C; ++c) tile[c * count + t] = x[t * C + c];
}

// g (rows) = tile * ratio - offset, per position: the gradient written back in one pass.
GL_MULTIVERSION
void tile_to_rows_scaled(const float* tile, int64_t count, int64_t C, const float* ratio,
                         const float* offset, float* g) {
  for (int64_t t = 0; t < count; ++t)
    for (int64_t c = 0; c < C; ++c) g[t * C + c] = tile[c * count + t] * ratio[t] - offset[t];
}

// Row layout: each position's C classes are contiguous. `exps` is in row layout too.
GL_MULTIVERSION
void row_stats(const float* x, int64_t count, int64_t C, float* maxes, float* sums,
               float* exps, double* shifted_sums) {
  if (C <= kFewClasses && !exps) {
    float tile[kFewClasses * kBlock];
    rows_to_tile(x, count, C, tile);
    strided_stats_body(tile, count, C, count, maxes, sums, nullptr, shifted_sums);
    return;
  }
  for (int64_t t = 0; t < count; ++t) {
    const float* row = x + t * C;
    float m = row[0];
#pragma omp simd reduction(max:m)
    for (int64_t c = 1; c < C; ++c) m = row[c] > m ? row[c] : m;
    float s = 0.f;
    if (exps) {
      float* out = exps + t * C;
#pragma omp simd reduction(+:s)
      for (int64_t c = 0; c < C; ++c) {
        float e = exp_nonpositive(row[c] - m);
        out[c] = e;
        s += e;
      }
    } else {
#pragma omp simd reduction(+:s)
      for (int64_t c = 0; c < C; ++c) s += exp_nonpositive(row[c] - m);
    }
    maxes[t] = m;
    sums[t] = s;
    if (shifted_sums) {  // float64, shifted by the max: see strided_stats_body
      double total = 0.0;
      const double shift = m;
#pragma omp simd reduction(+:total)
      for (int64_t c = 0; c < C; ++c) total += static_cast<double>(row[c]) - shift;
      shifted_sums[t] = total;
    }
  }
}

GL_MULTIVERSION
void log_block(const float* sums, int64_t count, float* logs) {
#pragma omp simd
  for (int64_t t = 0; t < count; ++t) logs[t] = log_atleast_one(sums[t]);
}

// grad = exps * ratio - offset along the class axis, in place.
GL_MULTIVERSION
void strided_scale(float* g, int64_t count, int64_t C, int64_t inner, const float* ratio,
                   const float* offset) {
  for (int64_t c = 0; c < C; ++c) {
    float* row = g + c * inner;
#pragma omp simd
    for (int64_t t = 0; t < count; ++t) row[t] = row[t] * ratio[t] - offset[t];
  }
}

GL_MULTIVERSION
void row_scale(float* g, int64_t count, int64_t C, const float* ratio, const float* offset) {
  for (int64_t t = 0; t < count; ++t) {
    float* row = g + t * C;
    const float r = ratio[t], o = offset[t];
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) row[c] = row[c] * r - o;
  }
}

// ---------------------------------------------------------------------------------

struct Geometry {
  int64_t outer = 1, C = 1, inner = 1, positions = 1;
  int64_t batch = 1, batch_stride = 1;  // label index p belongs to sample (p / stride) % batch
  std::vector<int64_t> label_shape;
  // sample weight strides over the label's dimensions (0 where it broadcasts)
  std::vector<int64_t> sw_strides;
  bool sw_dense = true;

  int64_t sample_of(int64_t p) const { return (p / batch_stride) % batch; }

  int64_t sample_weight_index(int64_t p) const {
    if (sw_dense) return p;
    int64_t index = 0;
    for (int d = static_cast<int>(label_shape.size()) - 1; d >= 0; --d) {
      int64_t size = label_shape[d];
      index += (p % size) * sw_strides[d];
      p /= size;
    }
    return index;
  }
};

bool make_geometry(const Config& cfg, const MXTensor& pred, const MXTensor* sample_weight,
                   Geometry* g) {
  const int ndim = static_cast<int>(pred.shape.size());
  int axis = cfg.axis < 0 ? cfg.axis + ndim : cfg.axis;
  if (axis < 0 || axis >= ndim) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce: axis " << cfg.axis << " out of range for "
                 << ndim << "-d pred";
    return false;
  }
  for (int d = 0; d < ndim; ++d) {
    if (d < axis) g->outer *= pred.shape[d];
    if (d > axis) g->inner *= pred.shape[d];
    if (d != axis) g->label_shape.push_back(pred.shape[d]);
  }
  g->C = pred.shape[axis];
  g->positions = g->outer * g->inner;
  const int label_ndim = static_cast<int>(g->label_shape.size());
  if (label_ndim > 0) {
    int batch_axis = cfg.batch_axis < 0 ? cfg.batch_axis + label_ndim : cfg.batch_axis;
    if (batch_axis < 0 || batch_axis >= label_ndim) {
      MX_ERROR_MSG << "gluon_losses_softmax_ce: batch_axis " << cfg.batch_axis
                   << " out of range for a " << label_ndim << "-d label";
      return false;
    }
    g->batch = g->label_shape[batch_axis];
    g->batch_stride = 1;
    for (int d = batch_axis + 1; d < label_ndim; ++d) g->batch_stride *= g->label_shape[d];
  }
  if (sample_weight) {
    const auto& shape = sample_weight->shape;
    if (static_cast<int>(shape.size()) != label_ndim) {
      MX_ERROR_MSG << "gluon_losses_softmax_ce: sample_weight needs " << label_ndim
                   << " dimensions, got " << shape.size();
      return false;
    }
    g->sw_strides.assign(label_ndim, 0);
    int64_t stride = 1;
    for (int d = label_ndim - 1; d >= 0; --d) {
      if (shape[d] != 1 && shape[d] != g->label_shape[d]) {
        MX_ERROR_MSG << "gluon_losses_softmax_ce: sample_weight does not broadcast to the label";
        return false;
      }
      if (shape[d] != g->label_shape[d]) g->sw_dense = false;
      g->sw_strides[d] = shape[d] == 1 ? 0 : stride;
      stride *= shape[d];
    }
  }
  return true;
}

// Weight of position p: 0 when ignored, NaN for a label that is not a class index.
struct PositionWeights {
  const Config& cfg;
  const Geometry& geo;
  const float* label;
  const float* class_weight;
  const float* sample_weight;

  // Returns the weight and sets *cls to the class to read (0 where there is none).
  inline float operator()(int64_t p, int64_t* cls, bool* kept) const {
    float y = label[p];
    *cls = 0;
    if (cfg.has_ignore && y == cfg.ignore_label) {
      *kept = false;
      return 0.f;
    }
    *kept = true;
    float w;
    if (y >= 0.f && y < static_cast<float>(geo.C) && y == std::floor(y)) {
      *cls = static_cast<int64_t>(y);
      w = class_weight ? class_weight[*cls] : 1.f;
    } else {
      w = std::numeric_limits<float>::quiet_NaN();
    }
    if (sample_weight) w *= sample_weight[geo.sample_weight_index(p)];
    return w;
  }
};

int thread_count(int64_t elements) {
#ifdef _OPENMP
  // Small inputs stay on one thread: waking a team costs a few microseconds on an idle
  // machine, but tens when MXNet's own threads keep the cores busy. Measured on two
  // cores: 344k logits ran 13% faster on one thread, 688k 17% faster on two.
  const int64_t grain = 1 << 18;
  int64_t wanted = std::max<int64_t>(1, elements / grain);
  return static_cast<int>(std::min<int64_t>(wanted, omp_get_max_threads()));
#else
  (void)elements;
  return 1;
#endif
}

// B / Z, with Z the chosen normalization from the label-side sums: what each sample's
// sum of position terms is multiplied by (before `scale`).
double batch_over_normalizer(const Config& cfg, const Geometry& geo, double kept,
                             double weight_total) {
  double z = 1.0;
  switch (cfg.normalization) {
    case kValid: z = std::max(kept, 1.0); break;
    case kBatch: z = static_cast<double>(geo.positions); break;
    // Magnitudes: a negative sample weight flips its position's sign, never shrinks Z.
    case kWeight: z = weight_total > 0 ? weight_total : 1.0; break;  // NaN > 0 is false, as in the graph
    default: break;
  }
  return static_cast<double>(geo.batch) / z;
}

struct Inputs {
  Config cfg;
  Geometry geo;
  const float* pred = nullptr;
  const float* label = nullptr;
  const float* class_weight = nullptr;
  const float* sample_weight = nullptr;
};

bool unpack(const std::unordered_map<std::string, std::string>& attrs,
            std::vector<MXTensor>* tensors, int first, Inputs* in) {
  if (!parse_config(attrs, &in->cfg)) return false;
  int index = first;
  const MXTensor& pred = (*tensors)[index++];
  const MXTensor& label = (*tensors)[index++];
  const MXTensor* cw = in->cfg.has_class_weight ? &(*tensors)[index++] : nullptr;
  const MXTensor* sw = in->cfg.has_sample_weight ? &(*tensors)[index++] : nullptr;
  if (!make_geometry(in->cfg, pred, sw, &in->geo)) return false;
  in->pred = pred.data_ptr ? static_cast<const float*>(pred.data_ptr) : nullptr;
  in->label = static_cast<const float*>(label.data_ptr);
  in->class_weight = cw ? static_cast<const float*>(cw->data_ptr) : nullptr;
  in->sample_weight = sw ? static_cast<const float*>(sw->data_ptr) : nullptr;
  if (cw && cw->size() != in->geo.C) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce: class_weight has " << cw->size()
                 << " entries for " << in->geo.C << " classes";
    return false;
  }
  return true;
}

// Blocks of at most kBlock positions: runs of rows (class axis last) or runs along
// the contiguous inner dimension (class axis strided, e.g. NCHW with axis=1).
int64_t block_count(const Geometry& geo) {
  return geo.inner == 1 ? (geo.positions + kBlock - 1) / kBlock
                        : geo.outer * ((geo.inner + kBlock - 1) / kBlock);
}

// First position of block b, its number of positions, and the offset of its first logit.
void block_at(const Geometry& geo, int64_t b, int64_t* first, int64_t* count, int64_t* offset) {
  if (geo.inner == 1) {
    *first = b * kBlock;
    *count = std::min<int64_t>(kBlock, geo.positions - *first);
    *offset = *first * geo.C;
  } else {
    const int64_t per_outer = (geo.inner + kBlock - 1) / kBlock;
    const int64_t o = b / per_outer, i0 = (b % per_outer) * kBlock;
    *first = o * geo.inner + i0;
    *count = std::min<int64_t>(kBlock, geo.inner - i0);
    *offset = o * geo.C * geo.inner + i0;
  }
}

// Class `cls` of the block position t, in the layout of the block.
inline int64_t element(const Geometry& geo, int64_t t, int64_t cls) {
  return geo.inner == 1 ? t * geo.C + cls : cls * geo.inner + t;
}

MXReturnValue forward(const std::unordered_map<std::string, std::string>& attrs,
                      std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource& res) {
  Inputs in;
  if (!unpack(attrs, inputs, 0, &in)) return MX_FAIL;
  const Config& cfg = in.cfg;
  const Geometry& geo = in.geo;
  float* out = (*outputs)[0].data<float>();
  const bool per_position = cfg.normalization == kNone;
  // Position terms in float64; for 'none' they go straight to the output.
  double* terms = per_position ? nullptr : static_cast<double*>(
      res.alloc_cpu(static_cast<int>(sizeof(double) * std::max<int64_t>(geo.positions, 1))));
  PositionWeights weight_of{cfg, geo, in.label, in.class_weight, in.sample_weight};
  const float eps = cfg.label_smoothing;
  const int threads = thread_count(geo.positions * geo.C);
  double kept_total = 0, weight_total = 0;
  const int64_t blocks = block_count(geo);
  // Batch axis first: each sample's positions are contiguous, and its sum is one loop.
  const bool contiguous_samples = geo.batch_stride * geo.batch == geo.positions;
  // One parallel region per call: on a busy machine waking the team again costs more
  // than the per-sample sums it would share out.
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
#pragma omp for schedule(static) reduction(+:kept_total, weight_total)
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t first, count, offset;
      block_at(geo, b, &first, &count, &offset);
      float maxes[kBlock], sums[kBlock], logs[kBlock];
      double shifted_sums[kBlock];
      const float* x = in.pred + offset;
      if (geo.inner == 1) {
        row_stats(x, count, geo.C, maxes, sums, nullptr, eps > 0 ? shifted_sums : nullptr);
      } else {
        strided_stats(x, count, geo.C, geo.inner, maxes, sums, nullptr,
                      eps > 0 ? shifted_sums : nullptr);
      }
      log_block(sums, count, logs);
      for (int64_t t = 0; t < count; ++t) {
        int64_t cls;
        bool kept;
        const int64_t p = first + t;
        const float w = weight_of(p, &cls, &kept);
        double term = 0.0;
        if (w != 0.f) {  // no weight: exactly 0, whatever the logits
          const double m = maxes[t];
          double value = (m - x[element(geo, t, cls)]) + logs[t];
          if (eps > 0) {  // the uniform target's term: max - mean(x) + log(sum), in float64
            const double shifted_mean = shifted_sums[t] / static_cast<double>(geo.C);
            value = (1 - eps) * value + eps * (logs[t] - shifted_mean);
          }
          term = static_cast<double>(w) * value;
        }
        if (kept) {
          kept_total += 1;
          weight_total += std::fabs(w);
        }
        if (per_position) {
          out[p] = static_cast<float>(term * cfg.scale);
        } else {
          terms[p] = term;
        }
      }
    }
    // The loop's end is a barrier: the totals are complete here.
    if (!per_position) {
      const double factor =
          batch_over_normalizer(cfg, geo, kept_total, weight_total) * cfg.scale;
      if (contiguous_samples) {
        const int64_t per_sample = geo.batch_stride;
#pragma omp for schedule(static)
        for (int64_t s = 0; s < geo.batch; ++s) {
          double total = 0;
          for (int64_t p = s * per_sample; p < (s + 1) * per_sample; ++p) total += terms[p];
          out[s] = static_cast<float>(total * factor);
        }
      } else {
#pragma omp single
        {
          std::vector<double> totals(geo.batch, 0.0);
          for (int64_t p = 0; p < geo.positions; ++p) totals[geo.sample_of(p)] += terms[p];
          for (int64_t s = 0; s < geo.batch; ++s) out[s] = static_cast<float>(totals[s] * factor);
        }
      }
    }
  }
  return MX_SUCCESS;
}

// Backward inputs: ograd, pred, label[, class_weight][, sample_weight], output.
// Backward outputs: the gradient of every input; only pred's is not zero.
MXReturnValue backward(const std::unordered_map<std::string, std::string>& attrs,
                       std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource& res) {
  Inputs in;
  if (!unpack(attrs, inputs, 1, &in)) return MX_FAIL;
  const Config& cfg = in.cfg;
  const Geometry& geo = in.geo;
  const float* ograd = (*inputs)[0].data<float>();
  float* grad = (*outputs)[0].data<float>();
  for (size_t i = 1; i < outputs->size(); ++i) {
    MXTensor& t = (*outputs)[i];
    if (t.data_ptr) std::memset(t.data_ptr, 0, sizeof(float) * t.size());
  }
  PositionWeights weight_of{cfg, geo, in.label, in.class_weight, in.sample_weight};
  const bool per_position = cfg.normalization == kNone;
  const bool needs_totals =
      !per_position && (cfg.normalization == kValid || cfg.normalization == kWeight);
  const float eps = cfg.label_smoothing;
  const float uniform = eps / static_cast<float>(geo.C);
  const int threads = thread_count(geo.positions * geo.C);
  const int64_t blocks = block_count(geo);
  double kept_total = 0, weight_total = 0;
  // One parallel region per call, as in forward: the normalizer's totals, a barrier,
  // then the gradient.
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    if (needs_totals) {
#pragma omp for schedule(static) reduction(+:kept_total, weight_total)
      for (int64_t p = 0; p < geo.positions; ++p) {
        int64_t cls;
        bool kept;
        float w = weight_of(p, &cls, &kept);
        if (kept) {
          kept_total += 1;
          weight_total += std::fabs(w);
        }
      }
    }
    double factor = cfg.scale;
    if (!per_position) {
      factor *= batch_over_normalizer(cfg, geo, kept_total, weight_total);
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      int64_t first, count, offset;
      block_at(geo, b, &first, &count, &offset);
      float maxes[kBlock], sums[kBlock], ratio[kBlock], offset_of[kBlock], coef[kBlock];
      int64_t classes[kBlock];
      float tile[kFewClasses * kBlock];
      const float* x = in.pred + offset;
      float* g = grad + offset;
      const bool tiled = geo.inner == 1 && geo.C <= kFewClasses;
      if (tiled) {
        rows_to_tile(x, count, geo.C, tile);
        strided_stats(tile, count, geo.C, count, maxes, sums, tile, nullptr);
      } else if (geo.inner == 1) {
        row_stats(x, count, geo.C, maxes, sums, g, nullptr);
      } else {
        strided_stats(x, count, geo.C, geo.inner, maxes, sums, g, nullptr);
      }
      for (int64_t t = 0; t < count; ++t) {
        const int64_t p = first + t;
        bool kept;
        const float w = weight_of(p, &classes[t], &kept);
        const float upstream = ograd[per_position ? p : geo.sample_of(p)];
        // No weight: an exact 0 gradient, even where the upstream gradient is not finite.
        coef[t] = w == 0.f ? 0.f : static_cast<float>(w * factor * upstream);
        ratio[t] = coef[t] / sums[t];
        offset_of[t] = coef[t] * uniform;
      }
      if (tiled) {
        tile_to_rows_scaled(tile, count, geo.C, ratio, offset_of, g);
      } else if (geo.inner == 1) {
        row_scale(g, count, geo.C, ratio, offset_of);
      } else {
        strided_scale(g, count, geo.C, geo.inner, ratio, offset_of);
      }
      for (int64_t t = 0; t < count; ++t) g[element(geo, t, classes[t])] -= coef[t] * (1 - eps);
    }
  }
  return MX_SUCCESS;
}

MXReturnValue parse_attrs(const std::unordered_map<std::string, std::string>& attrs,
                          int* num_in, int* num_out) {
  Config cfg;
  if (!parse_config(attrs, &cfg)) return MX_FAIL;
  *num_in = 2 + (cfg.has_class_weight ? 1 : 0) + (cfg.has_sample_weight ? 1 : 0);
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const std::unordered_map<std::string, std::string>& attrs,
                         std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    if ((*in_types)[i] != kFloat32 && (*in_types)[i] != -1) {
      MX_ERROR_MSG << "gluon_losses_softmax_ce: input " << i << " must be float32, got dtype "
                   << (*in_types)[i];
      return MX_FAIL;
    }
    (*in_types)[i] = kFloat32;
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const std::unordered_map<std::string, std::string>& attrs,
                          std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  Config cfg;
  if (!parse_config(attrs, &cfg)) return MX_FAIL;
  const auto& pred = (*in_shapes)[0];
  const int ndim = static_cast<int>(pred.size());
  const int axis = cfg.axis < 0 ? cfg.axis + ndim : cfg.axis;
  if (axis < 0 || axis >= ndim) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce: axis " << cfg.axis << " out of range for "
                 << ndim << "-d pred";
    return MX_FAIL;
  }
  std::vector<unsigned int> label_shape;
  for (int d = 0; d < ndim; ++d) if (d != axis) label_shape.push_back(pred[d]);
  if ((*in_shapes)[1] != label_shape) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce: label shape does not match pred without axis "
                 << cfg.axis;
    return MX_FAIL;
  }
  if (cfg.normalization == kNone) {
    (*out_shapes)[0] = label_shape;
  } else {
    const int label_ndim = static_cast<int>(label_shape.size());
    const int batch_axis = cfg.batch_axis < 0 ? cfg.batch_axis + label_ndim : cfg.batch_axis;
    if (batch_axis < 0 || batch_axis >= label_ndim) {
      MX_ERROR_MSG << "gluon_losses_softmax_ce: batch_axis " << cfg.batch_axis
                   << " out of range for a " << label_ndim << "-d label";
      return MX_FAIL;
    }
    (*out_shapes)[0] = {label_shape[batch_axis]};
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(gluon_losses_softmax_ce)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  // Built against the headers of the installed MXNet; refuse any other build.
  if (version != GLUON_LOSSES_MXNET_VERSION) {
    MX_ERROR_MSG << "gluon_losses_softmax_ce was built for MXNet " << GLUON_LOSSES_MXNET_VERSION
                 << " but is loaded by " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
