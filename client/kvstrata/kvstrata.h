/* kvstrata.h: the stable C ABI of libkvstrata_client (issue #17 item 1).
 *
 * What it is. A client of kvstrata store nodes (`kvstrata serve --role=store`) for inference
 * engines written in any language: find, pin, read and write KV pages by their 32-byte block
 * keys. Page bytes move over UCX one-sided gets/puts straight between the store's memory and
 * buffers the caller registered (zero-copy), or over gRPC when UCX cannot reach the store or
 * the caller's memory is not registered. Every page read is verified (page_format checksums,
 * and the header must name the key asked for) before the call reports it present: a caller
 * never receives bytes that fail verification as a hit. Helpers derive block keys from token
 * ids and encode/decode pages, so a caller can produce and consume pages without C++.
 *
 * Keys. A key is 32 opaque bytes (kvstrata_key). Keys of a prompt form a chain: key i covers
 * key i-1 (kvstrata_derive_block_keys). Calls that take a chain (lookup, pin, batch_get_into,
 * batch_put_from) take it in order.
 *
 * Errors. Every call returns a kvstrata_code (the gRPC/absl code numbers; KVSTRATA_OK = 0).
 * On error, kvstrata_last_error() gives the message. Batch calls also fill one
 * kvstrata_status per key. Nothing here aborts or throws: NULL pointers, zero or oversize
 * sizes and counts, unknown layouts, a closed or dead store are all errors. Out-parameters
 * are written only when the call returns KVSTRATA_OK (per-key statuses: whenever the call
 * returns KVSTRATA_OK; their entries then say which keys failed).
 *
 * Deadlines. Every call that talks to a store takes `timeout_ms`: <= 0 means the client's
 * default (kvstrata_options.timeout_ms). A call returns by then (plus a bounded grace of about
 * two seconds for cancelling a UCX transfer), with KVSTRATA_DEADLINE_EXCEEDED or
 * KVSTRATA_UNAVAILABLE when the store does not answer.
 *
 * Ownership and lifetimes.
 *  - A kvstrata_client is created by kvstrata_connect and freed by kvstrata_close only.
 *  - Every pointer argument is borrowed for the duration of the call, except registered
 *    buffers, which the caller keeps alive and does not free until kvstrata_unregister_buffer
 *    returned KVSTRATA_OK (or kvstrata_close).
 *  - Strings the library returns (kvstrata_last_error, kvstrata_status.message) are owned by
 *    the library, per thread: they stay valid until the next kvstrata_* call on the same
 *    thread, other than kvstrata_last_error and kvstrata_code_name. kvstrata_code_name
 *    returns static strings.
 *
 * Thread safety. A kvstrata_client may be used by many threads at once, for every call
 * except kvstrata_close, which must not race any other call on the same client. Buffers
 * must not be unregistered while a call that uses them runs. The pure helpers
 * (kvstrata_derive_block_keys, kvstrata_engine_block_hashes, kvstrata_keys_from_engine_hashes,
 * kvstrata_page_*) are safe from any thread.
 *
 * ABI. Only kvstrata_* symbols are exported. Structs that may grow carry `struct_size`; set
 * it with the matching *_init function. KVSTRATA_ABI_VERSION is bumped with the soname.
 * Additions are additive: new calls get their own symbol version node (KVSTRATA_0.2: the
 * engine block hash calls), and fields appended to a struct are read only when the caller's
 * struct_size covers them. */
#ifndef KVSTRATA_KVSTRATA_H_
#define KVSTRATA_KVSTRATA_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define KVSTRATA_API __attribute__((visibility("default")))
#else
#define KVSTRATA_API
#endif

#define KVSTRATA_ABI_VERSION 1
#define KVSTRATA_KEY_BYTES 32
/* Most keys, buffers or addresses a single call accepts. */
#define KVSTRATA_MAX_BATCH 65536
#define KVSTRATA_MAX_ADDRESSES 64
/* Bytes of a lease id, including the terminating NUL. */
#define KVSTRATA_LEASE_ID_BYTES 128

