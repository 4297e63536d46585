// The store on a real SQLite file: migrations, WAL, transactions, metric upserts, attempt lifecycle.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>

#include "db/schema.h"
#include "db/store.h"

namespace fs = std::filesystem;
using ratio::db::AttemptEnd;
using ratio::db::Connection;
using ratio::db::json;
using ratio::db::NewJob;
using ratio::db::NewMatrix;
using ratio::db::Retry;
using ratio::db::Store;

namespace {

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ratio-db-test-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    path_ = (dir_ / "ratio.db").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  static NewMatrix matrix_with(int jobs, const std::string& hash_prefix = "h") {
    NewMatrix m;
    m.name = "demo";
    m.source = "name: demo\n";
    m.expanded = {{"name", "demo"}};
    for (int i = 0; i < jobs; ++i) {
      NewJob job;
      job.step = std::to_string(i);
      job.name = "step " + std::to_string(i);
      job.spec = {{"step", job.step}, {"train", {{"max_iters", 40}}}};
      job.config_hash = hash_prefix + std::to_string(i);
      job.params = {{"total", 1000 + i}};
      job.max_iters = 40;
      m.jobs.push_back(job);
    }
    return m;
  }

  static int64_t count(Store& s, const std::string& sql) {
    auto st = s.connection().prepare(sql);
    st.step();
    return st.get_int(0);
  }

  fs::path dir_;
  std::string path_;
};

json metric_event(int seq, int iter, double loss) {
  return {{"type", "metric"}, {"seq", seq}, {"time", 0.0}, {"iter", iter}, {"train_loss", loss},
          {"lr", 1e-3}, {"tokens_per_s", 100.0}, {"grad_norm", 0.5}};
}

}  // namespace

TEST_F(StoreTest, NewDatabaseIsMigratedToLatestVersionInWalMode) {
  Store store(path_, false);
  EXPECT_EQ(ratio::db::schema_version(store.connection()), ratio::db::migrations().back().version);
  auto st = store.connection().prepare("PRAGMA journal_mode");
  ASSERT_TRUE(st.step());
  EXPECT_EQ(st.get_text(0), "wal");
}

TEST_F(StoreTest, MigrationsApplyOnlyTheMissingOnesAndKeepData) {
  std::vector<ratio::db::Migration> v1 = {ratio::db::migrations().front()};
  {
    Connection conn(path_, Connection::Mode::kReadWrite);
    ratio::db::migrate(conn, v1);
    EXPECT_EQ(ratio::db::schema_version(conn), 1);
    conn.exec("INSERT INTO matrices(name, source, expanded, created_at) VALUES ('old', '', '{}', 0)");
  }
  auto v2 = ratio::db::migrations();
  v2.push_back({v2.back().version + 1, "ALTER TABLE matrices ADD COLUMN note TEXT NOT NULL DEFAULT 'n/a'"});
  Connection conn(path_, Connection::Mode::kReadWrite);
  ratio::db::migrate(conn, v2);
  EXPECT_EQ(ratio::db::schema_version(conn), v2.back().version);
  auto st = conn.prepare("SELECT name, note FROM matrices");
  ASSERT_TRUE(st.step());
  EXPECT_EQ(st.get_text(0), "old");
  EXPECT_EQ(st.get_text(1), "n/a");
  ratio::db::migrate(conn, v2);  // idempotent: nothing left to apply
  EXPECT_EQ(ratio::db::schema_version(conn), v2.back().version);
}

TEST_F(StoreTest, UpgradeToVersion2FillsTheLastValueOfEverySeries) {
  {
    Connection conn(path_, Connection::Mode::kReadWrite);
    ratio::db::migrate(conn, {ratio::db::migrations().front()});
    conn.exec("INSERT INTO matrices(name, source, expanded, created_at) VALUES ('old', '', '{}', 0)");
    conn.exec("INSERT INTO jobs(matrix_id, step, name, spec, config_hash, params, status, max_iters, max_attempts, "
              "created_at, updated_at) VALUES (1, '0', 'a', '{}', 'h1', '{}', 'succeeded', 30, 3, 0, 0), "
              "(1, '1', 'b', '{}', 'h2', '{}', 'running', 30, 3, 0, 0)");
    conn.exec("INSERT INTO metrics(job_id, name, iter, value, attempt_n) VALUES "
              "(1, 'alpha/a', 10, 0.1, 1), (1, 'alpha/a', 30, 0.3, 1), (1, 'alpha/a', 20, 0.2, 1), "
              "(1, 'train_loss', 5, 4.0, 1), (2, 'alpha/a', 7, 0.7, 1)");
  }
  Store store(path_, false);
  EXPECT_EQ(count(store, "SELECT COUNT(*) FROM last_metrics"), 3);
  EXPECT_EQ(count(store, "SELECT iter FROM last_metrics WHERE job_id = 1 AND name = 'alpha/a'"), 30);
  auto st = store.connection().prepare("SELECT value FROM last_metrics WHERE job_id = 1 AND name = 'alpha/a'");
  ASSERT_TRUE(st.step());
  EXPECT_EQ(st.get_double(0), 0.3);
}

