// Needle in a haystack, in the style of RULER: facts ("needles") planted at a
// chosen depth of a long text, then a question whose answer is one of them.
//
// Default templates: the ones engram's own model is trained on
// (scripts/train/data.py), so that the shipped model is evaluated in
// distribution:
//   needle:       " The special magic number for {key} is {value}."
//   question:     " What is the special magic number for {key}? The special magic number for {key} is"
//   multi-value:  " What are all the special magic numbers for {key}? The special magic numbers for {key} are"
//   answer:       " {value}"  or  " {v1}, {v2}, {v3}"  (values in text order)
// Keys are common nouns, values numbers 100-999. The haystack is a list of
// text units (verses, lines); a prompt is BOS, whole units up to the length,
// the needles inserted at unit starts, then the question. Each unit, needle
// and question is tokenized on its own as a continuation (leading space), as
// the training code does.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/generate.h"
#include "tokenizer/tokenizer.h"
#include "util/status.h"

namespace engram {

enum class NiahTask { SINGLE, MULTIKEY, MULTIVALUE };
// "single" | "multikey" | "multivalue"; error names the value.
Expected<NiahTask> parse_niah_task(const std::string& name);
const char* niah_task_name(NiahTask task);

struct NiahTemplates {
  std::string needle = "The special magic number for {key} is {value}.";
  std::string question = "What is the special magic number for {key}? The special magic number for {key} is";
  std::string multi_question =
      "What are all the special magic numbers for {key}? The special magic numbers for {key} are";
};

// Replaces every "{key}" and "{value}" in `tmpl`.
std::string fill_template(std::string_view tmpl, std::string_view key, std::string_view value);

// Text units of a haystack file: its non-empty lines, whitespace runs collapsed to one space.
std::vector<std::string> haystack_units(std::string_view text);
// Verses of Debian's `bible -l N gen1:1-rev22:21` listing (lines "  <n> <verse>"),
// the KJV haystack engram's model is trained on.
std::vector<std::string> parse_bible_listing(std::string_view listing);

// Tokens of `text` continuing a stream (a leading space, no BOS): the SPM
// tokenizer's dummy prefix gives the space, other tokenizers get " " + text.
std::vector<TokenId> encode_continuation(const Tokenizer& tok, std::string_view text);

// The key candidates of the training code (single tokens in engram's vocabulary).
const std::vector<std::string>& default_niah_keys();

// "4K" -> 4096, "1M" -> 1048576, "1500" -> 1500 (K and M are powers of 1024).
Expected<int64_t> parse_token_count(std::string_view text);
// "4K,32K,1M" -> {4096, 32768, 1048576}; error names the bad item.
Expected<std::vector<int64_t>> parse_token_counts(std::string_view list);
// "0,25,50" -> {0, 0.25, 0.5} (percent, 0..100).
Expected<std::vector<double>> parse_depths(std::string_view list);
// 4096 -> "4K", 1048576 -> "1M", 1500 -> "1500".
std::string format_token_count(int64_t n);

struct NiahConfig {
  NiahTask task = NiahTask::SINGLE;
  int n_keys = 4;         // multikey: needles with distinct keys, one asked
  int n_values = 4;       // multivalue: values of the asked key
  int value_min = 100, value_max = 999;
  NiahTemplates templates;
};

struct NiahTrial {
  std::vector<TokenId> prompt;             // BOS, haystack with needles, question
  std::string answer;                      // "482" or "482, 517, 103"
  std::string key;
  std::vector<int> values;                 // of the asked key, in text order
  std::vector<int64_t> needle_positions;   // prompt index where each needle starts, ascending
  int64_t target_position = 0;             // where the needle placed at the asked depth starts
  int answer_tokens = 0;                   // tokens of the answer (as a continuation)
};

class NiahBuilder {
 public:
  // Tokenizes the units once. Error when nothing is left of the haystack or
  // there are fewer keys than the task needs.
  static Expected<NiahBuilder> create(const Tokenizer& tok, const std::vector<std::string>& units,
                                      std::vector<std::string> keys, NiahConfig config);

  // One trial of at most `length` prompt tokens with the asked needle at
  // `depth` (0..1) of the haystack; distractor needles (multikey) and the
  // other values (multivalue) go at uniformly random depths. The haystack
  // starts at a random unit and wraps around the end of the text. Same seed,
  // same trial.
  Expected<NiahTrial> make_trial(int64_t length, double depth, uint64_t seed) const;

  int64_t haystack_tokens() const { return total_tokens_; }
  const std::vector<std::string>& keys() const { return keys_; }
  const NiahConfig& config() const { return config_; }

 private:
  NiahBuilder() = default;

  const Tokenizer* tok_ = nullptr;
  std::vector<std::vector<TokenId>> units_;
  int64_t total_tokens_ = 0;
  std::vector<std::string> keys_;
  NiahConfig config_;
};

// A seed per (base seed, length index, depth index, trial): each memory mode
// sees the same trials.
uint64_t niah_trial_seed(uint64_t seed, size_t length_index, size_t depth_index, int trial);

// True when `generated` (the decoded continuation) begins, after leading
// spaces, with `answer`, and no digit follows it (so "4821" is not "482").
bool niah_correct(std::string_view generated, std::string_view answer);

struct NiahTrialResult {
  bool correct = false;
  std::string generated;
  int64_t n_prompt = 0;
  double prefill_seconds = 0;
  int n_decoded = 0;             // single-token forward passes after the prompt
  double decode_seconds = 0;
  uint64_t memory_bytes = 0;     // memory().bytes_used() after the prefill
};

// Resets the session, prefills the prompt (n_batch tokens per forward call,
// `progress` after each), then decodes greedily a few tokens past the
// answer's length and scores them.
Expected<NiahTrialResult> run_niah_trial(Session& session, const NiahTrial& trial, int n_batch,
                                         const ProgressFn& progress = {});

// An RGB image, rows top to bottom.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // [height, width, 3]
};

// One heatmap panel: accuracy[depth][length] in 0..1 (NaN: not measured).
struct NiahPanel {
  std::string title;                         // the memory mode
  std::vector<std::vector<double>> accuracy;
};

// Red (0) -> yellow -> green (1) for an accuracy.
void accuracy_color(double accuracy, uint8_t rgb[3]);

// Panels side by side, depth down and length across, each cell coloured by
// accuracy and labelled with its percentage; axes labelled with depths (%) and lengths.
RgbImage render_niah_heatmap(const std::vector<NiahPanel>& panels, const std::vector<double>& depths,
                             const std::vector<int64_t>& lengths);

}  // namespace engram
