// Flags and config files: every flag is also a key of a config file.
//
// A FlagSet binds names to variables the caller owns. The value a variable holds when it is
// bound is its default. Parse() reads `--config=FILE` first (a YAML mapping of flag names to
// scalars or lists), then applies the command line on top, so a command-line flag always
// wins over the file. Unknown names, in the file or on the command line, are errors naming
// the key; so are values that do not parse as the flag's type.
//
//   kv::FlagSet flags("kvstrata keys");
//   int64_t page_tokens = 64;
//   flags.Int("page-tokens", &page_tokens, "tokens per block");
//   RETURN_IF_ERROR(flags.Parse(argc, argv, &positional));
//
// Accepted syntax: --name=value, --name value, --bool-flag, --no-bool-flag. Names use
// dashes; underscores are accepted as aliases (page_tokens == page-tokens), so YAML files
// can use either. "--" ends flag parsing.
//
// Not thread-safe; a FlagSet is used by one thread while a program starts. The bound
// variables must outlive the FlagSet.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace kv {

class FlagSet {
 public:
  explicit FlagSet(std::string program);

  void String(std::string_view name, std::string* dst, std::string_view help);
  void Int(std::string_view name, int64_t* dst, std::string_view help);
  void Double(std::string_view name, double* dst, std::string_view help);
  void Bool(std::string_view name, bool* dst, std::string_view help);
  // Accepts absl duration syntax: 250ms, 30s, 1h5m.
  void Duration(std::string_view name, absl::Duration* dst, std::string_view help);
  // Comma-separated on the command line; a YAML sequence or a comma-separated string in a
  // config file.
  void StringList(std::string_view name, std::vector<std::string>* dst, std::string_view help);

  // Parses argv[1..argc). Positional arguments go to `positional` (an error if it is null
  // and any appear). `--help` sets help_requested() and returns OK without parsing further.
  absl::Status Parse(int argc, char** argv, std::vector<std::string>* positional = nullptr);

  // Applies a YAML config file. Returns NotFound if it cannot be read, InvalidArgument for
  // a syntax error, an unknown key or a bad value (the message names file and key).
  absl::Status ApplyConfigFile(const std::string& path);
  // Applies YAML text (same rules as ApplyConfigFile); `origin` names it in errors.
  absl::Status ApplyConfigText(std::string_view yaml, std::string_view origin);

  // Sets one flag from its string form.
  absl::Status Set(std::string_view name, std::string_view value);

  bool help_requested() const { return help_requested_; }
  // The program name given at construction ("kvstrata bench codec").
  const std::string& program() const { return program_; }
  // The config file given with --config, or empty.
  const std::string& config_path() const { return config_path_; }
  // "usage: SYNOPSIS" (default: "PROGRAM [flags]"), then every flag with its help.
  std::string Usage(std::string_view synopsis = "") const;
  // The current value of every flag as a YAML document (a valid config file).
  std::string DumpYaml() const;

 private:
  enum class Type { kString, kInt, kDouble, kBool, kDuration, kStringList };
  struct Flag {
    Type type;
    void* dst;
    std::string help;
    std::string default_text;
  };
  void Add(std::string_view name, Type type, void* dst, std::string_view help);
  Flag* Find(std::string_view name);
  static std::string Render(const Flag& f);

  std::string program_;
  std::map<std::string, Flag, std::less<>> flags_;
  std::string config_path_;
  bool help_requested_ = false;
};

}  // namespace kv
