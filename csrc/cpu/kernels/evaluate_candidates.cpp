// Dense evaluation kernel (evaluate_candidates, per instruction set): one tile of validation samples through every
// layer of a block of candidates, then the fused loss.
//
// Activations are feature-major, H^T [features, ldh] with the samples contiguous, so every layer is
// H_next^T = W H^T: the weights are the broadcast operand, read in place through their two strides
// (out_in and in_out alike, never packed), and the samples are the vector operand. The first
// layers of the whole block run first, one product per candidate on the same X^T tile (packed once,
// it stays in cache while each candidate's W_1 streams past); the later layers run per candidate
// on buffers of one tile, and the last one feeds the log-softmax and the loss directly. Each output element is a sum
// over its inputs in input order, started from the bias, whatever the tiling and the thread count.
#include "cpu/kernels/evaluate_candidates.h"
#include "cpu/elements.h"
#include "fomo/dense.h"
#include "fomo/dispatch.h"

namespace fomo {
namespace cpu {
namespace FOMO_ISA {
namespace {

#if defined(__AVX2__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <class C>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(kVecBytes)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(kVecBytes)));
};

// Register block: kRows weight rows x kVecs vectors of samples (6 x 16 floats with AVX2: 12
// accumulators, 2 loads and a broadcast of the 16 registers).
constexpr int kRows = 6;
constexpr int kVecs = 2;
template <class C>
constexpr int kLanesOf = kVecBytes / int(sizeof(C));
template <class C>
constexpr int kPanel = kVecs * kLanesOf<C>;
static_assert(kDensePanelMultiple % kPanel<float> == 0 && kDensePanelMultiple % kPanel<double> == 0,
              "the tile padding must be a multiple of every panel width");

// out[r, 0:panel] = bias[r] + sum_k W(r, k) * h[k, 0:panel] for R rows.
template <class T, class C, int R>
inline void micro_tile(const T* w, int64_t rs, int64_t cs, const T* bias, int64_t bs, const C* h, int64_t ldh,
                       int64_t depth, C* out) {
  typedef typename VecOf<C>::type V;
  constexpr int L = kLanesOf<C>;
  V acc[R][kVecs];
  for (int r = 0; r < R; ++r) {
    const C b = load_one(bias + r * bs);
    for (int v = 0; v < kVecs; ++v) acc[r][v] = V{} + b;
  }
  for (int64_t k = 0; k < depth; ++k) {
    V hv[kVecs];
    for (int v = 0; v < kVecs; ++v) hv[v] = load_raw<V>(h + k * ldh + v * L);
    const T* wk = w + k * cs;
    for (int r = 0; r < R; ++r) {
      const C a = load_one(wk + r * rs);
      for (int v = 0; v < kVecs; ++v) acc[r][v] += a * hv[v];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kVecs; ++v) store_raw(out + r * ldh + v * L, acc[r][v]);
}

// The activation over rows x kWidth values of a block just written (still in L1); the width is a
// compile-time constant so that each row is a few whole vectors.
template <class C, int kWidth>
void activate_block(Activation act, C* out, int64_t ldh, int rows) {
  for (int r = 0; r < rows; ++r) {
    C* o = out + r * ldh;
    switch (act) {
      case Activation::relu:
        for (int j = 0; j < kWidth; ++j) o[j] = dense_select(o[j] < C(0), C(0), o[j]);
        break;
      case Activation::tanh:
        for (int j = 0; j < kWidth; ++j) o[j] = dense_tanh(o[j]);
        break;
      case Activation::logistic:
        for (int j = 0; j < kWidth; ++j) o[j] = dense_logistic(o[j]);
        break;
      case Activation::identity: break;
    }
  }
}

// out^T [n_out, cols] = act(W in^T + b) for one layer of one candidate.
template <class T, class C>
void dense_layer(const DenseLayerParams& p, int64_t n_out, int64_t n_in, const C* in, int64_t ldh, C* out,
                 Activation act) {
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  constexpr int P = kPanel<C>;
  for (int64_t o0 = 0; o0 < n_out; o0 += kRows) {
    const int rows = n_out - o0 < kRows ? int(n_out - o0) : kRows;
    const T* wo = w + o0 * p.row_stride;
    const T* bo = bias + o0 * p.bias_stride;
    for (int64_t j0 = 0; j0 < ldh; j0 += P) {
      C* dst = out + o0 * ldh + j0;
      const C* src = in + j0;
      switch (rows) {
        case 6: micro_tile<T, C, 6>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
        case 5: micro_tile<T, C, 5>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
        case 4: micro_tile<T, C, 4>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
        case 3: micro_tile<T, C, 3>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
        case 2: micro_tile<T, C, 2>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
        default: micro_tile<T, C, 1>(wo, p.row_stride, p.col_stride, bo, p.bias_stride, src, ldh, n_in, dst); break;
      }
      if (act != Activation::identity) activate_block<C, P>(act, dst, ldh, rows);
    }
  }
}

// X^T tile [D, ldh] in the compute type from X rows [row_begin, row_begin + rows); zero padding.
template <class C, class X>
void pack_inputs(const DenseData& data, int64_t d_count, const DenseItem& item, C* xt) {
  const X* x = static_cast<const X*>(data.x);
  for (int64_t j = 0; j < item.rows; ++j) {
    const X* row = x + (item.row_begin + j) * data.row_stride;
    for (int64_t d = 0; d < d_count; ++d) xt[d * item.ldh + j] = C(load_one(row + d * data.col_stride));
  }
  for (int64_t d = 0; d < d_count; ++d)
    for (int64_t j = item.rows; j < item.ldh; ++j) xt[d * item.ldh + j] = C(0);
}

// Sums over the tile of w_b * loss_b and w_b * [correct_b] from the last layer's outputs z [C, ldh].
template <class C>
void fused_loss(const DenseNet& net, const DenseData& data, const DenseItem& item, const C* z, C* max, C* sum,
                int32_t* arg, double* loss_sum, double* correct_sum) {
  const int64_t classes = net.sizes[net.num_layers];
  const int64_t ldh = item.ldh, n = item.rows, b0 = item.row_begin;
  double loss_total = 0.0, correct_total = 0.0;
  const double* sw = data.sample_weight;
  if (net.output == DenseOutput::softmax) {
    for (int64_t j = 0; j < n; ++j) {
      max[j] = z[j];
      arg[j] = 0;
      sum[j] = C(0);
    }
    for (int64_t c = 1; c < classes; ++c) {
      const C* zc = z + c * ldh;
      for (int64_t j = 0; j < n; ++j) {
        const bool greater = zc[j] > max[j];  // the first largest logit wins ties
        max[j] = dense_select(greater, zc[j], max[j]);
        arg[j] = greater ? int32_t(c) : arg[j];
      }
    }
    for (int64_t c = 0; c < classes; ++c) {
      const C* zc = z + c * ldh;
      for (int64_t j = 0; j < n; ++j) sum[j] += dense_exp(zc[j] - max[j]);
    }
    for (int64_t j = 0; j < n; ++j) {
      const int64_t label = data.labels[b0 + j];
      const C loss = softmax_loss(max[j], sum[j], z[label * ldh + j]);
      const double w = sw ? sw[b0 + j] : 1.0;
      loss_total += w * double(loss);
      if (arg[j] == label && loss == loss) correct_total += w;
    }
  } else if (net.output == DenseOutput::logistic) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t label = data.labels[b0 + j];
      const C loss = binary_logistic_loss(z[j], label);
      const double w = sw ? sw[b0 + j] : 1.0;
      loss_total += w * double(loss);
      if (int64_t(z[j] > C(0)) == label && loss == loss) correct_total += w;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const double* t = data.targets + (b0 + j) * classes;
      C total = C(0);
      for (int64_t c = 0; c < classes; ++c) {
        const C diff = z[c * ldh + j] - C(t[c]);
        total += diff * diff;
      }
      const double w = sw ? sw[b0 + j] : 1.0;
      loss_total += w * double(total / C(classes));
    }
  }
  *loss_sum = loss_total;
  *correct_sum = correct_total;
}

template <class T>
void item_for(const DenseNet& net, const DenseCandidates& cands, const DenseData& data, const DenseItem& item,
              void* scratch, double* loss_sums, double* correct_sums) {
  typedef compute_t<T> C;
  const int64_t layers = net.num_layers, ldh = item.ldh;
  const int64_t group = item.cand_end - item.cand_begin;
  const DenseScratchLayout at = dense_scratch_layout(net, group, ldh, int64_t(sizeof(C)));
  char* base = static_cast<char*>(scratch);
  C* xt = reinterpret_cast<C*>(base + at.x);
  C* first = reinterpret_cast<C*>(base + at.first);
  C* buffers[2] = {reinterpret_cast<C*>(base + at.ping), reinterpret_cast<C*>(base + at.pong)};

  dispatch_dtype(data.dtype,
                 [&](auto tag) { pack_inputs<C, typename decltype(tag)::type>(data, net.sizes[0], item, xt); });

  // First layer of every candidate of the block, each read against the same cached X^T tile.
  const int64_t h1 = net.sizes[1];
  const Activation first_act = layers > 1 ? net.activations[0] : Activation::identity;
  for (int64_t g = 0; g < group; ++g)
    dense_layer<T, C>(cands.layers[(item.cand_begin + g) * layers], h1, net.sizes[0], xt, ldh, first + g * h1 * ldh,
                      first_act);

  // Later layers and the loss, candidate by candidate.
  for (int64_t g = 0; g < group; ++g) {
    const DenseLayerParams* params = cands.layers + (item.cand_begin + g) * layers;
    const C* h = first + g * h1 * ldh;
    for (int64_t l = 1; l < layers; ++l) {
      C* out = buffers[l % 2];
      const Activation act = l + 1 < layers ? net.activations[l] : Activation::identity;
      dense_layer<T, C>(params[l], net.sizes[l + 1], net.sizes[l], h, ldh, out, act);
      h = out;
    }
    fused_loss<C>(net, data, item, h, reinterpret_cast<C*>(base + at.max), reinterpret_cast<C*>(base + at.sum),
                  reinterpret_cast<int32_t*>(base + at.arg), loss_sums + g, correct_sums + g);
  }
}

}  // namespace

void dense_item(const DenseNet& net, const DenseCandidates& candidates, const DenseData& data, const DenseItem& item,
                void* scratch, double* loss_sums, double* correct_sums) {
  dispatch_dtype(candidates.dtype, [&](auto tag) {
    item_for<typename decltype(tag)::type>(net, candidates, data, item, scratch, loss_sums, correct_sums);
  });
}

}  // namespace FOMO_ISA
}  // namespace cpu
}  // namespace fomo
