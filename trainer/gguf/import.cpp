// trainer/gguf/import.cpp — import_gguf: a GGUF file -> a Hugging Face model
// directory, tensor by tensor (at most one shard of dequantized tensors in
// memory), written under a temp name and renamed into place.
#include <filesystem>

#include "trainer/gguf/gguf.h"
#include "trainer/io/file_util.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;

namespace loratune::gguf {

void import_gguf(const ImportOptions& opt) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(opt.out_dir, ec)) && !opt.overwrite) {
    throw Error("--out '" + opt.out_dir + "' already exists (use --overwrite to replace it)");
  }
  auto file = GgufFile::open(opt.gguf_path);
  // Everything that can be refused is checked before anything is written.
  const HfModel model = map_model(*file, opt.dtype);
  const HfTokenizer tok = map_tokenizer(*file);

  const fs::path parent = fs::path(opt.out_dir).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  io::AtomicDir out(opt.out_dir, opt.overwrite);
  const fs::path dir(out.path());
  {
    io::ShardedWriter writer(out.path(), opt.max_shard_bytes);
    for (const auto& e : model.entries) {
      const uint64_t nbytes = static_cast<uint64_t>(e.info->numel()) * c10::elementSize(opt.dtype);
      writer.make_room(nbytes);
      writer.add(e.hf_name, hf_tensor(*file, e, opt.dtype));
    }
    writer.finish();
  }
  io::write_file_atomic((dir / "config.json").string(), model.config_json);
  io::write_file_atomic((dir / "generation_config.json").string(), model.generation_config_json);
  if (!tok.tokenizer_json.empty()) {
    io::write_file_atomic((dir / "tokenizer.json").string(), tok.tokenizer_json);
    io::write_file_atomic((dir / "tokenizer_config.json").string(), tok.tokenizer_config_json);
  }
  if (!tok.chat_template.empty()) {
    io::write_file_atomic((dir / "chat_template.jinja").string(), tok.chat_template);
  }
  out.commit();
}

}  // namespace loratune::gguf
