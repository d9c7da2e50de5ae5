// libFuzzer target for the GGUF reader: any input must parse or fail cleanly,
// and whatever parses must be safe to use: every metadata value printable and
// every tensor's bytes inside the input.
#include <cstddef>
#include <cstdint>
#include <span>

#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace engram::gguf;
  engram::Expected<File> file = File::parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
  if (!file) return 0;

  size_t sink = 0;
  for (const auto& [key, value] : file->metadata()) {
    sink += key.size() + value.to_string().size() + value.array_size();
    if (file->find(key) != &value) __builtin_trap();
  }
  for (const TensorInfo& t : file->tensors()) {
    if (file->find_tensor(t.name) != &t) __builtin_trap();
    // ASan reports any read outside the input buffer.
    const uint8_t* bytes = file->tensor_data(t);
    sink += bytes[0] + bytes[t.n_bytes - 1];
    engram::TensorView v = file->view(t);
    sink += static_cast<size_t>(v.n_rows()) + v.row_size();
  }
  // Exercise the typed getters on keys every model has.
  (void)file->get_string("general.architecture");
  (void)file->get_u32("general.alignment");
  (void)file->get_string_array("tokenizer.ggml.tokens");
  (void)file->get_float_array("tokenizer.ggml.scores");
  (void)file->get_int_array("tokenizer.ggml.token_type");
  volatile size_t keep = sink;
  (void)keep;
  return 0;
}
