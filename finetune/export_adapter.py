"""Write a shippable copy of a trained LoRA adapter: fp16 weights, the training record, no checkpoints.

    python finetune/export_adapter.py runs/pilot/titles-listwise/train/static finetune/adapters/ml-100k-static

The copy loads wherever the original did (`adaptrec eval ... --adapter finetune/adapters/ml-100k-static`);
`adaptrec_prompts.backends.lora.export_adapter` is the library call and says what is kept.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from adaptrec_prompts.errors import AdaptRecError
    from adaptrec_prompts.backends.lora import export_adapter

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("adapter", help="the trained adapter folder (adapter_config.json, adapter_model.safetensors)")
    parser.add_argument("out", help="the folder to write (refused if it exists, unless --overwrite)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                        help="the weights' dtype in the copy (default: float16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    args = parser.parse_args(argv)
    try:
        out = export_adapter(args.adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except AdaptRecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({size / 1e6:.1f} MB, {args.dtype}): {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
