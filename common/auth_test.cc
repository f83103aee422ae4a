#include "common/auth.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/test_data.h"
#include "common/test_pki.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;

std::string Principals(const std::string& entries) {
  return absl::StrCat("{\"principals\": [", entries, "]}");
}

TEST(TokenDigestTest, IsTheHexSha256OfTheToken) {
  // sha256("abc"), FIPS 180-2 appendix B.1.
  EXPECT_EQ(TokenDigest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ParsePrincipalsTest, AcceptsAValidFile) {
  const std::string text = Principals(
      absl::StrCat(R"({"name": "alice", "role": "client", "token_sha256": [")",
                   TokenDigest("a"), R"("], "certificates": ["alice"]},)",
                   R"({"name": "pool", "role": "worker", "token_sha256": [")",
                   TokenDigest("w"), R"("], "certificates": ["w1", "w2"]},)",
                   R"({"name": "ops", "role": "admin"})"));
  EXPECT_TRUE(ParsePrincipals(text, "p.json").ok());
}

TEST(ParsePrincipalsTest, NamesTheEntryAndFieldAtFault) {
  const std::string d = TokenDigest("a");
  const struct {
    std::string text;
    std::string expected;
  } cases[] = {
      {"[]", "expected {\"principals\": [...]}"},
      {"{\"principals\": [", "not well-formed JSON"},
      {Principals("1"), "principals[0] is not an object"},
      {Principals(R"({"name": "a", "role": "client", "extra": 1})"),
       "principals[0]: unknown field \"extra\""},
      {Principals(R"({"role": "client"})"), "principals[0].name"},
      {Principals(R"({"name": "a b", "role": "client"})"),
       "principals[0].name: 1 to 256 printable"},
      {Principals(R"({"name": "a", "role": "root"})"),
       "principals[0].role \"root\" is not one of client, worker, admin"},
      {Principals(R"({"name": "a", "role": "client"},
                     {"name": "a", "role": "worker"})"),
       "principals[1].name: \"a\" appears twice"},
      {Principals(R"({"name": "a", "role": "client", "token_sha256": ["ab"]})"),
       "principals[0].token_sha256: 64 hex digits"},
      {Principals(absl::StrCat(
           R"({"name": "a", "role": "client", "token_sha256": [")", d,
           R"("]}, {"name": "b", "role": "worker", "token_sha256": [")", d,
           R"("]})")),
       "principals[1].token_sha256: a token listed for two principals"},
      {Principals(R"({"name": "a", "role": "client", "certificates": ["x"]},
                     {"name": "b", "role": "worker", "certificates": ["x"]})"),
       "principals[1].certificates: \"x\" is listed for two principals"},
      {Principals(R"({"name": "a", "role": "client", "certificates": "x"})"),
       "principals[0].certificates: a list is needed"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::shared_ptr<const PrincipalTable>> table =
        ParsePrincipals(c.text, "p.json");
    ASSERT_FALSE(table.ok()) << c.text;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(table.status().message(), HasSubstr("p.json")) << c.text;
    EXPECT_THAT(table.status().message(), HasSubstr(c.expected)) << c.text;
  }
}

TEST(IsLoopbackAddressTest, OnlyThisMachinesAddresses) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.2:1"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/run/quant.sock"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.5:50051"));
  EXPECT_FALSE(IsLoopbackAddress("coordinator:50051"));
  EXPECT_FALSE(IsLoopbackAddress("127.example.com:50051"));
}

class AuthFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("auth");
    TestCertificate server = ca_.Issue("localhost");
    Write("ca.pem", ca_.cert_pem());
    Write("server.pem", server.cert_pem);
    Write("server.key", server.key_pem);
    Write("principals.json",
          Principals(absl::StrCat(R"({"name": "alice", "role": "client",)",
                                  R"( "token_sha256": [")", TokenDigest("t"),
                                  R"("], "certificates": ["alice"]})")));
  }
  std::string Write(const std::string& name, const std::string& text) {
    WriteTestFile(Path(name), text);
    return Path(name);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }
  ServerAuthOptions Server() const {
    ServerAuthOptions options;
    options.cert_file = Path("server.pem");
    options.key_file = Path("server.key");
    options.client_ca_file = Path("ca.pem");
    options.principals_file = Path("principals.json");
    return options;
  }

  std::string dir_;
  TestCa ca_{"test-ca"};
};

