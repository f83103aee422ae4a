#include "common/auth.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/optional.h"
#include "common/checksum.h"
#include "common/file.h"
#include "common/grpc_options.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "grpcpp/security/auth_metadata_processor.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"

namespace quant {

class PrincipalTable {
 public:
  const Principal* ByTokenDigest(const std::string& digest) const {
    auto it = by_token_.find(digest);
    return it == by_token_.end() ? nullptr : &it->second;
  }
  const Principal* ByCertificate(const std::string& common_name) const {
    auto it = by_certificate_.find(common_name);
    return it == by_certificate_.end() ? nullptr : &it->second;
  }

 private:
  friend absl::StatusOr<std::shared_ptr<const PrincipalTable>> ParsePrincipals(
      absl::string_view, const std::string&);
  std::map<std::string, Principal> by_token_;        // hex SHA-256 ->
  std::map<std::string, Principal> by_certificate_;  // common name ->
};

namespace {

constexpr absl::string_view kBearerPrefix = "Bearer ";
constexpr size_t kMaxNameBytes = 256;

struct BioDeleter {
  void operator()(BIO* bio) const { BIO_free(bio); }
};
struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
struct KeyDeleter {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

// Every certificate in a PEM file, in order; InvalidArgument names the file
// when it holds none or one does not parse.
absl::StatusOr<std::vector<X509Ptr>> ReadCertificates(const std::string& path,
                                                      absl::string_view what) {
  ASSIGN_OR_RETURN(const std::string pem, ReadFileToString(path));
  std::unique_ptr<BIO, BioDeleter> bio(
      BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::vector<X509Ptr> certs;
  while (true) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (cert == nullptr) break;
    certs.push_back(std::move(cert));
  }
  if (certs.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, ": no PEM certificate (BEGIN CERTIFICATE) in it"));
  }
  return certs;
}

// The first certificate of `cert_file` must be in force now and match the
// private key in `key_file`.
absl::Status CheckIdentity(const std::string& cert_file,
                           const std::string& key_file,
                           absl::string_view what) {
  if (cert_file.empty() || key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": a certificate and its private key are needed"));
  }
  ASSIGN_OR_RETURN(
      std::vector<X509Ptr> certs,
      ReadCertificates(cert_file, absl::StrCat(what, " certificate")));
  X509* cert = certs.front().get();
  if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " certificate ", cert_file, " has expired"));
  }
  if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " certificate ", cert_file, " is not valid yet"));
  }
  ASSIGN_OR_RETURN(const std::string key_pem, ReadFileToString(key_file));
  std::unique_ptr<BIO, BioDeleter> bio(
      BIO_new_mem_buf(key_pem.data(), static_cast<int>(key_pem.size())));
  std::unique_ptr<EVP_PKEY, KeyDeleter> key(
      PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (key == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " key ", key_file, ": no unencrypted PEM private key in it"));
  }
  if (X509_check_private_key(cert, key.get()) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " key ", key_file, " does not match ", cert_file));
  }
  return absl::OkStatus();
}

absl::Status CheckCa(const std::string& ca_file, absl::string_view what) {
  if (ca_file.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(what, " is needed"));
  }
  return ReadCertificates(ca_file, what).status();
}

absl::StatusOr<Role> ParseRole(absl::string_view text) {
  if (text == "client") return Role::kClient;
  if (text == "worker") return Role::kWorker;
  if (text == "admin") return Role::kAdmin;
  return absl::InvalidArgumentError(
      absl::StrCat("role \"", text, "\" is not one of client, worker, admin"));
}

bool Admits(Audience audience, Role role) {
  return audience == Audience::kWorkers ? role == Role::kWorker
                                        : role != Role::kWorker;
}

absl::string_view AudienceName(Audience audience) {
  return audience == Audience::kWorkers ? "workers" : "clients";
}

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

