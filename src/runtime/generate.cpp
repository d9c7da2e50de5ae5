#include "runtime/generate.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

namespace engram {

int64_t resolve_context(const ModelConfig& config, int64_t requested) {
  if (requested > 0) return requested;
  if (config.n_ctx_train > 0) return std::min(config.n_ctx_train, kDefaultMaxContext);
  return kDefaultMaxContext;
}

Session::Session(Model& model, ThreadPool& pool, int64_t n_ctx)
    : model_(model),
      pool_(pool),
      n_ctx_(resolve_context(model.config(), n_ctx)),
      memory_(make_dense_memory(model.memory_layout(n_ctx_))),
      last_logits_(static_cast<size_t>(model.config().n_vocab), 0.0f) {}

Session::Session(Model& model, ThreadPool& pool, int64_t n_ctx, std::unique_ptr<Memory> memory)
    : model_(model),
      pool_(pool),
      n_ctx_(resolve_context(model.config(), n_ctx)),
      memory_(memory ? std::move(memory) : make_dense_memory(model.memory_layout(n_ctx_))),
      last_logits_(static_cast<size_t>(model.config().n_vocab), 0.0f) {}

Status Session::decode(std::span<const TokenId> tokens, int n_batch, std::vector<float>* all_logits,
                       const ProgressFn& progress) {
  if (tokens.empty()) return Status::ok();
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n_past_ + n > n_ctx_) {
    return make_error("cannot decode ", std::to_string(n), " tokens at position ", std::to_string(n_past_),
                      ": the context holds ", std::to_string(n_ctx_));
  }
  const size_t n_vocab = last_logits_.size();
  const int64_t batch = n_batch > 0 ? n_batch : n;
  size_t first_row = 0;
  if (all_logits != nullptr) {
    first_row = all_logits->size();
    all_logits->resize(first_row + static_cast<size_t>(n) * n_vocab);
  }
  // Without all logits (a prompt before generation), the memory's exact
  // tail runs one token per forward call.
  const int64_t tail = all_logits == nullptr ? std::clamp<int64_t>(memory_->exact_tail(), 0, n - 1) : 0;
  // One token without all logits: a generation step (the sampled token).
  memory_->set_generating(n == 1 && all_logits == nullptr);
  for (int64_t i = 0; i < n;) {
    const int64_t len = i < n - tail ? std::min(batch, n - tail - i) : 1;
    auto chunk = tokens.subspan(static_cast<size_t>(i), static_cast<size_t>(len));
    float* out = all_logits != nullptr ? all_logits->data() + first_row + static_cast<size_t>(i) * n_vocab
                                       : last_logits_.data();
    ENGRAM_RETURN_IF_ERROR(model_.forward(chunk, n_past_, 0, *memory_, out, all_logits != nullptr, pool_));
    ENGRAM_RETURN_IF_ERROR(memory_->last_error());  // e.g. a spilled block that could not be read back
    n_past_ += len;
    i += len;
    if (progress) progress(i, n);
  }
  if (all_logits != nullptr) {
    const float* last = all_logits->data() + all_logits->size() - n_vocab;
    std::copy(last, last + n_vocab, last_logits_.begin());
  }
  return Status::ok();
}

void Session::reset() {
  memory_->remove(0, 0, -1);
  n_past_ = 0;
}

void Session::rewind(int64_t n_past) {
  if (n_past < 0 || n_past >= n_past_) return;
  memory_->remove(0, n_past, -1);
  n_past_ = n_past;
}

const char* stop_reason_name(StopReason r) {
  switch (r) {
    case StopReason::N_PREDICT: return "n_predict reached";
    case StopReason::END_OF_GENERATION: return "end of generation";
    case StopReason::BOS: return "BOS";
    case StopReason::CONTEXT_FULL: return "context full";
    case StopReason::CALLER: return "stopped by caller";
  }
  return "?";
}

std::string GenerateStats::summary() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "prompt: %d tokens, %.1f tok/s | generated: %d tokens, %.1f tok/s", n_prompt,
                prompt_tokens_per_second(), n_generated, generate_tokens_per_second());
  return buf;
}

Expected<GenerateStats> generate(Session& session, std::span<const TokenId> prompt, const GenerateParams& params,
                                 const TokenCallback& on_token) {
  if (prompt.empty()) return make_error("empty prompt: nothing to generate from (the tokenizer added no BOS)");
  if (static_cast<int64_t>(prompt.size()) > session.n_ctx() - session.n_past()) {
    return make_error("prompt has ", std::to_string(prompt.size()), " tokens but the context holds ",
                      std::to_string(session.n_ctx() - session.n_past()));
  }
  const Tokenizer& tok = session.tokenizer();
  GenerateStats stats;
  stats.n_prompt = static_cast<int>(prompt.size());

  auto t0 = std::chrono::steady_clock::now();
  ENGRAM_RETURN_IF_ERROR(session.decode(prompt, params.n_batch, nullptr, params.on_prompt_progress));
  stats.prompt_seconds = seconds_since(t0);

  Sampler sampler(params.sampler);
  std::vector<TokenId> history(prompt.begin(), prompt.end());
  t0 = std::chrono::steady_clock::now();
  for (;;) {
    if (params.n_predict >= 0 && stats.n_generated >= params.n_predict) {
      stats.stop = StopReason::N_PREDICT;
      break;
    }
    const TokenId id = sampler.sample(session.logits(), history);
    if (params.stop_at_bos && id == tok.bos()) {
      stats.stop = StopReason::BOS;
      break;
    }
    if (!params.ignore_eos && tok.is_eog(id)) {
      stats.stop = StopReason::END_OF_GENERATION;
      break;
    }
    ++stats.n_generated;
    history.push_back(id);
    if (!on_token(id)) {
      stats.stop = StopReason::CALLER;
      break;
    }
    // The last token of a run is never decoded (as in run.c): nothing would read its logits.
    if (params.n_predict >= 0 && stats.n_generated >= params.n_predict) {
      stats.stop = StopReason::N_PREDICT;
      break;
    }
    if (session.n_past() >= session.n_ctx()) {
      stats.stop = StopReason::CONTEXT_FULL;
      break;
    }
    const TokenId one[1] = {id};
    ENGRAM_RETURN_IF_ERROR(session.decode(one, 1));
  }
  stats.generate_seconds = seconds_since(t0);
  return stats;
}

std::string TokenPrinter::push(TokenId id) {
  const TokenId prev = prev_;
  prev_ = id;
  if (id < 0 || id >= tokenizer_.n_vocab()) return "";
  std::string piece = tokenizer_.token_to_piece(id, /*render_special=*/false);
  if (prev >= 0 && prev == tokenizer_.bos() && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
  if (piece.size() == 1) {
    const unsigned char c = static_cast<unsigned char>(piece[0]);
    if (c < 0x80 && !std::isprint(c) && !std::isspace(c)) return "";
  }
  return utf8_.push(piece);
}

}  // namespace engram
