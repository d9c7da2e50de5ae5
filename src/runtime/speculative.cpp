#include "runtime/speculative.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "runtime/sampler.h"

namespace engram {

// ---- Draft model ------------------------------------------------------------

ModelDrafter::ModelDrafter(Model& draft, ThreadPool& pool, int64_t n_ctx, int n_batch)
    : session_(draft, pool, n_ctx), n_batch_(n_batch) {}

Status ModelDrafter::sync(std::span<const TokenId> history) {
  // Keep what the session shares with history, but always decode history's
  // last token again: its logits are what the first draft comes from.
  size_t keep = 0;
  while (keep < decoded_.size() && keep < history.size() && decoded_[keep] == history[keep]) ++keep;
  keep = std::min(keep, history.size() - 1);
  session_.rewind(static_cast<int64_t>(keep));
  decoded_.resize(keep);
  auto rest = history.subspan(keep);
  ENGRAM_RETURN_IF_ERROR(session_.decode(rest, n_batch_));
  calls_ += static_cast<int>((rest.size() + static_cast<size_t>(n_batch_) - 1) / static_cast<size_t>(n_batch_));
  decoded_.insert(decoded_.end(), rest.begin(), rest.end());
  return Status::ok();
}

Status ModelDrafter::begin(std::span<const TokenId> prompt) {
  session_.reset();
  decoded_.clear();
  if (prompt.empty()) return Status::ok();
  return sync(prompt);
}

Expected<std::vector<TokenId>> ModelDrafter::propose(std::span<const TokenId> history, int n) {
  std::vector<TokenId> out;
  if (n <= 0 || history.empty()) return out;
  ENGRAM_RETURN_IF_ERROR(sync(history));
  for (;;) {
    const TokenId id = argmax(session_.logits());
    out.push_back(id);
    if (static_cast<int>(out.size()) >= n || session_.n_past() >= session_.n_ctx()) break;
    const TokenId one[1] = {id};
    ENGRAM_RETURN_IF_ERROR(session_.decode(one, 1));
    ++calls_;
    decoded_.push_back(id);
  }
  return out;
}

// ---- Next-n (MTP) layers ------------------------------------------------------

MtpDrafter::MtpDrafter(Model& target, ThreadPool& pool, int64_t n_ctx)
    : model_(target),
      pool_(pool),
      memory_(make_dense_memory(target.mtp_memory_layout(resolve_context(target.config(), n_ctx)))),
      logits_(static_cast<size_t>(target.config().n_vocab)) {
  model_.keep_hidden(true);
}

MtpDrafter::~MtpDrafter() { model_.keep_hidden(false); }

Expected<std::unique_ptr<MtpDrafter>> MtpDrafter::create(Model& target, ThreadPool& pool, int64_t n_ctx) {
  if (target.mtp_layers() <= 0)
    return make_error(target.file().path(), ": --spec mtp needs next-n (MTP) layers (",
                      target.config().arch, ".nextn_predict_layers with blk.N.nextn.* tensors); this file has none");
  return std::unique_ptr<MtpDrafter>(new MtpDrafter(target, pool, n_ctx));
}

Status MtpDrafter::begin(std::span<const TokenId> prompt) {
  (void)prompt;  // its rows ran as the target's batches came in
  prefilling_ = false;
  return Status::ok();
}

Status MtpDrafter::advance(int64_t end, std::span<const TokenId> next) {
  const size_t D = static_cast<size_t>(model_.config().n_embd);
  if (end <= n_done_) return Status::ok();
  if (n_done_ < hidden_pos0_ || end > hidden_pos0_ + static_cast<int64_t>(hidden_.size() / D) ||
      next.size() != static_cast<size_t>(end - n_done_))
    return make_error("next-n drafting: no target hidden states for positions ", std::to_string(n_done_), "..",
                      std::to_string(end - 1));
  memory_->remove(0, n_done_, -1);  // drafts chained last time are not history
  const size_t rows = static_cast<size_t>(end - n_done_);
  out_.resize(rows * D);
  std::span<const float> h(hidden_.data() + static_cast<size_t>(n_done_ - hidden_pos0_) * D, rows * D);
  ENGRAM_RETURN_IF_ERROR(model_.mtp_forward(h, next, n_done_, *memory_, logits_.data(), out_.data(), pool_));
  ++calls_;
  n_done_ = end;
  // Rows before n_done_ are never read again.
  hidden_.erase(hidden_.begin(), hidden_.begin() + static_cast<ptrdiff_t>((n_done_ - hidden_pos0_) * D));
  hidden_pos0_ = n_done_;
  return Status::ok();
}

Status MtpDrafter::target_decoded(std::span<const TokenId> tokens, int64_t pos0) {
  const size_t D = static_cast<size_t>(model_.config().n_embd);
  std::span<const float> h = model_.last_hidden();
  if (h.size() != tokens.size() * D)
    return make_error("next-n drafting: the target kept ", std::to_string(h.size() / std::max<size_t>(D, 1)),
                      " hidden rows for ", std::to_string(tokens.size()), " tokens");
  // Rows from pos0 on replace whatever was kept for those positions.
  if (hidden_.empty()) hidden_pos0_ = pos0;
  if (pos0 < hidden_pos0_ || pos0 > hidden_pos0_ + static_cast<int64_t>(hidden_.size() / D))
    return make_error("next-n drafting: hidden states for position ", std::to_string(pos0), " do not follow those kept");
  hidden_.resize(static_cast<size_t>(pos0 - hidden_pos0_) * D);
  hidden_.insert(hidden_.end(), h.begin(), h.end());
  // Prompt batches are final: run their rows now rather than keep every
  // prompt position's hidden state (each row needs the token after it, so
  // a batch's last row waits for the next batch).
  if (!prefilling_ || pos0 + static_cast<int64_t>(tokens.size()) - 1 <= n_done_) return Status::ok();
  const int64_t end = pos0 + static_cast<int64_t>(tokens.size()) - 1;
  if (n_done_ + 1 < pos0) return make_error("next-n drafting: prompt batches out of order");
  return advance(end, tokens.subspan(static_cast<size_t>(n_done_ + 1 - pos0)));
}

Expected<std::vector<TokenId>> MtpDrafter::propose(std::span<const TokenId> history, int n) {
  std::vector<TokenId> out;
  if (n <= 0 || history.size() < 2) return out;
  const size_t D = static_cast<size_t>(model_.config().n_embd);
  // Rows (h_i, token i+1) for i in [n_done_, last): the target's hidden
  // states of the accepted positions and the tokens that followed them. The
  // last row's logits are the first draft.
  const int64_t last = static_cast<int64_t>(history.size()) - 1;  // the position the target has not decoded
  if (last <= n_done_) return out;  // nothing new to predict from (cannot happen after the first pick)
  ENGRAM_RETURN_IF_ERROR(advance(last, history.subspan(static_cast<size_t>(n_done_) + 1,
                                                       static_cast<size_t>(last - n_done_))));
  // Each further draft feeds the block its own output and the draft before.
  std::vector<float> h(out_.end() - static_cast<ptrdiff_t>(D), out_.end());
  const int64_t n_ctx = memory_->layout().n_ctx;
  for (;;) {
    const TokenId id = argmax(logits_);
    out.push_back(id);
    const int64_t pos = n_done_ + static_cast<int64_t>(out.size()) - 1;
    if (static_cast<int>(out.size()) >= n || pos >= n_ctx) break;
    const TokenId one[1] = {id};
    ENGRAM_RETURN_IF_ERROR(model_.mtp_forward(h, one, pos, *memory_, logits_.data(), out_.data(), pool_));
    ++calls_;
    std::copy(out_.begin(), out_.begin() + static_cast<ptrdiff_t>(D), h.begin());
  }
  return out;
}

// ---- Vocabulary check ---------------------------------------------------------

Status check_same_vocabulary(const Tokenizer& target, const std::string& target_path, const Tokenizer& draft,
                             const std::string& draft_path) {
  if (target.n_vocab() != draft.n_vocab())
    return make_error("draft model ", draft_path, " has ", std::to_string(draft.n_vocab()),
                      " tokens but the target ", target_path, " has ", std::to_string(target.n_vocab()),
                      ": speculative decoding needs the same vocabulary");
  for (TokenId id = 0; id < target.n_vocab(); ++id)
    if (target.token_text(id) != draft.token_text(id))
      return make_error("draft model ", draft_path, " and target ", target_path, " differ at token ",
                        std::to_string(id), " ('", draft.token_text(id), "' vs '", target.token_text(id),
                        "'): speculative decoding needs the same vocabulary");
  return Status::ok();
}

// ---- Generation -----------------------------------------------------------------

std::string SpeculativeStats::summary() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "draft: %d drafted, %d accepted (%.1f%%), %d target calls, %d draft calls", drafted,
                accepted, 100.0 * acceptance_rate(), target_calls, draft_calls);
  return buf;
}

