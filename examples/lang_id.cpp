// lang_id: character-level language identification of single words with fastnn.
//
//   lang_id --epochs 5                     # 9 languages, 6,000 words each, 10% validation
//   lang_id --epochs 0 --write-split split.tsv --init-weights-out init.safetensors
//
// Data: the word lists of Debian's dictionary packages in /usr/share/dict (--dict-dir), in this
// fixed order, which is also the label order:
//
//   0 english american-english (wamerican)    5 portuguese portuguese (wportuguese)
//   1 german  ngerman          (wngerman)     6 dutch      dutch      (wdutch)
//   2 french  french           (wfrench)      7 swedish    swedish    (wswedish)
//   3 spanish spanish          (wspanish)     8 polish     polish     (wpolish)
//   4 italian italian          (witalian)
//
// Each line is one word, read as UTF-8; a line that is not valid UTF-8 is read as ISO-8859-1
// and converted to UTF-8 (Debian's `swedish` list is ISO-8859-1, all the others are UTF-8).
// A word is kept when it has 2..--maxlen bytes (UTF-8) and no apostrophe, tab or control
// character; a word that occurs (byte for byte) in more than one of the nine lists is dropped as
// ambiguous. Of each language's remaining distinct words, the --per-language words with the
// smallest 64-bit FNV-1a hash of their bytes are taken (ties by bytes), and a word goes to the
// validation split when that hash % 10 == 0, else to training: about 10% validation, the same
// on every machine and for every seed. --write-split FILE writes exactly this split as TSV lines
// `train|val<TAB>label<TAB>word` (bench/lang_id_peer.py trains on that file).
//
// Input: token = byte value + 1 (1..256), padded at the end with 0 to --maxlen steps.
// Model (--model):
//   bigru (the default)  Embedding(257, embed_dim, mask_zero) -> Bidirectional(GRU(units)) (concat) ->
//                        Dense(9, softmax). The padded steps are masked: each direction's final state is
//                        the state after the word's last (first) real byte.
//   transformer          a graph (fastnn/graph.hpp, fastnn/transformer.hpp) of width d = embed_dim:
//                        x = Embedding(257, d, mask_zero) + PositionEmbedding(maxlen), then --blocks post-norm
//                        encoder blocks, each
//                          a = Dropout(MultiHeadAttention(heads, d / heads, dropout)(x, x))
//                          h = LayerNormalization(x + a)
//                          x = LayerNormalization(h + Dropout(Dense(d)(Dropout(Dense(ff, gelu)(h)))))
//                        (torch.nn.TransformerEncoderLayer's layout and dropout places), then
//                        GlobalAveragePooling1D over the real steps -> Dense(9, softmax). The padded steps
//                        are masked: attention gives them probability 0 and the pooling skips them.
// Both: SparseCategoricalCrossentropy, Adam (--lr, epsilon 1e-7), batch 128, shuffled each epoch.
// Initial weights (--init): `keras` (the default) Keras's initialisers (uniform(-0.05, 0.05)
// embedding, glorot_uniform kernels, orthogonal recurrent kernels, zero biases); `torch` PyTorch's
// default initialisation of nn.Embedding / nn.GRU / nn.Linear (init::torch_defaults: N(0, 1)
// embedding, every GRU weight and bias U(-1/sqrt(units), 1/sqrt(units)), the Dense's kernel and
// bias U(-1/sqrt(in), 1/sqrt(in))); both drawn from --seed. The transformer takes `keras` only (its layers
// have no torch_defaults): uniform(-0.05, 0.05) embedding, glorot_uniform position table and kernels (Keras's
// fans of MultiHeadAttention's 3-d kernels), zero biases, LayerNormalization gamma 1 and beta 0.
//
// Output: the machine, the data, the model summary, one line per epoch
//   EPOCH 1 train_s=2.345 eval_s=0.123 loss=1.234567 acc=0.612345 val_loss=0.9 val_acc=0.7012
// and last `final: loss X acc X val_loss X val_acc X`. --json FILE writes the same as JSON.
// Before training it prints `initial: val_loss X val_acc Y` of the untrained model; the PyTorch
// peer started from --init-weights-out prints the same numbers (up to float rounding).

