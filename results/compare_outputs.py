"""
Do two runs' out_dirs hold the same results? Everything but wall times and machines is compared:

    python results/compare_outputs.py OUT_A OUT_B

results.json (stage by stage), every checkpoint's tensors (torch.equal: weights, optimizer state, dev pool),
value_targets.jsonl byte for byte and decode.jsonl row by row. How issue 17's clean-up was shown to leave the
default and smoke runs unchanged (results/README.md, "The default run end to end").
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))  # checkpoints pickle project types

TIMES = ('seconds', 'wall', 'wall_total', 'wall_seconds', 'sample_share', 'score_share', 'update_share',
         'machines', 'config', 'stages', 'secs', 'time')  # what two identical runs may differ in


def same(x, y):
    """Equal up to the keys in TIMES; tensors by torch.equal; nan equals nan."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        keys = {k for k in x if k not in TIMES}
        return isinstance(y, dict) and keys == {k for k in y if k not in TIMES} and all(same(x[k], y[k]) for k in keys)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
    return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)


def compare(a, b):
    """[(what, equal)] for everything the two folders should share."""
    found = []
    ra, rb = (json.load(open(os.path.join(d, 'results.json'))) for d in (a, b))
    found += [(f'results.json {k}', same(ra.get(k), rb.get(k))) for k in sorted(set(ra) | set(rb)) if k not in TIMES]
    for name in sorted(f for f in os.listdir(a) if f.endswith('.pt')):
        if not os.path.exists(os.path.join(b, name)):
            found.append((name, False))
            continue
        x, y = (torch.load(os.path.join(d, name), weights_only=False) for d in (a, b))
        found.append((name, same(x, y)))
    targets = [open(os.path.join(d, 'value_targets.jsonl'), 'rb').read() for d in (a, b)]
    found.append(('value_targets.jsonl', targets[0] == targets[1]))
    rows = [[json.loads(line) for line in open(os.path.join(d, 'decode.jsonl'))] for d in (a, b)]
    found.append((f'decode.jsonl ({len(rows[0])} rows)', same(*rows)))
    return found


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    found = compare(*sys.argv[1:])
    for what, equal in found:
        print(f'{what:40s} {"same" if equal else "DIFFERENT"}')
    sys.exit(0 if all(equal for _, equal in found) else 1)