/* Status codes: the gRPC / absl code numbers. */
typedef enum kvstrata_code {
  KVSTRATA_OK = 0,
  KVSTRATA_CANCELLED = 1,
  KVSTRATA_UNKNOWN = 2,
  KVSTRATA_INVALID_ARGUMENT = 3,
  KVSTRATA_DEADLINE_EXCEEDED = 4,
  KVSTRATA_NOT_FOUND = 5,
  KVSTRATA_ALREADY_EXISTS = 6,
  KVSTRATA_PERMISSION_DENIED = 7,
  KVSTRATA_RESOURCE_EXHAUSTED = 8,
  KVSTRATA_FAILED_PRECONDITION = 9,
  KVSTRATA_ABORTED = 10,
  KVSTRATA_OUT_OF_RANGE = 11,
  KVSTRATA_UNIMPLEMENTED = 12,
  KVSTRATA_INTERNAL = 13,
  KVSTRATA_UNAVAILABLE = 14,
  KVSTRATA_DATA_LOSS = 15,
  KVSTRATA_UNAUTHENTICATED = 16
} kvstrata_code;

/* Storage tiers (lookup). */
typedef enum kvstrata_tier {
  KVSTRATA_TIER_NONE = 0, /* not present */
  KVSTRATA_TIER_DEVICE = 1,
  KVSTRATA_TIER_HOST = 2,
  KVSTRATA_TIER_NVME = 3
} kvstrata_tier;

/* Which data path page bytes may take. */
typedef enum kvstrata_transport {
  KVSTRATA_TRANSPORT_AUTO = 0, /* UCX when it reaches the store, else gRPC */
  KVSTRATA_TRANSPORT_UCX = 1,  /* UCX only: a call that cannot use UCX fails UNAVAILABLE */
  KVSTRATA_TRANSPORT_GRPC = 2  /* gRPC only (no UCX context is created) */
} kvstrata_transport;

typedef struct kvstrata_key {
  uint8_t bytes[KVSTRATA_KEY_BYTES];
} kvstrata_key;

/* One key's outcome in a batch call. `message` is "" when code is KVSTRATA_OK; owned by the
 * library (see "Ownership" above). */
typedef struct kvstrata_status {
  int32_t code; /* kvstrata_code */
  const char* message;
} kvstrata_status;

typedef struct kvstrata_client kvstrata_client;

typedef struct kvstrata_options {
  uint32_t struct_size;       /* sizeof(kvstrata_options); set by kvstrata_options_init */
  int32_t transport;          /* kvstrata_transport; default AUTO */
  int64_t timeout_ms;         /* default per-call deadline; default 10000 */
  int64_t connect_timeout_ms; /* per address at connect; default 5000 */
  int64_t lease_ms;           /* pins taken by reads and staging of writes; default 10000 */
  /* Added after ABI version 1's first release (read only when struct_size covers them):
   * mutual TLS to the store. All three PEM file paths, or all NULL/"" (plaintext, the
   * default): this client's certificate chain, its private key (unencrypted) and the cluster
   * CA the store's certificate is verified against (host names are not checked). The files
   * are read once, by kvstrata_connect; INVALID_ARGUMENT names a missing or bad one. */
  const char* tls_cert_file;
  const char* tls_key_file;
  const char* tls_ca_file;
} kvstrata_options;

/* The key space pages are derived and written under. */
typedef struct kvstrata_key_space {
  uint32_t struct_size;          /* sizeof(kvstrata_key_space); kvstrata_key_space_init */
  uint8_t model_fingerprint[32]; /* hash of the model config and weights identity */
  const char* layout;            /* "mla-fp8-656", "mla-bf16-1152", "v4-fp8-584", "gqa-bf16", ... */
  uint32_t page_tokens;          /* tokens per block, 1..65536 */
  const char* key_namespace;     /* "shared", "tenant:NAME" or NAME (the tenant) */
} kvstrata_key_space;

/* What a page holds besides its KV bytes (kvstrata_page_encode). */
typedef struct kvstrata_page_spec {
  uint32_t struct_size; /* sizeof(kvstrata_page_spec); kvstrata_page_spec_init */
  const char* layout;   /* "mla-fp8-656", "mla-bf16-1152", "gqa-bf16" or "gqa-fp8" */
  kvstrata_key key;
  kvstrata_key parent; /* all zero for the first block of a chain */
  uint32_t token_count;
  uint32_t first_layer;
  uint32_t layer_count;
  /* Added after ABI version 1's first release (read only when struct_size covers them, so
   * callers built against the older header keep working): the head geometry of a GQA layout
   * ("gqa-bf16", "gqa-fp8"; K and V of one token and layer are each num_kv_heads x head_dim
   * elements). Both 0 for every other layout. */
  uint32_t num_kv_heads;
  uint32_t head_dim;
} kvstrata_page_spec;

