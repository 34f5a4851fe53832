// What the examples that run against a peer (lang_id, fashion_cnn) print and write, in the peers'
// formats: one EPOCH line per epoch, and JSON summaries (bench/*-compare read them).
#pragma once

#include <fastnn/fastnn.hpp>

#include <cstdio>
#include <fstream>
#include <ostream>
#include <string>

namespace example {

/// `s` as a JSON string literal (quotes, backslashes and control characters escaped).
inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

/// `v` with 6 significant digits, or null when it is not finite.
inline std::string json_number(double v) {
  if (!(v == v) || v > 1e300 || v < -1e300) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

/// One line per epoch, the format of the peers (bench/lang_id_peer.py, bench/fashion_cnn_peer.py).
class EpochPrinter : public fastnn::Callback {
 public:
  void on_epoch_end(const fastnn::EpochLogs& l) override {
    std::printf("EPOCH %d train_s=%.3f eval_s=%.3f loss=%.6f acc=%.6f val_loss=%.6f val_acc=%.6f\n", l.epoch,
                l.train_seconds, l.eval_seconds, l.loss, l.accuracy, l.val_loss, l.val_accuracy);
    std::fflush(stdout);
  }
};

/// The JSON members of a run's results: "initial_val_loss", "initial_val_accuracy", "epochs" (one object per
/// epoch) and "final_val_accuracy", each line indented by two spaces, the last without a trailing comma.
inline void write_json_history(std::ostream& j, const fastnn::EvalResult& initial, const fastnn::History& h) {
  j << "  \"initial_val_loss\": " << json_number(initial.loss)
    << ",\n  \"initial_val_accuracy\": " << json_number(initial.accuracy) << ",\n";
  j << "  \"epochs\": [";
  for (std::size_t i = 0; i < h.epochs.size(); ++i) {
    const auto& e = h.epochs[i];
    j << (i ? ",\n    " : "\n    ") << "{\"epoch\": " << e.epoch
      << ", \"train_seconds\": " << json_number(e.train_seconds)
      << ", \"eval_seconds\": " << json_number(e.eval_seconds) << ", \"loss\": " << json_number(e.loss)
      << ", \"accuracy\": " << json_number(e.accuracy) << ", \"val_loss\": " << json_number(e.val_loss)
      << ", \"val_accuracy\": " << json_number(e.val_accuracy) << "}";
  }
  j << (h.epochs.empty() ? "],\n" : "\n  ],\n");
  j << "  \"final_val_accuracy\": " << json_number(h.epochs.empty() ? NAN : h.last().val_accuracy);
}

/// Writes `text` to `path` (replacing it); IoError naming the file when that fails.
inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.flush();
  if (!out) throw fastnn::IoError(path, "--json: cannot write");
}

}  // namespace example
