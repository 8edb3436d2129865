"""
What every stage output was made from, and the checks that let a rerun trust it.

Each output (sft.pt, rl_<method>_seed<seed>.pt, value_targets.jsonl, vm.pt, orm.pt, decode.jsonl) has a record
beside it, the same name ending in .json, written before the output's first byte and again when it is finished:

    {"stage": "rl", "made_from": {"config": {the config values the stage reads}, "inputs": {file: digest}},
     "done": true, "machines": [...], "wall_seconds": 512.3, "result": {...}}

Before any work, train.py compares the record of every output it would resume or reuse with what the current
config would make (`check`), and stops with the file, each key that differs and the ways out when they differ.
An output with no record (an earlier restrl) is refused the same way: never trusted. results.json is assembled
from the finished records (train.assemble_results), so runs made side by side in one out_dir each add their own.
Under torchrun (ddp.py) the SFT, RL and VM records also name the number of processes, which their numbers
depend on.
"""
import fcntl
import hashlib
import json
import os
import platform
import shutil
import time

import torch

import ddp

# The config keys each stage's output depends on. Left out on purpose, because they cannot change a result:
# out_dir, stage, restart, device (the machine is recorded instead), eval_batch_size, and the logging intervals
# sft_eval_interval, rl_eval_interval, rl_test_interval (rl_iters is handled apart: a finished run may be
# extended). A record may hold keys that have since become module constants (restrl.CLIP_EPS, ...): only the
# keys a stage reads now are compared.
EVAL_KEYS = ('eval_split', 'eval_tasks', 'final_eval_tasks', 'max_new_tokens')
STAGE_KEYS = {
    'sft': ('seed', 'dtype', 'n_layer', 'n_head', 'n_embd', 'block_size', 'sft_iters', 'sft_batch_size', 'sft_lr',
            *EVAL_KEYS),
    'rl': ('seed', 'dtype', *EVAL_KEYS, 'rl_lr', 'rl_batch_groups', 'rl_group_size', 'rl_temperature', 'rl_reward',
           'rl_min_difficulty', 'rl_filter_tasks', 'rl_std_threshold', 'rl_kl_coef', 'rl_inner_steps'),
    'mcts': ('seed', 'dtype', 'max_new_tokens', 'mcts_batch_tasks', 'mcts_collect_samples', 'mcts_collect_tasks'),
    'vm': ('seed', 'dtype', 'max_new_tokens', 'eval_split', 'vm_iters', 'vm_reads_logp', 'vm_eval_interval',
           'vm_dev_tasks'),
    'decode': ('dtype', 'max_new_tokens', 'decode_samples', 'decode_tasks', 'mcts_batch_tasks'),  # the seed is per row
}
STAGES = ('sft', 'rl', 'mcts', 'vm', 'decode')


def record_path(output):
    return os.path.splitext(output)[0] + '.json'


def write_atomic(path, text):
    """Write to a temporary file of this process, then rename: a reader never sees half a file, and runs side by
    side in one out_dir never write into each other's temporary file."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def read_record(output):
    """The record beside `output`, or None when there is none (or it is unreadable: never trusted)."""
    try:
        with open(record_path(output)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


_digests = {}


def digest(path):
    """A short hash of a file's bytes (cached per size and mtime within a process); None when it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha1()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(1 << 20), b''):
                h.update(block)
        _digests[key] = h.hexdigest()[:16]
    return _digests[key]


def made_from(cfg, stage, inputs):
    """What an output of `stage` is made from: the config values it reads and the digests of its input files
    (named relative to where they are: data files by their path, out_dir files by their name)."""
    config = {k: getattr(cfg, k) for k in STAGE_KEYS[stage]}
    if ddp.world() > 1 and stage in ('sft', 'rl', 'vm'):  # their numbers depend on how many processes share a batch
        config['world_size'] = ddp.world()  # (the MCTS and decoding outputs do not: their units keep their seeds)
    return dict(config=config, inputs={name: digest(path) for name, path in inputs.items()})


