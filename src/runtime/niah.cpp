#include "runtime/niah.h"

#include "runtime/sampler.h"
#include "util/splitmix.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <numeric>
#include <set>

namespace engram {

Expected<NiahTask> parse_niah_task(const std::string& name) {
  if (name == "single") return NiahTask::SINGLE;
  if (name == "multikey") return NiahTask::MULTIKEY;
  if (name == "multivalue") return NiahTask::MULTIVALUE;
  return make_error("unknown NIAH task '", name, "' (expected single, multikey or multivalue)");
}

const char* niah_task_name(NiahTask task) {
  switch (task) {
    case NiahTask::SINGLE: return "single";
    case NiahTask::MULTIKEY: return "multikey";
    case NiahTask::MULTIVALUE: return "multivalue";
  }
  return "?";
}

std::string fill_template(std::string_view tmpl, std::string_view key, std::string_view value) {
  std::string out;
  size_t i = 0;
  while (i < tmpl.size()) {
    if (tmpl.substr(i, 5) == "{key}") {
      out += key;
      i += 5;
    } else if (tmpl.substr(i, 7) == "{value}") {
      out += value;
      i += 7;
    } else {
      out += tmpl[i++];
    }
  }
  return out;
}

namespace {

// Collapses whitespace runs to one space and trims both ends.
std::string normalize_space(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
    } else {
      if (space) out += ' ';
      space = false;
      out += c;
    }
  }
  return out;
}

template <class Fn>
void for_each_line(std::string_view text, Fn fn) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    fn(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
}

}  // namespace

std::vector<std::string> haystack_units(std::string_view text) {
  std::vector<std::string> units;
  for_each_line(text, [&](std::string_view line) {
    std::string u = normalize_space(line);
    if (!u.empty()) units.push_back(std::move(u));
  });
  return units;
}

std::vector<std::string> parse_bible_listing(std::string_view listing) {
  // Verse lines are "  <number> <text>"; book and chapter headings are not indented.
  std::vector<std::string> verses;
  for_each_line(listing, [&](std::string_view line) {
    if (line.size() < 3 || line[0] != ' ' || line[1] != ' ') return;
    std::string_view rest = line.substr(2);
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    size_t d = 0;
    while (d < rest.size() && std::isdigit(static_cast<unsigned char>(rest[d]))) ++d;
    if (d == 0 || d >= rest.size() || rest[d] != ' ') return;
    std::string v = normalize_space(rest.substr(d + 1));
    if (!v.empty()) verses.push_back(std::move(v));
  });
  return verses;
}

std::vector<TokenId> encode_continuation(const Tokenizer& tok, std::string_view text) {
  if (tok.model_name() == "llama") return tok.encode(text, /*add_special=*/false, /*parse_special=*/false);
  std::string spaced(1, ' ');
  spaced.append(text);
  return tok.encode(spaced, false, false);
}

