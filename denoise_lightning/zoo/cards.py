"""Model cards of the zoo as Markdown: one page per model (``<name>.md`` beside its weights) and the zoo table
(``docs/zoo.md``), both rendered from the ``"card"`` of the weights JSON (:mod:`~denoise_lightning.zoo.build`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REFERENCE_NOTES = {
    "DnCNN-S": "published DnCNN-S weights, 17 layers, one model per sigma, each tested at its own sigma",
    "DnCNN-B": "published DnCNN-B weights, 20 layers, blind (sigma 0-55)",
    "BM3D": "BM3D (bm3d package, profile np), given the true sigma",
    "VST-BM3D": "Anscombe VST + BM3D + exact unbiased inverse, given the true level",
}


def _level_label(level: str) -> str:
    """``sigma25`` -> ``sigma 25``, ``peak4_sigma10`` -> ``peak 4, sigma 10``."""
    parts = []
    for part in level.split("_"):
        key = part.rstrip("0123456789.")
        parts.append(f"{key} {part[len(key):]}")
    return ", ".join(parts)


def _cell(row: dict[str, Any] | None) -> str:
    return "-" if not row else f"{row['psnr']:.2f} / {row['ssim']:.4f}"


def _versions(entry: dict[str, Any]) -> str:
    versions = entry.get("versions") or {}
    wanted = ("denoise-lightning", "torch", "lightning", "torchmetrics", "numpy", "python")
    return ", ".join(f"{key} {versions[key]}" for key in wanted if key in versions)


def _machine(entry: dict[str, Any]) -> str:
    machine = entry.get("machine") or {}
    if machine.get("gpu"):
        return f"{machine['gpu']} (CUDA), {machine.get('cpu_count')} CPU cores on the machine"
    return f"CPU {machine.get('cpu', '?')}, {machine.get('torch_threads', '?')} torch thread(s)"


def _source(entry: dict[str, Any]) -> str:
    source = entry.get("source") or {}
    commit = source.get("commit") or "unknown"
    return f"`{commit[:12]}`" + (" (with uncommitted changes)" if source.get("dirty") else "")


def test_rows(card: dict[str, Any]) -> list[str]:
    """The test table: every set x level, the noisy input, this model and each reference (PSNR dB / SSIM)."""
    references = list(card.get("references") or {})
    lines = ["| set | level | noisy input | **this model** | " + " | ".join(references) + " |",
             "|---|---|---|---|" + "---|" * len(references)]
    for set_name, levels in card["test"].items():
        for level, row in levels.items():
            noisy = {"psnr": row["psnr_noisy"], "ssim": row["ssim_noisy"]}
            cells = [_cell((card["references"][name].get(set_name) or {}).get(level)) for name in references]
            lines.append(f"| {set_name} | {_level_label(level)} | {_cell(noisy)} | **{_cell(row)}** | "
                         + " | ".join(cells) + " |")
    return lines


def render_card(metadata: dict[str, Any]) -> str:
    """The Markdown card of one zoo model from its weights JSON."""
    card, name = metadata["card"], metadata["name"]
    check = card["check"]
    lines = [
        f"# {name}", "",
        f"{card['description']}.", "",
        "| | |", "|---|---|",
        f"| network | `{card['network']['_target_'].rsplit('.', 1)[-1]}` "
        + ", ".join(f"{key}={value}" for key, value in card["network"].items() if key != "_target_") + " |",
        f"| size | {card['params']:,} parameters, {card['macs_per_pixel'] / 1e3:.1f}K multiply-accumulates per pixel"
        + (f", receptive field {card['receptive_field']} px" if card.get("receptive_field") else "") + " |",
        "| degradation | " + ", ".join(f"{key}={value}" for key, value in card["noise"].items()
                                     if key != "_target_" and value is not None)
        + f" ({card['family']}) |",
        f"| training data | {card['train_data']} |",
        f"| training | {card['optimizer_steps']:,} optimizer steps, {card['patches_seen']:,} patches, "
        f"{card['train_seconds'] / 60:.1f} min of training in all |",
        f"| weights | `{metadata['tensors']['file']}`, sha256 `{metadata['tensors']['sha256']}` |",
        f"| drift check | {check['set']} images 1-{check['images']} at "
        + ", ".join(f"{key} {value:g}" for key, value in check["level"].items())
        + f": {check['psnr']:.4f} dB (re-measured by the test suite) |",
        "",
        "## Use", "",
        "```bash",
        f"dnl-denoise photo.png -o denoised/ --model {name}",
        "```",
        "",
        f"or in Python `denoise_lightning.load_model(\"{name}\")`; `dnl-export {name} model.onnx` exports it.", "",
        "## Test", "",
        "PSNR (dB) / SSIM measured with `dnl-eval` in fp32, every column on the same deterministic noisy images:", "",
        "```bash", card["eval_command"], "```", "",
        *test_rows(card), "",
        *[f"- {ref}: {REFERENCE_NOTES.get(ref, ref)}." for ref in card.get("references") or {}], "",
        "## How it was trained", "",
        f"The whole zoo: `{card['zoo_command']}`. This model's history, in order:", "",
    ]
    for number, entry in enumerate(card["history"], 1):
        optimizer = entry["optimizer"]
        schedule = optimizer.get("lr_schedule") or "global"
        lines += [
            f"{number}. **{entry['model']}** ({entry['procedure']}"
            + (f", starting from the trained {entry['init_from']}" if entry.get("init_from") else "") + "): "
            f"`{entry['command']}`",
            f"   - {entry['optimizer_steps']:,} steps of batch {entry['batch_size']} ({entry['patches_seen']:,} "
            f"patches of {entry['patch_size']}x{entry['patch_size']}), {entry['epochs']} epochs; Adam, lr "
            f"{optimizer['lr']:g} ({schedule})",
            f"   - {_machine(entry)}, precision {entry['precision']}, {entry['train_seconds'] / 60:.1f} min",
            f"   - {_versions(entry)}; git commit {_source(entry)}",
        ]
    lines += ["", "## Validation PSNR during training", "",
              "At the end of every stage, on the validation images (4 Set12 images at the validation level), "
              "against the patches seen since training started:", "",
              "| patches seen | run | blocks | parameters | val PSNR (dB) |", "|---|---|---|---|---|"]
    for point in card["curve"]:
        blocks = " ".join(point["blocks"]) or "base (3 layers)"
        lines.append(f"| {point['patches_seen']:,} | {point['model']} | {blocks} | {point['params']:,} | "
                     f"{point['val_psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def render_table(items: Sequence[dict[str, Any]]) -> str:
    """``docs/zoo.md``: every zoo model in one table, BSD68 PSNR at each level next to the references."""
    lines = [
        "# Model zoo", "",
        "Trained networks that ship inside the package: `dnl-denoise photo.png -o out/ --model NAME`, "
        "`load_model(\"NAME\")` or `dnl-export NAME`, offline. Without `--model`, `dnl-denoise` uses "
        "`dn-resnet13-blind`; `--model auto` estimates the noise level of each image and picks the nearest "
        "non-blind Gaussian model. Each model has a card beside its weights in `denoise_lightning/zoo/models/` "
        "(`NAME.md`): network, noise, the exact training commands, steps, patches, hardware, versions, git commit, "
        "the weights' sha256 and the full test table on BSD68 and Set12.", "",
        "Retrain the whole zoo with `make zoo` (`ZOO_BUDGET=gpu`, the default, is sized for one GPU; `cpu` and "
        "`smoke` are smaller budgets); the cards and this table are regenerated from the runs.", "",
        "The models below were trained with "
        + ", ".join(sorted({f"`{item['card']['zoo_command']}`" for item in items}))
        + ": compare their figures with the references beside them before choosing one.", "",
        "BSD68, PSNR (dB) measured with `dnl-eval` in fp32; the references on the same noisy images:", "",
        "| model | network | noise | parameters | MACs/pixel | patches seen | BSD68 PSNR: level = this model "
        "(references) |",
        "|---|---|---|---|---|---|---|",
    ]
    for item in items:
        card = item["card"]
        cells = []
        for level, row in card["test"].get("bsd68", {}).items():
            refs = [f"{ref} {card['references'][ref]['bsd68'][level]['psnr']:.2f}"
                    for ref in card["references"] if level in (card["references"][ref].get("bsd68") or {})]
            cells.append(f"{_level_label(level)}: **{row['psnr']:.2f}**" + (f" ({', '.join(refs)})" if refs else ""))
        network = card["description"].split(",")[0]
        noise = card["description"].split(", ", 2)[-1]
        lines.append(f"| [{item['name']}](../denoise_lightning/zoo/models/{item['name']}.md) | {network} | {noise} | "
                     f"{card['params']:,} | {card['macs_per_pixel'] / 1e3:.1f}K | {card['patches_seen']:,} | "
                     + "<br>".join(cells) + " |")
    return "\n".join(lines) + "\n"
