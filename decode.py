"""
Decoding at equal budgets (ReST-RL's second claim): VM-MCTS against one sample, greedy and rerankers.

Budget = N complete samples per task (the paper's axis: 1 to 100 at temperature 0.7); the tokens they took
are reported beside. The methods at each N:
  one_sample      the first sample: what the policy gives at temperature 0.7 (mcts.TEMPERATURE)
  likelihood_bon  best-of-N by the policy's own mean token log-prob (free: the sampler computes it)
  orm_bon         best-of-N by the ORM
  vm_bon          best-of-N by the VM's value of the complete program (PRM-style 'last')
  prm_min         best-of-N by the VM's least value over the program's line ends (PRM-style 'min')
  prm_mean        best-of-N by the mean of those values
  orm_mcts        the search (mcts.py), the ORM scoring complete samples only (the official ORM-MCTS)
  vm_mcts         the search, the VM scoring the samples and the children's states (the paper's method)
greedy (one program at temperature 0) is a reference line. The best-of-N methods share one pool of max(N)
samples per task and seed and take its first N, as the paper's curves do; each search runs once per N.
No method runs a test to choose: picks read scores only, and programs are graded afterwards.
"""
import json
import os
import sys
import time
from functools import partial

import torch
from tqdm import tqdm

import ddp
import sandbox
from tasks import TOKENIZER_FILE, get_tokenizer, grade, load_tasks, mean_se, pad_id, sample_programs, spread, step_seed
import value
from configurator import load_policy, pick_device
import mcts
from mcts import Tree, best_sample, format_tree, policy_expander, run_search, test_scorer

BEST_OF_N = {'one_sample': None, 'likelihood_bon': 'likelihood', 'orm_bon': 'orm', 'vm_bon': 'vm',
             'prm_min': 'prm_min', 'prm_mean': 'prm_mean'}  # method -> the scores it picks by (one_sample: the first)
SEARCHES = ('orm_mcts', 'vm_mcts')
METHODS = ('greedy', *BEST_OF_N, *SEARCHES)


def line_scores(vm, enc, tasks, pool):
    """PRM-style: per sample the least and the mean of the VM's values at its line ends and its last token
    ({'prm_min': per task a list, 'prm_mean': the same})."""
    newline = enc.encode_single_token('\n')
    seqs, starts = zip(*[value.encode_state(enc, t['prompt'], d.text, d.complete, vm.gpt.config.block_size)
                         for t, draws in zip(tasks, pool) for d in draws])
    vals, idx, lengths = value.values_at_positions(vm.eval(), seqs, starts, pad_id(enc))
    pos = torch.arange(idx.size(1), device=idx.device)[None, :]  # (1, L)
    last = pos == lengths[:, None] - 1
    step_end = ((idx == newline) & (pos >= torch.tensor(starts, device=idx.device)[:, None])
                & (pos < lengths[:, None])) | last  # (N, L)
    mins = iter(vals.masked_fill(~step_end, float('inf')).min(1).values.tolist())  # min over steps of V(prefix)
    means = iter(((vals * step_end).sum(1) / step_end.sum(1)).tolist())  # mean over steps of V(prefix)
    return dict(prm_min=[[next(mins) for _ in draws] for draws in pool],
                prm_mean=[[next(means) for _ in draws] for draws in pool])


def search_answers(cfg, policy, model, enc, tasks, n, gen, value_states):
    """The search with `model` (VM or ORM) scoring, n samples per task: (answers, samples, tokens per task)."""
    expand = policy_expander(policy, enc, cfg.max_new_tokens, mcts.TEMPERATURE, {}, gen)
    trees = []
    for i in range(0, len(tasks), cfg.mcts_batch_tasks):
        trees += run_search([Tree(t, n) for t in tasks[i:i + cfg.mcts_batch_tasks]], expand,
                            value.value_scorer(model, enc), num_sample=mcts.NUM_SAMPLE,
                            num_decision=mcts.NUM_DECISION, c=mcts.C_DECODE, value_states=value_states)
    return ([best_sample(t).text if t.samples else '' for t in trees], [len(t.samples) for t in trees],
            [t.tokens for t in trees])


def search_row(cfg, policy, model, enc, tasks, n, seed, method, device, record):
    """One search row: the search scored by `model` (the ORM or the VM), n samples per task, its own seed."""
    t0 = time.time()
    gen = torch.Generator(device=device).manual_seed(step_seed(seed, n * 2 + (method == 'vm_mcts')))
    answers, samples, tokens = search_answers(cfg, policy, model, enc, tasks, n, gen, method == 'vm_mcts')
    record(method, n, seed, answers, samples, tokens, time.time() - t0)


