// formats.md §4.3: softmax-gated pooling → RMSNorm → compress RoPE.
#include "kernels/v4/compressor.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/portable_math.h"
#include "kernels/rmsnorm.h"

namespace kv::kernels::v4 {

void ApplyTrailingRope(const std::vector<double>& freqs, int64_t pos, int dim, int rope_dim,
                       float* x) {
  float* r = x + (dim - rope_dim);
  for (int k = 0; k < rope_dim / 2; ++k) {
    double sd, cd;
    SinCosD(static_cast<double>(pos) * freqs[k], &sd, &cd);
    const float cs = static_cast<float>(cd);
    const float sn = static_cast<float>(sd);
    const float x0 = r[2 * k], x1 = r[2 * k + 1];
    r[2 * k] = x0 * cs - x1 * sn;
    r[2 * k + 1] = x0 * sn + x1 * cs;
  }
}

std::vector<float> Compressor::EntryRopeTable(int64_t n_entries) const {
  const int half = spec_.rope_dim / 2;
  std::vector<float> cs(static_cast<size_t>(n_entries) * spec_.rope_dim);
  for (int64_t w = 0; w < n_entries; ++w) {
    for (int k = 0; k < half; ++k) {
      double sd, cd;
      SinCosD(static_cast<double>(spec_.ratio * w) * freqs_[k], &sd, &cd);
      cs[w * spec_.rope_dim + 2 * k] = static_cast<float>(cd);
      cs[w * spec_.rope_dim + 2 * k + 1] = static_cast<float>(sd);
    }
  }
  return cs;
}

namespace {
// Whether all n floats are finite: an OR over "exponent all ones", without a branch per
// element, so the loop vectorises (CheckFinite runs over every row the attention reads).
bool AllFinite(const float* x, int64_t n) {
  // |x| <= FLT_MAX is false exactly for +-Inf and NaN.
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= !(std::fabs(x[i]) <= std::numeric_limits<float>::max());
  return bad == 0;
}
}  // namespace

absl::Status CheckFinite(const float* x, int64_t rows, int64_t width, const char* what) {
  if (rows <= 0 || AllFinite(x, rows * width)) return absl::OkStatus();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < width; ++i) {
      if (!std::isfinite(x[r * width + i])) {
        return absl::InvalidArgumentError(
            kv::StrCat(what, " row ", r, " element ", i, " is not finite"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Compressor> Compressor::Create(const CompressorSpec& spec,
                                              std::vector<float> position_bias,
                                              std::vector<float> norm_weight,
                                              const YarnRopeParams& rope) {
  if (spec.ratio != 4 && spec.ratio != 128) {
    return absl::InvalidArgumentError(
        kv::StrCat("compressor ratio ", spec.ratio, " (must be 4 for CSA or 128 for HCA)"));
  }
  if (spec.dim <= 0 || spec.rope_dim <= 0 || spec.rope_dim % 2 != 0 || spec.rope_dim > spec.dim) {
    return absl::InvalidArgumentError(kv::StrCat("compressor dim ", spec.dim, " / rope_dim ",
                                                 spec.rope_dim,
                                                 " (need even 0 < rope_dim <= dim)"));
  }
  if (rope.rope_dim != spec.rope_dim) {
    return absl::InvalidArgumentError(kv::StrCat("rope params rope_dim ", rope.rope_dim,
                                                 " != compressor rope_dim ", spec.rope_dim));
  }
  if (!(spec.eps >= 0.0f) || !std::isfinite(spec.eps)) {
    return absl::InvalidArgumentError(kv::StrCat("compressor eps ", spec.eps, " is invalid"));
  }
  Compressor c;
  c.spec_ = spec;
  const size_t want_bias = static_cast<size_t>(spec.ratio) * c.in_width();
  if (position_bias.size() != want_bias) {
    return absl::InvalidArgumentError(kv::StrCat("position_bias has ", position_bias.size(),
                                                 " floats, want ratio × in_width = ", want_bias));
  }
  if (norm_weight.size() != static_cast<size_t>(spec.dim)) {
    return absl::InvalidArgumentError(
        kv::StrCat("norm_weight has ", norm_weight.size(), " floats, want dim = ", spec.dim));
  }
  RETURN_IF_ERROR(CheckFinite(position_bias.data(), spec.ratio, c.in_width(), "position_bias"));
  RETURN_IF_ERROR(CheckFinite(norm_weight.data(), 1, spec.dim, "norm_weight"));
  ASSIGN_OR_RETURN(c.freqs_, RopeFrequencies(rope));
  c.bias_ = std::move(position_bias);
  c.norm_ = std::move(norm_weight);
  return c;
}

absl::Status Compressor::ComputeEntry(int64_t w, const float* prev_c, const float* prev_z,
                                      int64_t prev_stride, const float* cur_c, const float* cur_z,
                                      int64_t cur_stride, float* out) const {
  const int m = spec_.ratio, d = spec_.dim;
  const bool csa = overlapping();
  // Slot s of the softmax: for CSA, s < m are the previous window's Ca (bias row s, [:d]) and
  // s >= m the current window's Cb (bias row s-m, [d:]); for HCA slot s is token 128w+s.
  struct Slot {
    const float* c;
    const float* z;
    const float* b;
  };
  std::vector<Slot> slots;
  slots.reserve(csa ? 2 * m : m);
  if (csa && prev_c != nullptr) {
    for (int s = 0; s < m; ++s) {
      slots.push_back({prev_c + s * prev_stride, prev_z + s * prev_stride, &bias_[s * 2 * d]});
    }
  }
  const int cur_off = csa ? d : 0;
  for (int s = 0; s < m; ++s) {
    slots.push_back({cur_c + s * cur_stride + cur_off, cur_z + s * cur_stride + cur_off,
                     &bias_[static_cast<size_t>(s) * in_width() + cur_off]});
  }
  // Pass 1: per-channel max of the gate Z + B (fp32). Pass 2: exp, sum and weighted sum.
  std::vector<float> mx(d, -std::numeric_limits<float>::infinity()), sum(d, 0.0f);
  for (const Slot& sl : slots) {
    for (int i = 0; i < d; ++i) mx[i] = std::max(mx[i], sl.z[i] + sl.b[i]);
  }
  for (int i = 0; i < d; ++i) out[i] = 0.0f;
  for (const Slot& sl : slots) {
    for (int i = 0; i < d; ++i) {
      const float e = ExpF((sl.z[i] + sl.b[i]) - mx[i]);
      sum[i] += e;
      out[i] += e * sl.c[i];
    }
  }
  for (int i = 0; i < d; ++i) out[i] /= sum[i];
  RETURN_IF_ERROR(RmsNorm(out, 1, d, d, norm_.data(), spec_.eps, out, d));
  ApplyTrailingRope(freqs_, static_cast<int64_t>(m) * w, d, spec_.rope_dim, out);
  return absl::OkStatus();
}

absl::Status Compressor::CompressAll(const float* c, const float* z, int64_t n,
                                     std::vector<float>* entries) const {
  if (n < 0) return absl::InvalidArgumentError(kv::StrCat("token count ", n, " < 0"));
  if (entries == nullptr || (n > 0 && (c == nullptr || z == nullptr))) {
    return absl::InvalidArgumentError("CompressAll: null input or output pointer");
  }
  const int m = spec_.ratio, d = spec_.dim, iw = in_width();
  RETURN_IF_ERROR(CheckFinite(c, n, iw, "compressor C"));
  RETURN_IF_ERROR(CheckFinite(z, n, iw, "compressor Z"));
  const int64_t n_entries = n / m;
  const size_t base = entries->size();
  entries->resize(base + n_entries * d);
  for (int64_t w = 0; w < n_entries; ++w) {
    const float* cur_c = c + w * m * iw;
    const float* cur_z = z + w * m * iw;
    const bool prev = overlapping() && w > 0;
    absl::Status s =
        ComputeEntry(w, prev ? cur_c - m * iw : nullptr, prev ? cur_z - m * iw : nullptr, iw, cur_c,
                     cur_z, iw, entries->data() + base + w * d);
    if (!s.ok()) {
      entries->resize(base);
      return s;
    }
  }
  return absl::OkStatus();
}

CompressorStream::CompressorStream(const Compressor& comp)
    : ratio_(comp.spec().ratio), dim_(comp.spec().dim), in_width_(comp.in_width()) {
  // buf_c_ / buf_z_ (ratio × in_width each, 512 KB for an HCA stream) are sized by the first
  // Append, or by Deserialize to the buffered rows: a stream restored from a page then costs
  // no more than its state's bytes.
  if (comp.overlapping()) {
    prev_c_.resize(static_cast<size_t>(ratio_) * dim_);
    prev_z_.resize(prev_c_.size());
  }
}

int64_t CompressorStream::entries_emitted() const { return next_pos_ / ratio_; }

absl::Status CompressorStream::Append(const Compressor& comp, const float* c, const float* z,
                                      int64_t n, std::vector<float>* entries) {
  if (comp.spec().ratio != ratio_ || comp.spec().dim != dim_) {
    return absl::InvalidArgumentError(kv::StrCat("stream is for ratio ", ratio_, " dim ", dim_,
                                                 ", compressor has ratio ", comp.spec().ratio,
                                                 " dim ", comp.spec().dim));
  }
  if (n < 0) return absl::InvalidArgumentError(kv::StrCat("token count ", n, " < 0"));
  if (entries == nullptr || (n > 0 && (c == nullptr || z == nullptr))) {
    return absl::InvalidArgumentError("Append: null input or output pointer");
  }
  RETURN_IF_ERROR(CheckFinite(c, n, in_width_, "compressor C"));
  RETURN_IF_ERROR(CheckFinite(z, n, in_width_, "compressor Z"));
  const size_t iw = in_width_;
  if (n > 0 && buf_c_.size() < static_cast<size_t>(ratio_) * iw) {
    buf_c_.resize(static_cast<size_t>(ratio_) * iw);
    buf_z_.resize(buf_c_.size());
  }
  for (int64_t t = 0; t < n; ++t) {
    std::memcpy(&buf_c_[n_buf_ * iw], c + t * iw, iw * sizeof(float));
    std::memcpy(&buf_z_[n_buf_ * iw], z + t * iw, iw * sizeof(float));
    ++n_buf_;
    ++next_pos_;
    if (n_buf_ < ratio_) continue;
    const int64_t w = next_pos_ / ratio_ - 1;
    const size_t base = entries->size();
    entries->resize(base + dim_);
    RETURN_IF_ERROR(comp.ComputeEntry(w, has_prev_ ? prev_c_.data() : nullptr,
                                      has_prev_ ? prev_z_.data() : nullptr, dim_, buf_c_.data(),
                                      buf_z_.data(), iw, entries->data() + base));
    if (comp.overlapping()) {
      // Keep this window's Ca / Za for entry w + 1 (§4.3: "previous window's Ca/gate slice").
      for (int s = 0; s < ratio_; ++s) {
        std::memcpy(&prev_c_[s * dim_], &buf_c_[s * iw], dim_ * sizeof(float));
        std::memcpy(&prev_z_[s * dim_], &buf_z_[s * iw], dim_ * sizeof(float));
      }
      has_prev_ = true;
    }
    n_buf_ = 0;
  }
  return absl::OkStatus();
}

namespace {
constexpr char kMagic[4] = {'K', 'V', '4', 'S'};
constexpr uint16_t kVersion = 1;
constexpr size_t kHeaderBytes = 4 + 2 + 2 + 4 + 8 + 4 + 1 + 3;

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}
template <typename T>
T Get(const std::string& in, size_t off) {
  T v;
  std::memcpy(&v, in.data() + off, sizeof(v));
  return v;
}
}  // namespace

uint64_t CompressorStream::SerializedBytes(int ratio, int dim, int64_t next_position) {
  if (ratio < 1 || dim < 0 || next_position < 0) return 0;
  const bool overlapping = ratio == 4;  // Compressor::overlapping()
  const uint64_t in_width = overlapping ? 2 * dim : dim;
  const uint64_t n_buf = static_cast<uint64_t>(next_position % ratio);
  const bool has_prev = overlapping && next_position >= ratio;
  return kHeaderBytes + 2 * n_buf * in_width * sizeof(float) +
         (has_prev ? 2 * uint64_t{static_cast<uint32_t>(ratio)} * dim * sizeof(float) : 0) + 8;
}

std::string CompressorStream::Serialize() const {
  std::string out(kMagic, 4);
  Put<uint16_t>(&out, kVersion);
  Put<uint16_t>(&out, static_cast<uint16_t>(ratio_));
  Put<uint32_t>(&out, static_cast<uint32_t>(dim_));
  Put<uint64_t>(&out, static_cast<uint64_t>(next_pos_));
  Put<uint32_t>(&out, static_cast<uint32_t>(n_buf_));
  Put<uint8_t>(&out, has_prev_ ? 1 : 0);
  out.append(3, '\0');
  const size_t buf_bytes = static_cast<size_t>(n_buf_) * in_width_ * sizeof(float);
  out.append(reinterpret_cast<const char*>(buf_c_.data()), buf_bytes);
  out.append(reinterpret_cast<const char*>(buf_z_.data()), buf_bytes);
  if (has_prev_) {
    out.append(reinterpret_cast<const char*>(prev_c_.data()), prev_c_.size() * sizeof(float));
    out.append(reinterpret_cast<const char*>(prev_z_.data()), prev_z_.size() * sizeof(float));
  }
  Put<uint64_t>(&out, kv::Xxh3_64(out.data(), out.size()));
  return out;
}

absl::StatusOr<CompressorStream> CompressorStream::Deserialize(const Compressor& comp,
                                                               const std::string& bytes) {
  auto loss = [](auto... parts) {
    return absl::DataLossError(kv::StrCat("compressor state: ", parts...));
  };
  if (bytes.size() < kHeaderBytes + 8) return loss("truncated (", bytes.size(), " bytes)");
  if (std::memcmp(bytes.data(), kMagic, 4) != 0) return loss("bad magic");
  const uint16_t version = Get<uint16_t>(bytes, 4);
  if (version != kVersion) {
    return absl::UnimplementedError(
        kv::StrCat("compressor state: unknown version ", version, " (this build reads 1)"));
  }
  const uint64_t stored_sum = Get<uint64_t>(bytes, bytes.size() - 8);
  if (kv::Xxh3_64(bytes.data(), bytes.size() - 8) != stored_sum) return loss("checksum mismatch");
  const int ratio = Get<uint16_t>(bytes, 6);
  const uint32_t dim = Get<uint32_t>(bytes, 8);
  if (ratio != comp.spec().ratio || dim != static_cast<uint32_t>(comp.spec().dim)) {
    return absl::FailedPreconditionError(kv::StrCat("compressor state is for ratio ", ratio,
                                                    " dim ", dim, ", compressor has ratio ",
                                                    comp.spec().ratio, " dim ", comp.spec().dim));
  }
  CompressorStream s(comp);
  const uint64_t next = Get<uint64_t>(bytes, 12);
  const uint32_t n_buf = Get<uint32_t>(bytes, 20);
  const uint8_t has_prev = Get<uint8_t>(bytes, 24);
  if (next > (uint64_t{1} << 40)) return loss("next_position ", next, " out of range");
  if (n_buf >= static_cast<uint32_t>(ratio) || next % ratio != n_buf) {
    return loss("n_buffered ", n_buf, " inconsistent with next_position ", next, " and ratio ",
                ratio);
  }
  const bool want_prev = comp.overlapping() && next >= static_cast<uint64_t>(ratio);
  if (has_prev > 1 || (has_prev == 1) != want_prev)
    return loss("has_prev flag ", int{has_prev}, " is wrong");
  if (bytes[25] != 0 || bytes[26] != 0 || bytes[27] != 0) return loss("nonzero reserved bytes");
  const size_t buf_bytes = static_cast<size_t>(n_buf) * s.in_width_ * sizeof(float);
  const size_t prev_bytes = has_prev ? s.prev_c_.size() * sizeof(float) : 0;
  const size_t want = kHeaderBytes + 2 * buf_bytes + 2 * prev_bytes + 8;
  if (bytes.size() != want) return loss("size ", bytes.size(), " != expected ", want);
  size_t off = kHeaderBytes;
  s.buf_c_.resize(static_cast<size_t>(n_buf) * s.in_width_);
  s.buf_z_.resize(s.buf_c_.size());
  std::memcpy(s.buf_c_.data(), bytes.data() + off, buf_bytes);
  off += buf_bytes;
  std::memcpy(s.buf_z_.data(), bytes.data() + off, buf_bytes);
  off += buf_bytes;
  if (has_prev) {
    std::memcpy(s.prev_c_.data(), bytes.data() + off, prev_bytes);
    off += prev_bytes;
    std::memcpy(s.prev_z_.data(), bytes.data() + off, prev_bytes);
  }
  const absl::Status fin = [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckFinite(s.buf_c_.data(), n_buf, s.in_width_, "state C"));
    RETURN_IF_ERROR(CheckFinite(s.buf_z_.data(), n_buf, s.in_width_, "state Z"));
    if (has_prev) {
      RETURN_IF_ERROR(CheckFinite(s.prev_c_.data(), ratio, s.dim_, "state prev Ca"));
      RETURN_IF_ERROR(CheckFinite(s.prev_z_.data(), ratio, s.dim_, "state prev Za"));
    }
    return absl::OkStatus();
  }();
  if (!fin.ok()) return loss(fin.message());
  s.next_pos_ = static_cast<int64_t>(next);
  s.n_buf_ = static_cast<int>(n_buf);
  s.has_prev_ = has_prev == 1;
  return s;
}

}  // namespace kv::kernels::v4
