"""BERT in Flax Linen: the encoder, the pretraining heads and the task heads.

Shapes: B = batch, T = sequence length, H = hidden_size, N = attention heads, D = H // N,
F = intermediate_size, V = vocab_size, V' = padded_vocab_size, P = max_predictions_per_seq,
S = sequences per packed row. Packed rows (several sequences per row) pass segment_ids [B, T]
(0 = padding, 1..S = sequence), optionally position_ids and cls_positions [B, S]: see BertModel.
Logical axis names only (the mesh mapping: `bert_jax.training.sharding`); the config is in
model/config.py, the numerical ops in model/ops.py, the numerics in docs/design/model.md.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bert_jax.errors import UserError
from bert_jax.model.config import (  # noqa: F401 (BertConfig's names, re-exported)
    ACTIVATIONS,
    PRESETS,
    REMAT_POLICIES,
    VOCAB_PAD_MULTIPLE,
    BertConfig,
    is_vocab_param,
    pad_vocab_rows,
    trim_vocab_rows,
)
from bert_jax.model.crf import TagTransitions
from bert_jax.model.ops import Dropout, add_vocab_bias, compiles_for_tpu, mixed_precision_dot

Array = jax.Array


def _kernel_init(config: BertConfig, axes: tuple[str | None, ...]):
    init = nn.initializers.truncated_normal(config.initializer_range)
    return nn.with_logical_partitioning(init, axes)


def _zero_padded_rows(init, rows: int):
    """An initializer that draws `rows` rows with `init` and zero-fills the rest of the table."""

    def padded(key, shape, dtype=jnp.float32):
        real = init(key, (rows, *shape[1:]), dtype)
        return jnp.pad(real, ((0, shape[0] - rows), *[(0, 0)] * (len(shape) - 1)))

    return padded


def _zeros(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _ones(axes: tuple[str | None, ...]):
    return nn.with_logical_partitioning(nn.initializers.ones_init(), axes)


class Dense(nn.Module):
    """A dense layer with a 2-D kernel carrying logical axis names."""

    features: int
    config: BertConfig
    axes: tuple[str | None, str | None]

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = nn.Dense(
            self.features,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_kernel_init(cfg, self.axes),
            bias_init=_zeros((self.axes[1],)),
            name="dense",
        )(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], self.features)


class LayerNorm(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        return nn.LayerNorm(
            epsilon=cfg.layer_norm_eps,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            scale_init=_ones(("embed",)),
            bias_init=_zeros(("embed",)),
            name="norm",
        )(x)


class BertEmbeddings(nn.Module):
    """Word + learned position + token type embeddings, LayerNorm, dropout."""

    config: BertConfig

    def setup(self):
        cfg = self.config
        embed = lambda n, init, name: nn.Embed(  # noqa: E731
            n,
            cfg.hidden_size,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            embedding_init=init,
            name=name,
        )
        # V' rows: the vocabulary's drawn as usual, the padding zero (and kept zero).
        normal = nn.initializers.truncated_normal(cfg.initializer_range)
        word_init = _zero_padded_rows(normal, cfg.vocab_size)
        self.word_embeddings = embed(
            cfg.padded_vocab_size,
            nn.with_logical_partitioning(word_init, ("vocab", "embed")),
            "word_embeddings",
        )
        self.position_embeddings = embed(
            cfg.max_position_embeddings,
            _kernel_init(cfg, ("length", "embed")),
            "position_embeddings",
        )
        self.token_type_embeddings = embed(
            cfg.type_vocab_size, _kernel_init(cfg, ("type_vocab", "embed")), "token_type_embeddings"
        )
        self.layer_norm = LayerNorm(cfg, name="LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool) -> Array:
        x = (
            self.word_embeddings(input_ids)  # [B, T, H]
            + self.position_embeddings(position_ids)
            + self.token_type_embeddings(token_type_ids)
        )
        if not self.config.pre_layer_norm:
            x = self.layer_norm(x)
        x = self.dropout(x, deterministic=deterministic)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))

    def attend(self, x: Array) -> Array:
        """The tied MLM decoder: [..., H] -> [..., V'] float32 logits against the padded table.

        Operands in the compute dtype, products accumulated and returned in float32 (nn.Embed's
        attend would promote both to the compute dtype and round the logits to it)."""
        dtype = jnp.dtype(self.config.dtype)
        table = self.word_embeddings.embedding  # [V', H]
        return jnp.einsum(
            "...h,vh->...v",
            x.astype(dtype),
            table.astype(dtype),
            precision=mixed_precision_dot(dtype),
            preferred_element_type=jnp.float32,
        )


class BertSelfAttention(nn.Module):
    """Multi-head self-attention: fused `jax.nn.dot_product_attention` unless dropout is active."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, query_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H]; mask: bool, True where a query may attend a key: [B, T] (per key) or
        broadcastable to [B, 1, Tq, T]; query_positions: [B, S] to attend from only those
        positions (Tq = S), else every position (Tq = T). Returns [B, Tq, H]."""
        cfg = self.config
        n, d = cfg.num_attention_heads, cfg.head_dim

        def project(name: str, y: Array) -> Array:
            b, t, _ = y.shape
            y = Dense(cfg.hidden_size, cfg, ("embed", "heads"), name=name)(y)
            y = y.reshape(b, t, n, d)  # [B, T, N, D]
            return nn.with_logical_constraint(y, ("act_batch", "act_length", "act_heads", None))

        xq = x if query_positions is None else gather_positions(x, query_positions)  # [B, Tq, H]
        query, key, value = project("query", xq), project("key", x), project("value", x)
        if mask.ndim == 2:
            mask = mask[:, None, None, :]  # [B, 1, 1, T]
        b, tq = xq.shape[:2]
        dropout_active = not deterministic and cfg.attention_probs_dropout_prob > 0.0
        if dropout_active:
            # The fused kernels have no dropout on the probabilities; BERT's recipe has 0.1.
            # float32 products, as jax.nn.dot_product_attention: never rounded to bfloat16.
            logits = jnp.einsum(
                "bqnd,bknd->bnqk",
                query,
                key,
                precision=mixed_precision_dot(query.dtype),
                preferred_element_type=jnp.float32,
            )  # [B, N, Tq, T]
            logits = logits * jnp.float32(1.0 / math.sqrt(d))
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1)  # [B, N, Tq, T]
            probs = Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=False)
            context = jnp.einsum("bnqk,bknd->bqnd", probs.astype(value.dtype), value)
        else:
            context = jax.nn.dot_product_attention(
                query, key, value, mask=mask, implementation=cfg.attention_implementation
            )  # [B, Tq, N, D]
        context = context.reshape(b, tq, cfg.hidden_size)
        context = nn.with_logical_constraint(context, ("act_batch", "act_length", "act_heads"))
        return Dense(cfg.hidden_size, cfg, ("heads", "embed"), name="output")(context)


class BertLayer(nn.Module):
    """One encoder block: attention then feed-forward, post-LN (original) or pre-LN."""

    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, query_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H] -> [B, T, H], or [B, S, H] at query_positions [B, S] only."""
        cfg = self.config
        dropout = Dropout(cfg.hidden_dropout_prob)
        attention_norm = LayerNorm(cfg, name="attention_layer_norm")
        output_norm = LayerNorm(cfg, name="output_layer_norm")

        h = attention_norm(x) if cfg.pre_layer_norm else x
        h = BertSelfAttention(cfg, name="attention")(h, mask, deterministic, query_positions)
        if query_positions is not None:
            x = gather_positions(x, query_positions)  # [B, S, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = attention_norm(x)

        h = output_norm(x) if cfg.pre_layer_norm else x
        h = Dense(cfg.intermediate_size, cfg, ("embed", "mlp"), name="intermediate")(h)  # [B, T, F]
        h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
        activation = ACTIVATIONS[cfg.hidden_act]
        # TPU: recomputed in the backward pass, not saved (docs/scaling.md, "What each change
        # cost"); CPU keeps the saved intermediates.
        h = (jax.checkpoint(activation) if compiles_for_tpu() else activation)(h)
        h = Dense(cfg.hidden_size, cfg, ("mlp", "embed"), name="output")(h)  # [B, T, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = output_norm(x)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(
        self, x: Array, mask: Array, deterministic: bool, last_positions: Array | None = None
    ) -> Array:
        """x: [B, T, H] -> [B, T, H]; with last_positions [B, S] the last layer computes only
        those positions (its keys and values still cover every token) -> [B, S, H]."""
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(
                BertLayer, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=(3,)
            )
        for i in range(cfg.num_hidden_layers):
            last = i == cfg.num_hidden_layers - 1
            if last and last_positions is not None:
                if mask.shape[2] > 1:  # per-query masks: the rows of the kept queries
                    mask = jnp.take_along_axis(mask, last_positions[:, None, :, None], axis=2)
                x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic, last_positions)
            else:
                x = layer_cls(cfg, name=f"layer_{i}")(x, mask, deterministic)
        if cfg.pre_layer_norm:
            x = LayerNorm(cfg, name="final_layer_norm")(x)
        return x


