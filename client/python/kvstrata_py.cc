// kvstrata._kvstrata: the Python binding of libkvstrata_client, over its C ABI
// (kvstrata/kvstrata.h) and nothing else. kvstrata/__init__.py is the public face.
//
// Buffers. numpy arrays and anything with the buffer protocol are taken through a C-contiguous
// Py_buffer export, held for the call (or, for register_buffer, until unregister); torch CPU
// tensors through data_ptr() (contiguous, on the CPU), with the tensor referenced as long. No
// byte is copied in Python: page bytes move between the store and that memory (UCX into
// registered memory, else one memcpy from the gRPC message in the C library).
//
// The GIL is released around every C call that may block. A Client may be used from several
// Python threads; close() waits for calls in flight (a shared mutex) and later calls raise
// ValueError.
//
// Raw memory. Wherever a buffer is taken, an (address, size) tuple of ints is also accepted,
// for memory an engine owns that is not a Python object (SGLang's host KV pool hands out
// addresses); the caller vouches for the range, which is checked only for being non-zero,
// non-wrapping and at most 1 TiB.
//
// Errors: kvstrata.Error (code, code_name, message) for what the library refuses;
// TypeError/ValueError for what Python passes wrong (not a buffer, not contiguous, read-only,
// wrong dtype, a CUDA tensor, a closed client, a key that is not 32 bytes).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <kvstrata/kvstrata.h>

namespace py = pybind11;

namespace {

struct KvError {
  int32_t code;
  std::string message;
};

void Check(int32_t rc) {
  if (rc != KVSTRATA_OK) throw KvError{rc, kvstrata_last_error()};
}

// A borrowed memory range of a Python object, valid while this holds it.
class Memory {
 public:
  Memory(py::handle obj, bool writable, bool bytes_only, const std::string& what) {
    if (py::isinstance<py::tuple>(obj)) {  // (ptr, size): raw memory an engine owns
      FromPointer(py::reinterpret_borrow<py::tuple>(obj), what);
      return;
    }
    if (py::hasattr(obj, "data_ptr") && py::hasattr(obj, "is_contiguous")) {  // torch.Tensor
      const std::string device = py::str(obj.attr("device").attr("type"));
      if (device != "cpu") {
        throw py::value_error(what + " is a " + device + " tensor; this build takes CPU tensors");
      }
      if (!obj.attr("is_contiguous")().cast<bool>()) {
        throw py::value_error(what + " is not contiguous");
      }
      if (writable && obj.attr("requires_grad").cast<bool>()) {
        throw py::value_error(what + " requires grad; pass a tensor that does not");
      }
      if (bytes_only && obj.attr("element_size")().cast<int64_t>() != 1) {
        throw py::type_error(what + " has dtype " + std::string(py::str(obj.attr("dtype"))) +
                             "; pages are bytes: use torch.uint8 or torch.int8");
      }
      ptr_ = reinterpret_cast<void*>(obj.attr("data_ptr")().cast<uintptr_t>());
      size_ = obj.attr("numel")().cast<uint64_t>() * obj.attr("element_size")().cast<uint64_t>();
      owner_ = py::reinterpret_borrow<py::object>(obj);
      return;
    }
    if (!PyObject_CheckBuffer(obj.ptr())) {
      throw py::type_error(what + " is a " + std::string(py::str(py::type::of(obj))) +
                           ": expected a numpy array, a torch tensor or a buffer");
    }
    auto view = std::make_unique<Py_buffer>();
    const int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj.ptr(), view.get(), flags) != 0) {
      PyErr_Clear();
      throw py::value_error(what + (writable ? " is not a writable C-contiguous buffer"
                                             : " is not a C-contiguous buffer"));
    }
    view_ = std::move(view);
    if (bytes_only && view_->itemsize != 1) {
      const std::string format = view_->format != nullptr ? view_->format : "B";
      Release();
      throw py::type_error(what + " has items of format '" + format +
                           "'; pages are bytes: use dtype uint8 or int8");
    }
    ptr_ = view_->buf;
    size_ = static_cast<uint64_t>(view_->len);
  }
  Memory(Memory&& o) noexcept
      : ptr_(o.ptr_), size_(o.size_), owner_(std::move(o.owner_)), view_(std::move(o.view_)) {}
  Memory& operator=(Memory&&) = delete;
  ~Memory() { Release(); }  // with the GIL held (Memory lives in Python-side objects)

  void* ptr() const { return ptr_; }
  uint64_t size() const { return size_; }

 private:
  // A raw (address, size) pair, for memory that is not a Python buffer (SGLang's host pool
  // hands out addresses). The caller guarantees the range is valid for the call; we can only
  // refuse what is certainly wrong.
  void FromPointer(const py::tuple& t, const std::string& what) {
    if (t.size() != 2 || !py::isinstance<py::int_>(t[0]) || !py::isinstance<py::int_>(t[1])) {
      throw py::type_error(what + " is a tuple: expected (ptr: int, size: int)");
    }
    int64_t a = 0, n = 0;
    try {
      a = t[0].cast<int64_t>();
      n = t[1].cast<int64_t>();
    } catch (const py::cast_error&) {
      throw py::value_error(what + ": ptr or size does not fit in 64 bits");
    }
    if (a <= 0 || n <= 0) throw py::value_error(what + ": ptr and size must be positive");
    if (n > (int64_t{1} << 40) || a > INT64_MAX - n) {
      throw py::value_error(what + ": (ptr, size) wraps around or exceeds 1 TiB");
    }
    ptr_ = reinterpret_cast<void*>(static_cast<uintptr_t>(a));
    size_ = n;
  }
  void Release() {
    if (view_ != nullptr) PyBuffer_Release(view_.get());
    view_.reset();
  }
  void* ptr_ = nullptr;
  uint64_t size_ = 0;
  py::object owner_;
  std::unique_ptr<Py_buffer> view_;
};