TEST_F(StoreTest, NewerDatabaseIsRefusedWithAClearError) {
  auto v2 = ratio::db::migrations();
  v2.push_back({v2.back().version + 1, "CREATE TABLE later(x INTEGER)"});
  {
    Connection conn(path_, Connection::Mode::kReadWrite);
    ratio::db::migrate(conn, v2);
  }
  try {
    Store store(path_, false);
    FAIL() << "opening a newer database should throw";
  } catch (const ratio::db::DbError& e) {
    EXPECT_NE(std::string(e.what()).find("newer ratiod"), std::string::npos) << e.what();
  }
}

TEST_F(StoreTest, FailedMigrationRollsBackCompletely) {
  auto bad = ratio::db::migrations();
  bad.push_back({bad.back().version + 1, "CREATE TABLE half(x INTEGER); THIS IS NOT SQL"});
  Connection conn(path_, Connection::Mode::kReadWrite);
  EXPECT_THROW(ratio::db::migrate(conn, bad), ratio::db::DbError);
  EXPECT_EQ(ratio::db::schema_version(conn), ratio::db::migrations().back().version);
  auto st = conn.prepare("SELECT COUNT(*) FROM sqlite_master WHERE name = 'half'");
  st.step();
  EXPECT_EQ(st.get_int(0), 0);
}

TEST_F(StoreTest, TransactionRollsBackUnlessCommitted) {
  Store store(path_, false);
  {
    ratio::db::Transaction tx(store.connection());
    store.connection().exec("INSERT INTO matrices(name, source, expanded, created_at) VALUES ('x', '', '{}', 0)");
  }
  EXPECT_EQ(count(store, "SELECT COUNT(*) FROM matrices"), 0);
}

TEST_F(StoreTest, AddedJobsJoinTheMatrixQueuedAndReopenItAndANestedTransactionIsPartOfItsOuter) {
  Store s(path_, false);
  const int64_t matrix_id = s.create_matrix(matrix_with(1)).id;
  s.connection().exec("UPDATE jobs SET status = 'succeeded'");
  s.connection().exec("UPDATE matrices SET finished_at = 1");
  NewJob seed = matrix_with(1).jobs[0];
  seed.config_hash = "seed-3";
  {
    ratio::db::Transaction outer(s.connection());
    EXPECT_EQ(s.add_jobs(matrix_id, {seed}).size(), 1u);  // its own transaction becomes a savepoint
  }  // the outer one rolls back: so does the add
  EXPECT_EQ(count(s, "SELECT COUNT(*) FROM jobs"), 1);
  const std::vector<int64_t> ids = s.add_jobs(matrix_id, {seed});
  ASSERT_EQ(ids.size(), 1u);
  EXPECT_EQ((*s.job_summary(ids[0]))["status"], "queued");
  EXPECT_TRUE((*s.matrix_summary(matrix_id))["finished_at"].is_null());
  EXPECT_TRUE(s.add_jobs(matrix_id + 1, {seed}).empty());  // no such matrix
  EXPECT_EQ(*s.matrix_expanded(matrix_id), json({{"name", "demo"}}));
}

TEST_F(StoreTest, ReaderSeesCommittedDataWhileWriterHoldsATransaction) {
  Store writer(path_, false);
  writer.create_matrix(matrix_with(2));
  Store reader(path_, true);
  ratio::db::Transaction tx(writer.connection());
  writer.connection().exec("DELETE FROM jobs");
  // WAL: the reader is not blocked and sees the last committed state.
  EXPECT_EQ(reader.list_jobs(std::nullopt, "").size(), 2u);
}