def pool_rows(cfg, policy, vm, orm, enc, tasks, ns, seed, device, record):
    """The best-of-N rows of one seed, all from one pool of max(N) samples per task, and the pool's ranking row."""
    gen = torch.Generator(device=device).manual_seed(seed)  # the pool; each search draws from its own (seed, N, method)
    t0 = time.time()
    pool = value.sample_pool(policy, enc, tasks, max(ns), cfg.max_new_tokens, mcts.TEMPERATURE, gen,
                             cfg.mcts_batch_tasks)
    t_pool = time.time() - t0
    scores = dict(likelihood=[[d.logp for d in draws] for draws in pool],
                  orm=value.program_scores(orm, enc, tasks, pool), vm=value.program_scores(vm, enc, tasks, pool),
                  **line_scores(vm, enc, tasks, pool))
    complete = [[d.complete for d in draws] for draws in pool]
    for n in ns:
        for method, scorer in BEST_OF_N.items():
            k = 1 if scorer is None else n  # one sample spends one, whatever the budget
            chosen = [value.pick(scores[scorer][i] if scorer else [0.0] * len(d), k, complete[i])
                      for i, d in enumerate(pool)]
            record(method, n, seed, ['' if c is None else d[c].text for d, c in zip(pool, chosen)],
                   [min(k, len(d)) for d in pool], [sum(x.tokens for x in d[:k]) for d in pool], t_pool * k / max(ns))
    passed = value.grade_pool(tasks, pool)  # for the ranking figures, after every pick was made
    has = [i for i, draws in enumerate(pool) if draws]  # a prompt that fills the context has no samples
    k_all = [k for k in (1, 4, 16, 32) if k <= max(ns)]
    figures = {name: value.ranking([s[i] for i in has], [passed[i] for i in has], k_all, [complete[i] for i in has])
               for name, s in scores.items()}
    figures['random'] = {f'pick_of_{k}': value.random_of_k(passed, k) for k in k_all}
    figures['oracle'] = {f'pick_of_{k}': value.oracle_of_k(passed, k) for k in k_all}
    record('ranking', 0, seed, figures=figures)


def graded_row(tasks, method, n, seed, answers, samples, tokens, secs, log):
    """A decoding row: the answers graded (pass@1 overall and per difficulty), samples and tokens per task."""
    passed = grade(tasks, answers)
    by_diff = {d: sum(p for p, t in zip(passed, tasks) if t['difficulty'] == d) /
               sum(t['difficulty'] == d for t in tasks) for d in sorted({t['difficulty'] for t in tasks})}
    r = dict(method=method, n=n, seed=seed, pass1=sum(passed) / len(tasks), by_difficulty=by_diff,
             samples=sum(samples) / len(tasks), tokens=sum(tokens) / len(tasks), seconds=secs)
    log(f"decode {method:14s} N={n:2d} seed {seed}: pass@1 {r['pass1']:.3f}, {r['samples']:.1f} samples "
        f"and {r['tokens']:.0f} tokens a task, {secs:.0f}s")
    return r


def decode_units(cfg, policy, vm, orm, enc, tasks, ns, seeds, device, record):
    """The work in units, each with its own seed: [(the rows (method, N, seed) it makes, how)]: the greedy row,
    each seed's pool (its best-of-N rows and ranking figures), each search."""
    def greedy_row():
        t0 = time.time()
        answers, tokens = sample_programs(policy, enc, tasks, device, cfg.max_new_tokens, cfg.mcts_batch_tasks,
                                            temperature=0.0, samples=1)
        record('greedy', 0, cfg.seed, answers, [1] * len(tasks), tokens, time.time() - t0)

    units = [([('greedy', 0, cfg.seed)], greedy_row)]
    for seed in seeds:
        units.append(([(m, n, seed) for m in BEST_OF_N for n in ns] + [('ranking', 0, seed)],
                      partial(pool_rows, cfg, policy, vm, orm, enc, tasks, ns, seed, device, record)))
    for seed in seeds:
        for n in ns:
            for method, model in zip(SEARCHES, (orm, vm)):
                units.append(([(method, n, seed)], partial(search_row, cfg, policy, model, enc, tasks, n, seed,
                                                            method, device, record)))
    return units


