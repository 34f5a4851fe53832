// LibTorch (C++) peer of fastnn's examples/fashion_cnn and of bench/fashion_cnn_peer.py: the same CNN,
// data, initial weights, training and output.
//
//   fashion_cnn_libtorch --epochs 5 --threads 1 --init-weights init.safetensors --json out.json
//
// The model, in Keras's terms (channels-last input 28x28x1, pixels / 255):
//   Conv2D(32, 3, same) -> BatchNormalization(momentum 0.99, epsilon 1e-3) -> ReLU -> MaxPooling2D(2)
//   -> Conv2D(64, 3, same) -> BatchNormalization -> ReLU -> MaxPooling2D(2)
//   -> Flatten (h, w, c) -> Dense(128, relu) -> Dropout(0.3) -> Dense(10, softmax)
// In LibTorch: BatchNorm2d with momentum 0.01 and eps 1e-3, the flatten permutes NCHW to NHWC first;
// Adam with epsilon 1e-7; cross-entropy on the logits; the training set shuffled every epoch.
//
// Data: the IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
// t10k-labels-idx1-ubyte in --data, raw or .gz (read through zlib, which reads both).
// --init-weights reads a Keras-layout safetensors file, mapped as bench/fashion_cnn_peer.py maps it:
// tensors grouped by the name before the last '.', each group classified by what it holds (4-D kernel:
// Conv2D, gamma / beta / moving_*: BatchNormalization, 2-D kernel: Dense), the groups of a kind ordered
// by the name's numeric suffix, every shape checked.
//
// Output: machine, CONFIG and BLAS lines, `initial: val_loss X val_acc Y`, one EPOCH line per epoch and
// `final: ...`, as the PyTorch peer prints them; --json writes the same summary keys.

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>
#include <zlib.h>

#include <dlfcn.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

constexpr int64_t kClasses = 10;

struct Options {
  std::string data = "/usr/share/datasets/fashion-mnist";
  int epochs = 5;
  int batch_size = 128;
  double lr = 1e-3;
  int threads = 1;
  uint64_t seed = 42;
  int64_t limit = 0;
  std::string init_weights;
  std::string json;
};

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// ---- data -------------------------------------------------------------------------------------
bool file_exists(const std::string& path) { return std::ifstream(path).good(); }

// The IDX file `name` (or `name.gz`) in dir: its dimensions and bytes.
std::pair<std::vector<int64_t>, std::vector<uint8_t>> read_idx(const std::string& dir, const std::string& name) {
  std::string path = dir + "/" + name;
  if (!file_exists(path)) path += ".gz";
  if (!file_exists(path))
    throw Failure(dir + ": no " + name + " or " + name + ".gz (apt-get install dataset-fashion-mnist, or --data DIR)");
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Failure(path + ": cannot open");
  std::vector<uint8_t> blob;
  std::vector<uint8_t> chunk(1 << 20);
  int got = 0;
  while ((got = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()))) > 0)
    blob.insert(blob.end(), chunk.begin(), chunk.begin() + got);
  const bool failed = got < 0;
  gzclose(f);
  if (failed) throw Failure(path + ": read error");
  if (blob.size() < 4 || blob[0] != 0 || blob[1] != 0 || blob[2] != 0x08)
    throw Failure(path + ": not an IDX file of unsigned bytes");
  const size_t ndim = blob[3];
  if (blob.size() < 4 + 4 * ndim) throw Failure(path + ": truncated header");
  std::vector<int64_t> shape;
  size_t count = 1;
  for (size_t i = 0; i < ndim; ++i) {
    const uint8_t* p = &blob[4 + 4 * i];
    const int64_t d = (int64_t{p[0]} << 24) | (int64_t{p[1]} << 16) | (int64_t{p[2]} << 8) | int64_t{p[3]};
    shape.push_back(d);
    count *= static_cast<size_t>(d);
  }
  if (blob.size() != 4 + 4 * ndim + count)
    throw Failure(path + ": " + std::to_string(blob.size() - 4 - 4 * ndim) + " data bytes, the header declares " +
                  std::to_string(count));
  return {shape, std::vector<uint8_t>(blob.begin() + static_cast<std::ptrdiff_t>(4 + 4 * ndim), blob.end())};
}

