# The binary-reward ablation (README, ReST-GRPO): every method with the all-tests-pass reward, one seed; the SFT
# model is repro.py's:
#   mkdir -p out-repro-binary && cp out-repro/sft.pt out-repro/sft.json out-repro-binary/
#   python train.py config/repro.py config/repro_binary.py --stage=rl
out_dir = 'out-repro-binary'
seeds = 1
rl_reward = 'binary'
