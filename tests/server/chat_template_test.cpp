// Chat templates: detection from tokenizer.chat_template markers, and the
// rendered text of each family. The expected strings are written out by hand
// from each family's published Jinja template (Meta's Llama 2 and Llama 3
// chat templates, Qwen's ChatML, DeepSeek LLM/V2 and DeepSeek V3/R1), applied
// to the same conversation.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/model.h"
#include "server/chat_template.h"
#include "test_support.h"

namespace engram::server {
namespace {

const std::vector<ChatMessage> kConversation = {
    {"system", "You are helpful."},
    {"user", "Hello"},
    {"assistant", "Hi there"},
    {"user", "How are you?"},
};

TEST(ChatTemplate, Llama2) {
  // {{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }} for users, the
  // system prompt wrapped in <<SYS>> inside the first one, and
  // {{ ' ' + content.strip() + ' ' + eos_token }} for the assistant.
  EXPECT_EQ(render_chat(ChatTemplateKind::LLAMA2, kConversation, true, "<s>", "</s>"),
            "<s>[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello [/INST] Hi there </s>"
            "<s>[INST] How are you? [/INST]");
  EXPECT_EQ(render_chat(ChatTemplateKind::LLAMA2, {{"user", "  Hi  "}}, true, "<s>", "</s>"), "<s>[INST] Hi [/INST]");
}

TEST(ChatTemplate, Llama3) {
  EXPECT_EQ(render_chat(ChatTemplateKind::LLAMA3, kConversation, true, "<|begin_of_text|>", "<|end_of_text|>"),
            "<|begin_of_text|>"
            "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  // Without the generation prompt the text ends after the last turn.
  EXPECT_EQ(render_chat(ChatTemplateKind::LLAMA3, {{"user", "x"}}, false, "<|begin_of_text|>", ""),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>");
}

TEST(ChatTemplate, ChatML) {
  EXPECT_EQ(render_chat(ChatTemplateKind::CHATML, kConversation, true, "", "<|im_end|>"),
            "<|im_start|>system\nYou are helpful.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n"
            "<|im_start|>assistant\nHi there<|im_end|>\n"
            "<|im_start|>user\nHow are you?<|im_end|>\n"
            "<|im_start|>assistant\n");
  // "developer" is OpenAI's newer name for the system role.
  EXPECT_EQ(render_chat(ChatTemplateKind::CHATML, {{"developer", "d"}}, false, "", ""),
            "<|im_start|>system\nd<|im_end|>\n");
}

TEST(ChatTemplate, DeepSeek2) {
  EXPECT_EQ(
      render_chat(ChatTemplateKind::DEEPSEEK2, kConversation, true, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
      "<｜begin▁of▁sentence｜>You are helpful.\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>"
      "User: How are you?\n\nAssistant:");
}

TEST(ChatTemplate, DeepSeek3) {
  EXPECT_EQ(
      render_chat(ChatTemplateKind::DEEPSEEK3, kConversation, true, "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
      "<｜begin▁of▁sentence｜>You are helpful."
      "<｜User｜>Hello<｜Assistant｜>Hi there<｜end▁of▁sentence｜>"
      "<｜User｜>How are you?<｜Assistant｜>");
  // R1: an earlier answer's reasoning is not sent back to the model.
  EXPECT_EQ(render_chat(ChatTemplateKind::DEEPSEEK3,
                        {{"user", "q"}, {"assistant", "<think>\nhmm\n</think>\n\nA"}, {"user", "q2"}}, true, "<B>", ""),
            "<B><｜User｜>q<｜Assistant｜>\n\nA<｜end▁of▁sentence｜><｜User｜>q2<｜Assistant｜>");
}

TEST(ChatTemplate, Plain) {
  EXPECT_EQ(render_chat(ChatTemplateKind::PLAIN, kConversation, true, "<s>", "</s>"),
            "You are helpful.\n\nUser: Hello\n\nAssistant: Hi there\n\nUser: How are you?\n\nAssistant:");
}

TEST(ChatTemplate, DetectsFamiliesByMarkers) {
  // Fragments of the published templates.
  EXPECT_EQ(detect_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                                 "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
            ChatTemplateKind::CHATML);
  EXPECT_EQ(detect_chat_template("{% set content = '<|start_header_id|>' + message['role'] + "
                                 "'<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}"),
            ChatTemplateKind::LLAMA3);
  EXPECT_EQ(detect_chat_template("{%- if message['role'] == 'user' %}{{'<｜User｜>' + message['content']}}"),
            ChatTemplateKind::DEEPSEEK3);
  EXPECT_EQ(detect_chat_template("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                                 "{{ 'User: ' + message['content'] + '\\n\\n' }}{% elif message['role'] == "
                                 "'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"),
            ChatTemplateKind::DEEPSEEK2);
  EXPECT_EQ(detect_chat_template("{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + "
                                 "content.strip() + ' [/INST]' }}"),
            ChatTemplateKind::LLAMA2);
  EXPECT_EQ(detect_chat_template(""), ChatTemplateKind::PLAIN);
  EXPECT_EQ(detect_chat_template("{{ messages[0]['content'] }}"), ChatTemplateKind::PLAIN);
}

TEST(ChatTemplate, FallsBackToTheArchitecture) {
  EXPECT_EQ(chat_template_for("", "qwen2", "qwen2"), ChatTemplateKind::CHATML);
  EXPECT_EQ(chat_template_for("", "qwen3", "qwen2"), ChatTemplateKind::CHATML);
  EXPECT_EQ(chat_template_for("", "deepseek2", "deepseek-v3"), ChatTemplateKind::DEEPSEEK3);
  EXPECT_EQ(chat_template_for("", "deepseek2", "deepseek-llm"), ChatTemplateKind::DEEPSEEK2);
  EXPECT_EQ(chat_template_for("", "llama", "llama-bpe"), ChatTemplateKind::LLAMA3);
  EXPECT_EQ(chat_template_for("", "llama", ""), ChatTemplateKind::PLAIN);
  // The model's own template wins over its architecture.
  EXPECT_EQ(chat_template_for("<|im_start|>", "llama", "llama-bpe"), ChatTemplateKind::CHATML);
  EXPECT_STREQ(chat_template_name(ChatTemplateKind::DEEPSEEK3), "deepseek3");
}

TEST(ChatTemplate, ToyModelsWithoutTheFormatsTokensArePlain) {
  ENGRAM_REQUIRE_REF();
  // stories260K: llama without a template. tiny-qwen2: a qwen2 model whose
  // 512-token vocabulary has no <|im_start|>, so ChatML cannot be used.
  for (const char* name : {"stories260K.gguf", "tiny-qwen2-f32.gguf"}) {
    auto model = Model::load((test::ref_dir() / "models" / name).string());
    ASSERT_TRUE(model) << model.error().message;
    EXPECT_EQ(chat_template_for(**model), ChatTemplateKind::PLAIN) << name;
  }
  EXPECT_TRUE(tokenizer_adds_bos(ChatTemplateKind::PLAIN));
  EXPECT_TRUE(tokenizer_adds_bos(ChatTemplateKind::CHATML));
  EXPECT_FALSE(tokenizer_adds_bos(ChatTemplateKind::LLAMA3));
}

}  // namespace
}  // namespace engram::server