kvstrata_key ToKey(py::handle obj, const std::string& what) {
  if (!PyBytes_Check(obj.ptr())) throw py::type_error(what + " must be bytes");
  const std::string s = obj.cast<std::string>();
  if (s.size() != KVSTRATA_KEY_BYTES) {
    throw py::value_error(what + " is " + std::to_string(s.size()) + " bytes; keys are 32");
  }
  kvstrata_key k;
  std::memcpy(k.bytes, s.data(), s.size());
  return k;
}

std::vector<kvstrata_key> ToKeys(const py::sequence& keys) {
  std::vector<kvstrata_key> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i)
    out.push_back(ToKey(keys[i], "keys[" + std::to_string(i) + "]"));
  return out;
}

py::bytes KeyBytes(const kvstrata_key& k) {
  return py::bytes(reinterpret_cast<const char*>(k.bytes), KVSTRATA_KEY_BYTES);
}

// A key space with the strings it points to.
struct KeySpace {
  KeySpace(py::bytes fingerprint, std::string layout, uint32_t page_tokens, std::string ns)
      : layout(std::move(layout)), ns(std::move(ns)) {
    const std::string f = fingerprint;
    if (f.size() != 32) throw py::value_error("model_fingerprint must be 32 bytes");
    kvstrata_key_space_init(&c);
    std::memcpy(c.model_fingerprint, f.data(), 32);
    c.page_tokens = page_tokens;
    c.layout = this->layout.c_str();
    c.key_namespace = this->ns.c_str();
  }
  KeySpace(const KeySpace&) = delete;
  std::string layout, ns;
  kvstrata_key_space c{};
};

py::list Statuses(const std::vector<kvstrata_status>& st, const std::vector<uint64_t>* sizes) {
  py::list out;
  for (size_t i = 0; i < st.size(); ++i) {
    out.append(
        py::make_tuple(st[i].code, std::string(st[i].message), sizes != nullptr ? (*sizes)[i] : 0));
  }
  return out;
}

