"""Training as Darknet does it: SGD with momentum and weight decay, its learning-rate policies,
batch and subdivisions, atomic checkpoints and exact resume.

The update rule is Darknet's ``update_convolutional_layer`` (src/convolutional_layer.c), written
with our gradients g = dL/dp of a loss summed over the batch (Darknet accumulates -g in
``*_updates``):

    update <- momentum * update - g                 (all trainable parameters)
    update <- update - decay * batch * weights      (weights only, not biases or scales)
    p      <- p + learning_rate / batch * update

The learning rate is ``get_current_rate`` (src/network.c): a burn-in ramp
``rate * (iteration / burn_in) ** power`` for the first ``burn_in`` iterations, then the policy.

One iteration is Darknet's ``train_network`` (src/network.c): ``batch`` images per update,
split into ``subdivisions`` forward/backward passes of ``batch / subdivisions`` images each
(Darknet's ``net->batch``); ``seen`` grows by that mini-batch before each forward pass (the
region loss reads it); the gradients of the mini-batches add up; then one update. Darknet's
``get_current_batch`` = seen / batch is then the number of updates including this one, so
the k-th update (k = 1, 2, ...) uses ``learning_rate(options, k)``, and training runs while
``get_current_batch < max_batches``: updates 1 .. max_batches.

Which images, and how augmented, is drawn from ``numpy.random.default_rng([seed, k])`` for
update k alone (Darknet draws ``batch`` random images with replacement, ``get_random_paths``),
so the run after a resume is the run without interruption, bit for bit.

Checkpoints, every ``checkpoint_every`` updates and on Ctrl-C, in the output directory:
``<name>_<k>.weights`` (Darknet format, :func:`refquant.darknet.save_weights`),
``<name>_<k>.optimizer.npz`` (the momentum buffers ``update``, no pickle), then
``<name>.checkpoint.json`` naming them, with the update count, ``seen`` and the seed. Each
file is written by :func:`refquant.atomic.atomic_write` (a temporary file renamed into place),
the JSON last, so a crash at any moment leaves the previous checkpoint whole and named; the
temporary files a killed run leaves are removed when the next run starts. Older
checkpoint files are removed once the JSON no longer names them. At the end,
``<name>_final.weights`` (Darknet's name for the last weights).
"""
import concurrent.futures
import hashlib
import json
import math
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from refquant import darknet, validate
from refquant.atomic import atomic_write, remove_partials
from refquant.data.augment import load_batch
from refquant.data.voc import is_plain_name, load_voc, read_names

POLICIES = ("constant", "step", "steps", "exp", "poly", "sig")


DECAYED = ("weights",)
"""Parameters under weight decay: Darknet's ``update_convolutional_layer`` decays the
weights only, not the biases nor the batch-norm scales."""


CHECKPOINT_FORMAT = 1


