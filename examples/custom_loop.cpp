#include <fastnn/fastnn.hpp>
#include <fastnn/optim/clip.hpp>

#include <cmath>
#include <iostream>

int main() {
  using namespace fastnn;
  try {
    // A toy task: the class is the step at which the sequence peaks.
    const Index n = 512, steps = 8;
    Rng rng(7);
    Tensor<float, Cpu> x(Shape{n, steps, 1});
    Tensor<std::int32_t, Cpu> y(Shape{n});
    for (Index i = 0; i < n; ++i) {
      y[i] = static_cast<std::int32_t>(rng.below(steps));
      for (Index t = 0; t < steps; ++t) x[i * steps + t] = static_cast<float>(rng.uniform(0, 0.5) + (t == y[i]));
    }

    Sequential<float> model;
    model.add<LSTM>(LSTMOptions(32));
    model.add<Dense>(DenseOptions(steps).activation(Activation::Softmax));
    model.build({steps, 1}, /*seed=*/1);
    model.compile(std::make_unique<Adam<float>>(0.01));

    // A loop of one's own: gradients, global-norm clipping, a cosine schedule of our own, the update.
    const Index batch = 64;
    const double pi = std::acos(-1.0), total = 5.0 * static_cast<double>(n / batch);
    double step = 0;
    for (int epoch = 1; epoch <= 5; ++epoch) {
      double loss = 0;
      for (Index b = 0; b < n; b += batch, step += 1) {
        model.optimizer()->set_learning_rate(0.01 * 0.5 * (1 + std::cos(pi * step / total)));
        loss += model.compute_gradients(x.rows(b, b + batch), y.rows(b, b + batch));
        const double norm = clip_grad_norm(model, 1.0);  // torch.nn.utils.clip_grad_norm_
        (void)norm;
        model.apply_gradients();
      }
      std::cout << "epoch " << epoch << " loss " << loss / static_cast<double>(n / batch) << "\n";
    }
    BatchResult r = model.test_on_batch(x, y);
    std::cout << "accuracy " << r.accuracy << "\n";
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