class Client {
 public:
  Client(const std::vector<std::string>& addresses, const std::string& token, int32_t transport,
         int64_t timeout_ms, int64_t connect_timeout_ms, int64_t lease_ms,
         const std::string& tls_cert_file, const std::string& tls_key_file,
         const std::string& tls_ca_file) {
    std::vector<const char*> a;
    for (const std::string& s : addresses) a.push_back(s.c_str());
    kvstrata_options o;
    kvstrata_options_init(&o);
    o.transport = transport;
    if (timeout_ms > 0) o.timeout_ms = timeout_ms;
    if (connect_timeout_ms > 0) o.connect_timeout_ms = connect_timeout_ms;
    if (lease_ms > 0) o.lease_ms = lease_ms;
    o.tls_cert_file = tls_cert_file.c_str();
    o.tls_key_file = tls_key_file.c_str();
    o.tls_ca_file = tls_ca_file.c_str();
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      rc = kvstrata_connect(a.data(), a.size(), token.c_str(), &o, &c_);
    }
    Check(rc);
  }
  ~Client() { Close(); }

  void Close() {
    {
      py::gil_scoped_release nogil;
      std::unique_lock l(mu_);
      if (c_ == nullptr) return;
      kvstrata_close(c_);  // unregisters every buffer
      c_ = nullptr;
    }
    registered_.clear();  // with the GIL: releases the buffer exports and tensor references
  }
  bool closed() {
    std::shared_lock l(mu_);
    return c_ == nullptr;
  }

  uint64_t RegisterBuffer(py::handle obj) {
    Memory m(obj, /*writable=*/true, /*bytes_only=*/false, "buffer");
    uint64_t h = 0;
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_register_buffer(c_, m.ptr(), m.size(), &h) : -1;
    }
    Opened(rc);
    registered_.emplace(h, std::move(m));
    return h;
  }
  void UnregisterBuffer(uint64_t handle) {
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_unregister_buffer(c_, handle) : -1;
    }
    Opened(rc);
    registered_.erase(handle);
  }

  py::tuple Lookup(const py::sequence& keys, int64_t timeout_ms) {
    std::vector<kvstrata_key> k = ToKeys(keys);
    std::vector<kvstrata_block_info> info(k.size());
    size_t prefix = 0;
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_lookup(c_, k.data(), k.size(), timeout_ms, &prefix, info.data()) : -1;
    }
    Opened(rc);
    py::list blocks;
    for (const auto& b : info) blocks.append(py::make_tuple(b.tier, b.page_bytes));
    return py::make_tuple(prefix, blocks);
  }

  std::vector<bool> BatchExists(const py::sequence& keys, int64_t timeout_ms) {
    std::vector<kvstrata_key> k = ToKeys(keys);
    std::vector<uint8_t> present(k.size());
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_batch_exists(c_, k.data(), k.size(), timeout_ms, present.data()) : -1;
    }
    Opened(rc);
    return {present.begin(), present.end()};
  }

  py::tuple Pin(const py::sequence& keys, int64_t lease_ms, int64_t timeout_ms) {
    std::vector<kvstrata_key> k = ToKeys(keys);
    kvstrata_lease lease{};
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_pin(c_, k.data(), k.size(), lease_ms, timeout_ms, &lease) : -1;
    }
    Opened(rc);
    return py::make_tuple(std::string(lease.id), lease.deadline_unix_ms, lease.pinned);
  }

  uint32_t Unpin(const std::string& lease_id, int64_t timeout_ms) {
    uint32_t released = 0;
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_unpin(c_, lease_id.c_str(), timeout_ms, &released) : -1;
    }
    Opened(rc);
    return released;
  }

  py::list BatchGetInto(const py::sequence& keys, const py::sequence& buffers, int64_t timeout_ms) {
    if (keys.size() != buffers.size()) {
      throw py::value_error("keys and buffers differ in length");
    }
    std::vector<kvstrata_key> k = ToKeys(keys);
    std::vector<Memory> mem;
    mem.reserve(k.size());
    std::vector<void*> ptrs;
    std::vector<uint64_t> sizes;
    for (size_t i = 0; i < k.size(); ++i) {
      mem.emplace_back(buffers[i], true, true, "buffers[" + std::to_string(i) + "]");
      ptrs.push_back(mem.back().ptr());
      sizes.push_back(mem.back().size());
    }
    std::vector<kvstrata_status> st(k.size());
    std::vector<uint64_t> got(k.size());
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_batch_get_into(c_, k.data(), ptrs.data(), sizes.data(), k.size(),
                                            timeout_ms, st.data(), got.data())
                  : -1;
    }
    Opened(rc);
    return Statuses(st, &got);
  }

  py::list BatchPutFrom(const KeySpace& space, const py::sequence& keys,
                        const py::sequence& buffers, int64_t timeout_ms) {
    if (keys.size() != buffers.size()) {
      throw py::value_error("keys and buffers differ in length");
    }
    std::vector<kvstrata_key> k = ToKeys(keys);
    std::vector<Memory> mem;
    mem.reserve(k.size());
    std::vector<const void*> ptrs;
    std::vector<uint64_t> sizes;
    for (size_t i = 0; i < k.size(); ++i) {
      mem.emplace_back(buffers[i], false, true, "buffers[" + std::to_string(i) + "]");
      ptrs.push_back(mem.back().ptr());
      sizes.push_back(mem.back().size());
    }
    std::vector<kvstrata_status> st(k.size());
    int32_t rc;
    {
      py::gil_scoped_release nogil;
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_batch_put_from(c_, &space.c, k.data(), ptrs.data(), sizes.data(),
                                            k.size(), timeout_ms, st.data())
                  : -1;
    }
    Opened(rc);
    return Statuses(st, nullptr);
  }

  py::dict Stats() {
    kvstrata_stats s{};
    s.struct_size = sizeof(s);
    int32_t rc;
    {
      std::shared_lock l(mu_);
      rc = Open() ? kvstrata_get_stats(c_, &s) : -1;
    }
    Opened(rc);
    py::dict d;
    d["ucx_get_pages"] = s.ucx_get_pages;
    d["ucx_get_bytes"] = s.ucx_get_bytes;
    d["grpc_get_pages"] = s.grpc_get_pages;
    d["grpc_get_bytes"] = s.grpc_get_bytes;
    d["ucx_put_pages"] = s.ucx_put_pages;
    d["ucx_put_bytes"] = s.ucx_put_bytes;
    d["grpc_put_pages"] = s.grpc_put_pages;
    d["grpc_put_bytes"] = s.grpc_put_bytes;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["corrupt"] = s.corrupt;
    d["put_rejected"] = s.put_rejected;
    d["calls"] = s.calls;
    d["failed_calls"] = s.failed_calls;
    return d;
  }

 private:
  bool Open() const { return c_ != nullptr; }
  // rc -1: the client was closed (checked under the lock).
  static void Opened(int32_t rc) {
    if (rc == -1) throw py::value_error("the client is closed");
    Check(rc);
  }

  std::shared_mutex mu_;  // shared: calls; exclusive: close
  kvstrata_client* c_ = nullptr;
  std::map<uint64_t, Memory> registered_;  // under the GIL
};

