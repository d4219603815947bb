#include "core/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv {
namespace {

std::string Canonical(std::string_view name) {
  std::string out(name);
  for (char& c : out) {
    if (c == '_') c = '-';
  }
  return out;
}

absl::Status BadValue(std::string_view name, std::string_view value, std::string_view want) {
  return absl::InvalidArgumentError(StrCat("flag --", name, ": '", value, "' is not ", want));
}

}  // namespace

FlagSet::FlagSet(std::string program) : program_(std::move(program)) {}

void FlagSet::Add(std::string_view name, Type type, void* dst, std::string_view help) {
  Flag f{type, dst, std::string(help), ""};
  f.default_text = Render(f);
  flags_[Canonical(name)] = std::move(f);
}

void FlagSet::String(std::string_view n, std::string* d, std::string_view h) {
  Add(n, Type::kString, d, h);
}
void FlagSet::Int(std::string_view n, int64_t* d, std::string_view h) { Add(n, Type::kInt, d, h); }
void FlagSet::Double(std::string_view n, double* d, std::string_view h) {
  Add(n, Type::kDouble, d, h);
}
void FlagSet::Bool(std::string_view n, bool* d, std::string_view h) { Add(n, Type::kBool, d, h); }
void FlagSet::Duration(std::string_view n, absl::Duration* d, std::string_view h) {
  Add(n, Type::kDuration, d, h);
}
void FlagSet::StringList(std::string_view n, std::vector<std::string>* d, std::string_view h) {
  Add(n, Type::kStringList, d, h);
}

FlagSet::Flag* FlagSet::Find(std::string_view name) {
  auto it = flags_.find(Canonical(name));
  return it == flags_.end() ? nullptr : &it->second;
}

std::string FlagSet::Render(const Flag& f) {
  switch (f.type) {
    case Type::kString:
      return *static_cast<std::string*>(f.dst);
    case Type::kInt:
      return StrCat(*static_cast<int64_t*>(f.dst));
    case Type::kDouble:
      return StrCat(*static_cast<double*>(f.dst));
    case Type::kBool:
      return *static_cast<bool*>(f.dst) ? "true" : "false";
    case Type::kDuration:
      return absl::FormatDuration(*static_cast<absl::Duration*>(f.dst));
    case Type::kStringList:
      return absl::StrJoin(*static_cast<std::vector<std::string>*>(f.dst), ",");
  }
  return "";
}

absl::Status FlagSet::Set(std::string_view name, std::string_view value) {
  Flag* f = Find(name);
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        StrCat("unknown flag --", name, " for ", program_, " (see --help)"));
  }
  switch (f->type) {
    case Type::kString:
      *static_cast<std::string*>(f->dst) = std::string(value);
      return absl::OkStatus();
    case Type::kInt: {
      int64_t v;
      if (!absl::SimpleAtoi(ToAbsl(value), &v)) return BadValue(name, value, "an integer");
      *static_cast<int64_t*>(f->dst) = v;
      return absl::OkStatus();
    }
    case Type::kDouble: {
      double v;
      if (!absl::SimpleAtod(ToAbsl(value), &v)) return BadValue(name, value, "a number");
      *static_cast<double*>(f->dst) = v;
      return absl::OkStatus();
    }
    case Type::kBool: {
      bool v;
      if (!absl::SimpleAtob(ToAbsl(value), &v)) return BadValue(name, value, "true or false");
      *static_cast<bool*>(f->dst) = v;
      return absl::OkStatus();
    }
    case Type::kDuration: {
      absl::Duration d;
      if (!absl::ParseDuration(ToAbsl(value), &d)) {
        return BadValue(name, value, "a duration like 250ms, 30s or 1h");
      }
      *static_cast<absl::Duration*>(f->dst) = d;
      return absl::OkStatus();
    }
    case Type::kStringList: {
      std::vector<std::string> v;
      if (!value.empty()) {
        for (absl::string_view part : absl::StrSplit(ToAbsl(value), ',')) {
          v.emplace_back(std::string(absl::StripAsciiWhitespace(part)));
        }
      }
      *static_cast<std::vector<std::string>*>(f->dst) = std::move(v);
      return absl::OkStatus();
    }
  }
  return absl::InternalError("unreachable flag type");
}

