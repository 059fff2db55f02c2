// trainer/data/data.h — JSONL files -> token ids + labels -> padded or packed
// batches, with a tokenized-data cache and a resumable loader.
//
// Torch-free: everything here is int32 vectors; the training loop turns a
// Batch into tensors. Settings come from config::DataConfig (data.* keys) and
// the run's seed.
//
// Records (one JSON object per line; blank lines are skipped, a UTF-8 BOM and
// CRLF line ends are accepted; other keys in a record are ignored):
//   text               {"text"}: every token is a target, EOS appended.
//   instruction        {"instruction", "input"?, "output"} (Alpaca): rendered
//                      with the Stanford Alpaca prompt, axolotl's default for
//                      `type: alpaca` (no chat template; data.chat_template
//                      applies to chat records only):
//                        "Below is an instruction that describes a task[, paired
//                        with an input ...]. Write a response ...\n\n
//                        ### Instruction:\n{instruction}\n\n[### Input:\n{input}\n\n]
//                        ### Response:\n" + output
//                      then as prompt_completion. An empty or null "input" uses
//                      the no-input prompt.
//   prompt_completion  {"prompt", "completion"}: the text prompt + completion
//                      (no separator, as TRL) is tokenized ONCE with byte
//                      offsets; a token is a target when it overlaps the
//                      completion (end > prompt bytes), so a token that merges
//                      the prompt's end with the completion's start (e.g.
//                      "Q: " + "A" -> " A") is trained on. This equals TRL's
//                      completion_only_loss (len(tokenize(prompt)) tokens
//                      masked) whenever tokenize(prompt) is a prefix of
//                      tokenize(prompt + completion), and never drops
//                      completion text when it is not. EOS appended.
//   chat               {"messages": [{"role", "content", ...}], "tools"?}:
//                      rendered by the chat template (data.chat_template:
//                      "auto" = the tokenizer's own, or a built-in name) and
//                      tokenized with add_special_tokens=false, as
//                      apply_chat_template does (the template writes BOS; no
//                      second one). Targets are the assistant spans of
//                      chat::encode_chat ({% generation %} output, else each
//                      assistant turn after its header, including the
//                      template's turn end such as <|eot_id|>); nothing
//                      appended. "content" must be a string.
//   tokenized          {"input_ids": [int], "labels"?: [int]}: labels aligned
//                      with input_ids as in HF (the model shifts them; -100 is
//                      ignored; absent = every token is a target). Used as is.
// For text, instruction and prompt_completion the tokenizer adds BOS as
// `tokenizer(text)` does, and EOS (special_tokens().eos_id) is appended as a
// target unless the post-processor already ended with it. With
// data.train_on_prompt every token (except tokenized records' own labels) is
// a target. Special-token text in data is plain text (split_special_tokens)
// unless data.allow_special_tokens; for chat that is
// chat::ControlTokens::kTemplateOnly vs kEverywhere.
//
// data.format=auto detects each line from its keys, first match wins:
// "messages" > "input_ids" > "instruction"+"output" > "prompt"+"completion" >
// "text" (Alpaca dumps often carry a "text" column too). All records of one
// file must have the same format (an error names file:line and both
// formats); different files may differ.
//
// Errors: loratune::Error, one line, "<file>:<line>: <problem>" for a record
// (broken JSON, missing key, wrong type, template refusal, label length:
// ErrorKind::kData), "data file: <file>: ..." for a missing or unreadable
// file (kIo); settings that cannot work (no chat template, no tokenizer for
// text records) stay kConfig. Bytes quoted from records are escaped
// (printable()). With data.skip_malformed, kData record errors are counted
// (and the first few passed to the warning callback) instead.
//
// Without a tokenizer (a model directory with neither tokenizer.json nor
// tokenizer.model) only pre-tokenized records can be read; see
// load_tokenizer_if_present and the prepare_data overload below.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/config/config.h"

namespace loratune::tokenizer {
class Tokenizer;
}

