"""Checkpoints a crash cannot spoil, keyed by the model's own names, so any number of stages loads them.

Part of the faults layer (it imports nothing of the package; ``run_checkpoint.py`` saves and resumes a run
with it, ``checkpoint_check.py`` refuses a damaged or foreign folder before any rank trains, ``export.py``
writes the model out again).

    python -m pipeline_ref run ... --steps 100 --save-checkpoint ckpt --checkpoint-every 10
    python -m pipeline_ref run ... --steps 100 --resume ckpt          # on 2, 4 or any number of stages
    python -m pipeline_ref export ckpt --out model/                   # the whole model again

Layout (one file per layer, as DeepSpeed's pipeline checkpoints; the names inside are the unsplit model's):

    ckpt/step-000010/layer-003.pt       {"state": {name: tensor}, "optimizer": {name: {"exp_avg": ...}}}
    ckpt/step-000010/rng-rank-00001.pt  that world rank's random generators (CPU, and CUDA on a GPU)
    ckpt/step-000010/complete.json      written last: step, model, optimizer, loss scale, and an index
                                        {file: {"bytes": n, "names": {name: [shape, dtype]}}}
    ckpt/latest                         "step-000010", replaced atomically

A "layer" is one of a list's layers (names ``3.weight``, as ``nn.Sequential(*layers)`` gives them) or one
piece a whole module is cut into (names as ``module.state_dict()`` gives them: ``transformer.h.0.attn.c_attn
.weight``). A rank loads by name through the index, whatever file holds it: a checkpoint taken at 2 stages
loads at 4 (also with ``--split-at``, whose pieces follow the stage count) and into the unsplit module.
The optimizer's state is kept per parameter under the same name (AdamW: both moments and its step count), so
it reshards as the parameters do; the loss scale is one number every rank agrees on (``precision.py``).

Every file is written to a temporary name and ``os.replace``d into place, so a file is whole or absent. A
step's folder counts only once ``complete.json`` is there, written by world rank 0 once every rank has
written its files (a gather of their indexes), so a crash or a full disk mid-save leaves the previous
checkpoint as the one that loads; a failed write ends the run with an error naming the rank and the file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

LATEST = "latest"
MARKER = "complete.json"
FORMAT = 2          # what complete.json says; a folder without it (layer files by index only) is refused


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or used; the message names the folder or file and what to do."""


@dataclass(frozen=True)
class Saved:
    """One complete checkpoint, as its complete.json describes it."""
    folder: Path
    step: int
    files: dict              # file name -> {"bytes": size, "names": {name: [shape, dtype]}}
    optimizer: str           # "sgd" or "adamw": what the state beside each parameter is
    scaler: dict | None      # a float16 run's loss scale and good steps
    layout: dict             # layout_of() the run that saved it
    model: str               # the factory, and how it was called: what rebuilds the model (export)
    model_kwargs: object
    dtype: str
    seed: int
    note: str | None = None  # why this step and not the one ``latest`` names, if so

    @classmethod
    def read(cls, folder: Path, note: str | None = None) -> "Saved":
        marker = folder / MARKER
        try:
            meta = json.loads(marker.read_text())
        except ValueError:
            raise CheckpointError(f"{marker} is not JSON: the checkpoint is damaged; delete {folder} to "
                                  f"resume from an earlier step") from None
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"the checkpoint in {folder} is in format {meta.get('format', 1)} (an "
                                  f"earlier pipeline_ref's, without an index of names); this one reads "
                                  f"format {FORMAT}")
        fields = ("step", "files", "optimizer", "scaler", "layout", "model", "model_kwargs", "dtype", "seed")
        missing = [f for f in fields if f not in meta]
        if missing:
            raise CheckpointError(f"{marker} lacks {', '.join(missing)}: the checkpoint is damaged")
        return cls(folder, **{f: meta[f] for f in fields}, note=note)


def step_folder(directory, step: int) -> Path:
    return Path(directory) / f"step-{step:06d}"


def layer_file(index: int) -> str:
    return f"layer-{index:03d}.pt"


def rng_file(world_rank: int) -> str:
    return f"rng-rank-{world_rank:05d}.pt"


def live_state(layer, index: int, keep=None) -> dict:
    """The layer's parameters and buffers by the unsplit model's names, as the live tensors (``keep``: the
    whole module's state_dict names, for a piece; constants the tracer made are not the model's state)."""
    if keep is None:
        return {f"{index}.{k}": v for k, v in layer.state_dict(keep_vars=True).items()}
    owner = getattr(layer, "graph_module", layer)
    return {k: v for k, v in owner.state_dict(keep_vars=True).items() if k in keep}