absl::Status FlagSet::Parse(int argc, char** argv, std::vector<std::string>* positional) {
  // Pass 1: find --config so the file is applied before any command-line flag.
  for (int i = 1; i < argc; ++i) {
    std::string_view a(argv[i]);
    if (a == "--") break;
    if (a.starts_with("--config=")) {
      config_path_ = std::string(a.substr(9));
    } else if (a == "--config") {
      if (i + 1 >= argc) return absl::InvalidArgumentError("flag --config needs a file");
      config_path_ = argv[i + 1];
    }
  }
  if (!config_path_.empty()) RETURN_IF_ERROR(ApplyConfigFile(config_path_));

  bool flags_done = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a(argv[i]);
    if (flags_done || !a.starts_with("--") || a.size() == 2) {
      if (!flags_done && a == "--") {
        flags_done = true;
        continue;
      }
      if (positional == nullptr) {
        return absl::InvalidArgumentError(
            StrCat(program_, ": unexpected argument '", a, "' (see --help)"));
      }
      positional->emplace_back(a);
      continue;
    }
    a.remove_prefix(2);
    if (a == "help") {
      help_requested_ = true;
      return absl::OkStatus();
    }
    std::string_view name = a, value;
    bool has_value = false;
    if (size_t eq = a.find('='); eq != std::string_view::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
      has_value = true;
    }
    if (name == "config") {
      if (!has_value) ++i;
      continue;
    }
    Flag* f = Find(name);
    if (f == nullptr && !has_value && name.starts_with("no-")) {
      Flag* neg = Find(name.substr(3));
      if (neg != nullptr && neg->type == Type::kBool) {
        *static_cast<bool*>(neg->dst) = false;
        continue;
      }
    }
    if (f == nullptr) {
      return absl::InvalidArgumentError(
          StrCat("unknown flag --", name, " for ", program_, " (see --help)"));
    }
    if (!has_value) {
      if (f->type == Type::kBool) {
        *static_cast<bool*>(f->dst) = true;
        continue;
      }
      if (i + 1 >= argc) {
        return absl::InvalidArgumentError(StrCat("flag --", name, " needs a value"));
      }
      value = argv[++i];
    }
    RETURN_IF_ERROR(Set(name, value));
  }
  return absl::OkStatus();
}

absl::Status FlagSet::ApplyConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return ErrnoToStatus(errno, StrCat("cannot read config file ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ApplyConfigText(ss.str(), path);
}

absl::Status FlagSet::ApplyConfigText(std::string_view text, std::string_view origin) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(origin, ": YAML syntax error: ", e.what()));
  }
  if (root.IsNull()) return absl::OkStatus();  // empty file
  if (!root.IsMap()) {
    return absl::InvalidArgumentError(
        StrCat(origin, ": a config file is a mapping of flag names to values"));
  }
  for (const auto& kv : root) {
    std::string key;
    try {
      key = kv.first.as<std::string>();
    } catch (const YAML::Exception&) {
      return absl::InvalidArgumentError(StrCat(origin, ": a key is not a string"));
    }
    Flag* f = Find(key);
    if (f == nullptr) {
      return absl::InvalidArgumentError(StrCat(origin, ": unknown key '", key, "' for ", program_));
    }
    std::string value;
    try {
      if (kv.second.IsSequence()) {
        if (f->type != Type::kStringList) {
          return absl::InvalidArgumentError(
              StrCat(origin, ": key '", key, "' takes a single value, not a list"));
        }
        std::vector<std::string> items;
        for (const auto& item : kv.second) items.push_back(item.as<std::string>());
        value = absl::StrJoin(items, ",");
      } else if (kv.second.IsScalar()) {
        value = kv.second.as<std::string>();
      } else if (kv.second.IsNull()) {
        value = "";
      } else {
        return absl::InvalidArgumentError(
            StrCat(origin, ": key '", key, "' must be a scalar or a list"));
      }
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(StrCat(origin, ": key '", key, "': ", e.what()));
    }
    absl::Status s = Set(key, value);
    if (!s.ok()) return Annotate(s, origin);
  }
  return absl::OkStatus();
}

std::string FlagSet::Usage(std::string_view synopsis) const {
  std::string out = StrCat("usage: ", synopsis.empty() ? StrCat(program_, " [flags]") : synopsis,
                           "\n\nflags (also keys of --config=FILE, YAML):\n");
  for (const auto& [name, f] : flags_) {
    out += StrCat("  --", name, "  ", f.help);
    if (!f.default_text.empty()) out += StrCat(" (default: ", f.default_text, ")");
    out += StrCat("\n");
  }
  out += StrCat("  --config=FILE  YAML file of the flags above; command-line flags win\n");
  return out;
}

std::string FlagSet::DumpYaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  for (const auto& [name, f] : flags_) {
    e << YAML::Key << name << YAML::Value;
    if (f.type == Type::kStringList) {
      e << YAML::Flow << *static_cast<std::vector<std::string>*>(f.dst);
    } else {
      e << Render(f);
    }
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

}  // namespace kv
