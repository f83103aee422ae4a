#include "common/auth_flags.h"

#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(bool, insecure, false,
          "Talk to the coordinator in plaintext, without credentials (only "
          "for a coordinator started with --insecure)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file: the CA(s) the coordinator's certificate chains to");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM file: this process's certificate chain (mutual TLS)");
ABSL_FLAG(std::string, tls_key, "", "PEM file: this process's private key");
ABSL_FLAG(std::string, token_file, "",
          "File whose first line is this principal's bearer token");
ABSL_FLAG(std::string, tls_server_name, "",
          "The name the coordinator's certificate carries, when it is not "
          "the host in --coordinator");
ABSL_FLAG(int, tls_reload_s, 10,
          "Seconds between checks of the certificate files for changes");

namespace quant {

ClientAuthOptions ClientAuthFromFlags() {
  ClientAuthOptions options;
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.ca_file = absl::GetFlag(FLAGS_tls_ca);
  options.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.key_file = absl::GetFlag(FLAGS_tls_key);
  options.token_file = absl::GetFlag(FLAGS_token_file);
  options.server_name = absl::GetFlag(FLAGS_tls_server_name);
  options.reload_interval_s = absl::GetFlag(FLAGS_tls_reload_s);
  return options;
}

}  // namespace quant