def layout_of(cfg) -> dict:
    """Which layers each world rank holds: a rank's random generators are its own again only on the same."""
    return {"pp": cfg.pp, "dp": cfg.dp, "chunks": cfg.chunks, "schedule": cfg.schedule,
            "partition": cfg.partition, "split_at": list(cfg.split_at)}


def describe_run(cfg, scaler_state, num_layers: int) -> dict:
    """What the marker says of the run besides its files: enough to rebuild the model (``export``) and to
    refuse another model or optimizer (``checkpoint_check``)."""
    return {"model": cfg.model, "model_kwargs": cfg.model_kwargs, "dtype": cfg.dtype, "seed": cfg.seed,
            "optimizer": cfg.optimizer, "lr": cfg.lr, "autocast": cfg.autocast, "scaler": scaler_state,
            "layout": layout_of(cfg), "num_layers": num_layers}


def _atomic(path: Path, write) -> int:
    """Write through ``write(temporary path)``, then rename into place; the file's size. A failure (a full
    disk) removes the temporary file and is raised as CheckpointError naming ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {err.strerror or err}; the previous complete "
                              f"checkpoint stays the one that loads") from err
    return path.stat().st_size


def _entry(tensor: torch.Tensor) -> list:
    return [list(tensor.shape), str(tensor.dtype).removeprefix("torch.")]


def save_layers(directory, step: int, layers: dict, optimizer=None, keep=None, rng: tuple | None = None
                ) -> dict:
    """Write this rank's ``layers`` ({layer index: module}) into step ``step``'s folder; return their index.

    ``optimizer``: the rank's (``optim.py``), whose per-parameter state goes beside each parameter;
    ``rng``: (world rank, device) to save that rank's random generators too.
    """
    folder = step_folder(directory, step)
    folder.mkdir(parents=True, exist_ok=True)
    index = {}
    for number, layer in layers.items():
        live = live_state(layer, number, keep)
        state = {name: t.detach().cpu().clone() for name, t in live.items()}
        moments = {name: optimizer.state_of(t) for name, t in live.items()
                   if optimizer is not None and isinstance(t, torch.nn.Parameter)}
        record = {"state": state, "optimizer": {k: v for k, v in moments.items() if v}}
        size = _atomic(folder / layer_file(number), lambda tmp: torch.save(record, tmp))
        index[layer_file(number)] = {"bytes": size, "names": {k: _entry(v) for k, v in state.items()}}
    if rng is not None:
        world_rank, device = rng
        generators = {"cpu": torch.get_rng_state()}
        if device.type == "cuda":
            generators["cuda"] = torch.cuda.get_rng_state(device)
        size = _atomic(folder / rng_file(world_rank), lambda tmp: torch.save(generators, tmp))
        index[rng_file(world_rank)] = {"bytes": size, "names": {}}
    return index


def commit(directory, step: int, run: dict, files: dict) -> None:
    """Mark step ``step`` complete (after every rank's ``save_layers``: ``files`` is their indexes merged),
    then point ``latest`` at it."""
    folder = step_folder(directory, step)
    marker = {"format": FORMAT, "step": step, **run, "files": files}     # run: describe_run's
    _atomic(folder / MARKER, lambda tmp: tmp.write_text(json.dumps(marker, indent=1, default=repr)))
    _atomic(Path(directory) / LATEST, lambda tmp: tmp.write_text(folder.name))


def latest(directory) -> Saved:
    """The newest complete checkpoint in ``directory``; CheckpointError if there is none.

    Its ``note`` says when ``latest`` named a step folder that is missing or has no marker (a save cut short)
    and an earlier complete one is used instead.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint folder {directory}")
    named = directory / LATEST
    pointed = named.read_text().strip() if named.exists() else None
    candidates = ([directory / pointed] if pointed else []) + sorted(directory.glob("step-*"), reverse=True)
    for folder in candidates:
        if (folder / MARKER).exists():
            note = None
            if pointed and folder.name != pointed:
                why = ("is missing" if not (directory / pointed).exists()
                       else f"has no {MARKER} (a save cut short)")
                note = (f"{named} names {pointed}, which {why}: resuming from {folder.name}, the newest "
                        f"complete checkpoint")
            return Saved.read(folder, note)
    raise CheckpointError(f"no complete checkpoint in {directory} (a step folder counts once its {MARKER} is "
                          f"written)")


def load_file(path: Path, mmap: bool = True):
    """A checkpoint file's content, memory-mapped (a rank reads only what it copies); CheckpointError naming
    the file if it does not load."""
    try:
        return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as err:       # a truncated zip, a foreign pickle, a missing file: one answer
        first_line = str(err).splitlines()[0][:120] if str(err) else ""
        raise CheckpointError(f"{path} does not load ({type(err).__name__}: {first_line}): "
                              f"the checkpoint is damaged; delete {path.parent} to resume from an earlier "
                              f"step") from None


def _compare_models(folder: Path, saved: dict, wanted: dict) -> None:
    only_saved = [n for n in saved if n not in wanted]
    only_here = [n for n in wanted if n not in saved]
    if only_saved or only_here:
        first = (f"{only_saved[0]!r} is only in the checkpoint" if only_saved
                 else f"{only_here[0]!r} is only in this model")
        raise CheckpointError(f"the checkpoint in {folder} is of another model: {first} ({len(only_saved)} "
                              f"name(s) only there, {len(only_here)} only here); resume with the model it "
                              f"was saved from, or start without --resume")
    for name, (shape, dtype) in wanted.items():
        saved_shape, saved_dtype = saved[name]
        if saved_shape != shape:
            raise CheckpointError(f"the checkpoint in {folder} is of another model: {name!r} has shape "
                                  f"{tuple(saved_shape)} there, {tuple(shape)} here")
        if saved_dtype != dtype:
            raise CheckpointError(f"the checkpoint in {folder} holds {name!r} in {saved_dtype}, this run in "
                                  f"{dtype}: resume with --dtype {saved_dtype}")


def _check_files(folder: Path, files: dict) -> None:
    for file, entry in files.items():
        path = folder / file
        if not path.exists():
            raise CheckpointError(f"{path} is missing, though {folder.name}'s marker lists it: the "
                                  f"checkpoint is damaged; delete {folder} to resume from an earlier step")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {entry['bytes']} were written: the checkpoint "
                                  f"is damaged; delete {folder} to resume from an earlier step")
        load_file(path)          # a file of the right size that is not what we wrote