def decode_compare(cfg, policy, vm, orm, enc, test_tasks, device, rows_path=None, log=tqdm.write):
    """pass@1 of every method at every N (decode_samples) and seed (seed, seed+1, ...) on decode_tasks test tasks
    spread over the split. Each row (method, N, seed) is appended to rows_path as it is made, and a rerun makes
    only the rows missing there (a torn last line, from a kill, is dropped). The work comes in units, each with
    its own seed: the greedy row, each seed's pool (its best-of-N rows and ranking figures), each search;
    under torchrun they go round-robin to the ranks, each appending to its own part, and rank 0 merges the
    parts: the rows one process makes. Returns {'unit', 'rows': one per (method, N, seed) in a fixed order,
    'summary': see summarise, 'ranking': the rankers' figures on the pools, averaged over seeds}."""
    tasks = spread(test_tasks, cfg.decode_tasks)
    ns = [int(n) for n in str(cfg.decode_samples).split(',')]
    part = rows_path if ddp.world() == 1 or not rows_path else f'{rows_path}.rank{ddp.rank()}'
    rows = read_rows(rows_path) + (read_rows(part) if part != rows_path else [])
    done = {(r['method'], r['n'], r['seed']) for r in rows}
    for model in (policy, vm, orm):
        model.eval()
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    bar = tqdm(total=1 + len(seeds) * (len(ns) * (len(BEST_OF_N) + len(SEARCHES)) + 1), initial=len(done),
               desc='decode', dynamic_ncols=True, disable=not ddp.is_main())

    def record(method, n, seed, answers=None, samples=None, tokens=None, secs=0.0, figures=None):
        if (method, n, seed) in done:  # a pool redrawn for its missing rows: the rows already made stay
            return
        done.add((method, n, seed))
        r = dict(method=method, n=n, seed=seed, figures=figures) if figures is not None else \
            graded_row(tasks, method, n, seed, answers, samples, tokens, secs, log)
        r = json.loads(json.dumps(r))  # as it reads back from the file
        rows.append(r)
        if part:
            with open(part, 'a') as f:
                f.write(json.dumps(r) + '\n')
        bar.update(1)

    for keys, run in ddp.shard(decode_units(cfg, policy, vm, orm, enc, tasks, ns, seeds, device, record)):
        if any(k not in done for k in keys):
            run()
    bar.close()
    if part != rows_path:  # torchrun: rank 0 adds the ranks' rows to rows_path
        ddp.barrier()
        if ddp.is_main():
            merge_rows(rows_path, ddp.world())
        ddp.barrier()
        rows = read_rows(rows_path)
    order = {m: i for i, m in enumerate(('ranking',) + METHODS)}
    rows = sorted((r for r in rows if r['seed'] in seeds), key=lambda r: (order[r['method']], r['n'], r['seed']))
    figures = [r['figures'] for r in rows if r['method'] == 'ranking']
    results = [r for r in rows if r['method'] != 'ranking']
    ranking = {name: {k: mean_of([f[name][k] for f in figures]) for k in figures[0][name]} for name in figures[0]}
    return dict(unit='complete samples per task (N); "tokens" = mean generated', rows=results,
                summary=summarise(results), ranking=ranking)


def merge_rows(path, world):
    """Rank 0: append the rows of every rank's part to path (those it lacks), then remove the parts."""
    have = {(r['method'], r['n'], r['seed']) for r in read_rows(path)}
    parts = [f'{path}.rank{r}' for r in range(world)]
    new = [r for p in parts for r in read_rows(p) if (r['method'], r['n'], r['seed']) not in have]
    with open(path, 'a') as f:
        f.write(''.join(json.dumps(r) + '\n' for r in new))
    for p in parts:
        if os.path.exists(p):
            os.remove(p)


def read_rows(path):
    """The rows a killed or finished run appended to path, without a torn last line."""
    if not path or not os.path.exists(path):
        return []
    with open(path, 'rb+') as f:
        data = f.read()
        f.truncate(data.rfind(b'\n') + 1)  # a line is written whole or cut here; its row is made again
    return [json.loads(line) for line in data[:data.rfind(b'\n') + 1].decode().splitlines()]