const std::vector<std::string>& default_niah_keys() {
  static const std::vector<std::string> keys = {
      "apple",   "river",   "garden",  "window",  "silver",  "mountain", "candle",  "forest",  "island",   "bridge",
      "castle",  "tiger",   "rabbit",  "violin",  "pepper",  "copper",   "marble",  "cotton",  "pencil",   "ladder",
      "basket",  "anchor",  "button",  "carpet",  "dragon",  "engine",   "feather", "guitar",  "hammer",   "helmet",
      "jacket",  "kettle",  "lemon",   "magnet",  "mirror",  "needle",   "orange",  "parrot",  "pillow",   "pocket",
      "puzzle",  "rocket",  "saddle",  "shadow",  "spider",  "sugar",    "tablet",  "tomato",  "tunnel",   "turtle",
      "wallet",  "walnut",  "wizard",  "zebra",   "cherry",  "coffee",   "cookie",  "dolphin", "falcon",   "ginger",
      "harbor",  "lantern", "meadow",  "monkey",  "ocean",   "palace",   "planet",  "pirate",  "potato",   "purple",
      "rainbow", "ribbon",  "salmon",  "spoon",   "summer",  "winter",   "autumn",  "thunder", "tower",    "valley",
      "velvet",  "village", "wagon",   "yellow",  "camera",  "cactus",   "compass", "crystal", "diamond",  "eagle",
      "emerald", "fountain", "glacier", "honey",  "iron",    "jungle",   "kitchen", "laptop",  "mango",    "museum",
      "noodle",  "olive",   "panda",   "piano",   "pumpkin", "radio",    "robot",   "sandal",  "scarf",    "shovel",
      "squirrel", "station", "stove",  "sunset",  "taxi",    "tent",     "ticket",  "tulip",   "umbrella", "vase",
      "whale",   "banana",  "bottle",  "butter",  "cabin",   "circle",   "cloud",   "desert",  "dinner",   "doctor",
      "donkey",  "garlic",  "horse",   "lion",    "house",   "water",    "bread",   "stone",   "gold",     "fire",
      "city",    "table",   "chair",   "door",    "paper"};
  return keys;
}

Expected<int64_t> parse_token_count(std::string_view text) {
  std::string_view s = text;
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  int64_t scale = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'k')) scale = 1024;
  if (!s.empty() && (s.back() == 'M' || s.back() == 'm')) scale = 1024 * 1024;
  if (scale != 1) s.remove_suffix(1);
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v <= 0 || v > (int64_t{1} << 40) / scale) {
    return make_error("bad token count '", std::string(text), "' (expected a positive number, optionally with K or M: 4K, 1M)");
  }
  return v * scale;
}

namespace {

std::vector<std::string_view> split_commas(std::string_view list) {
  std::vector<std::string_view> items;
  size_t pos = 0;
  for (;;) {
    size_t comma = list.find(',', pos);
    items.push_back(list.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos));
    if (comma == std::string_view::npos) break;
    pos = comma + 1;
  }
  return items;
}

}  // namespace

Expected<std::vector<int64_t>> parse_token_counts(std::string_view list) {
  std::vector<int64_t> out;
  for (std::string_view item : split_commas(list)) {
    auto v = parse_token_count(item);
    if (!v) return v.error();
    out.push_back(*v);
  }
  return out;
}

Expected<std::vector<double>> parse_depths(std::string_view list) {
  std::vector<double> out;
  for (std::string_view item : split_commas(list)) {
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    double v = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || !(v >= 0 && v <= 100)) {
      return make_error("bad depth '", std::string(item), "' in '", std::string(list),
                        "' (expected percentages 0..100, e.g. 0,25,50,75,100)");
    }
    out.push_back(v / 100.0);
  }
  return out;
}

std::string format_token_count(int64_t n) {
  if (n >= 1024 * 1024 && n % (1024 * 1024) == 0) return std::to_string(n / (1024 * 1024)) + "M";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n / 1024) + "K";
  return std::to_string(n);
}

Expected<NiahBuilder> NiahBuilder::create(const Tokenizer& tok, const std::vector<std::string>& units,
                                          std::vector<std::string> keys, NiahConfig config) {
  NiahBuilder b;
  b.tok_ = &tok;
  b.config_ = config;
  for (const std::string& u : units) {
    std::vector<TokenId> ids = encode_continuation(tok, u);
    if (ids.empty()) continue;
    b.total_tokens_ += static_cast<int64_t>(ids.size());
    b.units_.push_back(std::move(ids));
  }
  if (b.units_.empty()) return make_error("the haystack has no text");
  // Distinct, non-empty keys.
  std::set<std::string> seen;
  for (std::string& k : keys) {
    if (!k.empty() && seen.insert(k).second) b.keys_.push_back(std::move(k));
  }
  const size_t need = config.task == NiahTask::MULTIKEY ? static_cast<size_t>(std::max(1, config.n_keys)) : 1;
  if (b.keys_.size() < need) {
    return make_error("the NIAH ", niah_task_name(config.task), " task needs ", std::to_string(need),
                      " distinct keys, only ", std::to_string(b.keys_.size()), " given");
  }
  if (config.value_min < 0 || config.value_max < config.value_min) return make_error("bad NIAH value range");
  if (config.task == NiahTask::MULTIVALUE &&
      (config.n_values < 1 || config.n_values > config.value_max - config.value_min + 1)) {
    return make_error("bad number of values for the multivalue task: ", std::to_string(config.n_values));
  }
  return b;
}