namespace loratune::data {

using Json = nlohmann::ordered_json;
using config::DataFormat;

// Label value that the loss ignores (PyTorch cross_entropy ignore_index).
constexpr int32_t kIgnoreIndex = -100;

// Receives human-readable warnings (skipped records, corrupt cache, ...).
// Empty = print to stderr as "loratune: warning: ...".
using WarnFn = std::function<void(const std::string&)>;

// One tokenized example. Both vectors have length T >= 1; labels[t] is the
// target for position t in HF's convention (the loss compares logits[t-1]
// with labels[t]), kIgnoreIndex where no loss is taken.
struct Example {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
};

// Tokenizes records of any format. Holds the tokenizer (not owned: it must
// outlive the encoder) and the compiled chat template.
class ExampleEncoder {
 public:
  // Throws when data.chat_template names an unknown built-in, or format is
  // chat and no template is available. With format auto a missing template
  // is only an error when a chat record arrives.
  ExampleEncoder(const tokenizer::Tokenizer& tok, const config::DataConfig& cfg);
  // Without a tokenizer: only tokenized records, their ids checked against
  // [0, vocab_size). Any other record (and data.format other than auto or
  // tokenized, at construction) is a kConfig error ending in `no_tokenizer`
  // (why there is none, e.g. "<dir> has no tokenizer.json or tokenizer.model").
  ExampleEncoder(const config::DataConfig& cfg, int64_t vocab_size,
                 const std::string& no_tokenizer);
  ~ExampleEncoder();
  ExampleEncoder(const ExampleEncoder&) = delete;
  ExampleEncoder& operator=(const ExampleEncoder&) = delete;

  // The format of `record` by its keys (see above); throws naming the keys
  // when none matches or `record` is not an object.
  static DataFormat detect(const Json& record);
  // Encodes `record` as `format` (not kAuto). Throws loratune::Error with the
  // problem but without file:line (the reader adds it).
  Example encode(const Json& record, DataFormat format) const;

