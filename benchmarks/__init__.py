"""Side-by-side training benchmarks: bert_jax against Hugging Face's Flax and PyTorch BERT.

`python -m benchmarks.run_all` runs them (see its docstring); `benchmarks/gpu.sh` measures MFU on
an accelerator; `python -m benchmarks.memory` finds the largest batches that fit;
`benchmarks.data_throughput` times the data pipeline; `benchmarks.finetune_speed` and
`benchmarks.finetune_vs_hf` compare fine-tuning's speed and accuracy with Hugging Face's.
One-off studies behind documented figures: benchmarks/studies/.
"""
