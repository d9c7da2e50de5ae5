// Built-in renderers of the chat formats named in chat_template.h. Each one
// follows its family's published Jinja template (the parts that matter for
// plain text conversations: roles, separators, BOS/EOS, the generation prompt).
#include "server/chat_template.h"

#include "model/model.h"

namespace engram::server {
namespace {

bool contains(std::string_view text, std::string_view needle) { return text.find(needle) != std::string_view::npos; }

// Jinja's |trim and Python's str.strip(): whitespace off both ends.
std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::string role_of(const ChatMessage& m) { return m.role == "developer" ? "system" : m.role; }

// Meta's Llama 2 chat template: the system prompt goes inside the first
// [INST] block; every user turn opens with BOS; assistant turns end with EOS.
// The system prompt as Llama 2 wraps it, in front of the first user message.
std::string llama2_system_block(const std::string& system) {
  std::string block = "<<SYS>>\n";
  block += system;
  block += "\n<</SYS>>\n\n";
  return block;
}

std::string render_llama2(const std::vector<ChatMessage>& messages, const std::string& bos, const std::string& eos) {
  std::string system;
  size_t first = 0;
  if (!messages.empty() && role_of(messages[0]) == "system") {
    system = messages[0].content;
    first = 1;
  }
  std::string out;
  bool system_pending = first == 1;
  for (size_t i = first; i < messages.size(); ++i) {
    std::string content = messages[i].content;
    if (system_pending) {
      content = llama2_system_block(system) + content;
      system_pending = false;
    }
    if (role_of(messages[i]) == "assistant") {
      out += ' ';
      out += trim(content);
      out += ' ';
      out += eos;
    } else {  // user (and any later system message, which the template has no place for)
      out += bos + "[INST] " + trim(content) + " [/INST]";
    }
  }
  if (system_pending) out += bos + "[INST] " + trim(llama2_system_block(system)) + " [/INST]";
  return out;
}

// Meta's Llama 3 instruct template.
std::string render_llama3(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                          const std::string& bos) {
  std::string out = bos;
  for (const ChatMessage& m : messages) {
    out += "<|start_header_id|>" + role_of(m) + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
  }
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

// ChatML (Qwen2/Qwen3 and others), without a default system prompt.
std::string render_chatml(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::string out;
  for (const ChatMessage& m : messages) out += "<|im_start|>" + role_of(m) + "\n" + m.content + "<|im_end|>\n";
  if (add_generation_prompt) out += "<|im_start|>assistant\n";
  return out;
}

// DeepSeek LLM / V2: "User: ...\n\nAssistant: ...<eos>". `bos`/`eos` empty
// gives engram's plain format.
std::string render_user_assistant(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                  const std::string& bos, const std::string& assistant_end) {
  std::string out = bos;
  for (const ChatMessage& m : messages) {
    const std::string role = role_of(m);
    if (role == "system")
      out += m.content + "\n\n";
    else if (role == "assistant")
      out += "Assistant: " + m.content + assistant_end;
    else
      out += "User: " + m.content + "\n\n";
  }
  if (add_generation_prompt) out += "Assistant:";
  return out;
}

// DeepSeek V3 / R1: system prompts first (joined by blank lines), then
// <｜User｜> and <｜Assistant｜> turns; the reasoning of earlier assistant
// turns (up to </think>) is dropped, as R1's template does.
std::string render_deepseek3(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                             const std::string& bos) {
  std::string system;
  for (const ChatMessage& m : messages) {
    if (role_of(m) != "system") continue;
    if (!system.empty()) system += "\n\n";
    system += m.content;
  }
  std::string out = bos + system;
  for (const ChatMessage& m : messages) {
    const std::string role = role_of(m);
    if (role == "system") continue;
    if (role == "assistant") {
      std::string content = m.content;
      const size_t end_think = content.rfind("</think>");
      if (end_think != std::string::npos) content = content.substr(end_think + 8);
      out += "<｜Assistant｜>" + content + "<｜end▁of▁sentence｜>";
    } else {
      out += "<｜User｜>" + m.content;
    }
  }
  if (add_generation_prompt) out += "<｜Assistant｜>";
  return out;
}

// A special token that must exist in the vocabulary for a format to be
// usable when it is only guessed from the architecture.
const char* marker_token(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::LLAMA3:
      return "<|start_header_id|>";
    case ChatTemplateKind::CHATML:
      return "<|im_start|>";
    case ChatTemplateKind::DEEPSEEK3:
      return "<｜User｜>";
    default:
      return nullptr;
  }
}

}  // namespace

const char* chat_template_name(ChatTemplateKind kind) {
  switch (kind) {
    case ChatTemplateKind::PLAIN:
      return "plain";
    case ChatTemplateKind::LLAMA2:
      return "llama2";
    case ChatTemplateKind::LLAMA3:
      return "llama3";
    case ChatTemplateKind::CHATML:
      return "chatml";
    case ChatTemplateKind::DEEPSEEK2:
      return "deepseek2";
    case ChatTemplateKind::DEEPSEEK3:
      return "deepseek3";
  }
  return "plain";
}

ChatTemplateKind detect_chat_template(std::string_view t) {
  // Most specific markers first: a ChatML template may mention [INST] in a
  // comment, but no Llama 2 template contains <|im_start|>.
  if (contains(t, "<|im_start|>")) return ChatTemplateKind::CHATML;
  if (contains(t, "<|start_header_id|>")) return ChatTemplateKind::LLAMA3;
  if (contains(t, "<｜User｜>") || contains(t, "<｜Assistant｜>")) return ChatTemplateKind::DEEPSEEK3;
  if (contains(t, "'User: '") || (contains(t, "User: ") && contains(t, "Assistant:"))) {
    return ChatTemplateKind::DEEPSEEK2;
  }
  if (contains(t, "[INST]")) return ChatTemplateKind::LLAMA2;
  return ChatTemplateKind::PLAIN;
}

ChatTemplateKind chat_template_for(std::string_view template_text, std::string_view arch,
                                   std::string_view tokenizer_pre) {
  const ChatTemplateKind by_text = detect_chat_template(template_text);
  if (by_text != ChatTemplateKind::PLAIN) return by_text;
  if (arch == "qwen2" || arch == "qwen3" || arch == "qwen2moe" || arch == "qwen3moe") return ChatTemplateKind::CHATML;
  if (tokenizer_pre == "deepseek-v3") return ChatTemplateKind::DEEPSEEK3;
  if (tokenizer_pre == "deepseek-llm") return ChatTemplateKind::DEEPSEEK2;
  if (arch == "llama" && (tokenizer_pre == "llama3" || tokenizer_pre == "llama-bpe")) return ChatTemplateKind::LLAMA3;
  return ChatTemplateKind::PLAIN;
}

ChatTemplateKind chat_template_for(const Model& model) {
  std::string text;
  if (auto t = model.file().get_string("tokenizer.chat_template")) text = *t;
  const Tokenizer& tok = model.tokenizer();
  const ChatTemplateKind kind = chat_template_for(text, model.config().arch, tok.pre_name());
  if (detect_chat_template(text) == kind) return kind;  // named by the model's own template
  // Only guessed: use it when the vocabulary has the format's special tokens
  // (a toy model of a family may come with a plain vocabulary).
  if (const char* marker = marker_token(kind)) {
    if (tok.encode(marker, /*add_special=*/false, /*parse_special=*/true).size() != 1) return ChatTemplateKind::PLAIN;
  }
  return kind;
}

std::string render_chat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const std::string& bos, const std::string& eos) {
  switch (kind) {
    case ChatTemplateKind::LLAMA2:
      return render_llama2(messages, bos, eos);
    case ChatTemplateKind::LLAMA3:
      return render_llama3(messages, add_generation_prompt, bos);
    case ChatTemplateKind::CHATML:
      return render_chatml(messages, add_generation_prompt);
    case ChatTemplateKind::DEEPSEEK2:
      return render_user_assistant(messages, add_generation_prompt, bos, eos);
    case ChatTemplateKind::DEEPSEEK3:
      return render_deepseek3(messages, add_generation_prompt, bos);
    case ChatTemplateKind::PLAIN:
      break;
  }
  return render_user_assistant(messages, add_generation_prompt, "", "\n\n");
}

bool tokenizer_adds_bos(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::PLAIN || kind == ChatTemplateKind::CHATML;
}

}  // namespace engram::server