/* One multimodal input of a request, for engine block hashes: its content identifier
 * (vLLM's mm_feature.identifier; NUL-terminated UTF-8) and its placeholder token range
 * [offset, offset + length) in the request. */
typedef struct kvstrata_mm_item {
  const char* identifier;
  int64_t offset;
  int64_t length;
} kvstrata_mm_item;

/* The inputs of vLLM's sha256_cbor block hashes besides the tokens
 * (kvstrata_engine_block_hashes). Strings are NUL-terminated UTF-8, borrowed for the call. */
typedef struct kvstrata_engine_hash_params {
  uint32_t struct_size;       /* sizeof(kvstrata_engine_hash_params); *_init sets it */
  const char* seed;           /* the engines' PYTHONHASHSEED, verbatim (NONE_HASH hashes it) */
  uint32_t block_size;        /* tokens per block, 1..65536; default 16 */
  int64_t start_token;        /* request position of tokens[0]: 0 or a multiple of block_size */
  const kvstrata_key* parent; /* hash of the block before tokens[0]; NULL: NONE_HASH */
  const char* lora_name;      /* NULL: no LoRA adapter */
  const kvstrata_mm_item* mm_items; /* sorted by offset, non-overlapping; NULL when 0 */
  size_t n_mm_items;
  const char* cache_salt; /* NULL or "": no salt (mixed into the block at position 0) */
  /* NULL, or one 32-byte prompt-embedding hash per full block of the call, in order. */
  const kvstrata_key* prompt_embed_hashes;
  size_t n_prompt_embed_hashes;
} kvstrata_engine_hash_params;

/* A looked-up block (kvstrata_lookup). */
typedef struct kvstrata_block_info {
  int32_t tier;        /* kvstrata_tier; KVSTRATA_TIER_NONE past the present prefix */
  uint64_t page_bytes; /* encoded page size; 0 when not present */
} kvstrata_block_info;

/* A pin (kvstrata_pin). */
typedef struct kvstrata_lease {
  char id[KVSTRATA_LEASE_ID_BYTES]; /* NUL-terminated; "" when nothing was pinned */
  int64_t deadline_unix_ms;
  uint32_t pinned; /* the pinned prefix's length */
} kvstrata_lease;

/* Cumulative counters of one client since connect. */
typedef struct kvstrata_stats {
  uint32_t struct_size; /* set by the caller to sizeof(kvstrata_stats) */
  uint64_t ucx_get_pages, ucx_get_bytes, grpc_get_pages, grpc_get_bytes;
  uint64_t ucx_put_pages, ucx_put_bytes, grpc_put_pages, grpc_put_bytes;
  uint64_t hits;         /* keys served by batch_get_into (verified) */
  uint64_t misses;       /* keys batch_get_into did not serve (absent or failed) */
  uint64_t corrupt;      /* pages that failed verification (also counted in misses) */
  uint64_t put_rejected; /* pages a batch_put_from call did not store */
  uint64_t calls, failed_calls;
} kvstrata_stats;

/* ---- misc ------------------------------------------------------------------------------- */

/* The message of the last failed call on this thread ("" if none). Library-owned. */
KVSTRATA_API const char* kvstrata_last_error(void);
/* "OK", "INVALID_ARGUMENT", ...; "UNKNOWN_CODE" otherwise. Static string. */
KVSTRATA_API const char* kvstrata_code_name(int32_t code);
/* KVSTRATA_ABI_VERSION of the loaded library. */
KVSTRATA_API int32_t kvstrata_abi_version(void);
KVSTRATA_API void kvstrata_options_init(kvstrata_options* options);
KVSTRATA_API void kvstrata_key_space_init(kvstrata_key_space* space);
KVSTRATA_API void kvstrata_page_spec_init(kvstrata_page_spec* spec);
KVSTRATA_API void kvstrata_engine_hash_params_init(kvstrata_engine_hash_params* params);

/* ---- connection ------------------------------------------------------------------------- */

/* Connects to the first of `addresses` ("host:port", tried in order; a failover list, not
 * shards) that answers within connect_timeout_ms, with bearer `token` (NULL or "": none).
 * `options` may be NULL (defaults). On KVSTRATA_OK *out is a new client the caller frees
 * with kvstrata_close. UNAVAILABLE naming every address when none answers; UNAVAILABLE when
 * transport is UCX and UCX cannot start or reach the store. */
