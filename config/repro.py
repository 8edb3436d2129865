# The comparison behind the README's results: all three RL methods and all decoders, 3 seeds each,
# then report.md (tables: mean and standard error over seeds) and, with matplotlib, rl.png and decode.png.
#   python train.py config/repro.py          # one process; every stage resumes where it stopped
# RL runs are independent, so on a machine with cores to spare they can run side by side first:
#   python train.py config/repro.py --stage=sft
#   for s in 1337 1338 1339; do for m in rest_grpo grpo rest_dpo; do
#     python train.py config/repro.py --stage=rl --method=$m --seed=$s --seeds=1 & done; done; wait
#   python train.py config/repro.py          # finds the RL runs complete (it resumes any that stopped early)
out_dir = 'out-repro'
seeds = 3
# RL (README, ReST-GRPO): the three methods from the same SFT model, the same number of optimizer steps, the
# official partial-credit reward; test pass@1 (greedy and sampled) every 50 iterations for the curves
method = 'rest_grpo,grpo,rest_dpo'   # the first is the policy the search stages use
rl_iters = 200
rl_test_interval = 50
rl_eval_interval = 1000              # no dev evaluations: the settings were chosen on dev beforehand (sweep_rl.py)
# value targets on more tasks than the default run, and decoding at three budgets
mcts_collect_tasks = 1024
decode_budgets = '128,256,512'
decode_tasks = 300
# the value model and ORM train on 17.7K targets; the best validation step is kept (VM: 200 of 600)
vm_iters = 600
