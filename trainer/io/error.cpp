// trainer/io/error.cpp — error kinds, closest_match for "did you mean" hints,
// printable() for bytes from outside inside one-line messages.
#include "trainer/io/error.h"

#include <algorithm>
#include <cstddef>
#include <cstdio>

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
    // The distance is at least the length difference: skip the O(|key|·|c|)
    // work when that alone is over the limit (a 1 MB key costs nothing).
    const size_t length_gap = key.size() > c.size() ? key.size() - c.size() : c.size() - key.size();
    if (length_gap > limit || length_gap >= best_distance) continue;
    size_t d = edit_distance(key, c);
    if (d < best_distance) {  // first of equally close candidates wins
      best_distance = d;
      best = c;
    }
  }
  return best_distance <= limit ? best : std::string();
}

int exit_code(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConfig:
      return 1;
    case ErrorKind::kInternal:
      return 2;
    case ErrorKind::kData:
      return 3;
    case ErrorKind::kIo:
      return 4;
    case ErrorKind::kCorrupt:
      return 5;
    case ErrorKind::kUnsupported:
      return 6;
    case ErrorKind::kResource:
      return 7;
  }
  return 2;
}

const char* kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kConfig:
      return "config";
    case ErrorKind::kInternal:
      return "internal";
    case ErrorKind::kData:
      return "data";
    case ErrorKind::kIo:
      return "io";
    case ErrorKind::kCorrupt:
      return "corrupt";
    case ErrorKind::kUnsupported:
      return "unsupported";
    case ErrorKind::kResource:
      return "resource";
  }
  return "internal";
}

std::string printable(const std::string& text, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 8);
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  auto escape = [&out](unsigned char c) {
    char buf[5];
    std::snprintf(buf, sizeof buf, "\\x%02X", c);
    out += buf;
  };
  while (i < n) {
    if (out.size() >= max_bytes) {
      out += "...";
      break;
    }
    const unsigned char c = s[i];
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7F) {
        escape(c);
      } else {
        out += static_cast<char>(c);
      }
      ++i;
      continue;
    }
    // A well-formed UTF-8 sequence (no overlongs, no surrogates, <= U+10FFFF)
    // is kept as it is; anything else is escaped byte by byte.
    size_t len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    bool ok = len > 0 && c <= 0xF4 && i + len <= n;
    for (size_t k = 1; ok && k < len; ++k) ok = (s[i + k] & 0xC0) == 0x80;
    if (ok && len == 3) {
      ok = !(c == 0xE0 && s[i + 1] < 0xA0) && !(c == 0xED && s[i + 1] >= 0xA0);
    }
    if (ok && len == 4) ok = !(c == 0xF0 && s[i + 1] < 0x90) && !(c == 0xF4 && s[i + 1] >= 0x90);
    if (!ok) {
      escape(c);
      ++i;
      continue;
    }
    out.append(text, i, len);
    i += len;
  }
  return out;
}

}  // namespace loratune