py::list DeriveBlockKeys(const KeySpace& space, const std::vector<uint32_t>& tokens,
                         std::optional<py::bytes> parent) {
  kvstrata_key p;
  if (parent.has_value()) p = ToKey(*parent, "parent");
  const size_t max = space.c.page_tokens > 0 ? tokens.size() / space.c.page_tokens : 0;
  std::vector<kvstrata_key> keys(std::max<size_t>(max, 1));
  size_t n = 0;
  Check(kvstrata_derive_block_keys(&space.c, tokens.data(), tokens.size(),
                                   parent.has_value() ? &p : nullptr, keys.data(), max, &n));
  py::list out;
  for (size_t i = 0; i < n; ++i) out.append(KeyBytes(keys[i]));
  return out;
}

struct PageSpec {
  std::string layout;
  kvstrata_page_spec c{};
};
// gqa: (num_kv_heads, head_dim) for the GQA layouts, (0, 0) otherwise.
using Gqa = std::pair<uint32_t, uint32_t>;
PageSpec MakeSpec(const std::string& layout, uint32_t token_count, uint32_t layer_count,
                  uint32_t first_layer, std::optional<py::bytes> key,
                  std::optional<py::bytes> parent, Gqa gqa) {
  PageSpec s;
  s.layout = layout;
  kvstrata_page_spec_init(&s.c);
  s.c.token_count = token_count;
  s.c.layer_count = layer_count;
  s.c.first_layer = first_layer;
  s.c.num_kv_heads = gqa.first;
  s.c.head_dim = gqa.second;
  if (key.has_value()) s.c.key = ToKey(*key, "key");
  if (parent.has_value()) s.c.parent = ToKey(*parent, "parent");
  return s;
}

