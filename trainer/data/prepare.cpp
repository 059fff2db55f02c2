// trainer/data/prepare.cpp — the whole pipeline: files (through the cache)
// -> validation split -> truncation and filtering.
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "trainer/data/data.h"
#include "trainer/data/detail.h"
#include "trainer/io/error.h"
#include "trainer/io/file_util.h"
#include "trainer/io/sha256.h"
#include "trainer/tokenizer/tokenizer.h"

namespace loratune::data {
namespace {

// Stream of permutation() used for the validation split; epoch shuffles use
// streams 0, 1, 2, ... so this one never collides with them.
constexpr uint64_t kSplitStream = ~0ull;

std::string join(const std::vector<std::string>& files) {
  std::string s;
  for (const auto& f : files) s += (s.empty() ? "" : ", ") + f;
  return s;
}

// Encodes `files`, through the cache when cfg.cache_dir is set.
// Sets *hit when the result came from the cache.
detail::EncodedFiles encode_files(const std::vector<std::string>& files,
                                  const config::DataConfig& cfg, const ExampleEncoder& enc,
                                  const std::string& template_source,
                                  const std::string& tokenizer_dir, const WarnFn& warn, bool* hit) {
  *hit = false;
  std::string key, path;
  if (!cfg.cache_dir.empty()) {
    if (tokenizer_dir.empty()) {
      throw Error("data.cache_dir is set but no tokenizer directory was given to key the cache",
                  ErrorKind::kInternal);
    }
    key = detail::cache_key(files, cfg, template_source, tokenizer_dir);
    path =
        (std::filesystem::path(cfg.cache_dir) / ("data-" + io::to_hex(key).substr(0, 32) + ".bin"))
            .string();
    std::error_code ec;
    if (std::filesystem::exists(path, ec)) {
      detail::EncodedFiles cached;
      std::string why;
      std::string bytes;
      try {
        bytes = io::read_file(path);
      } catch (const Error& e) {
        why = e.what();
      }
      if (why.empty() && detail::decode_cache(bytes, key, &cached, &why)) {
        *hit = true;
        return cached;
      }
      detail::emit_warning(
          warn, "ignoring unusable data cache " + path + " (" + why + "); rebuilding it");
    }
  }
  detail::EncodedFiles e;
  DataStats s;
  e.examples = read_files(files, enc, cfg, &s, warn);
  e.records = s.records;
  e.skipped_malformed = s.skipped_malformed;
  if (!path.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(cfg.cache_dir, ec);
    if (ec) {
      throw Error("data.cache_dir " + cfg.cache_dir + ": cannot create: " + ec.message(),
                  ErrorKind::kIo);
    }
    io::write_file_atomic(path, detail::encode_cache(e, key));
  }
  return e;
}

void check_not_empty(const std::vector<Example>& ex, const DataStats& s, const char* what,
                     const std::vector<std::string>& files) {
  if (!ex.empty()) return;
  throw Error("no " + std::string(what) + " examples in " + join(files) + " (" +
                  std::to_string(s.records) + " records, " + std::to_string(s.skipped_malformed) +
                  " malformed skipped, " + std::to_string(s.dropped_no_targets) +
                  " without any target token after truncation to data.max_seq_len)",
              ErrorKind::kData);
}

bool has_tokenizer_files(const std::string& dir) {
  std::error_code ec;
  return std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.json", ec) ||
         std::filesystem::exists(std::filesystem::path(dir) / "tokenizer.model", ec);
}

std::string no_tokenizer_reason(const std::string& model_dir) {
  return model_dir +
         " has no tokenizer (tokenizer.json or tokenizer.model); without one only "
         "pre-tokenized records {\"input_ids\", \"labels\"?} can be used";
}

// An id key of a model's JSON file: an int, or the first int of a list;
// -1 when absent or null.
int64_t id_field(const Json& j, const char* key, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return -1;
  const Json* v = &*it;
  if (v->is_array()) {
    if (v->empty()) return -1;
    v = &(*v)[0];
  }
  if (!v->is_number_integer()) {
    throw Error(file + ": " + key + " must be an integer or a list of integers",
                ErrorKind::kCorrupt);
  }
  return v->get<int64_t>();
}

// config.json's vocab_size: the id range of pre-tokenized records.
int64_t model_vocab_size(const std::string& model_dir) {
  const std::string file = (std::filesystem::path(model_dir) / "config.json").string();
  const Json j = io::read_json(file);
  auto it = j.find("vocab_size");
  if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < 1) {
    throw Error(file + ": vocab_size missing or not a positive integer", ErrorKind::kCorrupt);
  }
  return it->get<int64_t>();
}

}  // namespace

std::unique_ptr<tokenizer::Tokenizer> load_tokenizer_if_present(const std::string& model_dir) {
  if (!has_tokenizer_files(model_dir)) return nullptr;
  return tokenizer::load_tokenizer(model_dir);
}

