"""bert_jax: BERT pretraining and fine-tuning in JAX/Flax (docs/design/architecture.md).
Public API (imported lazily, so `import bert_jax` stays cheap):
    BertConfig, BertModel, BertForPreTraining, BertForSequenceClassification,
    BertForTokenClassification, BertForQuestionAnswering      (bert_jax.model.modeling)
    load_hf_checkpoint, save_hf_checkpoint                     (bert_jax.convert.hf)
    load_tf1_checkpoint, save_tf1_checkpoint                   (bert_jax.convert.tf1, tf extra)
    WordPieceTokenizer                                         (bert_jax.data.tokenization)
    pipeline (bert_jax.inference.pipelines), finetuning_config (bert_jax.finetuning.config)
    UserError                                                  (bert_jax.errors)
"""

import importlib

_EXPORTS = {
    "BertConfig": "bert_jax.model.modeling",
    "BertModel": "bert_jax.model.modeling",
    "BertForPreTraining": "bert_jax.model.modeling",
    "BertForSequenceClassification": "bert_jax.model.modeling",
    "BertForTokenClassification": "bert_jax.model.modeling",
    "BertForQuestionAnswering": "bert_jax.model.modeling",
    "load_hf_checkpoint": "bert_jax.convert.hf",
    "save_hf_checkpoint": "bert_jax.convert.hf",
    "load_tf1_checkpoint": "bert_jax.convert.tf1",
    "save_tf1_checkpoint": "bert_jax.convert.tf1",
    "WordPieceTokenizer": "bert_jax.data.tokenization",
    "pipeline": "bert_jax.inference.pipelines",
    "finetuning_config": "bert_jax.finetuning.config",
    "UserError": "bert_jax.errors",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")


def __dir__():
    return __all__