TEST_F(StoreTest, MetricUpsertIsIdempotentAndLaterAttemptWins) {
  Store store(path_, false);
  int64_t matrix = store.create_matrix(matrix_with(1)).id;
  auto a1 = store.claim_next_job("cpu:0", "tok1", dir_.string());
  ASSERT_TRUE(a1);
  json batch = json::array({metric_event(0, 10, 3.0), metric_event(1, 20, 2.5)});
  EXPECT_EQ(store.ingest(a1->attempt_id, batch).accepted, 2);
  EXPECT_EQ(store.ingest(a1->attempt_id, batch).accepted, 0);  // same events again: nothing new
  store.end_attempt(a1->attempt_id, {"lost", "killed by signal 9", std::nullopt, Retry::kIfAttemptsLeft});

  auto a2 = store.claim_next_job("cpu:0", "tok2", dir_.string());
  ASSERT_TRUE(a2);
  EXPECT_EQ(a2->n, 2);
  EXPECT_TRUE(a2->resume);
  // The resumed attempt re-reports iteration 20 with a new value and goes on.
  store.ingest(a2->attempt_id, json::array({metric_event(0, 20, 2.4), metric_event(1, 30, 2.2)}));
  EXPECT_EQ(count(store, "SELECT COUNT(*) FROM metrics WHERE name = 'train_loss'"), 3);
  json m = store.metrics(a1->job_id, {"train_loss"}, 500, -1);
  EXPECT_EQ(m["series"]["train_loss"], json::parse("[[10, 3.0], [20, 2.4], [30, 2.2]]"));
  EXPECT_EQ(store.job_summary(a1->job_id).value()["iter"], 30);
  EXPECT_EQ(store.matrix_summary(matrix).value()["counts"]["running"], 1);
  // A late report of an earlier iteration updates that point but not the series' last value.
  store.ingest(a2->attempt_id, json::array({metric_event(2, 10, 9.9)}));
  EXPECT_EQ(store.matrix_last_values(matrix, "train_loss")[a1->job_id][""], 2.2);
  EXPECT_EQ(count(store, "SELECT iter FROM last_metrics WHERE name = 'train_loss'"), 30);
}

TEST_F(StoreTest, StaleAttemptEventsAreRecordedNotApplied) {
  Store store(path_, false);
  store.create_matrix(matrix_with(1));
  auto a1 = store.claim_next_job("cpu:0", "tok1", dir_.string());
  store.end_attempt(a1->attempt_id, {"lost", "no heartbeat", std::nullopt, Retry::kIfAttemptsLeft});
  auto out = store.ingest(a1->attempt_id, json::array({metric_event(5, 50, 1.0)}));
  EXPECT_TRUE(out.stale);
  EXPECT_EQ(out.accepted, 1);
  EXPECT_EQ(count(store, "SELECT COUNT(*) FROM metrics"), 0);
  EXPECT_EQ(store.event_count(false), 1);
}

TEST_F(StoreTest, FinishedEventMakesTheJobSucceedAndFillsTheSummary) {
  Store store(path_, false);
  int64_t matrix = store.create_matrix(matrix_with(1)).id;
  auto a = store.claim_next_job("cpu:0", "tok", dir_.string());
  json events = json::array({
      {{"type", "started"}, {"seq", 0}, {"iter", 0}, {"build_id", "abc123"}},
      {{"type", "eval"}, {"seq", 1}, {"iter", 20}, {"val_loss", 2.5}, {"entropy", {1.0, 2.0}}},
      {{"type", "eval"}, {"seq", 2}, {"iter", 40}, {"val_loss", 2.7}},
      {{"type", "alphas"}, {"seq", 3}, {"iter", 40}, {"values", {{"h.0.attn.ra_alpha", 0.25}}}},
      {{"type", "finished"}, {"seq", 4}, {"result", {{"final_val_loss", 2.7}, {"best_val_loss", 2.5}, {"iters", 40}}}},
  });
  store.ingest(a->attempt_id, events);
  EXPECT_TRUE(store.end_attempt(a->attempt_id, {"succeeded", "", 0, Retry::kNever}));
  EXPECT_FALSE(store.end_attempt(a->attempt_id, {"lost", "late", std::nullopt, Retry::kAlways}));
  json job = store.job_summary(a->job_id).value();
  EXPECT_EQ(job["status"], "succeeded");
  EXPECT_EQ(job["final_val_loss"], 2.7);
  EXPECT_EQ(job["best_val_loss"], 2.5);
  EXPECT_EQ(job["iter"], 40);
  EXPECT_EQ(store.matrix_last_values(matrix, "alpha/")[a->job_id], (std::map<std::string, double>{{"h.0.attn.ra_alpha", 0.25}}));
  EXPECT_EQ(store.metrics(a->job_id, {}, 10, -1)["names"],
            json::parse(R"(["alpha/h.0.attn.ra_alpha", "entropy/0", "entropy/1", "val_loss"])"));
  json matrices = store.list_matrices();
  EXPECT_EQ(matrices[0]["build_ids"], json::array({"abc123"}));
  EXPECT_FALSE(store.matrix_summary(matrix).value()["finished_at"].is_null());
}