py::tuple PageSize(const std::string& layout, uint32_t token_count, uint32_t layer_count,
                   uint32_t first_layer, Gqa gqa) {
  PageSpec s = MakeSpec(layout, token_count, layer_count, first_layer, {}, {}, gqa);
  s.c.layout = s.layout.c_str();
  uint64_t page = 0, kv = 0;
  Check(kvstrata_page_size(&s.c, &page, &kv));
  return py::make_tuple(page, kv);
}

void EncodePage(const std::string& layout, py::bytes key, std::optional<py::bytes> parent,
                uint32_t token_count, uint32_t layer_count, uint32_t first_layer, py::handle kv,
                py::handle out, Gqa gqa) {
  PageSpec s = MakeSpec(layout, token_count, layer_count, first_layer, key, parent, gqa);
  s.c.layout = s.layout.c_str();
  Memory in(kv, false, false, "kv");
  Memory o(out, true, true, "out");
  Check(kvstrata_page_encode(&s.c, in.ptr(), in.size(), o.ptr(), o.size()));
}

py::tuple PagePayload(py::handle page, std::optional<py::bytes> expect_key) {
  Memory m(page, false, false, "page");
  kvstrata_key k;
  if (expect_key.has_value()) k = ToKey(*expect_key, "expect_key");
  uint64_t off = 0, len = 0;
  Check(
      kvstrata_page_payload(m.ptr(), m.size(), expect_key.has_value() ? &k : nullptr, &off, &len));
  return py::make_tuple(off, len);
}

// vLLM sha256_cbor block hashes (kvstrata_engine_block_hashes). mm_items: (identifier,
// offset, length) tuples.
py::list EngineBlockHashes(const std::vector<int64_t>& tokens, uint32_t block_size,
                           const std::string& seed, std::optional<py::bytes> parent,
                           int64_t start_token, std::optional<std::string> lora_name,
                           const std::vector<std::tuple<std::string, int64_t, int64_t>>& mm_items,
                           std::optional<std::string> cache_salt,
                           const py::sequence& prompt_embed_hashes) {
  kvstrata_engine_hash_params p;
  kvstrata_engine_hash_params_init(&p);
  p.seed = seed.c_str();
  p.block_size = block_size;
  p.start_token = start_token;
  kvstrata_key parent_key;
  if (parent.has_value()) {
    parent_key = ToKey(*parent, "parent");
    p.parent = &parent_key;
  }
  if (lora_name.has_value()) p.lora_name = lora_name->c_str();
  std::vector<kvstrata_mm_item> mm;
  for (const auto& [id, offset, length] : mm_items) {
    mm.push_back({id.c_str(), offset, length});
  }
  p.mm_items = mm.data();
  p.n_mm_items = mm.size();
  if (cache_salt.has_value()) p.cache_salt = cache_salt->c_str();
  std::vector<kvstrata_key> embeds;
  for (size_t i = 0; i < prompt_embed_hashes.size(); ++i) {
    embeds.push_back(
        ToKey(prompt_embed_hashes[i], "prompt_embed_hashes[" + std::to_string(i) + "]"));
  }
  p.prompt_embed_hashes = embeds.data();
  p.n_prompt_embed_hashes = embeds.size();
  const size_t max = block_size > 0 ? tokens.size() / block_size : 0;
  std::vector<kvstrata_key> out(std::max<size_t>(max, 1));
  size_t n = 0;
  Check(kvstrata_engine_block_hashes(&p, tokens.data(), tokens.size(), out.data(), max, &n));
  py::list hashes;
  for (size_t i = 0; i < n; ++i) hashes.append(KeyBytes(out[i]));
  return hashes;
}

