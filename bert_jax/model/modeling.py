"""BERT in Flax Linen: the encoder, the pretraining heads and the task heads.

Shapes: B = batch, T = sequence length, H = hidden_size, N = attention heads, D = H // N,
F = intermediate_size, V = vocab_size, V' = padded_vocab_size, P = max_predictions_per_seq,
S = sequences per packed row. Packed rows (several sequences per row) pass segment_ids [B, T]
(0 = padding, 1..S = sequence), optionally position_ids and cls_positions [B, S]: see BertModel.
Logical axis names only (the mesh mapping: `bert_jax.training.sharding`); the config is in
model/config.py, the numerical ops in model/ops.py, the numerics in docs/design/model.md.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from bert_jax.errors import UserError
from bert_jax.model.attention import attend
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
    """A dense layer with a 2-D kernel carrying logical axis names; a bias when config.use_bias
    (or always, for task outputs: bias=True)."""

    features: int
    config: BertConfig
    axes: tuple[str | None, str | None]
    bias: bool | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = nn.Dense(
            self.features,
            use_bias=cfg.use_bias if self.bias is None else self.bias,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            kernel_init=_kernel_init(cfg, self.axes),
            bias_init=_zeros((self.axes[1],)),
            name="dense",
        )(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], self.features)


class LayerNorm(nn.Module):
    """config.norm_type: LayerNorm (with a bias when config.use_bias) or RMSNorm."""

    config: BertConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        common = dict(
            epsilon=cfg.layer_norm_eps,
            dtype=jnp.dtype(cfg.dtype),
            param_dtype=jnp.dtype(cfg.param_dtype),
            scale_init=_ones(("embed",)),
            name="norm",
        )
        if cfg.norm_type == "rmsnorm":
            return nn.RMSNorm(**common)(x)
        return nn.LayerNorm(use_bias=cfg.use_bias, bias_init=_zeros(("embed",)), **common)(x)


class BertEmbeddings(nn.Module):
    """Word + learned position (absolute) + token type (type_vocab_size > 0) embeddings,
    LayerNorm (post-LN, or embedding_norm), dropout."""

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
        if cfg.position_embedding_type == "absolute":
            self.position_embeddings = embed(
                cfg.max_position_embeddings,
                _kernel_init(cfg, ("length", "embed")),
                "position_embeddings",
            )
        if cfg.type_vocab_size:
            self.token_type_embeddings = embed(
                cfg.type_vocab_size,
                _kernel_init(cfg, ("type_vocab", "embed")),
                "token_type_embeddings",
            )
        self.layer_norm = LayerNorm(cfg, name="LayerNorm")
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic: bool) -> Array:
        cfg = self.config
        x = self.word_embeddings(input_ids)  # [B, T, H]
        if cfg.position_embedding_type == "absolute":
            x = x + self.position_embeddings(position_ids)  # [B, T, H]
        if cfg.type_vocab_size:
            x = x + self.token_type_embeddings(token_type_ids)  # [B, T, H]
        if cfg.embedding_norm:
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


def rotary(x: Array, positions: Array, theta: float) -> Array:
    """Rotary position embedding (RoFormer; the half-split layout of Hugging Face / ModernBERT):
    x [B, T, N, D], positions [B, T] -> [B, T, N, D]; angles in float32."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))  # [D / 2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    first, second = x[..., : d // 2], x[..., d // 2 :]  # [B, T, N, D / 2]
    rotated = jnp.concatenate([-second, first], axis=-1)  # [B, T, N, D]
    return x * cos + rotated * sin


