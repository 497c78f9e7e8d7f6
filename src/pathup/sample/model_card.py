"""The model card (``README.md``) that ``PathUpPipeline.save_pretrained`` writes beside a model.

It says what the model is (a latent diffusion model for pathology images that PathUp upscales to large
images by patch-wise timestep tracking, PathUp section 3.2, Algorithm 1), its classes and their prompts
(the prompt table of ``pathup.json``, section 3.1), its physical scale when known, and how to load it.
"""

from __future__ import annotations

from typing import Any


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def model_card(pipe: Any, meta: dict[str, Any]) -> str:
    """Markdown with a Hugging Face front matter for ``pipe`` (a ``PathUpPipeline``) and its ``pathup.json``."""
    ldm = pipe.ldm
    table = getattr(ldm, "prompts", None)
    name = str(pipe.model_name)
    resolution = int(ldm.resolution)
    lines = ["---", "library_name: diffusers", "pipeline_tag: text-to-image",
             "tags:", "- pathup", "- pathology", "- histopathology", "- latent-diffusion", "---", "",
             f"# PathUp model: {name}", "",
             "A latent diffusion model (Stable Diffusion layout, diffusers format) trained with PathUp for "
             "histopathology image synthesis. It generates class-conditioned overviews at its training "
             f"resolution of {resolution} x {resolution} pixels; PathUp upscales them to large images by "
             "patch-wise timestep tracking (PathUp section 3.2, Algorithm 1).", ""]
    if meta.get("size"):
        lines += [f"Architecture size: `{meta['size']}`.", ""]
    mpp = meta.get("mpp") or {}
    if any(v is not None for v in mpp.values()):
        lines += ["## Physical scale", "", "| level | microns per pixel |", "|---|---|"]
        lines += [f"| {level} | {'unknown' if v is None else f'{v:g}'} |" for level, v in mpp.items()]
        lines += ["", "A generated image of width W has overview MPP x overview width / W microns per pixel.", ""]
    lines += ["## Classes and prompts", ""]
    if table is None:
        lines += ["This model has no prompt table: give your own prompt (`prompt=...`).", ""]
    else:
        levels = list(table.levels) or [None]
        header = ["class"] + [f"{lv} prompt" if lv else "prompt" for lv in levels]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cls in table.classes:
            lines.append("| " + " | ".join([_cell(cls)] + [_cell(table.prompt(cls, lv)) for lv in levels]) + " |")
        lines.append("")
    example = table.classes[0] if table is not None else "CLASS"
    lines += ["## How to load", "", "With PathUp (`pip install pathup`):", "", "```python",
              "from pathup.sample import PathUpPipeline", "",
              'pipe = PathUpPipeline.from_pretrained("PATH_OR_HUB_ID")',
              f'out = pipe(class_name={example!r}, size=(2048, 2048), seed=0)',
              'out.images[0].save("large.png")', "```", "",
              "or from the command line:", "", "```",
              f"pathup generate --model PATH_OR_HUB_ID --class {_shell(example)} --size 2048 --out generated",
              "```", "",
              "The folder is also a plain Stable Diffusion checkpoint: "
              "`diffusers.StableDiffusionPipeline.from_pretrained(\"PATH_OR_HUB_ID\")` loads it (the prompt "
              "table is in `pathup.json`).", ""]
    return "\n".join(lines)


def _shell(text: str) -> str:
    import shlex

    return shlex.quote(text)
