// Chat templates: turning OpenAI `messages` into the prompt text a chat
// model was trained on. engram has no Jinja interpreter; like llama.cpp it
// recognizes the family of a GGUF's `tokenizer.chat_template` by its markers
// and renders that family's format with built-in code:
//
//   llama2    <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>
//   llama3    <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//   chatml    <|im_start|>{role}\n{content}<|im_end|>\n          (Qwen2, Qwen3, Yi, ...)
//   deepseek2 {bos}{system}\n\nUser: {user}\n\nAssistant: {assistant}{eos}   (DeepSeek LLM, V2)
//   deepseek3 {bos}{system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>  (V3, R1)
//   plain     {system}\n\nUser: {user}\n\nAssistant: {assistant}\n\n     (models without a template)
//
// The rendered text contains the special tokens as text (e.g. "<|im_start|>"),
// so it is tokenized with parse_special; BOS is part of the text where the
// family's template puts it. ChatML and plain templates write no BOS: there
// the tokenizer adds it as the model's add_bos flag says (tokenizer_adds_bos).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace engram {
class Model;
}

namespace engram::server {

enum class ChatTemplateKind { PLAIN, LLAMA2, LLAMA3, CHATML, DEEPSEEK2, DEEPSEEK3 };

const char* chat_template_name(ChatTemplateKind kind);  // "plain", "llama2", ...

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant" ("developer" is read as "system")
  std::string content;
};

// The family of a Jinja template text by its markers; PLAIN when none is
// recognized (or the text is empty).
ChatTemplateKind detect_chat_template(std::string_view template_text);

// The family for a model: its tokenizer.chat_template when recognized, else
// a guess from the architecture and the tokenizer's pre-tokenizer name
// (qwen2/qwen3 -> chatml, deepseek2 with the deepseek-v3 tokenizer ->
// deepseek3, ...), else PLAIN.
ChatTemplateKind chat_template_for(std::string_view template_text, std::string_view arch,
                                   std::string_view tokenizer_pre);
ChatTemplateKind chat_template_for(const Model& model);

// Renders the conversation. add_generation_prompt: end with what opens the
// assistant's next turn. bos/eos: the texts of the tokenizer's BOS and EOS
// tokens (used where the family's template writes bos_token / eos_token).
std::string render_chat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                        const std::string& bos, const std::string& eos);

// Whether the tokenizer must add BOS itself (add_special) when encoding a
// rendered prompt: for PLAIN and CHATML, whose text has no BOS of its own.
bool tokenizer_adds_bos(ChatTemplateKind kind);

}  // namespace engram::server