def learning_rate(options, iteration):
    """Darknet's ``get_current_rate`` for a parsed ``[net]`` section.

    options: dict with ``learning_rate`` and the keys its ``policy`` needs (``steps``/``scales``
    for steps, ``step``/``scale`` for step, ``gamma`` for exp and sig, ``power`` and
    ``max_batches`` for poly, ``burn_in`` and ``power`` for the ramp). iteration: the number of
    updates done so far (Darknet's ``get_current_batch``).
    """
    rate = float(options.get("learning_rate", 0.001))
    burn_in = int(options.get("burn_in", 0))
    power = float(options.get("power", 4))
    if iteration < burn_in:
        return rate * (iteration / burn_in) ** power
    policy = options.get("policy", "constant")
    if policy == "constant":
        return rate
    if policy == "step":
        return rate * float(options.get("scale", 1)) ** (iteration // int(options.get("step", 1)))
    if policy == "steps":
        steps = list(options.get("steps", []))
        scales = list(options.get("scales", []))
        if len(steps) != len(scales):
            raise ValueError(f"[net] steps has {len(steps)} values but scales has {len(scales)}; "
                             "Darknet expects one scale per step")
        for step, scale in zip(steps, scales):
            if step > iteration:
                return rate
            rate *= scale
        return rate
    if policy == "exp":
        return rate * float(options.get("gamma", 1)) ** iteration
    if policy == "poly":
        return rate * (1 - iteration / int(options["max_batches"])) ** power
    if policy == "sig":
        gamma = float(options.get("gamma", 1))
        return rate / (1 + math.exp(gamma * (iteration - int(options.get("step", 1)))))
    raise ValueError(f"[net] policy={policy!r} is not one of {', '.join(POLICIES)}")


TRAINING_KEYS = ("batch", "subdivisions", "learning_rate", "momentum", "decay", "policy", "burn_in",
                 "power", "max_batches", "step", "scale", "steps", "scales", "gamma",
                 "jitter", "hue", "saturation", "exposure")
"""The options that define a training run: the ``[net]`` hyperparameters plus the augmentation
(``jitter`` from the last ``[region]`` layer, as Darknet's ``train_detector`` reads it)."""


def training_options(net, overrides=None):
    """The resolved training options: the cfg's ``[net]`` (and region ``jitter``), then ``overrides``.

    ``overrides``: {key: value} for keys of :data:`TRAINING_KEYS`; None values are ignored.
    ValueError naming the option for an unknown key, batch not a multiple of subdivisions,
    max_batches < 1, or a policy refquant does not train with.
    """
    head = net.layers[-1]
    hyper = net.hyperparameters
    options = {key: hyper[key] for key in TRAINING_KEYS if key in hyper}
    options["jitter"] = float(getattr(head, "jitter", 0.0))
    for key, value in (overrides or {}).items():
        if key not in TRAINING_KEYS:
            raise ValueError(f"training option {key!r}: unknown; expected one of {', '.join(TRAINING_KEYS)}")
        if value is not None:
            options[key] = _checked_override(key, value)
    options["steps"] = [int(v) for v in options.get("steps", ())]
    options["scales"] = [float(v) for v in options.get("scales", ())]
    for key in ("batch", "subdivisions", "max_batches", "burn_in", "step"):
        options[key] = int(options[key])
    for key in ("learning_rate", "momentum", "decay", "power", "scale", "gamma", "jitter", "hue",
                "saturation", "exposure"):
        options[key] = float(options[key])
    if options["batch"] < 1 or options["subdivisions"] < 1 or options["batch"] % options["subdivisions"]:
        raise ValueError(f"batch={options['batch']}, subdivisions={options['subdivisions']}: expected positive "
                         "integers with batch a multiple of subdivisions (Darknet's mini-batch is batch/subdivisions)")
    if options["max_batches"] < 1:
        raise ValueError(f"max_batches={options['max_batches']}: expected at least 1 update "
                         "(set [net] max_batches or --max-batches)")
    if options["policy"] not in POLICIES:
        raise ValueError(f"policy={options['policy']!r}: refquant trains with {', '.join(POLICIES)}")
    if options["policy"] == "steps" and len(options["steps"]) != len(options["scales"]):
        raise ValueError(f"steps {options['steps']} and scales {options['scales']}: expected one scale per step")
    return options


def _checked_override(key, value):
    """An override under the rules of its cfg key (finite, :data:`refquant.darknet.KEY_RANGES`)."""
    for item in (value if isinstance(value, (list, tuple)) else (value,)):
        if isinstance(item, float) and not math.isfinite(item):
            raise validate.InputError(f"training option {key}={item}: expected a finite number")
        if key in darknet.KEY_RANGES and not isinstance(item, str):
            validate.check_range(item, darknet.KEY_RANGES[key], f"training option {key}")
    return value


def trainable(net):
    """[(layer index, name, parameter)] of every trainable parameter (those a layer has grads for)."""
    return [(index, name, layer.params[name]) for index, layer in enumerate(net.layers) for name in layer.grads]


def zero_updates(net):
    """The momentum buffers ``update``: zeros like every trainable parameter, keyed (layer index, name)."""
    return {(index, name): np.zeros_like(param) for index, name, param in trainable(net)}


def sgd_update(net, gradients, updates, rate, momentum, decay, batch):
    """One Darknet update of every trainable parameter, in place (see the module docstring).

    ``gradients``: {(layer index, name): dL/dp} of the loss summed over the ``batch`` images;
    ``updates``: the momentum buffers (changed in place). Arithmetic in the parameters' dtype.
    """
    for index, name, param in trainable(net):
        dtype = param.dtype.type
        update = updates[(index, name)]
        update *= dtype(momentum)
        update -= gradients[(index, name)]
        if name in DECAYED:
            update -= dtype(decay * batch) * param
        param += dtype(rate / batch) * update


def iteration_rng(seed, iteration):
    """The random stream of update ``iteration`` (1-based): ``numpy.random.default_rng([seed, iteration])``."""
    return np.random.default_rng([int(seed), int(iteration)])


def _truth_limit(head):
    """How many truths per image the region loss reads (Darknet: at most ``max``, and 30)."""
    return min(getattr(head, "max_boxes", 30), 30)


def iteration_batches(net, records, options, iteration, seed):
    """The mini-batches of update ``iteration`` (1-based): ``[(x, truths)] * subdivisions``.

    ``batch`` records drawn with replacement, then each mini-batch loaded and augmented
    (:func:`refquant.data.augment.load_batch`), all from :func:`iteration_rng`, in that order.
    Depends on the network only through its input size, so it can be loaded ahead
    (:func:`prefetched_batches`) while the previous update trains.
    """
    rng = iteration_rng(seed, iteration)
    batch, subdivisions = options["batch"], options["subdivisions"]
    mini = batch // subdivisions
    chosen = rng.integers(len(records), size=batch)
    height, width = net.input_shape[1], net.input_shape[2]
    return [load_batch([records[i] for i in chosen[part * mini:(part + 1) * mini]], width, height, rng,
                       jitter=options["jitter"], hue=options["hue"], saturation=options["saturation"],
                       exposure=options["exposure"])
            for part in range(subdivisions)]


def prefetched_batches(net, records, options, seed, iterations):
    """``(iteration, iteration_batches(...))`` for each of ``iterations``, the next update's
    batches loaded in a background thread while the caller trains on these.

    The same batches as loading each in turn (every update has its own generator,
    :func:`iteration_rng`); decoding and augmenting images (about 12 % of a QAT update of the
    shapes detector) overlaps the BLAS calls of training, which release the GIL. On 2 cores, where
    BLAS already uses both, that saved about 4 % of the update time in ``refquant demo``.
    """
    iterations = list(iterations)
    if not iterations:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="refquant-batches") as pool:
        pending = pool.submit(iteration_batches, net, records, options, iterations[0], seed)
        for position, iteration in enumerate(iterations):
            batches = pending.result()
            if position + 1 < len(iterations):
                pending = pool.submit(iteration_batches, net, records, options, iterations[position + 1], seed)
            yield iteration, batches


