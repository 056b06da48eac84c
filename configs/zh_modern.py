r"""configs/zh_small.py with the modern encoder: ModernBERT's architecture at zh_small's size and
MLM-only pretraining whose masking rate falls from 30% to 15% (the Chinese ModernBERT's schedule,
arXiv:2510.12285), held-out accuracy at 15%. Same data, vocabulary and phases:

  python -m bert_jax.pretrain --config configs/zh_modern.py:phase1 --workdir runs/zh/modern1 \
      --config.data.whole_word_masking=True

Unmeasured here: zh_small's figures (README.zh-CN.md) are BERT's.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import zh_small  # noqa: E402


def get_config(mode: str = "phase1"):
    c = zh_small.get_config(mode)
    m = c.model
    m.position_embedding_type = "rope"
    m.ffn_type = "geglu"
    m.pre_layer_norm = True
    m.use_bias = False
    m.embedding_norm = True
    m.type_vocab_size = 0
    m.pooler = "cls_head"  # transformers' ModernBertForSequenceClassification default
    d = c.data
    d.next_sentence_prediction = False
    d.eval_masked_lm_prob = 0.15
    if mode == "phase2":  # from phase 1's parameters: the schedule is over, 15% throughout
        d.masked_lm_prob = 0.15
    else:  # 30% -> 15% over 6 epochs, about half of phase 1 (docs/chinese.md)
        d.masked_lm_prob, d.masked_lm_prob_start = 0.15, 0.3
        d.masked_lm_prob_schedule_epochs = 6.0
        d.max_predictions_per_seq = round(d.max_seq_length * 0.3)  # 10 at 32, 19 at test's 64
    return c
