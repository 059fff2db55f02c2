// loratune — LoRA fine-tuning for open-weight models on LibTorch.
#include <c10/util/Exception.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "trainer/cli/commands.h"
#include "trainer/io/error.h"

namespace {

// Prints "loratune: error: <what>" as exactly one line and returns the exit
// code of `kind`. Bytes from outside (file contents, names) inside `what` are
// escaped, newlines included.
int report(loratune::ErrorKind kind, const std::string& what) {
  std::string line = what;
  // LibTorch messages end in a newline and may carry a backtrace after it.
  if (kind == loratune::ErrorKind::kInternal || kind == loratune::ErrorKind::kResource) {
    const size_t nl = line.find('\n');
    if (nl != std::string::npos) line.resize(nl);
  }
  line = loratune::printable(line, 4096);
  const char* label = kind == loratune::ErrorKind::kInternal ? "internal error" : "error";
  std::fprintf(stderr, "loratune: %s: %s\n", label, line.c_str());
  return loratune::exit_code(kind);
}

// CLI11's message as one line, with the command's --help and, for an
// unknown first word, the closest subcommand.
std::string parse_error_line(const CLI::App& app, const CLI::ParseError& e) {
  std::string msg = e.what();
  const CLI::App* sub = nullptr;
  std::vector<std::string> names;
  for (const CLI::App* s : app.get_subcommands({})) {
    names.push_back(s->get_name());
    if (s->parsed()) sub = s;
  }
  if (sub == nullptr && !app.remaining().empty()) {
    const std::string word = app.remaining().front();
    msg = "unknown command '" + word + "'";
    const std::string best = loratune::closest_match(word, names);
    msg += best.empty() ? "" : " (did you mean '" + best + "'?)";
    std::string all;
    for (const auto& n : names) all += (all.empty() ? "" : ", ") + n;
    msg += "; commands: " + all;
    return msg;
  }
  for (char& c : msg) {
    if (c == '\n') c = ' ';
  }
  while (!msg.empty() && msg.back() == ' ') msg.pop_back();
  return msg + " (see `loratune " + (sub ? sub->get_name() + " " : std::string()) + "--help`)";
}

// Path options given as '' would mean "none" to some commands and the
// working directory to others ("': rename failed"): refused by name.
void refuse_empty_paths(CLI::App& app) {
  static const char* const kPathOptions[] = {"--model", "--adapter", "--out", "--file", "--data",
                                             "--chat",  "config",    "file",  "DIR"};
  const CLI::Validator non_empty(
      [](std::string& v) { return v.empty() ? std::string("the path is empty") : std::string(); },
      "");
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
    for (CLI::Option* opt : sub->get_options()) {
      for (const char* name : kPathOptions) {
        if (opt->get_name() == name) opt->check(non_empty);
      }
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "loratune: LoRA fine-tuning of Hugging Face decoder models (Llama, Mistral, Qwen2, "
      "Qwen3, Gemma 2, Gemma 3, Phi-3/Phi-4) on LibTorch.\nRun `loratune <command> --help` for the "
      "options of a command.\n"
      "Exit codes: 0 ok, 1 config or option, 2 internal, 3 data, 4 file system, 5 corrupt "
      "input file, 6 unsupported, 7 out of memory or a safety limit, 130/143 interrupted."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "loratune 0.1.0");
  loratune::cli::add_inspect_command(app);
  loratune::cli::add_logits_command(app);
  loratune::cli::add_tokenize_command(app);
  loratune::cli::add_train_command(app);
  loratune::cli::add_eval_command(app);
  loratune::cli::add_merge_command(app);
  loratune::cli::add_generate_command(app);
  loratune::cli::add_import_command(app);
  loratune::cli::add_export_gguf_command(app);
  refuse_empty_paths(app);
  using loratune::ErrorKind;
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::RuntimeError& e) {  // a command's own exit code (130/143 after a signal)
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return report(ErrorKind::kConfig, parse_error_line(app, e));
  } catch (const loratune::Error& e) {
    return report(e.kind(), e.what());
  } catch (const c10::OutOfMemoryError& e) {
    return report(ErrorKind::kResource,
                  std::string("out of memory: ") + e.what_without_backtrace());
  } catch (const std::bad_alloc&) {
    return report(ErrorKind::kResource, "out of memory (host allocation failed)");
  } catch (const std::length_error& e) {
    return report(ErrorKind::kResource, std::string("size limit exceeded: ") + e.what());
  } catch (const std::filesystem::filesystem_error& e) {  // permission, disk full, ...
    // "PATH: reason" rather than the library's "filesystem error: status: ... [PATH]".
    const std::string path = e.path1().string();
    if (path.empty()) return report(ErrorKind::kIo, e.what());
    return report(
        ErrorKind::kIo,
        "'" + loratune::printable(path, 160) + "': " + e.code().message() +
            (e.path2().empty() ? ""
                               : " (and '" + loratune::printable(e.path2().string(), 160) + "')"));
  } catch (const c10::Error& e) {
    return report(ErrorKind::kInternal, e.what_without_backtrace());
  } catch (const std::exception& e) {
    return report(ErrorKind::kInternal, e.what());
  }
  return 0;
}
