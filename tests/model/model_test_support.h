// Helpers shared by the model tests: the reference models of ../shared/ref
// and teacher-forced logits. (One definition here, not one per test file, so
// that a unity build of engram_model_tests sees each name once.)
#pragma once

#include <algorithm>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "memory/memory.h"
#include "model/model.h"
#include "test_support.h"

namespace engram::test {

// The vocabulary of every tiny reference model (../shared/ref README section 2).
inline constexpr int kVocab = 512;

inline std::filesystem::path models_dir() { return ref_dir() / "models"; }

// The model at `path`, or nullptr after a failed expectation naming the error.
inline std::unique_ptr<Model> load_or_fail(const std::filesystem::path& path) {
  auto m = Model::load(path.string());
  EXPECT_TRUE(m.has_value()) << (m ? "" : m.error().message);
  return m ? std::move(m).value() : nullptr;
}

inline int argmax(const float* row, int n) { return static_cast<int>(std::max_element(row, row + n) - row); }

using MemoryFactory = std::function<std::unique_ptr<Memory>(const MemoryLayout&)>;

// Teacher-forced logits: the prompt in one batch (logits for every row), then
// each of `fed` one token at a time, in the memory `make` builds (dense when
// empty). Returns [prompt + fed, n_vocab].
inline std::vector<float> teacher_forced(Model& model, const std::vector<TokenId>& prompt,
                                         const std::vector<TokenId>& fed, ThreadPool& pool,
                                         const MemoryFactory& make = {}) {
  const int n_vocab = model.config().n_vocab;
  const size_t rows = prompt.size() + fed.size();
  const MemoryLayout layout = model.memory_layout(static_cast<int64_t>(rows));
  auto memory = make ? make(layout) : make_dense_memory(layout);
  std::vector<float> logits(rows * n_vocab);
  Status s = model.forward(prompt, 0, 0, *memory, logits.data(), true, pool);
  EXPECT_TRUE(s.is_ok()) << s.message();
  for (size_t k = 0; k < fed.size(); ++k) {
    const int64_t pos = static_cast<int64_t>(prompt.size() + k);
    Status st = model.forward(std::span<const TokenId>(&fed[k], 1), pos, 0, *memory,
                              logits.data() + static_cast<size_t>(pos) * n_vocab, false, pool);
    EXPECT_TRUE(st.is_ok()) << st.message();
  }
  return logits;
}

}  // namespace engram::test
