#include "memory/key_index.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"

namespace engram {

namespace {

constexpr size_t kEntriesPerChunk = 256;

float row_scale(float row_max) { return row_max / 127.f; }

int8_t round_to_int8(float x, float scale) {
  if (scale == 0.f) return 0;
  return static_cast<int8_t>(std::clamp(std::nearbyint(x / scale), -127.f, 127.f));
}

}  // namespace

KeyIndex::KeyIndex(int block_size, int k_dim)
    : block_size_(std::max(block_size, 1)),
      k_dim_(std::max(k_dim, 0)),
      // Padded to 16 bytes so that every entry's scales stay float-aligned.
      entry_bytes_((static_cast<size_t>(block_size_) * (sizeof(float) + static_cast<size_t>(k_dim_)) + 15) / 16 *
                   16) {}

KeyIndex::KeyIndex(const KeyIndex& other)
    : block_size_(other.block_size_), k_dim_(other.k_dim_), entry_bytes_(other.entry_bytes_) {
  for (size_t e = 0; e < other.n_entries_; ++e) append_raw(other.entry_data(e));
}

KeyIndex& KeyIndex::operator=(const KeyIndex& other) {
  if (this != &other) *this = KeyIndex(other);
  return *this;
}

uint8_t* KeyIndex::slot(size_t entry) {
  return chunks_[entry / kEntriesPerChunk].get() + (entry % kEntriesPerChunk) * entry_bytes_;
}

const uint8_t* KeyIndex::entry_data(size_t entry) const {
  return chunks_[entry / kEntriesPerChunk].get() + (entry % kEntriesPerChunk) * entry_bytes_;
}

void KeyIndex::append_raw(const uint8_t* bytes) {
  if (n_entries_ == chunks_.size() * kEntriesPerChunk)
    chunks_.push_back(std::make_unique<uint8_t[]>(kEntriesPerChunk * entry_bytes_));
  std::memcpy(slot(n_entries_), bytes, entry_bytes_);
  ++n_entries_;
}

void KeyIndex::append(const float* keys) {
  const size_t B = static_cast<size_t>(block_size_), kd = static_cast<size_t>(k_dim_);
  std::vector<uint8_t> entry(entry_bytes_);
  auto* scales = reinterpret_cast<float*>(entry.data());
  auto* cols = reinterpret_cast<int8_t*>(entry.data() + B * sizeof(float));
  for (size_t r = 0; r < B; ++r) {
    const float* row = keys + r * kd;
    float row_max = 0.f;
    for (size_t d = 0; d < kd; ++d) row_max = std::max(row_max, std::fabs(row[d]));
    scales[r] = row_scale(row_max);
    for (size_t d = 0; d < kd; ++d) cols[d * B + r] = round_to_int8(row[d], scales[r]);
  }
  append_raw(entry.data());
}

void KeyIndex::truncate(size_t n) {
  n_entries_ = std::min(n, n_entries_);
  chunks_.resize((n_entries_ + kEntriesPerChunk - 1) / kEntriesPerChunk);
}

float KeyIndex::max_dot(size_t entry, const float* q) const {
  const uint8_t* e = entry_data(entry);
  const size_t B = static_cast<size_t>(block_size_);
  return kernels::max_dot_i8_cols(reinterpret_cast<const int8_t*>(e + B * sizeof(float)),
                                  reinterpret_cast<const float*>(e), B, static_cast<size_t>(k_dim_), q);
}

size_t KeyIndex::bytes() const {
  return sizeof(*this) + chunks_.capacity() * sizeof(chunks_[0]) + chunks_.size() * kEntriesPerChunk * entry_bytes_;
}

float KeyIndex::rounded(float x, float row_max) {
  const float scale = row_scale(row_max);
  return static_cast<float>(round_to_int8(x, scale)) * scale;
}

}  // namespace engram
