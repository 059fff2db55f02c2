// Evaluation of a model (with its adapter) on data files.
#include "trainer/io/error.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/train/train.h"

namespace loratune::train {

EvalResult evaluate_files(model::CausalLMImpl& model, const tokenizer::Tokenizer& tok,
                          const std::string& tokenizer_dir, const config::DataConfig& data_cfg,
                          int64_t batch_size) {
  if (batch_size < 1) throw Error("evaluate: batch size must be >= 1");
  config::DataConfig cfg = data_cfg;
  cfg.val_fraction = 0.0;
  cfg.validation.clear();
  data::PreparedData prepared = data::prepare_data(cfg, /*seed=*/0, tok, tokenizer_dir);
  auto seqs = data::make_sequences(prepared.train, cfg.max_seq_len, cfg.packing);
  const int32_t pad = data::pad_id_for(tok);
  std::vector<MicroBatch> batches;
  const size_t bs = static_cast<size_t>(batch_size);
  for (size_t i = 0; i < seqs.size(); i += bs) {
    std::vector<const data::Sequence*> rows;
    for (size_t j = i; j < std::min(seqs.size(), i + bs); ++j) rows.push_back(&seqs[j]);
    batches.push_back(to_micro_batch(data::collate(rows, pad), model.device(), cfg.packing));
  }
  return evaluate(model, batches);
}

}  // namespace loratune::train
