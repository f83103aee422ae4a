// Where an object's kind lives in the schema packages: "apps/v1" Deployment
// -> kubernetes-models/apps/v1/Deployment; core "v1" Service ->
// kubernetes-models/v1/Service; monitoring.coreos.com -> the operator's.
export function kindModule(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/")
    ? apiVersion.split("/")
    : ["", apiVersion];
  const root = group === "monitoring.coreos.com"
    ? "@kubernetes-models/prometheus-operator"
    : "kubernetes-models";
  return [root, group, version, kind].filter(Boolean).join("/");
}

// "Deployment quant/quant-coordinator".
export function objectLabel(object) {
  return `${object.kind} ${object.metadata?.namespace ?? "-"}/${object.metadata?.name}`;
}
