#include "util/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace engram {
namespace {

// Below this, the TLB covers most of the weights anyway and sharing the page
// cache between processes is worth more than huge pages.
constexpr uint64_t kMinCopyBytes = uint64_t{256} << 20;

// Reads all `size` bytes of `fd` into `dst`; the error names the path, and a
// file that shrank while being read.
Status read_all(int fd, uint8_t* dst, size_t size, const std::string& path) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pread(fd, dst + done, size - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(path, ": read failed at byte ", std::to_string(done), ": ", std::strerror(errno));
    if (n == 0)
      return make_error(path, ": file ended at byte ", std::to_string(done), " of ", std::to_string(size),
                        " while loading (was it truncated?)");
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

}  // namespace

Expected<LoadMode> parse_load_mode(const std::string& text) {
  if (text == "auto") return LoadMode::kAuto;
  if (text == "mmap") return LoadMode::kMap;
  if (text == "copy") return LoadMode::kCopy;
  return make_error("unknown weight loading '", text, "' (expected auto, mmap or copy)");
}

const char* load_mode_name(LoadMode mode) {
  switch (mode) {
    case LoadMode::kAuto: return "auto";
    case LoadMode::kMap: return "mmap";
    case LoadMode::kCopy: return "copy";
  }
  return "?";
}

LoadMode resolve_auto_load(uint64_t file_bytes, uint64_t mem_available, bool huge_pages) {
  // Half of what is available: the copy must not push the KV memory or the
  // page cache of other files out.
  if (huge_pages && file_bytes >= kMinCopyBytes && file_bytes <= mem_available / 2) return LoadMode::kCopy;
  return LoadMode::kMap;
}

Expected<MappedFile> MappedFile::open(const std::string& path, LoadMode mode) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return make_error(path, ": cannot stat: ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(path, ": not a regular file");
  }
  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<size_t>(st.st_size);
  if (mode == LoadMode::kAuto) mode = resolve_auto_load(file.size_, mem_available_bytes(), huge_pages_available());
  file.mode_ = mode;
  if (file.size_ == 0) {
    ::close(fd);
    return file;
  }
  if (mode == LoadMode::kCopy) {
    Expected<HugePageBuffer> copy = HugePageBuffer::allocate(file.size_);
    if (!copy) {
      ::close(fd);
      return make_error(path, ": cannot load: ", copy.error().message);
    }
    Status read = read_all(fd, copy->data(), file.size_, path);
    ::close(fd);
    if (!read) return Error{read.message()};
    copy->make_read_only();  // weights are read-only, as when mapped
    file.data_ = copy->data();
    file.copy_ = std::move(copy).value();
    return file;
  }
  void* p = mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    return make_error(path, ": cannot mmap: ", std::strerror(err));
  }
  ::close(fd);
  file.data_ = static_cast<const uint8_t*>(p);
  return file;
}

MappedFile::MappedFile(MappedFile&& other) noexcept { *this = std::move(other); }

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    copy_ = std::move(other.copy_);
    mode_ = other.mode_;
    path_ = std::move(other.path_);
  }
  return *this;
}

MappedFile::~MappedFile() { release(); }

void MappedFile::release() {
  if (data_ && mode_ == LoadMode::kMap) munmap(const_cast<uint8_t*>(data_), size_);
  copy_ = HugePageBuffer();
  data_ = nullptr;
}

}  // namespace engram