struct Split {
  torch::Tensor x;  // [N, 1, 28, 28] float32 in [0, 1]
  torch::Tensor y;  // [N] int64
};

Split load_split(const std::string& dir, const std::string& images, const std::string& labels, int64_t limit) {
  auto [xs, xb] = read_idx(dir, images);
  auto [ys, yb] = read_idx(dir, labels);
  if (xs.size() != 3 || xs[1] != 28 || xs[2] != 28 || ys.size() != 1 || ys[0] != xs[0])
    throw Failure(dir + ": " + images + " / " + labels + ": expected [N, 28, 28] images and [N] labels");
  for (uint8_t v : yb)
    if (v >= kClasses) throw Failure(dir + ": " + labels + ": label " + std::to_string(v) + " is not in [0, 10)");
  int64_t n = xs[0];
  if (limit > 0) n = std::min(n, limit);
  auto x = torch::from_blob(xb.data(), {n, 1, 28, 28}, torch::kUInt8).to(torch::kFloat32).div_(255.0f);
  auto y = torch::from_blob(yb.data(), {n}, torch::kUInt8).to(torch::kInt64);
  return {x.contiguous(), y.contiguous()};
}

// ---- model ------------------------------------------------------------------------------------
struct FashionCnnImpl : torch::nn::Module {
  torch::nn::Conv2d conv1{torch::nn::Conv2dOptions(1, 32, 3).padding(1)};
  torch::nn::BatchNorm2d bn1{torch::nn::BatchNorm2dOptions(32).eps(1e-3).momentum(0.01)};
  torch::nn::Conv2d conv2{torch::nn::Conv2dOptions(32, 64, 3).padding(1)};
  torch::nn::BatchNorm2d bn2{torch::nn::BatchNorm2dOptions(64).eps(1e-3).momentum(0.01)};
  torch::nn::MaxPool2d pool{torch::nn::MaxPool2dOptions(2)};
  torch::nn::Linear fc1{7 * 7 * 64, 128};
  torch::nn::Dropout drop{torch::nn::DropoutOptions(0.3)};
  torch::nn::Linear fc2{128, kClasses};

  FashionCnnImpl() {
    register_module("conv1", conv1);
    register_module("bn1", bn1);
    register_module("conv2", conv2);
    register_module("bn2", bn2);
    register_module("pool", pool);
    register_module("fc1", fc1);
    register_module("drop", drop);
    register_module("fc2", fc2);
  }

  torch::Tensor forward(torch::Tensor x) {
    x = pool(torch::relu(bn1(conv1(x))));
    x = pool(torch::relu(bn2(conv2(x))));
    x = x.permute({0, 2, 3, 1}).flatten(1);  // Keras's Flatten of channels-last: (h, w, c)
    return fc2(drop(torch::relu(fc1(x))));
  }

  // Keras's defaults: glorot_uniform kernels (fans of the Keras kernel shape), zero biases.
  void keras_init() {
    torch::NoGradGuard no_grad;
    for (auto* conv : {&conv1, &conv2}) {
      const auto s = (*conv)->weight.sizes();  // [out, in, kh, kw]
      const double bound = std::sqrt(6.0 / static_cast<double>(s[2] * s[3] * (s[0] + s[1])));
      (*conv)->weight.uniform_(-bound, bound);
      (*conv)->bias.zero_();
    }
    for (auto* fc : {&fc1, &fc2}) {
      torch::nn::init::xavier_uniform_((*fc)->weight);
      (*fc)->bias.zero_();
    }
  }
};
TORCH_MODULE(FashionCnn);