TEST_F(StoreTest, ExitWithoutResultFailsAndNonRetryableFailureIsFinal) {
  Store store(path_, false);
  store.create_matrix(matrix_with(2));
  auto a = store.claim_next_job("cpu:0", "t1", dir_.string());
  store.end_attempt(a->attempt_id, {"succeeded", "", 0, Retry::kNever});
  EXPECT_EQ(store.job_summary(a->job_id).value()["status"], "failed");

  auto b = store.claim_next_job("cpu:0", "t2", dir_.string());
  store.ingest(b->attempt_id, json::array({{{"type", "failed"}, {"seq", 0}, {"reason", "no shards in /x"}}}));
  store.end_attempt(b->attempt_id, {"failed", "data error (exit 3)", 3, Retry::kNever});
  json job = store.job_summary(b->job_id).value();
  EXPECT_EQ(job["status"], "failed");
  EXPECT_EQ(job["reason"], "data error (exit 3): no shards in /x");
  EXPECT_FALSE(store.claim_next_job("cpu:0", "t3", dir_.string()));
}

// Version 3: an attempt's SLURM job id, state and reason, shown on the job summary and each attempt.
TEST_F(StoreTest, SlurmJobOfTheLatestAttemptShowsOnTheJobAndItsAttempts) {
  Store store(path_, false);
  store.create_matrix(matrix_with(2));
  auto a = store.claim_next_job("slurm", "t1", dir_.string());
  EXPECT_TRUE(store.job_summary(a->job_id).value()["slurm"].is_null());  // not submitted yet
  store.set_attempt_slurm_job(a->attempt_id, "4711");
  EXPECT_TRUE(store.set_attempt_slurm_state(a->attempt_id, "PENDING", "Resources"));
  EXPECT_FALSE(store.set_attempt_slurm_state(a->attempt_id, "PENDING", "Resources"));  // no change
  EXPECT_EQ(store.job_summary(a->job_id).value()["slurm"],
            json::parse(R"({"job_id": "4711", "state": "PENDING", "reason": "Resources"})"));
  EXPECT_EQ(store.list_jobs(std::nullopt, "")[0]["slurm"]["state"], "PENDING");
  EXPECT_TRUE(store.list_jobs(std::nullopt, "")[1]["slurm"].is_null());  // queued, never submitted
  EXPECT_EQ(store.running_attempts()[0].slurm_job_id, "4711");
  EXPECT_EQ(store.running_attempts()[0].n, 1);
  EXPECT_EQ(store.job_detail(a->job_id).value()["attempts"][0]["slurm"]["job_id"], "4711");
}

// What an attempt reported decides its end when nobody saw its exit status.
TEST_F(StoreTest, ReportedExitCodeComesFromTheResultOrTheFailedEvent) {
  Store store(path_, false);
  store.create_matrix(matrix_with(3));
  auto silent = store.claim_next_job("cpu:0", "t1", dir_.string());
  EXPECT_FALSE(store.reported_exit_code(silent->attempt_id));
  auto failed = store.claim_next_job("cpu:1", "t2", dir_.string());
  store.ingest(failed->attempt_id,
               json::array({{{"type", "failed"}, {"seq", 0}, {"reason", "loss is NaN"}, {"exit_code", 4}}}));
  EXPECT_EQ(store.reported_exit_code(failed->attempt_id), 4);
  auto done = store.claim_next_job("cpu:2", "t3", dir_.string());
  store.ingest(done->attempt_id, json::array({{{"type", "finished"}, {"seq", 0}, {"result", {{"iters", 40}}}}}));
  EXPECT_EQ(store.reported_exit_code(done->attempt_id), 0);
}