absl::optional<absl::string_view> BearerToken(
    const std::multimap<grpc::string_ref, grpc::string_ref>& metadata) {
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return absl::nullopt;
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

absl::string_view RoleName(Role role) {
  switch (role) {
    case Role::kClient:
      return "client";
    case Role::kWorker:
      return "worker";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::string TokenDigest(absl::string_view token) {
  return absl::BytesToHexString(Sha256Of(token));
}

absl::StatusOr<std::shared_ptr<const PrincipalTable>> ParsePrincipals(
    absl::string_view json_text, const std::string& source) {
  auto error = [&source](const std::string& what) {
    return absl::InvalidArgumentError(
        absl::StrCat("principals file ", source, ": ", what));
  };
  absl::StatusOr<nlohmann::json> parsed =
      ParseJsonStrict(json_text, absl::StrCat("principals file ", source));
  if (!parsed.ok()) return parsed.status();
  const nlohmann::json& root = *parsed;
  if (!root.is_object() || !root.contains("principals") ||
      !root["principals"].is_array()) {
    return error("expected {\"principals\": [...]}");
  }
  auto table = std::make_shared<PrincipalTable>();
  std::map<std::string, bool> names;
  int index = 0;
  for (const nlohmann::json& entry : root["principals"]) {
    const std::string where = absl::StrCat("principals[", index++, "]");
    if (!entry.is_object()) return error(where + " is not an object");
    for (const auto& [key, value] : entry.items()) {
      if (key != "name" && key != "role" && key != "token_sha256" &&
          key != "certificates") {
        return error(absl::StrCat(where, ": unknown field \"", key, "\""));
      }
    }
    Principal principal;
    if (!entry.contains("name") || !entry["name"].is_string()) {
      return error(where + ".name: a string is needed");
    }
    principal.name = entry["name"].get<std::string>();
    if (principal.name.empty() || principal.name.size() > kMaxNameBytes ||
        !std::all_of(principal.name.begin(), principal.name.end(),
                     [](char c) { return absl::ascii_isgraph(c); })) {
      return error(where + ".name: 1 to 256 printable ASCII characters");
    }
    if (names[principal.name]) {
      return error(
          absl::StrCat(where, ".name: \"", principal.name, "\" appears twice"));
    }
    names[principal.name] = true;
    if (!entry.contains("role") || !entry["role"].is_string()) {
      return error(where + ".role: a string is needed");
    }
    absl::StatusOr<Role> role = ParseRole(entry["role"].get<std::string>());
    if (!role.ok())
      return error(absl::StrCat(where, ".", role.status().message()));
    principal.role = *role;
    auto strings = [&](const char* field,
                       std::vector<std::string>* out) -> absl::Status {
      if (!entry.contains(field)) return absl::OkStatus();
      if (!entry[field].is_array()) {
        return error(absl::StrCat(where, ".", field, ": a list is needed"));
      }
      for (const nlohmann::json& v : entry[field]) {
        if (!v.is_string()) {
          return error(absl::StrCat(where, ".", field, ": strings only"));
        }
        out->push_back(v.get<std::string>());
      }
      return absl::OkStatus();
    };
    std::vector<std::string> digests, certificates;
    RETURN_IF_ERROR(strings("token_sha256", &digests));
    RETURN_IF_ERROR(strings("certificates", &certificates));
    for (std::string digest : digests) {
      absl::AsciiStrToLower(&digest);
      if (!IsHexDigest(digest)) {
        return error(absl::StrCat(where,
                                  ".token_sha256: 64 hex digits each "
                                  "(sha256sum of the token)"));
      }
      if (!table->by_token_.emplace(digest, principal).second) {
        return error(absl::StrCat(where,
                                  ".token_sha256: a token listed for two "
                                  "principals"));
      }
    }
    for (const std::string& name : certificates) {
      if (name.empty() || name.size() > kMaxNameBytes) {
        return error(where + ".certificates: names of 1 to 256 bytes");
      }
      if (!table->by_certificate_.emplace(name, principal).second) {
        return error(absl::StrCat(where, ".certificates: \"", name,
                                  "\" is listed for two principals"));
      }
    }
  }
  return std::shared_ptr<const PrincipalTable>(std::move(table));
}

// The principals file, read again when it changes (checked at most once a
// second). Shared by the metadata processor and the per-RPC checks.
class ServerAuth::PrincipalsSource {
 public:
  static absl::StatusOr<std::shared_ptr<PrincipalsSource>> Load(
      const std::string& path) {
    auto source = std::shared_ptr<PrincipalsSource>(new PrincipalsSource(path));
    RETURN_IF_ERROR(source->Reload());
    return source;
  }

  std::shared_ptr<const PrincipalTable> Current() {
    const int64_t now = NowMs();
    bool check = false;
    {
      absl::MutexLock lock(&mu_);
      if (now - last_check_ms_ >= 1000) {
        last_check_ms_ = now;
        check = true;
      }
    }
    if (check) Reload().IgnoreError();  // The old table stays on error.
    absl::MutexLock lock(&mu_);
    return table_;
  }

  absl::Status Reload() {
    const FileStamp stamp = StampOf(path_);
    {
      absl::MutexLock lock(&mu_);
      if (table_ != nullptr && stamp == stamp_) return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path_));
    ASSIGN_OR_RETURN(std::shared_ptr<const PrincipalTable> table,
                     ParsePrincipals(text, path_));
    absl::MutexLock lock(&mu_);
    table_ = std::move(table);
    stamp_ = stamp;
    return absl::OkStatus();
  }

 private:
  explicit PrincipalsSource(std::string path) : path_(std::move(path)) {}

  const std::string path_;
  absl::Mutex mu_;
  std::shared_ptr<const PrincipalTable> table_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
  int64_t last_check_ms_ ABSL_GUARDED_BY(mu_) = 0;
};

namespace {

// Refuses a call whose bearer token is malformed or unknown before any
// service code runs. Calls without a token pass through: the health service
// answers them, and every other RPC refuses them in Authorize (which looks
// the token up again, in the same table, to know the caller: properties set
// here would live on the connection, not the call).
class TokenProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit TokenProcessor(std::shared_ptr<ServerAuth::PrincipalsSource> source)
      : source_(std::move(source)) {}

  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& metadata, grpc::AuthContext*,
                       OutputMetadata*, OutputMetadata*) override {
    const absl::optional<absl::string_view> header = BearerToken(metadata);
    if (!header.has_value()) return grpc::Status::OK;
    absl::string_view token = *header;
    if (!absl::ConsumePrefix(&token, kBearerPrefix) || token.empty()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "authorization metadata is not \"Bearer <token>\"");
    }
    if (source_->Current()->ByTokenDigest(TokenDigest(token)) == nullptr) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "unknown bearer token");
    }
    return grpc::Status::OK;
  }

 private:
  const std::shared_ptr<ServerAuth::PrincipalsSource> source_;
};