 private:
  struct Impl;
  Impl* impl_;
};

// The Alpaca prompt for an instruction record (input may be empty).
std::string alpaca_prompt(const std::string& instruction, const std::string& input);

// Counts from reading and preparing one split (the trainer writes them to
// metrics; prepare_data prints them as one summary line when anything was
// skipped, dropped or truncated).
struct DataStats {
  int64_t records = 0;             // non-blank lines read
  int64_t skipped_malformed = 0;   // records skipped (data.skip_malformed)
  int64_t dropped_no_targets = 0;  // examples with no target token after truncation:
                                   //   dropped_empty + dropped_truncated
  int64_t dropped_empty = 0;       // ... none at all: everything masked (prompt only)
  int64_t dropped_truncated = 0;   // ... all targets were past max_seq_len
  int64_t truncated = 0;           // examples cut to max_seq_len (kept or dropped)
  int64_t examples = 0;            // examples kept
  int64_t tokens = 0;              // tokens in kept examples
  int64_t target_tokens = 0;       // tokens that are targets (labels[1:] != -100)
};

// Reads and encodes `files` in order (one Example per valid record, in file
// and line order; not truncated). Throws for a missing/unreadable file or a
// record error (unless skip_malformed). Updates stats->records and
// stats->skipped_malformed when `stats` is non-null.
std::vector<Example> read_files(const std::vector<std::string>& files, const ExampleEncoder& enc,
                                const config::DataConfig& cfg, DataStats* stats,
                                const WarnFn& warn = {});

// Cuts examples longer than max_seq_len to their first max_seq_len tokens and
// drops examples with no target in labels[1:] (the loss would be empty).
// Updates stats (truncated, dropped_*, examples, tokens, target_tokens).
void truncate_and_filter(std::vector<Example>* examples, int64_t max_seq_len, DataStats* stats);

// ---- sequences and batches ------------------------------------------------

// One row of a batch before padding: a single example, or several packed.
// All vectors have length L <= max_seq_len.
struct Sequence {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;        // kIgnoreIndex at the first token of
                                      // every packed example but the first
  std::vector<int32_t> position_ids;  // 0, 1, ... restarting per example
  std::vector<int32_t> segment_ids;   // 1, 2, ... one per example in the row
};

// One sequence per example (packing=false), or examples packed into
// sequences of at most max_seq_len tokens by best-fit decreasing (TRL's
// default "bfd"; ties by example order, so deterministic). An example is
// never split (examples must already be <= max_seq_len: truncate first).
// In a packed row the first label of each example after the first is set to
// kIgnoreIndex, as DataCollatorWithFlattening does, so no loss crosses an
// example boundary; the model must restrict attention by segment_ids.
std::vector<Sequence> make_sequences(const std::vector<Example>& examples, int64_t max_seq_len,
                                     bool packing);

// B rows padded on the right to the longest row T. Row-major (B, T) arrays.
struct Batch {
  int64_t rows = 0;                     // B
  int64_t seq_len = 0;                  // T
  std::vector<int32_t> input_ids;       // (B,T); pad_id on padding
  std::vector<int32_t> labels;          // (B,T); kIgnoreIndex on padding
  std::vector<int32_t> position_ids;    // (B,T); 0 on padding
  std::vector<int32_t> segment_ids;     // (B,T); 1.. per example in a row, 0 on padding
  std::vector<uint8_t> attention_mask;  // (B,T); 1 on tokens, 0 on padding
  int64_t target_tokens = 0;            // labels[:, 1:] != kIgnoreIndex: the loss's denominator
};

// Pads `rows` into a Batch. Throws on an empty list.
Batch collate(const std::vector<const Sequence*>& rows, int32_t pad_id);

// The target tokens of one row: labels[1:] != kIgnoreIndex (its first label
// never counts: the loss shifts labels by one). A Batch's target_tokens is
// the sum of this over its rows (padding is kIgnoreIndex).
int64_t target_tokens(const Sequence& s);

// What some batches hold, counted without collating them.
struct BatchCounts {
  int64_t target_tokens = 0;  // the sum of their Batch::target_tokens
  int64_t tokens = 0;         // the sum of their attention_mask (non-padding tokens)
};

// The pad id: the tokenizer's pad token, else EOS (the usual
// `tokenizer.pad_token = tokenizer.eos_token`), else 0. Padding is masked
// (labels -100, attention 0), so the value never reaches the loss.
int32_t pad_id_for(const tokenizer::Tokenizer& tok);

// As pad_id_for(*tok) when `tok` is non-null; without a tokenizer (pre-
// tokenized data) the first of config.json's pad_token_id, eos_token_id,
// then generation_config.json's pad_token_id, eos_token_id (an int, or the
// first of a list) in `model_dir`, else 0 (padding never reaches the loss;
// pre-tokenized records get no EOS appended, so none is needed). An id
// outside [0, vocab_size) in those files is a kCorrupt error naming the file.
int32_t pad_id_for_model(const tokenizer::Tokenizer* tok, const std::string& model_dir);

// The tokenizer of `model_dir`, or null when the directory has neither
// tokenizer.json nor tokenizer.model (then only pre-tokenized data can be
// used). A tokenizer file that is present but broken still throws.
std::unique_ptr<tokenizer::Tokenizer> load_tokenizer_if_present(const std::string& model_dir);

// ---- loader ---------------------------------------------------------------

// Where a loader is: the next batch starts at sequence `index` of epoch
// `epoch`'s order. Saving position() and seek()ing to it later reproduces the
// same batches exactly.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  bool operator==(const LoaderPosition& o) const { return epoch == o.epoch && index == o.index; }
};

// Iterates over sequences in batches, epoch after epoch. With shuffle, each
// epoch's order is permutation(n, seed, epoch): Fisher–Yates driven by a
// SplitMix64 generator with an unbiased bounded draw, all written here
// (std::shuffle and std::uniform_int_distribution are implementation-defined
// and differ across standard libraries; this does not). Without shuffle the
// order is the input order.
// The last batch of an epoch may be smaller; batches never span epochs.
class DataLoader {
 public:
  // `sequences` must be non-empty; batch_size >= 1.
  DataLoader(std::vector<Sequence> sequences, int64_t batch_size, int32_t pad_id, uint64_t seed,
             bool shuffle);