def train_iteration(net, records, options, updates, iteration, seed, batches=None):
    """Darknet's ``train_network`` for update ``iteration`` (1-based): returns the summed loss.

    Takes the mini-batches of :func:`iteration_batches` (``batches``, or loaded here when None),
    runs ``subdivisions`` forward/backward passes (``net.seen`` grows by the mini-batch before
    each, as in Darknet), adds the gradients, and applies :func:`sgd_update` with
    ``learning_rate(options, iteration)``.
    """
    if batches is None:
        batches = iteration_batches(net, records, options, iteration, seed)
    head = net.layers[-1]
    limit = _truth_limit(head)
    gradients = {key: np.zeros_like(value) for key, value in updates.items()}
    total = 0.0
    for x, truths in batches:
        net.seen += len(x)
        net.forward(x, training=True)
        loss, dout = head.loss([t[:limit] for t in truths], seen=net.seen)
        net.backward(dout)
        for index, name, _ in trainable(net):
            gradients[(index, name)] += net.layers[index].grads[name]
        total += loss
    sgd_update(net, gradients, updates, learning_rate(options, iteration), options["momentum"],
               options["decay"], options["batch"])
    return total


def save_checkpoint(out_dir, name, net, updates, state):
    """Write the checkpoint of update ``state['iteration']`` (see the module docstring); returns the JSON path.

    ``state``: JSON-serialisable dict with at least ``iteration``; ``seen`` is taken from ``net``.
    """
    out_dir = Path(out_dir)
    iteration = int(state["iteration"])
    weights_file = f"{name}_{iteration:06d}.weights"
    optimizer_file = f"{name}_{iteration:06d}.optimizer.npz"
    atomic_write(out_dir / weights_file, lambda f: f.write(weights_bytes(net)))
    arrays = {f"{index}/{param}": value for (index, param), value in updates.items()}
    atomic_write(out_dir / optimizer_file, lambda f: np.savez(f, **arrays))
    pointer = out_dir / f"{name}.checkpoint.json"
    previous = _read_json(pointer) if pointer.exists() else None
    record = dict(state, format=CHECKPOINT_FORMAT, seen=int(net.seen), weights=weights_file,
                  optimizer=optimizer_file)
    atomic_write(pointer, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
    if previous is not None:
        for key in ("weights", "optimizer"):
            old = previous.get(key)
            if old and old != record[key] and (out_dir / old).exists():
                os.remove(out_dir / old)
    return pointer


def weights_bytes(net):
    """The Darknet ``.weights`` file of ``net`` as bytes (:func:`refquant.darknet.save_weights`)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.weights"
        darknet.save_weights(net, path)
        return path.read_bytes()


def load_checkpoint(out_dir, name, net):
    """Read ``<name>.checkpoint.json`` and its files into ``net``; returns (state, updates).

    ValueError naming the file when it is missing, of another format, or does not fit ``net``.
    """
    out_dir = Path(out_dir)
    pointer = out_dir / f"{name}.checkpoint.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{pointer}: no checkpoint to resume from (train without --resume first)")
    state = _read_json(pointer)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{pointer}: checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    validate.json_object(state, f"{pointer}", required=("iteration", "seen", "weights", "optimizer"), closed=False)
    for key in ("iteration", "seen"):
        validate.json_integer(state[key], f"{pointer}: {key}", validate.at_least(0))
    for key in ("weights", "optimizer"):  # files of the run, beside the pointer
        file_name = validate.json_string(state[key], f"{pointer}: {key}")
        if not is_plain_name(file_name):
            raise validate.InputError(f"{pointer}: {key}={file_name!r} is not a file name in {out_dir}")
    header, arrays = darknet.read_weights(out_dir / state["weights"], net)
    for (index, param), values in arrays.items():
        net.layers[index].params[param][...] = values
    net.weights_header = header[:3]
    net.seen = header[3]
    if net.seen != state["seen"]:
        raise ValueError(f"{out_dir / state['weights']}: seen={net.seen} but {pointer} says {state['seen']}")
    updates = zero_updates(net)
    _read_optimizer(out_dir / state["optimizer"], updates)
    return state, updates


def _read_optimizer(path, updates):
    """Fill ``updates`` ({(layer, param): momentum buffer}) from the ``.npz`` at ``path``: the same
    arrays, shapes and real dtypes, finite; ValueError naming the file and the array otherwise."""
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not an .npz archive")
        with stored:
            arrays = {key: stored[key] for key in stored.files}
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as error:  # missing or damaged
        raise ValueError(f"{path}: not a readable optimizer archive ({error})") from None
    expected = {f"{index}/{param}" for index, param in updates}
    if set(arrays) != expected:
        raise ValueError(f"{path}: holds {sorted(arrays)}, the network needs {sorted(expected)}")
    for (index, param), buffer in updates.items():
        value = arrays[f"{index}/{param}"]
        if value.shape != buffer.shape or value.dtype.kind not in "fiu":
            raise ValueError(f"{path}: {index}/{param} is {value.dtype} {value.shape}, expected real numbers "
                             f"of shape {buffer.shape}")
        if validate.count_nonfinite(value.astype(np.float64)):
            raise ValueError(f"{path}: {index}/{param} has {validate.count_nonfinite(value.astype(np.float64))} "
                             f"NaN or infinite momentum values; expected finite")
        buffer[...] = value


def _read_json(path):
    state = validate.read_json(path, "checkpoint")
    if not isinstance(state, dict):
        raise validate.InputError(f"{path}: not a checkpoint (expected a JSON object)")
    return state


def _snapshot(net, updates):
    """Copies of everything an iteration changes: parameters (with batch-norm rolling
    statistics), momentum buffers and ``seen``; :func:`_restore` puts them back."""
    return ([(index, name, value.copy()) for index, name, value in net.parameters()],
            {key: value.copy() for key, value in updates.items()}, net.seen)


def _restore(net, updates, snapshot):
    params, buffers, seen = snapshot
    for index, name, value in params:
        net.layers[index].params[name][...] = value
    for key, value in buffers.items():
        updates[key][...] = value
    net.seen = seen


def layers_digest(cfg):
    """sha256 of a cfg's layer sections (everything after ``[net]``, as read by
    :func:`refquant.darknet.read_cfg`): the network a checkpoint belongs to, whatever the
    ``[net]`` training options, which are compared one by one."""
    sections = darknet.read_cfg(cfg)[1:]
    text = json.dumps([[section["name"], sorted((key, value) for key, (value, _) in section["options"].items())]
                       for section in sections])
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path):
    """sha256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def records_digest(records):
    """sha256 identifying the training images: every record's id, size and objects, and its
    image file's byte count (the images are not re-read)."""
    text = json.dumps([[r["id"], r["width"], r["height"], os.path.getsize(r["image_path"]),
                        [[o["class_id"], list(o["box"]), bool(o["difficult"])] for o in r["objects"]]]
                       for r in records])
    return hashlib.sha256(text.encode()).hexdigest()