def machine(device):
    """The machine a record was made on: the device, its name, and the CPU count (the sandbox's workers)."""
    name = torch.cuda.get_device_name() if device.startswith('cuda') else (platform.processor() or platform.machine())
    out = dict(device=device, name=name, cpus=os.cpu_count(), host=platform.node())
    return dict(out, processes=ddp.world()) if ddp.world() > 1 else out


def differences(recorded, wanted, ignore=()):
    """Lines naming each config key (of those `wanted` has, but those in `ignore`) and input that differ between two
    made_from dicts."""
    out = []
    for part in ('config', 'inputs'):
        old, new = recorded.get(part, {}), wanted[part]
        # config: the keys this run reads, and world_size when either side has it (made_from records it for >1 process)
        keys = (set(new) | {'world_size'} & set(old)) - set(ignore) if part == 'config' else set(old) | set(new)
        for k in sorted(keys):
            if old.get(k, '(not recorded)') != new.get(k, '(not recorded)'):
                what = k if part == 'config' else f"input {k}"
                out.append(f"  {what}: {old.get(k, '(not recorded)')!r} then, {new.get(k, '(missing)')!r} now")
    return out


class Stale(Exception):
    """An output made from other values than the current config would use."""


def check(output, stage, wanted, changing=(), ignore=()):
    """Raise Stale (the message names the file, what differs and the ways out) when `output` exists and its record
    is missing, or says it was made from other values than `wanted` (config keys in `ignore` aside), or from an
    input in `changing` (one this run will rewrite before using it)."""
    if not os.path.exists(output):
        return
    rec = read_record(output)
    if rec is None or 'made_from' not in rec:
        why = [f"  it has no record {os.path.basename(record_path(output))} of what it was made from "
               "(made by an earlier restrl, or copied without it)"]
    else:
        why = differences(rec['made_from'], wanted, ignore)
        why += [f"  input {k}: this run rewrites it first (it is not finished)" for k in wanted['inputs'] if k in changing]
    if why:
        raise Stale(f"{output} was not made from this config:\n" + "\n".join(why) + "\n"
                    f"Use another --out_dir, or --restart={stage} to redo {stage} and the stages after it "
                    f"(the old files move to {os.path.join(os.path.dirname(output) or '.', 'replaced')}/).")


def start(output, stage, wanted, device):
    """Write (or keep) the record of an output about to be made or resumed: from now on, a kill leaves an output
    whose origin is known."""
    rec = read_record(output) if os.path.exists(output) else None
    if rec is None:
        rec = dict(stage=stage, made_from=wanted, done=False, machines=[], wall_seconds=0.0)
    rec['done'] = False  # until finish(): an RL run extended to more iterations is unfinished again
    if machine(device) not in rec['machines']:
        rec['machines'].append(machine(device))
    write_atomic(record_path(output), json.dumps(rec, indent=1))
    return rec


def finish(output, rec, seconds, result, **extra):
    """Mark an output finished: its result, and the wall time of the processes that made it (a killed process's
    time since its last record is not counted)."""
    rec.update(done=True, wall_seconds=rec['wall_seconds'] + seconds, result=result, **extra)
    write_atomic(record_path(output), json.dumps(rec, indent=1))


def move_aside(paths, out_dir):
    """--restart: move outputs (and their records) into out_dir/replaced/<time>/ instead of deleting them."""
    dest = os.path.join(out_dir, 'replaced', time.strftime('%Y%m%d-%H%M%S'))
    moved = []
    for p in paths:
        for f in (p, record_path(p), p + '.progress'):
            if os.path.exists(f):
                os.makedirs(dest, exist_ok=True)
                shutil.move(f, os.path.join(dest, os.path.basename(f)))
                moved.append(os.path.basename(f))
    return dest, moved


class locked:
    """An exclusive lock on out_dir/.lock: one process at a time assembles and writes results.json."""

    def __init__(self, out_dir):
        self.path = os.path.join(out_dir, '.lock')

    def __enter__(self):
        self.f = open(self.path, 'w')
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()