// ---- safetensors ------------------------------------------------------------------------------
// {name: float32 tensor} of a safetensors file (8-byte little-endian header length, JSON header, data).
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Failure(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string blob = ss.str();
  if (blob.size() < 8) throw Failure(path + ": too short");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(blob[static_cast<size_t>(i)]);
  if (n > blob.size() - 8) throw Failure(path + ": header length beyond the file");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(blob.begin() + 8, blob.begin() + 8 + static_cast<std::ptrdiff_t>(n));
  } catch (const nlohmann::json::exception& e) {
    throw Failure(path + ": header: " + e.what());
  }
  const size_t base = 8 + n;
  std::map<std::string, torch::Tensor> out;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& e = it.value();
    const std::string dtype = e.at("dtype").get<std::string>();
    const auto shape = e.at("shape").get<std::vector<int64_t>>();
    const auto offsets = e.at("data_offsets").get<std::vector<size_t>>();
    torch::ScalarType st;
    size_t elem = 0;
    if (dtype == "F32") {
      st = torch::kFloat32;
      elem = 4;
    } else if (dtype == "F64") {
      st = torch::kFloat64;
      elem = 8;
    } else {
      throw Failure(path + ": '" + it.key() + "' is " + dtype + "; float32 or float64 expected");
    }
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    if (offsets.size() != 2 || offsets[1] < offsets[0] || offsets[1] - offsets[0] != count * elem ||
        base + offsets[1] > blob.size())
      throw Failure(path + ": '" + it.key() + "': data_offsets do not match its shape or the file");
    std::vector<char> bytes(blob.begin() + static_cast<std::ptrdiff_t>(base + offsets[0]),
                            blob.begin() + static_cast<std::ptrdiff_t>(base + offsets[1]));
    out[it.key()] = torch::from_blob(bytes.data(), shape, st).to(torch::kFloat32).clone();
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s.empty() ? "none" : s;
}

