// `engram quantize`: re-encodes a GGUF model the way llama-quantize does
// without an importance matrix, so that quantizing llama.cpp's F32 file
// reproduces llama-quantize's tensors byte for byte.
//
// Type choice follows llama.cpp's llama_tensor_get_type (src/llama-quant.cpp)
// for the file types engram offers (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K_M,
// Q5_K_M, Q6_K, F16, BF16), no imatrix, no --pure / overrides. The subset:
//   * which tensors are quantized at all: 2-D+ tensors whose name ends in
//     "weight", except norms, MoE router gates and the small special tensors
//     listed in is_quantizable();
//   * output.weight (or token_embd.weight when there is no output.weight):
//     Q6_K unless the target is Q8_0, Q8_0 if its rows do not fit the
//     target's block (or the arch is falcon);
//   * Q4_K_M / Q5_K_M: attn_v (and attn_qkv / attn_kv_b) and ffn_down of the
//     layers picked by use_more_bits() get Q6_K (falcon's Q4_K_M ffn_down rule
//     included); LLaMA-70B-shaped models get Q5_K attn_v; 8-expert models get
//     Q8_0 attn_v / attn_k and Q5_K attn_output (Q4_K_M);
//   * a type whose block does not divide the row length falls back as llama.cpp
//     does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0); where llama.cpp has no
//     fallback (it aborts), the tensor keeps its type.
// Tensors are visited and written in llama.cpp's order (non-layer tensors,
// then by layer number, by name within each), which the counters rely on.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <vector>

#include "gguf/gguf.h"
#include "quant/quant.h"
#include "util/thread_pool.h"

