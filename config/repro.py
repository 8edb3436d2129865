# The comparison behind the README's results: all three RL methods and all decoders, 3 seeds each,
# then report.md (tables: mean and standard error over seeds) and, with matplotlib, rl.png and decode.png.
#   python train.py config/repro.py          # one process; every stage resumes where it stopped
# RL runs are independent: one at a time, seed-major so that each seed's three methods finish together (how the
# README's runs were made on 2 cores), or side by side on a machine with cores to spare (& ... wait):
#   python train.py config/repro.py --stage=sft
#   for s in 1337 1338 1339; do for m in grpo rest_grpo rest_dpo; do
#     python train.py config/repro.py --stage=rl --method=$m --seed=$s --seeds=1; done; done
#   python train.py config/repro.py          # finds the RL runs complete (it resumes any that stopped early)
# The hard regime and the binary-reward ablation: config/repro_hard.py, config/repro_binary.py.
out_dir = 'out-repro'
seeds = 3
# RL (README, ReST-GRPO): the three methods from the same SFT model, the same number of optimizer steps, the
# official partial-credit reward (the other RL settings: train.py's defaults, chosen on dev by sweep_rl.py);
# test pass@1 (greedy, and sampled 4 x at 0.7) at the start, after 100 iterations and at the end
method = 'rest_grpo,grpo,rest_dpo'   # the first is the policy the search stages use
rl_iters = 200
rl_test_interval = 100
rl_eval_interval = 1000              # dev only at the start and the end: the settings were chosen on dev (sweep_rl.py)
# value targets from thousands of rl tasks, and decoding at N = 1-32 complete samples on 300 test tasks.
# The VM without the policy's log-probs, for comparison (the same targets, dev pool and policy):
#   mkdir out-vm-text && cp out-repro/{sft.pt,sft.json,rl_rest_grpo_seed1337.pt,rl_rest_grpo_seed1337.json,value_targets.jsonl,value_targets.json,vm_dev_pool.pt} out-vm-text/
#   python train.py config/repro.py --out_dir=out-vm-text --stage=vm --vm_reads_logp=False
#   python train.py config/repro.py --out_dir=out-vm-text --stage=decode --vm_reads_logp=False --decode_samples=16 --seeds=1
mcts_collect_tasks = 3000
vm_iters = 400                       # the README's tables; 800 (dev AUC still rising at 400) lifts VM-MCTS by 2 points:
#   results/README.md, "A longer value model" (the same copy-the-folder commands as below, --vm_iters=800)
decode_samples = '1,4,8,16,32'
decode_tasks = 300