#include <fastnn/fastnn.hpp>
#include <fastnn/graph.hpp>
#include <fastnn/transformer.hpp>
#include <fastnn/vision.hpp>

#include "example_report.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using example::EpochPrinter;
using example::json_number;
using example::json_string;
using example::write_file;
using example::write_json_history;

struct Options {
  int epochs = 5;
  fastnn::Index batch_size = 128;
  int per_language = 6000;
  int maxlen = 20;
  int threads = 0;
  std::uint64_t seed = 42;
  std::string model = "bigru";  // "bigru" or "transformer"
  int units = 64;
  int embed_dim = 0;  // 0: the model's default (kDefaultEmbedDim)
  int heads = 4, ff = 128, blocks = 2;
  double dropout = 0.1;
  double lr = 0.003;
  int verbose = 0;
  bool shuffle = true;
  std::string dict_dir = "/usr/share/dict";
  std::string init = "keras";  // initial weights: "keras" or "torch" (PyTorch's defaults)
  std::string write_split, init_weights_out, json, export_weights;
};

struct Language {
  const char* name;
  const char* file;     // in the dictionary directory
  const char* package;  // the Debian package that installs it
};

constexpr std::array<Language, 9> kLanguages{{{"english", "american-english", "wamerican"},
                                              {"german", "ngerman", "wngerman"},
                                              {"french", "french", "wfrench"},
                                              {"spanish", "spanish", "wspanish"},
                                              {"italian", "italian", "witalian"},
                                              {"portuguese", "portuguese", "wportuguese"},
                                              {"dutch", "dutch", "wdutch"},
                                              {"swedish", "swedish", "wswedish"},
                                              {"polish", "polish", "wpolish"}}};
constexpr int kClasses = static_cast<int>(kLanguages.size());

/// --embed-dim's default per model: the byte embedding of the BiGRU, the width d of the transformer.
int default_embed_dim(const std::string& model) { return model == "transformer" ? 64 : 32; }

// ---- data -------------------------------------------------------------------------------------

/// 64-bit FNV-1a of the bytes of `s`.
std::uint64_t fnv1a64(const std::string& s) {
  std::uint64_t h = 0xCBF29CE484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ULL;
  return h;
}

/// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points above U+10FFFF).
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len;
    unsigned cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += len;
  }
  return true;
}

std::string latin1_to_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

std::string list_path(const Options& o, const Language& l) { return o.dict_dir + "/" + l.file; }

/// Calls f(word) for every line of a word list that passes the filters (in file order, with
/// repeats). Throws IoError naming the file and the package when it cannot be read.
template <class F>
void for_each_word(const Options& o, const Language& l, F&& f) {
  const std::string path = list_path(o, l);
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw fastnn::IoError(path, "cannot read the " + std::string(l.name) + " word list (install the Debian package " +
                                    l.package + ": apt-get install " + l.package + "; or pass --dict-dir DIR)");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!valid_utf8(line)) line = latin1_to_utf8(line);
    if (line.size() < 2 || line.size() > static_cast<std::size_t>(o.maxlen)) continue;
    bool ok = true;
    for (unsigned char c : line)
      if (c == '\'' || c < 0x20 || c == 0x7F) { ok = false; break; }
    if (ok) f(line);
  }
  if (in.bad()) throw fastnn::IoError(path, "read error");
}

struct Sample {
  int label;
  std::string word;
};

struct Corpus {
  std::vector<Sample> train, val;
  std::array<int, kClasses> train_count{}, val_count{}, ambiguous_skipped{};
};

