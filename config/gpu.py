# One GPU: a larger model, bigger batches, bfloat16.
out_dir = 'out-gpu'
device = 'cuda'
dtype = 'bfloat16'
n_layer = 8
n_head = 8
n_embd = 512
sft_iters = 3000
sft_batch_size = 128
sft_lr = 1e-3
eval_tasks = 0
eval_batch_size = 1024
