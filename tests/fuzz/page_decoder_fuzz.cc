// libFuzzer target for the page decoder (kvstore/page_format.h).
//
// Each input is decoded twice: as given (exercising the magic/size/checksum checks), and
// as a copy whose checksums were recomputed (ResealPage), so mutations reach the
// structural checks behind the checksums. Oracles, besides ASan/UBSan:
//  - a page that decodes is canonical: re-encoding its header and KV reproduces it
//    byte for byte;
//  - DecodePageHeader agrees with DecodePage;
//  - every layer of a decoded page is readable and has the right size, and the layer just
//    outside the page's range is refused;
//  - a GQA page's layer splits into K then V halves of tokens x heads x head_dim elements.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "kvstore/page_format.h"

namespace {

void Check(bool ok) {
  if (!ok) std::abort();
}

void Exercise(std::span<const uint8_t> data) {
  auto view = kv::DecodePage(data);
  auto header = kv::DecodePageHeader(data);
  if (!view.ok()) {
    Check(!view.status().message().empty());
    return;
  }
  Check(header.ok());
  const kv::PageHeader& h = view->header();
  Check(header->key == h.key && header->page_bytes == h.page_bytes);
  Check(h.page_bytes == data.size());
  if (h.layout.id == kv::LayoutId::kV4Fp8_584) {
    // v4 pages: 576-byte blocks, no fixed-size layer records; re-encoding the sections gives
    // the same bytes, and stripping the resume section gives a valid page.
    Check(view->kv().size() % 576 == 0 && view->indexer_keys().size() % 576 == 0);
    Check(!view->KvLayer(h.first_layer).ok());
    std::vector<kv::PageSectionData> secs;
    for (const kv::SectionInfo& s : h.sections) {
      secs.push_back({s.kind, data.subspan(s.offset, s.length)});
    }
    kv::PageSpec spec{h.layout.id,   h.key,         h.parent, h.token_count,
                      h.first_layer, h.layer_count, h.gqa};
    auto again = kv::EncodePageSections(spec, secs);
    Check(again.ok() && again->size() == data.size() &&
          std::memcmp(again->data(), data.data(), data.size()) == 0);
    auto stripped = kv::StripResumeSection(data);
    Check(stripped.ok() && kv::DecodePage(*stripped).ok());
    return;
  }
  const uint64_t layer_bytes = view->layer_bytes();
  Check(view->kv().size() == layer_bytes * h.layer_count);
  uint64_t sum = 0;
  for (uint32_t l = h.first_layer; l < h.first_layer + h.layer_count; ++l) {
    auto layer = view->KvLayer(l);
    Check(layer.ok() && layer->size() == layer_bytes);
    sum += (*layer)[0] + (*layer)[layer->size() - 1];
  }
  Check(!view->KvLayer(h.first_layer + h.layer_count).ok());
  if (h.layout.is_gqa()) {
    // K and V of a layer are its two halves, each tokens x heads x head_dim elements.
    auto k = view->GqaLayerHalf(h.first_layer, false);
    auto v = view->GqaLayerHalf(h.first_layer, true);
    Check(k.ok() && v.ok() && k->size() == v->size() && k->size() * 2 == layer_bytes);
    Check(k->size() == uint64_t{h.token_count} * h.gqa.num_kv_heads * h.gqa.head_dim *
                           h.layout.gqa_element_bytes);
    Check(v->data() == k->data() + k->size());
  } else {
    Check(!view->GqaLayerHalf(h.first_layer, false).ok());
  }
  kv::PageSpec spec{h.layout.id,   h.key,         h.parent, h.token_count,
                    h.first_layer, h.layer_count, h.gqa};
  auto again = kv::EncodePage(spec, view->kv());
  Check(again.ok() && again->size() == data.size() &&
        std::memcmp(again->data(), data.data(), data.size()) == 0);
  Check(sum < (uint64_t{1} << 40));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Exercise(std::span<const uint8_t>(data, size));
  if (size <= (1u << 20)) {
    std::vector<uint8_t> copy(data, data + size);
    if (kv::ResealPage(copy).ok()) Exercise(copy);
  }
  return 0;
}
