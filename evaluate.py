"""Evaluate generators after unlearning: PUL, FID, Ret-FID and the effect on other classes/features.

    python evaluate.py runs/unlearn_s0/unlearned.pt runs/unlearn_s1/unlearned.pt runs/unlearn_s2/unlearned.pt \
        --reference pretrained.pt --classifier runs/classifier/classifier.pt --negative 8 \
        --retrained retrained.pt --dataset mnist --data data \
        --inception pt_inception-2015-12-05-6726825d.pth --out runs/eval
    python evaluate.py --fid real_stats.npz other_stats.npz      # FID between two statistics files

Protocol (paper §5.3 and appendix E): every generator (its g_ema) draws the same seeded samples
(one z ~ N(0, I) per image, ψ = 1, noise from the seed too), quantised to uint8 as if saved.
- PUL = 100 · (S_n(reference) − S_n(model)) / S_n(reference), S_n = number of the first --n_eval
  samples the classifier calls --negative (argmax for classes, logit >= 0 for attributes).
- FID: Fréchet distance between Inception-v3 pool3 features of the first --n_fid samples and of the
  real data without the negative class/feature; --features classifier uses the classifier's
  penultimate features instead (labelled "classifier-feature FID": no download, not comparable).
- Ret-FID: the same distance to the samples of --retrained (trained without the negatives).
- KID (unbiased MMD², cubic kernel, mean over random subsets) and improved precision/recall
  (k-NN balls) between the same --n_fid samples' features and up to 10,000 real images' features,
  by torch-fidelity: KID stays meaningful at small sample counts; precision is quality, recall
  coverage.
- Side effects: each class's share (or each attribute's frequency) before and after, % change.
- Recoverability (--recover N): N held-out real images of the negative class and N others, each
  inverted into every generator (a W+ latent from the mean latent, Adam on the pixel MSE, seeded
  noise): the mean reconstruction error and the share of reconstructions called negative. A
  generator that rebuilds the class as well as the reference has hidden it, not removed it.
Several checkpoints (seeds of one method) give mean ± std (population std, as the paper).
Writes OUT/metrics.json (values, summary, protocol), OUT/table.md (also printed), OUT/comparison.png
(the same latents through every generator, one labelled row each; red frame = classified negative),
OUT/side_effects.png (the % change of every other class or attribute, grouped bars per generator)
and OUT/real_stats.npz (or --real_stats), plus OUT/args.json.
"""

import hashlib
import io
import json
import os
import sys

import matplotlib
matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import checkpoint
import dataset
import gan
import metrics
import utils

REAL_FEATURES_KEPT = 10000  # real images (a seeded subset) whose features KID and precision/recall use
OUTPUTS = ["metrics.json", "table.md", "comparison.png", "side_effects.png", "recover.png", "real_stats.npz",
           "args.json"]  # what this script writes in --out (see utils.claim_out_dir)


def load_generators(args):
    """[(role, label, path, g_ema)], reference first, then the evaluated checkpoints, then
    --retrained; all must draw the same latents (same style_dim) at the same size."""
    entries = [("reference", "pre-trained (reference)", args.reference)]
    entries += [("evaluated", label, path) for label, path in zip(gan.short_names(args.ckpt), args.ckpt)]
    if args.retrained:
        entries.append(("retrained", "retraining", args.retrained))
    generators = []
    for role, label, path in entries:
        g, ckpt = checkpoint.load_generator(path, args.device)
        generators.append((role, label, path, g))
    ref = generators[0][3]
    for _, _, path, g in generators[1:]:
        if (g.style_dim, g.size) != (ref.style_dim, ref.size):
            raise utils.UserError(f"{path}: style_dim {g.style_dim}, {g.size} px vs the reference's "
                                  f"{ref.style_dim}, {ref.size} px: the same latents cannot be compared")
    return generators


