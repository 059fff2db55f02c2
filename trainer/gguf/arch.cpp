// trainer/gguf/arch.cpp — the architecture table of arch.h, following the
// tensor names of gguf-py's TensorNameMap for each architecture.
#include "trainer/gguf/arch.h"

#include <regex>

namespace loratune::gguf::detail {
namespace {

using Names = std::vector<std::pair<std::string, std::string>>;

// Attention and MLP projections with separate q/k/v and gate/up (all but phi3).
Names projections() {
  return {
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"mlp.gate_proj.bias", "ffn_gate.bias"},
      {"mlp.up_proj.bias", "ffn_up.bias"},
      {"mlp.down_proj.bias", "ffn_down.bias"},
  };
}

Names concat(Names a, const Names& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Two norms per layer: before attention and before the MLP.
const Names kPreNorms = {{"input_layernorm.weight", "attn_norm.weight"},
                         {"post_attention_layernorm.weight", "ffn_norm.weight"}};
// Gemma's four: HF's post_attention_layernorm is the norm *after* attention.
const Names kSandwichNorms = {{"input_layernorm.weight", "attn_norm.weight"},
                              {"post_attention_layernorm.weight", "post_attention_norm.weight"},
                              {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
                              {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"}};

const std::vector<ArchSpec>& table() {
  static const std::vector<ArchSpec> t = [] {
    std::vector<ArchSpec> v;
    v.push_back(
        {"llama", "llama", "LlamaForCausalLM", true, false, concat(kPreNorms, projections())});
    v.push_back(
        {"qwen2", "qwen2", "Qwen2ForCausalLM", false, false, concat(kPreNorms, projections())});
    v.push_back(
        {"qwen3", "qwen3", "Qwen3ForCausalLM", false, false, concat(kPreNorms, projections())});
    v.push_back({"gemma2", "gemma2", "Gemma2ForCausalLM", false, true,
                 concat(kSandwichNorms, projections())});
    v.push_back({"gemma3", "gemma3_text", "Gemma3ForCausalLM", false, true,
                 concat(kSandwichNorms, projections())});
    v.push_back({"phi3", "phi3", "Phi3ForCausalLM", false, false,
                 concat(kPreNorms, {{"self_attn.qkv_proj.weight", "attn_qkv.weight"},
                                    {"self_attn.o_proj.weight", "attn_output.weight"},
                                    {"mlp.gate_up_proj.weight", "ffn_up.weight"},
                                    {"mlp.down_proj.weight", "ffn_down.weight"}})});
    return v;
  }();
  return t;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

const ArchSpec* find_arch(const std::string& name) {
  for (const ArchSpec& a : table()) {
    if (a.arch == name) return &a;
  }
  return nullptr;
}

const ArchSpec* arch_of_model_type(const std::string& model_type) {
  if (model_type == "mistral") return find_arch("llama");  // llama.cpp runs it as llama
  for (const ArchSpec& a : table()) {
    if (a.model_type == model_type) return &a;
  }
  return nullptr;
}

std::string arch_names() {
  std::string s;
  for (const ArchSpec& a : table()) s += (s.empty() ? "" : ", ") + a.arch;
  return s;
}

std::string exportable_model_types() {
  std::string s = "llama, mistral";
  for (const ArchSpec& a : table()) {
    if (a.model_type != "llama") s += ", " + a.model_type;
  }
  return s;
}

std::string gguf_tensor_name(const ArchSpec& arch, const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  static const std::regex layer_re(R"(model\.layers\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(hf, m, layer_re)) return "";
  for (const auto& [from, to] : arch.layer_names) {
    if (m[2].str() == from) return "blk." + m[1].str() + "." + to;
  }
  return "";
}

std::string hf_tensor_name(const ArchSpec& arch, const std::string& gguf_name) {
  if (gguf_name == "token_embd.weight") return "model.embed_tokens.weight";
  if (gguf_name == "output_norm.weight") return "model.norm.weight";
  if (gguf_name == "output.weight") return "lm_head.weight";
  static const std::regex layer_re(R"(blk\.(\d+)\.(.+))");
  std::smatch m;
  if (!std::regex_match(gguf_name, m, layer_re)) return "";
  for (const auto& [from, to] : arch.layer_names) {
    if (m[2].str() == to) return "model.layers." + m[1].str() + "." + from;
  }
  return "";
}

bool stored_plus_one(const ArchSpec& arch, const std::string& name) {
  return arch.norm_plus_one && ends_with(name, "norm.weight");
}

}  // namespace loratune::gguf::detail
