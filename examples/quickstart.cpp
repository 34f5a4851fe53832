#include <fastnn/data/mnist.hpp>
#include <fastnn/fastnn.hpp>

#include <iostream>

int main(int argc, char** argv) {
  using namespace fastnn;
  try {
    data::Mnist mnist = data::load_mnist(argc > 1 ? argv[1] : "data");
    auto train = make_dataset(mnist.train.images, mnist.train.labels, {28, 28}, 10);
    auto test = make_dataset(mnist.test.images, mnist.test.labels, {28, 28}, 10);

    Sequential<float> model;  // Sequential<float, Cuda> runs the same code on a GPU
    model.add<Bidirectional>(LSTMOptions(128));
    model.add<Dense>(DenseOptions(10).activation(Activation::Softmax));
    model.set_threads(2);  // the two LSTM directions run on two cores
    model.build({28, 28}, /*seed=*/42);
    model.compile(std::make_unique<SGD<float>>(0.5, /*momentum=*/0.9, /*nesterov=*/true),
                  SparseCategoricalCrossentropy(), {"accuracy"});
    model.summary(std::cout);

    History h = model.fit(train.head(6400), FitOptions().epochs(1).batch_size(128), &test);
    std::cout << "val_accuracy " << h.last().val_accuracy << "\n";
  } catch (const Error& e) {  // every fastnn error: bad file, bad shape, device failure
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
