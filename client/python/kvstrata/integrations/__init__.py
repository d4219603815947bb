"""Engine integrations of kvstrata: a vLLM v1 KV connector (kvstrata.integrations.vllm) and an
SGLang HiCache storage backend (kvstrata.integrations.sglang). See docs/integrations.md."""
