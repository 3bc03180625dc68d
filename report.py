"""What an evaluation shows: the markdown tables, the side-effects chart, the comparison grid and
the labelled-row picture that evaluate.py and generate.py draw, and metrics.json made strict JSON."""

import io
import os

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import checkpoint  # noqa: E402
import metrics  # noqa: E402
import utils  # noqa: E402


def short_name(path, depth=2):
    """`runs/unlearn_s0/unlearned.pt` -> `unlearn_s0/unlearned.pt`: enough to tell rows apart."""
    parts = os.path.normpath(path).split(os.sep)
    return os.path.join(*parts[-depth:]) if len(parts) > 1 else parts[0]


def short_names(paths):
    """short_name of each path, with as many folders as it takes for different files to differ
    (el2/s0/unlearned.pt and finetune/s0/unlearned.pt, not s0/unlearned.pt twice)."""
    for depth in range(2, max(len(os.path.normpath(p).split(os.sep)) for p in paths) + 1):
        names = [short_name(p, depth) for p in paths]
        if len(set(names)) == len({os.path.abspath(p) for p in paths}):
            return names
    return [os.path.abspath(p) for p in paths]


def save_labelled_rows(rows, path, title):
    """One PNG of labelled rows of tiles under a title line: rows = [(label, uint8 images
    [N, H, W, 3], flags [N])]; a flagged tile gets a red frame. Tiles are enlarged to at least
    64 px (nearest neighbour), so small images stay readable."""
    cell, pad, head = max(64, max(images.shape[1] for _, images, _ in rows)), 6, 22
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = int(max(probe.textlength(label) for label, _, _ in rows)) + 12
    width = label_w + max(len(images) for _, images, _ in rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (max(width, 420), head + len(rows) * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill="black")
    for r, (label, images, flags) in enumerate(rows):
        y = head + pad + r * (cell + pad)
        draw.text((4, y + cell // 2 - 6), label, fill="black")
        for c, (image, flag) in enumerate(zip(images, flags)):
            x = label_w + pad + c * (cell + pad)
            canvas.paste(Image.fromarray(image).resize((cell, cell), Image.NEAREST), (x, y))
            if flag:
                draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], outline=(220, 0, 0), width=3)
    utils.atomic_write(path, lambda f: canvas.save(f, format="PNG"))


def without_nan(value):
    """NaN (e.g. PUL when the reference makes no negatives) as null, so metrics.json is strict JSON."""
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


def fmt(value, std=None):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "N/A"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def fmt_summary(stat):
    return "N/A" if stat is None else fmt(stat["mean"], stat["std"])


def fmt_kid(value):
    """KID (a value or a mean ± std dict) to 4 significant digits: its scale is the features'
    (about 1e-3 for Inception's, far more for a classifier's)."""
    if isinstance(value, dict):
        return f"{value['mean']:.4g} ± {value['std']:.2g}"
    return "N/A" if value is None else f"{value:.4g}"


def quality_cells(values):
    """The table's KID, precision and recall cells of one row (mean ± std dicts or values)."""
    def cell(value):
        return fmt_summary(value) if isinstance(value, dict) else fmt(value)
    return f"{fmt_kid(values.get('kid'))} | {cell(values.get('precision'))} | {cell(values.get('recall'))}"


def markdown_table(record, fid_name, label):
    """The paper's layout (Tables 1-3): Method | PUL | FID | Ret-FID, with KID and precision/recall
    beside them, then per checkpoint, then the side effects (appendix E)."""
    summary = record["summary"]
    head = f"PUL (↑) | {fid_name} (↓) | Ret-FID (↓) | KID (↓) | precision (↑) | recall (↑)"
    lines = [f"| Method | {head} |", "|---|---|---|---|---|---|---|"]
    for entry in [record["reference"], record.get("retrained")]:
        if entry:
            lines.append(f"| {entry['label']} | {fmt(entry['pul'])} | {fmt(entry['fid'])} | {fmt(entry['ret_fid'])} "
                         f"| {quality_cells(entry)} |")
    if record["checkpoints"]:
        lines.append(f"| {label} ({len(record['checkpoints'])} run{'s' if len(record['checkpoints']) > 1 else ''}) "
                     f"| {fmt_summary(summary['pul'])} | {fmt_summary(summary['fid'])} "
                     f"| {fmt_summary(summary['ret_fid'])} | {quality_cells(summary)} |")
        lines += ["", f"| Checkpoint | {head} | negatives |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {c['label']} | {fmt(c['pul'])} | {fmt(c['fid'])} | {fmt(c['ret_fid'])} | {quality_cells(c)} "
                  f"| {c['negatives']} |" for c in record["checkpoints"]]
        what = "attribute" if record["protocol"]["pul"]["multilabel"] else "class"
        unit = "frequency" if what == "attribute" else "share"
        lines += ["", f"| {what} | reference {unit} % | {label} {unit} % | % change (mean ± std) |", "|---|---|---|---|"]
        for name, ref in record["reference"]["side_effects"].items():
            after = metrics.mean_std([c["side_effects"][name]["after"] for c in record["checkpoints"]])
            change = summary["side_effects"][name]
            marker = " (negative)" if name == record["protocol"]["pul"]["negative"] else ""
            lines.append(f"| {name}{marker} | {fmt(ref['before'])} | {fmt_summary(after)} | {fmt_summary(change)} |")
    return "\n".join(lines)


def recover_table(record, negative_name):
    lines = [f"| Recoverability | '{negative_name}' images: MSE (↑ = removed) | called '{negative_name}' % | "
             f"other images: MSE | called '{negative_name}' % |", "|---|---|---|---|---|"]
    for e in record["generators"]:
        lines.append(f"| {e['label']} | {e['negatives']['mse']:.4f} | {e['negatives']['called_negative']:.1f} | "
                     f"{e['positives']['mse']:.4f} | {e['positives']['called_negative']:.1f} |")
    return "\n".join(lines)


def save_side_effects_chart(record, path):
    """Grouped bars (paper appendix E): per class or attribute other than the negative, the % change
    of its count under each evaluated generator and the retrained one, against the reference."""
    negative = record["protocol"]["pul"]["negative"]
    names = [name for name in record["reference"]["side_effects"] if name != negative]
    bars = [e for e in [record.get("retrained"), *record["checkpoints"]] if e]
    if not names or not bars:
        return
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(min(11.0, max(6.0, 0.3 * len(names) * len(bars) + 2)), 4.0))
    for i, e in enumerate(bars):
        changes = [e["side_effects"][name]["change"] for name in names]  # NaN: absent under the reference
        ax.bar(np.arange(len(names)) + (i - (len(bars) - 1) / 2) * width, changes, width, label=e["label"])
    ax.axhline(0.0, color="black", linewidth=0.8)
    long_names = max(map(len, names)) > 3  # attribute names are slanted, digits stay upright
    ax.set_xticks(np.arange(len(names)), names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_ylabel("% change of the count vs the pre-trained model")
    change = [c["side_effects"][negative]["change"] for c in record["checkpoints"]]
    ax.set_title(f"other {'attributes' if record['protocol']['pul']['multilabel'] else 'classes'} after unlearning "
                 f"'{negative}' (its own change: {', '.join(fmt(c) + '%' for c in change) or 'N/A'}; not drawn)",
                 fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    utils.atomic_write(path, lambda f: f.write(buffer.getvalue()))


def grid_indices(reference_negatives, n_columns):
    """Columns of the comparison grid: up to half negatives under the reference, then positives."""
    neg = torch.nonzero(reference_negatives).flatten().tolist()
    pos = torch.nonzero(~reference_negatives).flatten().tolist()
    take_neg = min(len(neg), (n_columns + 1) // 2)
    chosen = neg[:take_neg] + pos[:n_columns - take_neg]
    return chosen, take_neg


@torch.no_grad()
def save_comparison_grid(generators, indices, n_neg_columns, args, clf, meta, negative, path):
    """One labelled row per generator, the same latents in every row; red frame = the classifier
    calls the sample negative. The first `n_neg_columns` columns are negatives of the reference."""
    name = checkpoint.class_names(meta)[negative]
    rows = []
    for _, label, _, g in generators:
        z, noise = metrics.seeded_inputs(g, indices, args.seed)
        kwargs = {"noise": [maps.to(args.device) for maps in noise]} if noise else {}
        images = utils.from_uint8(utils.to_uint8(g([z.to(args.device)], **kwargs)[0]))
        flags = metrics.negative_mask(metrics.classify(clf, meta, images), meta, negative).tolist()
        rows.append((label, utils.to_uint8(images).permute(0, 2, 3, 1).cpu().numpy(), flags))

    save_labelled_rows(rows, path, f"same latents in every row; columns 1-{n_neg_columns}: '{name}' under "
                                         f"the reference; red frame: classified '{name}'")
