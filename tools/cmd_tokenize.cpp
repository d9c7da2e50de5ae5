// engram tokenize: print the token ids of a text. Reads only the vocabulary,
// so it works on vocabulary-only GGUF files (no tensors).
#include <cstdio>
#include <memory>

#include "commands.h"
#include "common.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"

namespace engram::tools {
namespace {

struct TokenizeOptions {
  std::string model;
  std::string prompt;
  bool no_special = false;
  bool parse_special = false;
  bool pieces = false;
  int threads = 0;
};

// Token text with control characters escaped, for --pieces.
std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

int run(const TokenizeOptions& o) {
  auto path = resolve_model_path(o.model);
  if (!path) return fail(path.error().message);
  auto file = gguf::File::open(*path);
  if (!file) return fail(file.error().message);
  auto tok = Tokenizer::from_gguf(*file);
  if (!tok) return fail(tok.error().message);
  std::vector<TokenId> ids = (*tok)->encode(o.prompt, !o.no_special, o.parse_special);
  if (o.pieces) {
    for (TokenId id : ids) {
      std::printf("%6d '%s'\n", id, printable((*tok)->token_to_piece(id, /*render_special=*/true)).c_str());
    }
  } else {
    std::printf("%s\n", join_ids(ids).c_str());
  }
  return 0;
}

}  // namespace

Command add_tokenize_command(CLI::App& parent) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* app = parent.add_subcommand("tokenize", "Print the token ids of a text");
  add_model_option(app, o->model);
  app->add_option("-p,--prompt", o->prompt, "Text to tokenize")->required();
  app->add_flag("--no-special", o->no_special, "Do not add BOS/EOS");
  app->add_flag("--parse-special", o->parse_special, "Map special-token text (e.g. <s>) to those tokens");
  app->add_flag("--pieces", o->pieces, "Print one token per line with its text");
  add_threads_option(app, o->threads);
  return {app, [o] { return run(*o); }};
}

}  // namespace engram::tools
