# ReST-GRPO against naive GRPO and ReST-DPO from the same SFT checkpoint, at the same sampling budget:
# each method runs until it has sampled rl_token_budget completion tokens (ReST's extra sampling rounds
# count), so a method that filters more gets fewer optimizer steps. Run the sft stage first.
#   python train.py --stage=sft && python train.py config/compare_rl.py --stage=rl --seed=1
stage = 'rl'
method = 'rest_grpo,grpo,rest_dpo'
rl_iters = 1000           # the token budget is what stops each run
rl_token_budget = 1_500_000
rl_eval_interval = 4
eval_tasks = 600