int32_t pad_id_for_model(const tokenizer::Tokenizer* tok, const std::string& model_dir) {
  if (tok) return pad_id_for(*tok);
  const int64_t vocab = model_vocab_size(model_dir);
  for (const char* name : {"config.json", "generation_config.json"}) {
    const std::filesystem::path p = std::filesystem::path(model_dir) / name;
    std::error_code ec;
    if (!std::filesystem::exists(p, ec)) continue;
    const Json j = io::read_json(p.string());
    for (const char* key : {"pad_token_id", "eos_token_id"}) {
      const int64_t id = id_field(j, key, p.string());
      if (id < 0) continue;
      if (id >= vocab) {
        throw Error(p.string() + ": " + key + " " + std::to_string(id) +
                        " is outside the vocabulary [0, " + std::to_string(vocab) + ")",
                    ErrorKind::kCorrupt);
      }
      return static_cast<int32_t>(id);
    }
  }
  return 0;
}

PreparedData prepare_data(const config::DataConfig& cfg, uint64_t seed,
                          const tokenizer::Tokenizer& tok, const std::string& tokenizer_dir,
                          const WarnFn& warn) {
  return prepare_data(cfg, seed, &tok, tokenizer_dir, warn);
}

PreparedData prepare_data(const config::DataConfig& cfg, uint64_t seed,
                          const tokenizer::Tokenizer* tok, const std::string& model_dir,
                          const WarnFn& warn) {
  if (cfg.train.empty()) throw Error("data.train: no training files");
  const std::string& tokenizer_dir = model_dir;
  if (!cfg.validation.empty() && cfg.val_fraction > 0) {
    throw Error("data.validation and data.val_fraction are mutually exclusive");
  }
  if (cfg.val_fraction < 0 || cfg.val_fraction >= 1) {
    throw Error("data.val_fraction must be in [0, 1), got " + std::to_string(cfg.val_fraction));
  }
  std::unique_ptr<ExampleEncoder> enc =
      tok ? std::make_unique<ExampleEncoder>(*tok, cfg)
          : std::make_unique<ExampleEncoder>(cfg, model_vocab_size(model_dir),
                                             no_tokenizer_reason(model_dir));
  const std::string template_source = detail::chat_template_source(tok, cfg);
  PreparedData out;
  bool hit = false;
  detail::EncodedFiles train =
      encode_files(cfg.train, cfg, *enc, template_source, tokenizer_dir, warn, &hit);
  out.cache_hit = hit;
  out.train = std::move(train.examples);
  out.train_stats.records = train.records;
  out.train_stats.skipped_malformed = train.skipped_malformed;

  if (!cfg.validation.empty()) {
    detail::EncodedFiles val =
        encode_files(cfg.validation, cfg, *enc, template_source, tokenizer_dir, warn, &hit);
    out.cache_hit = out.cache_hit && hit;
    out.validation = std::move(val.examples);
    out.validation_stats.records = val.records;
    out.validation_stats.skipped_malformed = val.skipped_malformed;
  } else if (cfg.val_fraction > 0 && !out.train.empty()) {
    // Hold out ceil(f * n) examples chosen by a seeded permutation; both
    // parts keep file order, so the epoch shuffles start from the same list.
    const int64_t n = static_cast<int64_t>(out.train.size());
    if (n < 2) {
      throw Error("data.val_fraction needs at least 2 examples, " + join(cfg.train) + " has " +
                      std::to_string(n),
                  ErrorKind::kData);
    }
    int64_t n_val = static_cast<int64_t>(std::ceil(cfg.val_fraction * static_cast<double>(n)));
    n_val = std::min<int64_t>(std::max<int64_t>(n_val, 1), n - 1);
    std::vector<int64_t> perm = permutation(n, seed, kSplitStream);
    std::vector<bool> held(static_cast<size_t>(n), false);
    for (int64_t i = 0; i < n_val; ++i) held[perm[i]] = true;
    std::vector<Example> kept;
    for (int64_t i = 0; i < n; ++i) {
      (held[i] ? out.validation : kept).push_back(std::move(out.train[i]));
    }
    out.train = std::move(kept);
    out.validation_stats.records = n_val;
  }

  truncate_and_filter(&out.train, cfg.max_seq_len, &out.train_stats);
  check_not_empty(out.train, out.train_stats, "training", cfg.train);
  truncate_and_filter(&out.validation, cfg.max_seq_len, &out.validation_stats);
  if (!cfg.validation.empty()) {
    check_not_empty(out.validation, out.validation_stats, "validation", cfg.validation);
  }
  const std::string train_line =
      detail::summary_line("train", cfg.train, out.train_stats, cfg.max_seq_len);
  if (!train_line.empty()) detail::emit_warning(warn, train_line);
  const std::vector<std::string>& val_files =
      cfg.validation.empty() ? std::vector<std::string>{"(val_fraction of train)"} : cfg.validation;
  const std::string val_line =
      detail::summary_line("validation", val_files, out.validation_stats, cfg.max_seq_len);
  if (!val_line.empty()) detail::emit_warning(warn, val_line);
  return out;
}

}  // namespace loratune::data