KVSTRATA_API int32_t kvstrata_connect(const char* const* addresses, size_t n_addresses,
                                      const char* token, const kvstrata_options* options,
                                      kvstrata_client** out);
/* Frees the client: unregisters its buffers and closes its connections. NULL is a no-op.
 * Must not race other calls on the same client. */
KVSTRATA_API void kvstrata_close(kvstrata_client* client);

/* Registers [base, base + length) of host memory for zero-copy UCX transfers. The caller
 * keeps the memory alive until it is unregistered. *handle identifies the registration.
 * INVALID_ARGUMENT for NULL, zero length or a range overlapping a registered one. With the
 * gRPC transport the registration is only recorded (reads then copy into it). */
KVSTRATA_API int32_t kvstrata_register_buffer(kvstrata_client* client, void* base, size_t length,
                                              uint64_t* handle);
/* NOT_FOUND for an unknown handle; FAILED_PRECONDITION while a cancelled transfer still
 * quarantines the memory (retry later; the memory must stay alive until then). */
KVSTRATA_API int32_t kvstrata_unregister_buffer(kvstrata_client* client, uint64_t handle);

/* ---- queries ---------------------------------------------------------------------------- */

/* The longest present prefix of the chain keys[0..n): *prefix, and for each key its tier and
 * page size (blocks[i].tier = NONE for i >= *prefix). `blocks` may be NULL. */
KVSTRATA_API int32_t kvstrata_lookup(kvstrata_client* client, const kvstrata_key* keys, size_t n,
                                     int64_t timeout_ms, size_t* prefix,
                                     kvstrata_block_info* blocks);
/* Whether one key is present: *present = 1 or 0. */
KVSTRATA_API int32_t kvstrata_exists(kvstrata_client* client, const kvstrata_key* key,
                                     int64_t timeout_ms, int32_t* present);
/* present[i] = 1 when keys[i] is present, independently of the other keys (keys need not be
 * a chain). One round trip for a chain's present prefix, one per key after it. */
KVSTRATA_API int32_t kvstrata_batch_exists(kvstrata_client* client, const kvstrata_key* keys,
                                           size_t n, int64_t timeout_ms, uint8_t* present);

/* Pins the longest present prefix of the chain under a new lease of lease_ms (<= 0: the
 * store's default): its pages are neither evicted nor freed until kvstrata_unpin or the
 * deadline. */
KVSTRATA_API int32_t kvstrata_pin(kvstrata_client* client, const kvstrata_key* keys, size_t n,
                                  int64_t lease_ms, int64_t timeout_ms, kvstrata_lease* lease);
/* Releases a lease; *released = pins released (0 for an unknown or expired lease; may be
 * NULL). */
KVSTRATA_API int32_t kvstrata_unpin(kvstrata_client* client, const char* lease_id,
                                    int64_t timeout_ms, uint32_t* released);

/* ---- data ------------------------------------------------------------------------------- */

/* Reads the pages of the chain keys[0..n) into the caller's memory: page i lands at
 * ptrs[i], which has room for sizes[i] bytes. statuses[i] (caller-allocated, n entries) is
 * OK when a verified page of page_sizes[i] bytes is at ptrs[i] (`page_sizes` may be NULL);
 * NOT_FOUND when the key is absent or after the first absent key (reads take the present
 * prefix); DATA_LOSS when the page failed verification; RESOURCE_EXHAUSTED when sizes[i] is
 * too small. When every ptrs[i] lies inside registered buffers, pages move by UCX gets
 * straight into them (zero-copy); otherwise over gRPC. The call fails as a whole (and then no
 * destination holds valid bytes) when the store dies, the deadline passes or a lease expires
 * mid-transfer. Destinations must not overlap. */
KVSTRATA_API int32_t kvstrata_batch_get_into(kvstrata_client* client, const kvstrata_key* keys,
                                             void* const* ptrs, const uint64_t* sizes, size_t n,
                                             int64_t timeout_ms, kvstrata_status* statuses,
                                             uint64_t* page_sizes);
/* Writes whole encoded pages (kvstrata_page_encode) of a chain segment, in order: page i is
 * sizes[i] bytes at ptrs[i], with key keys[i], under `space` (its namespace "shared" writes
 * in the shared namespace; a tenant namespace must be the token's tenant). statuses[i] is OK
 * when the page is stored (or was already), else why not (the store's verdict). Registered
 * memory goes over UCX puts into the store's staging memory, else gRPC. The call fails as a
 * whole for a dead store or a deadline; then pages may or may not have been stored (lookup
 * tells). */