// Sends the token in `path` (its first line) with every call, reading the
// file again when it changes.
class TokenFilePlugin final : public grpc::MetadataCredentialsPlugin {
 public:
  explicit TokenFilePlugin(std::string path) : path_(std::move(path)) {}

  bool IsBlocking() const override { return true; }

  grpc::Status GetMetadata(
      grpc::string_ref, grpc::string_ref, const grpc::AuthContext&,
      std::multimap<grpc::string, grpc::string>* metadata) override {
    absl::StatusOr<std::string> token = Token();
    if (!token.ok()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          std::string(token.status().message()));
    }
    metadata->emplace("authorization", absl::StrCat(kBearerPrefix, *token));
    return grpc::Status::OK;
  }

  absl::StatusOr<std::string> Token() {
    const FileStamp stamp = StampOf(path_);
    absl::MutexLock lock(&mu_);
    if (!token_.empty() && stamp == stamp_) return token_;
    ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path_));
    absl::string_view line = text;
    line = line.substr(0, line.find('\n'));
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || !std::all_of(line.begin(), line.end(), [](char c) {
          return absl::ascii_isgraph(c);
        })) {
      return absl::InvalidArgumentError(absl::StrCat(
          "token file ", path_,
          ": its first line must be the token (printable, no spaces)"));
    }
    token_ = std::string(line);
    stamp_ = stamp;
    return token_;
  }

 private:
  const std::string path_;
  absl::Mutex mu_;
  std::string token_ ABSL_GUARDED_BY(mu_);
  FileStamp stamp_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<ServerAuth>> ServerAuth::Create(
    const ServerAuthOptions& options) {
  std::unique_ptr<ServerAuth> auth(new ServerAuth);
  if (options.insecure) {
    auth->insecure_ = true;
    auth->credentials_ = grpc::InsecureServerCredentials();
    return auth;
  }
  RETURN_IF_ERROR(
      CheckIdentity(options.cert_file, options.key_file, "coordinator"));
  RETURN_IF_ERROR(CheckCa(options.client_ca_file, "client CA file"));
  if (options.principals_file.empty()) {
    return absl::InvalidArgumentError(
        "a principals file is needed (who may call, with which tokens and "
        "certificates)");
  }
  ASSIGN_OR_RETURN(auth->principals_,
                   PrincipalsSource::Load(options.principals_file));
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          options.key_file, options.cert_file, options.client_ca_file,
          std::max(1, options.reload_interval_s));
  grpc::experimental::TlsServerCredentialsOptions tls(provider);
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  // Verified when presented; required by Authorize for every RPC but the
  // health check (which a kubelet probe makes without one).
  tls.set_cert_request_type(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  auth->credentials_ = grpc::experimental::TlsServerCredentials(tls);
  auth->credentials_->SetAuthMetadataProcessor(
      std::make_shared<TokenProcessor>(auth->principals_));
  return auth;
}