def feature_space(args, clf, meta):
    """(name, features(images in [-1, 1]) -> [N, D] float64 CPU, protocol info) for FID."""
    if args.features == "classifier":
        def features(images):
            return metrics.classifier_features(clf, meta, utils.from_uint8(utils.to_uint8(images))).double().cpu()
        # identified by the weights' hash, not the path: statistics stay valid in a moved run folder
        return "classifier-feature FID", features, {
            "feature_extractor": f"classifier penultimate features ({meta['arch']})",
            "weights": os.path.abspath(meta["path"]), "weights_sha256": metrics.file_sha256(meta["path"]),
            "note": "classifier-feature FID: not the Inception FID, not comparable to published FIDs"}
    net, info = metrics.load_fid_inception(args.inception, args.device)
    return "FID", lambda images: metrics.inception_features(net, images), info


def generator_pass(g, args, clf, meta, negative, features, desc):
    """One pass over the seeded samples: classifier decisions on the first --n_eval, features on
    the first --n_fid. Returns counts per class/attribute, the negative mask, (mu, sigma) and the
    features themselves (float32, for KID and precision/recall)."""
    n_total = max(args.n_eval, args.n_fid)
    negatives, counts, feats = [], 0, []
    done = 0
    for _, images in metrics.generate_images(g, n_total, args.seed, args.batch, args.device, desc=desc):
        images = utils.from_uint8(utils.to_uint8(images))  # as if saved
        take = min(len(images), max(0, args.n_eval - done))
        if take:
            logits = metrics.classify(clf, meta, images[:take])
            negatives.append(metrics.negative_mask(logits, meta, negative).cpu())
            counts = counts + metrics.label_counts(logits, meta)
        take_fid = min(len(images), max(0, args.n_fid - done))
        if take_fid:
            feats.append(features(images[:take_fid]))
        done += len(images)
    result = {"negative_mask": torch.cat(negatives), "counts": counts.tolist(), "stats": None, "features": None}
    if feats:
        feats = torch.cat(feats)
        result["stats"], result["features"] = metrics.feature_statistics(feats, desc), feats.float()
    return result


def pass_cache_key(args, negative, fid_info):
    """Every input of a generator pass but the generator: file hashes, not paths, so a moved run
    folder still hits; the thread count too, since it changes the summation order and so may flip
    a borderline sample. None without --cache."""
    if not args.cache:
        return None
    return {"format": 2, "classifier_sha256": metrics.file_sha256(args.classifier), "negative": negative,
            "features": fid_info.get("feature_extractor"), "features_sha256": fid_info.get("weights_sha256"),
            "seed": args.seed, "n_eval": args.n_eval, "n_fid": args.n_fid, "batch": args.batch,
            "device": str(args.device), "threads": torch.get_num_threads(), "torch": torch.__version__}


def cached_generator_pass(g, path, cache_key, args, clf, meta, negative, features, desc):
    """generator_pass, kept in --cache under `cache_key` plus the generator file's hash: a pipeline
    scores the pre-trained and the retrained model in every call, and each pass over 15,000
    samples is most of a call's time on a CPU."""
    if cache_key is None:
        return generator_pass(g, args, clf, meta, negative, features, desc)
    key_text = json.dumps({**cache_key, "generator_sha256": metrics.file_sha256(path)}, sort_keys=True)
    file = os.path.join(args.cache, hashlib.sha256(key_text.encode()).hexdigest()[:24] + ".npz")
    if os.path.isfile(file):
        try:
            with np.load(file, allow_pickle=False) as data:
                if str(data["key"]) == key_text:
                    stats = (data["mu"], data["sigma"]) if "mu" in data.files else None
                    feats = torch.from_numpy(data["features"]) if "features" in data.files else None
                    return {"negative_mask": torch.from_numpy(data["negative_mask"]),
                            "counts": data["counts"].tolist(), "stats": stats, "features": feats}
        except (OSError, ValueError, KeyError, EOFError):
            pass  # unreadable or foreign: computed again and replaced below
    result = generator_pass(g, args, clf, meta, negative, features, desc)
    arrays = {"key": np.asarray(key_text), "negative_mask": result["negative_mask"].numpy(),
              "counts": np.asarray(result["counts"], dtype=np.int64)}
    if result["stats"] is not None:
        arrays.update(mu=np.asarray(result["stats"][0]), sigma=np.asarray(result["stats"][1]),
                      features=result["features"].numpy())
    os.makedirs(args.cache, exist_ok=True)
    utils.atomic_write(file, lambda f: np.savez(f, **arrays))
    return result


