// `loratune merge`: base model + PEFT adapter -> merged Hugging Face model.
//
// SIGINT / SIGTERM stop the merge before its next tensor: the temp directory
// is removed, --out is left as it was, one line says so and the exit code is
// 130 / 143. A second signal kills at once.
#include <atomic>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "trainer/cli/commands.h"
#include "trainer/cli/paths.h"
#include "trainer/export/merge.h"
#include "trainer/gguf/gguf.h"
#include "trainer/io/error.h"
#include "trainer/io/lock.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/loader.h"

namespace loratune::cli {
namespace {

std::atomic<int> g_merge_stop{0};

extern "C" void on_merge_stop(int sig) {
  g_merge_stop.store(sig);
  std::signal(sig, SIG_DFL);  // a second signal ends the process
}

// A "Vm...:  N kB" line of /proc/self/status, in bytes; 0 where there is none.
uint64_t proc_status_bytes(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoull(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0), so that the peak read after
// the merge belongs to the merge and not to start-up. False where refused.
bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  return static_cast<bool>(f << "5" << std::flush);
}

}  // namespace

void add_merge_command(CLI::App& app) {
  auto opt = std::make_shared<exporter::MergeOptions>();
  auto dtype = std::make_shared<std::string>();
  auto shard = std::make_shared<std::string>("5GB");
  CLI::App* cmd = app.add_subcommand(
      "merge",
      "Merge a LoRA adapter into its base model and write a Hugging Face model directory "
      "(sharded safetensors + index, config.json, tokenizer files, README.md model card). "
      "W' = W + s*B@A in float32, cast once; streams tensor by tensor; the output appears "
      "atomically under --out.");
  cmd->add_option("--model", opt->model_dir,
                  "Base model directory (Hugging Face layout) or .gguf file (merged from its "
                  "float32 import)")
      ->required();
  cmd->add_option("--adapter", opt->adapter_dir,
                  "PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
      ->required();
  cmd->add_option(
         "--out", opt->out_dir,
         "Output directory (must not exist unless --overwrite; never the model or adapter "
         "directory, inside them or a parent of them). While the merge runs, OUT.lock beside it "
         "keeps other merges into OUT away")
      ->required();
  cmd->add_option("--dtype", *dtype,
                  "Output dtype: bfloat16, float16 or float32 (default: the base model's)");
  cmd->add_option("--shard-size", *shard,
                  "Largest shard, e.g. 5GB, 256MB, 500MiB (default 5GB, as transformers)");
  cmd->add_flag("--overwrite", opt->overwrite, "Replace an existing --out directory");
  auto report = std::make_shared<bool>(false);
  cmd->add_flag(
      "--report-memory", *report,
      "Print {\"baseline_rss_bytes\", \"peak_rss_bytes\"} on stderr: the RSS once "
      "libraries are loaded and before any file is read, and the peak RSS during the "
      "merge (VmRSS / VmHWM of /proc/self/status; used by scripts/bench_merge_memory.py)");
  cmd->callback([opt, dtype, shard, report] {
    refuse_output_over_inputs("--out", opt->out_dir,
                              {{"--model", opt->model_dir}, {"--adapter", opt->adapter_dir}});
    if (!dtype->empty()) opt->dtype = model::parse_dtype(*dtype);
    // A .gguf base merges from its float32 import: full precision, never re-quantized.
    opt->model_dir = gguf::resolve_model_path(opt->model_dir);
    // One merge per output at a time: a second one fails at once, naming the holder.
    std::string out = opt->out_dir;
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    const std::filesystem::path parent = std::filesystem::path(out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    io::DirLock lock(out + ".lock", "--out '" + opt->out_dir + "'");
    opt->max_shard_bytes = io::parse_size(*shard);
    const bool reset = *report && reset_peak_rss();
    const uint64_t baseline = *report ? proc_status_bytes("VmRSS") : 0;
    opt->stop_signal = &g_merge_stop;
    std::signal(SIGINT, on_merge_stop);
    std::signal(SIGTERM, on_merge_stop);
    try {
      exporter::merge_adapter(*opt);
    } catch (const exporter::Interrupted& e) {
      std::signal(SIGINT, SIG_DFL);
      std::signal(SIGTERM, SIG_DFL);
      std::fprintf(stderr, "loratune: merge %s; %s left as it was (temp files removed)\n", e.what(),
                   opt->out_dir.c_str());
      throw CLI::RuntimeError(128 + e.signal());
    }
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (*report) {
      std::fprintf(stderr,
                   "memory: {\"baseline_rss_bytes\": %llu, \"peak_rss_bytes\": %llu, "
                   "\"peak_reset_at_baseline\": %s}\n",
                   static_cast<unsigned long long>(baseline),
                   static_cast<unsigned long long>(proc_status_bytes("VmHWM")),
                   reset ? "true" : "false");
    }
    std::fprintf(stderr, "merged %s + %s -> %s\n", opt->model_dir.c_str(), opt->adapter_dir.c_str(),
                 opt->out_dir.c_str());
  });
}

}  // namespace loratune::cli
