"""What one training step of the Trainer changes, and what it must leave alone (CAT-Seg's recipe).

CAT-Seg fine-tunes only the query and value projections of CLIP's attention blocks. lmseg keeps
open_clip's packed ``in_proj_weight`` (q; k; v rows), so after every AdamW step the trainer
writes the frozen key rows (and the query rows of the dense last vision block, which never uses
them) back: a step must move q and v rows and nothing else of CLIP.
"""

from __future__ import annotations

import torch
from test_trainer import seeded_model, tiny_config, tiny_dataset

from lmseg.train.trainer import Trainer


def test_a_training_step_moves_only_qv_rows_of_clip(tmp_path):
    # CLIP at the full learning rate and a large weight decay: AdamW's decay alone would move
    # the frozen rows (their gradients are zero) unless the trainer writes them back.
    config = tiny_config(tmp_path, "solver.lr=1e-2", "solver.vision_language_lr_multiplier=1.0",
                         "solver.weight_decay=0.5")
    trainer = Trainer(config, model=seeded_model(), dataset=tiny_dataset())
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.step()
    last = len(model.vision_language_encoder.model.visual.transformer.resblocks) - 1
    for name, p in model.named_parameters():
        old = before[name]
        if not name.startswith("vision_language_encoder."):
            assert not torch.equal(p, old), f"{name} did not train"
            continue
        if not name.endswith("attn.in_proj_weight"):
            assert torch.equal(p, old), f"frozen CLIP parameter {name} changed"
            continue
        w = p.shape[0] // 3
        dense_last = name.startswith(f"vision_language_encoder.model.visual.transformer.resblocks.{last}.")
        assert torch.equal(p[w : 2 * w], old[w : 2 * w]), f"key rows of {name} changed"
        assert not torch.equal(p[2 * w :], old[2 * w :]), f"value rows of {name} did not train"
        assert torch.equal(p[:w], old[:w]) == dense_last, f"query rows of {name}"
