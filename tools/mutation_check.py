"""Plant deliberate bugs one at a time and check that the test suite catches each of them.

Every mutation below is a small, plausible bug: an exact snippet of one file, its replacement,
a one-line description and the test files that should catch it. The script copies the
repository (tracked and untracked, non-ignored files) into a scratch folder, applies one mutation
there, runs the named tests with ``-x -q`` and ``PYTHONPATH`` pointing at the scratch copy, and
records *caught* (a test failed or errored) or *missed* (every test passed). The working tree is
never modified. A snippet that is not found exactly once stops the run before any test starts,
so a moved snippet is noticed rather than skipped.

Run from the repository root::

    python tools/mutation_check.py                       # all mutations, one at a time
    python tools/mutation_check.py --only sliding-align-corners --only convert-prefix-match
    python tools/mutation_check.py --jobs 2              # two scratch copies in parallel
    python tools/mutation_check.py --check               # only verify that every snippet applies
    python tools/mutation_check.py --list

A full run writes ``tools/mutation_results.json`` and ``tools/mutation_results.md`` (a subset
run writes them only with ``--out``). Before the mutations, the union of the named test files
runs once unmodified (``--no-baseline`` skips it): a suite that already fails catches nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tools" / "mutation_results"


@dataclass(frozen=True)
class Mutation:
    """One deliberate bug: replace ``snippet`` (found exactly once in ``file``) by ``replacement``."""

    id: str
    file: str
    snippet: str
    replacement: str
    description: str
    tests: tuple[str, ...]


M = Mutation
MUTATIONS: list[Mutation] = [
    # -- cost volume ------------------------------------------------------------------------
    M("cost-image-unnormalised", "lmseg/cost_volume.py",
      "image = F.normalize(image_embedding, dim=1)", "image = image_embedding",
      "cosine cost without normalising the image features",
      ("tests/test_model.py",)),
    M("cost-text-unnormalised", "lmseg/cost_volume.py",
      "text = F.normalize(text_embedding, dim=-1)", "text = text_embedding",
      "cosine cost without normalising the text embeddings",
      ("tests/test_model.py",)),
    M("filter-by-mean", "lmseg/cost_volume.py",
      'best = rearrange(cost, "b p k h w -> b k (p h w)").amax(dim=-1)',
      'best = rearrange(cost, "b p k h w -> b k (p h w)").mean(dim=-1)',
      "class filtering ranks classes by mean instead of maximum similarity",
      ("tests/test_model.py",)),
    M("filtered-logit-value", "lmseg/cost_volume.py",
      "FILTERED_LOGIT = -100.0", "FILTERED_LOGIT = -10.0",
      "filtered classes get logit -10 instead of CAT-Seg's -100",
      ("tests/test_model.py", "tests/test_docs.py")),
    # -- spatial aggregation ----------------------------------------------------------------
    M("swin-no-shift", "lmseg/aggregation/spatial_aggregation.py",
      "for shift in (0, window_size // 2)", "for shift in (0, 0)",
      "second Swin block not shifted",
      ("tests/test_plain_paths.py",)),
    M("swin-roll-direction", "lmseg/aggregation/spatial_aggregation.py",
      "index = torch.roll(index, shifts=(-shift, -shift), dims=(0, 1))",
      "index = torch.roll(index, shifts=(shift, shift), dims=(0, 1))",
      "cyclic shift in the wrong direction",
      ("tests/test_plain_paths.py",)),
    M("swin-mask-value", "lmseg/aggregation/spatial_aggregation.py",
      "SHIFT_MASK_VALUE = -100.0", "SHIFT_MASK_VALUE = -1.0",
      "shifted-window mask -1 instead of CAT-Seg's -100",
      ("tests/test_aggregation.py", "tests/test_plain_paths.py")),
    M("swin-guidance-unnormalised", "lmseg/aggregation/spatial_aggregation.py",
      "guidance = self.guidance_norm(guidance).flatten(1, 2)",
      "guidance = guidance.flatten(1, 2)",
      "appearance guidance not LayerNorm'd before Q/K",
      ("tests/test_plain_paths.py",)),
    M("sdpa-scale", "lmseg/aggregation/common.py",
      "F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias)",
      "F.scaled_dot_product_attention(q4, k4, v4, attn_mask=bias, scale=1.0)",
      "window attention without the 1/sqrt(d) scale",
      ("tests/test_aggregation.py", "tests/test_plain_paths.py")),
    M("swin-mlp-norm", "lmseg/aggregation/spatial_aggregation.py",
      "return x + self.mlp(self.norm2(x))", "return x + self.mlp(self.norm1(x))",
      "Swin MLP after the first LayerNorm instead of the second (training path)",
      ("tests/test_plain_paths.py",)),
    # -- class aggregation ------------------------------------------------------------------
    M("linear-attention-bf16", "lmseg/aggregation/class_attention.py",
      "with torch.autocast(device_type=q.device.type, enabled=False):",
      "with torch.autocast(device_type=q.device.type, enabled=torch.is_autocast_enabled(q.device.type)):",
      "linear attention accumulates in bf16 under autocast instead of fp32",
      ("tests/test_aggregation.py",)),
    M("class-padding-count", "lmseg/aggregation/class_aggregation.py",
      "missing = self.pad_len - num_classes", "missing = self.pad_len - num_classes - 1",
      "one padding token too few",
      ("tests/test_plain_paths.py",)),
    M("class-pools-in-eval", "lmseg/aggregation/class_aggregation.py",
      "pool = runtime.class_pool_size", "pool = max(runtime.class_pool_size, 2)",
      "class aggregation pools whatever the runtime asks (at test time too)",
      ("tests/test_aggregation.py", "tests/test_plain_paths.py")),
    M("train-pool-ignored", "lmseg/train/trainer.py",
      "self.runtime = RuntimeOptions(class_pool_size=run.class_pool_size)",
      "self.runtime = RuntimeOptions()",
      "training steps ignore the recipe's class-aggregation pooling (CAT-Seg trains with 2x2)",
      ("tests/test_train_runtime.py",)),
    M("class-pool-align-corners", "lmseg/aggregation/class_aggregation.py",
      'y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=True)',
      'y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)',
      "pooled class attention upsampled without aligned corners (CAT-Seg aligns them)",
      ("tests/test_plain_paths.py",)),
    M("class-key-guidance-weight", "lmseg/aggregation/class_aggregation.py",
      "gk = F.linear(guidance, self.k.weight[:, d:], self.k.bias)",
      "gk = F.linear(guidance, self.q.weight[:, d:], self.k.bias)",
      "key guidance projected with the query weights",
      ("tests/test_plain_paths.py",)),
    M("class-head-mask", "lmseg/aggregation/class_attention.py",
      "block = torch.arange(heads * dim, device=device) // dim",
      "block = torch.arange(heads * dim, device=device) // (heads * dim)",
      "linear attention mixes heads (no block-diagonal mask)",
      ("tests/test_aggregation.py", "tests/test_plain_paths.py")),
    M("text-guidance-unnormalised", "lmseg/aggregation/aggregator.py",
      "text = self.text_projection(F.normalize(text_embedding.mean(dim=2), dim=-1))",
      "text = self.text_projection(text_embedding.mean(dim=2))",
      "text guidance: mean prompt embedding not renormalised",
      ("tests/test_model.py",)),
    # -- decoder ----------------------------------------------------------------------------
    M("decoder-norm-swap", "lmseg/aggregation/upsampling_decoder.py",
      "x = self.act(self.norm1(x))", "x = self.act(self.norm2(x))",
      "first decoder conv followed by the second GroupNorm",
      ("tests/test_plain_paths.py",)),
    M("decoder-last-chunk", "lmseg/aggregation/common.py",
      "out.narrow(dim, start, y.shape[dim]).copy_(y)",
      "out.narrow(dim, start, y.shape[dim]).copy_(y) if start + y.shape[dim] < size else None",
      "chunked blocks (the decoder, Swin, class aggregation) skip the last chunk at inference",
      ("tests/test_aggregation.py", "tests/test_model.py")),
    M("decoder-guidance-split", "lmseg/aggregation/upsampling_decoder.py",
      "x = F.conv2d(x, self.conv1.weight[:, : x.shape[1]], padding=1)",
      "x = F.conv2d(x, self.conv1.weight[:, -x.shape[1] :], padding=1)",
      "decoder conv takes the cost channels' weights from the guidance end",
      ("tests/test_plain_paths.py",)),
    # -- fusion -----------------------------------------------------------------------------
    M("fusion-swapped-weights", "lmseg/fusion/weighted_fusion.py",
      "return w * clip_features + (1.0 - w) * sam_features",
      "return w * sam_features + (1.0 - w) * clip_features",
      "fusion weight applied to SAM instead of CLIP",
      ("tests/test_model.py",)),
    M("fusion-adaptive-init", "lmseg/fusion/weighted_fusion.py",
      "nn.init.zeros_(last.weight)", "nn.init.normal_(last.weight, std=0.1)",
      "adaptive fusion does not start at w = init",
      ("tests/test_model.py",)),
    M("sam-adapter-align-corners", "lmseg/fusion/spatial_adapter.py",
      'features = F.interpolate(features, size=grid, mode="bilinear", align_corners=False)',
      'features = F.interpolate(features, size=grid, mode="bilinear", align_corners=True)',
      "SAM features resized with aligned corners",
      ("tests/test_model.py",)),
    M("fused-guidance-is-clip", "lmseg/model.py",
      "x = self.aggregator(self.cost_volume(cost), embedding, text, inplace=True, runtime=runtime)",
      "x = self.aggregator(self.cost_volume(cost), features.vision_language_embedding, text, "
      "inplace=True, runtime=runtime)",
      "appearance guidance from the CLIP features instead of the fused ones",
      ("tests/test_model.py",)),
    # -- encoders ---------------------------------------------------------------------------
    M("clip-dense-residual", "lmseg/encoders/clip.py",
      "y = block.ls_1(attn.out_proj(value)) + x[:, :1]", "y = block.ls_1(attn.out_proj(value)) + x",
      "dense last block keeps the token residual instead of CAT-Seg's CLS residual",
      ("tests/test_encoders.py",)),
    M("clip-guidance-layer", "lmseg/encoders/clip.py",
      "if i in self.guidance_layers:", "if i + 1 in self.guidance_layers:",
      "decoder guidance taken one block early",
      ("tests/test_encoders.py",)),
    M("clip-normalisation", "lmseg/encoders/clip.py",
      "return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)",
      "return (images - self.mean.to(images.dtype)) * self.std.to(images.dtype)",
      "CLIP input multiplied by the std instead of divided",
      ("tests/test_encoders.py",)),
    M("clip-posembed-bilinear", "lmseg/encoders/clip.py",
      'patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)',
      'patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)',
      "positional embedding resized bilinearly instead of bicubically",
      ("tests/test_encoders.py",)),
    M("clip-text-normalised", "lmseg/encoders/clip.py",
      "return self.model.encode_text(tokens.to(self.model.token_embedding.weight.device))",
      "return self.model.encode_text(tokens.to(self.model.token_embedding.weight.device), normalize=True)",
      "encode_text returns normalised embeddings (documented as unnormalised)",
      ("tests/test_encoders.py",)),
    M("sam-normalisation", "lmseg/encoders/base.py",
      "return (images - mean.to(images.dtype)) / std.to(images.dtype)",
      "return images - mean.to(images.dtype)",
      "SAM (and SAM 2, DINOv2) input not divided by the pixel std",
      ("tests/test_encoders.py",)),
    # -- converter --------------------------------------------------------------------------
    M("convert-prefix-match", "lmseg/convert.py",
      "match = re.fullmatch(pattern, key)", "match = re.match(pattern, key)",
      "rename rules match by prefix: an extra key overwrites a known tensor",
      ("tests/test_convert.py",)),
    M("convert-class-norm-swap", "lmseg/convert.py",
      r'''(AGG + r"layers\.(\d+)\.attention\.(norm1|norm2)\.(.*)", r"aggregator.layers.\1.classes.\2.\3",
     "class-aggregation LayerNorms"),''',
      r'''(AGG + r"layers\.(\d+)\.attention\.norm1\.(.*)", r"aggregator.layers.\1.classes.norm2.\2", ""),
    (AGG + r"layers\.(\d+)\.attention\.norm2\.(.*)", r"aggregator.layers.\1.classes.norm1.\2", ""),''',
      "class block's norm1 and norm2 swapped (same shapes)",
      ("tests/test_convert.py",)),
    M("convert-qkv-order", "lmseg/convert.py",
      'torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)',
      'torch.cat([parts["k"], parts["q"], parts["v"]], dim=0)',
      "CLIP attention packed k;q;v instead of q;k;v",
      ("tests/test_convert.py",)),
    M("convert-swin-block-swap", "lmseg/convert.py",
      r'''(AGG + r"layers\.(\d+)\.swin_block\.block_(\d)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(.*)",''',
      r'''(AGG + r"layers\.(\d+)\.swin_block\.block_1\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(.*)",
     r"aggregator.layers.\1.spatial.blocks.1.\2.\3", ""),
    (AGG + r"layers\.(\d+)\.swin_block\.block_2\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(.*)",
     r"aggregator.layers.\1.spatial.blocks.0.\2.\3", ""),
    (AGG + r"layers\.(\d+)\.swin_block\.block_(\d)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(.*)",''',
      "norms and MLPs of the plain and shifted Swin blocks swapped (same shapes)",
      ("tests/test_convert.py",)),
    M("convert-unused-mask", "lmseg/convert.py",
      r'(AGG + r"layers\.\d+\.swin_block\.block_\d\.attn_mask",',
      r'(AGG + r"layers\.\d+\.swin_block\.block_1\.attn_mask",',
      "the shifted block's attention-mask buffer is no longer an expected-unused key",
      ("tests/test_convert.py",)),
    # -- segmenter --------------------------------------------------------------------------
    M("sliding-align-corners", "lmseg/segmenter.py",
      'part = F.interpolate(logits, size=(kernel, kernel), mode="bilinear", align_corners=False)',
      'part = F.interpolate(logits, size=(kernel, kernel), mode="bilinear", align_corners=True)',
      "sliding window: window logits upsampled with aligned corners",
      ("tests/test_segmenter.py",)),
    M("sliding-coverage", "lmseg/segmenter.py",
      "coverage[:, y : y + kernel, x : x + kernel] += 1",
      "coverage[:, y : y + kernel, x : x + kernel] = 1",
      "sliding window: overlaps summed instead of averaged",
      ("tests/test_segmenter.py",)),
    M("sliding-window-order", "lmseg/segmenter.py",
      "corners = [(y, x) for y in starts for x in starts]",
      "corners = [(x, y) for y in starts for x in starts]",
      "sliding window: windows put back transposed",
      ("tests/test_segmenter.py",)),
    M("whole-image-softmax", "lmseg/segmenter.py",
      "probs = part[0].sigmoid()",
      "probs = part[0].softmax(0)",
      "whole-image probabilities by softmax instead of CAT-Seg's sigmoid",
      ("tests/test_segmenter.py",)),
    M("upsample-align-corners", "lmseg/label_maps.py",
      "centre = torch.arange(n_out, dtype=dtype) + 0.5",
      "centre = torch.arange(n_out, dtype=dtype) + 0.0",
      "label maps upsampled without align_corners=False's half-pixel offset",
      ("tests/test_segmenter.py", "tests/test_io_label_maps.py")),
    M("cli-sliding-ignored", "lmseg/cli/predict.py",
      "        sliding_window=args.sliding_window,\n        runtime=runtime_from_args(args),",
      "        runtime=runtime_from_args(args),",
      "lmseg predict --sliding-window runs whole-image inference",
      ("tests/test_cli.py",)),
    M("cli-exact-ignored", "lmseg/cli/common.py",
      "        top_k = None\n", "        pass\n",
      "lmseg predict --exact keeps class filtering",
      ("tests/test_cli.py",)),
    # -- roles, runtime, loading -------------------------------------------------------------
    M("softmax-padding-count", "lmseg/aggregation/class_attention.py",
      "bias = _padding_bias(length, math.log(extra_count), q.device, qh.dtype)",
      "bias = _padding_bias(length, 0.0, q.device, qh.dtype)",
      "softmax class attention counts CAT-Seg's pad_len - K identical padding tokens once",
      ("tests/test_aggregation.py",)),
    M("v1-spatial-names", "lmseg/checkpoint.py",
      '("sam.", "spatial_encoder.")', '("sam.", "sam.")',
      "format-1 checkpoints: SAM weights not renamed to the spatial encoder's",
      ("tests/test_checkpoint.py",)),
    M("header-shapes-unchecked", "lmseg/factory.py",
      "    check_shapes(shapes, header.shapes, source=str(header.path), model_name=config.name)",
      "    pass",
      "load_model builds a checkpoint's model before comparing its shapes with the file's",
      ("tests/test_checkpoint.py",)),
    M("catseg-pad-colour", "lmseg/model.py",
      "mean = torch.tensor(self.vision_language_encoder.pixel_mean)", "mean = torch.zeros(3)",
      "CAT-Seg preprocessing pads with black instead of the colour that normalises to zero",
      ("tests/test_catseg_preprocessing.py",)),
    M("config-options-unchecked", "lmseg/registry.py",
      "        unknown = sorted(given - set(known))", "        unknown = []",
      "a config section's unknown options are not refused",
      ("tests/test_checkpoint.py",)),
    M("tiny-not-seeded", "lmseg/factory.py",
      "        seed = TINY_SEED", "        seed = None",
      "tiny random variants differ from run to run",
      ("tests/test_model.py",)),
    M("maskclip-residual", "lmseg/encoders/clip.py",
      "            return block.ls_1(attn.out_proj(value))",
      "            return block.ls_1(attn.out_proj(value)) + x[:, :1]",
      "MaskCLIP's dense path keeps CAT-Seg's CLS residual",
      ("tests/test_training_free.py",)),
    # -- training ---------------------------------------------------------------------------
    M("resume-rng", "lmseg/train/trainer.py",
      'restore_rng_state(state["rng"][self.dist.rank])', "pass",
      "resume does not restore the RNG states",
      ("tests/test_trainer.py",)),
    M("resume-epoch-start", "lmseg/train/trainer.py",
      'self.position = DataPosition(int(data["epoch"]), int(data["index"]))',
      'self.position = DataPosition(int(data["epoch"]), 0)',
      "resume restarts the data order at the beginning of the epoch",
      ("tests/test_trainer.py",)),
    M("qv-mask-not-restored", "lmseg/train/trainer.py",
      "self.qv_mask.restore()\n", "\n",
      "training step lets AdamW move the frozen CLIP key rows",
      ("tests/test_training_strict.py",)),
    M("loss-align-corners", "lmseg/train/loss.py",
      'logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)',
      'logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=True)',
      "loss upsamples logits with aligned corners",
      ("tests/test_loss.py",)),
    M("loss-exclude-mode", "lmseg/train/loss.py",
      "return F.binary_cross_entropy_with_logits(logits[valid], onehot[valid])",
      "return F.binary_cross_entropy_with_logits(logits, onehot)",
      "ignore_mode='exclude' still counts ignored pixels",
      ("tests/test_loss.py",)),
    M("ddp-no-grad-average", "lmseg/train/trainer.py",
      "scaled = loss / solver.grad_accum", "scaled = loss * self.dist.world_size / solver.grad_accum",
      "each process's loss scaled by the world size (gradients summed, not averaged)",
      ("tests/test_ddp.py",)),
    # -- prompts ----------------------------------------------------------------------------
    M("prompt-template-period", "lmseg/prompts/templates.py",
      'CATSEG_TEMPLATE = "A photo of a {} in the scene"',
      'CATSEG_TEMPLATE = "A photo of a {} in the scene."',
      "CAT-Seg's template gains a final period",
      ("tests/test_prompts_compose.py",)),
    M("prompt-separator", "lmseg/prompts/templates.py",
      'separator = " " if head.endswith(_TERMINAL_PUNCTUATION) else ". "',
      'separator = " "',
      "attribute sentences appended without closing the template sentence",
      ("tests/test_prompts_compose.py",)),
    M("prompt-synonym-renormalise", "lmseg/prompts/embedding.py",
      "flat.append(F.normalize(table[idx].mean(dim=0), dim=-1))",
      "flat.append(table[idx].mean(dim=0))",
      "synonym mean of prompt embeddings not renormalised",
      ("tests/test_prompts_embedding.py",)),
    M("training-prompts-unnormalised", "lmseg/train/trainer.py",
      "table = F.normalize(clip.encode_text(self.tokens).float(), dim=-1)",
      "table = clip.encode_text(self.tokens).float()",
      "training prompt embeddings not normalised",
      ("tests/test_trainer.py",)),
    # -- metrics ----------------------------------------------------------------------------
    M("metrics-no-reduce", "lmseg/eval/metrics.py",
      "dist.all_reduce(self.confusion_matrix, op=dist.ReduceOp.SUM, group=group)", "pass",
      "metrics' cross-process reduction does nothing",
      ("tests/test_ddp.py",)),
    M("metrics-union", "lmseg/eval/metrics.py",
      "union = pos_gt + pos_pred - tp", "union = pos_gt + pos_pred",
      "IoU denominator counts true positives twice",
      ("tests/test_metrics.py",)),
    M("metrics-transposed", "lmseg/eval/metrics.py",
      "counts = torch.bincount(label * k + pred, minlength=k * k)",
      "counts = torch.bincount(pred * k + label, minlength=k * k)",
      "confusion matrix transposed (rows are predictions)",
      ("tests/test_metrics.py",)),
]


# -- running --------------------------------------------------------------------------------
@dataclass
class Result:
    id: str
    file: str
    description: str
    tests: list[str]
    status: str  # caught | missed | snippet not found | error
    caught_by: str
    seconds: float


def check_snippets(mutations: list[Mutation], root: Path) -> list[str]:
    """Problems with the list: unknown files or tests, snippets not found exactly once."""
    problems = []
    ids = [m.id for m in mutations]
    for dup in sorted({i for i in ids if ids.count(i) > 1}):
        problems.append(f"{dup}: id used more than once")
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.id}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.snippet)
        if count != 1:
            problems.append(f"{m.id}: snippet found {count} times in {m.file} (expected once): {m.snippet[:70]!r}")
        if m.snippet == m.replacement:
            problems.append(f"{m.id}: replacement equals the snippet")
        problems += [f"{m.id}: test file {t} does not exist" for t in m.tests if not (root / t).is_file()]
    return problems


def repository_files(root: Path) -> list[str]:
    """Tracked and untracked-but-not-ignored files (what a fresh checkout plus new work holds)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_copy(root: Path, files: list[str], parent: Path) -> Path:
    copy = Path(tempfile.mkdtemp(prefix="copy-", dir=parent))
    for name in files:
        target = copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    return copy


