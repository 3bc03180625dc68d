"""The passes an evaluation makes: each generator over the seeded samples (classifier decisions,
features; kept in a cache), the real reference set's statistics, KID and precision/recall against
it, and the recoverability inversions of held-out images."""

import hashlib
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

import dataset
import metrics
import report
import utils

REAL_FEATURES_KEPT = 10000  # real images (a seeded subset) whose features KID and precision/recall use


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
    report.save_labelled_rows(rows, path, f"held-out images (first {len(show) // 2}: '{negative_name}', then others) "
                                       f"and their reconstructions; red frame: classified '{negative_name}'")
    protocol = {"n_each": args.recover, "steps": args.recover_steps, "lr": args.recover_lr, "optimiser": "Adam",
                "latent": f"{args.recover_latent.upper()} from the mean of g's mapping over 4096 seeded z", "noise": "seeded per image, fixed",
                "loss": "pixel MSE" + (f" + {args.recover_features} · classifier-feature MSE"
                                       if args.recover_features else ""),
                "images": f"seeded choice (seed {args.seed}) from {args.recover_data or 'the test split'}",
                "mse": "per image mean of (reconstruction − target)² in [-1, 1] pixels, then the mean"}
    return {"protocol": protocol, "generators": per_generator}
