// Validate prometheus-operator objects (ServiceMonitor, PrometheusRule) offline against the
// operator's CRD schemas as packaged by @kubernetes-models/prometheus-operator.
//
//   node validate-operator-kinds.mjs NODE_MODULES_DIR FILE.yaml...
//
// The CRD schemas do not forbid unknown fields (a Kubernetes API server prunes them
// silently), so a typo such as `namespaceSelctor` would pass plain validation and then do
// nothing in a cluster. We add the `--strict` half ourselves: the schema validator is run on
// a proxy that records every field it looks at; a field it never looked at is not in the
// schema, and is an error.
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
if (!modules || files.length === 0) {
  console.error("usage: validate-operator-kinds.mjs NODE_MODULES_DIR FILE.yaml...");
  process.exit(2);
}
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);
const { parseAllDocuments } = await load("yaml/dist/index.js");
const pkg = "@kubernetes-models/prometheus-operator";
const schemaDir = join(modules, pkg, "_schemas");

// Kind -> the package's compiled schema validator for monitoring.coreos.com/v1.
async function validatorFor(apiVersion, kind) {
  if (apiVersion !== "monitoring.coreos.com/v1") return null;
  const file = readdirSync(schemaDir).find((f) => f.endsWith(`V1${kind}.js`));
  return file ? (await load(join(pkg, "_schemas", file))).validate : null;
}

// A view of `value` that records the path of every property read (and every key listed,
// which is how map-typed fields such as labels are walked).
function tracked(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      if (typeof key !== "string") return Reflect.get(target, key, receiver);
      seen.add(`${path}/${key}`);
      return tracked(target[key], `${path}/${key}`, seen);
    },
    ownKeys(target) {
      for (const key of Object.keys(target)) seen.add(`${path}/${key}`);
      return Reflect.ownKeys(target);
    },
  });
}

function allPaths(value, path, out) {
  if (value === null || typeof value !== "object") return out;
  for (const [key, child] of Object.entries(value)) {
    out.push(`${path}/${key}`);
    allPaths(child, `${path}/${key}`, out);
  }
  return out;
}

let failed = 0;
let checked = 0;
for (const file of files) {
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) {
      console.error(`FAIL ${file}: YAML: ${doc.errors[0].message}`);
      failed++;
      continue;
    }
    const obj = doc.toJS();
    if (obj === null) continue;
    const name = `${file}: ${obj.kind}/${obj.metadata?.name}`;
    const validate = await validatorFor(obj.apiVersion, obj.kind);
    if (!validate) {
      console.error(`FAIL ${name}: no schema for ${obj.apiVersion} ${obj.kind}`);
      failed++;
      continue;
    }
    const seen = new Set();
    const problems = [];
    if (!validate(tracked(obj, "", seen))) {
      for (const e of validate.errors) problems.push(`${e.instancePath || "/"} ${e.message}`);
    }
    for (const p of allPaths(obj, "", [])) {
      if (!seen.has(p)) problems.push(`${p}: field not in the ${obj.kind} schema`);
    }
    checked++;
    if (problems.length) {
      failed++;
      console.error(`FAIL ${name}\n  ${problems.join("\n  ")}`);
    } else {
      console.log(`ok   ${name}`);
    }
  }
}
if (checked === 0 && failed === 0) {
  console.error("no objects checked");
  process.exit(1);
}
process.exit(failed ? 1 : 0);
