// What `blkstack serve` accepts as configuration: device and export specs on
// the command line, and TOML/JSON config files. Everything is checked before
// anything is created, with a message that names the offending item.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "blkstack/device_spec.hpp"
#include "daemon/config.hpp"
#include "exports/nbd/nbd_export.hpp"
#include "exports/ublk/ublk_export.hpp"

namespace blkstack {
namespace {

KeyValueList kv(const char* text) {
  auto r = parse_key_values(text);
  EXPECT_TRUE(r) << text << ": " << r.status().message();
  return r ? *r : KeyValueList{};
}

TEST(KeyValues, HeadItemsAndEscapedCommas) {
  auto r = parse_key_values("io_uring,id=d0,path=/tmp/a,,b.img,direct=on");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->head, "io_uring");
  ASSERT_EQ(r->items.size(), 3u);
  EXPECT_EQ(r->get("path"), "/tmp/a,b.img");
  EXPECT_EQ(r->take("id"), "d0");
  EXPECT_FALSE(r->get("id"));
  EXPECT_EQ(r->items.size(), 2u);
  EXPECT_EQ(parse_key_values("null,size=1=2")->get("size"), "1=2");  // only the first '=' splits
}

TEST(KeyValues, Malformed) {
  for (const char* bad : {"", "id=d0", ",id=d0", "io_uring,path", "io_uring,=x", "io_uring,id=d0,"}) {
    auto r = parse_key_values(bad);
    EXPECT_FALSE(r) << "'" << bad << "' was accepted";
    if (!r) {
      EXPECT_EQ(r.status().code(), -EINVAL);
    }
  }
}

TEST(Switch, Words) {
  for (const char* on : {"on", "true", "yes", "1"}) EXPECT_TRUE(*parse_switch("k", on));
  for (const char* off : {"off", "false", "no", "0"}) EXPECT_FALSE(*parse_switch("k", off));
  auto r = parse_switch("readonly", "maybe");
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("readonly=maybe"), std::string::npos);
}

TEST(NbdExportSpec, Defaults) {
  auto c = nbd::parse_nbd_export(kv("nbd,blockdev=d0,socket=/run/d.sock"));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_EQ(c->blockdev, "d0");
  EXPECT_EQ(c->socket_path, "/run/d.sock");
  EXPECT_EQ(c->name, "");
  EXPECT_EQ(c->id, "nbd-d0");
  EXPECT_FALSE(c->read_only);
  EXPECT_EQ(c->tls, nbd::TlsMode::kOff);
}

TEST(NbdExportSpec, Everything) {
  auto c = nbd::parse_nbd_export(
      kv("nbd,blockdev=d0,name=disk,description=a disk,tcp=[::1]:10809,readonly=on,tls=require"));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_EQ(c->name, "disk");
  EXPECT_EQ(c->id, "disk");
  EXPECT_EQ(c->description, "a disk");
  EXPECT_EQ(c->tcp, "[::1]:10809");
  EXPECT_TRUE(c->read_only);
  EXPECT_EQ(c->tls, nbd::TlsMode::kRequire);
  EXPECT_EQ(nbd::parse_nbd_export(kv("nbd,blockdev=d0,tls=on,id=x"))->tls, nbd::TlsMode::kOn);
  EXPECT_EQ(nbd::parse_nbd_export(kv("nbd,blockdev=d0,tls=on,id=x"))->id, "x");
}

TEST(NbdExportSpec, Rejected) {
  const std::string long_name(5000, 'n');
  for (const std::string& bad : std::vector<std::string>{"nbd,socket=/s", "nbd,blockdev=d0,socket=/s,tcp=h:1", "nbd,blockdev=d0,readonly=perhaps",
                          "nbd,blockdev=d0,tls=always", "nbd,blockdev=d0,colour=blue",
                          "nbd,blockdev=d0,name=" + long_name}) {
    auto c = nbd::parse_nbd_export(kv(bad.c_str()));
    EXPECT_FALSE(c) << bad.substr(0, 60) << " was accepted";
    if (!c) {
      EXPECT_FALSE(c.status().message().empty());
    }
  }
  auto c = nbd::parse_nbd_export(kv("nbd,blockdev=d0,colour=blue"));
  EXPECT_NE(c.status().message().find("colour"), std::string::npos) << c.status().message();
}