def train(cfg, data, names, out_dir, split="train", weights=None, seed=0, overrides=None, checkpoint_every=100,
          resume=False, name=None, progress=True, on_update=None, force=False):
    """Train the network of ``cfg`` on the VOC tree ``data``; returns a summary dict.

    ``names``: the class names file; ``split``: the image set trained on; ``weights``:
    optional Darknet weights to start from (else the seeded initialisation of
    :func:`refquant.darknet.load`); ``overrides``: {option: value} over the cfg (see
    :func:`training_options`); ``name``: file stem of the outputs (default: the cfg's).
    ``resume``: continue from ``<out_dir>/<name>.checkpoint.json`` (the network, data, seed and
    options must be those it was written with; the learning-rate schedule, ``max_batches``
    included, may change only after the checkpoint, see :func:`_check_same_run`).
    ``on_update(iteration, loss)``: called after each update (tests use it to interrupt).

    On KeyboardInterrupt the iteration under way is rolled back, a checkpoint of the last
    whole update is written, and the KeyboardInterrupt propagates. Returns
    ``{"iteration", "seen", "weights" (the final weights path), "loss" (per-image loss of
    each update of this call), "seconds"}``.
    """
    cfg, data, out_dir = Path(cfg), Path(data), Path(out_dir)
    name = name or cfg.stem
    if not is_plain_name(name):
        raise ValueError(f"name {name!r}: expected a plain file stem for the files in {out_dir}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}: expected a positive number of updates")
    class_names = read_names(names)
    net = darknet.load(cfg, weights, seed=seed)
    head = net.layers[-1]
    if head.type != "region":
        raise ValueError(f"{cfg}: the last layer is [{head.type}]; refquant trains region (YOLOv2) heads")
    if head.classes != len(class_names):
        raise ValueError(f"{cfg}: [region] classes={head.classes} but {names} lists {len(class_names)} names")
    options = training_options(net, overrides)
    if getattr(head, "random", 0):
        warnings.warn(f"{cfg}: [region] random=1 (multi-scale training) is not implemented; training at "
                      f"{net.input_shape[2]}x{net.input_shape[1]} only", stacklevel=2)
    records = load_voc(data, split, class_names)
    if not records:
        raise ValueError(f"{data}: split {split!r} has no images")
    identity = {"cfg": str(cfg), "layers_sha256": layers_digest(cfg), "data": str(data),
                "data_sha256": records_digest(records), "split": split, "seed": int(seed),
                "initial_weights": None if weights is None else str(weights),
                "initial_weights_sha256": None if weights is None else file_digest(weights), "options": options}
    remove_partials(out_dir)  # what a killed run was writing: never complete, never read
    if not resume and not force and out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty (an earlier run's files?); resume=True (--resume) continues "
                              f"the run it holds, force=True (--force) writes over it")
    out_dir.mkdir(parents=True, exist_ok=True)
    iteration, seconds = 0, 0.0
    updates = zero_updates(net)
    if resume:
        state, updates = load_checkpoint(out_dir, name, net)
        _check_same_run(state, identity, out_dir / f"{name}.checkpoint.json")
        iteration, seconds = int(state["iteration"]), float(state.get("seconds", 0.0))
    losses = []
    average = None
    def state():
        return dict(identity, iteration=iteration, seconds=round(seconds, 3))
    bar = tqdm(total=options["max_batches"], initial=iteration, desc=f"train {name}", unit="batch",
               disable=not progress, dynamic_ncols=True)
    batches = prefetched_batches(net, records, options, seed, range(iteration + 1, options["max_batches"] + 1))
    try:
        for number, loaded in batches:  # closed in the finally below (stops the loading thread)
            snapshot = _snapshot(net, updates)
            start = time.perf_counter()
            try:
                loss = train_iteration(net, records, options, updates, number, seed, loaded) / options["batch"]
            except BaseException:
                _restore(net, updates, snapshot)
                raise
            elapsed = time.perf_counter() - start
            iteration = number
            seconds += elapsed
            losses.append(loss)
            # Darknet prints the running average avg_loss = .9 avg_loss + .1 loss.
            average = loss if average is None else 0.9 * average + 0.1 * loss
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", avg=f"{average:.3f}", lr=f"{learning_rate(options, iteration):.2e}",
                            img_s=f"{options['batch'] / elapsed:.1f}", refresh=False)
            if iteration % checkpoint_every == 0 or iteration == options["max_batches"]:
                save_checkpoint(out_dir, name, net, updates, state())
                bar.write(f"{name}: update {iteration}/{options['max_batches']} avg loss {average:.4f} "
                          f"lr {learning_rate(options, iteration):.3g} seen {net.seen} "
                          f"time {seconds:.0f} s ({options['batch'] * iteration / max(seconds, 1e-9):.1f} img/s)"
                          + _region_stats(head))
            if on_update is not None:
                on_update(iteration, loss)
    except KeyboardInterrupt:
        pointer = save_checkpoint(out_dir, name, net, updates, state())
        bar.write(f"{name}: interrupted; checkpoint of update {iteration} in {pointer} (continue with --resume)")
        raise
    finally:
        batches.close()
        bar.close()
    final = out_dir / f"{name}_final.weights"
    atomic_write(final, lambda f: f.write(weights_bytes(net)))
    return {"iteration": iteration, "seen": int(net.seen), "weights": final, "loss": losses, "seconds": seconds}


