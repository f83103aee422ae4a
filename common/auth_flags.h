// The command-line flags of a process that calls the coordinator (workers,
// quantctl): --insecure, --tls_ca, --tls_cert, --tls_key, --token_file,
// --tls_server_name and --tls_reload_s, read into ClientAuthOptions.
#ifndef COMMON_AUTH_FLAGS_H_
#define COMMON_AUTH_FLAGS_H_

#include "common/auth.h"

namespace quant {

// The flags' values (after absl::ParseCommandLine).
ClientAuthOptions ClientAuthFromFlags();

}  // namespace quant

#endif  // COMMON_AUTH_FLAGS_H_