KVSTRATA_API int32_t kvstrata_batch_put_from(kvstrata_client* client,
                                             const kvstrata_key_space* space,
                                             const kvstrata_key* keys, const void* const* ptrs,
                                             const uint64_t* sizes, size_t n, int64_t timeout_ms,
                                             kvstrata_status* statuses);

/* Copies the client's counters into *stats (stats->struct_size must be set). */
KVSTRATA_API int32_t kvstrata_get_stats(kvstrata_client* client, kvstrata_stats* stats);

/* ---- keys and pages (pure helpers, no client) ------------------------------------------- */

/* Derives the keys of every full block of tokens[0..n_tokens) under `space`, continuing the
 * chain after *parent (NULL: a new chain). Writes *n_keys = n_tokens / page_tokens keys into
 * keys_out, which has room for max_keys. RESOURCE_EXHAUSTED when max_keys is too small;
 * INVALID_ARGUMENT for an invalid key space (unknown layout, page_tokens 0, no namespace). */
KVSTRATA_API int32_t kvstrata_derive_block_keys(const kvstrata_key_space* space,
                                                const uint32_t* tokens, size_t n_tokens,
                                                const kvstrata_key* parent, kvstrata_key* keys_out,
                                                size_t max_keys, size_t* n_keys);
/* vLLM's sha256_cbor prefix-cache block hashes (the engine run with
 * --prefix-caching-hash-algo sha256_cbor and the same PYTHONHASHSEED): the hash of every full
 * block of tokens[0..n_tokens) in order, 32 bytes each, written to hashes_out (room for
 * max_hashes). *n_hashes = n_tokens / block_size. A partial trailing block has no hash.
 * RESOURCE_EXHAUSTED when max_hashes is too small; INVALID_ARGUMENT naming the problem for a
 * negative token id, a bad block_size or start_token, start_token > 0 without a parent,
 * unsorted/overlapping/empty multimodal ranges, a prompt-embed hash count that is not the
 * number of full blocks, or text that is not UTF-8. Pure; safe from any thread. */
KVSTRATA_API int32_t kvstrata_engine_block_hashes(const kvstrata_engine_hash_params* params,
                                                  const int64_t* tokens, size_t n_tokens,
                                                  kvstrata_key* hashes_out, size_t max_hashes,
                                                  size_t* n_hashes);
/* The kvstrata keys of a chain of engine block hashes (one per hash, in order) under
 * `space`: key i binds the space's model fingerprint, layout, page_tokens and namespace, key
 * i-1 (*parent for i = 0; NULL: a new chain) and engine_hashes[i], so the same engine hashes
 * give different keys in different namespaces, models or layouts. keys_out has room for n
 * keys. INVALID_ARGUMENT for an invalid key space or NULL arrays with n > 0. Pure. */
KVSTRATA_API int32_t kvstrata_keys_from_engine_hashes(const kvstrata_key_space* space,
                                                      const kvstrata_key* engine_hashes, size_t n,
                                                      const kvstrata_key* parent,
                                                      kvstrata_key* keys_out);
/* The sizes of a page: *page_bytes encoded, *kv_bytes its KV payload (token_count x
 * layer_count x the layout's record bytes, layer-major). Either may be NULL. */
KVSTRATA_API int32_t kvstrata_page_size(const kvstrata_page_spec* spec, uint64_t* page_bytes,
                                        uint64_t* kv_bytes);
/* Encodes a page into out[0..out_len): `kv` must be exactly kv_bytes long and out_len exactly
 * page_bytes (kvstrata_page_size). */
KVSTRATA_API int32_t kvstrata_page_encode(const kvstrata_page_spec* spec, const void* kv,
                                          uint64_t kv_len, void* out, uint64_t out_len);
/* Verifies a page (every checksum; its header must name *expect_key unless NULL) and locates
 * its KV payload: page + *kv_offset, *kv_len bytes. DATA_LOSS or INVALID_ARGUMENT naming
 * what is wrong. */
KVSTRATA_API int32_t kvstrata_page_payload(const void* page, uint64_t page_len,
                                           const kvstrata_key* expect_key, uint64_t* kv_offset,
                                           uint64_t* kv_len);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVSTRATA_KVSTRATA_H_ */
