// Rejects fields the Kubernetes API does not define. The schema check
// (validate_manifests.mjs) lets unknown properties through, as the API
// schemas do, so a misspelled field (`livenessProb`, `replica`) would pass
// it and be dropped silently by the API server. Here every rendered object
// becomes an object literal typed with its kind's interface from
// kubernetes-models (or @kubernetes-models/prometheus-operator), and the
// TypeScript compiler's excess-property check names each field that is not
// in the schema, at any depth.
//
// usage: node check_fields.mjs OBJECTS.json NODE_MODULES
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import os from "node:os";
import path from "node:path";
import { kindModule, objectLabel } from "./kinds.mjs";

const [objectsPath, nodeModules] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(objectsPath, "utf8"));

const work = mkdtempSync(path.join(os.tmpdir(), "check-fields-"));
try {
  const lines = [];
  objects.forEach((object, i) => {
    lines.push(`import type { I${object.kind} as T${i} } from ` +
      `${JSON.stringify(kindModule(object.apiVersion, object.kind))};`);
  });
  // One object per line, so that a diagnostic's line names its object.
  const first = lines.length + 1;
  objects.forEach((object, i) => {
    lines.push(`export const o${i}: T${i} = ${JSON.stringify(object)};`);
  });
  writeFileSync(path.join(work, "objects.ts"), lines.join("\n") + "\n");
  writeFileSync(path.join(work, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      noEmit: true, strict: true, skipLibCheck: true, types: [],
      module: "nodenext", moduleResolution: "nodenext",
      typeRoots: [], baseUrl: ".",
      paths: { "*": [path.join(nodeModules, "*")] },
    },
    files: ["objects.ts"],
  }));
  let output = "";
  try {
    execFileSync(process.execPath,
      [path.join(nodeModules, "typescript/bin/tsc"), "-p", work, "--pretty", "false"],
      { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (error) {
    output = `${error.stdout ?? ""}${error.stderr ?? ""}`;
  }
  // ".../objects.ts(LINE,COL): error TS2353: Object literal may only specify
  // known properties, and 'livenessProb' does not exist in type '...'."
  const bad = new Map();
  let other = 0;
  for (const line of output.split("\n").filter(Boolean)) {
    const match = line.match(/objects\.ts\((\d+),\d+\): error (TS\d+): (.*)$/);
    const index = match ? Number(match[1]) - first : -1;
    if (index < 0 || index >= objects.length) {
      console.log(`FAIL ${line}`);
      ++other;
      continue;
    }
    const object = objects[index];
    const label = objectLabel(object);
    bad.set(label, [...(bad.get(label) ?? []), `${match[2]} ${match[3]}`]);
  }
  for (const object of objects) {
    const label = objectLabel(object);
    if (bad.has(label)) {
      for (const message of bad.get(label)) console.log(`FAIL ${label}: ${message}`);
    } else {
      console.log(`ok   ${label}`);
    }
  }
  console.log(`${objects.length - bad.size} without unknown fields, ${bad.size} with`);
  process.exitCode = bad.size === 0 && other === 0 ? 0 : 1;
} finally {
  rmSync(work, { recursive: true, force: true });
}
