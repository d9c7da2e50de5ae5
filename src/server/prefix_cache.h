// Context caching (the engine's prefix cache). In RAM, every slot's
// sequence keeps the K/V of the tokens it last held, and a new request takes
// the slot sharing the longest prefix with its prompt (engine.cpp). On disk,
// DiskPrefixCache keeps prompt prefixes' K/V across requests and restarts.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "memory/memory.h"
#include "model/model.h"
#include "util/status.h"

namespace engram::server {

// How many tokens a and b share from the start.
size_t common_prefix(std::span<const TokenId> a, std::span<const TokenId> b);

// What identifies a model's K/V: architecture, sizes and a sample of the
// weight bytes, so models sharing a cache directory never mix their entries.
uint64_t model_fingerprint(const Model& model);

// K/V of prompt prefixes in a directory, found again by the hash of their
// tokens. A prompt is saved at its longest prefix that is a multiple of
// `block` tokens; a later prompt hashes its own prefixes at those multiples
// and takes the longest one found (the file names are the index):
//   p<n>-<hash>.tok   an entry's n tokens (compared on load: a hash
//                     collision never serves another prompt's K/V)
//   p<n>-<hash>.kv    its positions [0, n) (Memory::save_seq)
//   p<m>-<hash>.link  for every shorter multiple m: the name of an entry
//                     that starts with those m tokens (loaded, then cut to m)
// The directory is kept under max_bytes by deleting the least recently used
// entries (a load counts as a use) and the links left without an entry.
class DiskPrefixCache {
 public:
  // Creates `dir` when missing; an error names it when it cannot.
  static Expected<std::unique_ptr<DiskPrefixCache>> open(const std::string& dir, int64_t max_bytes, int block,
                                                         uint64_t model_key);

  // Loads into `seq` of `memory` the longest saved prefix of `prompt` with
  // more than `at_least` and at most `at_most` tokens. Returns its length,
  // 0 when there is none (then `seq` is untouched). Broken entries are
  // deleted and skipped.
  int64_t load_longest(std::span<const TokenId> prompt, int64_t at_least, int64_t at_most, Memory& memory, int seq);

  // Saves the longest block-multiple prefix of `prompt` from `seq` (which
  // must hold at least that many positions), unless it is saved already,
  // then evicts down to max_bytes.
  Status save(std::span<const TokenId> prompt, const Memory& memory, int seq);

  // Bytes of all entries in the directory.
  int64_t bytes() const;
  const std::string& dir() const { return dir_; }

 private:
  DiskPrefixCache(std::string dir, int64_t max_bytes, int block, uint64_t model_key)
      : dir_(std::move(dir)), max_bytes_(max_bytes), block_(block), model_key_(model_key) {}
  std::string base_name(int64_t n, uint64_t hash) const;
  std::string path(const std::string& base, const char* ext) const;
  void evict();

  std::string dir_;
  int64_t max_bytes_;
  int block_;
  uint64_t model_key_;
};

}  // namespace engram::server
