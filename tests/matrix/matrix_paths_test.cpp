// Confinement: data.dataset and train.init_from must resolve inside the daemon's folders, checked on
// a real temporary tree with a symlink pointing out of it.

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <vector>

#include "matrix/matrix.h"

using namespace ratio;
namespace fs = std::filesystem;

namespace {

class Confinement : public testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::temp_directory_path() / ("ratio-paths-test-" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "data" / "shards");
    fs::create_directories(root_ / "models");
    fs::create_directories(root_ / "outside");
    fs::create_directory_symlink(root_ / "outside", root_ / "data" / "link-out");
    roots_ = make_path_roots((root_ / "data").string(), {(root_ / "models").string()});
  }
  void TearDown() override { fs::remove_all(root_); }

  // The matrix with one step whose data and train sections are the given YAML flow mappings.
  static std::string matrix(const std::string& data, const std::string& train = "{}") {
    return "name: paths\nsteps:\n  - {id: 0, data: " + data + ", train: " + train + "}\n";
  }

  // The primary problem of a refused matrix; fails the test when the matrix is accepted.
  MatrixProblem refused(const std::string& text) {
    try {
      expand_matrix(text, "m.yaml", &roots_);
    } catch (const MatrixError& e) {
      return e.primary();
    }
    ADD_FAILURE() << "accepted:\n" << text;
    return {};
  }

  fs::path root_;
  PathRoots roots_;
};

TEST_F(Confinement, NamedDatasetsAndPathsInsideTheRootsAreAccepted) {
  for (const std::string& data : std::vector<std::string>{"{dataset: fortunes}", "{dataset: fineweb-edu}", "{dataset: shards}",
                                 "{dataset: " + (root_ / "data" / "shards").string() + "}",
                                 "{dataset: shards/../shards}"}) {
    EXPECT_NO_THROW(expand_matrix(matrix(data), "m.yaml", &roots_)) << data;
  }
  const std::string init = "{init_from: " + (root_ / "models" / "gpt2.safetensors").string() + "}";
  EXPECT_NO_THROW(expand_matrix(matrix("{dataset: fortunes}", init), "m.yaml", &roots_));
}

TEST_F(Confinement, EscapesAreRefusedAtTheKeyWithTheAllowedRoots) {
  const MatrixProblem shadow = refused(matrix("{dataset: fortunes}", "{init_from: /etc/shadow}"));
  EXPECT_EQ(shadow.path, "steps[0].train.init_from");
  EXPECT_EQ(shadow.line, 3);
  EXPECT_EQ(shadow.column, 59);
  EXPECT_NE(shadow.message.find("'/etc/shadow' resolves to /etc/shadow, outside"), std::string::npos) << shadow.message;
  EXPECT_NE(shadow.message.find((root_ / "data").string() + ", " + (root_ / "models").string()), std::string::npos)
      << shadow.message;
  EXPECT_NE(shadow.message.find("--allow-path"), std::string::npos);

  const MatrixProblem dotdot = refused(matrix("{dataset: ../../../../etc}"));
  EXPECT_EQ(dotdot.path, "steps[0].data.dataset");
  EXPECT_NE(dotdot.message.find("resolves to /etc,"), std::string::npos) << dotdot.message;

  const MatrixProblem absolute = refused(matrix("{dataset: /srv/shards}"));
  EXPECT_EQ(absolute.path, "steps[0].data.dataset");

  const MatrixProblem link = refused(matrix("{dataset: link-out}"));
  EXPECT_NE(link.message.find("resolves to " + (root_ / "outside").string()), std::string::npos) << link.message;
}

TEST_F(Confinement, WithoutRootsNothingIsConfined) {  // `ratio expand`, a dry run with no daemon
  EXPECT_NO_THROW(expand_matrix(matrix("{dataset: /srv/shards}", "{init_from: /etc/shadow}"), "m.yaml"));
}

}  // namespace
