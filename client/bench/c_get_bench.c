/* The C side of bench/python_client_bench.py: times kvstrata_batch_get_into of a chain of
 * pages already in a store, from C through the C ABI, into one registered buffer, and prints
 * one JSON object. Usage: c_get_bench ADDRESS TOKEN KEYS_HEX_FILE PAGE_BYTES ROUNDS
 * (KEYS_HEX_FILE: one 64-hex-character key per line, in chain order). */
#define _POSIX_C_SOURCE 200809L
#include <kvstrata/kvstrata.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double Now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int Fail(const char* what, int32_t rc) {
  fprintf(stderr, "c_get_bench: %s: %s: %s\n", what, kvstrata_code_name(rc), kvstrata_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s ADDRESS TOKEN KEYS_HEX_FILE PAGE_BYTES ROUNDS\n", argv[0]);
    return 2;
  }
  const uint64_t page_bytes = strtoull(argv[4], NULL, 10);
  const int rounds = atoi(argv[5]);
  FILE* f = fopen(argv[3], "r");
  if (f == NULL || page_bytes == 0 || rounds <= 0) return 2;
  kvstrata_key keys[KVSTRATA_MAX_BATCH / 64];
  size_t n = 0;
  char line[160];
  while (n < sizeof(keys) / sizeof(keys[0]) && fgets(line, sizeof(line), f) != NULL) {
    if (strlen(line) < 64) continue;
    for (int b = 0; b < 32; ++b) {
      unsigned v = 0;
      if (sscanf(line + 2 * b, "%2x", &v) != 1) return 2;
      keys[n].bytes[b] = (uint8_t)v;
    }
    ++n;
  }
  fclose(f);
  if (n == 0) return 2;
  const char* addresses[] = {argv[1]};
  kvstrata_client* c = NULL;
  int32_t rc = kvstrata_connect(addresses, 1, argv[2], NULL, &c);
  if (rc != KVSTRATA_OK) return Fail("connect", rc);
  uint8_t* buf = malloc(page_bytes * n);
  void** ptrs = malloc(sizeof(void*) * n);
  uint64_t* sizes = malloc(sizeof(uint64_t) * n);
  kvstrata_status* st = malloc(sizeof(kvstrata_status) * n);
  if (buf == NULL || ptrs == NULL || sizes == NULL || st == NULL) return 1;
  memset(buf, 0, page_bytes * n);
  uint64_t h = 0;
  rc = kvstrata_register_buffer(c, buf, page_bytes * n, &h);
  if (rc != KVSTRATA_OK) return Fail("register", rc);
  for (size_t i = 0; i < n; ++i) {
    ptrs[i] = buf + i * page_bytes;
    sizes[i] = page_bytes;
  }
  double best = 1e30, total = 0;
  for (int r = 0; r < rounds + 1; ++r) { /* round 0 warms up (connect, region imports) */
    const double t0 = Now();
    rc = kvstrata_batch_get_into(c, keys, ptrs, sizes, n, 0, st, NULL);
    const double dt = Now() - t0;
    if (rc != KVSTRATA_OK) return Fail("batch_get_into", rc);
    for (size_t i = 0; i < n; ++i) {
      if (st[i].code != KVSTRATA_OK) return Fail(st[i].message, st[i].code);
    }
    if (r == 0) continue;
    total += dt;
    if (dt < best) best = dt;
  }
  kvstrata_stats s;
  memset(&s, 0, sizeof(s));
  s.struct_size = sizeof(s);
  kvstrata_get_stats(c, &s);
  printf(
      "{\"pages\": %zu, \"page_bytes\": %llu, \"rounds\": %d, \"mean_s\": %.6f, "
      "\"best_s\": %.6f, \"ucx_get_pages\": %llu, \"grpc_get_pages\": %llu}\n",
      n, (unsigned long long)page_bytes, rounds, total / rounds, best,
      (unsigned long long)s.ucx_get_pages, (unsigned long long)s.grpc_get_pages);
  kvstrata_close(c);
  free(buf);
  free(ptrs);
  free(sizes);
  free(st);
  return 0;
}
