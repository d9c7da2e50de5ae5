// Block codec (f32 / fp16 / int8 rows) and the RAM + spill-file block store.
#include "memory/block_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "quant/quant.h"

namespace engram {

// ---------------------------------------------------------------- codec

namespace {

size_t row_bytes(BlockCompression c, int dim) {
  switch (c) {
    case BlockCompression::F32: return static_cast<size_t>(dim) * 4;
    case BlockCompression::F16: return static_cast<size_t>(dim) * 2;
    case BlockCompression::INT8: return static_cast<size_t>(dim) + 4;  // + the row's scale
  }
  return 0;
}

// INT8 stores a section's scales first, then its rows: [B] f32 | [B, dim] i8.
void encode_rows(BlockCompression c, const float* x, size_t stride, int n, int dim, uint8_t* dst) {
  switch (c) {
    case BlockCompression::F32:
      for (int r = 0; r < n; ++r) std::memcpy(dst + static_cast<size_t>(r) * dim * 4, x + r * stride, dim * 4u);
      return;
    case BlockCompression::F16: {
      auto* h = reinterpret_cast<uint16_t*>(dst);  // dst is 4-byte aligned within a new[] buffer
      for (int r = 0; r < n; ++r)
        for (int i = 0; i < dim; ++i) h[static_cast<size_t>(r) * dim + i] = fp32_to_fp16(x[r * stride + i]);
      return;
    }
    case BlockCompression::INT8: {
      auto* scales = reinterpret_cast<float*>(dst);
      auto* q = reinterpret_cast<int8_t*>(dst + static_cast<size_t>(n) * 4);
      for (int r = 0; r < n; ++r) {
        const float* row = x + r * stride;
        float amax = 0.f;
        for (int i = 0; i < dim; ++i) amax = std::max(amax, std::fabs(row[i]));
        const float scale = amax / 127.f;
        const float inv = scale > 0.f ? 1.f / scale : 0.f;
        scales[r] = scale;
        for (int i = 0; i < dim; ++i) {
          const float v = std::nearbyint(row[i] * inv);
          q[static_cast<size_t>(r) * dim + i] = static_cast<int8_t>(std::clamp(v, -127.f, 127.f));
        }
      }
      return;
    }
  }
}

}  // namespace

// Branch-free half -> float (the compiler vectorises the loop using it):
// a normal half's exponent and mantissa shifted into float position need a
// rebias of 2^(127-15) = 2^112; a subnormal's mantissa placed below 0.5's
// exponent, minus 0.5, is mantissa * 2^-24 exactly.
float half_to_float_fast(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // drops the sign
  const float normal = std::bit_cast<float>((two_w >> 4) + (0xE0u << 23)) * 0x1p-112f;
  const float subnormal = std::bit_cast<float>((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude =
      two_w < (1u << 27) ? std::bit_cast<uint32_t>(subnormal) : std::bit_cast<uint32_t>(normal);
  return std::bit_cast<float>(sign | magnitude);
}

namespace {

void decode_rows(BlockCompression c, const uint8_t* src, int n, int dim, float* out) {
  const size_t count = static_cast<size_t>(n) * dim;
  switch (c) {
    case BlockCompression::F32: std::memcpy(out, src, count * 4); return;
    case BlockCompression::F16: {
      const auto* h = reinterpret_cast<const uint16_t*>(src);
      for (size_t i = 0; i < count; ++i) out[i] = half_to_float_fast(h[i]);
      return;
    }
    case BlockCompression::INT8: {
      const auto* scales = reinterpret_cast<const float*>(src);
      const auto* q = reinterpret_cast<const int8_t*>(src + static_cast<size_t>(n) * 4);
      for (int r = 0; r < n; ++r)
        for (int i = 0; i < dim; ++i)
          out[static_cast<size_t>(r) * dim + i] = scales[r] * static_cast<float>(q[static_cast<size_t>(r) * dim + i]);
      return;
    }
  }
}

}  // namespace

BlockCodec::BlockCodec(BlockCompression compression, int block_size, int k_dim, int v_dim)
    : compression_(compression), block_size_(block_size), k_dim_(k_dim), v_dim_(v_dim) {
  // Sections are padded to 4 bytes so every f32/f16 array stays aligned.
  auto pad4 = [](size_t n) { return (n + 3) & ~size_t{3}; };
  // v_dim 0 (values in the keys): no value section at all, not even int8 scales.
  const size_t v_bytes = v_dim > 0 ? pad4(row_bytes(compression, v_dim) * block_size) : 0;
  unit_bytes_ = pad4(row_bytes(compression, k_dim) * block_size) + v_bytes;
}

void BlockCodec::encode(const float* k, size_t k_stride, const float* v, size_t v_stride, uint8_t* unit) const {
  const size_t k_bytes = (row_bytes(compression_, k_dim_) * block_size_ + 3) & ~size_t{3};
  std::memset(unit, 0, unit_bytes_);  // padding bytes are defined (checksums, files)
  encode_rows(compression_, k, k_stride, block_size_, k_dim_, unit);
  if (v_dim_ > 0) encode_rows(compression_, v, v_stride, block_size_, v_dim_, unit + k_bytes);
}

void BlockCodec::rows(const uint8_t* unit, float* k_buf, float* v_buf, const float** k, const float** v) const {
  const size_t k_bytes = (row_bytes(compression_, k_dim_) * block_size_ + 3) & ~size_t{3};
  if (compression_ == BlockCompression::F32) {
    *k = reinterpret_cast<const float*>(unit);
    *v = v_dim_ > 0 ? reinterpret_cast<const float*>(unit + k_bytes) : nullptr;
    return;
  }
  decode_rows(compression_, unit, block_size_, k_dim_, k_buf);
  if (v_dim_ > 0) decode_rows(compression_, unit + k_bytes, block_size_, v_dim_, v_buf);
  *k = k_buf;
  *v = v_dim_ > 0 ? v_buf : nullptr;
}

float BlockCodec::error_bound(float x, float row_max) const {
  switch (compression_) {
    case BlockCompression::F32: return 0.f;
    // Round to nearest: half an ulp of 11 significant bits; subnormals step 2^-24.
    case BlockCompression::F16: return std::max(std::fabs(x) * 0x1p-11f, 0x1p-25f);
    // Round to nearest multiple of scale, plus float rounding of x / scale.
    case BlockCompression::INT8: return row_max / 127.f * 0.5f * (1.f + 1e-5f) + std::fabs(x) * 1e-6f;
  }
  return 0.f;
}

// ---------------------------------------------------------------- store

uint64_t fnv1a64(const uint8_t* data, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= data[i];
    h *= 1099511628211ull;
  }
  return h;
}

BlockStore::BlockStore(size_t unit_bytes, std::string spill_path)
    : unit_bytes_(unit_bytes), path_(std::move(spill_path)) {}

BlockStore::~BlockStore() {
  if (fd_ >= 0) ::close(fd_);
  if (remove_file_ && !path_.empty()) {
    std::error_code ec;
    std::filesystem::remove(path_, ec);  // best effort
  }
}

size_t BlockStore::bytes_used() const {
  return sizeof(*this) + resident_bytes() + units_.capacity() * sizeof(Unit) + lru_.size() * 3 * sizeof(void*) +
         (free_ids_.capacity() + pinned_.capacity()) * sizeof(uint32_t) + free_slots_.capacity() * sizeof(int64_t);
}

std::string BlockStore::unit_name(uint32_t id) const {
  const Unit& u = units_[id];
  return "block unit " + std::to_string(id) + " (file offset " +
         std::to_string(static_cast<long long>(u.file_slot) * static_cast<long long>(unit_bytes_)) + ")";
}

Status BlockStore::open_file() {
  if (fd_ >= 0) return Status::ok();
  if (path_.empty()) {
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
    if (ec) dir = "/tmp";
    std::string tmpl = (dir / "engram-blocks-XXXXXX").string();
    fd_ = ::mkstemp(tmpl.data());
    if (fd_ < 0) return make_error(tmpl, ": cannot create the block spill file: ", std::strerror(errno));
    path_ = tmpl;
    remove_file_ = true;
    return Status::ok();
  }
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd_ < 0) return make_error(path_, ": cannot open the block spill file: ", std::strerror(errno));
  return Status::ok();
}

Expected<uint32_t> BlockStore::put(const uint8_t* data) {
  uint32_t id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
  } else {
    id = static_cast<uint32_t>(units_.size());
    units_.emplace_back();
  }
  Unit& u = units_[id];
  u.data.reset(new uint8_t[unit_bytes_]);
  std::memcpy(u.data.get(), data, unit_bytes_);
  u.checksum = fnv1a64(data, unit_bytes_);
  u.refs = 1;
  u.file_slot = -1;
  u.pinned = false;
  u.lru = lru_.insert(lru_.end(), id);
  ++n_resident_;
  ++n_live_;
  ENGRAM_RETURN_IF_ERROR(spill_to_capacity());
  return id;
}