TEST(UblkExportSpec, Defaults) {
  auto c = ublk::parse_ublk_export(kv("ublk,blockdev=d0"));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_EQ(c->queues, 0u);  // one per reactor
  EXPECT_EQ(c->depth, 128u);
  EXPECT_EQ(c->dev_id, -1);
  EXPECT_EQ(c->mode, ublk::CopyMode::kKernel);
  EXPECT_TRUE(c->recovery);
  EXPECT_FALSE(c->unprivileged);
  EXPECT_EQ(c->id, "ublk-d0");
}

TEST(UblkExportSpec, Everything) {
  auto c = ublk::parse_ublk_export(kv("ublk,blockdev=d0,queues=4,depth=4096,id=7,copy=user,recovery=off,max-io=1048576"));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_EQ(c->queues, 4u);
  EXPECT_EQ(c->depth, 4096u);
  EXPECT_EQ(c->dev_id, 7);
  EXPECT_EQ(c->id, "ublk7");
  EXPECT_EQ(c->mode, ublk::CopyMode::kUser);
  EXPECT_FALSE(c->recovery);
  EXPECT_EQ(c->max_io_bytes, 1u << 20);
  EXPECT_EQ(ublk::parse_ublk_export(kv("ublk,blockdev=d0,copy=get-data"))->mode, ublk::CopyMode::kGetData);
}

TEST(UblkExportSpec, UnprivilegedDevicesHaveNoRecoveryAndNoUserCopy) {
  auto c = ublk::parse_ublk_export(kv("ublk,blockdev=d0,unprivileged=on"));
  ASSERT_TRUE(c) << c.status().message();
  EXPECT_TRUE(c->unprivileged);
  EXPECT_FALSE(c->recovery) << "the kernel refuses recovery to unprivileged devices";
  auto r = ublk::parse_ublk_export(kv("ublk,blockdev=d0,unprivileged=on,recovery=on"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("recovery"), std::string::npos);
  r = ublk::parse_ublk_export(kv("ublk,blockdev=d0,unprivileged=on,copy=user"));
  ASSERT_FALSE(r);
  EXPECT_NE(r.status().message().find("copy=user"), std::string::npos);
}

TEST(UblkExportSpec, RejectedBeforeAnyDeviceExists) {
  for (const char* bad :
       {"ublk,queues=2", "ublk,blockdev=d0,queues=0", "ublk,blockdev=d0,queues=100000", "ublk,blockdev=d0,depth=0",
        "ublk,blockdev=d0,depth=4097", "ublk,blockdev=d0,depth=-1", "ublk,blockdev=d0,depth=12x",
        "ublk,blockdev=d0,depth=", "ublk,blockdev=d0,id=1048576", "ublk,blockdev=d0,max-io=1000",
        "ublk,blockdev=d0,max-io=4097", "ublk,blockdev=d0,copy=zero", "ublk,blockdev=d0,recovery=sometimes",
        "ublk,blockdev=d0,queues=99999999999999999999", "ublk,blockdev=d0,speed=max"}) {
    auto c = ublk::parse_ublk_export(kv(bad));
    EXPECT_FALSE(c) << bad << " was accepted";
    if (!c) {
      EXPECT_EQ(c.status().code(), -EINVAL) << bad;
      EXPECT_NE(c.status().message().find("ublk"), std::string::npos) << c.status().message();
    }
  }
}

class ConfigFile : public ::testing::Test {
 protected:
  std::string write(const char* suffix, const std::string& text) {
    char tmpl[] = "/tmp/blkstack-config-XXXXXX";
    int fd = mkstemp(tmpl);
    EXPECT_GE(fd, 0);
    close(fd);
    unlink(tmpl);
    path_ = std::string(tmpl) + suffix;
    std::ofstream(path_) << text;
    return path_;
  }
  void TearDown() override {
    if (!path_.empty()) unlink(path_.c_str());
  }
  std::string path_;
};

TEST_F(ConfigFile, Toml) {
  DaemonConfig c;
  Status s = load_config_file(write(".toml", R"(
threads = 3
control = "/run/blkstack/ctl.sock"
log-level = "debug"
pool-size = 1048576
drain-timeout = 0.5

[tls]
creds = "/etc/pki/blkstack"
verify-peer = true

[[blockdev]]
driver = "io_uring"
id = "disk0"
path = "/var/lib/disk.img"
direct = true
num-entries = 256

[[export]]
type = "nbd"
blockdev = "disk0"
socket = "/run/d.sock"
)"),
                              c);
  ASSERT_TRUE(s) << s.message();
  EXPECT_EQ(c.threads, 3u);
  EXPECT_EQ(c.control_socket, "/run/blkstack/ctl.sock");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.pool_bytes, 1u << 20);
  EXPECT_DOUBLE_EQ(c.drain_timeout_s, 0.5);
  EXPECT_EQ(c.tls.creds_dir, "/etc/pki/blkstack");
  EXPECT_TRUE(c.tls.verify_peer);
  ASSERT_EQ(c.blockdevs.size(), 1u);
  EXPECT_EQ(c.blockdevs[0].head, "io_uring");
  EXPECT_EQ(c.blockdevs[0].get("path"), "/var/lib/disk.img");
  EXPECT_EQ(c.blockdevs[0].get("direct"), "true");
  EXPECT_EQ(c.blockdevs[0].get("num-entries"), "256");
  ASSERT_EQ(c.exports.size(), 1u);
  EXPECT_EQ(c.exports[0].head, "nbd");
  EXPECT_TRUE(nbd::parse_nbd_export(c.exports[0]));
}