class BertSelfAttention(nn.Module):
    """Multi-head self-attention through `attend` (model/attention.py), which picks the kernel."""

    config: BertConfig
    window: int = 0  # > 0: a sliding window (local_attention_window), else global

    @nn.compact
    def __call__(
        self,
        x: Array,
        segment_ids: Array,
        deterministic: bool,
        query_positions: Array | None = None,
        positions: Array | None = None,
    ) -> Array:
        """x: [B, T, H]; segment_ids: [B, T] ints (0 = padding; see `attend`); query_positions:
        [B, S] to attend from only those positions (Tq = S), else every position (Tq = T);
        positions: [B, T] token positions (rotary embeddings). Returns [B, Tq, H]."""
        cfg = self.config
        n, d = cfg.num_attention_heads, cfg.head_dim

        def project(name: str, y: Array) -> Array:
            b, t, _ = y.shape
            y = Dense(cfg.hidden_size, cfg, ("embed", "heads"), name=name)(y)
            y = y.reshape(b, t, n, d)  # [B, T, N, D]
            return nn.with_logical_constraint(y, ("act_batch", "act_length", "act_heads", None))

        xq = x if query_positions is None else gather_positions(x, query_positions)  # [B, Tq, H]
        query, key, value = project("query", xq), project("key", x), project("value", x)
        if cfg.position_embedding_type == "rope":
            theta = cfg.local_rope_theta if self.window > 0 else cfg.rope_theta
            query_at = (
                positions if query_positions is None else gather_ids(positions, query_positions)
            )
            query = rotary(query, query_at, theta)  # [B, Tq, N, D]
            key = rotary(key, positions, theta)  # [B, T, N, D]
        b, tq = xq.shape[:2]
        rate = cfg.attention_probs_dropout_prob
        dropout_active = not deterministic and rate > 0.0
        context = attend(
            query,
            key,
            value,
            segment_ids=segment_ids,
            window=self.window,
            dropout_rate=rate if dropout_active else 0.0,
            dropout_rng=Dropout(rate).key() if dropout_active else None,
            deterministic=deterministic,
            implementation=cfg.attention_implementation,
            query_positions=query_positions,
        )  # [B, Tq, N, D]
        context = context.reshape(b, tq, cfg.hidden_size)
        context = nn.with_logical_constraint(context, ("act_batch", "act_length", "act_heads"))
        return Dense(cfg.hidden_size, cfg, ("heads", "embed"), name="output")(context)


class BertLayer(nn.Module):
    """One encoder block: attention then feed-forward, post-LN (original) or pre-LN. Under
    pre-LN with embedding_norm, layer 0 has no attention norm (ModernBERT: the embeddings are
    normalised already)."""

    config: BertConfig
    window: int = 0  # the attention's sliding window, 0 = global
    index: int = 0  # the layer's place in the stack (layer 0 may have no attention norm)

    @nn.compact
    def __call__(
        self,
        x: Array,
        segment_ids: Array,
        deterministic: bool,
        query_positions: Array | None = None,
        positions: Array | None = None,
    ) -> Array:
        """x: [B, T, H] -> [B, T, H], or [B, S, H] at query_positions [B, S] only; positions
        [B, T] for rotary embeddings."""
        cfg = self.config
        dropout = Dropout(cfg.hidden_dropout_prob)
        attention_norm = LayerNorm(cfg, name="attention_layer_norm")
        output_norm = LayerNorm(cfg, name="output_layer_norm")

        h = x
        if cfg.pre_layer_norm and not (self.index == 0 and cfg.embedding_norm):
            h = attention_norm(x)
        attention = BertSelfAttention(cfg, self.window, name="attention")
        h = attention(h, segment_ids, deterministic, query_positions, positions)
        if query_positions is not None:
            x = gather_positions(x, query_positions)  # [B, S, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = attention_norm(x)

        h = output_norm(x) if cfg.pre_layer_norm else x
        h = feed_forward(cfg, h)  # [B, T, H]
        x = x + dropout(h, deterministic=deterministic)
        if not cfg.pre_layer_norm:
            x = output_norm(x)
        return nn.with_logical_constraint(x, ("act_batch", "act_length", "act_embed"))


def feed_forward(cfg: BertConfig, x: Array) -> Array:
    """[B, T, H] -> [B, T, H]: act(x W_i) W_o (mlp), or act(x W_i) * (x W_gate) W_o (geglu:
    hidden_act, swiglu: silu; ModernBERT's Wi is [W_i | W_gate]). Call inside a compact module."""
    h = Dense(cfg.intermediate_size, cfg, ("embed", "mlp"), name="intermediate")(x)  # [B, T, F]
    h = nn.with_logical_constraint(h, ("act_batch", "act_length", "act_mlp"))
    activation = jax.nn.silu if cfg.ffn_type == "swiglu" else ACTIVATIONS[cfg.hidden_act]
    # TPU: recomputed in the backward pass, not saved (docs/scaling.md, "What each change
    # cost"); CPU keeps the saved intermediates.
    h = (jax.checkpoint(activation) if compiles_for_tpu() else activation)(h)
    if cfg.ffn_type != "mlp":
        gate = Dense(cfg.intermediate_size, cfg, ("embed", "mlp"), name="gate")(x)  # [B, T, F]
        h = h * nn.with_logical_constraint(gate, ("act_batch", "act_length", "act_mlp"))
    return Dense(cfg.hidden_size, cfg, ("mlp", "embed"), name="output")(h)  # [B, T, H]


