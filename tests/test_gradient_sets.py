"""benchmarks/gradient_sets.txt, the one definition of the benchmark's gradient
sets, and its plain-Python reader (benchmarks/gradient_sets.py).

The expected facts below were computed from the definitions the file replaced
(`set_shapes` / `bert_like_shapes` in python/fixed_loss_scale/bench.py at
commit 1b5ddd7) before they were deleted: tensor counts, element totals and a
few shapes, not the lists themselves, so that a slip in the file shows up here.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import gradient_sets  # noqa: E402  pylint: disable=wrong-import-position

# (set, variant): (tensors, elements), from the pre-split bench.py.
PRE_SPLIT_SIZES = {
    ("tiny", "full"): (100, 25_600),
    ("tiny", "quick"): (20, 5_120),
    ("many_small", "full"): (400, 6_994_432),
    ("many_small", "quick"): (40, 149_268),
    ("bert_like", "full"): (195, 87_753_216),
    ("bert_like", "quick"): (51, 160_576),
    ("few_large", "full"): (8, 33_554_432),
    ("few_large", "quick"): (8, 524_288),
}
# Added after the split: GPT-2 small's tensors, token embedding shrunk to 8,000 rows.
LATER_SIZES = {
    ("gpt2_like", "full"): (148, 91_986_432),
    ("gpt2_like", "quick"): (16, 60_608),
}


def elements(shapes):
  return sum(math.prod(s) for s in shapes)


def test_file_parses_and_every_set_has_both_variants():
  sets = gradient_sets.read()
  assert sorted(sets) == ["bert_like", "few_large", "gpt2_like", "many_small", "tiny"]
  for name, variants in sets.items():
    assert sorted(variants) == ["full", "quick"], name
    for variant, shapes in variants.items():
      assert shapes, (name, variant)
      assert all(isinstance(d, int) and d > 0 for s in shapes for d in s), (name, variant)


@pytest.mark.parametrize("name,variant", sorted(PRE_SPLIT_SIZES))
def test_sets_match_the_pre_split_definitions(name, variant):
  shapes = gradient_sets.set_shapes(name, variant == "quick")
  assert (len(shapes), elements(shapes)) == PRE_SPLIT_SIZES[(name, variant)]


@pytest.mark.parametrize("name,variant", sorted(LATER_SIZES))
def test_later_sets_sizes(name, variant):
  shapes = gradient_sets.set_shapes(name, variant == "quick")
  assert (len(shapes), elements(shapes)) == LATER_SIZES[(name, variant)]


def test_gpt2_like_layout():
  """GPT-2 small with an 8,000-row token embedding: 2 embeddings, 12 layers of
  12 tensors, each the same, the final LayerNorm."""
  shapes = gradient_sets.set_shapes("gpt2_like", quick=False)
  assert shapes[:2] == [(8000, 768), (1024, 768)] and shapes[-2:] == [(768,)] * 2
  layers = [shapes[2 + 12 * k:2 + 12 * (k + 1)] for k in range(12)]
  assert layers[0] == ([(768,)] * 2 + [(768, 2304), (2304,), (768, 768)] + [(768,)] * 3 +
                       [(768, 3072), (3072,), (3072, 768), (768,)])
  assert all(layer == layers[0] for layer in layers)


def test_bert_like_layout():
  """BERT-base with a 3,000-row word embedding: 3 embeddings, then 12 layers of
  16 tensors, each the same (pre-split bert_like_shapes)."""
  shapes = gradient_sets.set_shapes("bert_like", quick=False)
  assert shapes[:3] == [(3000, 768), (512, 768), (2, 768)]
  layers = [shapes[3 + 16 * k:3 + 16 * (k + 1)] for k in range(12)]
  assert layers[0] == ([(768, 768), (768,)] * 4 + [(768,)] * 2 +
                       [(768, 3072), (3072,), (3072, 768), (768,)] + [(768,)] * 2)
  assert all(layer == layers[0] for layer in layers)


def test_fixed_size_sets():
  assert gradient_sets.set_shapes("tiny", quick=False) == [(256,)] * 100
  assert gradient_sets.set_shapes("tiny", quick=True) == [(256,)] * 20
  assert gradient_sets.set_shapes("few_large", quick=False) == [(1 << 22,)] * 8
  assert gradient_sets.set_shapes("few_large", quick=True) == [(1 << 16,)] * 8


@pytest.mark.parametrize("quick,count,high", [(False, 400, 65536), (True, 40, 8192)])
def test_many_small_is_the_seeded_draw(quick, count, high):
  """The written-out sizes are the draw the file's comment names: log-uniform
  in [1024, high), numpy.random.default_rng(0), truncated to int."""
  rng = np.random.default_rng(0)
  drawn = np.exp(rng.uniform(np.log(1024), np.log(high), size=count)).astype(int)
  assert gradient_sets.set_shapes("many_small", quick) == [(int(s),) for s in drawn]


def test_shape_syntax():
  text = "# comment\n\n  a full 768x3072 768 256*3 2x3x4*2\na quick 1\n"
  assert gradient_sets.parse(text) == {"a": {
      "full": [(768, 3072), (768,), (256,), (256,), (256,), (2, 3, 4), (2, 3, 4)],
      "quick": [(1,)]}}


@pytest.mark.parametrize("text,message", [
    ("a full 1\n", "no quick variant"),
    ("a full 1\na quick 1\na full 2\n", "defined twice"),
    ("a slow 1\n", "variant 'slow'"),
    ("a full\n", "<set_name> <variant> <shape>"),
    ("a full 0x3\na quick 1\n", "not a positive shape"),
    ("a full 3*0\na quick 1\n", "not a positive shape"),
    ("a full 3x\na quick 1\n", "<text>:1: not a shape"),
    ("a full +3\na quick 1\n", "not a shape"),
])
def test_malformed_lines_are_refused(text, message):
  with pytest.raises(ValueError, match=message.replace("*", r"\*")):
    gradient_sets.parse(text)


def test_readers_on_gpu_machines_need_no_tensorflow_or_numpy():
  """gpu_torch.py runs where only PyTorch is installed: neither it nor the
  reader may import TensorFlow or numpy, as a module or as a script."""
  check = ("import sys; import benchmarks.gpu_torch as g; g.element_counts(); "
           "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
           "('tensorflow', 'numpy', 'fixed_loss_scale')); assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True,
                        timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  script = subprocess.run([sys.executable, os.path.join("benchmarks", "gpu_torch.py")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
  assert script.returncode == 0, script.stderr