ServerAuth::~ServerAuth() = default;

absl::Status ServerAuth::ReloadPrincipals() const {
  if (principals_ == nullptr) return absl::OkStatus();
  return principals_->Reload();
}

absl::StatusOr<Principal> ServerAuth::Authorize(
    const grpc::ServerContext& context, Audience audience,
    absl::string_view method) const {
  if (insecure_) return Principal{"local", Role::kAdmin};
  const std::shared_ptr<const PrincipalTable> table = principals_->Current();
  const absl::optional<absl::string_view> header =
      BearerToken(context.client_metadata());
  absl::string_view token = header.value_or("");
  if (!absl::ConsumePrefix(&token, kBearerPrefix) || token.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(method, ": no bearer token (authorization: Bearer ...)"));
  }
  const Principal* caller = table->ByTokenDigest(TokenDigest(token));
  if (caller == nullptr) {
    return absl::UnauthenticatedError(
        absl::StrCat(method, ": unknown bearer token"));
  }
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  const std::vector<grpc::string_ref> names =
      auth == nullptr ? std::vector<grpc::string_ref>()
                      : auth->FindPropertyValues("x509_common_name");
  if (names.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(method, ": no client certificate"));
  }
  const std::string common_name(names.front().data(), names.front().size());
  const Principal* machine = table->ByCertificate(common_name);
  if (machine == nullptr) {
    return absl::PermissionDeniedError(
        absl::StrCat(method, ": the client certificate CN=", common_name,
                     " is not listed for any principal"));
  }
  if (!Admits(audience, caller->role)) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, ": principal ", caller->name, " (", RoleName(caller->role),
        ") holds a token that is not for ", AudienceName(audience)));
  }
  if (!Admits(audience, machine->role)) {
    return absl::PermissionDeniedError(absl::StrCat(
        method, ": the client certificate CN=", common_name, " belongs to ",
        machine->name, " (", RoleName(machine->role), "), not to ",
        AudienceName(audience)));
  }
  return *caller;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> DialCoordinator(
    const std::string& target, const ClientAuthOptions& options,
    int connection) {
  grpc::ChannelArguments args = ServiceChannelArguments(connection);
  if (options.insecure) {
    return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                     args);
  }
  if (options.ca_file.empty() && options.cert_file.empty() &&
      options.key_file.empty() && options.token_file.empty()) {
    return absl::InvalidArgumentError(
        "no credentials for the coordinator: give --tls_ca, --tls_cert, "
        "--tls_key and --token_file, or --insecure for a coordinator that "
        "runs without TLS");
  }
  RETURN_IF_ERROR(CheckCa(options.ca_file, "coordinator CA file"));
  RETURN_IF_ERROR(CheckIdentity(options.cert_file, options.key_file, "client"));
  if (options.token_file.empty()) {
    return absl::InvalidArgumentError("a token file is needed");
  }
  auto plugin = std::make_unique<TokenFilePlugin>(options.token_file);
  RETURN_IF_ERROR(plugin->Token().status());
  auto provider =
      std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
          options.key_file, options.cert_file, options.ca_file,
          std::max(1, options.reload_interval_s));
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  tls.set_certificate_verifier(
      std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
  if (!options.server_name.empty()) {
    args.SetSslTargetNameOverride(options.server_name);
  }
  return grpc::CreateCustomChannel(
      target,
      grpc::CompositeChannelCredentials(
          grpc::experimental::TlsCredentials(tls),
          grpc::MetadataCredentialsFromPlugin(std::move(plugin))),
      args);
}

bool IsLoopbackAddress(absl::string_view address) {
  if (absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "unix-abstract:")) {
    return true;
  }
  absl::string_view host = address;
  if (absl::ConsumePrefix(&host, "[")) {
    host = host.substr(0, host.find(']'));
    return host == "::1";
  }
  host = host.substr(0, host.rfind(':'));
  if (host == "localhost") return true;
  // 127.0.0.0/8, as a literal address (not a name that starts so).
  return absl::StartsWith(host, "127.") &&
         std::all_of(host.begin(), host.end(),
                     [](char c) { return absl::ascii_isdigit(c) || c == '.'; });
}

}  // namespace quant