Expected<NiahTrial> NiahBuilder::make_trial(int64_t length, double depth, uint64_t seed) const {
  std::mt19937_64 rng(seed);
  auto uniform_int = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto uniform01 = [&] { return std::uniform_real_distribution<double>(0.0, 1.0)(rng); };
  const NiahConfig& c = config_;
  const NiahTemplates& t = c.templates;

  // Keys and values: key 0 is asked.
  std::vector<size_t> key_idx(keys_.size());
  std::iota(key_idx.begin(), key_idx.end(), 0);
  const int n_keys = c.task == NiahTask::MULTIKEY ? std::max(1, c.n_keys) : 1;
  for (int i = 0; i < n_keys; ++i) {
    std::swap(key_idx[static_cast<size_t>(i)], key_idx[static_cast<size_t>(uniform_int(i, static_cast<int>(keys_.size()) - 1))]);
  }
  struct Needle {
    std::string key;
    int value;
    bool at_depth;  // placed at the asked depth (the others go at random depths)
  };
  std::vector<Needle> needles;
  if (c.task == NiahTask::MULTIVALUE) {
    std::set<int> used;
    while (static_cast<int>(needles.size()) < c.n_values) {
      int v = uniform_int(c.value_min, c.value_max);
      if (used.insert(v).second) needles.push_back({keys_[key_idx[0]], v, needles.empty()});
    }
  } else {
    for (int i = 0; i < n_keys; ++i) needles.push_back({keys_[key_idx[static_cast<size_t>(i)]], uniform_int(c.value_min, c.value_max), i == 0});
  }

  NiahTrial trial;
  trial.key = keys_[key_idx[0]];
  std::vector<std::vector<TokenId>> needle_ids;
  int64_t fixed = 0;
  for (const Needle& n : needles) {
    needle_ids.push_back(encode_continuation(*tok_, fill_template(t.needle, n.key, std::to_string(n.value))));
    fixed += static_cast<int64_t>(needle_ids.back().size());
  }
  const std::string& q = c.task == NiahTask::MULTIVALUE ? t.multi_question : t.question;
  std::vector<TokenId> question = encode_continuation(*tok_, fill_template(q, trial.key, ""));
  fixed += static_cast<int64_t>(question.size());
  const bool bos = tok_->add_bos() && tok_->bos() >= 0;
  fixed += bos ? 1 : 0;
  const int64_t budget = length - fixed;
  if (budget < 1) {
    return make_error("NIAH length ", std::to_string(length), " is too short: the needles and question alone take ",
                      std::to_string(fixed), " tokens");
  }

  // Whole units from a random start, wrapping around, while they fit.
  std::vector<TokenId> hay;
  std::vector<int64_t> cuts;  // offsets of unit starts in hay
  size_t u = static_cast<size_t>(uniform_int(0, static_cast<int>(units_.size()) - 1));
  for (;;) {
    const std::vector<TokenId>& unit = units_[u];
    if (static_cast<int64_t>(hay.size() + unit.size()) > budget) {
      if (hay.empty()) {  // one unit longer than the whole budget: cut it
        cuts.push_back(0);
        hay.assign(unit.begin(), unit.begin() + budget);
      }
      break;
    }
    cuts.push_back(static_cast<int64_t>(hay.size()));
    hay.insert(hay.end(), unit.begin(), unit.end());
    u = (u + 1) % units_.size();
  }

  // Needles go in at unit starts; depth picks the cut.
  auto spot_at = [&](double d) {
    const double idx = std::round(std::clamp(d, 0.0, 1.0) * static_cast<double>(cuts.size() - 1));
    return cuts[static_cast<size_t>(idx)];
  };
  struct Placed {
    int64_t spot;
    size_t needle;
  };
  std::vector<Placed> placed;
  for (size_t i = 0; i < needles.size(); ++i) placed.push_back({spot_at(needles[i].at_depth ? depth : uniform01()), i});
  std::stable_sort(placed.begin(), placed.end(), [](const Placed& a, const Placed& b) { return a.spot < b.spot; });

  if (bos) trial.prompt.push_back(tok_->bos());
  int64_t prev = 0;
  for (const Placed& p : placed) {
    trial.prompt.insert(trial.prompt.end(), hay.begin() + prev, hay.begin() + p.spot);
    prev = p.spot;
    const int64_t at = static_cast<int64_t>(trial.prompt.size());
    trial.needle_positions.push_back(at);
    if (needles[p.needle].at_depth) trial.target_position = at;
    if (needles[p.needle].key == trial.key) trial.values.push_back(needles[p.needle].value);
    trial.prompt.insert(trial.prompt.end(), needle_ids[p.needle].begin(), needle_ids[p.needle].end());
  }
  trial.prompt.insert(trial.prompt.end(), hay.begin() + prev, hay.end());
  trial.prompt.insert(trial.prompt.end(), question.begin(), question.end());

  for (size_t i = 0; i < trial.values.size(); ++i) {
    if (i) trial.answer += ", ";
    trial.answer += std::to_string(trial.values[i]);
  }
  trial.answer_tokens = static_cast<int>(encode_continuation(*tok_, trial.answer).size());
  return trial;
}

