// Data-parallel training under torchrun (c10d Gloo on the CPU): two ranks
// equal one process with twice the accumulation, gradient buckets
// all-reduced during backward equal one all-reduce after it, two torchrun
// agents meeting at a c10d rendezvous (two nodes) equal one node, a torchrun
// restart after a killed rank equals an uninterrupted run, checkpoints
// resume across world sizes, rank 0 alone writes, and a rank that fails at
// start-up gives one clear error on every rank instead of a hang. Also
// torchrun's environment parsing.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>

#include "common/test_env.h"
#include "trainer/dist/dist.h"
#include "trainer/io/error.h"
#include "trainer/io/safetensors.h"

namespace fs = std::filesystem;
using namespace loratune;

namespace {

// ---- torchrun's environment -------------------------------------------------

std::optional<dist::LaunchEnv> env_of(const std::map<std::string, std::string>& vars) {
  return dist::launch_env([&](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

TEST(LaunchEnv, ReadsTorchrunsVariables) {
  EXPECT_FALSE(env_of({}).has_value());  // no WORLD_SIZE: a plain run
  auto e = env_of({{"WORLD_SIZE", "4"},
                   {"RANK", "3"},
                   {"LOCAL_RANK", "1"},
                   {"LOCAL_WORLD_SIZE", "2"},
                   {"MASTER_ADDR", "10.0.0.1"},
                   {"MASTER_PORT", "29400"},
                   {"TORCHELASTIC_RESTART_COUNT", "2"},
                   {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->world_size, 4);
  EXPECT_EQ(e->rank, 3);
  EXPECT_EQ(e->local_rank, 1);
  EXPECT_EQ(e->local_world_size, 2);
  EXPECT_EQ(e->master_addr, "10.0.0.1");
  EXPECT_EQ(e->master_port, 29400);
  EXPECT_EQ(e->restart_count, 2);
  EXPECT_TRUE(e->agent_store);
}

TEST(LaunchEnv, RefusesMissingOrMalformedVariablesByName) {
  auto message = [](const std::map<std::string, std::string>& vars) -> std::string {
    try {
      env_of(vars);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message({{"WORLD_SIZE", "2"}}).find("RANK"), std::string::npos);
  EXPECT_NE(
      message({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
          .find("RANK='2' is not a whole number in [0, 1]"),
      std::string::npos);
  EXPECT_NE(message({{"WORLD_SIZE", "two"}}).find("WORLD_SIZE='two'"), std::string::npos);
  // RANK alone: rank 0 (or LOCAL_RANK alone, -1 in HF scripts) is a plain
  // run; another rank would be a second writer of rank 0's outputs.
  EXPECT_NE(message({{"RANK", "1"}}).find("RANK='1' is set but WORLD_SIZE is not"),
            std::string::npos);
  EXPECT_FALSE(env_of({{"RANK", "0"}}).has_value());
  EXPECT_FALSE(env_of({{"LOCAL_RANK", "-1"}}).has_value());
  EXPECT_NE(message({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}})
                .find("MASTER_PORT is not"),
            std::string::npos);
  EXPECT_NE(
      message({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "99999"}})
          .find("MASTER_PORT='99999'"),
      std::string::npos);
}

// ---- whole runs -------------------------------------------------------------

// A training config on a tiny model and its pre-tokenized data (the
// ref_train fixture), with shuffling and packing on and dropout off (a
// command line may turn it on: masks follow the micro-batch, not the rank).
std::string config(const std::string& root, const std::string& variant,
                   const std::string& train_extra) {
  const std::string ref = test::testdata_dir() + "/ref_train";
  const std::string model = variant == "llama-rope3-tied"
                                ? ref + "/tokmodel"
                                : test::testdata_dir() + "/models/" + variant;
  const std::string path = root + "/" + variant + ".yaml";
  test::write_file(path, "model: {path: " + model +
                             ", dtype: float32}\n"
                             "device: cpu\nseed: 11\n"
                             "lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}\n"
                             "data: {train: " +
                             ref + "/" + variant +
                             "/train.jsonl, format: tokenized, max_seq_len: 64, shuffle: true, "
                             "packing: true, val_fraction: 0.1}\n"
                             "train:\n  max_steps: 8\n  micro_batch_size: 2\n"
                             "  optimizer: {lr: 2.0e-3, weight_decay: 0.01}\n"
                             "  scheduler: {name: cosine, warmup_steps: 2}\n"
                             "  eval_every: 4\n  dist_timeout_s: 60\n" +
                             train_extra);
  return path;
}

std::string torchrun(int ranks, const std::string& extra = "") {
  return "OMP_NUM_THREADS=1 timeout 300 " + test::quote(test::python()) +
         " -m torch.distributed.run --standalone --nproc-per-node " + std::to_string(ranks) + " " +
         extra + " --no-python " + test::quote(test::loratune_bin());
}

// `loratune train --plain CONFIG ARGS` on one process, or on `ranks` under torchrun.
test::RunResult train(int ranks, const std::string& cfg, const std::string& args,
                      const std::string& torchrun_extra = "") {
  const std::string launcher =
      ranks == 0 ? "OMP_NUM_THREADS=1 timeout 300 " + test::quote(test::loratune_bin())
                 : torchrun(ranks, torchrun_extra);
  return test::run(launcher + " train --plain " + test::quote(cfg) + " " + args);
}

// (step, loss) of the train records of DIR/metrics.jsonl, and the val losses.
struct Losses {
  std::vector<std::pair<int64_t, double>> train;
  std::vector<double> val;
};
Losses losses(const std::string& dir) {
  Losses out;
  std::string text = test::read_file(dir + "/metrics.jsonl");
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    auto j = nlohmann::json::parse(text.substr(pos, nl - pos));
    pos = nl + 1;
    if (j.at("split") == "train") out.train.emplace_back(j.at("step"), j.at("loss").get<double>());
    if (j.at("split") == "val") out.val.push_back(j.at("loss").get<double>());
  }
  return out;
}

// The largest relative difference of two runs' step losses (same steps required).
double max_loss_rel(const Losses& a, const Losses& b) {
  EXPECT_EQ(a.train.size(), b.train.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.train.size(), b.train.size()); ++i) {
    EXPECT_EQ(a.train[i].first, b.train[i].first);
    worst = std::max(worst,
                     std::abs(a.train[i].second - b.train[i].second) / std::abs(b.train[i].second));
  }
  return worst;
}

// The largest absolute difference between two adapters' tensors.
double max_adapter_diff(const std::string& a, const std::string& b) {
  auto fa = io::SafetensorsFile::open(a + "/adapter/adapter_model.safetensors");
  auto fb = io::SafetensorsFile::open(b + "/adapter/adapter_model.safetensors");
  EXPECT_EQ(fa->tensors().size(), fb->tensors().size());
  double worst = 0;
  for (const auto& info : fa->tensors()) {
    if (!fb->contains(info.name)) {
      ADD_FAILURE() << info.name << " missing in " << b;
      return INFINITY;
    }
    worst =
        std::max(worst, (fa->tensor(info.name) - fb->tensor(info.name)).abs().max().item<double>());
  }
  return worst;
}

void expect_ok(const test::RunResult& r, const std::string& what) {
  ASSERT_EQ(r.status, 0) << what << "\n" << r.out;
}

// Prints how far run directory `got` is from `want` and checks that every
// step loss agrees within 1e-6 relative and the adapters within 1e-6.
void expect_same_training(const std::string& got, const std::string& want,
                          const std::string& what) {
  const double loss_rel = max_loss_rel(losses(got), losses(want));
  const double adapter = max_adapter_diff(got, want);
  std::printf("[dp] %s: max step loss rel diff %.3g, adapter max abs diff %.3g\n", what.c_str(),
              loss_rel, adapter);
  EXPECT_LE(loss_rel, 1e-6);
  EXPECT_LE(adapter, 1e-6);
}

// Trains `variant` for 8 steps on one process with accumulation 4 and on 2
// ranks with accumulation 2 (plus `two_rank_args`), and checks that every
// step loss and the adapters agree within 1e-6. Returns the 2-rank run's
// directory and output.
std::pair<std::string, test::RunResult> one_vs_two_ranks(
    const std::string& root, const std::string& variant, const std::string& train_extra,
    const std::string& two_rank_args, const std::string& label, const std::string& both_args = "") {
  const std::string cfg = config(root, variant, train_extra);
  const std::string one = root + "/" + variant + "-1", two = root + "/" + variant + "-2";
  expect_ok(
      train(0, cfg, "train.gradient_accumulation_steps=4 output.dir=" + one + " " + both_args),
      "1 process");
  const test::RunResult r = train(2, cfg,
                                  "train.gradient_accumulation_steps=2 output.dir=" + two + " " +
                                      two_rank_args + " " + both_args);
  expect_ok(r, "2 ranks");
  const Losses a = losses(one), b = losses(two);
  EXPECT_EQ(a.train.size(), 8u);
  expect_same_training(two, one,
                       variant + ", " + label + " vs 1 process x accumulation 4, 8 steps");
  EXPECT_EQ(a.val.size(), b.val.size());
  for (size_t i = 0; i < std::min(a.val.size(), b.val.size()); ++i) {
    EXPECT_NEAR(b.val[i], a.val[i], 1e-6 * a.val[i]);
  }
  return {two, r};
}

TEST(DataParallel, TwoRanksEqualOneProcessWithTwiceTheAccumulation) {
  const std::string root = test::make_temp_dir("dp-equal");
  for (const std::string variant : {"llama-rope3-tied", "qwen2"}) {
    SCOPED_TRACE(variant);
    const auto [two, r] = one_vs_two_ranks(root, variant, "", "", "2 ranks x accumulation 2");
    EXPECT_NE(r.out.find("on 2 ranks"), std::string::npos) << r.out;
    // Rank 0 alone wrote: one set of outputs, no leftovers of a second writer.
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(two)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    EXPECT_EQ(names, (std::vector<std::string>{"adapter", "config.yaml", "metrics.jsonl"}));
  }
}

// LoRA dropout on: each micro-batch reseeds from (seed, step, its index in
// the step), so rank 1's micro-batches draw the masks a single process draws
// for them. The dropout must matter: the run differs from a dropout-free one.
TEST(DataParallel, DropoutMasksFollowTheMicroBatchNotTheRank) {
  const std::string root = test::make_temp_dir("dp-dropout");
  const auto [two, r] =
      one_vs_two_ranks(root, "qwen2", "", "", "lora.dropout 0.2, 2 ranks", "lora.dropout=0.2");
  const std::string cfg = config(root, "qwen2", "");
  const std::string plain = root + "/no-dropout";
  expect_ok(train(0, cfg, "train.gradient_accumulation_steps=4 output.dir=" + plain), "no dropout");
  const double moved = max_loss_rel(losses(two), losses(plain));
  std::printf("[dp] dropout 0.2 vs none: max step loss rel diff %.3g\n", moved);
  EXPECT_GT(moved, 1e-3);
}

// N of "... N gradient all-reduce(s) per step" in a run's output; -1 if absent.
int grad_all_reduces(const std::string& out) {
  const size_t at = out.find(" gradient all-reduce(s) per step");
  if (at == std::string::npos) return -1;
  const size_t from = out.rfind(' ', at - 1) + 1;
  return std::atoi(out.substr(from, at - from).c_str());
}

// "loratune: rank R ...; last step: S of N gradient all-reduces started
// during backward" -> {R: (S, N)}.
std::map<int, std::pair<int, int>> started_during_backward(const std::string& out) {
  std::map<int, std::pair<int, int>> m;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const size_t at = line.find("; last step: ");
    int rank = 0, started = 0, total = 0;
    if (line.rfind("loratune: rank ", 0) != 0 || at == std::string::npos) continue;
    if (std::sscanf(line.c_str(), "loratune: rank %d", &rank) == 1 &&
        std::sscanf(line.c_str() + at, "; last step: %d of %d gradient all-reduces", &started,
                    &total) == 2) {
      m[rank] = {started, total};
    }
  }
  return m;
}

// Tiny buckets (a few parameters each): all-reduces started from backward's
// hooks, in bucket order, while backward goes on, give bit for bit what one
// all-reduce after backward gives (with 2 ranks each element is a + b
// either way).
TEST(DataParallel, BucketsAllReducedDuringBackwardEqualOneAllReduceAfterIt) {
  const std::string root = test::make_temp_dir("dp-buckets");
  const std::string cfg = config(root, "qwen2", "  gradient_accumulation_steps: 2\n");
  const std::string whole = root + "/whole", buckets = root + "/buckets";
  const test::RunResult a = train(2, cfg, "train.grad_bucket_mb=0 output.dir=" + whole);
  expect_ok(a, "one all-reduce");
  const test::RunResult b = train(2, cfg, "train.grad_bucket_mb=0.002 output.dir=" + buckets);
  expect_ok(b, "buckets");
  EXPECT_EQ(grad_all_reduces(a.out), 1) << a.out;
  const int n = grad_all_reduces(b.out);
  std::printf("[dp] qwen2: %d buckets of ~2 KiB vs one all-reduce after backward\n", n);
  EXPECT_GT(n, 4) << b.out;
  // Each rank's last step: every bucket started from backward's hooks, none
  // left for after it; without buckets, none.
  EXPECT_EQ(started_during_backward(b.out),
            (std::map<int, std::pair<int, int>>{{0, {n, n}}, {1, {n, n}}}))
      << b.out;
  EXPECT_EQ(started_during_backward(a.out),
            (std::map<int, std::pair<int, int>>{{0, {0, 1}}, {1, {0, 1}}}))
      << a.out;
  EXPECT_EQ(max_loss_rel(losses(buckets), losses(whole)), 0.0);
  EXPECT_EQ(max_adapter_diff(buckets, whole), 0.0);
}

// With tiny gradient buckets, backward issues all-gathers (the recomputed
// layers' weights) and gradient all-reduces interleaved: they go on
// separate process groups, so their orders never have to agree.
TEST(ShardBase, TwoRanksWithShardedBaseWeightsEqualOneProcess) {
  const std::string root = test::make_temp_dir("dp-shard");
  for (const std::string variant : {"llama-rope3-tied", "qwen2"}) {
    SCOPED_TRACE(variant);
    const auto [two, r] = one_vs_two_ranks(root, variant, "  gradient_checkpointing: true\n",
                                           "train.shard_base=true train.grad_bucket_mb=0.002",
                                           "2 ranks with train.shard_base, 2 KiB buckets");
    EXPECT_NE(r.out.find("loratune: rank 1 kept"), std::string::npos) << r.out;
    EXPECT_GT(grad_all_reduces(r.out), 4) << r.out;
  }
}

// "loratune: rank R kept H of the decoder layers' F MiB base weights
// (train.shard_base); peak RSS P MiB" -> {R: (H, F, P)}; H = F = 0 without it.
std::map<int, std::array<double, 3>> memory_lines(const std::string& out) {
  std::map<int, std::array<double, 3>> m;
  size_t pos = 0;
  while ((pos = out.find("loratune: rank ", pos)) != std::string::npos) {
    const std::string line = out.substr(pos, out.find('\n', pos) - pos);
    pos += 1;
    int rank = 0;
    double held = 0, full = 0, peak = 0;
    if (std::sscanf(line.c_str(),
                    "loratune: rank %d kept %lf of the decoder layers' %lf MiB base weights "
                    "(train.shard_base); peak RSS %lf MiB",
                    &rank, &held, &full, &peak) == 4 ||
        std::sscanf(line.c_str(), "loratune: rank %d peak RSS %lf MiB", &rank, &peak) == 2) {
      m[rank] = {held, full, peak};
    }
  }
  return m;
}

TEST(ShardBase, EachRankHoldsHalfOfTheLayersWeights) {
  // A 24-layer model with 184 MB of float32 layer weights: 2 steps on 2
  // ranks with and without train.shard_base; each rank's peak RSS.
  const std::string root = test::make_temp_dir("dp-shard-mem");
  test::run_python("scripts/make_tiny_model.py", "--size shard-184m --out " + test::quote(root));
  const std::string ref = test::testdata_dir() + "/ref_train";
  const std::string cfg = root + "/mem.yaml";
  test::write_file(cfg, "model: {path: " + root +
                            "/shard-184m, dtype: float32}\ndevice: cpu\nseed: 3\n"
                            "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj]}\n"
                            "data: {train: " +
                            ref +
                            "/llama-rope3-tied/train.jsonl, format: tokenized, max_seq_len: 64, "
                            "packing: true}\n"
                            "train: {max_steps: 2, micro_batch_size: 2, gradient_checkpointing: "
                            "true, dist_timeout_s: 120}\n");
  const test::RunResult whole = train(2, cfg, "output.dir=" + root + "/whole");
  expect_ok(whole, "2 ranks, whole weights");
  const test::RunResult sharded =
      train(2, cfg, "train.shard_base=true output.dir=" + root + "/sharded");
  expect_ok(sharded, "2 ranks, sharded");
  const auto w = memory_lines(whole.out), s = memory_lines(sharded.out);
  ASSERT_EQ(w.size(), 2u) << whole.out;
  ASSERT_EQ(s.size(), 2u) << sharded.out;
  EXPECT_NEAR(losses(root + "/sharded").train.back().second,
              losses(root + "/whole").train.back().second, 1e-6);
  for (int rank = 0; rank < 2; ++rank) {
    const double full = s.at(rank)[1], held = s.at(rank)[0];
    const double saved = w.at(rank)[2] - s.at(rank)[2];
    std::printf(
        "[dp] shard-184m rank %d: holds %.1f of %.1f MiB layer weights (%.3f); peak RSS "
        "%.1f MiB sharded vs %.1f MiB whole: %.1f MiB less = %.2f of the layer "
        "weights\n",
        rank, held, full, held / full, s.at(rank)[2], w.at(rank)[2], saved, saved / full);
    EXPECT_NEAR(held / full, 0.5, 0.01);
    // Half the layers' weights, less the about two layers a rank gathers whole at a time.
    EXPECT_GE(saved / full, 0.3);
  }
}

// A free TCP port on the loopback interface.
int free_port();

TEST(DataParallel, TwoNodesThroughTheC10dRendezvousEqualOneNodeOfTwoRanks) {
  // Two torchrun agents (--nnodes 2, one rank each) meeting at a c10d
  // rendezvous endpoint, as two machines would: the ranks use the agents'
  // store (TORCHELASTIC_USE_AGENT_STORE).
  const std::string root = test::make_temp_dir("dp-nodes2");
  const std::string cfg = config(root, "qwen2", "  gradient_accumulation_steps: 2\n");
  expect_ok(train(2, cfg, "output.dir=" + root + "/one-node"), "--standalone");
  const std::string endpoint = "127.0.0.1:" + std::to_string(free_port());
  auto agent = [&](int node) {
    return "OMP_NUM_THREADS=1 timeout 300 " + test::quote(test::python()) +
           " -m torch.distributed.run --nnodes 2 --nproc-per-node 1 --node-rank " +
           std::to_string(node) + " --rdzv-backend c10d --rdzv-id t --rdzv-endpoint " + endpoint +
           " --no-python " + test::quote(test::loratune_bin()) + " train --plain " +
           test::quote(cfg) + " output.dir=" + root + "/two-nodes";
  };
  const test::RunResult r =
      test::run(agent(1) + " > " + root + "/node1.log 2>&1 & " + agent(0) + "; wait");
  expect_ok(r, "two agents");
  expect_same_training(root + "/two-nodes", root + "/one-node",
                       "2 nodes x 1 rank (c10d rendezvous) vs 1 node x 2 ranks");
}

TEST(DataParallel, ATorchrunRestartAfterAKilledRankEqualsAnUninterruptedRun) {
  const std::string root = test::make_temp_dir("dp-elastic");
  const std::string cfg =
      config(root, "llama-rope3-tied", "  gradient_accumulation_steps: 2\n  save_every: 2\n");
  const std::string plain = root + "/plain", crashed = root + "/crashed";
  expect_ok(train(2, cfg, "output.dir=" + plain), "uninterrupted");
  // Rank 1 SIGKILLs itself after step 3 (last checkpoint: step 2); torchrun
  // restarts both ranks, which resume from the checkpoint by themselves.
  const test::RunResult r =
      train(2, cfg, "output.dir=" + crashed + " --test-crash-at 1:3", "--max-restarts 1");
  expect_ok(r, "restarted");
  EXPECT_NE(r.out.find("resumed from"), std::string::npos) << r.out;
  expect_same_training(crashed, plain,
                       "rank 1 killed after step 3, torchrun --max-restarts 1, vs uninterrupted");
}

TEST(DataParallel, ASignalToOneRankStopsEveryRankAfterTheSameStep) {
  // SIGTERM reaches rank 1 only; the stop requests are summed with the
  // gradients, so rank 0 stops after the same step and writes the checkpoint.
  const std::string root = test::make_temp_dir("dp-signal");
  const std::string cfg = config(root, "llama-rope3-tied", "  gradient_accumulation_steps: 2\n");
  const std::string whole = root + "/whole", stopped = root + "/stopped";
  expect_ok(train(2, cfg, "train.max_steps=300 output.dir=" + whole), "uninterrupted");
  const std::string launch = torchrun(2) + " train --plain " + test::quote(cfg) +
                             " train.max_steps=300 output.dir=" + stopped;
  const test::RunResult r = test::run(
      launch + " > " + root +
      "/log 2>&1 & tr=$!; "
      "for i in $(seq 1 600); do grep -q '\"step\": *5,' " +
      stopped +
      "/metrics.jsonl 2>/dev/null && break; sleep 0.05; done; "
      "for p in $(pgrep -f 'output.dir=" +
      stopped +
      "'); do "
      "tr '\\0' '\\n' < /proc/$p/environ 2>/dev/null | grep -qx RANK=1 && kill -TERM $p; done; "
      "wait $tr; echo status $?");
  const std::string log = test::read_file(root + "/log");
  EXPECT_NE(r.out.find("status 1"), std::string::npos) << r.out << log;  // workers exit 143
  EXPECT_NE(log.find("stopped by signal 15"), std::string::npos) << log;
  const Losses part = losses(stopped);
  ASSERT_FALSE(part.train.empty());
  const int64_t at = part.train.back().first;
  EXPECT_LT(at, 300) << "the run finished before the signal";
  EXPECT_TRUE(fs::exists(stopped + "/checkpoints/step-" + std::to_string(at) + "/state.json"))
      << log;
  expect_ok(train(2, cfg, "train.max_steps=300 output.dir=" + stopped + " --resume"), "resumed");
  expect_same_training(stopped, whole,
                       "SIGTERM to rank 1 at step " + std::to_string(at) +
                           ", resumed, vs uninterrupted (300 steps)");
}

TEST(DataParallel, ACheckpointResumesOnAnotherNumberOfRanks) {
  const std::string root = test::make_temp_dir("dp-resume");
  // global_batch 8 = micro 2 x 2 ranks x 2 = micro 2 x 1 rank x 4.
  const std::string cfg =
      config(root, "qwen2", "  global_batch: 8\n  save_every: 2\n  keep_checkpoints: 0\n");
  const std::string whole = root + "/whole";
  expect_ok(train(2, cfg, "output.dir=" + whole), "uninterrupted 2 ranks");
  for (const auto& [first, then] : {std::pair{2, 0}, std::pair{0, 2}}) {
    const std::string dir = root + "/from" + std::to_string(first) + "to" + std::to_string(then);
    const test::RunResult stop = train(first, cfg, "output.dir=" + dir + " --stop-after-step 4");
    // 143 from loratune; torchrun reports its workers' 143 as a failure (1).
    ASSERT_EQ(stop.status, first == 0 ? 143 : 1) << stop.out;
    ASSERT_TRUE(fs::exists(dir + "/checkpoints/step-4/state.json")) << stop.out;
    // Another global batch is refused with the value to keep.
    const test::RunResult bad =
        train(then, cfg, "output.dir=" + dir + " train.global_batch=4 --resume");
    EXPECT_NE(bad.status, 0);
    EXPECT_NE(bad.out.find("train.global_batch=8"), std::string::npos) << bad.out;
    expect_ok(train(then, cfg, "output.dir=" + dir + " --resume"), "resumed");
    expect_same_training(dir, whole,
                         std::to_string(std::max(first, 1)) + " rank(s) for 4 steps, resumed on " +
                             std::to_string(std::max(then, 1)) + ", vs 8 steps on 2 ranks");
  }
}

// A free TCP port on the loopback interface.
int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  const int port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

// Two ranks started by hand (torchrun's variables set here), each with its
// own config, as two nodes with different files would be. Returns each rank's
// exit status and output.
std::pair<test::RunResult, test::RunResult> two_nodes(const std::string& root,
                                                      const std::string& cfg0,
                                                      const std::string& cfg1) {
  const std::string env = "OMP_NUM_THREADS=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
                          std::to_string(free_port()) + " ";
  const std::string bin = "timeout 120 " + test::quote(test::loratune_bin()) + " train --plain ";
  const std::string log = root + "/rank";
  const test::RunResult both =
      test::run("(" + env + "RANK=1 LOCAL_RANK=1 " + bin + test::quote(cfg1) + " > " + log +
                "1 2>&1; echo $? > " + log + "1.rc) & " + env + "RANK=0 LOCAL_RANK=0 " + bin +
                test::quote(cfg0) + " > " + log + "0 2>&1; echo $? > " + log + "0.rc; wait");
  std::pair<test::RunResult, test::RunResult> r;
  r.first.out = test::read_file(log + "0");
  r.first.status = std::stoi(test::read_file(log + "0.rc"));
  r.second.out = test::read_file(log + "1");
  r.second.status = std::stoi(test::read_file(log + "1.rc"));
  return r;
}

// A rank whose rendezvous store never answers: one line naming
// MASTER_ADDR:MASTER_PORT after train.dist_timeout_s (c10d's own retry
// messages, each with a C++ stack trace, are not printed).
TEST(DataParallel, AnUnreachableStoreIsOneLine) {
  const std::string root = test::make_temp_dir("dp-nostore");
  const std::string cfg = config(root, "llama-rope3-tied", "");
  const test::RunResult r = test::run(
      "env RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) +
      " " + test::quote(test::loratune_bin()) + " train --plain " + test::quote(cfg) +
      " train.dist_timeout_s=10 output.dir=" + root + "/out");
  EXPECT_EQ(r.status, 4) << r.out;
  EXPECT_NE(r.out.find("rank 1: cannot reach the rendezvous store at 127.0.0.1:"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << "one line:\n" << r.out;
  EXPECT_FALSE(fs::exists(root + "/out"));
}

TEST(DataParallel, OnlyRankZeroWritesAndABadRankIsOneClearErrorOnEveryRank) {
  const std::string root = test::make_temp_dir("dp-nodes");
  const std::string cfg = config(root, "llama-rope3-tied", "  gradient_accumulation_steps: 2\n");
  // Rank 1 is told another output.dir: it must never create it.
  const std::string out0 = root + "/out0", out1 = root + "/out1";
  test::write_file(root + "/good0.yaml", test::read_file(cfg) + "output: {dir: " + out0 + "}\n");
  test::write_file(root + "/good1.yaml", test::read_file(cfg) + "output: {dir: " + out1 + "}\n");
  auto [r0, r1] = two_nodes(root, root + "/good0.yaml", root + "/good1.yaml");
  ASSERT_EQ(r0.status, 0) << r0.out;
  ASSERT_EQ(r1.status, 0) << r1.out;
  EXPECT_TRUE(fs::exists(out0 + "/adapter/adapter_model.safetensors"));
  EXPECT_FALSE(fs::exists(out1)) << "a rank other than 0 wrote " << out1;
  // The other ranks print one line on success: their own memory.
  EXPECT_EQ(r1.out.rfind("loratune: rank 1 peak RSS ", 0), 0u) << r1.out;
  EXPECT_EQ(std::count(r1.out.begin(), r1.out.end(), '\n'), 1) << r1.out;

  // Bad data on "node" 1: its own error there, and the same cause named on
  // rank 0, which leaves no run directory behind.
  std::string bad = test::read_file(cfg);
  const std::string good_data = "/llama-rope3-tied/train.jsonl";
  bad.replace(bad.find(good_data), good_data.size(), "/no-such-dir/train.jsonl");
  const std::string out2 = root + "/out2";
  test::write_file(root + "/bad1.yaml", bad + "output: {dir: " + out1 + "}\n");
  test::write_file(root + "/ok0.yaml", test::read_file(cfg) + "output: {dir: " + out2 + "}\n");
  auto [b0, b1] = two_nodes(root, root + "/ok0.yaml", root + "/bad1.yaml");
  EXPECT_NE(b1.status, 0);
  EXPECT_NE(b1.out.find("no-such-dir/train.jsonl"), std::string::npos) << b1.out;
  EXPECT_NE(b0.status, 0);
  EXPECT_NE(b0.out.find("rank 1 failed during setup"), std::string::npos) << b0.out;
  EXPECT_NE(b0.out.find("no-such-dir/train.jsonl"), std::string::npos) << b0.out;
  EXPECT_EQ(std::count(b0.out.begin(), b0.out.end(), '\n'), 1) << "one line:\n" << b0.out;
  EXPECT_FALSE(fs::exists(out2)) << "rank 0 left " << out2 << " behind";
  EXPECT_FALSE(fs::exists(out1));
}

}  // namespace
