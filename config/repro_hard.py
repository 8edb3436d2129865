# The hard regime (README, ReST-GRPO): ReST-GRPO against GRPO on the rl split's hardest problems (7 and 8 steps),
# where most of naive GRPO's groups are all-fail, 3 seeds; the SFT model is repro.py's (copy it, or train it here):
#   mkdir -p out-repro-hard && cp out-repro/sft.pt out-repro-hard/
#   python train.py config/repro.py config/repro_hard.py --stage=rl
out_dir = 'out-repro-hard'
method = 'rest_grpo,grpo'
rl_min_difficulty = 7
