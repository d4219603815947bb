#!/usr/bin/env node
// Offline, strict validation of rendered Kubernetes manifests (multi-document YAML), and
// extraction of the kvstrata config files they carry.
//
//   node k8s-validate.mjs FILE.yaml...
//       Validates every document of every file. Exit 0: all valid; 1: at least one object
//       is invalid (each error is printed as FILE: KIND/NAME: PATH: MESSAGE); 2: usage, I/O
//       or YAML syntax error.
//   node k8s-validate.mjs --expect-invalid FILE.yaml...
//       The negative test: exit 0 only if EVERY document of every file is rejected.
//   node k8s-validate.mjs --extract DIR FILE.yaml
//       Writes each ConfigMap's data[KEY] to DIR/configmap/NAME/KEY and each Secret's
//       stringData/data[KEY] (base64-decoded) to DIR/secret/NAME/KEY, and prints one
//       "kind name key path" line per file. Exit 2 on error.
//   node k8s-validate.mjs --pod-args FILE.yaml
//       Prints "COMPONENT ARG..." for each kvstrata container (see podArgs). Exit 2 on error.
//
// Two layers, both generated from the Kubernetes OpenAPI of a pinned release, shipped in
// npm packages and installed offline by scripts/setup into deploy/validate/node_modules:
//  1. kubernetes-models (its ajv-compiled validators of the OpenAPI schemas): types,
//     required fields, enums, int32/int64 formats, for the object and everything nested.
//  2. Strict field sets: a JSON schema with `additionalProperties: false` on every object
//     type, built here from the typed models of @kubernetes/client-node (attributeTypeMap of
//     each OpenAPI definition) and compiled with ajv. An unknown or misspelt field anywhere
//     (the error `kubectl apply --validate=strict` gives) is rejected; so is a kind that
//     has no schema. Maps (labels, ConfigMap data) stay open, as in the API. Leaf types
//     are layer 1's job.
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import Ajv from "ajv";
import YAML from "yaml";
import * as models from "@kubernetes/client-node/dist/gen/models/all.js";

const require = createRequire(import.meta.url);

function die(msg) {
  process.stderr.write(`k8s-validate: ${msg}\n`);
  process.exit(2);
}

// ---- layer 2: strict schemas from the client-node models -------------------------------
const definitions = {};
// Leaf types are left to layer 1 (the OpenAPI types: a Quantity such as `nvidia.com/gpu: 1`
// may be an integer, where client-node types it as a string); this layer checks names.
const LEAF_TYPES = new Set(["string", "Date", "number", "boolean", "any", "object", "IntOrString"]);
function schemaFor(type) {
  let m;
  if (LEAF_TYPES.has(type)) return {};
  if ((m = /^Array<(.+)>$/.exec(type))) return { type: "array", items: schemaFor(m[1]) };
  if ((m = /^\{ \[key: string\]: (.+); \}$/.exec(type))) {
    return { type: "object", additionalProperties: schemaFor(m[1]) };
  }
  const cls = models[type];
  if (!cls || !Array.isArray(cls.attributeTypeMap)) {
    throw new Error(`no model for OpenAPI type '${type}'`);
  }
  if (!(type in definitions)) {
    definitions[type] = null;  // placeholder: recursive types (JSONSchemaProps) terminate
    const properties = {};
    for (const a of cls.attributeTypeMap) properties[a.baseName] = schemaFor(a.type);
    definitions[type] = { type: "object", properties, additionalProperties: false };
  }
  return { $ref: `#/definitions/${type}` };
}

// "apps/v1" -> group "apps", version "v1"; "v1" -> core.
function splitApiVersion(apiVersion) {
  const i = apiVersion.lastIndexOf("/");
  return i < 0 ? { group: "", version: apiVersion } : { group: apiVersion.slice(0, i), version: apiVersion.slice(i + 1) };
}

function pascal(s) {
  return s.charAt(0).toUpperCase() + s.slice(1);
}

// The client-node model of a top-level kind: V1Deployment, or with the group prefix
// (CoreV1Event, EventsV1Event) where the bare name is another group's.
function strictModelName(apiVersion, kind) {
  const { group, version } = splitApiVersion(apiVersion);
  const v = pascal(version);
  const groupWord = group === "" ? "Core" : pascal(group.split(".")[0]);
  for (const name of [`${groupWord}${v}${kind}`, `${v}${kind}`]) {
    if (models[name]?.attributeTypeMap) return name;
  }
  return null;
}

const ajv = new Ajv({ allErrors: true, strict: false });
const strictValidators = new Map();
function strictValidator(apiVersion, kind) {
  const key = `${apiVersion}/${kind}`;
  if (!strictValidators.has(key)) {
    const name = strictModelName(apiVersion, kind);
    let fn = null;
    if (name) {
      const root = schemaFor(name);
      fn = ajv.compile({ ...root, definitions });
    }
    strictValidators.set(key, fn);
  }
  return strictValidators.get(key);
}

// ---- layer 1: kubernetes-models -----------------------------------------------------------
function modelsClass(apiVersion, kind) {
  const { group, version } = splitApiVersion(apiVersion);
  const spec = group === "" ? `kubernetes-models/${version}` : `kubernetes-models/${group}/${version}`;
  try {
    const mod = require(spec);
    return typeof mod[kind] === "function" ? mod[kind] : null;
  } catch {
    return null;
  }
}