def mean_of(values):
    """The mean over seeds of a figure that may be undefined (None: no task with both a pass and a fail)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def summarise(rows):
    """{method: {N: {pass1, pass1_se (standard error over seeds), samples, tokens, seeds, by_difficulty}}}."""
    out = {}
    for r in rows:
        out.setdefault(r['method'], {}).setdefault(r['n'], []).append(r)
    for m, per_n in out.items():
        for n, rs in per_n.items():
            pass1, se = mean_se([r['pass1'] for r in rs])
            per_n[n] = dict(pass1=pass1, pass1_se=se, samples=sum(r['samples'] for r in rs) / len(rs),
                            tokens=sum(r['tokens'] for r in rs) / len(rs), seeds=len(rs),
                            by_difficulty={d: sum(r['by_difficulty'][d] for r in rs) / len(rs)
                                           for d in rs[0]['by_difficulty']})
    return out


# -----------------------------------------------------------------------------
# python decode.py: look at decoding on dev (a tuning tool reads no test task unless --task names one)
#   python decode.py --task dev/5 [--samples 20] [--vm out/vm.pt]   one search, printed as a tree
#   python decode.py [--n 16] [--vm out/vm.pt]                      headroom (pass@n) and the rankers' figures


def watch_search(args, policy, enc, device):
    """One search on one task, printed as a tree: scored by the hidden tests (as when collecting value
    targets), or with --vm by a value model (as when decoding)."""
    split = args.task.split('/')[0]
    path = os.path.join(args.data_dir, f'{split}.jsonl')
    found = [t for t in load_tasks(path) if t['task_id'] == args.task] if os.path.exists(path) else []
    if not found:
        raise SystemExit(f"task '{args.task}' not found: task ids are SPLIT/N, read from {args.data_dir}/SPLIT.jsonl")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    expand = policy_expander(policy, enc, args.max_new_tokens, mcts.TEMPERATURE, {}, gen)
    if args.vm:
        score = value.value_scorer(value.load_value_model(args.vm, device), enc)
        search = dict(num_decision=mcts.NUM_DECISION, c=mcts.C_DECODE, value_states=True)
    else:
        score, search = test_scorer(), dict(c=mcts.C_COLLECT)
    t0 = time.time()
    (tree,) = run_search([Tree(found[0], args.samples)], expand, score, **search)
    print(found[0]['prompt'] + format_tree(tree.root, label=f"ROOT ({args.task})"))
    print(f"\n{len(tree.samples)} samples in {tree.expansions} expansions, {tree.tokens} generated tokens, "
          f"{time.time() - t0:.1f}s; scorer: {'value model ' + args.vm if args.vm else 'the hidden tests'}")
    best = best_sample(tree)
    if best is not None:
        result = sandbox.run(found[0]['prompt'] + best.text, found[0]['tests'])
        print(f"best-scored complete program (score {best.score:.3f}; graded after the search: reward "
              f"{result.reward:.2f}):\n{found[0]['prompt']}{best.text}")


def rank_on_dev(args, policy, enc, device):
    """Greedy pass@1, random-of-k and oracle-of-k (pass@k), and how well the likelihood (and a VM) pick, on
    --tasks dev tasks with --n samples each."""
    tasks = spread(load_tasks(os.path.join(args.data_dir, 'dev.jsonl')), args.tasks)
    greedy = grade(tasks, sample_programs(policy, enc, tasks, device, args.max_new_tokens, 32, 0.0, 1)[0])
    gen = torch.Generator(device=device).manual_seed(args.seed)
    pool = value.sample_pool(policy, enc, tasks, args.n, args.max_new_tokens, mcts.TEMPERATURE, gen)
    passed = value.grade_pool(tasks, pool)
    scores = {'likelihood': [[d.logp for d in draws] for draws in pool]}
    if args.vm:
        scores['vm'] = value.program_scores(value.load_value_model(args.vm, device), enc, tasks, pool)
    ks = [k for k in (1, 4, 16) if k <= args.n]
    print(f"{args.ckpt} on {len(tasks)} dev tasks: greedy pass@1 {sum(greedy) / len(tasks):.3f}; "
          f"{args.n} samples each at temperature {mcts.TEMPERATURE}")
    print('  '.join(f"random of {k} {value.random_of_k(passed, k):.3f}, "
                    f"oracle of {k} {value.oracle_of_k(passed, k):.3f}" for k in ks))
    complete = [[d.complete for d in draws] for draws in pool]
    for scorer, s in scores.items():
        print(f"{scorer}: " + ', '.join(f"{k} {v:.3f}" for k, v in value.ranking(s, passed, ks, complete).items()))


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description="Look at decoding: one search as a tree (--task), or headroom and the "
                                 "rankers' figures on dev tasks.")
    ap.add_argument('--ckpt', default='out/rl_rest_grpo_seed1337.pt', help='the policy (default: %(default)s)')
    ap.add_argument('--vm', help='score with this value model')
    ap.add_argument('--task', help='a task_id such as dev/12 (SPLIT/N): search it and print the tree')
    ap.add_argument('--samples', type=int, default=20, help='complete samples the search may draw')
    ap.add_argument('--n', type=int, default=16, help='samples per dev task (without --task)')
    ap.add_argument('--tasks', type=int, default=200, help='dev tasks, spread over difficulties (without --task)')
    ap.add_argument('--data_dir', default='data')
    ap.add_argument('--device', default='auto')
    ap.add_argument('--seed', type=int, default=1337)
    ap.add_argument('--max_new_tokens', type=int, default=160)
    args = ap.parse_args(argv)
    if not os.path.exists(args.ckpt):
        raise SystemExit(f"no policy at {args.ckpt}: train one (python train.py), or pass --ckpt=out/sft.pt")
    device = pick_device(args.device)
    policy = load_policy(args.ckpt, device)[0].eval()
    enc = get_tokenizer(os.path.join(args.data_dir, TOKENIZER_FILE))
    (watch_search if args.task else rank_on_dev)(args, policy, enc, device)


if __name__ == '__main__':
    main(sys.argv[1:])
