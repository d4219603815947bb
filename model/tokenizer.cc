#include "model/tokenizer.h"

#include <array>

#include "absl/strings/str_cat.h"

namespace kv::model {
namespace {
constexpr std::array<std::string_view, ByteTokenizer::kVocabSize - 256> kSpecials = {
    "<|bos|>",  "<|eos|>", "<|pad|>",   "<|system|>", "<|user|>",   "<|assistant|>",
    "<|tool|>", "<|eot|>", "<|tools|>", "<|call|>",   "<|result|>",
};
}  // namespace

std::string_view ByteTokenizer::SpecialName(int32_t id) {
  if (id < 256 || id >= kVocabSize) return {};
  return kSpecials[id - 256];
}

std::vector<int32_t> ByteTokenizer::Encode(std::string_view text, bool add_bos,
                                           bool parse_specials) {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 1);
  if (add_bos) ids.push_back(kBos);
  size_t i = 0;
  while (i < text.size()) {
    bool matched = false;
    if (parse_specials && text[i] == '<') {
      for (size_t k = 0; k < kSpecials.size(); ++k) {
        if (text.substr(i, kSpecials[k].size()) == kSpecials[k]) {
          ids.push_back(static_cast<int32_t>(256 + k));
          i += kSpecials[k].size();
          matched = true;
          break;
        }
      }
    }
    if (!matched) ids.push_back(static_cast<uint8_t>(text[i++]));
  }
  return ids;
}

absl::StatusOr<std::string> ByteTokenizer::Decode(const std::vector<int32_t>& ids,
                                                  bool render_specials) {
  std::string out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    int32_t id = ids[i];
    if (id < 0 || id >= kVocabSize) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token id ", id, " at index ", i, " is outside the vocabulary [0, ", kVocabSize, ")"));
    }
    if (id < 256) {
      out.push_back(static_cast<char>(id));
    } else if (render_specials) {
      out.append(SpecialName(id));
    }
  }
  return out;
}

std::string ByteTokenizer::Show(int32_t id, bool raw) {
  if (id < 0 || id >= kVocabSize) return absl::StrCat("<|id ", id, "|>");
  if (id >= 256) return std::string(SpecialName(id));
  if (raw || (id >= 0x20 && id < 0x7f) || id == '\n') return std::string(1, static_cast<char>(id));
  static constexpr char kHex[] = "0123456789abcdef";
  return std::string{'\\', 'x', kHex[id >> 4], kHex[id & 15]};
}

}  // namespace kv::model
