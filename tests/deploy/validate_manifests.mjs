// Validates rendered Kubernetes objects against the API schemas, offline:
// kubernetes-models for the built-in kinds, @kubernetes-models/
// prometheus-operator for ServiceMonitor and PrometheusRule. Reads a JSON
// array of objects (a rendered overlay); prints one line per object; exits 1
// when any object is invalid or of a kind neither package knows.
//
// usage: node validate_manifests.mjs OBJECTS.json NODE_MODULES
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";
import { kindModule, objectLabel } from "./kinds.mjs";

const [objectsPath, nodeModules] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(objectsPath, "utf8"));

let failed = 0;
for (const object of objects) {
  const label = objectLabel(object);
  let model;
  try {
    model = await import(pathToFileURL(path.join(nodeModules, `${kindModule(object.apiVersion, object.kind)}.js`)).href);
  } catch (error) {
    console.log(`FAIL ${label}: no schema for ${object.apiVersion} ${object.kind}`);
    ++failed;
    continue;
  }
  try {
    new model[object.kind](object).validate();
    console.log(`ok   ${label}`);
  } catch (error) {
    console.log(`FAIL ${label}: ${error.message}`);
    ++failed;
  }
}
console.log(`${objects.length - failed} valid, ${failed} invalid`);
process.exit(failed === 0 ? 0 : 1);