function validateObject(obj) {
  const errors = [];
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
    return ["document is not a mapping"];
  }
  const { apiVersion, kind } = obj;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return ["apiVersion and kind must be strings"];
  }
  if (typeof obj.metadata?.name !== "string" || obj.metadata.name === "") {
    errors.push("metadata.name is required");
  }
  const Cls = modelsClass(apiVersion, kind);
  if (!Cls) return [`no schema for ${apiVersion} ${kind} (unknown apiVersion/kind)`];
  try {
    new Cls(obj).validate();
  } catch (e) {
    const details = Array.isArray(e.errors)
      ? e.errors.map((x) => `${x.instancePath || "/"}: ${x.message}`)
      : [String(e.message || e)];
    errors.push(...details.map((d) => `schema: ${d}`));
  }
  const strict = strictValidator(apiVersion, kind);
  if (!strict) {
    errors.push(`no strict schema for ${apiVersion} ${kind}`);
  } else if (!strict(obj)) {
    for (const x of strict.errors) {
      const where = x.instancePath || "/";
      if (x.keyword === "additionalProperties") {
        errors.push(`strict: ${where}: unknown field '${x.params.additionalProperty}'`);
      } else {
        errors.push(`strict: ${where}: ${x.message}`);
      }
    }
  }
  return errors;
}

function loadDocs(file) {
  let text;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    die(`${file}: ${e.message}`);
  }
  const docs = YAML.parseAllDocuments(text, { uniqueKeys: true });
  const out = [];
  for (const d of docs) {
    if (d.errors.length) die(`${file}: YAML: ${d.errors[0].message}`);
    const v = d.toJS({ maxAliasCount: 100 });
    if (v !== null && v !== undefined) out.push(v);
  }
  if (out.length === 0) die(`${file}: no documents`);
  return out;
}

function describe(obj) {
  return `${obj?.kind ?? "?"}/${obj?.metadata?.name ?? "?"}`;
}

function extract(dir, file) {
  for (const obj of loadDocs(file)) {
    let entries = [];
    if (obj.kind === "ConfigMap") {
      entries = Object.entries(obj.data ?? {}).map(([k, v]) => ["configmap", k, String(v)]);
    } else if (obj.kind === "Secret") {
      entries = Object.entries(obj.stringData ?? {}).map(([k, v]) => ["secret", k, String(v)]);
      for (const [k, v] of Object.entries(obj.data ?? {})) {
        entries.push(["secret", k, Buffer.from(String(v), "base64").toString("utf8")]);
      }
    }
    for (const [kind, key, value] of entries) {
      if (key.includes("/") || key.startsWith(".") || obj.metadata.name.includes("/")) {
        die(`${file}: ${describe(obj)}: unsafe key '${key}'`);
      }
      const p = path.join(dir, kind, obj.metadata.name, key);
      fs.mkdirSync(path.dirname(p), { recursive: true });
      fs.writeFileSync(p, value);
      process.stdout.write(`${kind} ${obj.metadata.name} ${key} ${p}\n`);
    }
  }
}

// One line per kvstrata container of a Deployment/StatefulSet: "COMPONENT ARG..." with the
// container's args, $(VAR) expanded from its env (fieldRefs get sample values: the pod name
// is NAME-0, the pod IP 10.0.0.7), so a test can run exactly what a pod runs.
function podArgs(file) {
  for (const obj of loadDocs(file)) {
    if (obj.kind !== "Deployment" && obj.kind !== "StatefulSet") continue;
    for (const c of obj.spec?.template?.spec?.containers ?? []) {
      if (c.name !== "kvstrata") continue;
      const env = {};
      for (const e of c.env ?? []) {
        const ref = e.valueFrom?.fieldRef?.fieldPath;
        env[e.name] =
          e.value ?? (ref === "metadata.name" ? `${obj.metadata.name}-0` : ref === "status.podIP" ? "10.0.0.7" : "");
      }
      const expanded = (c.args ?? []).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v) => (v in env ? env[v] : m)));
      const component = obj.spec.template.metadata?.labels?.["app.kubernetes.io/component"] ?? obj.metadata.name;
      if (expanded.some((a) => /\s/.test(a))) die(`${file}: ${describe(obj)}: an argument contains whitespace`);
      process.stdout.write(`${component} ${expanded.join(" ")}\n`);
    }
  }
}

const args = process.argv.slice(2);
if (args[0] === "--pod-args") {
  if (args.length !== 2) die("usage: k8s-validate.mjs --pod-args FILE.yaml");
  podArgs(args[1]);
  process.exit(0);
}
if (args[0] === "--extract") {
  if (args.length !== 3) die("usage: k8s-validate.mjs --extract DIR FILE.yaml");
  extract(args[1], args[2]);
  process.exit(0);
}
const expectInvalid = args[0] === "--expect-invalid";
const files = expectInvalid ? args.slice(1) : args;
if (files.length === 0) die("usage: k8s-validate.mjs [--expect-invalid] FILE.yaml...");

let checked = 0;
let invalid = 0;
let wronglyAccepted = 0;
for (const file of files) {
  for (const obj of loadDocs(file)) {
    checked++;
    const errors = validateObject(obj);
    if (errors.length) {
      invalid++;
      for (const e of errors) process.stdout.write(`${file}: ${describe(obj)}: ${e}\n`);
    } else if (expectInvalid) {
      wronglyAccepted++;
      process.stdout.write(`${file}: ${describe(obj)}: ACCEPTED but must be rejected\n`);
    }
  }
}
if (expectInvalid) {
  process.stdout.write(`k8s-validate: ${invalid} of ${checked} invalid object(s) rejected\n`);
  process.exit(wronglyAccepted === 0 ? 0 : 1);
}
process.stdout.write(`k8s-validate: ${checked - invalid} of ${checked} object(s) valid\n`);
process.exit(invalid === 0 ? 0 : 1);