def _region_stats(head):
    """Darknet's region printout of the last mini-batch: avg IoU, class, obj, no obj, recall."""
    stats = getattr(head, "stats", None)
    if not stats:
        return ""
    return (f"; region avg IoU {stats['avg_iou']:.3f} class {stats['class']:.3f} obj {stats['obj']:.3f} "
            f"no obj {stats['no_obj']:.4f} recall {stats['recall']:.3f}")


SCHEDULE_KEYS = ("learning_rate", "policy", "burn_in", "power", "max_batches", "step", "scale", "steps", "scales",
                 "gamma")
"""Options that only shape the learning-rate schedule (and its length)."""


def _check_same_run(state, identity, pointer):
    """Resume only the run the checkpoint belongs to.

    Same network layers, training images and annotations, split, seed, initial weights (by
    content, not path, so a run moves between machines), and the same options except the
    schedule (:data:`SCHEDULE_KEYS`); the schedule may change only if every update already done
    would have had exactly the same learning rate under it (so a longer run, or a learning-rate
    step placed after the checkpoint, still gives the result of one uninterrupted run).
    """
    for key in ("layers_sha256", "data_sha256", "split", "seed", "initial_weights_sha256"):
        if state.get(key) != identity[key]:
            raise ValueError(f"{pointer}: the checkpoint was written with {key}={state.get(key)!r}, "
                             f"this run has {identity[key]!r}; resume needs the same run")
    saved, current = dict(state.get("options", {})), dict(identity["options"])
    changed = sorted(k for k in set(saved) | set(current) if k not in SCHEDULE_KEYS and saved.get(k) != current.get(k))
    if changed:
        raise ValueError(f"{pointer}: training options {', '.join(changed)} differ from the checkpoint's; "
                         "resume needs the same options (only the learning-rate schedule may change)")
    for k in range(1, int(state["iteration"]) + 1):
        if learning_rate(saved, k) != learning_rate(current, k):
            raise ValueError(f"{pointer}: the new learning-rate schedule gives update {k} the rate "
                             f"{learning_rate(current, k):g} where the checkpointed run used "
                             f"{learning_rate(saved, k):g}; only updates after {state['iteration']} may change")