void BlockStore::retain(uint32_t id) {
  if (id < units_.size() && units_[id].refs > 0) ++units_[id].refs;
}

void BlockStore::release(uint32_t id) {
  if (id >= units_.size() || units_[id].refs == 0) return;
  Unit& u = units_[id];
  if (--u.refs > 0) return;
  if (u.data) {
    lru_.erase(u.lru);
    u.data.reset();
    --n_resident_;
  }
  if (u.file_slot >= 0) free_slots_.push_back(u.file_slot);
  u.file_slot = -1;
  u.pinned = false;
  free_ids_.push_back(id);
  --n_live_;
}

Status BlockStore::write_out(uint32_t id) {
  Unit& u = units_[id];
  if (u.file_slot >= 0) return Status::ok();  // immutable: the file copy is current
  ENGRAM_RETURN_IF_ERROR(open_file());
  int64_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = n_slots_++;
  }
  const off_t offset = static_cast<off_t>(slot) * static_cast<off_t>(unit_bytes_);
  size_t done = 0;
  while (done < unit_bytes_) {
    const ssize_t w = ::pwrite(fd_, u.data.get() + done, unit_bytes_ - done, offset + static_cast<off_t>(done));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      free_slots_.push_back(slot);
      return make_error(path_, ": cannot write block unit ", std::to_string(id), " at offset ",
                        std::to_string(static_cast<long long>(offset)), ": ",
                        w < 0 ? std::strerror(errno) : "no progress");
    }
    done += static_cast<size_t>(w);
  }
  u.file_slot = slot;
  return Status::ok();
}