def real_statistics(args, features, fid_info, negative_name, size):
    """(mu, sigma, features of a seeded subset of REAL_FEATURES_KEPT images or None, reference-set
    info): from --real_stats when that file exists, else from the real data without the negative
    class/feature (saved to --real_stats or OUT/real_stats.npz)."""
    split = args.real_split or ("test" if dataset.DATASETS[args.dataset].test_split == "own" else "train")
    info = {"dataset": args.dataset, "data": dataset.data_source(args.dataset, args.data),
            "split": split, "excluded": negative_name, "size": size}
    stamp = {"features": fid_info["feature_extractor"], "weights_sha256": fid_info.get("weights_sha256", ""),
             "size": size, "excluded": negative_name}
    if args.real_stats and os.path.isfile(args.real_stats):
        mu, sigma, fields = metrics.load_statistics(args.real_stats)
        for key in stamp:  # a file made for another feature space, resolution or excluded class
            if key in fields and fields[key] != str(stamp[key]):
                raise utils.UserError(f"--real_stats {args.real_stats} was made with {key} {fields[key]!r}, this run "
                                      f"uses {stamp[key]!r}: delete it or point --real_stats elsewhere")
        info.update(statistics_file=os.path.abspath(args.real_stats), loaded_from_file=True,
                    n_images=int(fields["n_images"]) if "n_images" in fields else None)
        kept = metrics.load_features(args.real_stats)
        if kept is None:
            print(f"note: {args.real_stats} keeps no features (an older file): no KID or precision/recall; "
                  f"delete it to have them", file=sys.stderr)
        return mu, sigma, kept, info
    try:
        images, data_info = dataset.load_dataset(args.dataset, args.data, size, train=split == "train",
                                                attributes=args.attributes, exclude=negative_name, verbose=False)
    except utils.UserError as err:
        raise utils.UserError(f"real reference set (--dataset {args.dataset} --data {args.data}): {err}")
    if args.n_real is not None and args.n_real < len(images):
        images = torch.utils.data.Subset(images, range(args.n_real))
    loader = torch.utils.data.DataLoader(images, batch_size=args.batch, shuffle=False, num_workers=args.workers)
    feats = torch.cat([features(batch) for batch, _ in tqdm(loader, desc="real data", leave=False)])
    mu, sigma = metrics.feature_statistics(feats, "real data")
    kept = feats[np.random.default_rng(0).permutation(len(feats))[:REAL_FEATURES_KEPT]].float()
    path = args.real_stats or os.path.join(args.out, "real_stats.npz")
    metrics.save_statistics(path, mu, sigma, feature_matrix=kept, n_images=len(images), **stamp)
    info.update(statistics_file=os.path.abspath(path), loaded_from_file=False, n_images=len(images),
                dropped=data_info["dropped"])
    return mu, sigma, kept, info


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


def quality_cells(values):
    """The table's KID, precision and recall cells of one row (a mean ± std dict or a value)."""
    kid = values.get("kid")
    if isinstance(kid, dict):
        kid = f"{kid['mean']:.4g} ± {kid['std']:.2g}"
    kid = "N/A" if kid is None else kid if isinstance(kid, str) else f"{kid:.4g}"

    def cell(value):
        return fmt_summary(value) if isinstance(value, dict) else fmt(value)
    return f"{kid} | {cell(values.get('precision'))} | {cell(values.get('recall'))}"


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
    ax.set_xticks(np.arange(len(names)), names, rotation=45 if max(map(len, names)) > 3 else 0, ha="right"
                  if max(map(len, names)) > 3 else "center")
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


