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

import json
import os

import torch

import checkpoint
import dataset
import metrics
import report
import scoring
import utils

OUTPUTS = ["metrics.json", "table.md", "comparison.png", "side_effects.png", "recover.png", "real_stats.npz",
           "args.json"]  # what this script writes in --out (see utils.claim_out_dir)


def load_generators(args):
    """[(role, label, path, g_ema)], reference first, then the evaluated checkpoints, then
    --retrained; all must draw the same latents (same style_dim) at the same size."""
    entries = [("reference", "pre-trained (reference)", args.reference)]
    entries += [("evaluated", label, path) for label, path in zip(report.short_names(args.ckpt), args.ckpt)]
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

    held_out = scoring.held_out_images(args, negative_name, size) if args.recover else None
    # every input is read and checked: only now is --out made
    utils.claim_out_dir(args, OUTPUTS)
    utils.write_args_json(args.out, args)
    real = real_features = None
    if args.n_fid:
        mu, sigma, real_features, real_info = scoring.real_statistics(args, features, fid_info, negative_name, size)
        real = (mu, sigma)
    cache_key = scoring.pass_cache_key(args, negative, fid_info)
    results = [scoring.cached_generator_pass(g, path, cache_key, args, clf, meta, negative, features, label)
               for _, label, path, g in generators]
    names = checkpoint.class_names(meta)
    ref = results[0]
    ref_negatives = int(ref["negative_mask"].sum())
    retrained_stats = results[-1]["stats"] if args.retrained else None

    def entry(role, label, path, result):
        stats = result["stats"]
        n_neg = int(result["negative_mask"].sum())
        return {"role": role, "label": label, "path": os.path.abspath(path), "negatives": n_neg,
                **scoring.kid_and_precision_recall(args, result["features"], real_features),
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
    table = report.markdown_table(record, fid_name, args.label)
    if args.recover:
        record["recoverability"] = scoring.recoverability(generators, held_out, args, clf, meta, negative, negative_name,
                                                  os.path.join(args.out, "recover.png"))
        table += "\n\n" + report.recover_table(record["recoverability"], negative_name)

    print(table)
    text = json.dumps(report.without_nan(record), indent=2)
    utils.atomic_write(os.path.join(args.out, "metrics.json"), lambda f: f.write(text.encode()))
    utils.atomic_write(os.path.join(args.out, "table.md"), lambda f: f.write((table + "\n").encode()))
    report.save_side_effects_chart(record, os.path.join(args.out, "side_effects.png"))
    if args.n_sample:
        indices, n_neg = report.grid_indices(ref["negative_mask"], args.n_sample)
        report.save_comparison_grid(generators, indices, n_neg, args, clf, meta, negative,
                             os.path.join(args.out, "comparison.png"))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return record


if __name__ == "__main__":
    utils.run_cli(main, create_argparser().parse_args())