// Copies a Keras-layout file into the model: conv kernel [kh, kw, in, out] -> [out, in, kh, kw],
// dense kernel [in, out] -> [out, in], BatchNormalization's four vectors as they are.
void load_keras(FashionCnn& model, const std::string& path) {
  std::map<std::string, std::map<std::string, torch::Tensor>> groups;
  for (auto& [name, t] : read_safetensors(path)) {
    const auto dot = name.rfind('.');
    if (dot == std::string::npos) throw Failure("tensor '" + name + "' has no '<layer>.<weight>' name");
    groups[name.substr(0, dot)][name.substr(dot + 1)] = t;
  }
  const std::set<std::string> bn_leaves{"gamma", "beta", "moving_mean", "moving_variance"};
  const std::set<std::string> dense_leaves{"kernel", "bias"};
  std::map<std::string, std::vector<std::pair<long long, std::string>>> kinds{{"conv", {}}, {"bn", {}}, {"dense", {}}};
  const std::regex suffix("_([0-9]+)$");
  for (const auto& [prefix, g] : groups) {
    std::set<std::string> leaves;
    for (const auto& kv : g) leaves.insert(kv.first);
    std::string kind;
    const std::set<std::string>* need = &dense_leaves;
    if (g.count("kernel") && g.at("kernel").dim() == 4) {
      kind = "conv";
    } else if (g.count("kernel") && g.at("kernel").dim() == 2) {
      kind = "dense";
    } else if (std::any_of(leaves.begin(), leaves.end(), [&](const std::string& l) { return bn_leaves.count(l); })) {
      kind = "bn";
      need = &bn_leaves;
    } else {
      throw Failure("cannot tell which layer '" + prefix + "' (" + join({leaves.begin(), leaves.end()}) +
                    ") belongs to");
    }
    if (leaves != *need)
      throw Failure("'" + prefix + "' holds " + join({leaves.begin(), leaves.end()}) + "; a " + kind + " layer has " +
                    join({need->begin(), need->end()}));
    std::smatch m;
    const long long index = std::regex_search(prefix, m, suffix) ? std::stoll(m[1].str()) : 0;
    kinds[kind].emplace_back(index, prefix);
  }
  for (auto& [kind, found] : kinds) {
    std::sort(found.begin(), found.end());
    std::vector<std::string> names;
    for (const auto& f : found) names.push_back(f.second);
    if (found.size() != 2)
      throw Failure(std::to_string(found.size()) + " " + kind + " layers (" + join(names) + "), the model has 2");
    if (found[0].first == found[1].first)
      throw Failure(kind + " layers with the same numeric suffix: " + join(names));
  }
  auto get = [&](const std::string& prefix, const std::string& leaf, std::vector<int64_t> shape) {
    const torch::Tensor& t = groups.at(prefix).at(leaf);
    if (t.sizes() != torch::IntArrayRef(shape)) {
      std::ostringstream os;
      os << "'" << prefix << "." << leaf << "' is " << t.sizes() << ", expected " << torch::IntArrayRef(shape);
      throw Failure(os.str());
    }
    return t;
  };
  torch::NoGradGuard no_grad;
  torch::nn::Conv2d convs[] = {model->conv1, model->conv2};
  torch::nn::BatchNorm2d bns[] = {model->bn1, model->bn2};
  torch::nn::Linear fcs[] = {model->fc1, model->fc2};
  for (size_t i = 0; i < 2; ++i) {
    const std::string& pre = kinds["conv"][i].second;
    const auto s = convs[i]->weight.sizes().vec();  // [out, in, kh, kw]
    convs[i]->weight.copy_(get(pre, "kernel", {s[2], s[3], s[1], s[0]}).permute({3, 2, 0, 1}));
    convs[i]->bias.copy_(get(pre, "bias", {s[0]}));
  }
  for (size_t i = 0; i < 2; ++i) {
    const std::string& pre = kinds["bn"][i].second;
    const int64_t c = bns[i]->options.num_features();
    bns[i]->weight.copy_(get(pre, "gamma", {c}));
    bns[i]->bias.copy_(get(pre, "beta", {c}));
    bns[i]->running_mean.copy_(get(pre, "moving_mean", {c}));
    bns[i]->running_var.copy_(get(pre, "moving_variance", {c}));
  }
  for (size_t i = 0; i < 2; ++i) {
    const std::string& pre = kinds["dense"][i].second;
    const auto s = fcs[i]->weight.sizes().vec();  // [out, in]
    fcs[i]->weight.copy_(get(pre, "kernel", {s[1], s[0]}).t());
    fcs[i]->bias.copy_(get(pre, "bias", {s[0]}));
  }
}

// ---- machine and BLAS -------------------------------------------------------------------------
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      auto v = line.substr(line.find(':') + 1);
      return v.substr(v.find_first_not_of(' '));
    }
  return "unknown";
}

struct BlasInfo {
  std::vector<std::string> libraries;
  std::string core, config;
  std::map<std::string, std::string> env;
};

// The BLAS libraries mapped into this process and, for OpenBLAS, the kernel (core) and configuration it
// reports; the environment's OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE next to them.
BlasInfo blas_info() {
  BlasInfo info;
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> libs;
  std::string line;
  while (std::getline(maps, line)) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    std::string base = path.substr(path.rfind('/') + 1);
    std::transform(base.begin(), base.end(), base.begin(), [](unsigned char c) { return std::tolower(c); });
    if (base.find("blas") != std::string::npos) libs.insert(path);
  }
  info.libraries.assign(libs.begin(), libs.end());
  using Str = const char* (*)();
  if (auto core = reinterpret_cast<Str>(dlsym(RTLD_DEFAULT, "openblas_get_corename"))) info.core = core();
  if (auto config = reinterpret_cast<Str>(dlsym(RTLD_DEFAULT, "openblas_get_config"))) info.config = config();
  for (const char* k : {"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"})
    if (const char* v = std::getenv(k)) info.env[k] = v;
  return info;
}