Status BlockStore::read_in(uint32_t id, uint8_t* dst) const {
  const Unit& u = units_[id];
  if (fd_ < 0 || u.file_slot < 0) return make_error("block store: ", unit_name(id), " is neither in RAM nor on file");
  // The file is opened once; a deleted file is still readable through the
  // descriptor, so check that it is still linked and say so plainly.
  struct stat st;
  if (::fstat(fd_, &st) != 0 || st.st_nlink == 0)
    return make_error(path_, ": block spill file is missing (deleted while in use); cannot read ", unit_name(id));
  const off_t offset = static_cast<off_t>(u.file_slot) * static_cast<off_t>(unit_bytes_);
  size_t done = 0;
  while (done < unit_bytes_) {
    const ssize_t r = ::pread(fd_, dst + done, unit_bytes_ - done, offset + static_cast<off_t>(done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return make_error(path_, ": cannot read ", unit_name(id), ": ", std::strerror(errno));
    if (r == 0)
      return make_error(path_, ": block spill file is truncated: ", unit_name(id), " needs ",
                        std::to_string(unit_bytes_), " bytes, got ", std::to_string(done));
    done += static_cast<size_t>(r);
  }
  ++n_spill_reads_;
  if (fnv1a64(dst, unit_bytes_) != u.checksum)
    return make_error(path_, ": block spill file is corrupted: checksum mismatch in ", unit_name(id));
  return Status::ok();
}

Status BlockStore::spill_to_capacity() {
  auto it = lru_.begin();
  while (resident_bytes() > capacity_ && it != lru_.end()) {
    const uint32_t id = *it;
    Unit& u = units_[id];
    if (u.pinned) {
      ++it;
      continue;
    }
    ENGRAM_RETURN_IF_ERROR(write_out(id));
    it = lru_.erase(it);
    u.data.reset();
    --n_resident_;
  }
  return Status::ok();
}

Expected<const uint8_t*> BlockStore::pin(uint32_t id) {
  if (id >= units_.size() || units_[id].refs == 0)
    return make_error("block store: unit ", std::to_string(id), " does not exist");
  Unit& u = units_[id];
  if (u.data) {
    lru_.splice(lru_.end(), lru_, u.lru);  // most recently used
  } else {
    std::unique_ptr<uint8_t[]> data(new uint8_t[unit_bytes_]);
    ENGRAM_RETURN_IF_ERROR(read_in(id, data.get()));
    u.data = std::move(data);
    u.lru = lru_.insert(lru_.end(), id);
    ++n_resident_;
  }
  if (!u.pinned) {
    u.pinned = true;
    pinned_.push_back(id);
  }
  return static_cast<const uint8_t*>(u.data.get());
}

Status BlockStore::unpin_all() {
  for (uint32_t id : pinned_)
    if (id < units_.size()) units_[id].pinned = false;
  pinned_.clear();
  return spill_to_capacity();
}

Status BlockStore::read(uint32_t id, uint8_t* dst) const {
  if (id >= units_.size() || units_[id].refs == 0)
    return make_error("block store: unit ", std::to_string(id), " does not exist");
  const Unit& u = units_[id];
  if (u.data) {
    std::memcpy(dst, u.data.get(), unit_bytes_);
    return Status::ok();
  }
  return read_in(id, dst);
}

}  // namespace engram