uint64_t niah_trial_seed(uint64_t seed, size_t length_index, size_t depth_index, int trial) {
  // Each part mixed in turn. XOR-ing the parts into one word before a
  // single mix made base seeds that differ in their low bits share trials:
  // seeds 12 and 14 gave the same four trials per cell (a trial index
  // XOR-ed into the seed).
  uint64_t state = seed;
  for (uint64_t part : {static_cast<uint64_t>(length_index), static_cast<uint64_t>(depth_index),
                        static_cast<uint64_t>(trial)}) {
    state = splitmix64_next(state) ^ part;
  }
  return splitmix64_next(state);
}

bool niah_correct(std::string_view generated, std::string_view answer) {
  while (!generated.empty() && std::isspace(static_cast<unsigned char>(generated.front()))) generated.remove_prefix(1);
  if (answer.empty() || generated.substr(0, answer.size()) != answer) return false;
  return generated.size() == answer.size() || !std::isdigit(static_cast<unsigned char>(generated[answer.size()]));
}

Expected<NiahTrialResult> run_niah_trial(Session& session, const NiahTrial& trial, int n_batch,
                                         const ProgressFn& progress) {
  NiahTrialResult r;
  r.n_prompt = static_cast<int64_t>(trial.prompt.size());
  // One token more than the answer, so a longer number ("4821") is caught.
  const int n_gen = trial.answer_tokens + 1;
  if (r.n_prompt + n_gen > session.n_ctx()) {
    return make_error("NIAH prompt of ", std::to_string(r.n_prompt), " tokens plus ", std::to_string(n_gen),
                      " answer tokens does not fit the context of ", std::to_string(session.n_ctx()));
  }
  session.reset();
  auto t0 = std::chrono::steady_clock::now();
  ENGRAM_RETURN_IF_ERROR(session.decode(trial.prompt, n_batch, nullptr, progress));
  r.prefill_seconds = seconds_since(t0);
  r.memory_bytes = session.memory().bytes_used();

  const Tokenizer& tok = session.tokenizer();
  TokenPrinter printer(tok);
  t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n_gen; ++i) {
    const TokenId id = argmax(session.logits());
    if (tok.is_eog(id)) break;
    r.generated += printer.push(id);
    if (i + 1 == n_gen) break;
    const TokenId one[1] = {id};
    ENGRAM_RETURN_IF_ERROR(session.decode(one, 1));
    ++r.n_decoded;
  }
  r.decode_seconds = seconds_since(t0);
  r.generated += printer.flush();
  r.correct = niah_correct(r.generated, trial.answer);
  return r;
}

