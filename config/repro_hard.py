# The hard regime (README, ReST-GRPO): ReST-GRPO against GRPO on the rl split's hardest problems, where most of
# naive GRPO's groups are flat, 3 seeds. Flat needs the binary reward: with partial credit, groups on 7- and
# 8-step problems still vary (0.69 and 0.56 of them, sweep_rl.py's lr5e-5_t0.7 run), with the binary reward
# 0.11 and 0.00 (and 0.32 on 6 steps; its lr5e-5_binary run). The SFT model is repro.py's:
#   mkdir -p out-repro-hard && cp out-repro/sft.pt out-repro/sft.json out-repro-hard/   # a copy with its record
#   python train.py config/repro.py config/repro_hard.py --stage=rl
out_dir = 'out-repro-hard'
method = 'rest_grpo,grpo'
rl_reward = 'binary'
rl_min_difficulty = 6
rl_test_interval = 0  # test at the start and the end only (results per difficulty): the curves are repro.py's
