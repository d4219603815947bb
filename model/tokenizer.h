// ByteTokenizer: the byte-level vocabulary of the reference models (DESIGN.md "Models").
//
// Ids 0..255 are the bytes of UTF-8 text; ids 256..266 are specials (BOS, EOS, PAD, role
// markers and tool markers for chat/agent turns). Encode() maps text to ids and, when asked,
// recognizes the literal marker strings ("<|user|>", ...) as their special ids; Decode() maps ids
// back to bytes, rendering specials as their markers or dropping them.
//
// Stateless and thread-safe; all functions are static and return values the caller owns.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kv::model {

class ByteTokenizer {
 public:
  static constexpr int32_t kBos = 256;
  static constexpr int32_t kEos = 257;
  static constexpr int32_t kPad = 258;
  static constexpr int32_t kSystem = 259;
  static constexpr int32_t kUser = 260;
  static constexpr int32_t kAssistant = 261;
  static constexpr int32_t kTool = 262;
  static constexpr int32_t kEndOfTurn = 263;
  static constexpr int32_t kTools = 264;   // tool schema block
  static constexpr int32_t kCall = 265;    // a tool call
  static constexpr int32_t kResult = 266;  // a tool result
  static constexpr int32_t kVocabSize = 267;

  // Text to ids. With `add_bos`, kBos comes first. With `parse_specials`, the marker strings
  // of SpecialName() become their ids; otherwise every byte is a byte token.
  static std::vector<int32_t> Encode(std::string_view text, bool add_bos, bool parse_specials);
  // Ids to text. Specials render as their markers when `render_specials`, else are dropped.
  // Returns InvalidArgument naming the first id outside [0, kVocabSize).
  static absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids, bool render_specials);
  // "<|bos|>", "<|user|>", ...; empty for a byte id or an out-of-range id.
  static std::string_view SpecialName(int32_t id);
  // How the CLI shows one generated token: with `raw` its bytes as-is (specials as their
  // <|name|> markers); otherwise printable ASCII and newlines as-is, other bytes as \xNN
  // (a random-weight model emits arbitrary bytes) and specials as markers. Ids outside the
  // vocabulary as <|id N|>.
  static std::string Show(int32_t id, bool raw);
};

}  // namespace kv::model