TEST_F(StoreTest, RetriesStopAtMaxAttempts) {
  Store store(path_, false);
  NewMatrix m = matrix_with(1);
  m.max_attempts = 2;
  store.create_matrix(m);
  for (int n = 1; n <= 2; ++n) {
    auto a = store.claim_next_job("cpu:0", "t" + std::to_string(n), dir_.string());
    ASSERT_TRUE(a);
    EXPECT_EQ(a->n, n);
    store.end_attempt(a->attempt_id, {"failed", "crashed (exit 1)", 1, Retry::kIfAttemptsLeft});
  }
  json job = store.job_summary(1).value();
  EXPECT_EQ(job["status"], "failed");
  EXPECT_EQ(job["attempts"], 2);
  EXPECT_NE(job["reason"].get<std::string>().find("gave up after 2 failed attempts"), std::string::npos);
}

TEST_F(StoreTest, DaemonInterruptionsDoNotUseUpAttemptsAndRerunResetsTheBudget) {
  Store store(path_, false);
  NewMatrix m = matrix_with(1);
  m.max_attempts = 1;
  store.create_matrix(m);
  auto a = store.claim_next_job("cpu:0", "t1", dir_.string());
  store.end_attempt(a->attempt_id, {"interrupted", "the daemon shut down", 6, Retry::kAlways});
  EXPECT_EQ(store.job_summary(1).value()["status"], "queued");
  auto b = store.claim_next_job("cpu:0", "t2", dir_.string());
  store.end_attempt(b->attempt_id, {"lost", "killed by signal 9", std::nullopt, Retry::kIfAttemptsLeft});
  EXPECT_EQ(store.job_summary(1).value()["status"], "failed");  // the one allowed failure
  EXPECT_TRUE(store.rerun_job(1));
  auto c = store.claim_next_job("cpu:0", "t3", dir_.string());
  EXPECT_EQ(c->n, 3);
  EXPECT_TRUE(c->resume);
}

TEST_F(StoreTest, RerunReopensAFinishedMatrixAndItsFinishTimeIsSetAgain) {
  Store store(path_, false);
  int64_t matrix = store.create_matrix(matrix_with(1)).id;
  auto finished_at = [&] { return store.matrix_summary(matrix).value()["finished_at"]; };
  auto run_to_success = [&](const std::string& token) {
    auto a = store.claim_next_job("cpu:0", token, dir_.string());
    EXPECT_TRUE(finished_at().is_null());  // running
    store.ingest(a->attempt_id, json::array({{{"type", "finished"}, {"seq", 0}, {"result", {{"final_val_loss", 2.0}}}}}));
    store.end_attempt(a->attempt_id, {"succeeded", "", 0, Retry::kNever});
    return a->job_id;
  };
  int64_t job = run_to_success("t1");
  ASSERT_FALSE(finished_at().is_null());
  double first_finish = finished_at().get<double>();

  // A job-level rerun reopens the matrix; finishing it again sets a new finish time.
  ASSERT_TRUE(store.rerun_job(job));
  EXPECT_TRUE(finished_at().is_null());
  run_to_success("t2");
  ASSERT_FALSE(finished_at().is_null());
  double second_finish = finished_at().get<double>();
  EXPECT_GE(second_finish, first_finish);

  // So does a matrix-level rerun.
  EXPECT_EQ(store.rerun_matrix(matrix, {"succeeded"}), std::vector<int64_t>{job});
  EXPECT_TRUE(finished_at().is_null());
  EXPECT_EQ(store.list_matrices()[0]["finished_at"], nullptr);
  run_to_success("t3");
  ASSERT_FALSE(finished_at().is_null());
  EXPECT_GE(finished_at().get<double>(), second_finish);

  // A matrix rerun that requeues nothing leaves the finish time alone.
  json before = finished_at();
  EXPECT_TRUE(store.rerun_matrix(matrix, {"failed"}).empty());
  EXPECT_EQ(finished_at(), before);
}

