#include "common/auth_flags.h"

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(AuthFlagsTest, FlagsBecomeOptions) {
  const char* argv[] = {"prog",
                        "--tls_ca=/etc/quant/ca.pem",
                        "--tls_cert=/etc/quant/tls.crt",
                        "--tls_key=/etc/quant/tls.key",
                        "--token_file=/etc/quant/token",
                        "--tls_server_name=quant-coordinator",
                        "--tls_reload_s=3"};
  absl::ParseCommandLine(7, const_cast<char**>(argv));
  const ClientAuthOptions options = ClientAuthFromFlags();
  EXPECT_FALSE(options.insecure);
  EXPECT_EQ(options.ca_file, "/etc/quant/ca.pem");
  EXPECT_EQ(options.cert_file, "/etc/quant/tls.crt");
  EXPECT_EQ(options.key_file, "/etc/quant/tls.key");
  EXPECT_EQ(options.token_file, "/etc/quant/token");
  EXPECT_EQ(options.server_name, "quant-coordinator");
  EXPECT_EQ(options.reload_interval_s, 3);
}

TEST(AuthFlagsTest, NoCredentialsAndNotInsecureIsRefusedWhenDialing) {
  const char* argv[] = {"prog",       "--tls_ca=",     "--tls_cert=",
                        "--tls_key=", "--token_file=", "--noinsecure"};
  absl::ParseCommandLine(6, const_cast<char**>(argv));
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      DialCoordinator("localhost:1", ClientAuthFromFlags());
  ASSERT_FALSE(channel.ok());
  EXPECT_NE(channel.status().message().find("--insecure"), std::string::npos)
      << channel.status();
}

}  // namespace
}  // namespace quant
