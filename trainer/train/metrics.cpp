// metrics.jsonl writer.
#include <fstream>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

MetricsLog::MetricsLog(std::string path) : path_(std::move(path)) {
  std::ofstream f(path_, std::ios::app);
  if (!f) throw Error(path_ + ": cannot open for appending", ErrorKind::kIo);
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  std::ofstream f(path_, std::ios::app);
  // Non-finite numbers are written as null (JSON has no NaN).
  f << record.dump() << '\n';
  f.flush();
  if (!f) throw Error(path_ + ": write failed", ErrorKind::kIo);
}

FinalLosses read_final_losses(const std::string& metrics_path) {
  FinalLosses out;
  std::ifstream f(metrics_path);
  if (!f) throw Error(metrics_path + ": cannot open", ErrorKind::kIo);
  std::string line;
  int64_t lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      throw Error(metrics_path + ":" + std::to_string(lineno) + ": not a JSON object",
                  ErrorKind::kCorrupt);
    }
    auto split = j.find("split");
    auto loss = j.find("loss");
    if (split == j.end() || loss == j.end() || !split->is_string()) continue;
    std::optional<double> v;
    if (loss->is_number()) v = loss->get<double>();
    if (*split == "train") out.train = v;
    if (*split == "val") out.val = v;
  }
  return out;
}

}  // namespace loratune::train