namespace engram {
namespace {

// llama.cpp's LLAMA_FTYPE_* numbers (llama.h).
constexpr uint32_t kFtypeF16 = 1, kFtypeQ4_0 = 2, kFtypeQ4_1 = 3, kFtypeQ8_0 = 7, kFtypeQ5_0 = 8, kFtypeQ5_1 = 9,
                   kFtypeQ4_K_M = 15, kFtypeQ5_K_M = 17, kFtypeQ6_K = 18, kFtypeBF16 = 32;
constexpr uint32_t kQuantizationVersion = 2;  // GGML_QNT_VERSION

struct TargetEntry {
  std::string_view name;
  std::string_view alias;
  GgmlType type;
  uint32_t file_type;
};

constexpr TargetEntry kTargets[] = {
    {"q8_0", "", GgmlType::Q8_0, kFtypeQ8_0},     {"q4_0", "", GgmlType::Q4_0, kFtypeQ4_0},
    {"q4_1", "", GgmlType::Q4_1, kFtypeQ4_1},     {"q5_0", "", GgmlType::Q5_0, kFtypeQ5_0},
    {"q5_1", "", GgmlType::Q5_1, kFtypeQ5_1},     {"q4_k_m", "q4_k", GgmlType::Q4_K, kFtypeQ4_K_M},
    {"q5_k_m", "q5_k", GgmlType::Q5_K, kFtypeQ5_K_M}, {"q6_k", "", GgmlType::Q6_K, kFtypeQ6_K},
    {"f16", "", GgmlType::F16, kFtypeF16},        {"bf16", "", GgmlType::BF16, kFtypeBF16},
};

std::string lowercase(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool ends_with(std::string_view s, std::string_view tail) {
  return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

// Layer index of "blk.N...." names, -1 for the others.
int layer_of(const std::string& name) {
  int layer = -1;
  if (std::sscanf(name.c_str(), "blk.%d.", &layer) != 1) return -1;
  return layer;
}

// ggml_n_dims: dimensions up to the last one larger than 1 (at least 1).
int effective_dims(const gguf::TensorInfo& t) {
  for (int i = 3; i >= 1; --i)
    if (t.ne[i] > 1) return i + 1;
  return 1;
}

bool is_quantizable(const gguf::TensorInfo& t) {
  const std::string_view name = t.name;
  if (effective_dims(t) < 2 || !ends_with(name, "weight")) return false;
  static constexpr std::string_view kKeep[] = {
      "_norm.weight", "ffn_gate_inp.weight", "altup", "laurel", "per_layer_model_proj", "ssm_conv1d",
      "shortconv.conv.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
      "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
      "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
      "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
      "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", ".patch_embd", ".rel_pos"};
  for (std::string_view part : kKeep)
    if (contains(name, part)) return false;
  return name != "position_embd.weight" && name != "token_types.weight";
}

enum class Category { kTokenEmbd, kOutput, kAttnV, kAttnK, kAttnOutput, kFfnDown, kOther };

Category category_of(std::string_view name) {
  if (name == "output.weight") return Category::kOutput;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") return Category::kTokenEmbd;
  if (contains(name, "attn_qkv.weight") || contains(name, "attn_kv_b.weight") || contains(name, "attn_v.weight"))
    return Category::kAttnV;
  if (contains(name, "attn_k.weight")) return Category::kAttnK;
  if (contains(name, "attn_q.weight")) return Category::kOther;
  if (contains(name, "attn_output.weight")) return Category::kAttnOutput;
  if (contains(name, "ffn_up") || contains(name, "ffn_gate")) return Category::kOther;
  if (contains(name, "ffn_down")) return Category::kFfnDown;
  return Category::kOther;
}

// llama.cpp's choice of layers that get more bits in the _M mixes: the first
// and last eighth, and every third layer in between.
bool use_more_bits(int i_layer, int n_layers) {
  return i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2;
}

// What the model looks like, as far as the type choice cares.
struct ModelShape {
  bool falcon = false;
  bool llama_70b = false;
  int n_layer = 0;
  int n_expert = 0;
  bool has_output = false;
  int n_attn_v = 0;
};

// Running counters, advanced in tensor order as llama.cpp does.
struct MixCounters {
  int i_attn_v = 0;
  int i_ffn_down = 0;
};

// nullopt where llama.cpp has no fallback (it aborts); the caller keeps the source type.
std::optional<GgmlType> shape_fallback(GgmlType type, int64_t n_cols) {
  if (n_cols % type_traits(type).block_size == 0) return type;
  switch (type) {
    case GgmlType::Q4_K: type = GgmlType::Q5_0; break;
    case GgmlType::Q5_K: type = GgmlType::Q5_1; break;
    case GgmlType::Q6_K: type = GgmlType::Q8_0; break;
    default: return std::nullopt;
  }
  return n_cols % type_traits(type).block_size == 0 ? type : GgmlType::F16;
}

// The type of one quantizable tensor (llama_tensor_get_type_impl's subset).
std::optional<GgmlType> choose_type(const QuantizeTarget& target, const ModelShape& model, MixCounters& counters,
                     const gguf::TensorInfo& t) {
  GgmlType type = target.type;
  if (!is_quantized(type)) return type;  // F16 / BF16: every quantizable tensor, no mix

  const bool q4_k_m = target.file_type == kFtypeQ4_K_M;
  const bool q5_k_m = target.file_type == kFtypeQ5_K_M;
  const Category category = category_of(t.name);
  if (category == Category::kOutput || (!model.has_output && category == Category::kTokenEmbd)) {
    if (model.falcon || t.ne[0] % type_traits(type).block_size != 0) type = GgmlType::Q8_0;
    else if (type != GgmlType::Q8_0) type = GgmlType::Q6_K;
  } else if (category == Category::kAttnV) {
    if ((q4_k_m || q5_k_m) && use_more_bits(counters.i_attn_v, model.n_attn_v)) type = GgmlType::Q6_K;
    if (model.llama_70b && (type == GgmlType::Q4_K)) type = GgmlType::Q5_K;
    if (model.n_expert == 8) type = GgmlType::Q8_0;
    ++counters.i_attn_v;
  } else if (category == Category::kAttnK) {
    if (model.n_expert == 8) type = GgmlType::Q8_0;
  } else if (category == Category::kFfnDown) {
    const int i_layer = model.n_expert > 1 ? layer_of(t.name) : counters.i_ffn_down;
    const int n_layer = model.n_layer;
    if (q4_k_m) {
      if (model.falcon)
        type = i_layer < n_layer / 16 ? GgmlType::Q6_K : use_more_bits(i_layer, n_layer) ? GgmlType::Q5_K : GgmlType::Q4_K;
      else if (use_more_bits(i_layer, n_layer))
        type = GgmlType::Q6_K;
    } else if (q5_k_m && use_more_bits(i_layer, n_layer)) {
      type = GgmlType::Q6_K;
    }
    ++counters.i_ffn_down;
  } else if (category == Category::kAttnOutput) {
    if (!model.falcon && model.n_expert == 8 && q4_k_m) type = GgmlType::Q5_K;
  }
  return shape_fallback(type, t.ne[0]);
}

// llama.cpp's tensor order: tensors outside layers first, then by layer, by name within.
std::vector<const gguf::TensorInfo*> llama_order(std::span<const gguf::TensorInfo> tensors) {
  std::vector<const gguf::TensorInfo*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::stable_sort(order.begin(), order.end(), [](const gguf::TensorInfo* a, const gguf::TensorInfo* b) {
    const int la = layer_of(a->name), lb = layer_of(b->name);
    if (la != lb) return la < lb;
    return a->name < b->name;
  });
  return order;
}

ModelShape shape_of(const QuantizeModelInfo& info, const std::vector<const gguf::TensorInfo*>& tensors) {
  ModelShape shape;
  shape.falcon = info.arch == "falcon";
  int max_layer = -1;
  for (const auto* t : tensors) {
    max_layer = std::max(max_layer, layer_of(t->name));
    if (category_of(t->name) == Category::kOutput) shape.has_output = true;
    if (category_of(t->name) == Category::kAttnV) ++shape.n_attn_v;
  }
  shape.n_layer = info.n_layer > 0 ? info.n_layer : max_layer + 1;
  shape.n_expert = info.n_expert;
  // llama.cpp calls an 80-layer llama with grouped-query attention "70B".
  shape.llama_70b = info.arch == "llama" && shape.n_layer == 80 && info.n_head != info.n_head_kv;
  return shape;
}

Expected<ModelShape> model_shape(const gguf::File& in, const std::vector<const gguf::TensorInfo*>& tensors) {
  QuantizeModelInfo info;
  const Expected<std::string> arch = in.get_string("general.architecture");
  if (arch) info.arch = *arch;
  const std::string prefix = arch ? *arch + "." : std::string("llama.");
  int max_layer = -1;
  for (const auto* t : tensors) max_layer = std::max(max_layer, layer_of(t->name));
  Expected<int64_t> n_layer = in.get_int_or(prefix + "block_count", max_layer + 1);
  if (!n_layer) return n_layer.error();
  Expected<int64_t> n_expert = in.get_int_or(prefix + "expert_count", 0);
  if (!n_expert) return n_expert.error();
  info.n_layer = static_cast<int>(*n_layer);
  info.n_expert = static_cast<int>(*n_expert);
  Expected<int64_t> n_head = in.get_int_or(prefix + "attention.head_count", 0);
  Expected<int64_t> n_head_kv = in.get_int_or(prefix + "attention.head_count_kv", n_head ? *n_head : 0);
  // A missing or unreadable head count never makes a "70B" (as before: both must be read).
  info.n_head = n_head ? static_cast<int>(*n_head) : 0;
  info.n_head_kv = n_head && n_head_kv ? static_cast<int>(*n_head_kv) : info.n_head;
  return shape_of(info, tensors);
}

// Converts one tensor to `type`: rows are dequantized to float when needed
// and quantized on the pool. Errors name the tensor.
Expected<std::vector<uint8_t>> convert_tensor(const gguf::File& in, const gguf::TensorInfo& t, GgmlType type,
                                              ThreadPool& pool) {
  const int64_t n_cols = t.ne[0];
  const int64_t n_rows = n_cols > 0 ? t.n_elements() / n_cols : 0;
  const auto in_row = row_bytes(t.type, n_cols);
  const auto out_row = row_bytes(type, n_cols);
  if (!in_row || !out_row) return make_error(in.path(), ": tensor '", t.name, "': bad row length for its type");
  if (!can_dequantize(t.type))
    return make_error(in.path(), ": tensor '", t.name, "': cannot convert from type ",
                      std::string(type_traits(t.type).name));

  std::vector<uint8_t> out(*out_row * static_cast<size_t>(n_rows));
  const uint8_t* src = in.tensor_data(t);
  std::vector<int> bad_rows(static_cast<size_t>(pool.size()), 0);
  pool.parallel_for(
      static_cast<size_t>(n_rows),
      [&](size_t begin, size_t end, int thread) {
        std::vector<float> row(static_cast<size_t>(n_cols));
        for (size_t r = begin; r < end; ++r) {
          dequantize_row(t.type, src + r * *in_row, row.data(), n_cols);
          // Quantizers assume finite inputs; llama-quantize rejects such data too.
          for (float v : row)
            if (!std::isfinite(v)) {
              bad_rows[static_cast<size_t>(thread)]++;
              break;
            }
          quantize_row(type, row.data(), out.data() + r * *out_row, n_cols);
        }
      },
      16);
  for (int bad : bad_rows)
    if (bad > 0) return make_error(in.path(), ": tensor '", t.name, "' contains NaN or infinite values");
  return out;
}

std::string mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f MiB", static_cast<double>(bytes) / (1024.0 * 1024.0));
  return buf;
}

}  // namespace

Expected<QuantizeTarget> parse_quantize_target(std::string_view name) {
  const std::string key = lowercase(name);
  for (const auto& e : kTargets)
    if (key == e.name || (!e.alias.empty() && key == e.alias))
      return QuantizeTarget{std::string(e.name), e.type, e.file_type};
  std::string known;
  for (const auto& e : kTargets) known += (known.empty() ? "" : ", ") + std::string(e.name);
  return make_error("unknown quantization type '", std::string(name), "' (expected one of: ", known, ")");
}

std::vector<GgmlType> quantized_tensor_types(const QuantizeTarget& target, const QuantizeModelInfo& model,
                                             std::span<const gguf::TensorInfo> tensors) {
  const std::vector<const gguf::TensorInfo*> order = llama_order(tensors);
  const ModelShape shape = shape_of(model, order);
  MixCounters counters;  // advanced in llama.cpp's order, as quantize_model does
  std::vector<GgmlType> types(tensors.size());
  for (const gguf::TensorInfo* t : order) {
    GgmlType type = t->type;
    if (is_quantizable(*t)) type = choose_type(target, shape, counters, *t).value_or(t->type);
    types[static_cast<size_t>(t - tensors.data())] = type;
  }
  return types;
}

Expected<std::string> quantize_model(const std::string& in_path, const std::string& out_path, GgmlType type,
                                     int n_threads) {
  for (const auto& e : kTargets)
    if (e.type == type) return quantize_model(in_path, out_path, QuantizeTarget{std::string(e.name), e.type, e.file_type}, n_threads);
  return make_error("cannot quantize a model to type ", std::string(type_traits(type).name));
}

Expected<std::string> quantize_model(const std::string& in_path, const std::string& out_path,
                                     const QuantizeTarget& target, int n_threads) {
  Expected<gguf::File> opened = gguf::File::open(in_path);
  if (!opened) return opened.error();
  const gguf::File& in = *opened;

  const std::vector<const gguf::TensorInfo*> tensors = llama_order(in.tensors());
  Expected<ModelShape> shape = model_shape(in, tensors);
  if (!shape) return shape.error();

  gguf::Writer writer;
  writer.alignment = in.alignment();
  writer.copy_metadata(in);
  writer.set_u32("general.quantization_version", kQuantizationVersion);
  writer.set_u32("general.file_type", target.file_type);

  ThreadPool pool(n_threads);
  MixCounters counters;
  uint64_t bytes_in = 0, bytes_out = 0;
  int n_converted = 0;
  for (const gguf::TensorInfo* t : tensors) {
    GgmlType type = t->type;
    if (is_quantizable(*t)) {
      type = choose_type(target, *shape, counters, *t).value_or(t->type);
    }
    std::vector<int64_t> ne(t->ne.begin(), t->ne.begin() + std::max(t->n_dims, 1));
    std::vector<uint8_t> data;
    if (type == t->type) {
      const uint8_t* src = in.tensor_data(*t);
      data.assign(src, src + t->n_bytes);
    } else {
      Expected<std::vector<uint8_t>> converted = convert_tensor(in, *t, type, pool);
      if (!converted) return converted.error();
      data = std::move(*converted);
      ++n_converted;
    }
    bytes_in += t->n_bytes;
    bytes_out += data.size();
    ENGRAM_RETURN_IF_ERROR(writer.add_tensor(t->name, type, std::move(ne), std::move(data)));
  }
  ENGRAM_RETURN_IF_ERROR(writer.write(out_path));

  return "quantized " + in_path + " -> " + out_path + " as " + target.name + ": " + std::to_string(tensors.size()) +
         " tensors (" + std::to_string(n_converted) + " converted, " +
         std::to_string(tensors.size() - static_cast<size_t>(n_converted)) + " copied), " + mib(bytes_in) + " -> " +
         mib(bytes_out);
}

}  // namespace engram
