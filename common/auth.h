// Who may talk to the coordinator, in gRPC's own terms.
//
// Secure mode: TLS both ways (the coordinator's certificate for everyone; a
// client certificate from every caller, signed by the configured CA) plus a
// bearer token on every call. A principals file (JSON) names each principal,
// its role, the SHA-256 of its tokens and the common names of its
// certificates:
//
//   {"principals": [
//     {"name": "alice", "role": "client",
//      "token_sha256": ["<64 hex digits>"], "certificates": ["alice"]},
//     {"name": "workers", "role": "worker",
//      "token_sha256": ["..."], "certificates": ["quant-worker"]},
//     {"name": "ops", "role": "admin", "token_sha256": ["..."],
//      "certificates": ["ops"]}]}
//
// A call is allowed when both its token and its certificate belong to
// principals whose role may make it: clients (and admins) use the public
// QuantizationService, workers the WorkerGateway; a client token cannot
// lease tasks and a worker certificate cannot submit or cancel jobs. The
// token's principal is the caller (jobs record it as their owner; admins may
// cancel and resume anyone's). Certificates, keys, CAs, the principals file
// and a client's token file are read again when they change: rotating them
// needs no restart.
//
// Insecure mode (plaintext, every caller an admin) is for one machine;
// listening beyond loopback with it is reported loudly.
#ifndef COMMON_AUTH_H_
#define COMMON_AUTH_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "grpcpp/grpcpp.h"

namespace quant {

enum class Role { kClient, kWorker, kAdmin };

absl::string_view RoleName(Role role);

struct Principal {
  std::string name;
  Role role = Role::kClient;
};

// Which callers an RPC admits.
enum class Audience { kClients, kWorkers };

struct ServerAuthOptions {
  bool insecure = false;
  std::string cert_file;       // The coordinator's certificate chain (PEM).
  std::string key_file;        // Its private key (PEM).
  std::string client_ca_file;  // The CA(s) client certificates must chain to.
  std::string principals_file;
  // How often certificate files are checked for changes.
  int reload_interval_s = 10;
};

inline ServerAuthOptions InsecureServerAuth() {
  ServerAuthOptions options;
  options.insecure = true;
  return options;
}

struct ClientAuthOptions {
  bool insecure = false;
  std::string ca_file;    // The CA(s) the coordinator's certificate chains to.
  std::string cert_file;  // This process's certificate chain (PEM).
  std::string key_file;
  std::string token_file;  // The bearer token (first line; read on change).
  // The name the coordinator's certificate must carry, when it differs from
  // the host in the target address.
  std::string server_name;
  int reload_interval_s = 10;
};

inline ClientAuthOptions InsecureClientAuth() {
  ClientAuthOptions options;
  options.insecure = true;
  return options;
}

// Parses a principals file's text. InvalidArgument names the entry and
// field at fault; a token hash or certificate name may belong to one
// principal only.
class PrincipalTable;
absl::StatusOr<std::shared_ptr<const PrincipalTable>> ParsePrincipals(
    absl::string_view json_text, const std::string& source);

// The lowercase hex SHA-256 of a token, as principals files list it.
std::string TokenDigest(absl::string_view token);

// The coordinator's side: credentials for its listening port and the check
// each RPC makes.
class ServerAuth {
 public:
  // Checks every file now (readable, PEM that parses, the key matching the
  // certificate, the certificate not expired, the principals valid) so that
  // a mistake stops the coordinator at start with its name.
  static absl::StatusOr<std::unique_ptr<ServerAuth>> Create(
      const ServerAuthOptions& options);
  ~ServerAuth();

  bool insecure() const { return insecure_; }
  std::shared_ptr<grpc::ServerCredentials> credentials() const {
    return credentials_;
  }

  // The caller of an RPC served for `audience`, or UNAUTHENTICATED (no or
  // unknown token, no client certificate) / PERMISSION_DENIED (a principal
  // whose role may not make this call), naming `method`. Insecure mode:
  // an admin named "local".
  absl::StatusOr<Principal> Authorize(const grpc::ServerContext& context,
                                      Audience audience,
                                      absl::string_view method) const;

  // Reads the principals file again if it changed (also done before each
  // check at most once a second). A file that no longer parses keeps the
  // previous principals and returns the error.
  absl::Status ReloadPrincipals() const;

  class PrincipalsSource;

 private:
  ServerAuth() = default;

  bool insecure_ = false;
  std::shared_ptr<PrincipalsSource> principals_;
  std::shared_ptr<grpc::ServerCredentials> credentials_;
};

// A channel to the coordinator at `target` ("host:port") with the service's
// message limits and keepalives: TLS with this process's certificate and a
// bearer token from `token_file`, or plaintext when `options.insecure`.
// Files are checked now, as ServerAuth::Create does. A `connection` > 0
// gets a TCP connection of its own (ServiceChannelArguments).
absl::StatusOr<std::shared_ptr<grpc::Channel>> DialCoordinator(
    const std::string& target, const ClientAuthOptions& options,
    int connection = 0);

// True when `address` ("host:port", "[v6]:port", "unix:...") only accepts
// connections from this machine.
bool IsLoopbackAddress(absl::string_view address);

}  // namespace quant

#endif  // COMMON_AUTH_H_
