"""Build a prompt bank for your own classes, validate it, compose prompts and embed them.

Writes ``outputs/prompt_bank/kitchen.json`` in lmseg's bank schema (by hand here; ``lmseg
prompts generate`` asks an LLM for it), validates it, shows the LMSeg prompts and embeds them
with the tiny model's CLIP text tower (cached on disk: the second call is a cache hit).

    python examples/prompt_bank.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lmseg
from lmseg.prompts import compose_prompts, embed_prompts, load_bank, validate_bank
from lmseg.prompts.bank import ClassAttributes, PromptBank, Provenance


def main() -> int:
    out = Path("outputs/prompt_bank")
    bank = PromptBank(
        vocabulary="kitchen",
        provenance=Provenance(model="hand-written example", prompt="describe colour, shape, texture",
                              created="2026-11-25"),
        classes=[
            ClassAttributes(name="kettle", color="It is usually steel, white or black.",
                            shape="It is a squat jug with a spout and a handle.",
                            texture="It has a glossy metal or plastic surface."),
            ClassAttributes(name="toaster", color="It is chrome, white or pastel coloured.",
                            shape="It is a small box with two slots on top.",
                            texture="It has smooth brushed metal sides."),
        ],
    )
    path = out / "kitchen.json"
    bank.save(path)
    problems = validate_bank(load_bank(path), class_names=["kettle", "toaster"])
    print(f"wrote {path}; validation problems: {problems or 'none'}")

    prompts = compose_prompts(["kettle", "toaster"], bank=bank, mode="attributes")
    for line in prompts[0]:
        print("  ", line)

    model = lmseg.create_model("lmseg_tiny")
    for attempt in ("computed", "cached"):
        start = time.perf_counter()
        text = embed_prompts(model.text_encoder, prompts, cache_dir=out / "cache")
        print(f"{attempt}: embeddings {tuple(text.shape)} (K, P, D) in {time.perf_counter() - start:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
