// mnist_bilstm: a bidirectional LSTM over the 28 rows of each MNIST image, the model and
// training setup of the Keras/TensorFlow reference run (see README.md, "Results").
//
//   mnist_bilstm --data data --epochs 30
//
// Defaults are the reference setup: Bidirectional(LSTM(128)) -> Dense(10, softmax), SGD
// lr 0.5, momentum 0.9, Nesterov, batch 128, 30 epochs, sigmoid recurrent activation (the
// reference's cuDNN run; `--recurrent-activation hard_sigmoid` is the Keras CPU run).
//
// Data-parallel over MPI (when built with fastnn::mpi): the same flags, the same output (from
// rank 0), --batch-size is the global batch split across the ranks:
//
//   mpirun -np 2 mnist_bilstm --distributed --data data --epochs 30

#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>
#if defined(FASTNN_WITH_MPI)
#include <fastnn/distributed/mpi.hpp>
#endif
#if defined(FASTNN_WITH_NCCL)
#include <fastnn/distributed/cuda/nccl.hpp>
#endif

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>

namespace {

struct Options {
  std::string data = "data";
  int epochs = 30;
  int early_stopping = 0;  // patience on val_loss (0 = off, the reference)
  fastnn::Index batch_size = 128;
  std::optional<double> lr;
  double momentum = 0.9;
  std::string optimizer = "sgd";
  double clipnorm = 0, global_clipnorm = 0, weight_decay = 0;  // 0 = off (the reference)
  std::string lr_schedule = "constant";                      // constant, cosine or exponential
  long warmup_steps = 0;
  fastnn::Index train_limit = 0;
  int threads = 0;
  std::uint64_t seed = 42;
  std::string device = "cpu";
  int verbose = 1;
  std::string history_csv;
  std::string recurrent_activation = "sigmoid";
  bool check_finite = true;
  bool tf32 = false;  // GPU only: TF32 tensor-core math in cuBLAS and cuDNN
  double dropout = 0;  // a Dropout layer between the LSTM and the classifier when > 0
  std::string precision = "f32";  // f32, or bf16 (mixed precision, CPU with AVX512-BF16)
  std::string save, resume, export_weights;  // checkpoints and weights files
  std::string export_onnx;                    // the trained model as ONNX
  bool distributed = false;  // data-parallel over MPI (mpirun -np N)
  std::string comm = "mpi";  // mpi (host memory; a GPU model is staged through the host) or nccl
};

/// The communicator of a --distributed run (null otherwise).
fastnn::Communicator* communicator(const Options& o) {
  if (!o.distributed) return nullptr;
#if defined(FASTNN_WITH_MPI)
  if (o.comm == "nccl") {
#if defined(FASTNN_WITH_NCCL)
    if (o.device != "cuda") throw fastnn::ArgumentError("--comm nccl: needs --device cuda");
    static fastnn::NcclCommunicator nccl(fastnn::mpi_world());  // picks this rank's GPU
    return &nccl;
#else
    throw fastnn::UnsupportedError("--comm nccl: this build has no NCCL (configure with -DFASTNN_CUDA=ON and NCCL)");
#endif
  }
  return &fastnn::mpi_world();
#else
  throw fastnn::UnsupportedError("--distributed: this build has no MPI (install libopenmpi-dev and reconfigure)");
#endif
}
/// Writes `model` as ONNX (io::export_onnx, for a CPU model); a GPU model's weights go through a
/// CPU copy of the model (io::load_model of its weights file, written next to `path` and removed).
template <class D>
void write_onnx(const fastnn::Sequential<float, D>& model, const std::string& path) {
  if constexpr (std::is_same_v<D, fastnn::Cpu>) {
    fastnn::io::export_onnx(model, path);
  } else {
    const std::string tmp = path + ".weights.tmp";
    fastnn::io::save_weights(model, tmp);
    const fastnn::Sequential<float> cpu = fastnn::io::load_model<float>(tmp);
    std::remove(tmp.c_str());
    fastnn::io::export_onnx(cpu, path);
  }
  std::printf("exported ONNX model to %s\n", path.c_str());
}

bool is_writer(const Options& o) { return !o.distributed || communicator(o)->rank() == 0; }

/// The optimizer of the flags, with its clipping, weight decay and schedule; `steps` is the number of training
/// steps of the whole run (the length of the cosine schedule).
template <class D>
std::unique_ptr<fastnn::Optimizer<float, D>> make_optimizer(const Options& o, long steps) {
  using namespace fastnn;
  const double lr = o.lr.value_or(o.optimizer == "sgd" ? 0.5 : 0.001);
  auto common = [&](auto opts) {
    return opts.learning_rate(lr).clipnorm(o.clipnorm).global_clipnorm(o.global_clipnorm).weight_decay(
        o.weight_decay);
  };
  std::unique_ptr<Optimizer<float, D>> opt;
  if (o.optimizer == "sgd")
    opt = std::make_unique<SGD<float, D>>(common(SGDOptions()).momentum(o.momentum).nesterov(true));
  else if (o.optimizer == "adam") opt = std::make_unique<Adam<float, D>>(common(AdamOptions()));
  else if (o.optimizer == "adamw") opt = std::make_unique<AdamW<float, D>>(common(AdamWOptions()));
  else opt = std::make_unique<RMSprop<float, D>>(common(RMSpropOptions()));
  const double warm = static_cast<double>(o.warmup_steps);
  if (o.lr_schedule == "cosine") {  // warmup from 0 to lr, then a cosine decay to 0 at the last step
    const double decay = std::max(1.0, static_cast<double>(steps) - warm);
    opt->set_learning_rate(o.warmup_steps > 0 ? CosineDecay(0.0, decay, 0.0, lr, warm) : CosineDecay(lr, decay));
  } else if (o.lr_schedule == "exponential") {  // x0.9 per epoch
    opt->set_learning_rate(ExponentialDecay(lr, std::max(1.0, static_cast<double>(steps) / o.epochs), 0.9));
  } else if (o.warmup_steps > 0) {  // constant after a linear warmup: a cosine held at alpha = 1
    opt->set_learning_rate(CosineDecay(0.0, 1.0, 1.0, lr, warm));
  }
  return opt;
}

template <class D>
int run(const Options& o, const fastnn::Dataset<float, fastnn::Cpu>& train_host,
        const fastnn::Dataset<float, fastnn::Cpu>& test_host) {
  using namespace fastnn;
  Sequential<float, D> model;
  model.template add<Bidirectional>(
      LSTMOptions(128).recurrent_activation(activation_from_string(o.recurrent_activation)));
  if (o.dropout > 0) model.template add<Dropout>(DropoutOptions(o.dropout));
  model.template add<Dense>(DenseOptions(10).activation(Activation::Softmax));
  model.set_threads(o.threads);
  model.set_precision(parse_precision(o.precision));
  model.build({28, 28}, o.seed);
  const long steps_per_epoch = static_cast<long>((train_host.size() + o.batch_size - 1) / o.batch_size);
  model.compile(make_optimizer<D>(o, steps_per_epoch * std::max(1, o.epochs)), SparseCategoricalCrossentropy(),
                {"accuracy"});
  fastnn::Communicator* comm = communicator(o);
  const bool writer = is_writer(o);
  if (writer) model.summary(std::cout);
  if (comm && writer)
    std::printf("Data-parallel on %d ranks (%s): global batch %lld, %lld per rank\n", comm->size(), comm->backend().c_str(),
                static_cast<long long>(o.batch_size), static_cast<long long>(o.batch_size / comm->size()));
  if (!o.resume.empty()) {  // weights, optimizer state, epochs done, shuffle RNG
    const io::CheckpointInfo ck = io::load_checkpoint(model, o.resume);
    if (writer) std::printf("Resumed from %s: %d epoch%s done, %lld optimizer steps\n", o.resume.c_str(), ck.epochs_done,
                ck.epochs_done == 1 ? "" : "s", static_cast<long long>(ck.iterations));
  }

  Dataset<float, D> train, test;
  if constexpr (std::is_same<D, Cpu>::value) {
    train = train_host;  // shares storage: no second copy of the images on the host
    test = test_host;
  } else {
    train = train_host.template to<D>();  // resident on the device for the whole run
    test = test_host.template to<D>();
  }
  if (writer)
    std::printf("Train on %lld samples, validate on %lld samples (device %s, %d thread%s, seed %llu)\n",
              static_cast<long long>(train.size()), static_cast<long long>(test.size()), D::name(), o.threads,
              o.threads == 1 ? "" : "s", static_cast<unsigned long long>(o.seed));
  std::fflush(stdout);

  FitOptions fit;
  fit.epochs(o.epochs).batch_size(o.batch_size).verbose(o.verbose).check_finite(o.check_finite);
  if (comm) fit.distributed(*comm);  // rank 0 logs and runs the callbacks (CSV, checkpoints)
  fit.initial_epoch(model.epochs_done());  // > 0 after --resume: --epochs is the total
  std::unique_ptr<CsvLogger> csv;
  if (!o.history_csv.empty()) {
    csv = std::make_unique<CsvLogger>(o.history_csv, /*append=*/!o.resume.empty());
    fit.callback(csv.get());
  }
  std::unique_ptr<EarlyStopping> stop;
  if (o.early_stopping > 0) {
    stop = std::make_unique<EarlyStopping>(
        EarlyStoppingOptions().monitor("val_loss").patience(o.early_stopping).restore_best_weights(true));
    fit.callback(stop.get());
  }
  std::unique_ptr<io::CheckpointSaver<float, D>> saver;
  if (!o.save.empty()) {
    saver = std::make_unique<io::CheckpointSaver<float, D>>(model, o.save);
    fit.callback(saver.get());
  }
  if (!o.resume.empty() && o.epochs <= model.epochs_done()) {  // e.g. --epochs 0: only validate
    const EvalResult r = model.evaluate(test, o.batch_size);
    if (writer) std::printf("validate %s (epoch %d): val_loss %.6f val_acc %.4f\n", o.resume.c_str(), model.epochs_done(), r.loss,
                r.accuracy);
    if (!o.export_weights.empty() && writer) io::save_weights(model, o.export_weights);
    if (!o.export_onnx.empty() && writer) write_onnx(model, o.export_onnx);
    return 0;
  }
  History h = model.fit(train, fit, &test);
  if (!o.export_weights.empty() && writer) io::save_weights(model, o.export_weights);
  if (!o.export_onnx.empty() && writer) write_onnx(model, o.export_onnx);
  if (!h.epochs.empty() && writer) {
    const auto& l = h.last();
    std::printf("final: loss %.4f acc %.4f val_loss %.4f val_acc %.4f\n", l.loss, l.accuracy, l.val_loss,
                l.val_accuracy);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Train a bidirectional LSTM on MNIST rows (the Keras reference model) with fastnn"};
  app.add_option("--data", o.data, "directory with the four MNIST IDX files (raw or .gz); scripts/fetch-mnist.sh DIR fetches them")
      ->capture_default_str();
  app.add_option("--epochs", o.epochs, "number of epochs")->check(CLI::Range(0, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "samples per batch")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--lr", o.lr, "learning rate (default 0.5 for sgd, 0.001 for adam and rmsprop)")
      ->check(CLI::PositiveNumber);
  app.add_option("--momentum", o.momentum, "SGD momentum (Nesterov)")->check(CLI::Range(0.0, 0.999999))->capture_default_str();
  app.add_option("--optimizer", o.optimizer, "sgd, adam, adamw or rmsprop")
      ->check(CLI::IsMember({"sgd", "adam", "adamw", "rmsprop"}))->capture_default_str();
  auto* clip = app.add_option("--clipnorm", o.clipnorm, "clip each weight tensor's gradient to this L2 norm (0 = off)")
                   ->check(CLI::NonNegativeNumber);
  app.add_option("--global-clipnorm", o.global_clipnorm, "clip the gradients' global L2 norm to this (0 = off)")
      ->check(CLI::NonNegativeNumber)->excludes(clip);
  app.add_option("--weight-decay", o.weight_decay,
                 "weight decay: decoupled for adamw, L2 added to the gradient for sgd, adam and rmsprop (0 = off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--lr-schedule", o.lr_schedule,
                 "constant, cosine (to 0 at the last step, after the warmup) or exponential (x0.9 per epoch)")
      ->check(CLI::IsMember({"constant", "cosine", "exponential"}))->capture_default_str();
  app.add_option("--warmup-steps", o.warmup_steps, "raise the rate linearly from 0 over N steps (constant or cosine)")
      ->check(CLI::Range(0L, 1L << 40))->capture_default_str();
  app.add_option("--train-limit", o.train_limit, "use only the first N training samples (0 = all)")
      ->check(CLI::Range(static_cast<fastnn::Index>(0), static_cast<fastnn::Index>(1) << 40))->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads (0 = min(2, cores)); the two LSTM directions run in parallel")
      ->check(CLI::Range(0, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (weights and shuffling)")->capture_default_str();
  app.add_option("--device", o.device, "cpu, cuda, or auto (the GPU when one is present)")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}))->capture_default_str();
  app.add_option("--verbose", o.verbose, "0 silent, 1 progress bar, 2 one line per epoch")
      ->check(CLI::Range(0, 2))->capture_default_str();
  app.add_option("--history-csv", o.history_csv, "write epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,eval_seconds");
  app.add_option("--recurrent-activation", o.recurrent_activation,
                 "sigmoid (reference cuDNN run) or hard_sigmoid (Keras CPU run)")
      ->check(CLI::IsMember({"sigmoid", "hard_sigmoid"}))->capture_default_str();
  app.add_option("--dropout", o.dropout, "rate of a Dropout layer before the classifier (0 = none, the reference)")
      ->check(CLI::Range(0.0, 0.95))
      ->capture_default_str();
  app.add_option("--precision", o.precision,
                 "f32, or bf16: Keras's mixed_bfloat16 (bfloat16 matrix products, float weights, state, loss and "
                 "optimizer); CPU only, needs AVX512-BF16 (the CPU kernel path is printed below the summary; "
                 "FASTNN_ISA=baseline|avx2|avx512|avx512_bf16|amx_bf16 forces one)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  app.add_flag("--tf32", o.tf32,
               "GPU only: allow TF32 tensor-core math in cuBLAS and cuDNN (faster, ~1e-3 relative error; "
               "PyTorch's and TensorFlow's cuDNN default); off by default so the GPU matches the CPU to ~1e-6");
  app.add_flag("!--no-check-finite", o.check_finite, "do not stop on a NaN/Inf loss or gradient");
  app.add_option("--early-stopping", o.early_stopping,
                 "stop when val_loss has not improved for N epochs and keep the best epoch's weights (0 = off)")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  app.add_option("--save", o.save, "write a checkpoint to PATH at the end of every epoch (atomically)");
  app.add_option("--resume", o.resume,
                 "continue the run checkpointed in PATH (same flags); --epochs is the total, 0 only validates");
  app.add_option("--export-weights", o.export_weights, "write the weights to PATH (safetensors) at the end");
  app.add_option("--export-onnx", o.export_onnx,
                 "write the model to PATH as ONNX (opset 17, for ONNX Runtime) at the end; with --dropout, Dropout is the identity");
  app.add_flag("--distributed", o.distributed,
               "data-parallel training over MPI: start with mpirun -np N; --batch-size is the global batch, rank 0 "
               "prints and writes files, --threads defaults to cores / ranks on the node");
  app.add_option("--comm", o.comm, "with --distributed: mpi, or nccl (GPU buffers; --device cuda)")
      ->check(CLI::IsMember({"mpi", "nccl"}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << app.help() << "\n";
    app.exit(e);
    return e.get_exit_code() == 0 ? 2 : e.get_exit_code();
  }
  if (o.warmup_steps > 0 && o.lr_schedule == "exponential") {
    std::cerr << "--warmup-steps: needs --lr-schedule constant or cosine, got exponential\n";
    return 2;
  }
  int ranks_here = 1;  // processes of this job on this machine (share its cores)
  if (o.distributed)
    for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
      if (const char* e = std::getenv(v)) ranks_here = std::max(1, std::atoi(e));
  if (o.threads == 0)
    o.threads = std::max(1, std::min(2, static_cast<int>(std::thread::hardware_concurrency()) / ranks_here));

  try {
    fastnn::cpu_isa();  // a bad FASTNN_ISA fails here, before any work
    std::string device = o.device;
    if (device == "cuda" || device == "auto") {
#if defined(FASTNN_WITH_CUDA)
      if (device == "cuda") {
        fastnn::cuda::require_device();
      } else if (fastnn::cuda::device_available()) {
        device = "cuda";
        std::printf("--device auto: using the GPU: %s\n", fastnn::cuda::device_description().c_str());
      } else {
        device = "cpu";
        std::printf("--device auto: no CUDA device is available, using the CPU\n");
      }
#else
      if (device == "cuda")
        throw fastnn::UnsupportedError(
            "--device cuda: this build has no CUDA backend (configure with -DFASTNN_CUDA=ON)");
      device = "cpu";
      std::printf("--device auto: this build has no CUDA backend, using the CPU\n");
#endif
    }
    communicator(o);  // joins the job (MPI, and NCCL on this rank's GPU) before any other work
    fastnn::data::Mnist mnist = fastnn::data::load_mnist(o.data);
    auto train = fastnn::make_dataset(mnist.train.images, mnist.train.labels, {28, 28}, 10);
    auto test = fastnn::make_dataset(mnist.test.images, mnist.test.labels, {28, 28}, 10);
    mnist = {};  // the datasets hold their own copy; keep peak memory down
    if (o.train_limit > 0 && o.train_limit < train.size()) train = train.head(o.train_limit);
#if defined(FASTNN_WITH_CUDA)
    if (device == "cuda") {
      fastnn::cuda::set_allow_tf32(o.tf32);
      if (o.tf32) std::printf("--tf32: TF32 tensor-core math allowed in cuBLAS and cuDNN\n");
      return run<fastnn::Cuda>(o, train, test);
    }
#endif
    if (o.tf32) std::printf("--tf32: no effect on the CPU\n");
    return run<fastnn::Cpu>(o, train, test);
  } catch (const fastnn::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "mnist_bilstm: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "mnist_bilstm: error: out of memory\n");
    return 1;
  }
}