def held_out_images(args, negative_name, size):
    """(negatives, positives): --recover images of each, [N, 3, H, W] in [-1, 1], a seeded choice
    among the held-out split (the dataset's own test split, or --recover_data)."""
    own = dataset.DATASETS[args.dataset].test_split == "own"
    if args.recover_data is None and not own:
        raise utils.UserError(f"--recover needs held-out images: --dataset {args.dataset} has no test split of its "
                              f"own; give --recover_data DIR (images the generators never saw, in its layout)")
    root = args.recover_data or args.data
    try:
        data, negatives, positives = dataset.split_by_label(args.dataset, root, size, negative_name,
                                                            train=not own, attributes=args.attributes)
    except utils.UserError as err:
        raise utils.UserError(f"--recover images ({root}): {err}")
    if min(len(negatives), len(positives)) < args.recover:
        raise utils.UserError(f"--recover {args.recover}: the held-out images hold {len(negatives)} of "
                              f"'{negative_name}' and {len(positives)} others; lower --recover")
    rng = np.random.default_rng(args.seed)
    chosen = [rng.choice(indices, args.recover, replace=False) for indices in (negatives, positives)]
    return [torch.stack([data[int(i)][0] for i in sorted(group)]) for group in chosen]


def recoverability(generators, targets, args, clf, meta, negative, negative_name, path):
    """Invert the held-out images `targets` (negatives, positives) into every generator; returns
    the record and writes the grid (targets, then one row per generator; red frame = called
    negative)."""
    both = torch.cat(targets).to(args.device)
    features = (lambda x: clf.features(metrics.to_classifier_input(x, meta))) if args.recover_features else None
    per_generator, rows = [], []
    show = list(range(min(8, args.recover))) + list(range(args.recover, args.recover + min(8, args.recover)))

    def row(label, images):
        flags = metrics.negative_mask(metrics.classify(clf, meta, images), meta, negative).cpu()
        rows.append((label, utils.to_uint8(images[show]).permute(0, 2, 3, 1).cpu().numpy(), flags[show].tolist()))
        return flags

    row("held-out images", both)
    for role, label, path_, g in generators:
        images, error = metrics.invert(g, both, args.recover_steps, args.recover_lr, args.seed, features,
                                       args.recover_features, f"inverting into {label}", args.recover_latent == "w+")
        images = utils.from_uint8(utils.to_uint8(images))  # as if saved, as every scored sample
        flags = row(label, images)
        n = args.recover
        per_generator.append({"role": role, "label": label, "path": os.path.abspath(path_), **{
            group: {"mse": float(error[part].mean()), "called_negative": 100.0 * int(flags[part].sum()) / n}
            for group, part in (("negatives", slice(0, n)), ("positives", slice(n, 2 * n)))}})
    gan.save_labelled_rows(rows, path, f"held-out images (first {len(show) // 2}: '{negative_name}', then others) "
                                       f"and their reconstructions; red frame: classified '{negative_name}'")
    protocol = {"n_each": args.recover, "steps": args.recover_steps, "lr": args.recover_lr, "optimiser": "Adam",
                "latent": f"{args.recover_latent.upper()} from the mean of g's mapping over 4096 seeded z", "noise": "seeded per image, fixed",
                "loss": "pixel MSE" + (f" + {args.recover_features} · classifier-feature MSE"
                                       if args.recover_features else ""),
                "images": f"seeded choice (seed {args.seed}) from {args.recover_data or 'the test split'}",
                "mse": "per image mean of (reconstruction − target)² in [-1, 1] pixels, then the mean"}
    return {"protocol": protocol, "generators": per_generator}


def recover_table(record, negative_name):
    lines = [f"| Recoverability | '{negative_name}' images: MSE (↑ = removed) | called '{negative_name}' % | "
             f"other images: MSE | called '{negative_name}' % |", "|---|---|---|---|---|"]
    for e in record["generators"]:
        lines.append(f"| {e['label']} | {e['negatives']['mse']:.4f} | {e['negatives']['called_negative']:.1f} | "
                     f"{e['positives']['mse']:.4f} | {e['positives']['called_negative']:.1f} |")
    return "\n".join(lines)


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

    gan.save_labelled_rows(rows, path, f"same latents in every row; columns 1-{n_neg_columns}: '{name}' under "
                                         f"the reference; red frame: classified '{name}'")