TEST_F(StoreTest, IdenticalConfigReusesResultUnlessForced) {
  Store store(path_, false);
  store.create_matrix(matrix_with(1));
  auto a = store.claim_next_job("cpu:0", "t", dir_.string());
  store.ingest(a->attempt_id, json::array({{{"type", "finished"}, {"seq", 0},
                                            {"result", {{"final_val_loss", 2.0}, {"best_val_loss", 1.9}}}}}));
  store.end_attempt(a->attempt_id, {"succeeded", "", 0, Retry::kNever});

  int64_t second = store.create_matrix(matrix_with(2)).id;
  json jobs = store.list_jobs(second, "");
  EXPECT_EQ(jobs[0]["status"], "succeeded");
  EXPECT_EQ(jobs[0]["reused_from"], a->job_id);
  EXPECT_EQ(jobs[0]["final_val_loss"], 2.0);
  EXPECT_EQ(jobs[1]["status"], "queued");
  EXPECT_EQ(store.job_detail(jobs[0]["id"].get<int64_t>()).value()["job"]["result"]["best_val_loss"], 1.9);

  NewMatrix forced = matrix_with(1);
  forced.force = true;
  int64_t third = store.create_matrix(forced).id;
  EXPECT_EQ(store.list_jobs(third, "")[0]["status"], "queued");
}

TEST_F(StoreTest, IdempotencyKeyReturnsTheSameMatrix) {
  Store store(path_, false);
  NewMatrix m = matrix_with(1);
  m.idempotency_key = "submit-1";
  auto first = store.create_matrix(m);
  auto again = store.create_matrix(m);
  EXPECT_FALSE(first.existed);
  EXPECT_TRUE(again.existed);
  EXPECT_EQ(first.id, again.id);
  EXPECT_EQ(count(store, "SELECT COUNT(*) FROM jobs"), 1);
}

TEST_F(StoreTest, RerunKeepsAttemptsAndRequeuesOnlyMatchingStatuses) {
  Store store(path_, false);
  int64_t matrix = store.create_matrix(matrix_with(2)).id;
  auto a = store.claim_next_job("cpu:0", "t1", dir_.string());
  store.end_attempt(a->attempt_id, {"failed", "diverged (exit 4)", 4, Retry::kNever});
  EXPECT_EQ(store.rerun_matrix(matrix, {"failed"}), std::vector<int64_t>{a->job_id});
  EXPECT_EQ(store.job_summary(a->job_id).value()["status"], "queued");
  auto b = store.claim_next_job("cpu:0", "t2", dir_.string());
  EXPECT_EQ(b->job_id, a->job_id);
  EXPECT_EQ(b->n, 2);
  EXPECT_EQ(store.job_detail(a->job_id).value()["attempts"].size(), 2u);
  EXPECT_FALSE(store.rerun_job(a->job_id));  // running
  EXPECT_TRUE(b->resume);                     // a failed job continues from its checkpoint

  store.ingest(b->attempt_id, json::array({{{"type", "finished"}, {"seq", 0}, {"result", {{"final_val_loss", 2.0}}}}}));
  store.end_attempt(b->attempt_id, {"succeeded", "", 0, Retry::kNever});
  EXPECT_TRUE(store.rerun_job(a->job_id));
  auto c = store.claim_next_job("cpu:0", "t3", dir_.string());
  EXPECT_EQ(c->job_id, a->job_id);
  EXPECT_FALSE(c->resume);  // a finished job trains again from scratch
}

TEST_F(StoreTest, CancelQueuedJobAndDownsampling) {
  Store store(path_, false);
  store.create_matrix(matrix_with(2));
  EXPECT_EQ(store.cancel_queued_job(2), "cancelled");
  EXPECT_EQ(store.cancel_queued_job(99), "");
  auto a = store.claim_next_job("cpu:0", "t", dir_.string());
  EXPECT_EQ(a->job_id, 1);
  json batch = json::array();
  for (int i = 0; i < 100; ++i) batch.push_back(metric_event(i, i, 100.0 - i));
  store.ingest(a->attempt_id, batch);
  json s = store.metrics(1, {"train_loss"}, 10, -1)["series"]["train_loss"];
  ASSERT_EQ(s.size(), 10u);
  EXPECT_EQ(s.front()[0], 0);
  EXPECT_EQ(s.back()[0], 99);
  json after = store.metrics(1, {"train_loss"}, 500, 95)["series"]["train_loss"];
  EXPECT_EQ(after.size(), 4u);
  EXPECT_EQ(after.front()[0], 96);
}
