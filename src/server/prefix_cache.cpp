#include "server/prefix_cache.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

namespace engram::server {
namespace {

namespace fs = std::filesystem;

// FNV-1a, 64 bit: the keys of cache entries (verified against the stored
// tokens, so collisions cost a miss, never a wrong answer).
constexpr uint64_t kFnvOffset = 1469598103934665603ull;
constexpr uint64_t kFnvPrime = 1099511628211ull;

uint64_t fnv(uint64_t h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

uint64_t fnv_token(uint64_t h, TokenId t) {
  const uint32_t u = static_cast<uint32_t>(t);
  const uint8_t bytes[4] = {static_cast<uint8_t>(u), static_cast<uint8_t>(u >> 8), static_cast<uint8_t>(u >> 16),
                            static_cast<uint8_t>(u >> 24)};
  return fnv(h, bytes, sizeof bytes);
}

void touch(const std::string& path) {
  std::error_code ec;
  fs::last_write_time(path, fs::file_time_type::clock::now(), ec);  // best effort: only the eviction order
}

void remove_entry(const std::string& kv_path) {
  std::error_code ec;
  fs::remove(kv_path, ec);
  fs::remove(fs::path(kv_path).replace_extension(".tok"), ec);
}

bool read_tokens(const std::string& path, int64_t n, std::vector<TokenId>& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  out.resize(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(TokenId)));
  return in.gcount() == static_cast<std::streamsize>(out.size() * sizeof(TokenId)) && in.peek() == EOF;
}

// Writes `bytes` to `path` through a temporary file and a rename, so no
// reader ever sees half of it.
Status write_file(const std::string& path, const void* bytes, size_t n) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return make_error(tmp, ": cannot open for writing");
    out.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(n));
    if (!out.flush()) {
      std::remove(tmp.c_str());
      return make_error(tmp, ": write failed");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return make_error(path, ": cannot rename ", tmp, " to it");
  }
  return Status::ok();
}

Status write_tokens(const std::string& path, std::span<const TokenId> tokens) {
  return write_file(path, tokens.data(), tokens.size_bytes());
}

Status write_text(const std::string& path, const std::string& text) {
  return write_file(path, text.data(), text.size());
}

}  // namespace

size_t common_prefix(std::span<const TokenId> a, std::span<const TokenId> b) {
  const size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

uint64_t model_fingerprint(const Model& model) {
  const ModelConfig& c = model.config();
  uint64_t h = fnv(kFnvOffset, c.arch.data(), c.arch.size());
  h = fnv(h, c.name.data(), c.name.size());
  for (int64_t v : {int64_t{c.n_vocab}, int64_t{c.n_embd}, int64_t{c.n_layer}, int64_t{c.n_head}, int64_t{c.n_head_kv},
                    int64_t{c.head_dim}, int64_t{c.head_dim_v}, int64_t{c.n_ff}, c.n_ctx_train})
    h = fnv(h, &v, sizeof v);
  // A few KB of weights from the first, middle and last tensor: fine-tunes
  // of one architecture differ there.
  const gguf::File& f = model.file();
  const uint64_t size = f.file_size();
  h = fnv(h, &size, sizeof size);
  const std::vector<gguf::TensorInfo>& tensors = f.tensors();
  if (!tensors.empty()) {
    for (size_t i : {size_t{0}, tensors.size() / 2, tensors.size() - 1}) {
      const gguf::TensorInfo& t = tensors[i];
      h = fnv(h, t.name.data(), t.name.size());
      h = fnv(h, f.tensor_data(t), static_cast<size_t>(std::min<uint64_t>(t.n_bytes, 4096)));
    }
  }
  return h;
}

Expected<std::unique_ptr<DiskPrefixCache>> DiskPrefixCache::open(const std::string& dir, int64_t max_bytes, int block,
                                                                 uint64_t model_key) {
  if (block < 1) return make_error("prefix cache block must be at least 1 token, got ", std::to_string(block));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir))
    return make_error(dir, ": cannot create the prefix cache directory", ec ? ": " + ec.message() : "");
  return std::unique_ptr<DiskPrefixCache>(new DiskPrefixCache(dir, max_bytes, block, model_key));
}

std::string DiskPrefixCache::base_name(int64_t n, uint64_t hash) const {
  char name[48];
  std::snprintf(name, sizeof name, "p%lld-%016llx", static_cast<long long>(n), static_cast<unsigned long long>(hash));
  return name;
}

std::string DiskPrefixCache::path(const std::string& base, const char* ext) const {
  return (fs::path(dir_) / (base + ext)).string();
}

