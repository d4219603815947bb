/* A C11 program using only the INSTALLED kvstrata/kvstrata.h and libkvstrata_client (built by
 * tests/c_abi_test.sh through pkg-config), against a real store process on loopback:
 *   - bad input is an error code with a message, never a crash (NULL pointers, zero and
 *     oversize counts, unknown layouts, wrong payload sizes, an address where nothing listens);
 *   - pages derived and encoded here are put from a registered buffer (UCX) and from plain
 *     memory (gRPC), batch_exists and lookup see them, batch_get_into scatters them into a
 *     registered buffer (UCX, zero-copy) and into plain memory (gRPC), and the bytes and KV
 *     payloads equal the originals; a too-small slot, a missing key and a corrupt page are
 *     per-key errors; pin/unpin; stats count the paths;
 *   - after the store is SIGKILLed, calls fail within their deadline.
 * Usage: c_abi_test ADDRESS TOKEN STORE_PID */
#define _POSIX_C_SOURCE 200809L
#include <kvstrata/kvstrata.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

static int g_failures = 0;

#define CHECK(cond)                                                                            \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
              kvstrata_last_error());                                                          \
      ++g_failures;                                                                            \
    }                                                                                          \
  } while (0)
#define CHECK_CODE(call, want)                                                            \
  do {                                                                                    \
    int32_t rc_ = (call);                                                                 \
    if (rc_ != (want)) {                                                                  \
      fprintf(stderr, "%s:%d: %s returned %s, want %s (%s)\n", __FILE__, __LINE__, #call, \
              kvstrata_code_name(rc_), kvstrata_code_name(want), kvstrata_last_error());  \
      ++g_failures;                                                                       \
    }                                                                                     \
  } while (0)

enum { kTokens = 64, kLayers = 8, kPages = 6 };

static double Now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t g_rng = 88172645463325252ull;
static uint32_t Rand(void) {
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (uint32_t)g_rng;
}

static void InitSpace(kvstrata_key_space* s, const char* layout) {
  kvstrata_key_space_init(s);
  memset(s->model_fingerprint, 0x5a, sizeof(s->model_fingerprint));
  s->layout = layout;
  s->page_tokens = kTokens;
  s->key_namespace = "acme";
}

/* A chain of kPages pages: keys, pages back to back in `pages` (page_bytes each), payloads. */
typedef struct Chain {
  kvstrata_key keys[kPages];
  uint8_t* pages;
  uint8_t* payloads;
  uint64_t page_bytes, kv_bytes;
} Chain;

static void MakeChain(Chain* c, uint8_t* pages_mem) {
  kvstrata_key_space space;
  InitSpace(&space, "mla-fp8-656");
  uint32_t tokens[kPages * kTokens + 5]; /* a partial trailing block has no key */
  for (size_t i = 0; i < sizeof(tokens) / sizeof(tokens[0]); ++i) tokens[i] = Rand() % 50000;
  size_t n = 0;
  CHECK_CODE(kvstrata_derive_block_keys(&space, tokens, sizeof(tokens) / sizeof(tokens[0]), NULL,
                                        c->keys, kPages, &n),
             KVSTRATA_OK);
  CHECK(n == kPages);
  kvstrata_page_spec spec;
  kvstrata_page_spec_init(&spec);
  spec.layout = "mla-fp8-656";
  spec.token_count = kTokens;
  spec.layer_count = kLayers;
  CHECK_CODE(kvstrata_page_size(&spec, &c->page_bytes, &c->kv_bytes), KVSTRATA_OK);
  c->pages = pages_mem;
  c->payloads = malloc(c->kv_bytes * kPages);
  for (int i = 0; i < kPages; ++i) {
    uint8_t* kv = c->payloads + (size_t)i * c->kv_bytes;
    for (uint64_t b = 0; b < c->kv_bytes; ++b) kv[b] = (uint8_t)Rand();
    spec.key = c->keys[i];
    if (i > 0) spec.parent = c->keys[i - 1];
    CHECK_CODE(kvstrata_page_encode(&spec, kv, c->kv_bytes, c->pages + (size_t)i * c->page_bytes,
                                    c->page_bytes),
               KVSTRATA_OK);
  }
}