/// Builds the split described at the top of this file. Memory stays small even for the
/// 4.3-million-line Polish list: each language keeps only its `budget` smallest-hash candidates,
/// and a second pass over all lists marks which candidates occur in other lists. When too many
/// candidates turn out ambiguous, it repeats with a doubled budget.
Corpus make_corpus(const Options& o) {
  using Key = std::pair<std::uint64_t, std::string>;
  std::size_t budget = static_cast<std::size_t>(o.per_language) * 3 / 2 + 256;
  for (;;) {
    std::array<std::set<Key>, kClasses> cand;
    std::array<bool, kClasses> truncated{};
    for (int l = 0; l < kClasses; ++l) {
      auto& c = cand[static_cast<std::size_t>(l)];
      for_each_word(o, kLanguages[static_cast<std::size_t>(l)], [&](const std::string& w) {
        const std::uint64_t h = fnv1a64(w);
        if (c.size() == budget) {
          const Key& last = *c.rbegin();
          if (h > last.first || (h == last.first && w > last.second)) {
            truncated[static_cast<std::size_t>(l)] = true;  // a word beyond the budget exists
            return;
          }
          if (h == last.first && w == last.second) return;  // a repeat of the last candidate
        }
        if (c.emplace(h, w).second && c.size() > budget) {
          c.erase(std::prev(c.end()));
          truncated[static_cast<std::size_t>(l)] = true;
        }
      });
    }
    // which lists hold each candidate
    std::unordered_map<std::string, std::uint32_t> in_lists;
    for (const auto& c : cand)
      for (const Key& k : c) in_lists.emplace(k.second, 0u);
    for (int l = 0; l < kClasses; ++l)
      for_each_word(o, kLanguages[static_cast<std::size_t>(l)], [&](const std::string& w) {
        auto it = in_lists.find(w);
        if (it != in_lists.end()) it->second |= 1u << l;
      });

    Corpus corpus;
    bool retry = false;
    for (int l = 0; l < kClasses && !retry; ++l) {
      const std::size_t li = static_cast<std::size_t>(l);
      int taken = 0;
      for (const Key& k : cand[li]) {
        if (taken == o.per_language) break;
        const std::uint32_t mask = in_lists.at(k.second);
        if ((mask & (mask - 1)) != 0) {  // in more than one list
          ++corpus.ambiguous_skipped[li];
          continue;
        }
        ++taken;
        if (k.first % 10 == 0) {
          corpus.val.push_back({l, k.second});
          ++corpus.val_count[li];
        } else {
          corpus.train.push_back({l, k.second});
          ++corpus.train_count[li];
        }
      }
      if (taken < o.per_language) {
        if (truncated[li]) {
          retry = true;  // more words exist beyond the budget
        } else {
          std::fprintf(stderr, "lang_id: warning: %s has only %d usable words (asked for %d)\n", kLanguages[li].name,
                       taken, o.per_language);
        }
      }
    }
    if (!retry) return corpus;
    budget *= 2;
  }
}

void write_split(const Corpus& c, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw fastnn::IoError(path, "--write-split: cannot open for writing");
  for (const auto& s : c.train) out << "train\t" << s.label << '\t' << s.word << '\n';
  for (const auto& s : c.val) out << "val\t" << s.label << '\t' << s.word << '\n';
  out.flush();
  if (!out) throw fastnn::IoError(path, "--write-split: write error");
}

/// Tokens [N, maxlen] (byte + 1, zero padding at the end) and labels [N] of samples.
fastnn::Dataset<float> make_data(const std::vector<Sample>& samples, int maxlen) {
  using namespace fastnn;
  const Index n = static_cast<Index>(samples.size());
  Tensor<std::int32_t, Cpu> tokens = Tensor<std::int32_t, Cpu>::zeros(Shape{n, static_cast<Index>(maxlen)});
  Tensor<std::int32_t, Cpu> labels(Shape{n});
  for (Index i = 0; i < n; ++i) {
    const Sample& s = samples[static_cast<std::size_t>(i)];
    std::int32_t* row = tokens.data() + i * maxlen;
    for (std::size_t k = 0; k < s.word.size(); ++k)
      row[k] = static_cast<std::int32_t>(static_cast<unsigned char>(s.word[k])) + 1;
    labels[i] = s.label;
  }
  return make_dataset<float>(tokens, labels, kClasses);
}