TEST_F(ConfigFile, JsonAppendsToTheCommandLine) {
  DaemonConfig c;
  c.blockdevs.push_back(kv("null,id=n0,size=1048576"));
  Status s = load_config_file(
      write(".json", R"({"blockdev": [{"driver": "io_uring", "id": "d1", "path": "/d1"}],
                        "export": [{"type": "ublk", "blockdev": "d1", "queues": 2}]})"),
      c);
  ASSERT_TRUE(s) << s.message();
  ASSERT_EQ(c.blockdevs.size(), 2u);
  EXPECT_EQ(c.blockdevs[1].get("id"), "d1");
  auto u = ublk::parse_ublk_export(c.exports.at(0));
  ASSERT_TRUE(u) << u.status().message();
  EXPECT_EQ(u->queues, 2u);
}

TEST_F(ConfigFile, Errors) {
  struct Case {
    const char* suffix;
    const char* text;
    const char* mentions;
  } cases[] = {
      {".json", "{\"blockdev\": [", ""},                                   // truncated
      {".toml", "threads = = 3", ""},                                      // syntax
      {".json", "[1, 2]", "object"},                                       // not a table
      {".json", "{\"blockdev\": {\"driver\": \"null\"}}", "list"},         // not a list
      {".json", "{\"blockdev\": [{\"id\": \"x\"}]}", "driver"},            // no driver
      {".json", "{\"export\": [{\"blockdev\": \"x\"}]}", "type"},          // no type
      {".json", "{\"blockdev\": [{\"driver\": \"null\", \"size\": [1]}]}", "size"},
      {".json", "{\"threads\": \"many\"}", "threads"},
      {".json", "{\"colour\": 1}", "colour"},
      {".toml", "[tls]\nwhatever = \"x\"", "tls.whatever"},
  };
  for (auto& k : cases) {
    DaemonConfig c;
    Status s = load_config_file(write(k.suffix, k.text), c);
    EXPECT_FALSE(s) << k.text << " was accepted";
    if (!s) {
      EXPECT_NE(s.message().find(k.mentions), std::string::npos) << k.text << " -> " << s.message();
    }
    TearDown();
  }
  DaemonConfig c;
  Status s = load_config_file("/nonexistent/blkstack.toml", c);
  ASSERT_FALSE(s);
  EXPECT_NE(s.message().find("/nonexistent/blkstack.toml"), std::string::npos);
}

}  // namespace
}  // namespace blkstack
