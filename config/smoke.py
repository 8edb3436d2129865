# Every stage end to end on a tiny model in a few minutes on 2 CPU cores (used by tests/test_pipeline.py).
out_dir = 'out-smoke'
n_layer = 2
n_head = 2
n_embd = 48
sft_iters = 60
sft_batch_size = 16
sft_eval_interval = 30
eval_tasks = 64