// OpenBLAS's own thread pool is sized at load time; set it to the run's thread count where OpenBLAS is loaded.
void set_openblas_threads(int threads) {
  using SetThreads = void (*)(int);
  if (auto set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"))) set(threads);
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;  // Linux: kilobytes
}

// ---- training ---------------------------------------------------------------------------------
int run(const Options& o) {
  torch::set_num_threads(o.threads);
  try {
    torch::set_num_interop_threads(1);
  } catch (const c10::Error&) {
  }
  set_openblas_threads(o.threads);
  torch::manual_seed(o.seed);

  const Split train = load_split(o.data, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", o.limit);
  const Split val = load_split(o.data, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 0);

  FashionCnn model;
  std::string init = "keras-style random";
  if (!o.init_weights.empty()) {
    try {
      load_keras(model, o.init_weights);
    } catch (const Failure& e) {
      throw Failure("--init-weights " + o.init_weights + ": " + e.what());
    }
    init = o.init_weights;
  } else {
    model->keras_init();
  }
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(o.lr).betas({0.9, 0.999}).eps(1e-7));
  int64_t nparams = 0;
  for (const auto& p : model->parameters()) nparams += p.numel();
  const std::string cpu = cpu_model();
  const unsigned cores = std::thread::hardware_concurrency();
  const int64_t n = train.x.size(0), nval = val.x.size(0), bs = o.batch_size;
  std::printf("machine: %s, %u cores\n", cpu.c_str(), cores);
  std::printf("CONFIG libtorch=%s threads=%d mkldnn=%d params=%lld train=%lld val=%lld batch=%d lr=%g seed=%llu "
              "init=%s\n",
              TORCH_VERSION, torch::get_num_threads(), static_cast<int>(at::hasMKLDNN()),
              static_cast<long long>(nparams), static_cast<long long>(n), static_cast<long long>(nval), o.batch_size,
              o.lr, static_cast<unsigned long long>(o.seed), init.c_str());
  const BlasInfo blas = blas_info();
  std::string libs, env;
  for (const auto& l : blas.libraries) libs += (libs.empty() ? "" : ",") + l;
  for (const auto& [k, v] : blas.env) env += (env.empty() ? "" : " ") + k + "=" + v;
  std::printf("BLAS core=%s config=%s libraries=%s env=%s\n", blas.core.empty() ? "unknown" : blas.core.c_str(),
              blas.config.empty() ? "not OpenBLAS" : blas.config.c_str(), libs.empty() ? "none found" : libs.c_str(),
              env.empty() ? "no OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE" : env.c_str());
  std::fflush(stdout);

  auto evaluate = [&]() {
    model->eval();
    torch::NoGradGuard no_grad;
    double loss = 0;
    int64_t correct = 0;
    for (int64_t b = 0; b < nval; b += bs) {
      const int64_t e = std::min(nval, b + bs);
      auto yb = val.y.slice(0, b, e);
      auto logits = model->forward(val.x.slice(0, b, e));
      loss += torch::nn::functional::cross_entropy(logits, yb).item<double>() * static_cast<double>(e - b);
      correct += logits.argmax(1).eq(yb).sum().item<int64_t>();
    }
    return std::make_pair(loss / static_cast<double>(nval), static_cast<double>(correct) / static_cast<double>(nval));
  };

  using clock = std::chrono::steady_clock;
  const auto seconds = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  const auto [init_vl, init_va] = evaluate();
  std::printf("initial: val_loss %.6f val_acc %.6f\n", init_vl, init_va);
  std::fflush(stdout);
  nlohmann::json history = nlohmann::json::array();
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    const auto t0 = clock::now();
    model->train();
    const auto perm = torch::randperm(n, torch::kInt64);
    double loss_sum = 0;
    int64_t correct = 0;
    for (int64_t b = 0; b < n; b += bs) {
      const auto idx = perm.slice(0, b, std::min(n, b + bs));
      const auto yb = train.y.index_select(0, idx);
      opt.zero_grad();
      const auto logits = model->forward(train.x.index_select(0, idx));
      auto loss = torch::nn::functional::cross_entropy(logits, yb);
      loss.backward();
      opt.step();
      loss_sum += loss.item<double>() * static_cast<double>(idx.size(0));
      correct += logits.detach().argmax(1).eq(yb).sum().item<int64_t>();
    }
    const auto t1 = clock::now();
    const auto [vl, va] = evaluate();
    const auto t2 = clock::now();
    const double tl = loss_sum / static_cast<double>(n), ta = static_cast<double>(correct) / static_cast<double>(n);
    history.push_back({{"epoch", epoch}, {"train_seconds", seconds(t0, t1)}, {"eval_seconds", seconds(t1, t2)},
                       {"loss", tl}, {"accuracy", ta}, {"val_loss", vl}, {"val_accuracy", va}});
    std::printf("EPOCH %d train_s=%.3f eval_s=%.3f loss=%.6f acc=%.6f val_loss=%.6f val_acc=%.6f\n", epoch,
                seconds(t0, t1), seconds(t1, t2), tl, ta, vl, va);
    std::fflush(stdout);
  }
  if (!history.empty()) {
    const auto& l = history.back();
    std::printf("final: loss %.4f acc %.4f val_loss %.4f val_acc %.4f\n", l["loss"].get<double>(),
                l["accuracy"].get<double>(), l["val_loss"].get<double>(), l["val_accuracy"].get<double>());
  }
  if (!o.json.empty()) {
    nlohmann::json s;
    s["impl"] = "libtorch";
    s["machine"] = {{"cpu", cpu}, {"cores", cores}};
    s["config"] = {{"epochs", o.epochs}, {"batch_size", o.batch_size}, {"lr", o.lr}, {"threads", o.threads},
                   {"seed", o.seed}, {"limit", o.limit}, {"data", o.data}, {"init_weights", o.init_weights},
                   {"init", init}, {"torch", TORCH_VERSION}};
    s["blas"] = {{"libraries", blas.libraries},
                 {"core", blas.core.empty() ? nlohmann::json() : nlohmann::json(blas.core)},
                 {"config", blas.config.empty() ? nlohmann::json() : nlohmann::json(blas.config)},
                 {"env", blas.env}};
    s["train_samples"] = n;
    s["val_samples"] = nval;
    s["params"] = nparams;
    s["initial_val_loss"] = init_vl;
    s["initial_val_accuracy"] = init_va;
    s["epochs"] = history;
    s["final_val_accuracy"] = history.empty() ? nlohmann::json() : history.back()["val_accuracy"];
    s["peak_rss_mb"] = peak_rss_mb();
    std::ofstream f(o.json);
    if (!(f << s.dump(2) << "\n")) throw Failure("--json " + o.json + ": cannot write");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"LibTorch peer of fastnn's examples/fashion_cnn: a small CNN on Fashion-MNIST"};
  app.add_option("--data", o.data, "directory of the four IDX files, raw or .gz")->capture_default_str();
  app.add_option("--epochs", o.epochs, "number of epochs (0: only the initial evaluation)")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "images per batch")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--threads", o.threads, "torch::set_num_threads (OpenMP, OpenBLAS)")
      ->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "shuffling, dropout (and the weights without --init-weights)")
      ->capture_default_str();
  app.add_option("--limit", o.limit, "train on the first N training images only (0: all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40))->capture_default_str();
  app.add_option("--init-weights", o.init_weights, "Keras-layout safetensors file to start from");
  app.add_option("--json", o.json, "write a JSON summary");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return run(o);
  } catch (const Failure& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "fashion_cnn_libtorch: error: %s\n", e.what());
    return 1;
  } catch (const c10::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "fashion_cnn_libtorch: error: %s\n", e.what_without_backtrace());
    return 1;
  }
}