def check_whole(saved: Saved, wanted: dict) -> None:
    """CheckpointError unless ``saved`` holds exactly ``wanted`` ({name: [shape, dtype]}: the model to resume)
    in files that are whole: each one its marker lists is there, at the size written, and loads."""
    names = {name: entry for f in saved.files.values() for name, entry in f["names"].items()}
    _compare_models(saved.folder, names, wanted)
    _check_files(saved.folder, saved.files)


def read_state(saved: Saved, names) -> tuple[dict, dict]:
    """(tensors, optimizer states) of ``names``, from whichever files of the checkpoint hold them."""
    folder = saved.folder
    where = {name: file for file, entry in saved.files.items() for name in entry["names"]}
    missing = [n for n in names if n not in where]
    if missing:
        raise CheckpointError(f"the checkpoint in {folder} has no {missing[0]!r}" +
                              (f" (nor {len(missing) - 1} other names)" if len(missing) > 1 else "") +
                              ": it is of another model")
    tensors, moments = {}, {}
    for file in sorted({where[n] for n in names}):
        content = load_file(folder / file)
        for name in names:
            if where[name] == file:
                tensors[name] = content["state"][name]
                if name in content["optimizer"]:
                    moments[name] = content["optimizer"][name]
    return tensors, moments


def load_layers(saved: Saved, layers: dict, optimizer=None, keep=None) -> None:
    """Copy the checkpoint's tensors (and the optimizer's state, by name) into this rank's ``layers``."""
    live = {name: t for number, layer in layers.items()
            for name, t in live_state(layer, number, keep).items()}
    tensors, moments = read_state(saved, list(live))
    with torch.no_grad():
        for name, target in live.items():
            target.copy_(tensors[name])
            if optimizer is not None and isinstance(target, torch.nn.Parameter):
                optimizer.restore(target, moments.get(name, {}))


def load_rng(folder: Path, world_rank: int, device) -> None:
    """This rank's random generators as they were at the save (only meaningful on the same layout)."""
    generators = load_file(folder / rng_file(world_rank), mmap=False)
    torch.set_rng_state(generators["cpu"])
    if "cuda" in generators and device.type == "cuda":
        torch.cuda.set_rng_state(generators["cuda"], device)