def shape_iou(shapes, centroids):
    """IoU of boxes (M, 2) and centroids (K, 2) given as (w, h), both centred at the same point: (M, K).

    inter = min(w) min(h), union = w h + w' h' - inter (YOLOv2's distance for dimension clusters).
    """
    shapes, centroids = np.asarray(shapes, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    inter = np.minimum(shapes[:, None, 0], centroids[None, :, 0]) * np.minimum(shapes[:, None, 1], centroids[None, :, 1])
    union = (shapes[:, 0] * shapes[:, 1])[:, None] + (centroids[:, 0] * centroids[:, 1])[None, :] - inter
    return inter / union


def anchor_clusters(records, num, grid_width, grid_height, iterations=300):
    """Region anchors (num, 2) in grid cells: k-means of the training boxes' shapes, distance 1 - IoU.

    The "dimension clusters" of YOLOv2 (Redmon and Farhadi, YOLO9000, section 2): the box
    shapes (w, h), compared as if centred together, clustered with d(box, centroid) =
    1 - IoU(box, centroid) (:func:`shape_iou`). Boxes: the non-difficult objects of
    ``records`` (what training sees, :func:`refquant.data.augment.darknet_truths`), w, h
    relative to the image times (grid_width, grid_height), the head's grid in cells, as the
    cfg's ``anchors`` are. Deterministic: the initial centroids are the boxes at the area
    quantiles (k + 1/2) / num; then Lloyd's iterations (each box to the centroid of highest
    IoU, first on a tie; each centroid to the mean (w, h) of its boxes; an empty cluster
    keeps its centroid) until the assignment no longer changes. Returns the centroids
    sorted by area.
    """
    from refquant.data.augment import darknet_truths
    truths = [darknet_truths(record) for record in records]
    shapes = np.concatenate([t[:, 2:4] for t in truths if len(t)], axis=0).astype(np.float64) * (grid_width, grid_height)
    if len(shapes) < num:
        raise ValueError(f"anchor_clusters: {len(shapes)} boxes cannot make {num} clusters")
    by_area = shapes[np.argsort(shapes[:, 0] * shapes[:, 1], kind="stable")]
    centroids = by_area[((np.arange(num) + 0.5) / num * len(shapes)).astype(int)].copy()
    assignment = None
    for _ in range(iterations):
        nearest = np.argmax(shape_iou(shapes, centroids), axis=1)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        for k in range(num):
            if np.any(assignment == k):
                centroids[k] = shapes[assignment == k].mean(axis=0)
    return centroids[np.argsort(centroids[:, 0] * centroids[:, 1], kind="stable")]