class BertEncoder(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(
        self,
        x: Array,
        segment_ids: Array,
        deterministic: bool,
        last_positions: Array | None = None,
        positions: Array | None = None,
    ) -> Array:
        """x: [B, T, H] -> [B, T, H]; segment_ids [B, T] (see `attend`); with last_positions
        [B, S] the last layer computes only those positions (its keys and values still cover
        every token) -> [B, S, H]; positions [B, T] for rotary embeddings."""
        cfg = self.config
        layer_cls = BertLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(
                BertLayer, policy=REMAT_POLICIES[cfg.remat_policy], static_argnums=(3,)
            )
        for i in range(cfg.num_hidden_layers):
            layer = layer_cls(cfg, cfg.layer_window(i), i, name=f"layer_{i}")
            if i == cfg.num_hidden_layers - 1 and last_positions is not None:
                x = layer(x, segment_ids, deterministic, last_positions, positions)
            else:
                x = layer(x, segment_ids, deterministic, None, positions)
        if cfg.pre_layer_norm:
            x = LayerNorm(cfg, name="final_layer_norm")(x)
        return x


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
        cfg = self.config
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = Dense(cfg.hidden_size, cfg, ("embed", "embed_out"))
        if cfg.pooler != "cls_tanh":
            self.pooler_norm = LayerNorm(cfg)

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
        config.pooler: "cls_tanh" tanh(dense([CLS])) (BERT); "cls_head" / "mean_head"
            norm(act(dense(v))) of the [CLS] vector / the mean over each sequence (ModernBERT).
        """
        b, t = input_ids.shape
        if t > self.config.max_position_embeddings:
            raise UserError(
                f"sequence length {t} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        # Attention takes segment ids, never a [B, 1, T, T] mask: a row unpacked is segment 1.
        if segment_ids is None:
            if attention_mask is None:
                attention_mask = jnp.ones_like(input_ids)
            segments = (attention_mask > 0).astype(jnp.int32)
            if position_ids is None:
                position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        else:
            segments = segment_ids.astype(jnp.int32)
            if attention_mask is not None:
                segments = jnp.where(attention_mask > 0, segments, 0)
            if position_ids is None:
                position_ids = segment_positions(segment_ids)
        x = self.embeddings(input_ids, token_type_ids, position_ids, deterministic)
        pooled_at = cls_positions if cls_positions is not None else jnp.zeros((b, 1), jnp.int32)
        cfg = self.config
        if pooled_only and cfg.pooler != "mean_head":
            sequence_output = None
            first = self.encoder(x, segments, deterministic, pooled_at, position_ids)  # [B, S, H]
        else:
            sequence_output = self.encoder(x, segments, deterministic, None, position_ids)
            if cfg.pooler == "mean_head":
                first = mean_pool(sequence_output, segments, pooled_at)  # [B, S, H]
            else:
                first = gather_positions(sequence_output, pooled_at)  # [B, S, H]
            if pooled_only:
                sequence_output = None
        if cfg.pooler == "cls_tanh":
            pooled_output = jnp.tanh(self.pooler(first))  # [B, S, H]
        else:
            pooled_output = self.pooler_norm(ACTIVATIONS[cfg.hidden_act](self.pooler(first)))
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


def gather_ids(ids: Array, positions: Array) -> Array:
    """ids [B, T], positions [B, P] -> [B, P]."""
    return jnp.take_along_axis(ids, positions.astype(jnp.int32), axis=1)


def mean_pool(sequence: Array, segments: Array, at: Array) -> Array:
    """The mean of each sequence's vectors: sequence [B, T, H], segments [B, T] (0 = padding,
    else the sequence a token is in), at [B, S] a position in each -> [B, S, H] float32."""
    ids = gather_ids(segments, at)  # [B, S]
    weights = (segments[:, None, :] == ids[:, :, None]) & (ids[:, :, None] > 0)  # [B, S, T]
    weights = weights.astype(jnp.float32)
    total = jnp.einsum("bst,bth->bsh", weights, sequence.astype(jnp.float32))  # [B, S, H]
    return total / jnp.maximum(weights.sum(-1, keepdims=True), 1.0)


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
        h = Dense(cfg.hidden_size, cfg, ("embed", "embed_out"), name="mlm_transform")(h)  # [B,P,H]
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
        nsp_logits = Dense(2, cfg, ("embed", "classes"), bias=True, name="nsp")(pooled_output)
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
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), bias=True, name="classifier")(
            pooled
        )
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
        logits = Dense(self.num_labels, cfg, ("embed", "classes"), bias=True, name="classifier")(
            sequence
        )
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
        logits = Dense(2, cfg, ("embed", "classes"), bias=True, name="qa_outputs")(sequence)
        logits = logits.astype(jnp.float32)
        return logits[..., 0], logits[..., 1]
