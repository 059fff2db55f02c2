// trainer/gguf/metadata.cpp — typed access to GGUF metadata keys; errors
// name the file, the key, its type and the type expected (kCorrupt).
#include "trainer/gguf/gguf.h"

namespace loratune::gguf {
namespace {

const char* kind_of(const Value& v) {
  return v.type == ValueType::kArray ? "an array" : value_type_name(v.type);
}

[[noreturn]] void missing(const std::string& path, const std::string& key) {
  throw Error(path + ": required metadata key '" + key + "' is missing", ErrorKind::kCorrupt);
}
[[noreturn]] void wrong(const std::string& path, const std::string& key, const Value& v,
                        const char* expected) {
  throw Error(path + ": metadata key '" + key + "' is " + kind_of(v) + ", expected " + expected,
              ErrorKind::kCorrupt);
}
}  // namespace

int64_t GgufFile::get_int(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) missing(path_, key);
  if (!v->is_integer()) wrong(path_, key, *v, "an integer");
  if (v->type == ValueType::kUint64 && v->u > static_cast<uint64_t>(INT64_MAX)) {
    throw Error(
        path_ + ": metadata key '" + key + "' value " + std::to_string(v->u) + " is out of range",
        ErrorKind::kCorrupt);
  }
  return v->i;
}

double GgufFile::get_float(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) missing(path_, key);
  if (v->type == ValueType::kFloat32 || v->type == ValueType::kFloat64) return v->f;
  if (v->is_integer()) return static_cast<double>(v->i);
  wrong(path_, key, *v, "a number");
}

bool GgufFile::get_bool(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) missing(path_, key);
  if (v->type != ValueType::kBool) wrong(path_, key, *v, "bool");
  return v->i != 0;
}

const std::string& GgufFile::get_string(const std::string& key) const {
  const Value* v = find(key);
  if (v == nullptr) missing(path_, key);
  if (v->type != ValueType::kString) wrong(path_, key, *v, "string");
  return v->s;
}

const std::vector<Value>& GgufFile::get_array(const std::string& key, ValueType elem) const {
  const Value* v = find(key);
  if (v == nullptr) missing(path_, key);
  if (v->type != ValueType::kArray || v->elem_type != elem) {
    const std::string expected = std::string("an array of ") + value_type_name(elem);
    if (v->type == ValueType::kArray) {
      throw Error(path_ + ": metadata key '" + key + "' is an array of " +
                      value_type_name(v->elem_type) + ", expected " + expected,
                  ErrorKind::kCorrupt);
    }
    wrong(path_, key, *v, expected.c_str());
  }
  return v->array;
}

}  // namespace loratune::gguf
