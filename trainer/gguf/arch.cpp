// trainer/gguf/arch.cpp — the architecture table of arch.h, following the
// tensor names of gguf-py's TensorNameMap for each architecture.
#include "trainer/gguf/arch.h"

#include <string>

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

// `name` in one naming turned into the other: HF -> GGUF when `from_hf`,
// else GGUF -> HF; "" when `arch` has no such tensor. A layer's tensors
// are "<prefix><index>.<suffix>" in both, with the suffixes paired in
// arch.layer_names.
std::string rename(const ArchSpec& arch, const std::string& name, bool from_hf) {
  static const std::pair<std::string, std::string> kOutsideLayers[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  for (const auto& [hf, gg] : kOutsideLayers) {
    if (name == (from_hf ? hf : gg)) return from_hf ? gg : hf;
  }
  const std::string in = from_hf ? "model.layers." : "blk.";
  const std::string out = from_hf ? "blk." : "model.layers.";
  if (name.compare(0, in.size(), in) != 0) return "";
  size_t end = in.size();
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == in.size() || end >= name.size() || name[end] != '.') return "";
  const std::string index = name.substr(in.size(), end - in.size());
  const std::string suffix = name.substr(end + 1);
  for (const auto& [hf, gg] : arch.layer_names) {
    if (suffix == (from_hf ? hf : gg)) return out + index + "." + (from_hf ? gg : hf);
  }
  return "";
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

std::string gguf_tensor_name(const ArchSpec& arch, const std::string& hf_name) {
  return rename(arch, hf_name, /*from_hf=*/true);
}

std::string hf_tensor_name(const ArchSpec& arch, const std::string& gguf_name) {
  return rename(arch, gguf_name, /*from_hf=*/false);
}

bool stored_plus_one(const ArchSpec& arch, const std::string& name) {
  return arch.norm_plus_one && ends_with(name, "norm.weight");
}

}  // namespace loratune::gguf::detail