def scratch_env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc between a mutation and its revert
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def check_import_location(copy: Path) -> None:
    """The scratch copy's lmseg must be the one imported (not an installed one)."""
    out = subprocess.run(
        [sys.executable, "-c", "import lmseg; print(lmseg.__file__)"],
        cwd=copy, env=scratch_env(copy), capture_output=True, text=True, check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"error: the scratch copy imports lmseg from {out}, not from {copy}")


def run_pytest(copy: Path, tests: list[str], timeout: float) -> tuple[int, str, float]:
    start = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(command, cwd=copy, env=scratch_env(copy), capture_output=True, text=True,
                              timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - start
    except subprocess.TimeoutExpired as error:
        text = (error.stdout or b"").decode() if isinstance(error.stdout, bytes) else (error.stdout or "")
        return -1, text, time.perf_counter() - start


def first_failure(output: str) -> str:
    for line in output.splitlines():
        match = re.match(r"(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    return ""


def run_mutation(m: Mutation, copies: queue.Queue[Path], timeout: float) -> Result:
    copy = copies.get()
    path = copy / m.file
    original = path.read_text(encoding="utf-8")
    try:
        if original.count(m.snippet) != 1:
            return Result(m.id, m.file, m.description, list(m.tests), "snippet not found", "", 0.0)
        path.write_text(original.replace(m.snippet, m.replacement), encoding="utf-8")
        rc, output, seconds = run_pytest(copy, list(m.tests), timeout)
    finally:
        path.write_text(original, encoding="utf-8")
        copies.put(copy)
    if rc == 0:
        status, by = "missed", ""
    elif rc == -1:
        status, by = "caught", f"timeout after {timeout:.0f} s"
    elif rc in (1, 2):  # tests failed / collection or import error
        status, by = "caught", first_failure(output) or output.strip().splitlines()[-1][:120]
    else:  # 3 internal error, 4 usage error, 5 no tests collected: the check itself is broken
        status, by = "error", f"pytest exit status {rc}: " + output.strip().splitlines()[-1][:120]
    return Result(m.id, m.file, m.description, list(m.tests), status, by, round(seconds, 1))


def git_state(root: Path) -> dict[str, str | bool]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def markdown(results: list[Result], meta: dict) -> str:
    caught = sum(r.status == "caught" for r in results)
    lines = [
        "# Mutation check",
        "",
        f"{caught} of {len(results)} deliberate bugs caught ({100 * caught / max(1, len(results)):.0f} %), "
        f"{meta['total_seconds']:.0f} s with {meta['jobs']} job(s) on {meta['machine']['cpus']} CPUs "
        f"({meta['generated']}, commit {str(meta['source']['commit'])[:10]}"
        f"{' + uncommitted changes' if meta['source']['dirty'] else ''}).",
        "",
        f"Command: `{meta['command']}`",
        "",
        "| id | file | bug | tests run | result | caught by | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tests = ", ".join(Path(t).name for t in r.tests)
        by = r.caught_by.replace("|", "\\|")
        lines.append(f"| {r.id} | {r.file} | {r.description} | {tests} | {r.status} | {by} | {r.seconds} |")
    return "\n".join(lines) + "\n"


def print_table(results: list[Result]) -> None:
    width = max(len(r.id) for r in results)
    for r in results:
        print(f"{r.id:<{width}}  {r.status:<8}  {r.seconds:6.1f} s  {r.caught_by}")
    caught = sum(r.status == "caught" for r in results)
    print(f"\n{caught} of {len(results)} caught ({100 * caught / max(1, len(results)):.1f} %)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="ID",
                        help="run this mutation (repeatable; comma-separated lists allowed)")
    parser.add_argument("--jobs", type=int, default=1, help="scratch copies run in parallel (1)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation (900)")
    parser.add_argument("--check", action="store_true", help="only check that every snippet applies")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmodified run")
    parser.add_argument("--out", type=Path, help="results path without suffix (default for full "
                        "runs: tools/mutation_results)")
    args = parser.parse_args(argv)

    selected = MUTATIONS
    if args.only:
        wanted = [i for item in args.only for i in item.split(",") if i]
        unknown = sorted(set(wanted) - {m.id for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation id(s) {unknown}; see --list")
        selected = [m for m in MUTATIONS if m.id in wanted]
    if args.list:
        for m in selected:
            print(f"{m.id:<30} {m.file:<45} {m.description}")
        return 0
    problems = check_snippets(selected, ROOT)
    if problems:
        print("error: the mutation list does not apply to this tree:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 2
    if args.check:
        print(f"all {len(selected)} snippets found exactly once")
        return 0

    start = time.perf_counter()
    files = repository_files(ROOT)
    with tempfile.TemporaryDirectory(prefix="lmseg-mutations-") as scratch:
        copies: queue.Queue[Path] = queue.Queue()
        for _ in range(max(1, args.jobs)):
            copies.put(make_copy(ROOT, files, Path(scratch)))
        first = copies.get()
        check_import_location(first)
        if not args.no_baseline:
            union = sorted({t for m in selected for t in m.tests})
            rc, output, seconds = run_pytest(first, union, args.timeout * 2)
            if rc != 0:
                print(output[-3000:], file=sys.stderr)
                print(f"error: the unmodified tests fail (exit {rc}); fix them first", file=sys.stderr)
                return 2
            print(f"baseline: {len(union)} test files pass unmodified ({seconds:.0f} s)")
        copies.put(first)
        with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(run_mutation, m, copies, args.timeout) for m in selected]
            results = []
            for m, future in zip(selected, futures, strict=True):
                result = future.result()
                results.append(result)
                print(f"  {m.id}: {result.status} ({result.seconds:.1f} s)", flush=True)
    total = time.perf_counter() - start

    print()
    print_table(results)
    out = args.out if args.out is not None else (RESULTS if not args.only else None)
    if out is not None:
        meta = {
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python tools/mutation_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "source": git_state(ROOT),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "jobs": max(1, args.jobs),
            "total_seconds": round(total, 1),
        }
        caught = sum(r.status == "caught" for r in results)
        report = {**meta, "caught": caught, "total": len(results),
                  "mutations": [asdict(r) for r in results]}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(markdown(results, meta), encoding="utf-8")
        print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    bad = [r for r in results if r.status in ("error", "snippet not found")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
