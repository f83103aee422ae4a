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

const [objectsPath, nodeModules] = process.argv.slice(2);
const objects = JSON.parse(readFileSync(objectsPath, "utf8"));

// "apps/v1" -> kubernetes-models/apps/v1/Deployment.js; core "v1" ->
// kubernetes-models/v1/Service.js; monitoring.coreos.com -> the operator's.
function modulePath(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/")
    ? apiVersion.split("/")
    : ["", apiVersion];
  const root = group === "monitoring.coreos.com"
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  const parts = [nodeModules, root];
  if (group) parts.push(group);
  parts.push(version, `${kind}.js`);
  return path.join(...parts);
}

let failed = 0;
for (const object of objects) {
  const label = `${object.kind} ${object.metadata?.namespace ?? "-"}/${object.metadata?.name}`;
  let model;
  try {
    model = await import(pathToFileURL(modulePath(object.apiVersion, object.kind)).href);
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
