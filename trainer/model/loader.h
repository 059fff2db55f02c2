// trainer/model/loader.h — a Hugging Face model directory → CausalLM.
//
// Reads DIR/config.json and the safetensors weights (model.safetensors or the
// shards named by model.safetensors.index.json) through io::Checkpoint.
// Weights go from the mmap straight to their final place, one tensor at a
// time, without a second full copy in host memory:
//   * CPU, same dtype as the file: the parameter IS the zero-copy view of the
//     mapping (pages are read on first use, never copied);
//   * otherwise each tensor is converted/copied into its parameter, then the
//     source pages are released (SafetensorsFile::release). On CUDA a tensor
//     whose file dtype differs is uploaded as stored and converted on the
//     GPU, so the host holds no converted copy (a float32 file loaded as
//     bfloat16 costs one tensor's float32 size of GPU memory, briefly).
// Every parameter must match a checkpoint tensor by name and shape, and every
// checkpoint tensor must be used (besides ones transformers ignores too: a
// rotary_emb.inv_freq buffer, lm_head.weight of a tied model); otherwise an
// Error lists the missing, unexpected and misshapen tensors with counts.
// Loaded parameters have requires_grad false.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>

#include "trainer/model/config.h"
#include "trainer/model/model.h"

namespace loratune::model {

struct LoadOptions {
  at::ScalarType dtype = at::kFloat;  // float32, bfloat16 or float16
  std::string device = "cpu";         // "cpu", "cuda", "cuda:N"
};

// Parses "float32"/"fp32"/"f32", "bfloat16"/"bf16", "float16"/"fp16"/"f16".
at::ScalarType parse_dtype(const std::string& name);
std::string dtype_string(at::ScalarType t);  // "float32", "bfloat16", "float16"

CausalLM load_model(const std::string& dir, const LoadOptions& options = {});

// The checkpoint tensor name a parameter is loaded from. The one place where
// model parameter names and file names meet.
std::string checkpoint_name(const ModelConfig& config, const std::string& param_name);

}  // namespace loratune::model