int64_t DiskPrefixCache::load_longest(std::span<const TokenId> prompt, int64_t at_least, int64_t at_most,
                                      Memory& memory, int seq) {
  at_most = std::min<int64_t>(at_most, static_cast<int64_t>(prompt.size()));
  const int64_t last = at_most / block_ * block_;
  if (last <= at_least) return 0;
  // hashes[k]: the prefix of (k + 1) * block tokens.
  std::vector<uint64_t> hashes;
  uint64_t h = model_key_;
  for (int64_t i = 0; i < last; ++i) {
    h = fnv_token(h, prompt[static_cast<size_t>(i)]);
    if ((i + 1) % block_ == 0) hashes.push_back(h);
  }
  std::vector<TokenId> saved;
  for (int64_t k = static_cast<int64_t>(hashes.size()); k >= 1; --k) {
    const int64_t n = k * block_;
    if (n <= at_least) break;
    const std::string base = base_name(n, hashes[static_cast<size_t>(k - 1)]);
    // The entry saved at exactly n tokens, or a longer one a link names.
    std::string entry = base;
    int64_t entry_n = n;
    const std::string link = path(base, ".link");
    if (!fs::exists(path(base, ".kv"))) {
      std::ifstream in(link);
      long long target_n = 0;
      if (!in || !(in >> entry) || std::sscanf(entry.c_str(), "p%lld-", &target_n) != 1 || target_n <= n) continue;
      entry_n = target_n;
    }
    if (entry_n > memory.layout().n_ctx) continue;  // fine for another context size; not for this one
    const std::string kv = path(entry, ".kv"), tok = path(entry, ".tok");
    if (!fs::exists(kv) || !read_tokens(tok, entry_n, saved)) {
      std::error_code ec;
      fs::remove(link, ec);  // names an entry that is gone
      if (entry == base) remove_entry(kv);  // half an entry
      continue;
    }
    if (!std::equal(prompt.begin(), prompt.begin() + n, saved.begin())) continue;  // a hash collision: not ours
    if (!memory.load_seq(seq, kv).is_ok()) {
      remove_entry(kv);  // unreadable (truncated, another layout): never try it again
      continue;
    }
    if (entry_n > n) memory.remove(seq, n, -1);
    touch(kv);
    touch(tok);
    return n;
  }
  return 0;
}

Status DiskPrefixCache::save(std::span<const TokenId> prompt, const Memory& memory, int seq) {
  const int64_t n = static_cast<int64_t>(prompt.size()) / block_ * block_;
  if (n == 0) return Status::ok();
  // Hashes of every block-multiple prefix: the entry's and its links'.
  std::vector<uint64_t> hashes;
  uint64_t h = model_key_;
  for (int64_t i = 0; i < n; ++i) {
    h = fnv_token(h, prompt[static_cast<size_t>(i)]);
    if ((i + 1) % block_ == 0) hashes.push_back(h);
  }
  const std::string entry = base_name(n, h);
  const std::string kv = path(entry, ".kv"), tok = path(entry, ".tok");
  if (fs::exists(kv)) {
    touch(kv);
    touch(tok);
    return Status::ok();
  }
  // Tokens first: a .kv file only ever appears beside its complete .tok.
  ENGRAM_RETURN_IF_ERROR(write_tokens(tok, prompt.first(static_cast<size_t>(n))));
  Status saved = memory.save_seq(seq, kv, n);
  if (!saved.is_ok()) {
    remove_entry(kv);
    return saved;
  }
  // File systems stamp writes with a coarse clock; a precise stamp keeps
  // the eviction order exact.
  touch(kv);
  touch(tok);
  for (size_t k = 0; k + 1 < hashes.size(); ++k) {
    const std::string base = base_name(static_cast<int64_t>(k + 1) * block_, hashes[k]);
    if (fs::exists(path(base, ".kv"))) continue;  // saved on its own already
    ENGRAM_RETURN_IF_ERROR(write_text(path(base, ".link"), entry));
  }
  evict();
  return Status::ok();
}

namespace {

struct Entry {
  std::string kv;
  int64_t bytes = 0;
  fs::file_time_type used;
};

std::vector<Entry> list_entries(const std::string& dir) {
  std::vector<Entry> entries;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".kv") continue;
    Entry x;
    x.kv = e.path().string();
    std::error_code size_ec;
    x.bytes = static_cast<int64_t>(fs::file_size(e.path(), size_ec));
    const int64_t tok = static_cast<int64_t>(fs::file_size(fs::path(e.path()).replace_extension(".tok"), size_ec));
    if (!size_ec) x.bytes += tok;
    x.used = fs::last_write_time(e.path(), size_ec);
    entries.push_back(std::move(x));
  }
  return entries;
}

}  // namespace

int64_t DiskPrefixCache::bytes() const {
  int64_t total = 0;
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    const fs::path ext = e.path().extension();
    if (ext != ".kv" && ext != ".tok" && ext != ".link") continue;
    std::error_code size_ec;
    const uintmax_t size = fs::file_size(e.path(), size_ec);
    if (!size_ec) total += static_cast<int64_t>(size);
  }
  return total;
}

void DiskPrefixCache::evict() {
  std::vector<Entry> entries = list_entries(dir_);
  int64_t total = bytes();
  if (total <= max_bytes_) return;
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.used < b.used; });
  for (const Entry& e : entries) {
    if (total <= max_bytes_) break;
    remove_entry(e.kv);
    total -= e.bytes;
  }
  // Links to the entries just deleted.
  std::error_code ec;
  for (const fs::directory_entry& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".link") continue;
    std::ifstream in(e.path());
    std::string target;
    if (!(in >> target) || !fs::exists(path(target, ".kv"))) {
      in.close();
      std::error_code rm;
      fs::remove(e.path(), rm);
    }
  }
}

}  // namespace engram::server