Expected<GenerateStats> generate_speculative(Session& target, Drafter& drafter, std::span<const TokenId> prompt,
                                             const GenerateParams& params, const SpeculativeParams& spec,
                                             SpeculativeStats* spec_stats, const TokenCallback& on_token) {
  if (params.sampler.temperature > 0)
    return make_error("speculative decoding is greedy only: temperature ", std::to_string(params.sampler.temperature),
                      " asks for sampling (use --temp 0)");
  if (spec.n_draft < 1) return make_error("--draft-n must be at least 1, got ", std::to_string(spec.n_draft));
  if (prompt.empty()) return make_error("empty prompt: nothing to generate from (the tokenizer added no BOS)");
  if (static_cast<int64_t>(prompt.size()) > target.n_ctx() - target.n_past()) {
    return make_error("prompt has ", std::to_string(prompt.size()), " tokens but the context holds ",
                      std::to_string(target.n_ctx() - target.n_past()));
  }
  const Tokenizer& tok = target.tokenizer();
  GenerateStats stats;
  SpeculativeStats spec_counts;
  stats.n_prompt = static_cast<int>(prompt.size());

  // Prompt: the target in batches (the drafter sees each batch), then the drafter's own prefill.
  auto t0 = std::chrono::steady_clock::now();
  const int64_t start = target.n_past();
  int64_t reported = 0;
  Status seen = Status::ok();
  ENGRAM_RETURN_IF_ERROR(target.decode(prompt, params.n_batch, nullptr, [&](int64_t done, int64_t total) {
    if (seen.is_ok())
      seen = drafter.target_decoded(prompt.subspan(static_cast<size_t>(reported), static_cast<size_t>(done - reported)),
                                    start + reported);
    reported = done;
    if (params.on_prompt_progress) params.on_prompt_progress(done, total);
  }));
  ENGRAM_RETURN_IF_ERROR(seen);
  ENGRAM_RETURN_IF_ERROR(drafter.begin(prompt));
  stats.prompt_seconds = seconds_since(t0);

  Sampler sampler(params.sampler);
  std::vector<TokenId> history(prompt.begin(), prompt.end());
  // The target's choices not emitted yet; the last one is never decoded.
  std::vector<TokenId> picks = {sampler.sample(target.logits(), history)};
  std::vector<float> rows;  // [1 + drafts, n_vocab] verification logits
  const size_t n_vocab = static_cast<size_t>(target.n_vocab());
  t0 = std::chrono::steady_clock::now();
  for (;;) {
    // Emit the picks with generate()'s checks, in its order.
    bool stop = false;
    for (TokenId id : picks) {
      if (params.n_predict >= 0 && stats.n_generated >= params.n_predict) {
        stats.stop = StopReason::N_PREDICT;
      } else if (params.stop_at_bos && id == tok.bos()) {
        stats.stop = StopReason::BOS;
      } else if (!params.ignore_eos && tok.is_eog(id)) {
        stats.stop = StopReason::END_OF_GENERATION;
      } else {
        ++stats.n_generated;
        history.push_back(id);
        if (!on_token(id)) stats.stop = StopReason::CALLER;
        else if (params.n_predict >= 0 && stats.n_generated >= params.n_predict) stats.stop = StopReason::N_PREDICT;
        else if (static_cast<int64_t>(history.size()) - 1 >= target.n_ctx()) stats.stop = StopReason::CONTEXT_FULL;
        else continue;
      }
      stop = true;
      break;
    }
    if (stop) break;

    // Draft, bounded by the context and by the tokens still wanted (the
    // last token of a run is never decoded, as in generate()).
    const int64_t pos0 = static_cast<int64_t>(history.size()) - 1;  // the last pick's position
    int64_t room = target.n_ctx() - pos0 - 1;
    if (params.n_predict >= 0) room = std::min<int64_t>(room, params.n_predict - stats.n_generated - 1);
    const int want = static_cast<int>(std::clamp<int64_t>(room, 0, spec.n_draft));
    auto drafts = drafter.propose(history, want);
    if (!drafts) return drafts.error();
    if (static_cast<int>(drafts->size()) > want) drafts->resize(static_cast<size_t>(want));

    // Verify: the last pick and the drafts in one forward call, every row's logits.
    std::vector<TokenId> batch = {history.back()};
    batch.insert(batch.end(), drafts->begin(), drafts->end());
    rows.clear();
    ENGRAM_RETURN_IF_ERROR(target.decode(batch, static_cast<int>(batch.size()), &rows));
    ++spec_counts.target_calls;
    ENGRAM_RETURN_IF_ERROR(drafter.target_decoded(batch, pos0));
    picks.clear();
    std::vector<TokenId> seen_so_far = history;  // history as generate() would have it at each row
    for (size_t j = 0; j < batch.size(); ++j) {
      const TokenId pick = sampler.sample(std::span<const float>(rows.data() + j * n_vocab, n_vocab), seen_so_far);
      picks.push_back(pick);
      if (j >= drafts->size() || pick != (*drafts)[j]) break;
      seen_so_far.push_back(pick);
    }
    const int accepted = static_cast<int>(picks.size()) - 1;
    spec_counts.drafted += static_cast<int>(drafts->size());
    spec_counts.accepted += accepted;
    // The target keeps the last pick's row and the accepted drafts' rows.
    target.rewind(pos0 + 1 + accepted);
  }
  stats.generate_seconds = seconds_since(t0);
  spec_counts.draft_calls = drafter.forward_calls();
  if (spec_stats) *spec_stats = spec_counts;
  return stats;
}

}  // namespace engram