// ---- machine and JSON -------------------------------------------------------------------------

void write_json(const std::string& path, const Options& o, const Corpus& c, const fastnn::EvalResult& initial,
                const fastnn::History& h, const std::string& cpu, unsigned cores, fastnn::Index params) {
  std::ostringstream j;
  j.imbue(std::locale::classic());
  j << "{\n  \"impl\": \"fastnn\",\n";
  j << "  \"machine\": {\"cpu\": " << json_string(cpu) << ", \"cores\": " << cores << "},\n";
  j << "  \"config\": {\"epochs\": " << o.epochs << ", \"batch_size\": " << o.batch_size
    << ", \"per_language\": " << o.per_language << ", \"maxlen\": " << o.maxlen << ", \"threads\": " << o.threads
    << ", \"seed\": " << o.seed << ", \"model\": " << json_string(o.model);
  if (o.model == "transformer")
    j << ", \"heads\": " << o.heads << ", \"ff\": " << o.ff << ", \"blocks\": " << o.blocks
      << ", \"dropout\": " << json_number(o.dropout);
  else
    j << ", \"units\": " << o.units;
  j << ", \"embed_dim\": " << o.embed_dim << ", \"lr\": " << json_number(o.lr)
    << ", \"shuffle\": " << (o.shuffle ? "true" : "false") << ", \"init\": " << json_string(o.init)
    << ", \"dict_dir\": " << json_string(o.dict_dir) << "},\n";
  j << "  \"languages\": [";
  for (std::size_t l = 0; l < kLanguages.size(); ++l) j << (l ? ", " : "") << json_string(kLanguages[l].name);
  j << "],\n";
  j << "  \"train_samples\": " << c.train.size() << ",\n  \"val_samples\": " << c.val.size() << ",\n";
  j << "  \"params\": " << params << ",\n";
  write_json_history(j, initial, h);
  j << "\n}\n";
  write_file(path, j.str());
}

// ---- models and training ----------------------------------------------------------------------

/// Embedding(mask_zero) -> Bidirectional(GRU) -> Dense(9, softmax), built on [maxlen] from --seed.
fastnn::Sequential<float> make_bigru(const Options& o) {
  using namespace fastnn;
  // --init torch: PyTorch's default initialisation, chosen per layer with init::torch_defaults on the options
  const bool torch_init = o.init == "torch";
  EmbeddingOptions embedding_options = EmbeddingOptions(257, o.embed_dim).mask_zero(true);
  GRUOptions gru_options(o.units);
  DenseOptions dense_options = DenseOptions(kClasses).activation(Activation::Softmax);
  if (torch_init) {
    embedding_options = init::torch_defaults(embedding_options);
    gru_options = init::torch_defaults(gru_options);
    dense_options = init::torch_defaults(dense_options);
  }
  Sequential<float> model;
  model.add<Embedding>(embedding_options);
  model.add<Bidirectional>(std::make_unique<GRU<float>>(gru_options));
  model.add<Dense>(dense_options);
  model.set_threads(o.threads);
  model.build(Shape{static_cast<Index>(o.maxlen)}, o.seed);
  return model;
}

using Sym = fastnn::SymbolicTensor<float, fastnn::Cpu>;

/// A layer of type L with `opt`, named `name`, called on `xs`.
template <template <class, class> class L, class Opt>
Sym named(const std::string& name, const Opt& opt, const std::vector<Sym>& xs) {
  auto l = std::make_shared<L<float, fastnn::Cpu>>(opt);
  l->set_name(name);
  return fastnn::call(l, xs);
}

