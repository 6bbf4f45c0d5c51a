"""Text embeddings of prompts: shapes, normalisation, synonyms, token limits, the disk cache."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

from lmseg.prompts.compose import compose_prompts
from lmseg.prompts.embedding import (
    PromptTooLongError,
    TextEncoder,
    embed_prompts,
    encode_prompts,
    text_weights_digest,
)


class TinyClipText:
    """A random 1-layer, width-32 open_clip CLIP behind the TextEncoder protocol; counts calls."""

    context_length = 77

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = open_clip.model.CLIP(
            embed_dim=32,
            vision_cfg={
                "image_size": 32,
                "layers": 1,
                "width": 32,
                "patch_size": 16,
                "head_width": 16,
            },
            text_cfg={
                "context_length": 77,
                "vocab_size": 49408,
                "width": 32,
                "heads": 2,
                "layers": 1,
            },
        ).eval()
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer()
        self.calls = 0
        self.texts: list[str] = []

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        self.texts += texts
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model.encode_text(tokens)

    def text_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith("visual.")}


@pytest.fixture(scope="module")
def encoder() -> TinyClipText:
    return TinyClipText()


def test_protocol_and_shapes(encoder: TinyClipText, tmp_path: Path) -> None:
    assert isinstance(encoder, TextEncoder)
    prompts = compose_prompts(["wall", "sky", "bed "], mode="template", templates=["a {}", "{}!"])
    emb = embed_prompts(encoder, prompts, cache_dir=tmp_path)
    assert emb.shape == (3, 2, 32) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3, 2))
    ref = F.normalize(encoder.model.encode_text(encoder.tokenizer(["sky!"])), dim=-1)[0]
    torch.testing.assert_close(emb[1, 1], ref)
    # batch size does not change the result
    torch.testing.assert_close(
        embed_prompts(encoder, prompts, batch_size=2, use_cache=False), emb, rtol=1e-5, atol=1e-6
    )


def test_synonym_mean(encoder: TinyClipText) -> None:
    emb = encode_prompts(encoder, [[("a building", "a edifice"), "a building"]])
    with torch.no_grad():
        parts = F.normalize(
            encoder.model.encode_text(encoder.tokenizer(["a building", "a edifice"])), dim=-1
        )
    torch.testing.assert_close(emb[0, 0], F.normalize(parts.mean(0), dim=-1))
    torch.testing.assert_close(emb[0, 1], parts[0])


def test_cache_hit_and_invalidation(tmp_path: Path) -> None:
    enc = TinyClipText(seed=1)
    prompts = [["a wall", "a wall. It is white."], ["a sky", "a sky. It is blue."]]
    first = embed_prompts(enc, prompts, cache_dir=tmp_path)
    assert enc.calls == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert not list(tmp_path.glob("*.tmp"))

    again = embed_prompts(enc, prompts, cache_dir=tmp_path)
    assert enc.calls == 1  # served from the cache, encode_text not called
    torch.testing.assert_close(again, first)

    changed_prompt = [["a wall", "a wall. It is white."], ["a sky", "a sky. It is grey."]]
    embed_prompts(enc, changed_prompt, cache_dir=tmp_path)
    assert enc.calls == 2

    synonym_mode = [
        [("a wall", "a barrier"), "a wall. It is white."],
        ["a sky", "a sky. It is blue."],
    ]
    embed_prompts(enc, synonym_mode, cache_dir=tmp_path)
    assert enc.calls == 3

    with torch.no_grad():
        enc.model.ln_final.weight[0] += 0.5  # one text-tower weight changes
    changed = embed_prompts(enc, prompts, cache_dir=tmp_path)
    assert enc.calls == 4
    assert not torch.allclose(changed, first)
    assert len(list(tmp_path.glob("*.safetensors"))) == 4


def test_weights_digest_covers_every_tensor() -> None:
    a, b = TinyClipText(seed=2), TinyClipText(seed=2)
    assert text_weights_digest(a) == text_weights_digest(b)
    with torch.no_grad():
        b.model.text_projection[3, 4] += 1e-3
    assert text_weights_digest(a) != text_weights_digest(b)


def test_damaged_cache_is_recomputed(tmp_path: Path) -> None:
    enc = TinyClipText(seed=3)
    embed_prompts(enc, [["a cat"]], cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    cached.write_bytes(b"garbage")
    emb = embed_prompts(enc, [["a cat"]], cache_dir=tmp_path)
    assert enc.calls == 2 and emb.shape == (1, 1, 32)


def test_default_cache_dir_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LMSEG_CACHE", str(tmp_path))
    enc = TinyClipText(seed=4)
    embed_prompts(enc, [["a dog"]])
    assert len(list((tmp_path / "text").glob("*.safetensors"))) == 1


def test_too_long_prompt_names_the_class(tmp_path: Path) -> None:
    enc = TinyClipText(seed=5)
    long = "A photo of a bed  in the scene. It is " + "very " * 80 + "soft."
    prompts = [["a wall", "a wall"], ["a bed", long]]
    with pytest.raises(PromptTooLongError, match=r'class 1 \("bed "\): prompt of \d+ tokens') as e:
        embed_prompts(enc, prompts, cache_dir=tmp_path, class_names=["wall", "bed "])
    assert "very very" in str(e.value)
    with pytest.raises(PromptTooLongError, match=r"class 1: prompt"):
        encode_prompts(enc, prompts)
    assert enc.calls == 0
    emb = embed_prompts(enc, prompts, cache_dir=tmp_path, truncate=True)
    assert emb.shape == (2, 2, 32)
    truncated = enc.tokenizer([long])
    assert truncated[0, -1].item() == enc.tokenizer.eot_token_id  # open_clip keeps the end token


def test_rejects_ragged_prompts(encoder: TinyClipText) -> None:
    with pytest.raises(ValueError, match="same number P"):
        embed_prompts(encoder, [["a", "b"], ["c"]], use_cache=False)
    with pytest.raises(ValueError, match="no classes"):
        embed_prompts(encoder, [], use_cache=False)
