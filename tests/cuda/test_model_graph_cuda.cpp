// CPU-vs-GPU parity of graph models (fastnn/graph.hpp): every merge layer's output and input gradients on identical
// inputs, and a residual recurrent graph with a layer shared by two calls trained two epochs on both devices from
// the same weights (relative tolerance 1e-4 in float, TF32 off). Skipped without a CUDA device.

#include "cuda_test_util.hpp"

#include "fastnn/graph.hpp"

namespace {

using namespace fastnn;
using namespace fastnn_test;

/// x [6, 5] -> LSTM(return_sequences) -> Add(x, .) -> a shared Dense(tanh) on that sum and on x -> every
/// elementwise merge of the two calls, concatenated -> GRU -> Dense(3, softmax).
template <class D>
std::unique_ptr<Model<float, D>> residual_shared_graph(std::uint64_t seed) {
  auto x = Input<float, D>({6, 5}, "x");
  auto h = apply<LSTM>(x, LSTMOptions(5).return_sequences(true));
  auto shared = std::make_shared<Dense<float, D>>(DenseOptions(4).activation(Activation::Tanh));
  auto a = call(shared, apply<Add>({x, h}));
  auto b = call(shared, x);
  auto merged = apply<Concatenate>({apply<Maximum>({a, b}), apply<Minimum>({a, b}), apply<Multiply>({a, b}),
                                    apply<Subtract>({a, b}), apply<Average>({a, b})});
  auto y = apply<Dense>(apply<GRU>(merged, GRUOptions(6)), DenseOptions(3).activation(Activation::Softmax));
  return std::make_unique<Model<float, D>>(x, y, seed);
}

/// Runs a merge layer made by `make(device)` on both devices: output and every input's gradient.
template <class Make>
void expect_merge_matches(Make make, const std::vector<Shape>& shapes, std::uint64_t seed) {
  auto c = make(Cpu{});
  auto g = make(Cuda{});
  c->build_inputs(shapes);
  g->build_inputs(shapes);
  Rng rng(seed);
  std::vector<Tensor<float, Cpu>> xc;
  std::vector<Tensor<float, Cuda>> xg;
  for (const auto& s : shapes) {
    xc.push_back(random_tensor<float>(s.prepend(4), rng));
    xg.push_back(to_device<Cuda>(xc.back()));
  }
  std::vector<const Tensor<float, Cpu>*> pc;
  std::vector<const Tensor<float, Cuda>*> pg;
  for (std::size_t i = 0; i < xc.size(); ++i) {
    pc.push_back(&xc[i]);
    pg.push_back(&xg[i]);
  }
  Tensor<float, Cpu> yc;
  Tensor<float, Cuda> yg;
  c->forward_inputs(pc, yc, Mode::Train);
  g->forward_inputs(pg, yg, Mode::Train);
  EXPECT_TRUE(close(yc, yg, kRtolFloat)) << c->type_name() << " output";
  const auto dyc = random_tensor<float>(yc.shape(), rng);
  const auto dyg = to_device<Cuda>(dyc);
  std::vector<Tensor<float, Cpu>> dc(shapes.size());
  std::vector<Tensor<float, Cuda>> dg(shapes.size());
  std::vector<Tensor<float, Cpu>*> qc;
  std::vector<Tensor<float, Cuda>*> qg;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    qc.push_back(&dc[i]);
    qg.push_back(&dg[i]);
  }
  c->backward_inputs(pc, yc, dyc, qc);
  g->backward_inputs(pg, yg, dyg, qg);
  for (std::size_t i = 0; i < shapes.size(); ++i)
    EXPECT_TRUE(close(dc[i], dg[i], kRtolFloat)) << c->type_name() << " gradient of input " << i;
}

}  // namespace

TEST(CudaGraphModel, MergeLayersMatchCpu) {
  FASTNN_REQUIRE_CUDA();
  for (MergeOp op : {MergeOp::Add, MergeOp::Subtract, MergeOp::Multiply, MergeOp::Average, MergeOp::Maximum,
                     MergeOp::Minimum}) {
    const std::size_t n = op == MergeOp::Subtract ? 2 : 3;
    expect_merge_matches(
        [op](auto device) {
          return std::make_unique<ElementwiseMerge<float, decltype(device)>>(op);
        },
        std::vector<Shape>(n, Shape{5, 3}), 11);
  }
  expect_merge_matches([](auto device) { return std::make_unique<Concatenate<float, decltype(device)>>(); },
                       {Shape{5, 3}, Shape{5, 2}}, 12);
  expect_merge_matches(
      [](auto device) { return std::make_unique<Concatenate<float, decltype(device)>>(ConcatenateOptions(1)); },
      {Shape{2, 3}, Shape{4, 3}}, 13);
}

TEST(CudaGraphModel, ResidualGraphWithASharedLayerTrainsLikeCpu) {
  FASTNN_REQUIRE_CUDA();
  auto cpu = residual_shared_graph<Cpu>(3);
  auto gpu = residual_shared_graph<Cuda>(3);
  copy_into(to_device<Cuda>(cpu->flat_parameters()), gpu->flat_parameters());
  cpu->compile(std::make_unique<Adam<float, Cpu>>(0.01));
  gpu->compile(std::make_unique<Adam<float, Cuda>>(0.01));
  const auto data = toy_classes(80, 5);
  const auto data_g = data.to<Cuda>();
  const auto opts = FitOptions().epochs(2).batch_size(16).verbose(0);
  const History hc = cpu->fit(data, opts, &data);
  const History hg = gpu->fit(data_g, opts, &data_g);
  expect_same_history(hc, hg, kRtolFloat);
  EXPECT_TRUE(close(cpu->flat_parameters(), gpu->flat_parameters(), kRtolFloat));
  const auto pc = cpu->predict(data.x);
  EXPECT_TRUE(close(pc, gpu->predict(data_g.x), kRtolFloat));
}
