// trainer/io/error.cpp — closest_match for "did you mean" hints.
#include "trainer/io/error.h"

#include <algorithm>
#include <cstddef>

namespace loratune {
namespace {

// Levenshtein distance with one rolling row: O(|a|·|b|) time, O(|b|) memory.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];  // row[i-1][j-1]
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];  // row[i-1][j]
      size_t subst = diag + (a[i - 1] == b[j - 1] ? 0 : 1);
      row[j] = std::min({up + 1, row[j - 1] + 1, subst});
      diag = up;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string closest_match(const std::string& key, const std::vector<std::string>& choices) {
  const size_t limit = std::max<size_t>(2, key.size() / 3);
  std::string best;
  size_t best_distance = limit + 1;
  for (const auto& c : choices) {
    size_t d = edit_distance(key, c);
    if (d < best_distance) {  // first of equally close candidates wins
      best_distance = d;
      best = c;
    }
  }
  return best_distance <= limit ? best : std::string();
}

}  // namespace loratune