def segment_attention_mask(segment_ids: Array) -> Array:
    """Block-diagonal attention of packed rows: segment_ids [B, T] -> bool [B, 1, T, T], True where
    query and key belong to the same sequence (padding, segment 0, sees only padding)."""
    return segment_ids[:, None, :, None] == segment_ids[:, None, None, :]


def segment_positions(segment_ids: Array) -> Array:
    """Positions that restart at every sequence of a packed row: [B, T] -> [B, T] int32."""
    t = segment_ids.shape[1]
    index = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
    changes = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    starts = jax.lax.cummax(jnp.where(changes, index, 0), axis=1)
    return index - starts


class BertModel(nn.Module):
    """The encoder: returns (sequence_output [B, T, H], pooled_output [B, H]).

    Packed rows (several sequences per row, as in Krell et al. 2021) pass segment_ids; each
    sequence then attends only to itself, its positions restart (unless position_ids are given)
    and, with cls_positions, it gets its own pooled output from its own [CLS].
    """

    config: BertConfig

    def setup(self):
        self.embeddings = BertEmbeddings(self.config)
        self.encoder = BertEncoder(self.config)
        self.pooler = Dense(self.config.hidden_size, self.config, ("embed", "embed_out"))

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        deterministic: bool = True,
        *,
        segment_ids: Array | None = None,
        position_ids: Array | None = None,
        cls_positions: Array | None = None,
        pooled_only: bool = False,
    ) -> tuple[Array | None, Array]:
        """input_ids, token_type_ids, attention_mask: [B, T] ints (mask 1 = real token).

        segment_ids: [B, T] ints, 0 = padding, 1..S = the sequence of a packed row a token
            belongs to; attention is block-diagonal (attention_mask is then optional).
        position_ids: [B, T]; default 0..T-1, or restarting per sequence with segment_ids.
        cls_positions: [B, S] where each sequence's [CLS] sits; pooled_output is then
            [B, S, H] (one per sequence) instead of [B, H] (position 0).
        pooled_only: the last layer computes only the pooled positions (what sequence
            classification reads; same values, fewer FLOPs) and sequence_output is None.
        """
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise UserError(
                f"sequence length {t} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if segment_ids is None:
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            mask = (attention_mask > 0)[:, None, None, :]  # [B, 1, 1, T], per key
            if position_ids is None:
                position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        else:
            mask = segment_attention_mask(segment_ids)  # [B, 1, T, T]
            if attention_mask is not None:
                mask = mask & (attention_mask > 0)[:, None, None, :]
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        pooled_at = cls_positions if cls_positions is not None else jnp.zeros((b, 1), jnp.int32)
        if pooled_only:
            sequence_output = None
            first = self.encoder(x, mask, deterministic, pooled_at)  # [B, S, H]
        else:
            sequence_output = self.encoder(x, mask, deterministic)  # [B, T, H]
            first = gather_positions(sequence_output, pooled_at)  # [B, S, H]
        pooled_output = jnp.tanh(self.pooler(first))  # [B, S, H]
        if cls_positions is None:
            pooled_output = pooled_output[:, 0]  # [B, H]
        return sequence_output, pooled_output

    def attend(self, x: Array) -> Array:
        return self.embeddings.attend(x)


@flax.struct.dataclass
class BertPreTrainingOutput:
    mlm_logits: Array  # [B, P, V] with masked_lm_positions, else [B, T, V]; float32
    padded_mlm_logits: Array  # [B, P, V'] the same, plus V' - V columns at the float32 minimum
    nsp_logits: Array  # [B, 2], or [B, S, 2] per packed sequence (cls_positions); float32
    sequence_output: Array  # [B, T, H]
    pooled_output: Array  # [B, H], or [B, S, H]


def gather_positions(sequence: Array, positions: Array) -> Array:
    """sequence [B, T, H], positions [B, P] -> [B, P, H]."""
    return jnp.take_along_axis(sequence, positions[:, :, None].astype(jnp.int32), axis=1)


class BertForPreTraining(nn.Module):
    """BertModel + masked-LM head (decoder tied to the word embeddings) + next-sentence head."""

    config: BertConfig

    @nn.compact
    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        attention_mask: Array | None = None,
        masked_lm_positions: Array | None = None,
        deterministic: bool = True,
        **packed: Array,
    ) -> BertPreTrainingOutput:
        """packed: segment_ids, position_ids, cls_positions of packed rows (see BertModel); the
        masked_lm_positions then index into the row and nsp_logits are per sequence."""
        cfg = self.config
        bert = BertModel(cfg, name="bert")
        sequence_output, pooled_output = bert(
            input_ids, token_type_ids, attention_mask, deterministic, **packed
        )
        # The sparse head: vocabulary logits only where tokens were masked (as the reference).
        h = sequence_output
        if masked_lm_positions is not None:
            h = gather_positions(sequence_output, masked_lm_positions)  # [B, P, H]
        h = Dense(cfg.hidden_size, cfg, ("embed", "embed_out"), name="mlm_transform")(h)
        h = ACTIVATIONS[cfg.hidden_act](h)
        h = LayerNorm(cfg, name="mlm_layer_norm")(h)
        logits = bert.attend(h)  # [B, P, V'] float32
        bias = self.param(
            "mlm_output_bias",
            _zeros(("vocab",)),
            (cfg.padded_vocab_size,),
            jnp.dtype(cfg.param_dtype),
        )
        padded = add_vocab_bias(logits, bias.astype(jnp.float32))
        if cfg.padded_vocab_size != cfg.vocab_size:
            column = jax.lax.broadcasted_iota(jnp.int32, padded.shape, padded.ndim - 1)
            padded = jnp.where(column < cfg.vocab_size, padded, jnp.finfo(jnp.float32).min)
        nsp_logits = Dense(2, cfg, ("embed", "classes"), name="nsp")(pooled_output)
        return BertPreTrainingOutput(
            # Unused under jit (the loss reads padded_mlm_logits), the slice costs nothing there.
            mlm_logits=padded[..., : cfg.vocab_size],
            padded_mlm_logits=padded,
            nsp_logits=nsp_logits.astype(jnp.float32),
            sequence_output=sequence_output,
            pooled_output=pooled_output,
        )