static void Put(kvstrata_client* cl, const Chain* c, kvstrata_status* st) {
  kvstrata_key_space space;
  InitSpace(&space, "mla-fp8-656");
  const void* ptrs[kPages];
  uint64_t sizes[kPages];
  for (int i = 0; i < kPages; ++i) {
    ptrs[i] = c->pages + (size_t)i * c->page_bytes;
    sizes[i] = c->page_bytes;
  }
  CHECK_CODE(kvstrata_batch_put_from(cl, &space, c->keys, ptrs, sizes, kPages, 0, st), KVSTRATA_OK);
}

/* Reads `c` into `dst` (slot i at (kPages-1-i) * page_bytes: scattered, reversed) and checks
 * every page and payload. */
static void GetAndCheck(kvstrata_client* cl, const Chain* c, uint8_t* dst) {
  void* ptrs[kPages];
  uint64_t sizes[kPages], got[kPages];
  kvstrata_status st[kPages];
  memset(dst, 0xee, c->page_bytes * kPages);
  for (int i = 0; i < kPages; ++i) {
    ptrs[i] = dst + (size_t)(kPages - 1 - i) * c->page_bytes;
    sizes[i] = c->page_bytes;
  }
  CHECK_CODE(kvstrata_batch_get_into(cl, c->keys, ptrs, sizes, kPages, 0, st, got), KVSTRATA_OK);
  for (int i = 0; i < kPages; ++i) {
    CHECK(st[i].code == KVSTRATA_OK);
    CHECK(got[i] == c->page_bytes);
    CHECK(memcmp(ptrs[i], c->pages + (size_t)i * c->page_bytes, c->page_bytes) == 0);
    uint64_t off = 0, len = 0;
    CHECK_CODE(kvstrata_page_payload(ptrs[i], got[i], &c->keys[i], &off, &len), KVSTRATA_OK);
    CHECK(len == c->kv_bytes);
    CHECK(memcmp((uint8_t*)ptrs[i] + off, c->payloads + (size_t)i * c->kv_bytes, len) == 0);
  }
}