/// `x` through Dropout(rate) named `name`, or `x` itself when rate is 0.
Sym dropout(const Sym& x, double rate, const std::string& name) {
  return rate > 0 ? named<fastnn::Dropout>(name, fastnn::DropoutOptions(rate), {x}) : x;
}

/// Post-norm encoder block `b` on x [steps, d] (the file comment); its layers are named enc<b>_mha, enc<b>_norm1,
/// enc<b>_ffn1, enc<b>_ffn2, enc<b>_norm2 (python/fastnn_torch_transformer.py maps them by these names).
Sym encoder_block(const Sym& x, const Options& o, int b) {
  using namespace fastnn;
  const std::string p = "enc" + std::to_string(b) + "_";
  const Index d = o.embed_dim;
  auto a = named<MultiHeadAttention>(p + "mha", MultiHeadAttentionOptions(o.heads, d / o.heads).dropout(o.dropout),
                                     {x, x});
  auto h = named<LayerNormalization>(p + "norm1", LayerNormalizationOptions(),
                                     {apply<Add>({x, dropout(a, o.dropout, p + "dropout1")})});
  auto f = named<Dense>(p + "ffn1", DenseOptions(o.ff).activation(Activation::Gelu), {h});
  f = named<Dense>(p + "ffn2", DenseOptions(d), {dropout(f, o.dropout, p + "dropout")});
  return named<LayerNormalization>(p + "norm2", LayerNormalizationOptions(),
                                   {apply<Add>({h, dropout(f, o.dropout, p + "dropout2")})});
}

/// Embedding(mask_zero) + PositionEmbedding -> encoder blocks -> GlobalAveragePooling1D -> Dense(9, softmax).
std::unique_ptr<fastnn::Model<float>> make_transformer(const Options& o) {
  using namespace fastnn;
  auto ids = Input<float>({static_cast<Index>(o.maxlen)}, "tokens");
  auto tok = named<Embedding>("embedding", EmbeddingOptions(257, o.embed_dim).mask_zero(true), {ids});
  auto pos = named<PositionEmbedding>("position_embedding", PositionEmbeddingOptions(o.maxlen), {tok});
  Sym x = apply<Add>({tok, pos});
  for (int b = 0; b < o.blocks; ++b) x = encoder_block(x, o, b);
  auto pooled = apply<GlobalAveragePooling1D>(x);
  auto y = named<Dense>("dense", DenseOptions(kClasses).activation(Activation::Softmax), {pooled});
  auto model = std::make_unique<Model<float>>(ids, y, o.seed);
  model->set_threads(o.threads);
  return model;
}

/// Writes --init-weights-out, compiles, prints the summary and the initial validation loss, trains, and writes
/// --export-weights and --json: the same for both models.
template <class M>
int train(M& model, const Options& o, const Corpus& corpus, const fastnn::Dataset<float>& train_data,
          const fastnn::Dataset<float>& val_data, const std::string& cpu, unsigned cores) {
  using namespace fastnn;
  if (!o.init_weights_out.empty()) {
    io::save_weights(model, o.init_weights_out);
    std::printf("wrote the initial weights to %s\n", o.init_weights_out.c_str());
  }
  model.compile(std::make_unique<Adam<float>>(AdamOptions().learning_rate(o.lr)), SparseCategoricalCrossentropy(),
                {"accuracy"});
  model.summary(std::cout);
  const Index params = model.param_count();
  std::printf("Train on %zu words, validate on %zu (%d thread%s, batch %lld, seed %llu, init %s)\n",
              corpus.train.size(), corpus.val.size(), o.threads, o.threads == 1 ? "" : "s",
              static_cast<long long>(o.batch_size), static_cast<unsigned long long>(o.seed), o.init.c_str());
  std::fflush(stdout);

  // The untrained model on the validation words: bench/lang_id_peer.py, started from the same
  // weights (--init-weights-out), prints the same line; equal numbers show that both compute
  // the same function of the same data.
  const EvalResult initial = model.evaluate(val_data, o.batch_size);
  std::printf("initial: val_loss %.6f val_acc %.6f\n", initial.loss, initial.accuracy);
  std::fflush(stdout);

  History h;
  if (o.epochs > 0) {
    EpochPrinter printer;
    h = model.fit(train_data,
                  FitOptions().epochs(o.epochs).batch_size(o.batch_size).shuffle(o.shuffle).verbose(o.verbose)
                      .callback(&printer),
                  &val_data);
  }
  if (!o.export_weights.empty()) io::save_weights(model, o.export_weights);
  if (!o.json.empty()) write_json(o.json, o, corpus, initial, h, cpu, cores, params);
  if (!h.epochs.empty()) {
    const auto& l = h.last();
    std::printf("final: loss %.4f acc %.4f val_loss %.4f val_acc %.4f\n", l.loss, l.accuracy, l.val_loss,
                l.val_accuracy);
  }
  return 0;
}