void accuracy_color(double a, uint8_t rgb[3]) {
  if (!std::isfinite(a)) {
    rgb[0] = rgb[1] = rgb[2] = 200;  // not measured: grey
    return;
  }
  a = std::clamp(a, 0.0, 1.0);
  // red (215, 48, 39) -> yellow (254, 224, 100) -> green (26, 152, 80)
  const double lo[3] = {215, 48, 39}, mid[3] = {254, 224, 100}, hi[3] = {26, 152, 80};
  for (int i = 0; i < 3; ++i) {
    const double v = a < 0.5 ? lo[i] + (mid[i] - lo[i]) * (a / 0.5) : mid[i] + (hi[i] - mid[i]) * ((a - 0.5) / 0.5);
    rgb[i] = static_cast<uint8_t>(std::lround(v));
  }
}

namespace {

// A 3x5 pixel font for the labels: rows top to bottom, bit 2 = left column.
struct Glyph {
  char c;
  uint8_t rows[5];
};
constexpr Glyph kFont[] = {
    {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 7, 1, 7}},
    {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 1, 1, 1}},
    {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'K', {5, 5, 6, 5, 5}}, {'M', {5, 7, 7, 5, 5}},
    {'%', {5, 1, 2, 4, 5}}, {'.', {0, 0, 0, 0, 2}}, {'d', {1, 1, 7, 5, 7}}, {'e', {7, 5, 7, 4, 7}},
    {'n', {0, 6, 5, 5, 5}}, {'s', {3, 4, 2, 1, 6}}, {'w', {0, 5, 5, 7, 7}}, {'i', {2, 0, 2, 2, 2}},
    {'o', {0, 7, 5, 5, 7}}, {'g', {3, 5, 3, 1, 6}}, {'r', {0, 5, 6, 4, 4}}, {'a', {0, 3, 5, 5, 3}},
    {'m', {0, 6, 7, 5, 5}}, {'l', {2, 2, 2, 2, 3}}, {'t', {2, 7, 2, 2, 3}}, {'h', {4, 4, 7, 5, 5}},
    {'p', {7, 5, 7, 4, 4}}, {'-', {0, 0, 7, 0, 0}}, {'x', {0, 5, 2, 2, 5}}, {'c', {0, 7, 4, 4, 7}},
};
constexpr int kScale = 2;                 // font pixels per glyph pixel
constexpr int kGlyphW = 4 * kScale;       // 3 columns + 1 of spacing
constexpr int kGlyphH = 5 * kScale;

int text_width(std::string_view s) { return static_cast<int>(s.size()) * kGlyphW - kScale; }

void put_pixel(RgbImage& img, int x, int y, const uint8_t rgb[3]) {
  if (x < 0 || y < 0 || x >= img.width || y >= img.height) return;
  uint8_t* p = &img.pixels[(static_cast<size_t>(y) * static_cast<size_t>(img.width) + static_cast<size_t>(x)) * 3];
  p[0] = rgb[0];
  p[1] = rgb[1];
  p[2] = rgb[2];
}