static void BadInput(kvstrata_client* cl) {
  const char* nowhere[] = {"127.0.0.1:1"};
  kvstrata_client* other = NULL;
  kvstrata_options o;
  kvstrata_options_init(&o);
  o.connect_timeout_ms = 500;
  CHECK_CODE(kvstrata_connect(NULL, 1, NULL, NULL, &other), KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_connect(nowhere, 0, NULL, NULL, &other), KVSTRATA_INVALID_ARGUMENT);
  double t0 = Now();
  CHECK_CODE(kvstrata_connect(nowhere, 1, NULL, &o, &other), KVSTRATA_UNAVAILABLE);
  CHECK(Now() - t0 < 3.0);
  CHECK(strstr(kvstrata_last_error(), "127.0.0.1:1") != NULL);
  CHECK(other == NULL);
  o.timeout_ms = -5;
  CHECK_CODE(kvstrata_connect(nowhere, 1, NULL, &o, &other), KVSTRATA_INVALID_ARGUMENT);
  /* mTLS files: all three or none, each must exist (checked before any address is dialled). */
  kvstrata_options_init(&o);
  o.tls_cert_file = "/nonexistent/client.crt";
  CHECK_CODE(kvstrata_connect(nowhere, 1, NULL, &o, &other), KVSTRATA_INVALID_ARGUMENT);
  CHECK(strstr(kvstrata_last_error(), "options.tls_cert_file") != NULL);
  o.tls_key_file = "/nonexistent/client.key";
  o.tls_ca_file = "/nonexistent/ca.crt";
  CHECK_CODE(kvstrata_connect(nowhere, 1, NULL, &o, &other), KVSTRATA_NOT_FOUND);
  CHECK(strstr(kvstrata_last_error(), "/nonexistent/client.crt") != NULL);
  CHECK(other == NULL);

  kvstrata_key_space space;
  InitSpace(&space, "no-such-layout");
  uint32_t tokens[kTokens] = {0};
  kvstrata_key keys[2];
  memset(keys, 0, sizeof(keys));
  size_t n = 0;
  CHECK_CODE(kvstrata_derive_block_keys(&space, tokens, kTokens, NULL, keys, 2, &n),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK(strstr(kvstrata_last_error(), "no-such-layout") != NULL);
  InitSpace(&space, "mla-fp8-656");
  space.page_tokens = 0;
  CHECK_CODE(kvstrata_derive_block_keys(&space, tokens, kTokens, NULL, keys, 2, &n),
             KVSTRATA_INVALID_ARGUMENT);
  space.page_tokens = 16;
  CHECK_CODE(kvstrata_derive_block_keys(&space, tokens, kTokens, NULL, keys, 2, &n),
             KVSTRATA_RESOURCE_EXHAUSTED); /* 4 keys, room for 2 */
  space.key_namespace = NULL;
  CHECK_CODE(kvstrata_derive_block_keys(&space, tokens, kTokens, NULL, keys, 2, &n),
             KVSTRATA_INVALID_ARGUMENT);

  kvstrata_page_spec spec;
  kvstrata_page_spec_init(&spec);
  spec.layout = "mla-fp8-656";
  spec.token_count = kTokens;
  spec.layer_count = 1;
  uint8_t small[64];
  CHECK_CODE(kvstrata_page_encode(&spec, small, sizeof(small), small, sizeof(small)),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_page_payload(small, sizeof(small), NULL, &(uint64_t){0}, &(uint64_t){0}),
             KVSTRATA_INVALID_ARGUMENT);

  void* ptrs[1] = {small};
  uint64_t sizes[1] = {sizeof(small)};
  kvstrata_status st[1];
  CHECK_CODE(kvstrata_batch_get_into(NULL, keys, ptrs, sizes, 1, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_batch_get_into(cl, keys, NULL, sizes, 1, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK(strstr(kvstrata_last_error(), "ptrs") != NULL);
  CHECK_CODE(kvstrata_batch_get_into(cl, keys, ptrs, sizes, 0, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_batch_get_into(cl, keys, ptrs, sizes, KVSTRATA_MAX_BATCH + 1, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  sizes[0] = 0;
  CHECK_CODE(kvstrata_batch_get_into(cl, keys, ptrs, sizes, 1, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  ptrs[0] = NULL;
  sizes[0] = 8;
  CHECK_CODE(kvstrata_batch_get_into(cl, keys, ptrs, sizes, 1, 0, st, NULL),
             KVSTRATA_INVALID_ARGUMENT);
  const void* cptrs[1] = {small};
  sizes[0] = sizeof(small);
  CHECK_CODE(kvstrata_batch_put_from(cl, NULL, keys, cptrs, sizes, 1, 0, st),
             KVSTRATA_INVALID_ARGUMENT);
  InitSpace(&space, "no-such-layout");
  CHECK_CODE(kvstrata_batch_put_from(cl, &space, keys, cptrs, sizes, 1, 0, st),
             KVSTRATA_INVALID_ARGUMENT);
  CHECK(strstr(kvstrata_last_error(), "no-such-layout") != NULL);
  InitSpace(&space, "mla-fp8-656");
  space.struct_size = 4; /* not initialised by kvstrata_key_space_init */
  CHECK_CODE(kvstrata_batch_put_from(cl, &space, keys, cptrs, sizes, 1, 0, st),
             KVSTRATA_INVALID_ARGUMENT);
  uint64_t h = 0;
  CHECK_CODE(kvstrata_register_buffer(cl, NULL, 8, &h), KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_register_buffer(cl, small, 0, &h), KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_unregister_buffer(cl, 987654), KVSTRATA_NOT_FOUND);
  CHECK_CODE(kvstrata_lookup(cl, keys, 1, 0, NULL, NULL), KVSTRATA_INVALID_ARGUMENT);
  CHECK_CODE(kvstrata_unpin(cl, "", 0, NULL), KVSTRATA_INVALID_ARGUMENT);
}

static void PerKeyErrors(kvstrata_client* cl, const Chain* a, uint8_t* dst) {
  /* A slot too small for page 1: RESOURCE_EXHAUSTED for it, the others served. */
  void* ptrs[3] = {dst, dst + a->page_bytes, dst + 2 * a->page_bytes};
  uint64_t sizes[3] = {a->page_bytes, a->page_bytes - 1, a->page_bytes};
  kvstrata_status st[3];
  CHECK_CODE(kvstrata_batch_get_into(cl, a->keys, ptrs, sizes, 3, 0, st, NULL), KVSTRATA_OK);
  CHECK(st[0].code == KVSTRATA_OK && st[2].code == KVSTRATA_OK);
  CHECK(st[1].code == KVSTRATA_RESOURCE_EXHAUSTED && strlen(st[1].message) > 0);
  /* A key never written: NOT_FOUND with a message. */
  kvstrata_key missing;
  memset(&missing, 0x77, sizeof(missing));
  sizes[0] = a->page_bytes;
  CHECK_CODE(kvstrata_batch_get_into(cl, &missing, ptrs, sizes, 1, 0, st, NULL), KVSTRATA_OK);
  CHECK(st[0].code == KVSTRATA_NOT_FOUND && strlen(st[0].message) > 0);
}

static void CorruptPut(kvstrata_client* cl) {
  uint8_t* mem = malloc(8u << 20);
  Chain c;
  MakeChain(&c, mem);
  c.pages[2 * c.page_bytes + c.page_bytes / 2] ^= 0x01; /* page 2's payload, after encoding */
  kvstrata_status st[kPages];
  Put(cl, &c, st);
  CHECK(st[0].code == KVSTRATA_OK && st[1].code == KVSTRATA_OK);
  CHECK(st[2].code != KVSTRATA_OK && strlen(st[2].message) > 0);
  fprintf(stderr, "corrupt page put: %s: %s\n", kvstrata_code_name(st[2].code), st[2].message);
  uint8_t present[kPages];
  CHECK_CODE(kvstrata_batch_exists(cl, c.keys, kPages, 0, present), KVSTRATA_OK);
  CHECK(present[0] == 1 && present[1] == 1 && present[2] == 0);
  free(c.payloads);
  free(mem);
}

/* Engine block identity: vLLM sha256_cbor hashes with LoRA, a multimodal item and a salt,
 * matched against vectors of the independent Python reference
 * (tests/engine_hash/vllm_block_hash_ref.py, hashlib + cbor2), and the kvstrata keys over
 * them, which differ per namespace. */
static int HexIs(const kvstrata_key* k, const char* hex) {
  char s[2 * KVSTRATA_KEY_BYTES + 1];
  for (int i = 0; i < KVSTRATA_KEY_BYTES; ++i) snprintf(s + 2 * i, 3, "%02x", k->bytes[i]);
  return strcmp(s, hex) == 0;
}

static void EngineHashes(void) {
  int64_t tokens[40];
  for (int i = 0; i < 40; ++i) tokens[i] = 1000 + i;
  kvstrata_mm_item mm = {"img", 20, 8};
  kvstrata_engine_hash_params p;
  kvstrata_engine_hash_params_init(&p);
  CHECK(p.block_size == 16);
  p.seed = "0";
  p.lora_name = "ad";
  p.mm_items = &mm;
  p.n_mm_items = 1;
  p.cache_salt = "tenant-a";
  kvstrata_key h[2];
  size_t n = 0;
  CHECK_CODE(kvstrata_engine_block_hashes(&p, tokens, 40, h, 2, &n), KVSTRATA_OK);
  CHECK(n == 2);
  CHECK(HexIs(&h[0], "ab04cdcd969413723b2c83c29b59b6a46559195de593962727a54d0fefe42b61"));
  CHECK(HexIs(&h[1], "b2fb27ea9ed437617a0e286e32eb2804e1fcba62bcb5ac8d6c0128dd3c5d1812"));
  CHECK_CODE(kvstrata_engine_block_hashes(&p, tokens, 40, h, 1, &n), KVSTRATA_RESOURCE_EXHAUSTED);
  tokens[3] = -1;
  CHECK_CODE(kvstrata_engine_block_hashes(&p, tokens, 40, h, 2, &n), KVSTRATA_INVALID_ARGUMENT);
  tokens[3] = 1003;

  kvstrata_engine_hash_params_init(&p);
  p.seed = "0";
  p.lora_name = "ad";
  p.mm_items = &mm;
  p.n_mm_items = 1;
  p.cache_salt = "tenant-a";
  CHECK_CODE(kvstrata_engine_block_hashes(&p, tokens, 40, h, 2, &n), KVSTRATA_OK);
  kvstrata_key_space space;
  InitSpace(&space, "mla-fp8-656");
  space.page_tokens = 16;
  kvstrata_key keys[2], other[2];
  CHECK_CODE(kvstrata_keys_from_engine_hashes(&space, h, 2, NULL, keys), KVSTRATA_OK);
  CHECK(HexIs(&keys[0], "ff039db41de2c9fd1319098152f2bce38f1640d454e55d9e0b28e82ae629d9c2"));
  CHECK(HexIs(&keys[1], "8b760d8f26048ee44fcad31ea231e66902d4dff6a52b7a59bb28d6552987937c"));
  space.key_namespace = "shared";
  CHECK_CODE(kvstrata_keys_from_engine_hashes(&space, h, 2, NULL, other), KVSTRATA_OK);
  CHECK(memcmp(keys, other, sizeof(keys)) != 0);
  space.layout = "no-such-layout";
  CHECK_CODE(kvstrata_keys_from_engine_hashes(&space, h, 2, NULL, other),
             KVSTRATA_INVALID_ARGUMENT);
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s ADDRESS TOKEN STORE_PID\n", argv[0]);
    return 2;
  }
  CHECK(kvstrata_abi_version() == KVSTRATA_ABI_VERSION);
  const char* addresses[] = {"127.0.0.1:1", argv[1]}; /* the first never answers: failover */
  kvstrata_options o;
  kvstrata_options_init(&o);
  o.connect_timeout_ms = 1000;
  kvstrata_client* cl = NULL;
  CHECK_CODE(kvstrata_connect(addresses, 2, argv[2], &o, &cl), KVSTRATA_OK);
  if (cl == NULL) return 1;
  {
    /* A program built against ABI 1's first header passes the struct without the TLS fields
     * (struct_size ends before them); the library must not read past it. */
    kvstrata_options old;
    kvstrata_options_init(&old);
    old.struct_size = (uint32_t)offsetof(kvstrata_options, tls_cert_file);
    old.tls_cert_file = "/must/not/be/read";
    kvstrata_client* oc = NULL;
    CHECK_CODE(kvstrata_connect(addresses + 1, 1, argv[2], &old, &oc), KVSTRATA_OK);
    kvstrata_close(oc);
  }
  BadInput(cl);
  EngineHashes();

  const size_t region = 8u << 20;
  uint8_t* src = malloc(region);       /* registered: pages go out over UCX */
  uint8_t* plain = malloc(region);     /* not registered: gRPC */
  uint8_t* dst = malloc(region);       /* registered: pages land over UCX */
  uint8_t* plain_dst = malloc(region); /* not registered: pages land over gRPC */
  uint64_t hs = 0, hd = 0;
  CHECK_CODE(kvstrata_register_buffer(cl, src, region, &hs), KVSTRATA_OK);
  CHECK_CODE(kvstrata_register_buffer(cl, dst, region, &hd), KVSTRATA_OK);
  CHECK_CODE(kvstrata_register_buffer(cl, dst + 16, 16, &(uint64_t){0}), KVSTRATA_INVALID_ARGUMENT);
  Chain a, b;
  MakeChain(&a, src);
  MakeChain(&b, plain);
  CHECK(a.page_bytes * kPages <= region);
  kvstrata_status st[kPages];
  Put(cl, &a, st);
  for (int i = 0; i < kPages; ++i) CHECK(st[i].code == KVSTRATA_OK);
  Put(cl, &b, st);
  for (int i = 0; i < kPages; ++i) CHECK(st[i].code == KVSTRATA_OK);

  kvstrata_key probe[4] = {a.keys[0], b.keys[3], a.keys[0], a.keys[5]};
  memset(&probe[2], 0x42, sizeof(probe[2]));
  uint8_t present[4];
  CHECK_CODE(kvstrata_batch_exists(cl, probe, 4, 0, present), KVSTRATA_OK);
  CHECK(present[0] == 1 && present[1] == 1 && present[2] == 0 && present[3] == 1);
  int32_t one = -1;
  CHECK_CODE(kvstrata_exists(cl, &probe[2], 0, &one), KVSTRATA_OK);
  CHECK(one == 0);

  kvstrata_key longer[kPages + 1];
  memcpy(longer, a.keys, sizeof(a.keys));
  memset(&longer[kPages], 0x43, sizeof(longer[0]));
  size_t prefix = 0;
  kvstrata_block_info info[kPages + 1];
  CHECK_CODE(kvstrata_lookup(cl, longer, kPages + 1, 0, &prefix, info), KVSTRATA_OK);
  CHECK(prefix == kPages);
  CHECK(info[0].tier == KVSTRATA_TIER_HOST && info[0].page_bytes == a.page_bytes);
  CHECK(info[kPages].tier == KVSTRATA_TIER_NONE);

  GetAndCheck(cl, &a, dst);       /* registered: UCX */
  GetAndCheck(cl, &b, plain_dst); /* plain memory: gRPC */
  kvstrata_stats s;
  memset(&s, 0, sizeof(s));
  s.struct_size = sizeof(s);
  CHECK_CODE(kvstrata_get_stats(cl, &s), KVSTRATA_OK);
  fprintf(stderr, "stats: ucx get %llu pages, grpc get %llu, ucx put %llu, grpc put %llu\n",
          (unsigned long long)s.ucx_get_pages, (unsigned long long)s.grpc_get_pages,
          (unsigned long long)s.ucx_put_pages, (unsigned long long)s.grpc_put_pages);
  CHECK(s.ucx_get_pages == kPages && s.ucx_get_bytes == kPages * a.page_bytes);
  CHECK(s.grpc_get_pages == kPages);
  CHECK(s.ucx_put_pages == kPages && s.grpc_put_pages == kPages);
  CHECK(s.hits == 2 * kPages);

  PerKeyErrors(cl, &a, dst);
  CorruptPut(cl);

  kvstrata_lease lease;
  CHECK_CODE(kvstrata_pin(cl, a.keys, kPages, 5000, 0, &lease), KVSTRATA_OK);
  CHECK(lease.pinned == kPages && lease.id[0] != '\0');
  uint32_t released = 0;
  CHECK_CODE(kvstrata_unpin(cl, lease.id, 0, &released), KVSTRATA_OK);
  CHECK(released == kPages);

  /* The store dies: calls fail within their deadline. */
  kill((pid_t)atol(argv[3]), SIGKILL);
  double t0 = Now();
  void* ptrs[kPages];
  uint64_t sizes[kPages];
  for (int i = 0; i < kPages; ++i) {
    ptrs[i] = dst + (size_t)i * a.page_bytes;
    sizes[i] = a.page_bytes;
  }
  int32_t rc = kvstrata_batch_get_into(cl, a.keys, ptrs, sizes, kPages, 2000, st, NULL);
  double took = Now() - t0;
  fprintf(stderr, "get from a dead store: %s in %.2f s: %s\n", kvstrata_code_name(rc), took,
          kvstrata_last_error());
  CHECK(rc == KVSTRATA_UNAVAILABLE || rc == KVSTRATA_DEADLINE_EXCEEDED);
  CHECK(took < 2.0 + 3.0);
  t0 = Now();
  rc = kvstrata_lookup(cl, a.keys, kPages, 1000, &prefix, NULL);
  CHECK(rc == KVSTRATA_UNAVAILABLE || rc == KVSTRATA_DEADLINE_EXCEEDED);
  CHECK(Now() - t0 < 1.0 + 2.0);

  CHECK_CODE(kvstrata_unregister_buffer(cl, hs), KVSTRATA_OK);
  kvstrata_close(cl);
  free(a.payloads);
  free(b.payloads);
  free(src);
  free(plain);
  free(dst);
  free(plain_dst);
  if (g_failures != 0) {
    fprintf(stderr, "c_abi_test: %d check(s) failed\n", g_failures);
    return 1;
  }
  fprintf(stderr, "c_abi_test: all checks passed\n");
  return 0;
}