  int64_t sequences_per_epoch() const { return static_cast<int64_t>(sequences_.size()); }
  int64_t batches_per_epoch() const;
  LoaderPosition position() const { return pos_; }
  // Moves to `p`; throws unless 0 <= p.index <= sequences_per_epoch() and
  // p.epoch >= 0 (index == size means "at the end of that epoch").
  void seek(LoaderPosition p);
  // The next batch; advances the position (into the next epoch after its last batch).
  Batch next();
  // What the next `k` batches (k >= 0) hold, exactly as collating them
  // would count, without collating them or moving the position (a
  // distributed step's totals, where each rank collates only its share).
  BatchCounts peek_counts(int64_t k) const;
  // Moves past the next `k` batches (k >= 0) without collating them: the
  // position that k calls of next() reach.
  void skip(int64_t k);
  // The sequence indices of `epoch` in the order they are served.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

 private:
  // The batch served from `*p`: [begin, end) of epoch `epoch`'s order; moves
  // *p past it. The one place that decides where batches start and end.
  struct Span {
    int64_t epoch = 0, begin = 0, end = 0;
  };
  Span take(LoaderPosition* p) const;

  std::vector<Sequence> sequences_;
  std::vector<int64_t> targets_;  // target_tokens(sequences_[i])
  int64_t batch_size_;
  int32_t pad_id_;
  uint64_t seed_;
  bool shuffle_;
  LoaderPosition pos_;
  int64_t order_epoch_ = -1;  // epoch whose order order_ holds
  std::vector<int64_t> order_;
};

// A seeded permutation of [0, n) (the loader's shuffle; exposed for tests).
std::vector<int64_t> permutation(int64_t n, uint64_t seed, uint64_t stream);

// ---- the whole pipeline ---------------------------------------------------

struct PreparedData {
  std::vector<Example> train;       // truncated, filtered, in file order
  std::vector<Example> validation;  // empty when there is no validation data
  DataStats train_stats, validation_stats;
  bool cache_hit = false;  // every split came from the cache
};

// Reads, encodes (or loads from the cache), splits and truncates the data of
// `cfg`. Order of work:
//  1. encode data.train (and data.validation) files, through the cache when
//     data.cache_dir is set;
//  2. with data.val_fraction > 0 (and no validation files), hold out
//     ceil(val_fraction * n) examples (at least 1, at most n - 1) chosen by a
//     permutation seeded by `seed` (a stream of its own), before any epoch
//     shuffle; both parts keep file order;
//  3. truncate to max_seq_len and drop examples without targets.
// Throws loratune::Error naming the files when the training set (or given
// validation files) is empty after filtering.
//
// Cache: <cache_dir>/data-<key>.bin where key is the SHA-256 of the data file
// contents (in order), the tokenizer files in `tokenizer_dir`
// (tokenizer.json, tokenizer.model, tokenizer_config.json,
// special_tokens_map.json, generation_config.json), the chat template
// source used, the settings that change encoding (format, chat_template,
// train_on_prompt, allow_special_tokens, skip_malformed) and the cache
// version. It holds the untruncated encoded examples; max_seq_len, packing,
// val_fraction and seed apply after loading. Written with
// io::write_file_atomic; on read the magic, version, key, sizes and a
// SHA-256 of the contents are checked, and a file that fails is reported via
// `warn` and rebuilt. `tokenizer_dir` may be empty only without a cache_dir.
PreparedData prepare_data(const config::DataConfig& cfg, uint64_t seed,
                          const tokenizer::Tokenizer& tok, const std::string& tokenizer_dir,
                          const WarnFn& warn = {});

// As above with an optional tokenizer (load_tokenizer_if_present): when
// `tok` is null every record must be pre-tokenized ({"input_ids", ...}) and
// its ids are checked against vocab_size in `model_dir`/config.json; a
// record that needs a tokenizer is a kConfig error naming `model_dir`.
// `model_dir` also keys the cache (tokenizer_dir above).
PreparedData prepare_data(const config::DataConfig& cfg, uint64_t seed,
                          const tokenizer::Tokenizer* tok, const std::string& model_dir,
                          const WarnFn& warn = {});

}  // namespace loratune::data
