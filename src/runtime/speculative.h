// Speculative decoding: a cheap drafter proposes the next few tokens and the
// target model checks them all in one forward call (the logits of every row
// at once), keeping the longest prefix it agrees with plus its own next token.
// Each verification call yields 1 .. n_draft + 1 tokens for one pass over
// the target's weights.
//
// Only greedy decoding is speculated: the target's choice at every position
// is the same deterministic function of the same logits and history as in
// generate(), so the output is the same token for token. (Sampling would
// need rejection sampling against the draft's distribution; not done.)
//
// Drafters: another model with the same vocabulary (ModelDrafter, `engram
// run --draft`), or the target's own next-n layers (MtpDrafter, `--spec mtp`).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "model/model.h"
#include "runtime/generate.h"
#include "util/status.h"

namespace engram {

// Proposes tokens likely to follow a history.
class Drafter {
 public:
  virtual ~Drafter() = default;
  // After the target has prefilled `prompt` (timed with the prompt).
  virtual Status begin(std::span<const TokenId> prompt) = 0;
  // Called after every target forward call: it ran `tokens` at positions
  // pos0 .. (prompt chunks, verification batches); some of those positions
  // may be taken back afterwards.
  virtual Status target_decoded(std::span<const TokenId> tokens, int64_t pos0) {
    (void)tokens, (void)pos0;
    return Status::ok();
  }
  // Up to n tokens to follow `history` (prompt + output so far; the target
  // has decoded all of it but the last token).
  virtual Expected<std::vector<TokenId>> propose(std::span<const TokenId> history, int n) = 0;
  // Forward calls the drafter has made.
  virtual int forward_calls() const = 0;
};

// A draft model of the same vocabulary, run greedily in its own dense
// Session (same context length as the target).
class ModelDrafter final : public Drafter {
 public:
  ModelDrafter(Model& draft, ThreadPool& pool, int64_t n_ctx, int n_batch = 512);
  Status begin(std::span<const TokenId> prompt) override;
  Expected<std::vector<TokenId>> propose(std::span<const TokenId> history, int n) override;
  int forward_calls() const override { return calls_; }

 private:
  Status sync(std::span<const TokenId> history);  // decodes what the session lacks of history
  Session session_;
  int n_batch_;
  std::vector<TokenId> decoded_;  // the tokens the session holds, in order
  int calls_ = 0;
};

// The target's own next-n (MTP) block: from the target's hidden state at
// position i and the token at i + 1 it predicts the token at i + 2; more
// drafts chain the block on its own output. Keeps its own one-layer dense
// memory in step with the accepted tokens. Turns on target.keep_hidden().
class MtpDrafter final : public Drafter {
 public:
  // Error when the model has no next-n layers.
  static Expected<std::unique_ptr<MtpDrafter>> create(Model& target, ThreadPool& pool, int64_t n_ctx);
  ~MtpDrafter() override;
  Status begin(std::span<const TokenId> prompt) override;
  Status target_decoded(std::span<const TokenId> tokens, int64_t pos0) override;
  Expected<std::vector<TokenId>> propose(std::span<const TokenId> history, int n) override;
  int forward_calls() const override { return calls_; }

 private:
  MtpDrafter(Model& target, ThreadPool& pool, int64_t n_ctx);
  // Runs the block on rows [n_done_, end) (next: the token after each) and
  // leaves the last row's logits in logits_ and outputs in out_.
  Status advance(int64_t end, std::span<const TokenId> next);
  Model& model_;
  ThreadPool& pool_;
  std::unique_ptr<Memory> memory_;   // the next-n block's latents: positions [0, n_done_) plus chained drafts
  int64_t n_done_ = 0;               // positions i whose row (h_i, token i+1) the memory holds
  bool prefilling_ = true;           // until begin(): target batches are prompt, final
  int64_t hidden_pos0_ = 0;          // position of hidden_'s first row
  std::vector<float> hidden_;        // [rows, n_embd] target hidden states from hidden_pos0_ on
  std::vector<float> logits_, out_;  // [n_vocab], [rows, n_embd]
  int calls_ = 0;
};

// Error naming both files unless the two tokenizers have the same size and
// the same token text at every id.
Status check_same_vocabulary(const Tokenizer& target, const std::string& target_path, const Tokenizer& draft,
                             const std::string& draft_path);

struct SpeculativeParams {
  int n_draft = 4;  // tokens proposed per verification call (>= 1)
};

struct SpeculativeStats {
  int drafted = 0;        // tokens the drafter proposed
  int accepted = 0;       // of those, tokens the target agreed with
  int target_calls = 0;   // target forward calls after the prompt (one per verification)
  int draft_calls = 0;    // drafter forward calls, prompt included
  double acceptance_rate() const { return drafted > 0 ? static_cast<double>(accepted) / drafted : 0.0; }
  // "draft: 120 drafted, 96 accepted (80.0%), 31 target calls, 150 draft calls"
  std::string summary() const;
};

// generate() with speculation: the same tokens, stop reasons and callbacks
// as generate() with params.sampler.temperature <= 0 (penalties allowed);
// an error for temperature > 0. The target session should be empty and its
// memory must take back positions exactly (dense). `spec_stats` (may be
// null) receives the speculation counters.
Expected<GenerateStats> generate_speculative(Session& target, Drafter& drafter, std::span<const TokenId> prompt,
                                             const GenerateParams& params, const SpeculativeParams& spec,
                                             SpeculativeStats* spec_stats, const TokenCallback& on_token);

}  // namespace engram