def kid_and_precision_recall(args, generated, real):
    """{kid, kid_std, precision, recall} of generated features against the real ones (None where
    not computed)."""
    out = dict.fromkeys(("kid", "kid_std", "precision", "recall"))
    if generated is None or real is None:
        return out
    n = min(len(generated), len(real))
    if args.kid_subsets and n >= 2:
        out["kid"], out["kid_std"], _ = metrics.kernel_inception_distance(generated, real, args.kid_subset_size,
                                                                          args.kid_subsets)
    if args.pr_k and n > args.pr_k:
        out["precision"], out["recall"] = metrics.precision_recall(generated, real[:len(generated)], args.pr_k)
    elif args.pr_k:
        print(f"warning: precision/recall with k = {args.pr_k} needs more than {args.pr_k} samples of each set "
              f"({len(generated)} generated, {len(real)} real): not computed", file=sys.stderr)
    return out


def fid_of_files(paths):
    """--fid A.npz B.npz: the Fréchet distance between two statistics files."""
    mu1, sigma1, _ = metrics.load_statistics(paths[0])
    mu2, sigma2, _ = metrics.load_statistics(paths[1])
    value = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    print(f"{value:.10g}")
    return value


def check_args(args):
    missing = [flag for flag, value in (("--reference", args.reference), ("--classifier", args.classifier),
                                        ("--negative", args.negative)) if value is None]
    if missing:
        raise utils.UserError(f"{', '.join(missing)} required (or use --fid A.npz B.npz)")
    if args.n_fid and args.features == "inception" and args.inception is None:
        metrics.load_fid_inception(None)  # raises the error that says where to get the weights


def create_argparser():
    parser = utils.make_parser(__doc__)
    parser.add_argument("ckpt", nargs="*", help="generator checkpoints to evaluate (several seeds: mean ± std)")
    parser.add_argument("--reference",
                        help="the pre-trained generator, .pt or NVlabs .pkl (PUL baseline, first row of the grid)")
    parser.add_argument("--classifier", help="classifier checkpoint from train_classifier.py")
    parser.add_argument("--negative", help="the unlearned class (name or index) or attribute, among the classifier's")
    parser.add_argument("--retrained", default=None, help="generator retrained without the negatives (Ret-FID)")
    parser.add_argument("--label", default="unlearned", help="name of the evaluated method in the table")
    dataset.add_data_args(parser, exclude=False)
    parser.add_argument("--real_split", choices=["train", "test"], default=None,
                        help="split of the real reference set (default: test for mnist, as the official code; train otherwise)")
    parser.add_argument("--n_real", type=utils.positive_int, default=None, help="use only the first N real images (default: all)")
    parser.add_argument("--real_stats", default=None,
                        help=".npz (keys mu, sigma) of the real reference set: read when it exists, else computed and written there")
    parser.add_argument("--features", choices=["inception", "classifier"], default="inception",
                        help="FID features: Inception-v3 (standard FID) or the classifier's penultimate layer "
                             "(labelled 'classifier-feature FID'; no download)")
    parser.add_argument("--inception", default=None,
                        help=f"the FID Inception weights {metrics.FID_WEIGHTS_NAME} ({metrics.FID_WEIGHTS_URL})")
    parser.add_argument("--n_eval", type=utils.positive_int, default=15000,
                        help="samples per generator for PUL and side effects (paper: 15,000)")
    parser.add_argument("--n_fid", type=utils.nonnegative_int, default=10000, help="samples per generator for FID and Ret-FID (0: skip them)")
    parser.add_argument("--kid_subsets", type=utils.nonnegative_int, default=metrics.KID_SUBSETS,
                        help="KID: random subsets averaged (torch-fidelity's default; 0: no KID)")
    parser.add_argument("--kid_subset_size", type=utils.positive_int, default=metrics.KID_SUBSET_SIZE,
                        help="KID: samples of each set per subset (lowered to the sample count when larger)")
    parser.add_argument("--pr_k", type=utils.nonnegative_int, default=metrics.PR_K,
                        help="precision/recall: the k of the k-NN balls (torch-fidelity's default; 0: none)")
    recover = parser.add_argument_group("recoverability (is the class removed or only hidden?)")
    recover.add_argument("--recover", type=utils.nonnegative_int, default=0,
                         help="invert N held-out images of the negative class and N others into every generator "
                              "(0: off); writes recover.png")
    recover.add_argument("--recover_data", default=None,
                         help="held-out images in --dataset's layout (default: the dataset's own test split)")
    recover.add_argument("--recover_latent", choices=["w+", "w"], default="w+",
                         help="w+: one latent per layer (reconstructs almost anything at small sizes); w: one "
                              "latent for every layer (only what the generator can draw)")
    recover.add_argument("--recover_steps", type=utils.positive_int, default=metrics.RECOVER_STEPS,
                         help="Adam steps per inversion")
    recover.add_argument("--recover_lr", type=utils.positive_float, default=metrics.RECOVER_LR,
                         help="Adam learning rate on the W+ latents")
    recover.add_argument("--recover_features", type=utils.nonnegative_float, default=0.0,
                         help="weight of the classifier-feature MSE beside the pixel MSE (0: pixels only)")
    parser.add_argument("--n_sample", type=utils.nonnegative_int, default=8,
                        help="columns of the comparison grid, the same latents in every row (0: no grid)")
    parser.add_argument("--fid", nargs=2, metavar=("A.npz", "B.npz"), default=None,
                        help="only print the FID between two statistics files and exit")
    parser.add_argument("--batch", type=utils.positive_int, default=64, help="generation and feature batch size")
    parser.add_argument("--workers", type=utils.nonnegative_int, default=0, help="DataLoader workers for the real data")
    parser.add_argument("--seed", type=utils.nonnegative_int, default=1,
                        help="seed of the evaluation latents, the same for every generator (not 0: negative_adapt.py "
                             "shows the user the samples of seed 0, which must not be scored)")
    parser.add_argument("--cache", default=None,
                        help="folder keeping each generator's samples' decisions and feature statistics, reused by "
                             "later calls with the same generator file, classifier, seed, sample counts, batch, "
                             "device and thread count (e.g. the pre-trained and retrained models of a pipeline)")
    parser.add_argument("--device", default=utils.default_device(), help="torch device")
    utils.add_out_args(parser, "runs/eval", resume=False)
    return parser