int run(const Options& o) {
  using namespace fastnn;
  if (o.model == "transformer" && o.init != "keras")
    throw ArgumentError("--model transformer takes --init keras only (MultiHeadAttention, "
                        "LayerNormalization and PositionEmbedding have no init::torch_defaults), got --init " +
                        o.init);
  if (o.model == "transformer" && o.embed_dim % o.heads != 0)
    throw ArgumentError("--model transformer needs --embed-dim (the width d, " +
                        std::to_string(o.embed_dim) + ") divisible by --heads (" + std::to_string(o.heads) + ")");
  const std::string cpu = cpu_model_name();
  const unsigned cores = std::thread::hardware_concurrency();
  std::printf("machine: %s, %u core%s\n", cpu.c_str(), cores, cores == 1 ? "" : "s");

  const Corpus corpus = make_corpus(o);
  std::printf("data: %s, %d words per language (2..%d bytes), %zu train + %zu validation words\n", o.dict_dir.c_str(),
              o.per_language, o.maxlen, corpus.train.size(), corpus.val.size());
  for (std::size_t l = 0; l < kLanguages.size(); ++l)
    std::printf("  %d %-10s %-17s train %5d  val %4d  (ambiguous skipped %d)\n", static_cast<int>(l),
                kLanguages[l].name, kLanguages[l].file, corpus.train_count[l], corpus.val_count[l],
                corpus.ambiguous_skipped[l]);
  if (!o.write_split.empty()) {
    write_split(corpus, o.write_split);
    std::printf("wrote the split to %s\n", o.write_split.c_str());
  }
  if (corpus.train.empty() || corpus.val.empty())
    throw ArgumentError("lang_id: the training or the validation split is empty (raise --per-language)");
  const Dataset<float> train_data = make_data(corpus.train, o.maxlen);
  const Dataset<float> val_data = make_data(corpus.val, o.maxlen);

  if (o.model == "transformer") {
    std::unique_ptr<Model<float>> model = make_transformer(o);
    return train(*model, o, corpus, train_data, val_data, cpu, cores);
  }
  Sequential<float> model = make_bigru(o);
  return train(model, o, corpus, train_data, val_data, cpu, cores);
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Identify the language of single words (9 Debian word lists) with a bidirectional GRU or a "
               "Transformer encoder over bytes (fastnn)"};
  app.add_option("--epochs", o.epochs, "number of epochs (0: only prepare the data and the --write-split / "
                                       "--init-weights-out files)")
      ->check(CLI::Range(0, 100000))->capture_default_str();
  app.add_option("--batch-size", o.batch_size, "words per batch")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--per-language", o.per_language, "words taken from each language's list")
      ->check(CLI::Range(10, 10000000))->capture_default_str();
  app.add_option("--maxlen", o.maxlen, "longest word in bytes (UTF-8); the sequence length")
      ->check(CLI::Range(2, 1000))->capture_default_str();
  app.add_option("--threads", o.threads, "CPU threads (0 = min(2, cores)); 2 runs the two GRU directions (the "
                                         "transformer: the attention's heads and the GEMMs) in parallel")
      ->check(CLI::Range(0, 256))->capture_default_str();
  app.add_option("--seed", o.seed, "random seed (weights and shuffling; the split does not depend on it)")
      ->capture_default_str();
  app.add_option("--model", o.model, "bigru: Embedding -> Bidirectional(GRU) -> Dense; transformer: Embedding + "
                                     "PositionEmbedding -> encoder blocks -> GlobalAveragePooling1D -> Dense")
      ->check(CLI::IsMember({"bigru", "transformer"}))->capture_default_str();
  app.add_option("--units", o.units, "bigru: GRU units per direction")
      ->check(CLI::Range(1, 1 << 16))->capture_default_str();
  app.add_option("--embed-dim", o.embed_dim, "byte embedding size, the transformer's width d (0: 32 for bigru, 64 "
                                             "for transformer)")
      ->check(CLI::Range(0, 1 << 16))->capture_default_str();
  app.add_option("--heads", o.heads, "transformer: attention heads (key_dim = d / heads)")
      ->check(CLI::Range(1, 1 << 10))->capture_default_str();
  app.add_option("--ff", o.ff, "transformer: feed-forward width (Dense(ff, gelu) -> Dense(d))")
      ->check(CLI::Range(1, 1 << 16))->capture_default_str();
  app.add_option("--blocks", o.blocks, "transformer: encoder blocks")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--dropout", o.dropout, "transformer: dropout rate (attention probabilities, attention output, "
                                         "feed-forward hidden and output, as torch.nn.TransformerEncoderLayer)")
      ->check(CLI::Range(0.0, 0.99))->capture_default_str();
  app.add_option("--lr", o.lr, "Adam learning rate")->check(CLI::PositiveNumber)->capture_default_str();
  app.add_option("--init", o.init, "initial weights: keras (Keras's initialisers) or torch (PyTorch's defaults for "
                                   "nn.Embedding, nn.GRU and nn.Linear, via init::torch_defaults)")
      ->check(CLI::IsMember({"keras", "torch"}))->capture_default_str();
  app.add_option("--verbose", o.verbose, "fit's own output: 0 none, 1 progress bar, 2 one line per epoch "
                                         "(the EPOCH lines are always printed)")
      ->check(CLI::Range(0, 2))->capture_default_str();
  app.add_flag("!--no-shuffle", o.shuffle, "train on the words in the split's order every epoch (to compare with "
                                          "bench/lang_id_peer.py --no-shuffle step for step)");
  app.add_option("--dict-dir", o.dict_dir, "directory of the word lists (Debian: /usr/share/dict)")
      ->capture_default_str();
  app.add_option("--write-split", o.write_split,
                 "write the train/validation split as TSV: train|val<TAB>label<TAB>word");
  app.add_option("--init-weights-out", o.init_weights_out, "write the initial weights (safetensors) right after build");
  app.add_option("--export-weights", o.export_weights, "write the trained weights (safetensors) at the end");
  app.add_option("--json", o.json, "write a JSON summary (machine, config, per-epoch history)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << app.help() << "\n";
    app.exit(e);
    return e.get_exit_code() == 0 ? 2 : e.get_exit_code();
  }
  if (o.threads == 0) o.threads = std::max(1, std::min(2, static_cast<int>(std::thread::hardware_concurrency())));
  if (o.embed_dim == 0) o.embed_dim = default_embed_dim(o.model);
  try {
    return run(o);
  } catch (const fastnn::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "lang_id: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "lang_id: error: out of memory\n");
    return 1;
  }
}
