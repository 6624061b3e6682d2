"""Traced train steps and validation passes, kept across the trials of a process.

Tracing a train step costs 0.1 s for a head alone and 0.5-1.3 s once backbone blocks
and their optimizer are in it (EfficientNet-Lite0, 2 cores): 15-21% of a pruned trial's
wall time in `benchmarks/RESULTS.md`'s profile, more than its validation passes. A
search runs the same few graphs over and over: the same pooled backbone split at the
same cut (`tlsearch.model`'s pool), the same pooled head shape, the same loss and
optimizer. So a step is traced once per such key and reused: the learning rates are
optimizer variables (set every epoch), the dropout rate is a variable the step reads
(`TransferModel.head_forward`), class weights come in as sample weights, and each reuse
zeroes the optimizers' state, as a new optimizer would start. The graph closes over
the objects it was traced on; a step is reused only while they are the same objects.

The engine (`tlsearch.train`) asks `pooled` for a phase's step or validation pass and
gives it `trace_train_step` or `trace_inference` to build one when none fits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["POOL_SIZE", "Step", "clear_step_pool", "pooled", "trace_inference",
           "trace_train_step"]

#: Steps and validation passes kept per process, most recently used last.
POOL_SIZE = 16


@dataclass
class Step:
    """A traced train step with what it updates."""

    fn: Any  # (x, y_onehot, sample_weight) -> (mean loss, correct count)
    opt_backbone: Any
    opt_head: Any
    backbone_vars: list[Any]
    head_vars: list[Any]
    dropout: Any  # the scalar variable the step reads as its dropout rate

    def reset(self, dropout: float) -> None:
        """Start as a freshly made step would: optimizer state zeroed (moments,
        iteration count; the learning rate is set before every epoch)."""
        for opt in (self.opt_backbone, self.opt_head):
            for variable in opt.variables:
                variable.assign(variable * 0)
        self.dropout.assign(dropout)


def trace_train_step(tm: Any, strategy: Any, loss_fn: Callable[[Any, Any], Any], mode: str,
                     n_classes: int) -> Step:
    """Trace the train step of a `TransferModel`'s current trainable set, fed with
    `mode`'s inputs: cached prefix activations (`prefix`), cached backbone outputs
    (`outputs`) or images. Its optimizers are the strategy's recipes, fresh."""
    import tensorflow as tf

    from tlsearch.recipes import make_optimizer

    s = strategy
    opt_backbone = make_optimizer(s, s.backbone_lr)
    opt_head = make_optimizer(s, s.head_lr)
    backbone_vars, head_vars = tm.trainable_variables
    if backbone_vars:
        opt_backbone.build(backbone_vars)
    opt_head.build(head_vars)
    dropout = tf.Variable(float(s.head_dropout), trainable=False, dtype=tf.float32)
    forward = {"prefix": tm.features_forward, "images": tm.train_forward,
               "outputs": tm.head_forward}[mode]

    # One trace per phase: the batch dimension is left open, so the last, smaller
    # batch of an epoch does not trace the step a second time.
    in_shape = {"prefix": lambda: tuple(tm.prefix.output.shape[1:]),
                "outputs": lambda: tuple(tm.backbone.output.shape[1:]),
                "images": lambda: (s.image_size,) * 2 + (3,)}[mode]()
    signature = [tf.TensorSpec((None, *in_shape), tf.float32),
                 tf.TensorSpec((None, n_classes), tf.float32),
                 tf.TensorSpec((None,), tf.float32)]

    @tf.function(input_signature=signature)
    def step(x, y_onehot, sample_weight):
        with tf.GradientTape() as tape:
            probs = forward(x, dropout)
            per_sample = loss_fn(y_onehot, probs)
            loss = tf.reduce_sum(per_sample * sample_weight) / tf.reduce_sum(sample_weight)
            reg = tf.add_n(tm.head.losses) if tm.head.losses else 0.0
            total = loss + reg
        grads = tape.gradient(total, backbone_vars + head_vars)
        if backbone_vars:
            opt_backbone.apply_gradients(zip(grads[:len(backbone_vars)], backbone_vars,
                                             strict=True))
        opt_head.apply_gradients(zip(grads[len(backbone_vars):], head_vars, strict=True))
        correct = tf.reduce_sum(tf.cast(
            tf.equal(tf.argmax(probs, 1), tf.argmax(y_onehot, 1)), tf.float32))
        return loss, correct

    return Step(fn=step, opt_backbone=opt_backbone, opt_head=opt_head,
                backbone_vars=backbone_vars, head_vars=head_vars, dropout=dropout)


def trace_inference(model: Any) -> Any:
    """`model`'s inference pass as one traced function, the batch dimension open: eager
    Keras through backbone blocks costs about as much per epoch as training them from
    the cache (measured: 28% of a full fine-tune's time was validation)."""
    import tensorflow as tf

    shape = tuple(model.input.shape[1:])
    return tf.function(lambda batch: model(batch, training=False),
                       input_signature=[tf.TensorSpec((None, *shape), tf.float32)])


_POOL: OrderedDict[tuple, tuple[tuple[Any, ...], Any]] = OrderedDict()


def pooled(key: tuple | None, owners: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """What `build()` makes for `key`, reused while it closes over the same `owners`
    (checked by identity: a collected object's id can come back); `key` None: not
    pooled."""
    if key is None:
        return build()
    found = _POOL.get(key)
    if found is not None and len(found[0]) == len(owners) and all(
            a is b for a, b in zip(found[0], owners, strict=True)):
        _POOL.move_to_end(key)
        return found[1]
    made = build()
    _POOL[key] = (owners, made)
    while len(_POOL) > POOL_SIZE:
        _POOL.popitem(last=False)
    return made


def clear_step_pool() -> None:
    _POOL.clear()
