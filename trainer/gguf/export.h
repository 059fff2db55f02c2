// trainer/gguf/export.h — Hugging Face model (+ PEFT LoRA adapter) -> GGUF
// for llama.cpp, Ollama and LM Studio; and a PEFT adapter -> llama.cpp's
// LoRA adapter GGUF. The inverse of import (gguf.h), written as llama.cpp's
// convert_hf_to_gguf.py / convert_lora_to_gguf.py write these files.
//
// Model file (general.type "model"):
//   architecture  llama (Llama and Mistral), qwen2, qwen3, gemma2, gemma3
//                 (gemma3_text), phi3 (Phi-3/3.5/4/4-mini); the "<arch>.*"
//                 hyperparameters llama.cpp reads (block_count,
//                 context_length, embedding_length, feed_forward_length,
//                 attention.head_count(_kv), attention.key_length /
//                 value_length, attention.layer_norm_rms_epsilon,
//                 rope.freq_base, rope.scaling.* for linear rope; llama:
//                 vocab_size, rope.dimension_count; gemma: soft-caps and
//                 attention.sliding_window; phi3: rope.dimension_count
//                 (partial rotary), rope.scaling.original_context_length and
//                 attn_factor). A model llama.cpp would compute differently
//                 with no key to say so is refused (Gemma's query scale or
//                 sliding layers other than llama.cpp's fixed ones).
//   tensors       token_embd, blk.N.* as named in arch.h, output_norm,
//                 output (absent when the embeddings are tied), rope_freqs
//                 (llama3 rope), rope_factors_long/short (Phi-3 longrope);
//                 llama's Q/K rows (weights and biases) permuted into
//                 llama.cpp's rope layout; Gemma's norms stored as 1 + w.
//                 With an adapter every adapted weight is W + s·B·A computed
//                 exactly as `merge` computes it (exporter::merged_weight)
//                 before encoding.
//   types         1-D tensors, norms and biases F32; the matrices in --type,
//                 a Q8_0 matrix whose rows are not a multiple of 32 falls
//                 back to F16 (as llama.cpp's converter does). Encoding is
//                 bit-identical to gguf-py's gguf.quants.quantize.
//   tokenizer     from tokenizer.json: byte-level BPE as "gpt2" (tokens,
//                 token types, merges, pre-tokenizer name) or a SentencePiece
//                 BPE vocabulary of the Llama-2 kind as "llama" (tokens,
//                 scores ordered as the merges, token types,
//                 add_space_prefix); special token ids, add_bos/add_eos and
//                 the chat template as gguf-py's SpecialVocab reads them from
//                 tokenizer_config.json, chat_template.jinja and config.json.
//                 The vocabulary is padded to the embedding's rows with
//                 "[PADn]" tokens of type unused.
// Adapter file (general.type "adapter", adapter.type "lora",
// adapter.lora.alpha): blk.N.<tensor>.weight.lora_a (A, [r, in]) and
// .lora_b (B, [out, r], llama Q/K rows permuted) per adapted projection.
// llama.cpp scales every pair by alpha / r; where the adapter's scales do not
// share one alpha / r (rsLoRA with mixed ranks, alpha_pattern), the
// remaining factor is folded into B.
//
// Files are written tensor by tensor, each converted and encoded in pieces
// of about 1M values (a merged weight is computed whole in float32), into a
// temp file renamed over `out_path` at the end. Peak memory above the
// executable's is about the largest tensor's float32 bytes (its mapped
// checkpoint pages, released after it; scripts/bench_export_memory.py).
// Errors are loratune::Error: kConfig for options, kUnsupported for a model
// llama.cpp's format cannot carry from here (another architecture, a
// tokenizer that is not BPE, an unknown pre-tokenizer), kCorrupt for files
// that disagree with themselves, kIo for the file system.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loratune::gguf {

// How the matrices are stored ("--type").
enum class OutType { kF32, kF16, kBF16, kQ8_0 };
// "f32", "f16", "bf16", "q8_0" (any case); Error kConfig naming the closest.
OutType parse_out_type(const std::string& name);
const char* out_type_name(OutType t);

struct ExportOptions {
  std::string model_dir;    // Hugging Face layout (a .gguf is resolved by the caller)
  std::string adapter_dir;  // PEFT adapter; "" = the base model alone
  std::string out_path;     // the .gguf file to write
  OutType type = OutType::kF16;
  bool adapter_only = false;  // write adapter_dir as llama.cpp's LoRA adapter GGUF
  bool overwrite = false;     // replace an existing out_path
  std::string name;           // general.name; "" = the model directory's name
};

struct ExportSummary {
  std::string arch;                // general.architecture
  size_t tensors = 0;              // tensors written
  size_t adapted = 0;              // weights merged, or adapter pairs written
  size_t folded = 0;               // adapter pairs whose scale was folded into B
  uint64_t bytes = 0;              // file size
  std::vector<std::string> notes;  // what llama.cpp will do differently (sliding window)
};

// Writes opt.out_path. Everything that can be refused (options, config,
// checkpoint, adapter, tokenizer) is checked before the file is created.
ExportSummary export_gguf(const ExportOptions& opt);

// A .gguf opt.model_dir becomes its float32 import (gguf.h
// resolve_model_path) with general.name defaulting to the file's stem: what
// `export-gguf --model FILE.gguf` and train's output.gguf export from.
void resolve_gguf_model(ExportOptions& opt);

// Checks, writing nothing, what export_gguf would refuse about the model in
// `model_dir` (a Hugging Face directory) before any adapter exists: the
// config and its architecture; unless adapter_only, also the rope type, the
// checkpoint's tensors and the tokenizer. Throws what export_gguf would.
void check_exportable(const std::string& model_dir, OutType type, bool adapter_only);

// Ollama Modelfile (export_modelfile.cpp). The strings Ollama should stop at
// for the model in `model_dir`: the text of its end-of-sequence tokens
// (tokenizer_config.json eos_token; generation_config.json and config.json
// eos_token_id, one id or a list) followed by the end-of-turn tokens its
// tokenizer.json has (<|im_end|>, <|eot_id|>, <|end|>, <end_of_turn>), each
// once. Throws kIo without tokenizer.json, kCorrupt for unreadable JSON or
// an eos id no token has.
std::vector<std::string> stop_strings(const std::string& model_dir);

// The Modelfile's text: a comment saying why there is no TEMPLATE (Ollama
// takes the GGUF's tokenizer.chat_template), "FROM <from>", "ADAPTER
// <adapter>" when `adapter` is not empty, one `PARAMETER stop "<s>"` per
// stop string (quotes and backslashes escaped; strings with a line break or
// a control character are left out, as the format cannot carry them).
std::string modelfile_text(const std::string& from, const std::string& adapter,
                           const std::vector<std::string>& stops);

// "Modelfile" in the directory of `gguf_path`.
std::string modelfile_path(const std::string& gguf_path);

// What FROM names for a base given by the user (--modelfile-base): an
// Ollama model name ("llama3.2:1b") as given, a file path made absolute.
std::string modelfile_base(const std::string& base);

// Writes modelfile_path(gguf_path) atomically: for a model GGUF (`base`
// empty) FROM ./<its file name>; for an adapter GGUF FROM `base` (see
// modelfile_base) and ADAPTER ./<its file name>. Returns the path written.
std::string write_modelfile(const std::string& gguf_path, const std::string& base,
                            const std::vector<std::string>& stops);

}  // namespace loratune::gguf