class BertForSequenceClassification(nn.Module):
    """Pooled [CLS] -> dropout -> dense; num_labels 1 means regression. Returns [B, num_labels],
    or [B, S, num_labels] for packed rows (one per sequence, see BertModel's cls_positions)."""

    config: BertConfig
    num_labels: int

    @nn.compact
    def __call__(
        self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True, **packed
    ):
        """packed: segment_ids, position_ids, cls_positions (see BertModel)."""
        cfg = self.config
        _, pooled = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, pooled_only=True, **packed
        )
        pooled = Dropout(cfg.hidden_dropout_prob)(pooled, deterministic=deterministic)
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), name="classifier")(pooled)
        return logits.astype(jnp.float32)


class BertForTokenClassification(nn.Module):
    """Every position -> dropout -> dense. Returns [B, T, num_labels] (packed rows too); with
    crf, (those scores, the CRF's transition scores {'transitions', 'start', 'end'}: crf.py).
    window w > 0: the dense layer reads each position's vector beside those of the w positions
    on either side within its sequence (zeros beyond it: padding, another packed sequence), a
    convolution of width 2w + 1 over the last layer after its dropout (one mask per position,
    which every window holding that position sees)."""

    config: BertConfig
    num_labels: int
    crf: bool = False
    window: int = 0

    @nn.compact
    def __call__(
        self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True, **packed
    ):
        """packed: segment_ids, position_ids (see BertModel)."""
        cfg = self.config
        sequence, _ = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic, **packed
        )
        sequence = Dropout(cfg.hidden_dropout_prob)(sequence, deterministic=deterministic)
        if self.window:
            segments = packed.get("segment_ids", attention_mask)  # [B, T], 0 = padding
            if segments is None:
                segments = jnp.ones_like(input_ids)
            sequence = neighbourhood(sequence, segments, self.window)  # [B, T, (2w + 1) H]
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), name="classifier")(sequence)
        if self.crf:
            return logits.astype(jnp.float32), TagTransitions(self.num_labels, name="crf")()
        return logits.astype(jnp.float32)


def neighbourhood(x: Array, segments: Array, window: int) -> Array:
    """x [B, T, H], segments [B, T] -> [B, T, (2 * window + 1) * H]: at t, x[t - window] ..
    x[t + window] side by side, each zero where it lies outside the row or in another segment."""
    t = x.shape[1]
    parts = []
    for offset in range(-window, window + 1):
        source = jnp.arange(t) + offset  # [T]
        inside = (source >= 0) & (source < t)
        source = jnp.clip(source, 0, t - 1)
        same = (segments[:, source] == segments) & inside  # [B, T]
        parts.append(jnp.where(same[..., None], x[:, source], jnp.zeros((), x.dtype)))
    return jnp.concatenate(parts, axis=-1)


class BertForQuestionAnswering(nn.Module):
    """Span QA: returns (start_logits [B, T], end_logits [B, T]); one window per row."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids=None, attention_mask=None, deterministic=True):
        cfg = self.config
        sequence, _ = BertModel(cfg, name="bert")(
            input_ids, token_type_ids, attention_mask, deterministic
        )
        logits = Dense(2, cfg, ("embed", "classes"), name="qa_outputs")(sequence)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1]
