// metrics.jsonl writer.
#include <fstream>

#include "trainer/io/error.h"
#include "trainer/train/train.h"

namespace loratune::train {

MetricsLog::MetricsLog(std::string path) : path_(std::move(path)) {
  std::ofstream f(path_, std::ios::app);
  if (!f) throw Error(path_ + ": cannot open for appending");
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
  std::ofstream f(path_, std::ios::app);
  // Non-finite numbers are written as null (JSON has no NaN).
  f << record.dump() << '\n';
  f.flush();
  if (!f) throw Error(path_ + ": write failed");
}

}  // namespace loratune::train