TEST_F(AuthFilesTest, ServerStartsWithGoodFiles) {
  absl::StatusOr<std::unique_ptr<ServerAuth>> auth =
      ServerAuth::Create(Server());
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_FALSE((*auth)->insecure());
  EXPECT_NE((*auth)->credentials(), nullptr);
}

TEST_F(AuthFilesTest, ServerRefusesBadFilesNamingThem) {
  TestCertificate expired = ca_.Issue("localhost", -7200, -3600);
  Write("expired.pem", expired.cert_pem);
  Write("expired.key", expired.key_pem);
  TestCertificate future = ca_.Issue("localhost", 3600, 7200);
  Write("future.pem", future.cert_pem);
  Write("future.key", future.key_pem);
  Write("other.key", ca_.Issue("other").key_pem);
  Write("garbage.pem", "not a certificate\n");
  const struct {
    std::string field;
    std::string value;
    std::string expected;
  } cases[] = {
      {"cert", Path("expired.pem"), "has expired"},
      {"cert", Path("future.pem"), "is not valid yet"},
      {"key", Path("other.key"), "does not match"},
      {"key", Path("garbage.pem"), "no unencrypted PEM private key"},
      {"cert", Path("missing.pem"), "missing.pem"},
      {"ca", Path("garbage.pem"), "no PEM certificate"},
      {"ca", "", "client CA file is needed"},
      {"principals", "", "a principals file is needed"},
      {"principals", Path("garbage.pem"), "not well-formed JSON"},
  };
  for (const auto& c : cases) {
    ServerAuthOptions options = Server();
    if (c.field == "cert") options.cert_file = c.value;
    if (c.field == "key") options.key_file = c.value;
    if (c.field == "ca") options.client_ca_file = c.value;
    if (c.field == "principals") options.principals_file = c.value;
    if (c.field == "key" && c.value == Path("garbage.pem")) {
      options.cert_file = Path("server.pem");
    }
    absl::StatusOr<std::unique_ptr<ServerAuth>> auth =
        ServerAuth::Create(options);
    ASSERT_FALSE(auth.ok()) << c.field << " " << c.value;
    EXPECT_THAT(auth.status().message(), HasSubstr(c.expected))
        << auth.status();
  }
}

TEST_F(AuthFilesTest, APrincipalsFileThatStopsParsingKeepsTheOldOne) {
  absl::StatusOr<std::unique_ptr<ServerAuth>> auth =
      ServerAuth::Create(Server());
  ASSERT_TRUE(auth.ok()) << auth.status();
  Write("principals.json", "{");
  absl::Status reload = (*auth)->ReloadPrincipals();
  EXPECT_THAT(reload.message(), HasSubstr("principals.json"));
  Write("principals.json", Principals(R"({"name": "b", "role": "admin"})"));
  EXPECT_TRUE((*auth)->ReloadPrincipals().ok());
}

TEST_F(AuthFilesTest, ClientChecksItsFiles) {
  TestCertificate client = ca_.Issue("alice");
  ClientAuthOptions options;
  options.ca_file = Path("ca.pem");
  options.cert_file = Write("alice.pem", client.cert_pem);
  options.key_file = Write("alice.key", client.key_pem);
  options.token_file = Write("token", "t\n");
  EXPECT_TRUE(DialCoordinator("localhost:1", options).ok());

  options.token_file = Write("blank", "\n");
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel =
      DialCoordinator("localhost:1", options);
  ASSERT_FALSE(channel.ok());
  EXPECT_THAT(channel.status().message(), HasSubstr("first line"));
  options.token_file = "";
  EXPECT_THAT(DialCoordinator("localhost:1", options).status().message(),
              HasSubstr("a token file is needed"));
  options.token_file = Path("token");
  options.key_file = Path("server.key");
  EXPECT_THAT(DialCoordinator("localhost:1", options).status().message(),
              HasSubstr("does not match"));

  ClientAuthOptions insecure;
  insecure.insecure = true;
  EXPECT_TRUE(DialCoordinator("localhost:1", insecure).ok());
}

}  // namespace
}  // namespace quant
