#!/usr/bin/env bash
# Makes what the service's mutual TLS and bearer tokens need, with openssl:
#   scripts/make_credentials.sh OUT_DIR COORDINATOR_NAME [CLIENT[:admin] ...]
# OUT_DIR gets ca.crt; coordinator.crt / .key (for COORDINATOR_NAME, its
# namespaced Service names, localhost and 127.0.0.1); worker.crt / .key /
# .token (certificate name quant-worker, role worker); for each CLIENT,
# CLIENT.crt / .key / .token (role client, or admin with ":admin"); and
# principals.json listing the tokens' SHA-256s. The CA's private key goes
# to OUT_DIR/ca-private/ (keep it out of the cluster's secret). Running it
# again with the same OUT_DIR keeps the CA and issues new certificates and
# tokens (a rotation).
set -euo pipefail
if (($# < 2)); then
  echo "usage: $0 OUT_DIR COORDINATOR_NAME [CLIENT[:admin] ...]" >&2
  exit 2
fi
out=$1
coordinator=$2
shift 2
days=${QS_CERT_DAYS:-365}
mkdir -p "$out/ca-private"
chmod 700 "$out/ca-private"
umask 077

if [[ ! -f "$out/ca-private/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/ca-private/ca.key" -out "$out/ca.crt" -days $((days * 5)) \
    -subj "/CN=quant-service CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# issue NAME FILE_STEM SAN
issue() {
  local name=$1 stem=$2 san=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$out/$stem.key" -out "$out/$stem.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$out/$stem.csr" -CA "$out/ca.crt" \
    -CAkey "$out/ca-private/ca.key" -CAcreateserial \
    -CAserial "$out/ca-private/ca.srl" -days "$days" -out "$out/$stem.crt" \
    -extfile <(printf '%s\n' "basicConstraints=CA:FALSE" \
      "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=$san") 2>/dev/null
  rm -f "$out/$stem.csr"
}
token() { openssl rand -hex 32 > "$out/$1.token"; }
# The digest of the token itself (its first line, without the newline).
digest() { head -n1 "$out/$1.token" | tr -d '\n' | sha256sum | head -c 64; }

issue "$coordinator" coordinator \
  "DNS:$coordinator,DNS:$coordinator.quant,DNS:$coordinator.quant.svc,DNS:$coordinator.quant.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
issue quant-worker worker "DNS:quant-worker"
token worker
entries="    {\"name\": \"workers\", \"role\": \"worker\", \"token_sha256\": [\"$(digest worker)\"], \"certificates\": [\"quant-worker\"]}"
for client in "$@"; do
  name=${client%%:*}
  role=client
  [[ "$client" == *:admin ]] && role=admin
  if [[ ! "$name" =~ ^[A-Za-z0-9._-]+$ || "$name" == worker || "$name" == coordinator ]]; then
    echo "$0: client name \"$name\": letters, digits, . _ - (not worker or coordinator)" >&2
    exit 2
  fi
  issue "$name" "$name" "DNS:$name"
  token "$name"
  entries+=$',\n'"    {\"name\": \"$name\", \"role\": \"$role\", \"token_sha256\": [\"$(digest "$name")\"], \"certificates\": [\"$name\"]}"
done
printf '{"principals": [\n%s\n]}\n' "$entries" > "$out/principals.json.tmp"
mv "$out/principals.json.tmp" "$out/principals.json"
echo "credentials in $out: ca.crt, coordinator.*, worker.*, principals.json${*:+, and for $*}"