void draw_text(RgbImage& img, int x, int y, std::string_view s, const uint8_t rgb[3]) {
  for (char ch : s) {
    for (const Glyph& g : kFont) {
      if (g.c != ch) continue;
      for (int r = 0; r < 5; ++r) {
        for (int col = 0; col < 3; ++col) {
          if (!(g.rows[r] & (4 >> col))) continue;
          for (int dy = 0; dy < kScale; ++dy) {
            for (int dx = 0; dx < kScale; ++dx) put_pixel(img, x + col * kScale + dx, y + r * kScale + dy, rgb);
          }
        }
      }
    }
    x += kGlyphW;
  }
}

void fill_rect(RgbImage& img, int x0, int y0, int w, int h, const uint8_t rgb[3]) {
  for (int y = y0; y < y0 + h; ++y) {
    for (int x = x0; x < x0 + w; ++x) put_pixel(img, x, y, rgb);
  }
}

}  // namespace

RgbImage render_niah_heatmap(const std::vector<NiahPanel>& panels, const std::vector<double>& depths,
                             const std::vector<int64_t>& lengths) {
  constexpr int cell_w = 44, cell_h = 26, margin = 8, title_h = kGlyphH + 10;
  const int label_w = text_width("100") + 8;       // depth labels, left
  const int axis_h = kGlyphH + 8;                  // length labels, below
  const int n_len = static_cast<int>(lengths.size()), n_dep = static_cast<int>(depths.size());
  const int panel_w = label_w + n_len * cell_w;
  const int n_panels = std::max<int>(1, static_cast<int>(panels.size()));
  RgbImage img;
  img.width = margin + n_panels * (panel_w + margin);
  img.height = margin + title_h + n_dep * cell_h + axis_h + margin;
  img.pixels.assign(static_cast<size_t>(img.width) * static_cast<size_t>(img.height) * 3, 255);
  const uint8_t black[3] = {0, 0, 0}, white[3] = {255, 255, 255};

  for (size_t p = 0; p < panels.size(); ++p) {
    const int x0 = margin + static_cast<int>(p) * (panel_w + margin);
    const int grid_x = x0 + label_w, grid_y = margin + title_h;
    draw_text(img, grid_x + (n_len * cell_w - text_width(panels[p].title)) / 2, margin, panels[p].title, black);
    for (int d = 0; d < n_dep; ++d) {
      const std::string label = std::to_string(static_cast<int>(std::lround(depths[static_cast<size_t>(d)] * 100)));
      draw_text(img, grid_x - 6 - text_width(label), grid_y + d * cell_h + (cell_h - kGlyphH) / 2, label, black);
      for (int l = 0; l < n_len; ++l) {
        double a = std::numeric_limits<double>::quiet_NaN();
        const auto& rows = panels[p].accuracy;
        if (static_cast<size_t>(d) < rows.size() && static_cast<size_t>(l) < rows[static_cast<size_t>(d)].size()) {
          a = rows[static_cast<size_t>(d)][static_cast<size_t>(l)];
        }
        uint8_t rgb[3];
        accuracy_color(a, rgb);
        const int cx = grid_x + l * cell_w, cy = grid_y + d * cell_h;
        fill_rect(img, cx, cy, cell_w, cell_h, rgb);
        fill_rect(img, cx, cy, cell_w, 1, white);  // grid lines
        fill_rect(img, cx, cy, 1, cell_h, white);
        if (std::isfinite(a)) {
          const std::string pct = std::to_string(static_cast<int>(std::lround(a * 100)));
          draw_text(img, cx + (cell_w - text_width(pct)) / 2, cy + (cell_h - kGlyphH) / 2, pct, black);
        }
      }
    }
    for (int l = 0; l < n_len; ++l) {
      const std::string label = format_token_count(lengths[static_cast<size_t>(l)]);
      draw_text(img, grid_x + l * cell_w + (cell_w - text_width(label)) / 2, grid_y + n_dep * cell_h + 6, label,
                black);
    }
  }
  return img;
}

}  // namespace engram