def main(args):
    if args.fid:
        return fid_of_files(args.fid)
    check_args(args)
    utils.seed_everything(args.seed)

    clf, meta = checkpoint.load_classifier(args.classifier, args.device)
    negative, negative_name = metrics.resolve_negative(meta, args.negative)
    generators = load_generators(args)
    size = generators[0][3].size
    metrics.check_classifier_fits(meta, size)
    fid_name, features, fid_info = feature_space(args, clf, meta) if args.n_fid else ("FID", None, {})

    held_out = held_out_images(args, negative_name, size) if args.recover else None
    # every input is read and checked: only now is --out made
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)
    real = real_features = None
    if args.n_fid:
        mu, sigma, real_features, real_info = real_statistics(args, features, fid_info, negative_name, size)
        real = (mu, sigma)
    cache_key = pass_cache_key(args, negative, fid_info)
    results = [cached_generator_pass(g, path, cache_key, args, clf, meta, negative, features, label)
               for _, label, path, g in generators]
    names = checkpoint.class_names(meta)
    ref = results[0]
    ref_negatives = int(ref["negative_mask"].sum())
    retrained_stats = results[-1]["stats"] if args.retrained else None

    def entry(role, label, path, result):
        stats = result["stats"]
        n_neg = int(result["negative_mask"].sum())
        return {"role": role, "label": label, "path": os.path.abspath(path), "negatives": n_neg,
                **kid_and_precision_recall(args, result["features"], real_features),
                "pul": metrics.percentage_unlearned(ref_negatives, n_neg),
                "fid": metrics.frechet_distance(*stats, *real) if stats and real else None,
                # the retrained model evaluated as a checkpoint has no Ret-FID (0 up to float noise)
                "ret_fid": (metrics.frechet_distance(*stats, *retrained_stats)
                            if stats and retrained_stats and role != "retrained"
                            and not os.path.samefile(path, args.retrained) else None),
                "side_effects": metrics.side_effects(ref["counts"], result["counts"], names, args.n_eval)}

    entries = [entry(role, label, path, result) for (role, label, path, _), result in zip(generators, results)]
    checkpoints = [e for e in entries if e["role"] == "evaluated"]
    summary = {key: metrics.mean_std([c[key] for c in checkpoints])
               for key in ("pul", "fid", "ret_fid", "kid", "precision", "recall")}
    summary["side_effects"] = {name: metrics.mean_std([c["side_effects"][name]["change"] for c in checkpoints])
                               for name in names}
    protocol = {
        "pul": {"n_eval": args.n_eval, "classifier": os.path.abspath(args.classifier), "arch": meta["arch"],
                "classifier_test_accuracy": meta.get("test_accuracy"), "multilabel": meta["multilabel"],
                "negative": negative_name, "negative_index": negative,
                "decision": "logit >= 0" if meta["multilabel"] else "argmax == negative class",
                "classifier_input": {k: meta[k] for k in ("image_size", "channels", "normalization")},
                "formula": "100 * (S_n(reference) - S_n(model)) / S_n(reference)"},
        "sampling": {"seed": args.seed, "generator_weights": "g_ema", "truncation": 1.0,
                     "latents": "z ~ N(0, I), one z per image (no style mixing); z and noise maps of sample i "
                                "from numpy.random.default_rng([seed, i])",
                     "quantisation": "uint8 as if saved (utils.to_uint8) before the classifier and the features",
                     "image_size": size},
        "fid": None if not args.n_fid else {
            "name": fid_name, **fid_info, "n_fid": args.n_fid, "reference_set": real_info,
            "ret_fid": {"retrained": os.path.abspath(args.retrained) if args.retrained else None,
                        "n_samples_each": args.n_fid},
            "frechet_distance": "torch-fidelity fid_statistics_to_metric (float64)"},
        "kid": None if not (args.n_fid and args.kid_subsets and real_features is not None) else {
            "library": "torch-fidelity kid_features_to_metric", "kernel": "(x·y / D + 1)^3", "estimator": "unbiased",
            "subsets": args.kid_subsets, "subset_size": min(args.kid_subset_size, args.n_fid, len(real_features)),
            "n_generated": args.n_fid, "n_real": len(real_features), "rng_seed": metrics.KID_SEED,
            "features": "the FID's, float32", "kid_std": "std over the subsets"},
        "precision_recall": None if not (args.n_fid and args.pr_k and real_features is not None) else {
            "library": "torch-fidelity prc_features_to_metric (Kynkäänniemi et al. 2019)", "k": args.pr_k,
            "n_generated": args.n_fid, "n_real": min(args.n_fid, len(real_features)),
            "features": "the FID's, float32"},
        "std": "population standard deviation (ddof = 0) over the evaluated checkpoints",
        "device": args.device, "torch": torch.__version__,
    }
    record = {"protocol": protocol, "reference": entries[0],
               "retrained": entries[-1] if args.retrained else None,
               "checkpoints": checkpoints, "summary": summary, "recoverability": None}
    table = markdown_table(record, fid_name, args.label)
    if args.recover:
        record["recoverability"] = recoverability(generators, held_out, args, clf, meta, negative, negative_name,
                                                  os.path.join(args.out, "recover.png"))
        table += "\n\n" + recover_table(record["recoverability"], negative_name)

    print(table)
    text = json.dumps(without_nan(record), indent=2)
    utils.atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(text.encode()))
    utils.atomic_write(os.path.join(args.out, "table.md"), lambda f: f.write((table + "\n").encode()))
    save_side_effects_chart(record, os.path.join(args.out, "side_effects.png"))
    if args.n_sample:
        indices, n_neg = grid_indices(ref["negative_mask"], args.n_sample)
        save_comparison_grid(generators, indices, n_neg, args, clf, meta, negative,
                             os.path.join(args.out, "comparison.png"))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
