// Storage of Engram memory's blocks.
//
// A "unit" is one block of one KV head: block_size consecutive positions'
// keys and values, compressed by a BlockCodec into a fixed number of bytes.
// Units are immutable once stored, so they can be shared between sequences
// (copy) by reference counting, and a unit written once to the spill file
// never needs writing again.
//
// BlockStore keeps units in RAM up to a capacity; beyond it, the least
// recently used units are written to a spill file (pwrite) and read back on
// demand (pread). Each unit carries a checksum, so a spill file that was
// truncated, overwritten or deleted gives an Error naming the file and the
// unit instead of garbage attention.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "memory/memory.h"
#include "util/status.h"

namespace engram {

// Encodes block_size rows of keys [k_dim] and values [v_dim] of one KV head.
//   F32:  k f32 [B, k_dim] | v f32 [B, v_dim]                     (exact)
//   F16:  k f16 [B, k_dim] | v f16 [B, v_dim]     |err| <= 2^-11 |x| (normal range)
//   INT8: k_scale f32 [B] | k i8 [B, k_dim] | v_scale f32 [B] | v i8 [B, v_dim]
//         symmetric per row: scale = max|x| / 127, |err| <= scale / 2
// Per-row scales (rather than one per block) keep one large-magnitude token
// from flattening its 127 neighbours' keys, which retrieval depends on.
// v_dim 0: keys only (MemoryLayout::values_in_keys: the values are read from
// the decoded key rows); v is then neither read nor returned (null).
class BlockCodec {
 public:
  BlockCodec(BlockCompression compression, int block_size, int k_dim, int v_dim);

  BlockCompression compression() const { return compression_; }
  int block_size() const { return block_size_; }
  size_t unit_bytes() const { return unit_bytes_; }

  // k rows start k_stride floats apart (likewise v): the stored KV rows of
  // one head are interleaved with the other heads'.
  void encode(const float* k, size_t k_stride, const float* v, size_t v_stride, uint8_t* unit) const;
  // Exact float rows of a unit: for F32 these point into the unit itself,
  // otherwise the unit is decoded into k_buf [B, k_dim] and v_buf [B, v_dim].
  void rows(const uint8_t* unit, float* k_buf, float* v_buf, const float** k, const float** v) const;

  // The largest |decoded - x| encode allows for element x in a row whose
  // largest magnitude is row_max (what the tests check against).
  float error_bound(float x, float row_max) const;

 private:
  BlockCompression compression_;
  int block_size_, k_dim_, v_dim_;
  size_t unit_bytes_;
};

class BlockStore {
 public:
  // spill_path "": a fresh file in the temp dir, made on the first spill and
  // removed with the store. A given path is created (truncated) and kept.
  BlockStore(size_t unit_bytes, std::string spill_path);
  ~BlockStore();
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  size_t unit_bytes() const { return unit_bytes_; }
  // Cap on resident unit bytes (SIZE_MAX: no cap). Pinned units may exceed
  // it until unpin_all().
  void set_capacity(size_t bytes) { capacity_ = bytes; }
  size_t capacity() const { return capacity_; }

  // Stores a copy of unit_bytes bytes; the unit starts with one reference.
  // May spill older units to stay within the capacity.
  Expected<uint32_t> put(const uint8_t* data);
  void retain(uint32_t id);
  // Drops a reference; the last one frees the unit (RAM and file slot).
  void release(uint32_t id);

  // Makes a unit resident and keeps it so until unpin_all(): the pointer is
  // valid until then. Not thread-safe: pin from one thread, then read the
  // pinned units from many.
  Expected<const uint8_t*> pin(uint32_t id);
  // Unpins everything, then spills down to the capacity.
  Status unpin_all();
  // Copies a unit out (resident or not) without changing the LRU order.
  Status read(uint32_t id, uint8_t* dst) const;

  size_t resident_bytes() const { return n_resident_ * unit_bytes_; }
  size_t n_units() const { return n_live_; }
  size_t n_spill_reads() const { return n_spill_reads_; }
  // Bytes of RAM held: resident units and bookkeeping.
  size_t bytes_used() const;
  // The spill file's path ("" until the first spill).
  const std::string& spill_path() const { return path_; }

 private:
  struct Unit {
    std::unique_ptr<uint8_t[]> data;  // [unit_bytes], null when not resident
    int64_t file_slot = -1;           // where the unit lies in the spill file, -1: nowhere
    uint64_t checksum = 0;            // FNV-1a of the bytes
    uint32_t refs = 0;                // 0: the id is free
    bool pinned = false;
    std::list<uint32_t>::iterator lru;  // position in lru_ while resident
  };

  Status spill_to_capacity();
  Status write_out(uint32_t id);        // to the file, if not there yet
  Status read_in(uint32_t id, uint8_t* dst) const;
  Status open_file();
  std::string unit_name(uint32_t id) const;

  size_t unit_bytes_;
  size_t capacity_ = SIZE_MAX;
  std::string path_;
  bool remove_file_ = false;  // the store made the file, so it removes it
  int fd_ = -1;
  std::vector<Unit> units_;
  std::vector<uint32_t> free_ids_;
  std::vector<int64_t> free_slots_;
  int64_t n_slots_ = 0;
  std::list<uint32_t> lru_;  // resident units, least recently used first
  std::vector<uint32_t> pinned_;
  size_t n_resident_ = 0, n_live_ = 0;
  mutable size_t n_spill_reads_ = 0;
};

uint64_t fnv1a64(const uint8_t* data, size_t n);
// IEEE half to float, exact (equals quant's fp16_to_fp32 up to NaN payloads).
float half_to_float_fast(uint16_t h);

}  // namespace engram