py::list KeysFromEngineHashes(const KeySpace& space, const py::sequence& hashes,
                              std::optional<py::bytes> parent) {
  std::vector<kvstrata_key> in = ToKeys(hashes);
  kvstrata_key p;
  if (parent.has_value()) p = ToKey(*parent, "parent");
  std::vector<kvstrata_key> out(std::max<size_t>(in.size(), 1));
  Check(kvstrata_keys_from_engine_hashes(&space.c, in.data(), in.size(),
                                         parent.has_value() ? &p : nullptr, out.data()));
  py::list keys;
  for (size_t i = 0; i < in.size(); ++i) keys.append(KeyBytes(out[i]));
  return keys;
}

}  // namespace

PYBIND11_MODULE(_kvstrata, m) {
  m.doc() = "kvstrata client (C ABI binding); use the kvstrata package";
  static py::exception<KvError> error(m, "Error");
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const KvError& e) {
      py::object type = py::reinterpret_borrow<py::object>(error.ptr());
      py::object exc = type(e.message);
      exc.attr("code") = e.code;
      exc.attr("code_name") = kvstrata_code_name(e.code);
      exc.attr("message") = e.message;
      PyErr_SetObject(error.ptr(), exc.ptr());
    }
  });
  m.attr("ABI_VERSION") = kvstrata_abi_version();
  m.def("code_name", &kvstrata_code_name);
  py::class_<KeySpace>(m, "KeySpace")
      .def(py::init<py::bytes, std::string, uint32_t, std::string>(), py::arg("model_fingerprint"),
           py::arg("layout"), py::arg("page_tokens"), py::arg("namespace"))
      .def_readonly("layout", &KeySpace::layout)
      .def_readonly("namespace", &KeySpace::ns)
      .def_property_readonly("page_tokens", [](const KeySpace& s) { return s.c.page_tokens; });
  py::class_<Client>(m, "Client")
      .def(py::init<const std::vector<std::string>&, const std::string&, int32_t, int64_t, int64_t,
                    int64_t, const std::string&, const std::string&, const std::string&>())
      .def("close", &Client::Close)
      .def_property_readonly("closed", &Client::closed)
      .def("register_buffer", &Client::RegisterBuffer)
      .def("unregister_buffer", &Client::UnregisterBuffer)
      .def("lookup", &Client::Lookup)
      .def("batch_exists", &Client::BatchExists)
      .def("pin", &Client::Pin)
      .def("unpin", &Client::Unpin)
      .def("batch_get_into", &Client::BatchGetInto)
      .def("batch_put_from", &Client::BatchPutFrom)
      .def("stats", &Client::Stats);
  m.def("derive_block_keys", &DeriveBlockKeys);
  m.def("page_size", &PageSize);
  m.def("encode_page", &EncodePage);
  m.def("page_payload", &PagePayload);
  m.def("engine_block_hashes", &EngineBlockHashes);
  m.def("keys_from_engine_hashes", &KeysFromEngineHashes);
}
